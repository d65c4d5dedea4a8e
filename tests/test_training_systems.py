"""The training structures inside a chemical system, read without torch from the CSVs."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Element

from model.data import load_split
from xtaldiff.datasets import DATASET_NAMES
from xtaldiff.training_systems import (
    NoDefaultTarget,
    default_target,
    reference_of,
    target_note,
    training_compositions,
    training_reference,
)


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_element_sets_read_from_the_cifs_match_the_parsed_structures(name):
    element_sets, values = training_compositions(name)
    arrays = load_split(name, "train", limit=300)
    starts = np.concatenate([[0], np.cumsum(arrays.num_atoms)])
    parsed = [frozenset(Element.from_Z(int(z)).symbol for z in arrays.atomic_numbers[a:b])
              for a, b in zip(starts, starts[1:], strict=False)]
    assert list(element_sets[:300]) == parsed and len({len(e) for e in parsed}) >= (1 if name == "carbon_24" else 2)
    assert np.allclose(values[:300], arrays.properties)


def test_a_reference_counts_only_structures_made_of_the_system_elements():
    element_sets = [frozenset({"Na", "Cl"}), frozenset({"Na"}), frozenset({"Li", "Cl"}), frozenset({"Cl"})]
    reference = reference_of(element_sets, [-2.0, 0.0, -3.0, 0.5], ["Na", "Cl"])
    assert (reference.count, reference.minimum, reference.median) == (3, -2.0, 0.0)
    assert reference.p5 == pytest.approx(np.percentile([-2.0, 0.0, 0.5], 5))
    assert reference_of(element_sets, [-2.0, 0.0, -3.0, 0.5], ["K"]) is None
    assert reference_of(element_sets, [-2.0, 0.0, -3.0, 0.5], ["Li", "Cl"]).p5 == pytest.approx(
        np.percentile([-3.0, 0.5], 5))


def test_default_target_is_the_training_minimum_or_the_system_minimum():
    value, note = default_target("mp_20", None, -4.47)
    assert value == -4.47 and "the least formation_energy_per_atom in mp_20" in note
    system = training_reference("mp_20", ["Li", "Fe", "P", "O"])
    value, note = default_target("mp_20", ["Li", "Fe", "P", "O"], -4.47)
    assert value == system.minimum > -4.47
    assert f"the {system.count} training structures made only of Li, Fe, P, O" in note
    with pytest.raises(NoDefaultTarget, match="no structure of mp_20's training split is made only of Og"):
        default_target("mp_20", ["Og"], -4.47)


def test_missing_training_data_asks_for_a_target_and_warns_of_nothing(tmp_path):
    with pytest.raises(NoDefaultTarget, match="give a target: this server has no training split of mp_20"):
        default_target("mp_20", ["Li", "O"], -4.47, root=tmp_path)
    assert target_note("mp_20", ["Li", "O"], -9.0, root=tmp_path) is None


def test_a_target_below_the_system_is_noted():
    system = training_reference("mp_20", ["Li", "Co", "O"])
    assert target_note("mp_20", ["Li", "Co", "O"], system.minimum) is None
    note = target_note("mp_20", ["Li", "Co", "O"], system.minimum - 1)
    assert f"omit target to run at {system.minimum:.4g}" in note
    assert target_note("mp_20", None, -9.0) is None
