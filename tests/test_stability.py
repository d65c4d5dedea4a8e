"""Distances to the convex hull of the dataset's own compounds (model.stability)."""

from __future__ import annotations

import csv
import gzip
import itertools

import pytest
from pymatgen.core import Composition

from model.stability import DatasetHull, dataset_hull
from xtaldiff.datasets import DATA_ROOT


def test_distances_are_lower_bounds_of_the_labelled_materials_project_ones():
    hull = dataset_hull("mp_20")
    with gzip.open(DATA_ROOT / "mp_20" / "test.csv.gz", "rt", newline="") as handle:
        rows = list(itertools.islice(csv.DictReader(handle), 200))
    ours = [hull.e_above_hull(Composition(row["pretty_formula"]), float(row["formation_energy_per_atom"]))
            for row in rows]
    labelled = [float(row["e_above_hull"]) for row in rows]
    # Fewer phases than the Materials Project's hull: never farther from it, yet not all on it.
    assert all(distance <= label + 1e-6 for distance, label in zip(ours, labelled, strict=True))
    assert sum(distance > 0.01 for distance in ours) >= 20


def test_below_the_hull_is_negative_and_an_element_sits_on_it():
    hull = dataset_hull("mp_20")
    on_hull = -10.0 - hull.e_above_hull(Composition("SrTiO3"), -10.0)  # the hull's own energy there
    assert on_hull < 0  # SrTiO3's system holds compounds of negative formation energy
    assert hull.e_above_hull(Composition("SrTiO3"), on_hull - 0.2) == pytest.approx(-0.2)
    assert hull.e_above_hull(Composition("Sr"), 0.0) == pytest.approx(0.0)


def test_only_a_formation_energy_dataset_has_a_hull():
    with pytest.raises(ValueError, match="not a formation energy"):
        DatasetHull("perov_5")
