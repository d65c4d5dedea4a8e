"""CHGNet formation energies: the arithmetic, and the reference cache's rule."""

from __future__ import annotations

import json

import pytest
from pymatgen.core import Composition

from model import formation


def test_formation_energy_subtracts_the_weighted_elemental_references():
    references = {"Fe": {"energy_per_atom": -8.0}, "O": {"energy_per_atom": -5.0}}
    value, why = formation.formation_energy(Composition("Fe2O3"), -7.0, references)
    assert why is None and value == pytest.approx(-7.0 - (2 * -8.0 + 3 * -5.0) / 5)
    assert formation.formation_energy(Composition("Fe"), -8.0, references) == (0.0, None)
    missing, why = formation.formation_energy(Composition("Li2FeS2"), -5.0, references)
    assert missing is None and why == "no CHGNet elemental reference for Li, S"


def test_references_come_from_a_cache_made_with_the_same_settings(tmp_path, monkeypatch):
    computed = []

    def compute(dataset):
        computed.append(dataset)
        return {"Si": {"energy_per_atom": -5.4, "split": "train", "id": "x", "label": 0.0, "converged": True}}

    monkeypatch.setattr(formation, "_compute_references", compute)
    first = formation.elemental_references("mp_20", cache_dir=tmp_path)
    again = formation.elemental_references("mp_20", cache_dir=tmp_path)
    assert first == again and computed == ["mp_20"]
    cache = tmp_path / "chgnet_references_mp_20.json"
    stored = json.loads(cache.read_text())
    assert stored["provenance"]["chgnet"] == "0.3.0" and stored["provenance"]["splits"] == ["train", "val"]

    stored["provenance"]["relaxation"]["fmax"] = 0.5  # made with other settings: not trusted
    cache.write_text(json.dumps(stored))
    formation.elemental_references("mp_20", cache_dir=tmp_path)
    assert computed == ["mp_20", "mp_20"]


@pytest.mark.parametrize("symbol", ["Al", "V", "Ge", "Au"])
def test_prototype_cells_put_neighbours_at_twice_the_atomic_radius(symbol):
    from pymatgen.core import Element

    radius = Element(symbol).atomic_radius
    for name, cell in formation.prototype_cells(symbol).items():
        distances = cell.distance_matrix + 1e3 * (cell.distance_matrix == 0)
        nearest = min(distances.min(), min(cell.lattice.abc))
        assert nearest == pytest.approx(2 * radius, rel=0.01), name
        assert {el.symbol for el in cell.composition.elements} == {symbol}
