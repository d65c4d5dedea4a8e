"""Running one design job and validating one uploaded checkpoint: plain functions, no Celery.

A job is run by whichever worker claims it (compare-and-set on the job's attempt). While it
runs, a heartbeat thread records progress and liveness; the sampler's progress callback reads
the thread's latest answer and stops between steps when the job was cancelled or taken over.
All structures are written with the final status in one transaction.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from worker.checkpoints import load_cached, local_checkpoint
from worker.records import structure_record
from worker.scoring import mark_known, relax, score
from xtaldiff import queries
from xtaldiff.broker import send, waiting_messages
from xtaldiff.design_params import DesignParams
from xtaldiff.settings import Settings
from xtaldiff.states import DESIGN_TASK, VALIDATE_CHECKPOINT_TASK, JobStatus
from xtaldiff.summary import summarize

log = logging.getLogger(__name__)
FINAL_WRITE_PATIENCE_S = 600.0  # how long a finished job's results wait for the database
FAIR_CLAIM_TRIES = 5  # another worker may take the fairest job first: choose again


# Set when the worker is asked to stop (SIGTERM): a running job stops at its next sampling
# step and goes back to the queue, so a stop takes seconds, not the rest of the job.
SHUTTING_DOWN = threading.Event()


class JobCancelled(Exception):
    pass


class JobInterrupted(Exception):
    """The worker is stopping; the job goes back to the queue for another run."""


class JobLost(Exception):
    """Another worker took the job over (this one was presumed dead)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Writes progress and a heartbeat every ``every_s`` from a thread of its own."""

    def __init__(self, sessions: sessionmaker[Session], *, job_id: str, attempt: int,
                 every_s: float) -> None:
        self.sessions, self.job_id, self.attempt, self.every_s = sessions, job_id, attempt, every_s
        self.done = self.total = 0
        self.phase = "sampling"
        self.cancelled = self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self.record()  # the final progress, which the last periodic beat may have missed

    def progress(self, done: int, total: int) -> None:
        """The sampler's callback, after every reverse step: cheap, and where a job stops."""
        self.done, self.total = done, total
        if self.cancelled:
            raise JobCancelled
        if self.lost:
            raise JobLost
        if SHUTTING_DOWN.is_set():
            raise JobInterrupted

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.record()

    def record(self) -> None:
        try:
            with self.sessions() as session:
                answer = queries.record_heartbeat(session, job_id=self.job_id, attempt=self.attempt,
                                                  done=self.done, total=self.total, phase=self.phase)
                session.commit()
        except Exception:
            # A database blip must not kill the job; if it lasts, the job is taken over.
            log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
            return
        self.lost = answer is None
        self.cancelled = bool(answer)


def claim(sessions: sessionmaker[Session], *, job_id: str, settings: Settings,
          redelivered: bool) -> int | None:
    """Own the job (its new attempt number) or None when there is nothing to do.

    A redelivered message usually means the worker holding it died, but its heartbeat is
    still fresh: wait until it is stale (or the job ends) rather than drop the job.
    """
    deadline = time.monotonic() + settings.stale_after_s + settings.heartbeat_s
    while True:
        with sessions() as session:
            found = queries.claim_job(session, job_id=job_id, worker=worker_name(),
                                      stale_after_s=settings.stale_after_s,
                                      max_worker_losses=settings.max_worker_losses)
            session.commit()
        if found is None:
            log.warning("job %s does not exist", job_id)
            return None
        if found.attempt is not None:
            return found.attempt
        if found.status != JobStatus.running or not redelivered or time.monotonic() > deadline:
            log.info("job %s is %s elsewhere; this delivery is dropped", job_id, found.status)
            return None
        time.sleep(min(settings.heartbeat_s, 1.0))


