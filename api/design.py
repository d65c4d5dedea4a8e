"""Checking a design request against the chosen model and the server's limits.

Plain functions over a session: routes call them, tests call them without HTTP.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.errors import NotFound, Unprocessable
from api.schemas import MAX_SEED, DesignRequest, SystemOut
from xtaldiff import queries
from xtaldiff.checkpoint_file import PropertyStats
from xtaldiff.datasets import dataset as dataset_info
from xtaldiff.design_params import DesignParams
from xtaldiff.elements import SYMBOLS
from xtaldiff.settings import Settings
from xtaldiff.states import CheckpointStatus
from xtaldiff.tables import Checkpoint
from xtaldiff.training_systems import (
    NoDefaultTarget,
    TrainingDataMissing,
    default_target,
    target_note,
    training_reference,
)

# A target more than this many training ranges beyond the range is refused: the condition
# embedding never saw anything like it and the samples would be noise. Closer targets are
# run, with a warning, because asking for "more stable than anything seen" is the point of
# inverse design and the oracle's predictions then show how far the model got.
REFUSE_BEYOND_RANGES = 1.0


@dataclass(frozen=True)
class DesignPlan:
    checkpoint: Checkpoint
    params: DesignParams  # the request as run: defaults filled, seed drawn
    warnings: list[str]


def plan_design(session: Session, *, request: DesignRequest, settings: Settings) -> DesignPlan:
    """Resolve the model and check every field; raises Unprocessable saying what to change."""
    checkpoint = _resolve_model(session, request=request)
    meta = checkpoint.meta
    elements = _check_elements(request.elements, model=checkpoint.name, known=meta.elements)
    target, warnings = _resolve_target(request.target, dataset=checkpoint.dataset, elements=elements,
                                       prop=meta.property)
    if request.num_samples > settings.max_num_samples:
        raise Unprocessable(
            f"num_samples is {request.num_samples}; this server makes at most "
            f"{settings.max_num_samples} per job: ask for fewer or split the request"
        )
    if request.relax and request.num_samples > settings.max_relax_samples:
        raise Unprocessable(
            f"relax is on for {request.num_samples} structures; this server relaxes at most "
            f"{settings.max_relax_samples} per job: ask for fewer, or relax the ones you keep yourself "
            "(`xtaldiff design --relax`)"
        )
    max_atoms = meta.max_num_atoms
    if request.num_atoms is not None and request.num_atoms > max_atoms:
        raise Unprocessable(
            f"num_atoms is {request.num_atoms}; model {checkpoint.name} was trained on cells of "
            f"at most {max_atoms} atoms: ask for {max_atoms} or fewer, or omit num_atoms"
        )
    if request.atom_counts == "near_target" and request.num_atoms is None and meta.num_atoms_by_property is None:
        raise Unprocessable(
            f"atom_counts is near_target, but model {checkpoint.name} records no atom counts by property "
            "(its checkpoint predates them): ask for atom_counts training, or give num_atoms"
        )
    if request.steps is not None and request.steps > settings.max_steps:
        raise Unprocessable(f"steps is {request.steps}; at most {settings.max_steps} are allowed")
    timesteps = meta.timesteps
    if request.steps is not None and request.steps > timesteps:
        raise Unprocessable(
            f"steps is {request.steps}; model {checkpoint.name} has T = {timesteps}: ask for "
            f"{timesteps} or fewer, or omit steps"
        )
    if request.guidance is not None and request.guidance > settings.max_guidance:
        raise Unprocessable(
            f"guidance is {request.guidance}; at most {settings.max_guidance} is allowed"
        )
    params = DesignParams(
        model=checkpoint.name, dataset=checkpoint.dataset, target=target,
        num_samples=request.num_samples, num_atoms=request.num_atoms,
        elements=None if elements is None else tuple(elements),
        guidance=request.guidance if request.guidance is not None else meta.default_guidance,
        steps=request.steps if request.steps is not None else min(meta.default_steps, settings.max_steps),
        sampler=request.sampler or meta.default_sampler,
        atom_counts=request.atom_counts or meta.default_atom_counts,
        charge_balance=request.charge_balance if request.charge_balance is not None else meta.default_charge_balance,
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        relax=request.relax,
    )
    if params.num_samples * params.steps > settings.max_structure_steps:
        raise Unprocessable(
            f"{params.num_samples} structures x {params.steps} steps is {params.num_samples * params.steps} "
            f"structure-steps; this server runs at most {settings.max_structure_steps} per job: ask for fewer "
            f"structures or fewer steps (model {checkpoint.name} defaults to {meta.default_steps}), or split "
            "the request"
        )
    return DesignPlan(checkpoint, params, warnings)


def _resolve_model(session: Session, *, request: DesignRequest) -> Checkpoint:
    if request.model is None and request.dataset is None:
        raise Unprocessable("give `model` (a name from GET /models) or `dataset` (its active model)")
    if request.model is not None:
        checkpoint = queries.get_checkpoint(session, name=request.model)
        if checkpoint is None or checkpoint.status != CheckpointStatus.ready:
            ready = [c.name for c in queries.list_checkpoints(session, ready_only=True)]
            state = "does not exist" if checkpoint is None else f"is {checkpoint.status}"
            raise Unprocessable(
                f"model {request.model!r} {state}; choose one of: {', '.join(ready) or 'none'}"
            )
        if request.dataset is not None and request.dataset != checkpoint.dataset:
            raise Unprocessable(
                f"model {checkpoint.name!r} was trained on {checkpoint.dataset}, not "
                f"{request.dataset}: drop `dataset` or pick a {request.dataset} model"
            )
        return checkpoint
    checkpoint = queries.active_checkpoint(session, dataset=request.dataset)
    if checkpoint is None:
        served = sorted({c.dataset for c in queries.list_checkpoints(session, ready_only=True)
                         if c.active})
        raise Unprocessable(
            f"no model serves dataset {request.dataset} here; datasets served: "
            f"{', '.join(served) or 'none'}"
        )
    return checkpoint


def system_out(session: Session, *, name: str, system: str) -> SystemOut:
    """GET /models/{name}/systems/{system}: the training structures made only of its elements."""
    checkpoint = queries.get_checkpoint(session, name=name)
    if checkpoint is None or checkpoint.status != CheckpointStatus.ready:
        raise NotFound(f"no ready model named {name!r}; GET /models lists them")
    elements = _check_elements(system.split("-"), model=checkpoint.name, known=checkpoint.meta.elements)
    try:
        reference = training_reference(checkpoint.dataset, elements)
    except TrainingDataMissing as error:
        raise NotFound(str(error)) from None
    info = dataset_info(checkpoint.dataset)
    figures = {"count": 0, "minimum": None, "p5": None, "median": None} if reference is None else reference.as_json()
    return SystemOut(model=checkpoint.name, dataset=checkpoint.dataset, elements=elements,
                     property=info.property_name, unit=info.unit, **figures)


def _resolve_target(target: float | None, *, dataset: str, elements: list[str] | None,
                    prop: PropertyStats) -> tuple[float, list[str]]:
    """The target to run at and the warnings about it: a request without one runs at the least value in training."""
    if target is None:
        try:
            target, note = default_target(dataset, elements, prop.min)
        except NoDefaultTarget as error:
            raise Unprocessable(str(error)) from None
        return target, [note, *_check_target(target, prop)]
    note = target_note(dataset, elements, target)
    return target, [*_check_target(target, prop), *([note] if note else [])]


def _check_target(target: float, prop: PropertyStats) -> list[str]:
    low, high, unit, name = prop.min, prop.max, prop.unit, prop.name
    margin = REFUSE_BEYOND_RANGES * (high - low)
    if not low - margin <= target <= high + margin:
        raise Unprocessable(
            f"target {target:g} {unit} is far outside the {name} values the model was trained "
            f"on ({low:.4g} to {high:.4g} {unit}); choose a target between "
            f"{low - margin:.4g} and {high + margin:.4g}"
        )
    if target < low or target > high:
        side = "below the lowest" if target < low else "above the highest"
        return [
            f"target {target:g} {unit} is {side} {name} in training ({low:.4g} to {high:.4g} "
            f"{unit}): the model extrapolates; the predicted values show how far it got"
        ]
    return []


def _check_elements(
    elements: list[str] | None, *, model: str, known: list[str]
) -> list[str] | None:
    if elements is None:
        return None
    unknown = [e for e in elements if e not in SYMBOLS]
    if unknown:
        raise Unprocessable(
            f"elements: {', '.join(map(repr, unknown))} not chemical element symbols "
            "(write them as in the periodic table, e.g. 'Fe', 'O')"
        )
    outside = [e for e in elements if e not in known]
    if outside:
        raise Unprocessable(
            f"elements: model {model} never saw {', '.join(outside)}; it can place "
            f"{', '.join(known)}"
        )
    return sorted(set(elements), key=elements.index)
