from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import CeleryDep, ClientDep, OwnerDep, SessionDep, SettingsDep
from api.design import plan_design
from api.errors import TooManyPending
from api.schemas import DesignRequest, JobOut, Problem
from api.views import job_out
from xtaldiff import queries
from xtaldiff.broker import send
from xtaldiff.states import DESIGN_TASK

router = APIRouter(tags=["design"])


@router.post(
    "/design",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={400: {"model": Problem}, 415: {"model": Problem}, 422: {"model": Problem},
               429: {"model": Problem}, 503: {"model": Problem}},
    summary="Submit a design job",
)
def submit_design(
    body: DesignRequest, response: Response, session: SessionDep, settings: SettingsDep,
    celery: CeleryDep, owner: OwnerDep, client: ClientDep,
) -> JobOut:
    """Queue a job that generates `num_samples` structures for `target`; poll `Location`."""
    plan = plan_design(session, request=body, settings=settings)
    pending = queries.count_pending_jobs(session, client=client)
    if pending >= settings.max_pending_jobs:
        raise TooManyPending(
            f"{pending} of your jobs are queued or running, the most this server takes per "
            f"{'API key' if owner else 'address'}: retry when some have finished, or cancel some"
        )
    job = queries.create_job(session, checkpoint=plan.checkpoint, request=plan.params.as_json(),
                             warnings=plan.warnings, owner=owner, client=client)
    # Committed before the task is sent, so a worker never looks for a job not yet written.
    session.commit()
    if not send(celery, DESIGN_TASK, job.id):
        queries.mark_unsent(session, job_id=job.id)
        session.commit()
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_out(job, [])
