"""What `xtaldiff serve` and `xtaldiff worker` do, as plain functions.

Embedded mode (the default): SQLite file and kombu's SQLAlchemy transport on a SQLite file in
the data directory, the schema migrated, the committed checkpoints registered and active, and
a real Celery worker in a child process that this process starts, restarts if it dies, and
stops with itself. The task code is the production code.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from xtaldiff import db, queries
from xtaldiff.checkpoint_file import CheckpointMeta, inspect_checkpoint
from xtaldiff.settings import REPO_ROOT, Settings
from xtaldiff.states import DEFAULT_QUEUE, GPU_QUEUE, CheckpointStatus
from xtaldiff.tables import Checkpoint

log = logging.getLogger(__name__)
STOP_GRACE_S = 20


def register_checkpoint(sessions: sessionmaker[Session], path: Path, *, activate: bool = True,
                        bundled: bool = False) -> Checkpoint:
    """Store a trusted local checkpoint as ready and (unless told not to) make it its
    dataset's active model.

    It is named after its file. Another checkpoint holding that name keeps it, and this one is
    `<name>_<sha8>`, unless this one is `bundled`: a bundled file owns its name, so new weights
    committed under checkpoints/ answer to it after an upgrade, and the weights they replaced
    stay ready as `<name>_<their sha8>` (jobs keep the sha256 they ran with)."""
    with open(path, "rb") as handle:
        inspected = inspect_checkpoint(handle)
        with sessions() as session:
            name = path.stem
            checkpoint = queries.get_checkpoint(session, sha256=inspected.sha256)
            holder = queries.get_checkpoint(session, name=name)
            if holder is not None and holder.sha256 != inspected.sha256 and bundled:
                holder.name = f"{name}_{holder.sha256[:8]}"
                log.warning("%s: the file changed; its earlier weights are now %s", name, holder.name)
                session.flush()
                holder = None
            if checkpoint is None:
                handle.seek(0)
                checkpoint = queries.add_checkpoint(
                    session, file=inspected, data=handle.read(), status=CheckpointStatus.ready,
                    name=name if holder is None else f"{name}_{inspected.sha256[:8]}",
                )
            elif bundled:
                checkpoint.name = name
            if activate and checkpoint.status == CheckpointStatus.ready:
                queries.activate_checkpoint(session, checkpoint=checkpoint)
            session.commit()
    return checkpoint


def worker_command(*, queues: str, concurrency: int, pool: str, beat: bool,
                   loglevel: str, hostname: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker",
               "--queues", queues, "--concurrency", str(concurrency), "--pool", pool,
               "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    if beat:
        command.append("--beat")
    if hostname:
        command += ["--hostname", hostname]
    return command


class WorkerSupervisor:
    """Runs the worker child, restarts it if it dies, stops it on ``stop()``."""

    def __init__(self, settings: Settings, *, loglevel: str = "info") -> None:
        self.command = worker_command(
            queues=f"{GPU_QUEUE},{DEFAULT_QUEUE}", concurrency=1, pool="solo", beat=True,
            loglevel=loglevel, hostname=f"embedded@{socket.gethostname()}",
        )
        self.env = {**os.environ, **settings.environ(),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                os.environ.get("PYTHONPATH")]))}
        self.process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            # Its own process group, so that stop() also reaches the beat child it forks.
            self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
            code = self.process.wait()
            if not self._stopping.is_set():
                log.warning("embedded worker exited with %s; starting it again", code)
                self._stopping.wait(2)

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            # SIGTERM is Celery's warm shutdown: the running task finishes or is requeued.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # whatever of the group is left
            except ProcessLookupError:
                pass
        self._thread.join(timeout=5)


def serving_rank(meta: CheckpointMeta) -> tuple[float, float]:
    """Which of a dataset's models serves it: SR5 at its default guidance, then at w = 0
    (`xtaldiff record-evaluation` writes both; a model never evaluated ranks last)."""
    metrics = meta.metrics
    at_default = metrics.get("at_default_guidance") or {}
    at_w0 = metrics.get("at_w0") or {}
    return float(at_default.get("SR5", -1.0)), float(at_w0.get("SR5", -1.0))


def prepare_database(settings: Settings) -> None:
    """Migrate the schema and register the bundled checkpoints; each dataset's best ready one
    becomes active, unless an admin chose the dataset's model (that choice stays)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    db.upgrade(url)
    sessions = db.session_factory(url)
    best: dict[str, tuple[tuple[float, float], str]] = {}
    for path in settings.bundled_checkpoints:
        if not path.is_file():
            log.warning("no checkpoint at %s: upload one through /admin/checkpoints", path)
            continue
        checkpoint = register_checkpoint(sessions, path, activate=False, bundled=True)
        if checkpoint.status == CheckpointStatus.ready:
            rank = serving_rank(checkpoint.meta)
            if checkpoint.dataset not in best or rank > best[checkpoint.dataset][0]:
                best[checkpoint.dataset] = (rank, checkpoint.sha256)
    with sessions() as session:
        for dataset, (_, sha256) in best.items():
            current = queries.active_checkpoint(session, dataset=dataset)
            if current is not None and current.chosen_by_admin:
                log.info("%s: keeping %s, an admin's choice", dataset, current.name)
                continue
            chosen = queries.get_checkpoint(session, sha256=sha256)
            queries.activate_checkpoint(session, checkpoint=chosen)
            log.info("%s: serving %s (%s)", dataset, chosen.name, sha256[:12])
        session.commit()


def _exit_cleanly(_signum, _frame) -> None:
    raise SystemExit(0)


def serve(settings: Settings, *, embedded_worker: bool, migrate: bool, workers: int = 1,
          log_level: str = "info") -> None:
    import uvicorn

    if migrate:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db.upgrade(settings.resolved_database_url)
    supervisor = None
    # uvicorn restores the handlers it found and then raises the signal it caught again; with
    # the default SIGTERM handler the process would die right there, leaving the worker child
    # running. This one unwinds through `finally`, which stops the child.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if embedded_worker:
        prepare_database(settings)
        supervisor = WorkerSupervisor(settings, loglevel=log_level)
        supervisor.start()
    try:
        if workers > 1:
            # Each uvicorn worker process builds its app from the same XTALDIFF_* environment.
            os.environ.update(settings.environ())
            target = "api.main:create_app"
        else:
            from api.main import create_app

            target = create_app(settings)
        uvicorn.run(target, factory=workers > 1, host=settings.host, port=settings.port,
                    workers=workers, log_level=log_level)
    finally:
        if supervisor is not None:
            supervisor.stop()
