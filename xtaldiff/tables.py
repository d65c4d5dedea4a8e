"""SQLAlchemy 2 tables: jobs, the structures they produce, checkpoints and their bytes, workers.

The schema changes only through Alembic (``migrations/``); nothing here creates tables.
Types are chosen to mean the same on PostgreSQL and SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from xtaldiff.checkpoint_file import CheckpointMeta, parse_header
from xtaldiff.states import CheckpointStatus, JobStatus

# Named constraints so that migrations can drop them on both databases.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes; SQLite hands back naive values, which are UTC here."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    dataset: Mapped[str] = mapped_column(String(32))
    conditioning: Mapped[str] = mapped_column(String(16))
    status: Mapped[CheckpointStatus] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    # Activated through /admin: `serve` and `migrate` then leave the dataset's choice alone.
    chosen_by_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    header_json: Mapped[dict] = mapped_column("meta", JSON)  # the checkpoint's header as uploaded
    size_bytes: Mapped[int] = mapped_column(Integer)
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the validation task last went to the broker (None: not yet, the sweep sends it).
    validation_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    validation_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        # At most one active checkpoint per dataset, enforced by the database itself.
        Index(
            "uq_checkpoints_active_dataset",
            "dataset",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
    )

    @property
    def meta(self) -> CheckpointMeta:
        """The header, checked and typed (it was checked on upload; this re-reads it)."""
        return parse_header(self.header_json)


class CheckpointBlob(Base):
    """The checkpoint file itself, so a worker on any machine can fetch it by sha256."""

    __tablename__ = "checkpoint_blobs"

    sha256: Mapped[str] = mapped_column(
        ForeignKey("checkpoints.sha256", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[JobStatus] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(64))  # sha256 of the API key, if keys are on
    # Who asked, for the per-caller limit and the fair queue: the owner when keys are on, else
    # "ip:<address>" (None: a job written before migration 0005 by a keyless caller).
    client: Mapped[str | None] = mapped_column(String(80))
    checkpoint_sha256: Mapped[str] = mapped_column(ForeignKey("checkpoints.sha256"))
    model_name: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(32))
    property_name: Mapped[str] = mapped_column(String(64))
    property_unit: Mapped[str] = mapped_column(String(32))
    request: Mapped[dict] = mapped_column(JSON)
    warnings: Mapped[list] = mapped_column(JSON, default=list)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    phase: Mapped[str | None] = mapped_column(String(16))  # what progress counts: sampling or relaxing
    # Bumped by every worker that takes the job; a worker whose attempt is no longer the
    # job's may not write to it (compare-and-set), which keeps redeliveries from duplicating.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    enqueue_count: Mapped[int] = mapped_column(Integer, default=0)
    # Times the worker running it stopped beating (killed, out of memory) and another took over.
    worker_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict | None] = mapped_column(JSON)
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    structures: Mapped[list[StructureRow]] = relationship(
        back_populates="job", order_by="StructureRow.index", passive_deletes=True
    )

    __table_args__ = (Index("ix_jobs_status_enqueued_at", "status", "enqueued_at"),)


class StructureRow(Base):
    __tablename__ = "structures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    formula: Mapped[str] = mapped_column(String(255))
    reduced_formula: Mapped[str] = mapped_column(String(255))
    num_atoms: Mapped[int] = mapped_column(Integer)
    a: Mapped[float] = mapped_column(Float)
    b: Mapped[float] = mapped_column(Float)
    c: Mapped[float] = mapped_column(Float)
    alpha: Mapped[float] = mapped_column(Float)
    beta: Mapped[float] = mapped_column(Float)
    gamma: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)
    space_group_symbol: Mapped[str] = mapped_column(String(32))
    space_group_number: Mapped[int] = mapped_column(Integer)
    cif: Mapped[str] = mapped_column(Text)  # symmetrised, space group found at symprec 0.1
    cif_p1: Mapped[str] = mapped_column(Text)  # the raw cell the model produced
    predicted_property: Mapped[float | None] = mapped_column(Float)
    prediction_note: Mapped[str | None] = mapped_column(Text)
    valid_structure: Mapped[bool | None] = mapped_column(Boolean)
    valid_composition: Mapped[bool | None] = mapped_column(Boolean)
    invalid_reason: Mapped[str | None] = mapped_column(Text)
    # A job with "relax": true: the cell CHGNet relaxed it to (P1), and model.relax.Relaxation's
    # figures with the oracle's prediction and validity of the relaxed structure.
    relaxed_cif: Mapped[str | None] = mapped_column(Text)
    relaxation: Mapped[dict | None] = mapped_column(JSON)
    # The dataset structure it matches (model.known: material_id and split); novel is None when
    # it was not checked (an invalid structure, a server without the dataset, a job before this).
    known_as: Mapped[dict | None] = mapped_column(JSON)
    novel: Mapped[bool | None] = mapped_column(Boolean)
    # A formation-energy dataset (mp_20): eV/atom above the hull of its compounds, from the
    # oracle's prediction (model.stability); None without a prediction or for the other sets.
    predicted_e_above_hull: Mapped[float | None] = mapped_column(Float)

    job: Mapped[Job] = relationship(back_populates="structures")

    # A retried task that somehow wrote twice would hit this instead of duplicating.
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    @property
    def valid(self) -> bool | None:
        if self.valid_structure is None or self.valid_composition is None:
            return None
        return self.valid_structure and self.valid_composition


class Worker(Base):
    """Workers write a heartbeat here; /health lists the ones seen recently."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
