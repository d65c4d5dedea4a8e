"""The FastAPI application: ``create_app(settings)`` wires state, middleware and routes."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors
from api.cache import FinishedJobCache
from api.limits import DESIGN_BODY_BYTES, AdminFirst, BodySizeLimit
from api.openapi import openapi_with_limits
from api.prometheus import Metrics, MetricsMiddleware
from api.routes import admin, design, jobs, models, ops, page
from xtaldiff.broker import create_celery
from xtaldiff.db import session_factory
from xtaldiff.settings import Settings, get_settings

DESCRIPTION = """Generative inverse design of crystals: submit a target property value, get
crystal structures a diffusion model proposes for it, with the oracle's predicted property.
Jobs are asynchronous: `POST /design`, poll `GET /jobs/{id}`, download `bundle.zip`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="xtaldiff", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.sessions = session_factory(settings.resolved_database_url,
                                         settings.db_connect_timeout_s)
    app.state.celery = create_celery(settings)
    app.state.metrics = Metrics(app.state.sessions)
    app.state.finished_jobs = FinishedJobCache(capacity=256)
    errors.install(app)
    for module in (design, jobs, models, admin, ops, page):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    app.add_middleware(BodySizeLimit, path_prefix="/admin/checkpoints",
                       max_bytes=settings.max_upload_bytes,
                       message=f"upload larger than this server's limit of {settings.max_upload_bytes} "
                       "bytes; raise XTALDIFF_MAX_UPLOAD_BYTES or send a smaller file")
    app.add_middleware(BodySizeLimit, path_prefix="/design", max_bytes=DESIGN_BODY_BYTES,
                       message=f"a design request is at most {DESIGN_BODY_BYTES} bytes of JSON; "
                       "send only the documented fields")
    # Outside the size limits and the routes: no upload byte is read before the token is checked.
    app.add_middleware(AdminFirst, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.openapi = lambda: openapi_with_limits(app, settings)
    return app
