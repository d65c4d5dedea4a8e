"""Sampling: deterministic with a seed, valid pymatgen structures, element masks, the samplers, bad arguments."""

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Structure

from model.checkpoint import load_model, read_metadata, rewrite_metadata
from model.data import atom_counts_by_property, load_split
from model.diffusion import DiffusionConfig, Schedule, corrector_step, langevin_update, sampling_timesteps
from model.geometry import right_handed
from model.sampling import DesignError, design, plan_batches, sample_num_atoms
from tests.conftest import tiny_checkpoint_file
from xtaldiff.samplers import SAMPLERS


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
        assert abs(s.lattice.matrix).max() <= tiny_model.meta.lattice_bound + 1e-6
        assert ((s.frac_coords >= 0) & (s.frac_coords < 1)).all()


def test_batches_hold_each_index_once_capped_and_by_count_when_asked():
    counts = [4, 20, 4, 1, 20, 4, 4, 12, 1]
    by_count = plan_batches(counts, batch_size=3, one_count_per_batch=True)
    padded = plan_batches(counts, batch_size=3, one_count_per_batch=False)
    for batches in (by_count, padded):
        assert sorted(i for batch in batches for i in batch) == list(range(len(counts)))
        assert max(len(b) for b in batches) <= 3
    assert all(len({counts[i] for i in batch}) == 1 for batch in by_count)
    assert [len(b) for b in by_count] == [2, 3, 1, 1, 2]  # four structures of 4 atoms need two batches
    assert [[counts[i] for i in b] for b in padded] == [[1, 1, 4], [4, 4, 4], [12, 20, 20]]


def test_mixed_atom_counts_do_not_depend_on_request_order(tiny_model):
    """Batches follow the atom counts, not the order of the request, and each is as large as its count."""
    mixed = design(tiny_model, n=3, target=0.4, num_atoms=[7, 2, 5], steps=6, seed=4, batch_size=8)
    ordered = design(tiny_model, n=3, target=0.4, num_atoms=[2, 5, 7], steps=6, seed=4, batch_size=8)
    assert [len(s) for s in mixed] == [7, 2, 5]
    assert fingerprint(mixed) == fingerprint([ordered[2], ordered[0], ordered[1]])
    # The smallest count is sampled first, alone: as if it had been the only structure asked for.
    assert fingerprint(mixed[1:2]) == fingerprint(design(tiny_model, n=1, target=0.4, num_atoms=2, steps=6, seed=4))


def test_every_cell_comes_out_right_handed(tiny_model, monkeypatch):
    import model.sampling

    raw = []
    monkeypatch.setattr(model.sampling, "right_handed", lambda s: raw.append(s) or right_handed(s))
    structures = design(tiny_model, n=24, target=0.5, steps=5, seed=1)
    assert any(np.linalg.det(s.lattice.matrix) < 0 for s in raw)  # the sampler makes both kinds
    assert all(np.linalg.det(s.lattice.matrix) >= 0 for s in structures)  # an untrained model makes some flat
    for before, after in zip(raw, structures, strict=True):
        if after.volume > 1.0:  # the same atoms where they were, not a mirror image
            shift = before.lattice.get_fractional_coords(after.cart_coords - before.cart_coords)
            assert np.allclose(shift, shift.round(), atol=1e-6)
            assert np.isclose(abs(np.linalg.det(before.lattice.matrix)), after.volume)


def test_atom_counts_default_to_the_training_distribution(tiny_model):
    assert tiny_model.meta.num_atoms == {5: 1.0}
    assert {len(s) for s in design(tiny_model, n=3, target=0.0, steps=5)} == {5}


@pytest.fixture(scope="module")
def carbon_path(tmp_path_factory):
    """A tiny untrained carbon_24 model: cells of 6 to 24 atoms, unlike perov_5's 5."""
    return tiny_checkpoint_file(tmp_path_factory.mktemp("carbon") / "carbon.safetensors", dataset="carbon_24")


