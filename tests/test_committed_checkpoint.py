"""The committed perov_5 checkpoint samples perovskite-like, structurally valid cells."""

from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Structure

from model.checkpoint import load_model
from model.metrics import structural_problem
from model.sampling import design

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "perov_5_cdi.safetensors"


@pytest.fixture(scope="module")
def samples():
    model = load_model(CHECKPOINT, "cpu")
    assert model.meta["dataset"] == "perov_5" and model.meta["conditioning"] == "cdi"
    return design(model, n=12, target=model.meta["property"]["min"], steps=100, seed=0)


def test_samples_are_mostly_structurally_valid(samples):
    valid = [structural_problem(s) is None for s in samples]
    assert sum(valid) >= 0.75 * len(samples), [structural_problem(s) for s in samples]


def test_samples_look_like_perovskites(samples):
    assert {len(s) for s in samples} == {5}
    lengths = np.array([s.lattice.abc for s in samples])
    assert 3.0 <= np.median(lengths) <= 5.5, lengths
    assert np.mean((lengths > 3.0) & (lengths < 6.0)) >= 0.75, lengths


def test_samples_survive_a_cif_round_trip(samples):
    for s in samples:
        if structural_problem(s) is None:
            parsed = Structure.from_str(s.to(fmt="cif"), fmt="cif")
            assert parsed.composition.reduced_formula == s.composition.reduced_formula
