"""The one place settings are read: environment variables prefixed ``XTALDIFF_``.

Both the API and the worker call :func:`get_settings`; tests override fields by building a
``Settings(...)`` of their own or by setting the environment and clearing the cache.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
MIN_ADMIN_TOKEN_LENGTH = 24


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XTALDIFF_", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development",
        description="production refuses unsafe settings: a short admin token, SQLite.",
    )
    data_dir: Path = Field(
        Path.home() / ".xtaldiff",
        description="Embedded mode keeps its SQLite database, broker file and checkpoint "
        "cache here.",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file in data_dir."
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL; default: kombu's SQLAlchemy transport on a "
        "SQLite file in data_dir (no server)."
    )
    broker_transport_options: dict = Field(
        default_factory=dict,
        description="Passed to kombu as JSON, e.g. a Redis visibility_timeout or "
        "global_keyprefix.",
    )
    checkpoint_cache_dir: Path | None = Field(
        None, description="Where workers cache checkpoint files by sha256; default "
        "data_dir/checkpoints."
    )
    bundled_checkpoints: list[Path] = Field(
        default_factory=lambda: sorted((REPO_ROOT / "checkpoints").glob("*.safetensors")),
        description="Checkpoints registered (trusted, no validation) by `xtaldiff serve` in "
        "embedded mode and by `xtaldiff migrate`; of each dataset's, the one with the best "
        "recorded success rate becomes active.",
    )

    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /admin; the admin routes are off without it."
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="When set, every user route needs one of these keys and a job is only "
        "visible to the key that made it.",
    )

    max_num_samples: int = Field(1000, ge=1, description="Most structures one job may ask for.")
    max_relax_samples: int = Field(
        100, ge=0, description="Most structures one job may ask to relax (CHGNet takes seconds per structure "
        "on a CPU); 0 turns relaxation off.")
    relax_max_fire_steps: int = Field(
        200, ge=1, description="FIRE steps after which a relaxation stops and is reported as not converged; "
        "lower it to bound CHGNet's time per structure on a slow machine.")
    max_pending_jobs: int = Field(
        100, ge=1, description="Most queued or running jobs one API key may have (one caller "
        "address when keys are off); past it POST /design answers 429 with Retry-After.",
    )
    max_worker_losses: int = Field(
        3, ge=1, description="A job whose worker died this many times while running it fails, and "
        "an upload whose validation was started this many times is rejected, instead of being "
        "delivered again: work that kills its worker must not be retried forever.",
    )
    max_steps: int = Field(5000, ge=1, description="Most reverse diffusion steps one job may ask.")
    max_structure_steps: int = Field(
        1_000_000, ge=1, description="Most sampling work one job may ask: num_samples x steps (by default "
        "1000 structures at 1000 steps); past it POST /design answers 422.")
    max_guidance: float = Field(20.0, ge=0, description="Largest classifier-free guidance.")
    max_upload_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest checkpoint upload accepted."
    )
    sample_batch_size: int = Field(128, ge=1, description="Structures sampled per batch.")
    validation_samples: int = Field(
        2, ge=1, description="Structures a worker samples to accept an uploaded checkpoint."
    )

    validation_steps: int = Field(
        20, ge=1, description="Reverse steps of that validation sampling (enough to exercise "
        "every layer; quality is not judged)."
    )
    oracle: bool = Field(
        True, description="Predict each structure's property with the oracle (off: the "
        "structures are stored without predictions)."
    )
    oracle_workers: int = Field(
        1, ge=1, description="Processes the oracle uses to build CrystalNN graphs."
    )

    heartbeat_s: float = Field(
        5.0, gt=0, description="How often a running job and a worker write their heartbeat."
    )
    stale_after_s: float = Field(
        30.0, gt=0, description="A running job whose heartbeat is older is taken over."
    )
    requeue_after_s: float = Field(
        120.0, gt=0,
        description="A queued job last enqueued longer ago than this is enqueued again "
        "(the broker may have lost it).",
    )
    sweep_every_s: float = Field(30.0, gt=0, description="Period of the re-enqueue check.")
    worker_seen_s: float = Field(
        60.0, gt=0, description="/health lists workers whose heartbeat is this recent."
    )
    db_connect_timeout_s: int = Field(
        3, ge=1, description="A database that does not answer within this is down (503)."
    )

    host: str = "127.0.0.1"
    port: int = 8000

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # Compose passes unset variables as empty strings: that means "no admin API".
        return None if value == "" else value

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment != "production":
            return self
        token = self.admin_token.get_secret_value() if self.admin_token else None
        if token is not None and len(token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"XTALDIFF_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters "
                "in production"
            )
        if self.resolved_database_url.startswith("sqlite"):
            raise ValueError("production needs XTALDIFF_DATABASE_URL (PostgreSQL), not SQLite")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'xtaldiff.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def resolved_checkpoint_cache_dir(self) -> Path:
        return self.checkpoint_cache_dir or self.data_dir / "checkpoints"

    def environ(self) -> dict[str, str]:
        """These settings as ``XTALDIFF_*`` variables, for a worker process started by us."""
        env = {
            "XTALDIFF_DATA_DIR": str(self.data_dir),
            "XTALDIFF_DATABASE_URL": self.resolved_database_url,
            "XTALDIFF_BROKER_URL": self.resolved_broker_url,
            "XTALDIFF_BROKER_TRANSPORT_OPTIONS": json.dumps(self.broker_transport_options),
            "XTALDIFF_CHECKPOINT_CACHE_DIR": str(self.resolved_checkpoint_cache_dir),
            "XTALDIFF_ENVIRONMENT": self.environment,
        }
        for name in ("sample_batch_size", "validation_samples", "validation_steps",
                     "oracle", "oracle_workers", "heartbeat_s", "stale_after_s",
                     "requeue_after_s", "sweep_every_s", "worker_seen_s", "db_connect_timeout_s"):
            env[f"XTALDIFF_{name.upper()}"] = str(getattr(self, name))
        return env


@lru_cache
def get_settings() -> Settings:
    return Settings()
