"""Request and response bodies of the HTTP API (the OpenAPI document is generated from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from xtaldiff.checkpoint_file import CONDITIONINGS
from xtaldiff.datasets import DATASET_NAMES
from xtaldiff.design_params import ATOM_COUNTS
from xtaldiff.samplers import SAMPLERS
from xtaldiff.states import CheckpointStatus, JobStatus

Dataset = Literal[DATASET_NAMES]
Sampler = Literal[tuple(SAMPLERS)]
AtomCounts = Literal[tuple(ATOM_COUNTS)]
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_SEED = 2**32 - 1


class DesignRequest(BaseModel):
    """What to design. Give ``model`` or ``dataset`` (then its active model is used)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"dataset": "perov_5", "target": -0.3, "num_samples": 16},
                {"model": "perov_5_cdi", "target": 0.4, "num_samples": 100,
                 "elements": ["Ba", "Sr", "Ti", "O"], "guidance": 1.5, "seed": 7},
            ]
        },
    )

    model: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN,
        description="Checkpoint name from GET /models. Omit to use the dataset's active model.",
    )
    dataset: Dataset | None = Field(
        None, description="Dataset whose active model to use, when `model` is not given.",
    )
    target: float | None = Field(
        None, allow_inf_nan=False, strict=True,
        description="Target value of the model's property, in its unit (GET /models: "
        "perov_5 is heat of formation `heat_ref` in eV). Must be finite; values far outside "
        "the training range are refused, values just outside it are accepted with a warning. "
        "Omit to run at the least value in training: among the training structures made only of "
        "`elements` when they are given (GET /models/{name}/systems/{system}), else the training "
        "minimum; the job's warnings say which value ran.",
    )
    num_samples: int = Field(
        16, ge=1, strict=True, description="How many structures to generate (at most the server's limit, "
        "1000 by default).",
    )
    num_atoms: int | None = Field(
        None, ge=1, strict=True, description="Atoms per cell, at most the largest count the model saw. "
        "Omit to draw counts as `atom_counts` says.",
    )
    atom_counts: AtomCounts | None = Field(
        None, description="Where drawn atom counts come from: "
        + "; ".join(f"`{k}`: {v}" for k, v in ATOM_COUNTS.items())
        + ". Omit for `near_target` where the model records atom counts by property (GET /models: "
        "`atom_counts_near_target`), else `training`.",
    )
    elements: list[str] | None = Field(
        None, min_length=1, max_length=118,
        description="Allowed element symbols (e.g. [\"Li\", \"Fe\", \"O\"]); each must be one "
        "the model knows. Omit to allow all of them.",
    )
    guidance: float | None = Field(
        None, ge=0, allow_inf_nan=False, strict=True,
        description="Classifier-free guidance strength; 0 samples the plain conditional model. "
        "Omit for the model's default (GET /models: `default_guidance`); the job's request "
        "says which value ran.",
    )
    steps: int | None = Field(
        None, ge=1, strict=True,
        description="Reverse diffusion steps, at most the model's T (GET /models: `timesteps`) "
        "and the server's limit. Omit for the model's default (GET /models: `default_steps`, the "
        "fewest its evaluation found as good as T).",
    )
    sampler: Sampler | None = Field(
        None, description="Reverse sampler: " + "; ".join(f"`{k}`: {v}" for k, v in SAMPLERS.items())
        + ". Omit for the model's default (GET /models: `default_sampler`).",
    )
    charge_balance: bool | None = Field(
        None, strict=True,
        description="Change predicted species while sampling so that every composition the model is near "
        "to passes SMACT's charge-neutrality test (CDVAE's compositional validity): where the predicted "
        "composition fails, the least improbable change of up to 3 atoms between elements already in the "
        "cell is applied before each species step, and the coordinates and lattice follow it over the "
        "remaining steps. Omit for the model's default (GET /models: `default_charge_balance`).",
    )
    relax: bool = Field(
        False, strict=True,
        description="Also relax each structure with CHGNet 0.3.0 (positions and cell, FIRE, fmax 0.1 eV/A, "
        "at most 200 steps): each structure then carries its relaxed cell (CIF `?cell=relaxed`), CHGNet's "
        "energy per atom before and after, and the oracle's prediction of the relaxed structure. At most "
        "the server's `max_relax_samples` structures (100 by default).",
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, strict=True,
        description="Random seed; omit for a random one (recorded in the job, so any job can "
        "be repeated).",
    )