def test_atom_counts_by_property_bin_the_split_evenly_and_keep_its_counts():
    train = load_split("carbon_24", "train", limit=200)
    table = atom_counts_by_property(train)
    per_bin = np.sum(list(table["counts"].values()), axis=0)
    assert len(per_bin) == 20 and per_bin.sum() == len(train) and per_bin.max() - per_bin.min() <= 2
    for n, bins in table["counts"].items():
        assert sum(bins) == np.sum(train.num_atoms == int(n))
    lowest = np.argsort(train.properties, kind="stable")[: per_bin[0]]
    first_bin = {int(n): bins[0] for n, bins in table["counts"].items() if bins[0]}
    assert dict(zip(*np.unique(train.num_atoms[lowest], return_counts=True), strict=True)) == first_bin


def test_near_target_draws_the_atom_counts_of_the_training_structures_in_the_targets_bin(carbon_path):
    model = load_model(carbon_path, "cpu")
    table = model.meta.num_atoms_by_property
    low, high = table.edges[0], table.edges[-1]
    assert set(table.near(low)) < set(model.meta.num_atoms) and table.near(low) != table.near(high)
    counts = sample_num_atoms(model, [low] * 100 + [high] * 100, "near_target", torch.Generator().manual_seed(0))
    assert set(counts[:100]) == set(table.near(low)) and set(counts[100:]) == set(table.near(high))
    assert set(table.near(low - 100.0)) == set(table.near(low))  # beyond the range: its end bin
    whole = sample_num_atoms(model, [low] * 200, "training", torch.Generator().manual_seed(0))
    assert not set(whole) <= set(table.near(low))

    structures = design(model, n=8, target=low, steps=2, seed=1)  # near_target is the default
    assert {len(s) for s in structures} <= set(table.near(low))


def test_a_header_without_atom_counts_by_property_draws_from_the_whole_split(carbon_path, tmp_path):
    path = tmp_path / "old.safetensors"
    path.write_bytes(carbon_path.read_bytes())
    header = read_metadata(path).as_dict()
    del header["num_atoms_by_property"]
    rewrite_metadata(path, header)
    model = load_model(path, "cpu")
    assert model.meta.num_atoms_by_property is None
    target = model.meta.property.min
    default = design(model, n=3, target=target, steps=2, seed=1)
    assert fingerprint(default) == fingerprint(design(model, n=3, target=target, steps=2, seed=1,
                                                      atom_counts="training"))
    with pytest.raises(DesignError, match="records no atom counts by property"):
        design(model, n=3, target=target, steps=2, atom_counts="near_target")
    assert {len(s) for s in design(model, n=2, target=target, steps=2, num_atoms=7, atom_counts="near_target")} == {7}


def test_charge_balance_defaults_to_the_header_and_changes_compositions(tiny_checkpoint, tmp_path):
    from model.metrics import compositional_problem

    path = tmp_path / "balanced.safetensors"
    path.write_bytes(tiny_checkpoint.read_bytes())
    plain_model = load_model(path, "cpu")
    assert plain_model.meta.default_charge_balance is False
    header = read_metadata(path).as_dict()
    header["sampling"]["default_charge_balance"] = True
    rewrite_metadata(path, header)
    model = load_model(path, "cpu")
    assert model.meta.default_charge_balance is True
    args = {"n": 24, "target": 0.5, "steps": 20, "seed": 3, "elements": ["Li", "O"], "num_atoms": 6}
    balanced = design(model, **args)
    assert fingerprint(balanced) == fingerprint(design(plain_model, charge_balance=True, **args))
    plain = design(model, charge_balance=False, **args)
    assert fingerprint(plain) == fingerprint(design(plain_model, **args))
    # The untrained model's Li-O compositions are random; each is a few atoms from a valid one.
    assert sum(compositional_problem(s) is None for s in plain) < len(plain)
    assert all(compositional_problem(s) is None for s in balanced)
    assert {s.composition.chemical_system for s in balanced} == {"Li-O"}


def test_full_schedule_and_guidance_run(tiny_model):
    structures = design(tiny_model, n=2, target=-0.3, guidance=2.0)  # steps default to T = 50
    assert len(structures) == 2


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_element_mask_is_obeyed(tiny_model, sampler):
    allowed = {"Sr", "Ti", "O"}
    assert allowed <= set(tiny_model.meta.elements)
    structures = design(tiny_model, n=6, target=0.5, elements=sorted(allowed), steps=15, seed=3, sampler=sampler)
    assert {el.symbol for s in structures for el in s.species} <= allowed


