"""Every query the API and the worker make, as keyword-only functions over a Session.

No function here commits: each unit of work (an API request, one step of a job's life in the
worker) commits once, in its caller, so a caller can see a change and its consequences land
together or not at all.

State changes a worker makes are compare-and-set on ``(status, attempt)``: a worker that lost
its job (killed, taken over after a stale heartbeat, or cancelled) cannot write to it, and a
redelivered task finds the job already claimed or finished.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, case, delete, func, or_, select, update
from sqlalchemy.orm import Session

from xtaldiff.checkpoint_file import CheckpointFile
from xtaldiff.states import CheckpointStatus, JobStatus
from xtaldiff.tables import Checkpoint, CheckpointBlob, Job, StructureRow, Worker, utcnow

# --- checkpoints ----------------------------------------------------------------------------


def add_checkpoint(
    session: Session, *, file: CheckpointFile, name: str, data: bytes, status: CheckpointStatus
) -> Checkpoint:
    checkpoint = Checkpoint(
        sha256=file.sha256, name=name, dataset=file.meta.dataset, conditioning=file.meta.conditioning,
        status=status, active=False, header_json=file.meta.as_dict(), size_bytes=file.size_bytes,
        validated_at=utcnow() if status == CheckpointStatus.ready else None,
    )
    session.add(checkpoint)
    session.add(CheckpointBlob(sha256=file.sha256, data=data))
    session.flush()
    return checkpoint


def get_checkpoint(
    session: Session, *, name: str | None = None, sha256: str | None = None
) -> Checkpoint | None:
    if sha256 is not None:
        return session.get(Checkpoint, sha256)
    return session.scalar(select(Checkpoint).where(Checkpoint.name == name))


def active_checkpoint(session: Session, *, dataset: str) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint).where(Checkpoint.dataset == dataset, Checkpoint.active)
    )


def list_checkpoints(session: Session, *, ready_only: bool) -> Sequence[Checkpoint]:
    query = select(Checkpoint).order_by(Checkpoint.dataset, Checkpoint.uploaded_at)
    if ready_only:
        query = query.where(Checkpoint.status == CheckpointStatus.ready)
    return session.scalars(query).all()


def activate_checkpoint(session: Session, *, checkpoint: Checkpoint, by_admin: bool = False) -> None:
    """Make ``checkpoint`` the one its dataset's requests go to (it must be ready)."""
    session.execute(
        update(Checkpoint)
        .where(Checkpoint.dataset == checkpoint.dataset, Checkpoint.sha256 != checkpoint.sha256)
        .values(active=False, chosen_by_admin=False)
    )
    # The unique partial index on active checkpoints sees the old one cleared first.
    session.flush()
    checkpoint.active = True
    checkpoint.chosen_by_admin = by_admin
    session.flush()


def retire_checkpoint(session: Session, *, checkpoint: Checkpoint) -> None:
    checkpoint.status = CheckpointStatus.retired
    checkpoint.active = False
    session.flush()


def mark_validation_sent(session: Session, *, sha256: str) -> None:
    session.execute(update(Checkpoint).where(Checkpoint.sha256 == sha256)
                    .values(validation_sent_at=utcnow()))


def unsent_validations(session: Session, *, resend_after_s: float) -> list[str]:
    """Uploads still validating whose task no broker got, or got long ago (lost with it)."""
    now = utcnow()
    never_sent = Checkpoint.validation_sent_at.is_(None) & (
        Checkpoint.uploaded_at < now - timedelta(seconds=5))
    long_ago = Checkpoint.validation_sent_at < now - timedelta(seconds=resend_after_s)
    return list(session.scalars(
        select(Checkpoint.sha256).where(Checkpoint.status == CheckpointStatus.validating,
                                        or_(never_sent, long_ago))
    ).all())


def start_validation(session: Session, *, sha256: str) -> int:
    """Count one more start of this upload's validation; returns the count (0: not validating)."""
    return session.scalar(
        update(Checkpoint).where(Checkpoint.sha256 == sha256, Checkpoint.status == CheckpointStatus.validating)
        .values(validation_attempts=Checkpoint.validation_attempts + 1)
        .returning(Checkpoint.validation_attempts)
    ) or 0


