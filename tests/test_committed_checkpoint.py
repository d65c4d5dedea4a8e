"""The committed checkpoints: their headers carry their evaluation, and the perov_5 models
sample perovskite-like, structurally valid cells."""

from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Structure

from model.checkpoint import load_model, read_metadata
from model.metrics import structural_problem
from model.sampling import design

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
PEROV_5 = ("perov_5_cdi", "perov_5_cds")


@pytest.fixture(scope="module", params=PEROV_5)
def samples(request):
    model = load_model(CHECKPOINTS / f"{request.param}.safetensors", "cpu")
    assert model.meta.dataset == "perov_5" and model.meta.conditioning == request.param[-3:]
    return design(model, n=12, target=model.meta.property.min, steps=100, seed=0)


@pytest.mark.parametrize("path", sorted(CHECKPOINTS.glob("*.safetensors")), ids=lambda p: p.stem)
def test_committed_checkpoints_carry_their_evaluation(path):
    meta = read_metadata(path)
    metrics = meta.metrics
    assert metrics["n"] == 1000 and metrics["steps"] == 1000
    assert metrics["default_guidance"] == meta.default_guidance
    assert metrics["at_default_guidance"]["guidance"] == metrics["default_guidance"]
    assert 0 <= metrics["at_w0"]["SR5"] <= metrics["at_w0"]["SR10"] <= metrics["at_w0"]["SR15"] <= 1
    # Their designs draw atom counts near the target (scripts/record_atom_counts.py wrote the table).
    table = meta.num_atoms_by_property
    assert table is not None and len(table.edges) == 21
    total = sum(sum(bins) for bins in table.counts.values())
    assert {n: sum(bins) / total for n, bins in table.counts.items()} == pytest.approx(dict(meta.num_atoms))


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