def run_design(job_id: str, *, settings: Settings, sessions: sessionmaker[Session],
               redelivered: bool = False) -> JobStatus | None:
    """Run a design job to its end. Returns the status it reached, None if not ours to run."""
    from model.checkpoint import CheckpointError
    from model.relax import RelaxationUnavailable
    from model.sampling import DesignError, design

    attempt = None
    if not redelivered:
        # Any message means "there is work": run the fairest queued job, which may not be the
        # message's own (that one then runs on a later message).
        for _ in range(FAIR_CLAIM_TRIES):
            with sessions() as session:
                chosen = queries.fairest_queued_job(session)
            if chosen is None:
                break
            attempt = claim(sessions, job_id=chosen, settings=settings, redelivered=False)
            if attempt is not None:
                job_id = chosen
                break
    if attempt is None:
        attempt = claim(sessions, job_id=job_id, settings=settings, redelivered=redelivered)
    if attempt is None:
        return None
    with sessions() as session:
        job = queries.get_job(session, job_id=job_id)
    params = DesignParams.from_json(job.request)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with Heartbeat(sessions, job_id=job_id, attempt=attempt, every_s=settings.heartbeat_s) as hb:
        try:
            with _timed(timings, "load"):
                path = local_checkpoint(sessions, sha256=job.checkpoint_sha256,
                                        cache_dir=settings.resolved_checkpoint_cache_dir)
                trained = load_cached(path)
            with _timed(timings, "sample"):
                structures = design(
                    trained, n=params.num_samples, target=params.target, num_atoms=params.num_atoms,
                    elements=params.elements, guidance=params.guidance, steps=params.steps,
                    sampler=params.sampler, atom_counts=params.atom_counts,
                    charge_balance=params.charge_balance, seed=params.seed,
                    batch_size=settings.sample_batch_size, progress=hb.progress,
                )
            with _timed(timings, "analyse"):
                rows = [structure_record(s) for s in structures]
            with _timed(timings, "score"):
                score(structures, rows, dataset=job.dataset, oracle=settings.oracle,
                         oracle_workers=settings.oracle_workers)
                mark_known(structures, rows, dataset=job.dataset)
            if params.relax:
                hb.phase = "relaxing"
                with _timed(timings, "relax"):
                    relax(structures, rows, dataset=job.dataset, oracle=settings.oracle,
                          oracle_workers=settings.oracle_workers,
                          max_fire_steps=settings.relax_max_fire_steps, progress=hb.progress)
        except JobCancelled:
            return _end(sessions, job_id, attempt, JobStatus.cancelled, None, timings, started)
        except JobLost:
            log.warning("job %s was taken over by another worker; stopping", job_id)
            return None
        except JobInterrupted:
            with sessions() as session:
                queries.release_job(session, job_id=job_id, attempt=attempt)
                session.commit()
            log.info("job %s returned to the queue: this worker is stopping", job_id)
            return None
        except (DesignError, CheckpointError, RelaxationUnavailable) as err:
            return _end(sessions, job_id, attempt, JobStatus.failed, str(err), timings, started)
        except Exception as err:
            log.exception("job %s failed", job_id)
            return _end(sessions, job_id, attempt, JobStatus.failed,
                        f"internal error in the worker: {type(err).__name__}: {err}",
                        timings, started)
        # Still under the heartbeat: while the write waits out a database outage, the job
        # stays this worker's.
        summary = summarize(rows, target=params.target)
        timings["total"] = round(time.perf_counter() - started, 3)
        written = write_results(sessions, job_id=job_id, attempt=attempt, rows=rows,
                                summary=summary, timings=timings,
                                progress={"progress_done": hb.done, "progress_total": hb.total, "phase": hb.phase})
    if not written:
        log.warning("job %s changed hands before it was written; results dropped", job_id)
        return None
    return JobStatus.succeeded


def write_results(sessions: sessionmaker[Session], *, job_id: str, attempt: int, rows: list[dict],
                  summary: dict, timings: dict, progress: dict | None = None,
                  give_up_after_s: float = FINAL_WRITE_PATIENCE_S) -> bool:
    """`finish_job`, tried again while the database is unreachable: the results took minutes
    of sampling, and an outage at this moment must not throw them away."""
    deadline = time.monotonic() + give_up_after_s
    wait_s = 0.5
    while True:
        try:
            with sessions() as session:
                written = queries.finish_job(session, job_id=job_id, attempt=attempt, structures=rows,
                                             summary=summary, timings=timings, progress=progress)
                session.commit()
                return written
        except (OperationalError, InterfaceError, PoolTimeout):
            if time.monotonic() + wait_s > deadline:
                raise
            log.warning("writing the results of job %s failed; retrying in %.1f s", job_id, wait_s,
                        exc_info=True)
            time.sleep(wait_s)
            wait_s = min(2 * wait_s, 15.0)


