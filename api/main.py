"""The FastAPI application: ``create_app(settings)`` wires state, middleware and routes."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors
from api.cache import FinishedJobCache
from api.limits import BodySizeLimit
from api.metrics import Metrics, MetricsMiddleware
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
                       max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
