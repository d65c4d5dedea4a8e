"""Energy above the convex hull of the dataset's own compounds, for a formation-energy dataset.

A formation energy says how much a compound gains over its elements; whether it would survive
against the other compounds of its chemical system is its distance to their convex hull. The hull
here is built from the labelled formation energies of every structure of the dataset (all splits)
made only of the structure's elements, the elements at zero. It holds fewer phases than the
Materials Project's (mp_20 keeps cells of at most 20 atoms, and our split is rebuilt), so the
distance is a lower bound of the distance to the Materials Project's hull; below zero, the
structure would be a new vertex of this one.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element

from model.data import load_all_splits
from model.formation import FORMATION_DATASETS


class DatasetHull:
    """The dataset's compounds by chemical system; one phase diagram per system, built on demand."""

    def __init__(self, dataset: str) -> None:
        if dataset not in FORMATION_DATASETS:
            raise ValueError(f"{dataset}'s property is not a formation energy; hulls exist for {FORMATION_DATASETS}")
        self.compounds: list[tuple[frozenset[int], dict[int, int], float]] = []
        for arrays in load_all_splits(dataset).values():
            offsets = arrays.offsets
            for row in range(len(arrays)):
                counts = Counter(arrays.atomic_numbers[offsets[row]:offsets[row + 1]].tolist())
                self.compounds.append((frozenset(counts), dict(counts), float(arrays.properties[row])))
        self._diagram = lru_cache(maxsize=4096)(self._build)

    def _build(self, system: frozenset[int]) -> PhaseDiagram:
        entries = [PDEntry(Composition({Element.from_Z(z): 1}), 0.0) for z in system]
        for elements, counts, formation_energy in self.compounds:
            if elements <= system:
                composition = Composition({Element.from_Z(z): n for z, n in counts.items()})
                entries.append(PDEntry(composition, formation_energy * composition.num_atoms))
        return PhaseDiagram(entries)

    def e_above_hull(self, composition: Composition, formation_energy_per_atom: float) -> float:
        """eV/atom above the hull of the dataset's compounds of its system (below zero: under it)."""
        diagram = self._diagram(frozenset(element.Z for element in composition.elements))
        entry = PDEntry(composition, formation_energy_per_atom * composition.num_atoms)
        return float(diagram.get_e_above_hull(entry, allow_negative=True))


@lru_cache(maxsize=3)
def dataset_hull(dataset: str) -> DatasetHull:
    return DatasetHull(dataset)
