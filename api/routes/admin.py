from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from api.deps import AdminDep, CeleryDep, SessionDep
from api.errors import Conflict, NotFound, Unprocessable
from api.schemas import MODEL_NAME_PATTERN, CheckpointOut, Problem
from api.views import checkpoint_out
from xtaldiff import queries
from xtaldiff.broker import send
from xtaldiff.checkpoint_file import CheckpointFileError, inspect_checkpoint
from xtaldiff.states import VALIDATE_CHECKPOINT_TASK, CheckpointStatus
from xtaldiff.tables import Checkpoint

router = APIRouter(
    prefix="/admin/checkpoints", tags=["admin"], dependencies=[AdminDep],
    responses={401: {"model": Problem}, 403: {"model": Problem}},
)


def _checkpoint(session, name: str) -> Checkpoint:
    checkpoint = queries.get_checkpoint(session, name=name)
    if checkpoint is None:
        raise NotFound(f"no checkpoint named {name!r}; GET /admin/checkpoints lists them")
    return checkpoint


@router.post(
    "", response_model=CheckpointOut, status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"model": Problem}, 413: {"model": Problem}, 422: {"model": Problem}},
    summary="Upload a checkpoint",
)
def upload_checkpoint(
    session: SessionDep, celery: CeleryDep,
    file: Annotated[UploadFile, File(description="A .safetensors checkpoint written by "
                                                 "xtaldiff (model.checkpoint).")],
    name: Annotated[str | None, Form(description="Name to serve it under; default "
                                                 "<dataset>_<conditioning>_<sha256[:8]>.")] = None,
) -> CheckpointOut:
    """Check the header and shapes, store the file, and have a worker validate it.

    It serves once a worker has loaded it and sampled from it (status ready); a file that
    fails is marked rejected with the reason.
    """
    if name is not None and not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise Unprocessable("name: use 1-64 letters, digits, '_', '.', '-', starting with a "
                         "letter or digit")
    try:
        inspected = inspect_checkpoint(file.file)
    except CheckpointFileError as err:
        raise Unprocessable(f"file: {err}") from None
    existing = queries.get_checkpoint(session, sha256=inspected.sha256)
    if existing is not None:
        raise Conflict(f"this file is already registered as {existing.name!r} "
                       f"({existing.status})")
    name = name or f"{inspected.meta.dataset}_{inspected.meta.conditioning}_{inspected.sha256[:8]}"
    if queries.get_checkpoint(session, name=name) is not None:
        raise Conflict(f"name {name!r} is taken; give another `name`")
    file.file.seek(0)
    checkpoint = queries.add_checkpoint(session, file=inspected, name=name,
                                        data=file.file.read(), status=CheckpointStatus.validating)
    session.commit()
    # A refused send leaves validation_sent_at empty: the periodic check sends it later.
    if send(celery, VALIDATE_CHECKPOINT_TASK, checkpoint.sha256):
        queries.mark_validation_sent(session, sha256=checkpoint.sha256)
        session.commit()
    return checkpoint_out(checkpoint)


@router.get("", response_model=list[CheckpointOut], summary="All checkpoints")
def list_checkpoints(session: SessionDep) -> list[CheckpointOut]:
    return [checkpoint_out(c) for c in queries.list_checkpoints(session, ready_only=False)]


@router.post("/{name}/activate", response_model=CheckpointOut,
             responses={404: {"model": Problem}, 409: {"model": Problem}},
             summary="Serve this checkpoint for its dataset")
def activate(name: str, session: SessionDep) -> CheckpointOut:
    checkpoint = _checkpoint(session, name)
    if checkpoint.status != CheckpointStatus.ready:
        detail = f": {checkpoint.rejection_reason}" if checkpoint.rejection_reason else ""
        raise Conflict(f"checkpoint {name} is {checkpoint.status}{detail}; only a ready "
                       "checkpoint can be activated")
    queries.activate_checkpoint(session, checkpoint=checkpoint, by_admin=True)
    session.commit()
    return checkpoint_out(checkpoint)


@router.post("/{name}/retire", response_model=CheckpointOut,
             responses={404: {"model": Problem}}, summary="Stop serving this checkpoint")
def retire(name: str, session: SessionDep) -> CheckpointOut:
    """Jobs already queued on it still run; new requests can no longer name it. `restore`
    undoes it."""
    checkpoint = _checkpoint(session, name)
    if checkpoint.status not in (CheckpointStatus.ready, CheckpointStatus.retired):
        raise Conflict(f"checkpoint {name} is {checkpoint.status}; only a ready checkpoint can "
                       "be retired (a rejected one never serves)")
    queries.retire_checkpoint(session, checkpoint=checkpoint)
    session.commit()
    return checkpoint_out(checkpoint)


@router.post("/{name}/restore", response_model=CheckpointOut,
             responses={404: {"model": Problem}, 409: {"model": Problem}},
             summary="Undo a retirement")
def restore(name: str, session: SessionDep) -> CheckpointOut:
    """The checkpoint is ready again (requests may name it); activate it to serve its dataset."""
    checkpoint = _checkpoint(session, name)
    if checkpoint.status not in (CheckpointStatus.retired, CheckpointStatus.ready):
        raise Conflict(f"checkpoint {name} is {checkpoint.status}; only a retired checkpoint "
                       "can be restored")
    checkpoint.status = CheckpointStatus.ready
    session.commit()
    return checkpoint_out(checkpoint)