class SystemOut(BaseModel):
    """The training structures made only of a chemical system's elements."""

    model: str = Field(description="Checkpoint name.")
    dataset: str = Field(description="Dataset whose training split was searched.")
    elements: list[str] = Field(description="The system's elements, as asked.")
    property: str = Field(description="Property the values are of.")
    unit: str = Field(description="Its unit.")
    count: int = Field(description="Training structures made only of these elements (0: none).")
    minimum: float | None = Field(description="Their least value: what POST /design runs at when "
                                  "`elements` are these and no `target` is given.")
    p5: float | None = Field(description="Their 5th percentile (linear interpolation).")
    median: float | None = Field(description="Their median.")


class Link(BaseModel):
    href: str = Field(description="Path of the linked resource on this server.")


class Progress(BaseModel):
    phase: Literal["sampling", "relaxing"] | None = Field(
        description="What done and total count: reverse steps while sampling, structures while relaxing "
        "(a job with `relax`); None until a worker starts it.")
    done: int = Field(description="Reverse diffusion steps completed over all batches, or structures relaxed.")
    total: int = Field(description="Steps (or structures) of the current phase (0 until a worker starts it).")
    fraction: float = Field(description="done / total, 0 to 1; 1 once the job succeeded.")


class Timings(BaseModel):
    created_at: datetime = Field(description="When the API accepted the job (UTC).")
    started_at: datetime | None = Field(description="When a worker first took the job.")
    finished_at: datetime | None = Field(description="When the job reached a final state.")
    queued_s: float | None = Field(description="Seconds between acceptance and start.")
    wall_s: float | None = Field(description="Seconds between acceptance and the end.")
    worker: dict[str, float] = Field(
        description="Seconds the worker spent per phase: load, sample, analyse (symmetry, "
        "CIFs), evaluate (validity, oracle), and total (all of them, up to writing the "
        "results).",
    )


class ModelRef(BaseModel):
    name: str = Field(description="Checkpoint name.")
    sha256: str = Field(description="SHA-256 of the checkpoint file.")
    dataset: str = Field(description="Dataset the model was trained on.")
    property: str = Field(description="Property the model is conditioned on.")
    unit: str = Field(description="Unit of that property and of `target`.")


class Distribution(BaseModel):
    min: float = Field(description="Lowest predicted value.")
    max: float = Field(description="Highest predicted value.")
    mean: float = Field(description="Mean predicted value.")
    quantiles: dict[str, float] = Field(description="Quantiles keyed by level (0.1 ... 0.9).")


class Summary(BaseModel):
    num_structures: int = Field(description="Structures generated.")
    num_checked: int = Field(description="Structures whose validity was checked.")
    num_valid: int = Field(description="Structurally and compositionally valid structures.")
    num_predicted: int = Field(description="Structures the oracle gave a prediction for.")
    num_at_or_below_target: int = Field(description="Predictions at or below the target.")
    num_novel: int | None = Field(None, description="Valid structures that match no structure of the dataset "
                                  "(None: a job from before this was checked).")
    num_known: int | None = Field(None, description="Valid structures that match one (`known_as`).")
    num_near_hull: int | None = Field(None, description="Structures predicted within 0.1 eV/atom of the hull of the "
                                      "dataset's compounds (`predicted_e_above_hull`; 0 for a dataset without one).")
    predicted: Distribution | None = Field(description="Spread of the predicted values.")


