"""The paper's metrics: validity, uniqueness, novelty, success rates and conditioning error.

Validity follows CDVAE's ``compute_metrics.py``: a structure is structurally valid when no two
atoms are closer than 0.5 A (periodic) and the cell is at least 0.1 A^3; compositionally valid
when SMACT finds a charge-neutral assignment of oxidation states that passes the Pauling
electronegativity test (single elements and all-metal alloys count as valid).

Success rates (Table 1) count the fraction of *all* generated structures whose predicted property
is at or below a percentile of the training distribution; a structure that is invalid or has no
prediction counts as a failure. CDVAE's own protocol (best of groups of 10) is kept beside it.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Structure

from model.geometry import closest_pair

MIN_DISTANCE = 0.5  # A, shortest periodic distance, own images included
MIN_VOLUME = 0.1  # A^3
PERCENTILES = (5, 10, 15)
GROUP_SIZE = 10  # CDVAE: 100 starts x 10 candidates, the best of each start counts
# SMACT's oxidation-state search is exponential in the number of distinct elements: 12 take
# about 9 s here, 20 would never finish. Beyond this a composition is left unchecked.
MAX_ELEMENTS_CHECKED = 10


@dataclass(frozen=True)
class Validity:
    """CDVAE's two validity tests for one structure; ``reason`` says why it failed, if it did."""

    structural: bool
    compositional: bool | None  # None: not checked (more than MAX_ELEMENTS_CHECKED elements)
    reason: str | None

    @property
    def valid(self) -> bool:
        """Both tests passed; an unchecked composition does not count as valid."""
        return self.structural and self.compositional is True


def structural_problem(structure: Structure) -> str | None:
    """Why the structure is structurally invalid (CDVAE's cut-offs), or None when it is valid.

    Distances are between distinct sites (minimum image), as CDVAE measured them.
    """
    lattice, coords = structure.lattice.matrix, structure.frac_coords
    if not (np.isfinite(lattice).all() and np.isfinite(coords).all()):
        return "non-finite lattice or coordinates"
    if structure.volume < MIN_VOLUME:
        return f"cell volume {structure.volume:.3g} A^3 (< {MIN_VOLUME} A^3)"
    shortest, i, j = closest_pair(structure)
    if shortest < MIN_DISTANCE:
        return f"sites {i} and {j} are {shortest:.3f} A apart (< {MIN_DISTANCE} A)"
    return None


def compositional_problem(structure: Structure) -> str | None:
    """Why the composition fails SMACT's screening as CDVAE ran it, or None when it passes."""
    return composition_problem(structure.composition.get_el_amt_dict())


