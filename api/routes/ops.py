from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.schemas import DependencyHealth, Health, WorkerSeen
from xtaldiff import queries
from xtaldiff.broker import broker_reachable

router = APIRouter(tags=["operations"])


def _check(request: Request) -> tuple[Health, int]:
    settings = request.app.state.settings
    workers: list[WorkerSeen] = []
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
            workers = [WorkerSeen(name=w.name, queues=w.queues, last_seen_at=w.last_seen_at)
                       for w in queries.recent_workers(session, within_s=settings.worker_seen_s)]
        database = DependencyHealth(ok=True)
    except Exception as err:
        # Any failure to talk to the database is what /health exists to report.
        database = DependencyHealth(ok=False, error=f"{type(err).__name__}: {err}"[:500])
    broker_error = broker_reachable(request.app.state.celery,
                                    timeout_s=settings.db_connect_timeout_s)
    broker = DependencyHealth(ok=broker_error is None, error=broker_error)
    if not (database.ok and broker.ok):
        state, code = "unavailable", 503
    else:
        state, code = ("ok" if workers else "degraded"), 200
    return Health(status=state, database=database, broker=broker, workers=workers), code


@router.get("/health", response_model=Health, responses={503: {"model": Health}},
            summary="Database, broker and workers")
async def health(request: Request, response: Response) -> Health:
    """503 when the database or the broker is down; `degraded` when no worker beat lately."""
    body, code = await run_in_threadpool(_check, request)
    response.status_code = code
    return body


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    data = generate_latest(request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
