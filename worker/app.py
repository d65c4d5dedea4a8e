"""The worker's Celery app (``celery -A worker.app worker``), configured from the settings.

Also keeps this worker's row in the ``workers`` table fresh, so that /health can list it, and
ties an embedded beat (``--beat``) to the worker's life.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

from celery.signals import beat_embedded_init, worker_ready, worker_shutdown, worker_shutting_down

from xtaldiff import queries
from xtaldiff.broker import create_celery
from xtaldiff.db import session_factory
from xtaldiff.settings import get_settings

log = logging.getLogger(__name__)

app = create_celery(get_settings(), with_tasks=True)
_stop = threading.Event()
_WORKER_PID = os.getpid()  # imported before `--beat` forks its scheduler: the child's parent
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@beat_embedded_init.connect
def _die_with_the_worker(**_kwargs) -> None:
    """`--beat` runs the scheduler as a child process. A SIGKILLed worker would leave it running,
    orphaned, and the restarted worker would start a second one, so that two beats send
    sweeps: on Linux the kernel sends this child SIGTERM when the worker dies."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != _WORKER_PID:  # the worker died before the line above
        os._exit(0)


def _record_worker_heartbeats(name: str, queues: str) -> None:
    settings = get_settings()
    sessions = session_factory(settings.resolved_database_url, settings.db_connect_timeout_s)
    while True:
        try:
            with sessions() as session:
                queries.worker_seen(session, name=name, pid=os.getpid(), queues=queues)
                session.commit()
        except Exception:
            # The database may blip; the next heartbeat tries again.
            log.warning("worker heartbeat failed", exc_info=True)
        if _stop.wait(settings.heartbeat_s):
            return


@worker_ready.connect
def _start_heartbeat(sender, **_kwargs) -> None:
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values()))
    threading.Thread(target=_record_worker_heartbeats, args=(sender.hostname, queues), daemon=True,
                     name="worker-heartbeat").start()


@worker_shutting_down.connect
def _interrupt_running_job(**_kwargs) -> None:
    from worker.jobs import SHUTTING_DOWN

    SHUTTING_DOWN.set()


@worker_shutdown.connect
def _stop_heartbeat(sender, **_kwargs) -> None:
    _stop.set()
    settings = get_settings()
    try:
        with session_factory(settings.resolved_database_url)() as session:
            queries.forget_worker(session, name=sender.hostname)
            session.commit()
    except Exception:
        log.warning("could not remove this worker from the workers table", exc_info=True)


@worker_ready.connect
def _warm_up(sender, **_kwargs) -> None:
    """Import torch and the model code now, not when the first user's job arrives."""
    threading.Thread(target=_import_model, daemon=True, name="warm-up").start()


def _import_model() -> None:
    import model.sampling  # noqa: F401  (the import is the warm-up)