def composition_problem(counts: Mapping[str, float]) -> str | None:
    """compositional_problem of atom counts by element symbol.

    CDVAE used SMACT 2's default oxidation states, which SMACT 4 names ``oxidation_states_smact14``.
    """
    import smact
    from smact.screening import pauling_test

    unknown = [symbol for symbol in counts if not Element.is_valid_symbol(symbol)]
    if unknown:
        return f"not chemical elements: {', '.join(unknown)}"
    symbols = sorted(counts, key=lambda symbol: Element(symbol).Z)
    if len(symbols) == 1:
        return None
    if all(symbol in smact.metals for symbol in symbols):
        return None
    amounts = np.array([round(counts[symbol]) for symbol in symbols])
    stoichiometry = [(int(amount),) for amount in amounts // np.gcd.reduce(amounts)]
    try:
        elements = smact.element_dictionary(symbols)
    except KeyError as error:
        return f"no SMACT data ({error.args[0]})"
    electronegativities = [elements[symbol].pauling_eneg for symbol in symbols]
    oxidation_choices = [elements[symbol].oxidation_states_smact14 or [] for symbol in symbols]
    for oxidation_states in itertools.product(*oxidation_choices):
        if not smact.neutral_ratios(oxidation_states, stoichs=stoichiometry):
            continue
        try:
            if pauling_test(oxidation_states, electronegativities):
                return None
        except TypeError:  # an element without electronegativity: CDVAE let it pass
            return None
    formula = Composition(counts).reduced_formula
    return f"{formula}: no charge-neutral oxidation states that pass the Pauling test (SMACT)"


def validity(structure: Structure) -> Validity:
    """Both validity tests; the reason names the structural problem first. The worker, `evaluate`
    and `predict` all judge a structure here, so they agree."""
    structural = structural_problem(structure)
    distinct = len(structure.composition.elements)
    if distinct > MAX_ELEMENTS_CHECKED:
        composition_valid = None
        compositional = f"composition not checked: {distinct} distinct elements (at most {MAX_ELEMENTS_CHECKED} are)"
    else:
        compositional = compositional_problem(structure)
        composition_valid = compositional is None
    reasons = [reason for reason in (structural, compositional) if reason is not None]
    return Validity(structural is None, composition_valid, "; ".join(reasons) or None)


SYMPREC = 0.1  # Angstrom: the tolerance the service finds space groups at (symmetrised CIFs)


def space_group(structure: Structure, symprec: float = SYMPREC) -> tuple[str, int]:
    """International symbol and number; P1 where spglib refuses the cell (overlapping atoms)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        return analyzer.get_space_group_symbol(), analyzer.get_space_group_number()
    except Exception:  # spglib raises several types on degenerate cells
        return "P1", 1


def success_rates(values: Sequence[float | None], thresholds: Sequence[float]) -> list[float]:
    """Fraction of all structures whose value is at or below each threshold (None fails)."""
    if not values:
        return [0.0 for _ in thresholds]
    predicted = np.array([np.inf if value is None else value for value in values])
    return [float((predicted <= threshold).mean()) for threshold in thresholds]


def grouped_success_rates(
    values: Sequence[float | None], thresholds: Sequence[float], group_size: int = GROUP_SIZE
) -> list[float]:
    """CDVAE's optimisation protocol: the best value of each group of ``group_size`` counts.

    CDVAE reshaped its (steps x starts) list so that structure i belongs to group
    i mod (number of groups); the same assignment is used here. None counts as +inf.
    """
    num_groups = len(values) // group_size
    if num_groups == 0:
        raise ValueError(f"grouped success rates need at least {group_size} structures")
    predicted = np.array([np.inf if value is None else value for value in values])
    best = predicted[: num_groups * group_size].reshape(group_size, num_groups).min(axis=0)
    return [float((best <= threshold).mean()) for threshold in thresholds]


def training_thresholds(training_values: Sequence[float]) -> list[float]:
    """The 5th, 10th and 15th percentiles of the training property values."""
    return [float(np.percentile(training_values, p)) for p in PERCENTILES]


@dataclass(frozen=True)
class ConditioningError:
    """Mean |target - predicted| over structures with a prediction; ``failed`` had none."""

    mean_absolute_error: float | None
    predicted: int
    failed: int


def conditioning_error(targets: Sequence[float], values: Sequence[float | None]) -> ConditioningError:
    """How far the predicted property lands from the target it was generated for."""
    if len(targets) != len(values):
        raise ValueError(f"{len(targets)} targets but {len(values)} values")
    errors = [abs(t - v) for t, v in zip(targets, values, strict=True) if v is not None]
    mean = float(np.mean(errors)) if errors else None
    return ConditioningError(mean, len(errors), len(values) - len(errors))


# --- Uniqueness and novelty ------------------------------------------------------------------
# StructureMatcher with its defaults (ltol 0.2, stol 0.3, angle_tol 5, primitive cell, scaled
# volumes). Two structures can only match with equal reduced formula and equal number of sites
# in StructureMatcher's primitive cell, so structures are grouped by that key and each cell is
# reduced once. One composition can hold thousands of structures (carbon_24 is all carbon), and a
# fit costs ~10-30 ms, so within a group only the MAX_CANDIDATES structures nearest by a
# scale-free distance histogram are fitted; smaller groups are compared exhaustively (exact).
MAX_CANDIDATES = 10
HISTOGRAM_RANGE = 2.5  # in units of (volume per atom)^(1/3)
HISTOGRAM_BINS = 25
HISTOGRAM_WIDTH = 0.05  # Gaussian smearing, same unit


@dataclass
class MatchingForm:
    """A structure in StructureMatcher's reduced cell, with its group key and histogram."""

    cell: Structure
    key: tuple[str, int]
    histogram: np.ndarray  # (HISTOGRAM_BINS,)


def niggli_cell(structure: Structure) -> Structure:
    """The same crystal in its Niggli-reduced cell, reduced by spglib: pymatgen's own reduction
    searches lattice points in a sphere that, for the ill-conditioned cells a poorly trained
    model emits, took from seconds to over a minute (5 of 136 random near-singular cells took
    over 5 s; spglib takes 0.1 ms)."""
    import spglib

    reduced = spglib.niggli_reduce(structure.lattice.matrix)
    if reduced is None:
        raise ValueError("spglib found no Niggli cell")
    return Structure(Lattice(reduced), structure.species, structure.cart_coords, coords_are_cartesian=True,
                     to_unit_cell=True)


def matching_form(structure: Structure) -> MatchingForm:
    try:
        cell = niggli_cell(structure).get_primitive_structure()
    except Exception:  # reductions can fail on degenerate cells; match as given
        cell = structure.copy()
    unit = (cell.volume / len(cell)) ** (1 / 3)
    neighbours = cell.get_all_neighbors(HISTOGRAM_RANGE * unit)
    distances = np.array([n.nn_distance / unit for site in neighbours for n in site])
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) * HISTOGRAM_RANGE / HISTOGRAM_BINS
    smeared = np.exp(-(((distances[:, None] - centres[None, :]) / HISTOGRAM_WIDTH) ** 2) / 2)
    histogram = smeared.sum(axis=0) / len(cell)
    return MatchingForm(cell, (cell.composition.reduced_formula, len(cell)), histogram)


