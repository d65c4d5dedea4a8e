"""Which designed structures the dataset already holds: a scientist wants to know whether a
proposed crystal is a known one, and which.

Each structure is matched (StructureMatcher, as the novelty metric) against the dataset's
structures of the same reduced formula in all three splits; a match names its material_id (for
mp_20, a Materials Project id). The candidates' reduced cells are kept between calls.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from pymatgen.core import Lattice, Structure

from model.data import load_all_splits
from model.metrics import MatchIndex, matching_form


def reduced_formula_key(atomic_numbers: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """(Z, count) pairs divided by their gcd: equal for two cells of one composition, and much
    cheaper than pymatgen's Composition over a whole dataset."""
    counts = Counter(atomic_numbers)
    divisor = math.gcd(*counts.values())
    return tuple(sorted((z, n // divisor) for z, n in counts.items()))


@dataclass(frozen=True)
class Known:
    material_id: str
    split: str

    def as_json(self) -> dict:
        return {"material_id": self.material_id, "split": self.split}


class DatasetStructures:
    """Every structure of a dataset, found by reduced formula."""

    def __init__(self, dataset: str) -> None:
        self.splits = load_all_splits(dataset)
        self.by_formula: dict[tuple, list[tuple[str, int]]] = defaultdict(list)
        for split, arrays in self.splits.items():
            offsets = arrays.offsets
            for row in range(len(arrays)):
                numbers = arrays.atomic_numbers[offsets[row]:offsets[row + 1]].tolist()
                self.by_formula[reduced_formula_key(numbers)].append((split, row))
        self.index = MatchIndex()
        self.indexed: set[tuple[str, int]] = set()

    def find(self, structure: Structure) -> Known | None:
        query = matching_form(structure)
        sites = query.key[1]  # a match has a primitive cell of as many sites, so a multiple of them
        for split, row in self.by_formula.get(reduced_formula_key(structure.atomic_numbers), []):
            arrays = self.splits[split]
            if (split, row) not in self.indexed and (arrays.offsets[row + 1] - arrays.offsets[row]) % sites == 0:
                self.index.add((split, row), matching_form(self._structure(split, row)))
                self.indexed.add((split, row))
        match = self.index.find(query)
        if match is None:
            return None
        split, row = match
        return Known(str(self.splits[split].ids[row]), split)

    def _structure(self, split: str, row: int) -> Structure:
        arrays = self.splits[split]
        a, b = arrays.offsets[row], arrays.offsets[row + 1]
        return Structure(Lattice(arrays.lattices[row]), arrays.atomic_numbers[a:b].tolist(), arrays.frac_coords[a:b])


@lru_cache(maxsize=3)
def dataset_structures(dataset: str) -> DatasetStructures:
    return DatasetStructures(dataset)


def known_as(structures: Sequence[Structure], dataset: str) -> list[Known | None]:
    """For each structure, the dataset structure it matches, or None (novel to the dataset).
    DatasetError when no split of the dataset is on this machine."""
    index = dataset_structures(dataset)
    return [index.find(structure) for structure in structures]