def record_validation(session: Session, *, sha256: str, reason: str | None) -> Checkpoint | None:
    """Mark a validating checkpoint ready (reason None) or rejected with the reason."""
    checkpoint = session.get(Checkpoint, sha256)
    if checkpoint is None or checkpoint.status != CheckpointStatus.validating:
        return checkpoint
    checkpoint.status = CheckpointStatus.rejected if reason else CheckpointStatus.ready
    checkpoint.rejection_reason = reason
    checkpoint.validated_at = utcnow()
    session.flush()
    return checkpoint


def checkpoint_bytes(session: Session, *, sha256: str) -> bytes | None:
    return session.scalar(select(CheckpointBlob.data).where(CheckpointBlob.sha256 == sha256))


# --- jobs -----------------------------------------------------------------------------------


def create_job(
    session: Session, *, checkpoint: Checkpoint, request: dict, warnings: list[str],
    owner: str | None, client: str | None = None,
) -> Job:
    """A queued job, counted as sent: the caller sends it right after committing (one commit
    on the happy path) and calls ``mark_unsent`` if the broker refused it."""
    job = Job(
        id=str(uuid.uuid4()), status=JobStatus.queued, owner=owner, client=client or owner,
        checkpoint_sha256=checkpoint.sha256, model_name=checkpoint.name,
        dataset=checkpoint.dataset, property_name=checkpoint.meta.property.name,
        property_unit=checkpoint.meta.property.unit, request=request, warnings=warnings,
        progress_done=0, progress_total=0, attempt=0, enqueue_count=1, cancel_requested=False,
        timings={}, created_at=utcnow(), enqueued_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: str, owner: str | None = None) -> Job | None:
    """The job, or None when it does not exist or belongs to another API key."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        return None
    return job


def mark_unsent(session: Session, *, job_id: str) -> None:
    """The broker did not take the job: the periodic check sends it at its next run."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=None))


def mark_enqueued(session: Session, *, job_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(enqueued_at=utcnow(), enqueue_count=Job.enqueue_count + 1)
    )


@dataclass(frozen=True)
class Claim:
    """What ``claim_job`` found: ``attempt`` is set when this worker now owns the job."""

    attempt: int | None
    status: JobStatus
    heartbeat_at: datetime | None