class KnownAs(BaseModel):
    material_id: str = Field(description="Its id in the dataset (mp_20: a Materials Project id).")
    split: str = Field(description="The dataset split it is in: train, val or test.")


class StructureBrief(BaseModel):
    index: int = Field(description="Position k in the job, 0-based.")
    formula: str = Field(description="Reduced formula, e.g. BaTiO3.")
    num_atoms: int = Field(description="Atoms in the cell.")
    space_group: str = Field(description="Space group symbol found at symprec 0.1.")
    predicted_property: float | None = Field(
        description="The oracle's prediction of the model's property (None: not predicted)."
    )
    valid: bool | None = Field(description="Structure and composition valid (None: unchecked).")
    novel: bool | None = Field(description="Matches no structure of the model's dataset, in any split "
                               "(StructureMatcher; None: not checked, as for a structurally invalid one).")
    known_as: KnownAs | None = Field(description="The dataset structure it matches, when it is a known one.")
    predicted_e_above_hull: float | None = Field(
        None, description="mp_20: eV/atom above the convex hull of the dataset's compounds of its chemical system "
        "(labelled formation energies, all splits, elements at zero), from the predicted formation energy; a lower "
        "bound of the distance to the Materials Project's hull, which holds more phases; below zero it would be a "
        "new vertex. None without a prediction or for a dataset whose property is not a formation energy.")
    links: dict[str, Link] = Field(description="`self` (JSON), `cif`, `cif_p1`, and `cif_relaxed` when relaxed.")


class StructureDetail(StructureBrief):
    full_formula: str = Field(description="Formula of the cell as generated.")
    lattice: dict[str, float] = Field(
        description="a, b, c in Angstrom; alpha, beta, gamma in degrees; volume in A^3."
    )
    space_group_number: int = Field(description="International space group number.")
    valid_structure: bool | None = Field(
        description="CDVAE's structural test: no atoms closer than 0.5 A, volume >= 0.1 A^3.")
    valid_composition: bool | None = Field(
        description="CDVAE's compositional test: charge-neutral oxidation states that pass "
        "the Pauling test (SMACT).")
    invalid_reason: str | None = Field(description="Why a validity test failed, if one did.")
    prediction_note: str | None = Field(description="Why no prediction was made, if none was.")
    cif: str = Field(description="Symmetrised CIF (space group found with symprec 0.1).")
    cif_p1: str = Field(description="The raw cell in P1, as the model produced it.")
    relaxed_cif: str | None = Field(None, description="The cell CHGNet relaxed it to, P1 (a job with `relax`).")
    relaxation: dict | None = Field(
        None, description="A job with `relax`: CHGNet's energy per atom before and after (eV/atom), steps, "
        "converged, rms_displacement (StructureMatcher, normalised; null: relaxation changed the structure "
        "beyond matching), error (why CHGNet could not evaluate it), and for the relaxed structure the "
        "oracle's predicted_property and validity; for mp_20 also its predicted_e_above_hull (as the "
        "structure's own) and formation_energy_chgnet (CHGNet's energy against its elemental references).")


class JobOut(BaseModel):
    id: str = Field(description="Job id, a random UUID.")
    status: JobStatus = Field(description="queued, running, succeeded, failed or cancelled.")
    progress: Progress
    timings: Timings
    request: dict = Field(description="The request as run: defaults and the seed filled in.")
    model: ModelRef
    warnings: list[str] = Field(description="Things about the request worth knowing.")
    error: str | None = Field(description="Why the job failed, when it did.")
    summary: Summary | None = Field(description="Set once the job succeeded.")
    structures: list[StructureBrief] = Field(description="All structures, once succeeded.")
    links: dict[str, Link] = Field(description="`self`, `structures`, `bundle`, `cancel`.")


