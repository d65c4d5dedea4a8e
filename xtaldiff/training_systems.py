"""The training structures inside a chemical system: what an element-constrained design is
conditioned on when no target is given. Torch-free (the API reads it).

A model conditioned on its dataset's minimum asks most chemical systems for more than they hold
(mp_20's, -4.47 eV/atom, is a fluoride): within Li-Fe-P-O, Na-Mn-O and Li-Co-O `mp_20_cdi` then
used every element of the system in 0.00, 0.08 and 0.01 of its samples, against 0.22, 0.57 and
0.77 when conditioned on the least value among the training structures made only of the
system's elements (README, The models). That value is the default target of such a request.
"""

from __future__ import annotations

import csv
import gzip
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from xtaldiff.datasets import DATA_ROOT, dataset

# pymatgen's CIF writer, which wrote every CIF of the three sets, states the composition here.
FORMULA_SUM = re.compile(r"^_chemical_formula_sum\s+'?([^'\n]+)'?\s*$", re.MULTILINE)
SYMBOL = re.compile(r"[A-Z][a-z]?")


class TrainingDataMissing(LookupError):
    """The training split of a dataset is not on this machine."""


@dataclass(frozen=True)
class SystemReference:
    """The property among the training structures made only of a system's elements."""

    count: int
    minimum: float
    p5: float  # numpy's default (linear) 5th percentile
    median: float

    def as_json(self) -> dict:
        return {"count": self.count, "minimum": self.minimum, "p5": self.p5, "median": self.median}


def reference_of(element_sets: Iterable[frozenset[str]], values: Iterable[float],
                 system: Iterable[str]) -> SystemReference | None:
    """The structures (given by their element sets) whose elements all lie in `system`; None if none do."""
    allowed = set(system)
    inside = sorted(value for elements, value in zip(element_sets, values, strict=True) if elements <= allowed)
    if not inside:
        return None
    p5 = inside[0] if len(inside) == 1 else statistics.quantiles(inside, n=20, method="inclusive")[0]
    return SystemReference(len(inside), inside[0], p5, statistics.median(inside))


def elements_of_cif(cif: str) -> frozenset[str]:
    match = FORMULA_SUM.search(cif)
    if match is None:
        raise ValueError("CIF has no _chemical_formula_sum line")
    return frozenset(SYMBOL.findall(match.group(1)))


@lru_cache(maxsize=8)
def training_compositions(name: str, root: Path = DATA_ROOT) -> tuple[tuple[frozenset[str], ...], tuple[float, ...]]:
    """Element set and property of every training structure of dataset `name` (read once per process)."""
    path = root / name / "train.csv.gz"
    if not path.exists():
        raise TrainingDataMissing(f"this server has no training split of {name} ({path})")
    property_name = dataset(name).property_name
    element_sets, values = [], []
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            element_sets.append(elements_of_cif(row["cif"]))
            values.append(float(row[property_name]))
    return tuple(element_sets), tuple(values)


def training_reference(name: str, system: Sequence[str], root: Path = DATA_ROOT) -> SystemReference | None:
    """`reference_of` over dataset `name`'s training split; TrainingDataMissing without one."""
    element_sets, values = training_compositions(name, root)
    return reference_of(element_sets, values, system)


class NoDefaultTarget(ValueError):
    """No target can be chosen for the request; the message says to give one."""


def default_target(name: str, elements: Sequence[str] | None, training_minimum: float,
                   root: Path = DATA_ROOT) -> tuple[float, str]:
    """The target a request that names none runs at, and a note saying what it is.

    Without elements, the training minimum (the paper's protocol); with them, the least value
    among the training structures made only of those elements."""
    info = dataset(name)
    if not elements:
        return training_minimum, (f"no target given: ran at {training_minimum:.4g} {info.unit}, the least "
                                  f"{info.property_name} in {name}'s training split")
    system = ", ".join(elements)
    try:
        reference = training_reference(name, elements, root)
    except TrainingDataMissing as error:
        raise NoDefaultTarget(f"give a target: {error}, so none can be chosen for {system}") from None
    if reference is None:
        raise NoDefaultTarget(f"give a target: no structure of {name}'s training split is made only of {system}, "
                              "so there is no value to condition on by default")
    return reference.minimum, (
        f"no target given: ran at {reference.minimum:.4g} {info.unit}, the least {info.property_name} among the "
        f"{reference.count} training structures made only of {system} (their 5th percentile "
        f"{reference.p5:.4g}, median {reference.median:.4g})")


def target_note(name: str, elements: Sequence[str] | None, target: float, root: Path = DATA_ROOT) -> str | None:
    """A warning when a constrained request asks for less than its system's training structures hold."""
    if not elements:
        return None
    try:
        reference = training_reference(name, elements, root)
    except TrainingDataMissing:
        return None
    if reference is None or target >= reference.minimum:
        return None
    unit = dataset(name).unit
    return (f"target {target:g} {unit} is below every training structure made only of {', '.join(elements)} "
            f"(the least of {reference.count} is {reference.minimum:.4g} {unit}): the model never saw such a "
            f"value inside this system; omit target to run at {reference.minimum:.4g}")
