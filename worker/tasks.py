"""Celery tasks: thin wrappers that take an id and call the plain functions in worker.jobs."""

from __future__ import annotations

from celery import shared_task

from worker import jobs
from xtaldiff.db import session_factory
from xtaldiff.settings import get_settings
from xtaldiff.states import DESIGN_TASK, SWEEP_TASK, VALIDATE_CHECKPOINT_TASK


def _sessions():
    settings = get_settings()
    return settings, session_factory(settings.resolved_database_url,
                                     settings.db_connect_timeout_s)


@shared_task(name=DESIGN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def design(self, job_id: str) -> str | None:
    settings, sessions = _sessions()
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    status = jobs.run_design(job_id, settings=settings, sessions=sessions,
                             redelivered=redelivered)
    return None if status is None else status.value


@shared_task(name=VALIDATE_CHECKPOINT_TASK, acks_late=True, reject_on_worker_lost=True)
def validate_checkpoint(sha256: str) -> str | None:
    settings, sessions = _sessions()
    return jobs.validate_checkpoint(sha256, settings=settings, sessions=sessions)


@shared_task(name=SWEEP_TASK, bind=True)
def requeue_lost_jobs(self) -> list[str]:
    settings, sessions = _sessions()
    return jobs.requeue_lost_jobs(settings=settings, sessions=sessions, celery=self.app)
