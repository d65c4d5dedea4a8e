"""Checkpoint files on this machine: fetched from the database by sha256, cached on disk, and
the loaded model cached per process."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from xtaldiff import queries


class CheckpointMissing(LookupError):
    pass


def local_checkpoint(sessions: sessionmaker[Session], *, sha256: str, cache_dir: Path) -> Path:
    """Path of the checkpoint with this sha256, downloading it from the database if needed."""
    path = cache_dir / f"{sha256}.safetensors"
    if path.is_file():
        return path
    with sessions() as session:
        data = queries.checkpoint_bytes(session, sha256=sha256)
    if data is None:
        raise CheckpointMissing(f"checkpoint {sha256} is not in the database")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointMissing(f"checkpoint {sha256}: stored bytes do not match their sha256")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Written under a unique name and renamed, so concurrent workers never read half a file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


@lru_cache(maxsize=2)
def load_cached(path: Path):
    """The model in ``path`` (named by its sha256), loaded once per process."""
    from model.checkpoint import load_model

    return load_model(path)
