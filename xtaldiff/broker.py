"""The Celery app as both sides see it: the API sends tasks by name, the worker runs them.

Configured from :class:`Settings` only. The broker says "there is work"; the jobs table is the
truth, so a send that fails leaves the job queued for the periodic re-enqueue to pick up.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu import Exchange, Queue

from xtaldiff.settings import Settings
from xtaldiff.states import (
    DEFAULT_QUEUE,
    DESIGN_TASK,
    GPU_QUEUE,
    SWEEP_TASK,
    VALIDATE_CHECKPOINT_TASK,
)

log = logging.getLogger(__name__)


def create_celery(settings: Settings, *, with_tasks: bool = False) -> Celery:
    app = Celery(
        "xtaldiff",
        broker=settings.resolved_broker_url,
        include=["worker.tasks"] if with_tasks else [],
        set_as_current=False,
    )
    app.conf.update(
        # A task is acknowledged only once it has finished, and requeued when the process
        # running it dies, so a killed worker's job is delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Each queue on its own exchange and key: bound to one shared key, every message
        # would be copied into both queues.
        task_queues=tuple(Queue(name, Exchange(name, type="direct"), routing_key=name)
                          for name in (GPU_QUEUE, DEFAULT_QUEUE)),
        task_default_exchange=DEFAULT_QUEUE,
        task_default_routing_key=DEFAULT_QUEUE,
        task_default_queue=DEFAULT_QUEUE,
        task_create_missing_queues=False,
        task_routes={
            DESIGN_TASK: {"queue": GPU_QUEUE},
            VALIDATE_CHECKPOINT_TASK: {"queue": GPU_QUEUE},
            SWEEP_TASK: {"queue": DEFAULT_QUEUE},
        },
        # Results and states live in our own tables.
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=settings.broker_transport_options,
        broker_connection_timeout=settings.db_connect_timeout_s,
        broker_connection_retry_on_startup=True,
        task_publish_retry_policy={
            "max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1,
        },
        beat_schedule={
            "requeue-lost-jobs": {
                "task": SWEEP_TASK, "schedule": settings.sweep_every_s,
                # Checks that waited behind a long job are dropped, not run in a burst.
                "options": {"expires": settings.sweep_every_s},
            },
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


def send(celery: Celery, task: str, argument: str) -> bool:
    """Send ``task(argument)``; False (logged) when the broker cannot be reached."""
    try:
        celery.send_task(task, args=[argument], retry=True)
    except Exception:
        # Any broker failure is survivable: the row stays queued and the sweep resends it.
        log.warning("could not enqueue %s(%s); the periodic check will retry", task, argument,
                    exc_info=True)
        return False
    return True


def waiting_messages(celery: Celery, queue: str = GPU_QUEUE) -> int | None:
    """Messages the broker holds for ``queue`` that no worker has taken yet; None when it
    cannot say. kombu's virtual transports (Redis, the embedded mode's files) count them with
    ``Channel._size``; a passive queue declaration would be the public way, but on Redis with a
    key prefix it reports a queue holding messages as missing."""
    try:
        with celery.connection_for_write() as connection:
            return int(connection.default_channel._size(queue))
    except Exception:
        log.warning("could not count the messages waiting in %s", queue, exc_info=True)
        return None


def broker_reachable(celery: Celery, *, timeout_s: float) -> str | None:
    """None when the broker answers, else the reason."""
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None
