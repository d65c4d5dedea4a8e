"""scripts/repair_compositions.py: the one-atom change it scores invalid compositions with."""

import importlib.util
from pathlib import Path

from pymatgen.core import Lattice, Structure

from model.metrics import compositional_problem

spec = importlib.util.spec_from_file_location(
    "repair_compositions", Path(__file__).parent.parent / "scripts" / "repair_compositions.py")
repair_compositions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repair_compositions)


def cell(species: list[str]) -> Structure:
    coords = [[0.25 * i, 0.1, 0.2] for i in range(len(species))]
    return Structure(Lattice.cubic(6.0), species, coords)


def test_an_invalid_composition_gets_one_atom_changed_and_keeps_its_geometry():
    structure = cell(["Na", "Cl", "Cl", "Cl"])
    assert compositional_problem(structure) is not None
    repaired = repair_compositions.one_atom_repair(structure)
    assert repaired.composition.reduced_formula == "NaCl"
    assert compositional_problem(repaired) is None
    assert sum(a.specie != b.specie for a, b in zip(structure, repaired, strict=True)) == 1
    assert (repaired.frac_coords == structure.frac_coords).all()
    assert structure.composition.reduced_formula == "NaCl3"  # the sample itself is left alone


def test_no_change_that_would_drop_an_element():
    # KF2 passes only as F3 (the lone K turned into F; one element counts as valid): not a repair.
    structure = cell(["K", "F", "F"])
    assert compositional_problem(structure) is not None
    assert repair_compositions.one_atom_repair(structure) is None