def test_samplers_differ_when_strided_and_paper_is_rescaled_at_t_steps(tiny_model):
    full = {name: fingerprint(design(tiny_model, n=3, target=0.5, seed=1, sampler=name)) for name in SAMPLERS}
    assert full["rescaled"] == full["paper"] != full["exponential"]
    strided = {name: fingerprint(design(tiny_model, n=3, target=0.5, seed=1, steps=10, sampler=name))
               for name in SAMPLERS}
    assert len({repr(f) for f in strided.values()}) == len(SAMPLERS)
    again = design(tiny_model, n=3, target=0.5, seed=1, steps=10, sampler="exponential")
    assert fingerprint(again) == strided["exponential"]


def fine_langevin(x, mu, time, substeps, generator):
    """Langevin dynamics on a Gaussian of width 1 around mu, in many small Euler-Maruyama steps."""
    dt = time / substeps
    for _ in range(substeps):
        x = x + dt * (mu - x) + math.sqrt(2 * dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


@pytest.mark.parametrize("h", [0.04, 0.4, 2.0, 4.0])
def test_exponential_corrector_moves_as_langevin_dynamics_on_a_gaussian(h):
    generator = torch.Generator().manual_seed(0)
    x = torch.full((200_000,), 0.7, dtype=torch.float64)
    mu, sigma, step = 0.2, torch.tensor(1.0, dtype=torch.float64), torch.tensor(h, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    exact = langevin_update(x, (mu - x) / sigma**2, noise, step, sigma, "exponential")
    fine = fine_langevin(x, mu, h, 400, generator)
    assert exact.mean().item() == pytest.approx(fine.mean().item(), abs=0.01)
    assert exact.var().item() == pytest.approx(fine.var().item(), rel=0.03)


def test_exponential_corrector_stays_bounded_where_the_rescaled_step_diverges():
    # carbon_24 at 100 of 1000 steps: a corrector step of 0.4 sigma_t^2 a level, times the stride 10.
    generator = torch.Generator().manual_seed(0)
    sigma, step = torch.tensor(1.0), torch.tensor(4.0)
    exponential = euler = torch.zeros(10_000)
    for _ in range(50):
        exponential = langevin_update(exponential, -exponential, torch.randn(10_000, generator=generator),
                                      step, sigma, "exponential")
        euler = langevin_update(euler, -euler, torch.randn(10_000, generator=generator), step, sigma, "rescaled")
    assert exponential.var().item() == pytest.approx(1.0, rel=0.05)
    assert euler.var().item() > 1e6


@pytest.mark.parametrize("steps", [50, 100, 250])
def test_rescaled_corrector_keeps_the_langevin_time_of_the_full_schedule(steps):
    T = 1000
    schedule = Schedule(DiffusionConfig(timesteps=T), lambda_t=torch.ones(T + 1))

    def langevin_time(grid, sampler):
        pairs = zip(grid, [*grid[1:], 0], strict=True)
        return sum(float(corrector_step(schedule, t, s, 1e-6, sampler)) for t, s in pairs)

    full = langevin_time(sampling_timesteps(T, T), "paper")
    grid = sampling_timesteps(T, steps)
    # A strided step uses the step size of its noisiest level, so the sum runs a little high.
    assert full <= langevin_time(grid, "rescaled") <= 1.15 * full
    assert langevin_time(grid, "paper") <= 1.15 * full * steps / T


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
        ({"sampler": "euler"}, "sampler must be one of exponential, paper, rescaled"),
        ({"atom_counts": "uniform"}, "atom_counts must be one of near_target, training"),
        ({"charge_balance": "yes"}, "charge_balance must be true or false"),
    ],
)
def test_bad_arguments_raise_design_errors(tiny_model, kwargs, message):
    args = {"n": 3, "target": 0.5, **kwargs}
    with pytest.raises(DesignError, match=message):
        design(tiny_model, **args)