def fairest_queued_job(session: Session) -> str | None:
    """The queued job to run next, so that no caller starves another: the client (API key, or
    address when keys are off) with the fewest running jobs, then the one whose last job
    started longest ago, then the oldest job. A flood from one client thus interleaves with
    the others' jobs."""
    queued = session.execute(
        select(Job.id, Job.client, Job.created_at)
        .where(Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
        .order_by(Job.created_at).limit(10_000)
    ).all()
    if not queued:
        return None
    running = dict(session.execute(
        select(Job.client, func.count()).where(Job.status == JobStatus.running).group_by(Job.client)
    ).all())
    last_started = dict(session.execute(
        select(Job.client, func.max(Job.started_at)).where(Job.started_at.is_not(None))
        .group_by(Job.client)
    ).all())
    never = datetime.min.replace(tzinfo=UTC)

    def turn(row) -> tuple:
        started = last_started.get(row.client)
        return (running.get(row.client, 0), _aware(started) if started else never, _aware(row.created_at))

    return min(queued, key=turn).id


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time here is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def worker_loss_error(losses: int) -> str:
    return (f"the worker running this job stopped {losses} times before finishing it (killed, or out "
            "of memory), so it is not run again: ask for fewer structures, fewer steps or no "
            "relaxation, or tell the operator")


def claim_job(session: Session, *, job_id: str, worker: str, stale_after_s: float,
              max_worker_losses: int) -> Claim | None:
    """Take a queued job, or a running one whose worker stopped beating; None if no such job.

    A job whose worker was lost `max_worker_losses` times fails instead of being taken over.
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return None
    now = utcnow()
    abandoned = (Job.status == JobStatus.running) & (Job.heartbeat_at < now - timedelta(seconds=stale_after_s))
    mine = (Job.id == job_id, Job.attempt == job.attempt)
    given_up = session.execute(
        update(Job).where(*mine, abandoned, Job.cancel_requested.is_(False),
                          Job.worker_losses + 1 >= max_worker_losses)
        .values(status=JobStatus.failed, attempt=job.attempt + 1, worker_losses=job.worker_losses + 1,
                finished_at=now, error=worker_loss_error(job.worker_losses + 1))
        .execution_options(synchronize_session=False)
    )
    if given_up.rowcount == 1:
        session.refresh(job)
        return Claim(None, JobStatus.failed, job.heartbeat_at)
    result = session.execute(
        update(Job)
        .where(*mine, Job.cancel_requested.is_(False), or_(Job.status == JobStatus.queued, abandoned))
        .values(status=JobStatus.running, attempt=job.attempt + 1, worker=worker,
                heartbeat_at=now, started_at=func.coalesce(Job.started_at, now),
                worker_losses=Job.worker_losses + case((Job.status == JobStatus.running, 1), else_=0),
                progress_done=0)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        return Claim(job.attempt + 1, JobStatus.running, now)
    session.refresh(job)
    return Claim(None, JobStatus(job.status), job.heartbeat_at)


def _owned(job_id: str, attempt: int):
    return (Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)


def record_heartbeat(session: Session, *, job_id: str, attempt: int, done: int | None = None,
                     total: int | None = None, phase: str | None = None) -> bool | None:
    """Record liveness (and progress). Returns cancel_requested, or None if the job is lost."""
    values: dict = {"heartbeat_at": utcnow()}
    if done is not None:
        values.update(progress_done=done, progress_total=total, phase=phase)
    result = session.execute(
        update(Job).where(*_owned(job_id, attempt)).values(**values)
        .returning(Job.cancel_requested)
    )
    row = result.first()
    return None if row is None else bool(row[0])


def finish_job(
    session: Session, *, job_id: str, attempt: int, structures: list[dict], summary: dict,
    timings: dict, progress: dict | None = None,
) -> bool:
    """Write every structure and mark the job succeeded, in one transaction, or do nothing.

    progress: the last progress_done, progress_total and phase (the heartbeat's last beat may
    not have carried them). False when this attempt no longer owns the job (another worker
    took it over, or it was cancelled): then nothing is written, so a redelivered task never
    duplicates structures.
    """
    result = session.execute(
        update(Job).where(*_owned(job_id, attempt))
        .values(status=JobStatus.succeeded, finished_at=utcnow(), summary=summary,
                timings=timings, heartbeat_at=utcnow(), **(progress or {}))
    )
    if result.rowcount != 1:
        return False
    session.add_all(StructureRow(job_id=job_id, index=k, **row) for k, row in enumerate(structures))
    return True


def end_job(session: Session, *, job_id: str, attempt: int, status: JobStatus,
            error: str | None, timings: dict | None = None) -> bool:
    """Mark an owned job failed or cancelled."""
    values: dict = {"status": status, "error": error, "finished_at": utcnow()}
    if timings is not None:
        values["timings"] = timings
    result = session.execute(update(Job).where(*_owned(job_id, attempt)).values(**values))
    return result.rowcount == 1


def release_job(session: Session, *, job_id: str, attempt: int) -> bool:
    """Put an owned running job back in the queue, unsent (the periodic check sends it)."""
    result = session.execute(
        update(Job).where(*_owned(job_id, attempt))
        .values(status=JobStatus.queued, attempt=Job.attempt + 1, enqueued_at=None,
                progress_done=0)
    )
    return result.rowcount == 1


def count_pending_jobs(session: Session, *, client: str) -> int:
    """Queued or running jobs of this client (see ``Job.client``)."""
    return session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.client == client, Job.status.in_((JobStatus.queued, JobStatus.running)))
    )


def request_cancel(session: Session, *, job: Job) -> JobStatus:
    """Cancel a queued job now; ask a running one to stop. Returns the job's status after."""
    session.execute(
        update(Job).where(Job.id == job.id, Job.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=utcnow())
    )
    session.execute(
        update(Job).where(Job.id == job.id, Job.status == JobStatus.running)
        .values(cancel_requested=True)
    )
    session.refresh(job)
    return JobStatus(job.status)


@dataclass(frozen=True)
class LostJobs:
    """What the sweep found: queued jobs with no message for sure (revived from a dead worker,
    or never sent), queued ones last sent long ago (their message may be waiting its turn, or
    lost), oldest first, and how many jobs are queued in all."""

    unsent: list[str]
    sent_long_ago: list[str]
    queued: int


def lost_jobs(session: Session, *, requeue_after_s: float, stale_after_s: float,
              max_worker_losses: int) -> LostJobs:
    """Jobs that may need a message again: queued ones not (re)sent lately, running ones
    nobody beats for.

    A running job whose worker died goes back to queued here (or fails, the
    `max_worker_losses`-th time); its attempt counter keeps the dead worker, should it come
    back, from writing to it.
    """
    now = utcnow()
    stale = now - timedelta(seconds=stale_after_s)
    dead = (Job.status == JobStatus.running, Job.heartbeat_at < stale)
    session.execute(
        update(Job).where(*dead, Job.cancel_requested)
        .values(status=JobStatus.cancelled, attempt=Job.attempt + 1, finished_at=now)
    )
    # A job fails here when its worker_losses reach the maximum, so the count is that maximum.
    session.execute(
        update(Job).where(*dead, Job.worker_losses + 1 >= max_worker_losses)
        .values(status=JobStatus.failed, attempt=Job.attempt + 1, worker_losses=Job.worker_losses + 1,
                finished_at=now, error=worker_loss_error(max_worker_losses))
    )
    revived = session.scalars(
        update(Job).where(*dead)
        .values(status=JobStatus.queued, attempt=Job.attempt + 1, enqueued_at=None,
                worker_losses=Job.worker_losses + 1)
        .returning(Job.id)
    ).all()
    queued = (Job.status == JobStatus.queued,)
    # A job the API has just written may not be sent yet: leave it a moment.
    unsent = session.scalars(
        select(Job.id).where(*queued, Job.enqueued_at.is_(None), Job.created_at < now - timedelta(seconds=5))
        .order_by(Job.created_at)
    ).all()
    sent_long_ago = session.scalars(
        select(Job.id).where(*queued, Job.enqueued_at < now - timedelta(seconds=requeue_after_s))
        .order_by(Job.created_at)
    ).all()
    return LostJobs(unsent=list(dict.fromkeys([*revived, *unsent])), sent_long_ago=list(sent_long_ago),
                    queued=session.scalar(select(func.count()).select_from(Job).where(*queued)))


def job_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: count for status, count in rows}


