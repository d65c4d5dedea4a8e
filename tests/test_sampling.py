"""Sampling: deterministic with a seed, valid pymatgen structures, element masks, bad arguments."""

import math

import pytest
from pymatgen.core import Structure

from model.checkpoint import load_model
from model.sampling import DesignError, design


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return load_model(tiny_checkpoint, "cpu")


def fingerprint(structures):
    return [(s.lattice.matrix.round(8).tolist(), s.frac_coords.round(8).tolist(), [x.symbol for x in s.species])
            for s in structures]


def test_same_seed_same_structures_other_seed_others(tiny_model):
    first = design(tiny_model, n=4, target=0.5, seed=7, steps=20)
    again = design(tiny_model, n=4, target=0.5, seed=7, steps=20)
    other = design(tiny_model, n=4, target=0.5, seed=8, steps=20)
    assert fingerprint(first) == fingerprint(again)
    assert fingerprint(first) != fingerprint(other)


def test_structures_are_pymatgen_structures_with_requested_atoms(tiny_model):
    structures = design(tiny_model, n=5, target=[0.1, 0.2, 0.3, 0.4, 0.5], num_atoms=[2, 5, 5, 7, 3], steps=10)
    assert [len(s) for s in structures] == [2, 5, 5, 7, 3]
    for s in structures:
        assert isinstance(s, Structure)
        assert all(math.isfinite(x) for x in s.lattice.abc)
        assert abs(s.lattice.matrix).max() <= tiny_model.meta["sampling"]["lattice_bound"] + 1e-6
        assert ((s.frac_coords >= 0) & (s.frac_coords < 1)).all()


def test_atom_counts_default_to_the_training_distribution(tiny_model):
    assert tiny_model.meta["num_atoms"] == {"5": 1.0}
    assert {len(s) for s in design(tiny_model, n=3, target=0.0, steps=5)} == {5}


def test_full_schedule_and_guidance_run(tiny_model):
    structures = design(tiny_model, n=2, target=-0.3, guidance=2.0)  # steps default to T = 50
    assert len(structures) == 2


def test_element_mask_is_obeyed(tiny_model):
    allowed = {"Sr", "Ti", "O"}
    assert allowed <= set(tiny_model.meta["elements"])
    structures = design(tiny_model, n=6, target=0.5, elements=sorted(allowed), steps=15, seed=3)
    assert {el.symbol for s in structures for el in s.species} <= allowed


def test_progress_is_reported_and_can_stop_sampling(tiny_model):
    calls = []
    design(tiny_model, n=3, target=0.5, steps=10, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (20, 20) and len(calls) == 20

    class Stop(Exception):
        pass

    def cancel(done, total):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        design(tiny_model, n=3, target=0.5, steps=10, progress=cancel)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "positive integer"),
        ({"target": float("nan")}, "finite"),
        ({"target": float("inf")}, "finite"),
        ({"target": [0.1, 0.2]}, "2 values for 3"),
        ({"elements": ["Xx"]}, "not an element symbol"),
        ({"elements": ["U", "Pu"]}, "none of U, Pu"),
        ({"steps": 0}, "steps must be between"),
        ({"steps": 51}, "steps must be between"),
        ({"num_atoms": 0}, "num_atoms"),
        ({"guidance": -1.0}, "guidance"),
    ],
)
def test_bad_arguments_raise_design_errors(tiny_model, kwargs, message):
    args = {"n": 3, "target": 0.5, **kwargs}
    with pytest.raises(DesignError, match=message):
        design(tiny_model, **args)
