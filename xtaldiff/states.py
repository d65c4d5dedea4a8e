"""Lifecycle states shared by the API, the worker and the database."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_JOB_STATES


FINISHED_JOB_STATES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class CheckpointStatus(StrEnum):
    validating = "validating"  # uploaded; a worker has yet to load it and sample from it
    ready = "ready"
    rejected = "rejected"
    retired = "retired"


GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "default"
DESIGN_TASK = "xtaldiff.design"
VALIDATE_CHECKPOINT_TASK = "xtaldiff.validate_checkpoint"
SWEEP_TASK = "xtaldiff.requeue_lost_jobs"