class MatchIndex:
    """Structures grouped for StructureMatcher; answers "does this match any member?"."""

    def __init__(self, max_candidates: int = MAX_CANDIDATES) -> None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.matcher = StructureMatcher()
        self.max_candidates = max_candidates
        self.groups: dict[tuple[str, int], list[tuple[int, MatchingForm]]] = defaultdict(list)
        self.capped_queries = 0  # queries that saw only part of their group

    def add(self, label: int, reduced: MatchingForm) -> None:
        self.groups[reduced.key].append((label, reduced))

    def find(self, reduced: MatchingForm) -> int | None:
        """The label of a matching member, or None."""
        members = self.groups.get(reduced.key, [])
        if len(members) > self.max_candidates:
            self.capped_queries += 1
            gaps = [np.abs(member.histogram - reduced.histogram).sum() for _, member in members]
            members = [members[i] for i in np.argsort(gaps)[: self.max_candidates]]
        for label, member in members:
            if self.matcher.fit(reduced.cell, member.cell, skip_structure_reduction=True):
                return label
        return None


@dataclass(frozen=True)
class Uniqueness:
    """``first_match[i]``: index of the first structure that structure i matches (itself if new)."""

    first_match: list[int]
    capped_queries: int

    @property
    def unique(self) -> int:
        return len(set(self.first_match))

    @property
    def fraction(self) -> float:
        return self.unique / len(self.first_match) if self.first_match else 0.0


def uniqueness(structures: Sequence[Structure], max_candidates: int = MAX_CANDIDATES) -> Uniqueness:
    """Which structures of the set duplicate an earlier one (StructureMatcher)."""
    index = MatchIndex(max_candidates)
    first_match = []
    for i, structure in enumerate(structures):
        reduced = matching_form(structure)
        match = index.find(reduced)
        if match is None:
            index.add(i, reduced)
            first_match.append(i)
        else:
            first_match.append(match)
    return Uniqueness(first_match, index.capped_queries)


@dataclass(frozen=True)
class Novelty:
    """``novel[i]``: structure i matches no training structure."""

    novel: list[bool]
    capped_queries: int

    @property
    def fraction(self) -> float:
        return sum(self.novel) / len(self.novel) if self.novel else 0.0


def novelty(
    structures: Sequence[Structure],
    training: Sequence[Structure],
    max_candidates: int = MAX_CANDIDATES,
) -> Novelty:
    """Which structures match no training structure of the same reduced composition.

    Only the training structures whose reduced formula occurs among ``structures`` are reduced.
    """
    queries = [matching_form(structure) for structure in structures]
    formulas = {query.key[0] for query in queries}
    index = MatchIndex(max_candidates)
    for label, structure in enumerate(training):
        if structure.composition.reduced_formula in formulas:
            index.add(label, matching_form(structure))
    novel = [index.find(query) is None for query in queries]
    return Novelty(novel, index.capped_queries)