# --- structures -----------------------------------------------------------------------------


def _structures_of(job_id: str) -> Select:
    return select(StructureRow).where(StructureRow.job_id == job_id).order_by(StructureRow.index)


def list_structures(session: Session, *, job_id: str, offset: int = 0,
                    limit: int | None = None) -> Sequence[StructureRow]:
    return session.scalars(_structures_of(job_id).offset(offset).limit(limit)).all()


def count_structures(session: Session, *, job_id: str) -> int:
    return session.scalar(
        select(func.count()).select_from(StructureRow).where(StructureRow.job_id == job_id)
    )


def get_structure(session: Session, *, job_id: str, index: int) -> StructureRow | None:
    return session.scalar(
        select(StructureRow).where(StructureRow.job_id == job_id, StructureRow.index == index)
    )


# --- workers --------------------------------------------------------------------------------


def worker_seen(session: Session, *, name: str, pid: int, queues: str) -> None:
    worker = session.get(Worker, name)
    if worker is None:
        session.add(Worker(name=name, pid=pid, queues=queues, started_at=utcnow(),
                           last_seen_at=utcnow()))
    else:
        worker.pid, worker.queues, worker.last_seen_at = pid, queues, utcnow()


def recent_workers(session: Session, *, within_s: float) -> Sequence[Worker]:
    since = utcnow() - timedelta(seconds=within_s)
    return session.scalars(select(Worker).where(Worker.last_seen_at >= since)
                           .order_by(Worker.name)).all()


def forget_worker(session: Session, *, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))
