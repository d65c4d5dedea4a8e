from __future__ import annotations

from fastapi import APIRouter

from api.deps import OwnerDep, SessionDep
from api.design import system_out
from api.schemas import ModelOut, Problem, SystemOut
from api.views import model_out
from xtaldiff import queries

router = APIRouter(tags=["models"])


@router.get("/models", response_model=list[ModelOut], summary="Models that can serve jobs")
def list_models(session: SessionDep, _owner: OwnerDep) -> list[ModelOut]:
    """Ready checkpoints: dataset, conditioning, property and its training range, metrics."""
    return [model_out(c) for c in queries.list_checkpoints(session, ready_only=True)]


@router.get("/models/{name}/systems/{system}", response_model=SystemOut,
            responses={404: {"model": Problem}, 422: {"model": Problem}},
            summary="The training structures of a chemical system")
def get_system(name: str, system: str, session: SessionDep, _owner: OwnerDep) -> SystemOut:
    """How many training structures of the model's dataset are made only of the elements of
    `system` (symbols joined by "-", e.g. Li-Fe-P-O), and their property's least value, 5th
    percentile and median: the least is what POST /design runs at for these `elements` and no
    `target`."""
    return system_out(session, name=name, system=system)
