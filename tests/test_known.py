"""Which designed structures the dataset already holds (model.known)."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from model.data import load_split
from model.known import Known, known_as, reduced_formula_key


def structure_of(arrays, row: int) -> Structure:
    a, b = arrays.offsets[row], arrays.offsets[row + 1]
    return Structure(Lattice(arrays.lattices[row]), arrays.atomic_numbers[a:b].tolist(), arrays.frac_coords[a:b])


def test_a_dataset_structure_is_known_by_its_id_even_as_a_supercell_and_a_stretched_one_is_not():
    arrays = load_split("perov_5", "test", limit=3)
    originals = [structure_of(arrays, row) for row in range(3)]
    supercell = originals[0].copy()
    supercell.make_supercell([2, 1, 1])
    a, b, c = originals[1].lattice.abc
    stretched = Structure(Lattice.from_parameters(a, b, 1.8 * c, 90, 90, 90), originals[1].species,
                          originals[1].frac_coords)
    found = known_as([*originals, supercell, stretched], "perov_5")
    assert found[:3] == [Known(str(arrays.ids[row]), "test") for row in range(3)]
    assert found[3] == found[0]
    assert found[4] is None


def test_the_reduced_formula_key_ignores_the_cell_size_and_order():
    key = reduced_formula_key([8, 22, 56, 8, 8])
    assert key == reduced_formula_key([56, 56, 22, 22] + [8] * 6) == ((8, 3), (22, 1), (56, 1))
    assert reduced_formula_key([8, 22]) != reduced_formula_key([8, 8, 22])
