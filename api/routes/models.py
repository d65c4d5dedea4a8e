from __future__ import annotations

from fastapi import APIRouter

from api.deps import OwnerDep, SessionDep
from api.schemas import ModelOut
from api.views import model_out
from xtaldiff import queries

router = APIRouter(tags=["models"])


@router.get("/models", response_model=list[ModelOut], summary="Models that can serve jobs")
def list_models(session: SessionDep, _owner: OwnerDep) -> list[ModelOut]:
    """Ready checkpoints: dataset, conditioning, property and its training range, metrics."""
    return [model_out(c) for c in queries.list_checkpoints(session, ready_only=True)]