def _end(sessions, job_id: str, attempt: int, status: JobStatus, error: str | None,
         timings: dict, started: float) -> JobStatus | None:
    timings["total"] = round(time.perf_counter() - started, 3)
    with sessions() as session:
        ended = queries.end_job(session, job_id=job_id, attempt=attempt, status=status,
                                error=error, timings=timings)
        session.commit()
    return status if ended else None


class _timed:
    def __init__(self, timings: dict, key: str) -> None:
        self.timings, self.key = timings, key

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *_exc) -> None:
        self.timings[self.key] = round(time.perf_counter() - self.start, 3)


def validate_checkpoint(sha256: str, *, settings: Settings,
                        sessions: sessionmaker[Session]) -> str | None:
    """Load an uploaded checkpoint and sample from it; record ready, or rejected with why.

    Returns the rejection reason (None: accepted, or a redelivery of an upload no longer validating).
    """
    from model.checkpoint import CheckpointError
    from model.sampling import DesignError, design

    with sessions() as session:
        started = queries.start_validation(session, sha256=sha256)
        session.commit()
    if started == 0:
        return None  # validated (or retired) already: a redelivered message
    if started > settings.max_worker_losses:
        reason = (f"its validation was started {started - 1} times without finishing (the worker "
                  "was killed or ran out of memory): rejected without trying again")
        with sessions() as session:
            queries.record_validation(session, sha256=sha256, reason=reason)
            session.commit()
        return reason
    reason = None
    cache_dir = settings.resolved_checkpoint_cache_dir
    try:
        path = local_checkpoint(sessions, sha256=sha256, cache_dir=cache_dir)
        trained = load_cached(path)
        steps = min(settings.validation_steps, trained.schedule.config.timesteps)
        structures = design(trained, n=settings.validation_samples,
                            target=trained.meta.property.mean, seed=0, steps=steps)
        if len(structures) != settings.validation_samples:
            reason = (f"sampling gave {len(structures)} structures, "
                      f"not {settings.validation_samples}")
    except (CheckpointError, DesignError) as err:
        reason = str(err)
    except Exception as err:
        log.exception("checkpoint %s failed validation", sha256)
        reason = f"{type(err).__name__}: {err}"
    if reason is not None:  # the uploader sees the file's name, not this server's folders
        reason = reason.replace(f"{cache_dir}{os.sep}", "")
    with sessions() as session:
        queries.record_validation(session, sha256=sha256, reason=reason)
        session.commit()
    return reason


def requeue_lost_jobs(*, settings: Settings, sessions: sessionmaker[Session], celery) -> list[str]:
    """Enqueue again the queued jobs no broker seems to hold, and those whose worker died;
    send again the validation of uploads no broker got. Returns the jobs sent.

    A job sent twice is harmless: only one worker can claim it.
    """
    with sessions() as session:
        lost = queries.lost_jobs(session, requeue_after_s=settings.requeue_after_s,
                                 stale_after_s=settings.stale_after_s,
                                 max_worker_losses=settings.max_worker_losses)
        session.commit()
    # Any message runs the fairest queued job, so queued jobs lack messages only when the broker
    # holds fewer than there are queued jobs: a flood waiting its turn is not sent again.
    held = waiting_messages(celery)
    missing = len(lost.sent_long_ago) if held is None else max(0, lost.queued - held - len(lost.unsent))
    job_ids = [*lost.unsent, *lost.sent_long_ago[:missing]]
    sent = []
    for job_id in job_ids:
        if send(celery, DESIGN_TASK, job_id):
            with sessions() as session:
                queries.mark_enqueued(session, job_id=job_id)
                session.commit()
            sent.append(job_id)
    if sent:
        log.info("enqueued %d lost job(s) again: %s", len(sent), ", ".join(sent))
    with sessions() as session:
        uploads = queries.unsent_validations(session, resend_after_s=settings.requeue_after_s)
    for sha256 in uploads:
        if send(celery, VALIDATE_CHECKPOINT_TASK, sha256):
            with sessions() as session:
                queries.mark_validation_sent(session, sha256=sha256)
                session.commit()
            log.info("sent the validation of checkpoint %s again", sha256[:12])
    return sent
