"""The worker's evaluation step: validity from model.metrics, predictions from the oracle."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from worker.records import structure_record
from worker.scoring import mark_known, relax, score


def perovskite() -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.0), ["Sr", "Ti", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])


def squashed() -> Structure:
    return Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0.01, 0, 0]])


def test_records_hold_symmetrised_and_p1_cifs():
    row = structure_record(perovskite())
    assert (row["space_group_symbol"], row["space_group_number"]) == ("Pm-3m", 221)
    assert row["reduced_formula"] == "SrTiO3" and row["num_atoms"] == 5
    assert "_symmetry_space_group_name_H-M   Pm-3m" in row["cif"]
    assert "_symmetry_space_group_name_H-M   'P 1'" in row["cif_p1"]


def test_validity_and_predictions_land_in_the_right_rows(monkeypatch):
    from model import oracle as oracle_module

    class FakeOracle:
        def predict(self, structures, workers):
            return [oracle_module.Prediction(-1.5, None),
                    oracle_module.Prediction(None, "CrystalNN failed")][: len(structures)]

    monkeypatch.setattr(oracle_module.Oracle, "for_dataset", classmethod(
        lambda cls, dataset: FakeOracle()))
    structures = [perovskite(), squashed()]
    rows = [structure_record(s) for s in structures]
    score(structures, rows, dataset="perov_5", oracle=True)
    good, bad = rows
    assert (good["valid_structure"], good["valid_composition"]) == (True, True)
    assert good["predicted_property"] == -1.5 and good["prediction_note"] is None
    assert bad["valid_structure"] is False and "apart" in bad["invalid_reason"]
    assert bad["predicted_property"] is None and bad["prediction_note"] == "CrystalNN failed"


def test_an_mp_20_structure_gets_its_hull_distance_and_its_dataset_match():
    from model.stability import dataset_hull

    structures = [perovskite()]
    rows = [structure_record(s) for s in structures]
    score(structures, rows, dataset="mp_20", oracle=True)
    mark_known(structures, rows, dataset="mp_20")
    row = rows[0]
    assert row["predicted_property"] is not None
    assert row["predicted_e_above_hull"] == pytest.approx(
        dataset_hull("mp_20").e_above_hull(structures[0].composition, row["predicted_property"]))
    assert row["novel"] is False and row["known_as"]["material_id"].startswith("mp-")
    perov_rows = [structure_record(s) for s in structures]
    score(structures, perov_rows, dataset="perov_5", oracle=False)
    mark_known(structures, perov_rows, dataset="perov_5")
    assert perov_rows[0]["predicted_e_above_hull"] is None and perov_rows[0]["novel"] is False


def test_a_relaxed_mp_20_structure_keeps_its_own_hull_distance_and_chgnet_formation_energy(monkeypatch):
    from model import formation
    from model.stability import dataset_hull

    strained = perovskite()
    strained.apply_strain(0.05)
    elements = [el.symbol for el in strained.composition.elements]
    # References at zero make CHGNet's formation energy its energy per atom, with no minute spent on them.
    monkeypatch.setattr(formation, "elemental_references",
                        lambda dataset: {el: {"energy_per_atom": 0.0} for el in elements})
    rows = [structure_record(strained)]
    relax([strained], rows, dataset="mp_20", oracle=True, oracle_workers=1, max_fire_steps=30,
          progress=lambda done, total: None)
    record = rows[0]["relaxation"]
    assert record["error"] is None and record["predicted_property"] is not None
    assert record["predicted_e_above_hull"] == pytest.approx(
        dataset_hull("mp_20").e_above_hull(strained.composition, record["predicted_property"]))
    assert record["formation_energy_chgnet"] == pytest.approx(record["energy_after_ev_per_atom"])


def test_oracle_unavailable_leaves_a_note(monkeypatch):
    from model import oracle as oracle_module

    def unavailable(cls, dataset):
        raise oracle_module.OracleUnavailable("weights not installed")

    monkeypatch.setattr(oracle_module.Oracle, "for_dataset", classmethod(unavailable))
    rows = [structure_record(perovskite())]
    score([perovskite()], rows, dataset="perov_5", oracle=True)
    assert rows[0]["prediction_note"] == "oracle unavailable: weights not installed"


def test_compositions_too_large_for_smact_are_left_unchecked():
    symbols = ["Li", "Be", "Na", "Mg", "Al", "Si", "K", "Ca", "Ti", "V", "Cr", "Mn", "Fe", "Co",
               "Ni", "Cu", "O", "S", "N", "F"]
    many = Structure(Lattice.cubic(12.0), symbols, [[i / 20, (i % 5) / 5, 0] for i in range(20)])
    rows = [structure_record(many)]
    score([many], rows, dataset="mp_20", oracle=False)
    assert rows[0]["valid_composition"] is None
    assert "20 distinct elements" in rows[0]["invalid_reason"]