class StructurePage(BaseModel):
    items: list[StructureDetail] = Field(description="Structures offset .. offset+limit-1.")
    total: int = Field(description="Structures in the job.")
    offset: int = Field(description="Index of the first item.")
    limit: int = Field(description="Page size asked for.")
    links: dict[str, Link] = Field(description="`next` and `prev` pages where they exist.")


class PropertyInfo(BaseModel):
    name: str = Field(description="Property name, e.g. heat_ref.")
    unit: str = Field(description="Its unit, e.g. eV.")
    min: float = Field(description="Lowest value in the training set.")
    max: float = Field(description="Highest value in the training set.")
    percentiles: dict[str, float] = Field(
        description="Training-set percentiles (5, 10, 15: the success thresholds)."
    )


class ModelOut(BaseModel):
    name: str = Field(description="Checkpoint name, used as `model` in POST /design.")
    sha256: str = Field(description="SHA-256 of the checkpoint file.")
    dataset: str = Field(description="Training dataset.")
    conditioning: Literal[CONDITIONINGS] = Field(description="Conditioning variant: cdi or cds.")
    active: bool = Field(description="Whether `dataset` requests go to this model.")
    property: PropertyInfo
    elements: list[str] = Field(description="Element symbols the model can place.")
    max_num_atoms: int = Field(description="Largest cell (in atoms) seen in training.")
    default_guidance: float = Field(description="Guidance a request without `guidance` runs at.")
    atom_counts_near_target: bool = Field(description="Whether its header records the training split's atom "
                                          "counts by property, so that `atom_counts` may be `near_target` (the "
                                          "default then).")
    timesteps: int = Field(description="Diffusion steps T: the most a request may ask for.")
    default_sampler: str = Field(description="Sampler a request without `sampler` runs: the one whose "
                                 "`default_steps` its evaluation measured (`rescaled` if never measured).")
    default_steps: int = Field(description="Steps a request without `steps` runs: the fewest at which "
                               "its evaluation found SR5 and validity within 0.02 of the paper's sampler at "
                               "T steps (T if never measured).")
    default_charge_balance: bool = Field(description="Whether a request without `charge_balance` samples "
                                         "charge-balanced: true where its evaluation found SR5 and validity at "
                                         "least as high with it, at the default guidance and steps.")
    metrics: dict = Field(description="Its evaluation (`xtaldiff record-evaluation`): success "
                          "rates at w = 0 and at the default guidance, distinct SR5 formulas, the "
                          "steps curve, n, seed, the sha256 evaluated; empty for a model never evaluated. "
                          "On the paper's protocol, atom counts drawn from the whole training split: a "
                          "request drawing them near its target (`atom_counts`, the default where the "
                          "model allows it) scored higher wherever measured (README, Atom counts).")


class CheckpointOut(ModelOut):
    status: CheckpointStatus = Field(description="validating, ready, rejected or retired.")
    rejection_reason: str | None = Field(description="Why validation refused the file.")
    size_bytes: int = Field(description="File size.")
    uploaded_at: datetime = Field(description="When it was registered.")
    validated_at: datetime | None = Field(description="When a worker accepted or refused it.")


class DependencyHealth(BaseModel):
    ok: bool = Field(description="Whether it answered.")
    error: str | None = Field(None, description="What went wrong, if it did not.")


class WorkerSeen(BaseModel):
    name: str = Field(description="Celery node name.")
    queues: str = Field(description="Queues it consumes.")
    last_seen_at: datetime = Field(description="Its last heartbeat.")


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="ok; degraded: no worker seen recently; unavailable: database or broker "
        "down (HTTP 503)."
    )
    database: DependencyHealth
    broker: DependencyHealth
    workers: list[WorkerSeen] = Field(description="Workers seen recently.")


class Problem(BaseModel):
    detail: str = Field(description="What went wrong and what to change.")
    errors: list[dict] | None = Field(None, description="Per-field validation errors.")
