"""The denoiser's symmetries and masks, checked numerically on real structures."""

import math

import pytest
import torch
import torch.nn.functional as F

from model.data import CrystalSet, dataset_statistics, load_split
from model.network import Denoiser, DenoiserConfig
from tests.conftest import TINY_ARCHITECTURE


def real_batch(dataset: str, rows: int = 6):
    arrays = load_split(dataset, "train", limit=rows)
    stats = dataset_statistics(arrays, dataset)
    vocab = sorted(set(arrays.atomic_numbers.tolist()))
    data = CrystalSet(arrays, vocab, stats["mean"], stats["std"])
    batch = data.batch(torch.arange(len(data)))
    return batch, len(vocab)


def run(net, batch, species=None, frac=None, lattice=None, mask=None, t=None):
    K = net.config.num_classes
    B = batch.lattice.shape[0]
    species = F.one_hot(batch.species, K).double() if species is None else species
    return net(
        species,
        batch.frac.double() if frac is None else frac,
        batch.lattice.double() if lattice is None else lattice,
        torch.full((B,), 300) if t is None else t,
        batch.prop.double(),
        torch.ones(B, dtype=torch.bool),
        batch.atom_mask if mask is None else mask,
    )


def random_rotation(generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.fixture(
    params=[("perov_5", "cdi", False), ("mp_20", "cds", False), ("carbon_24", "cdi", False),
            ("carbon_24", "cds", True)],
    ids=lambda p: "-".join(p[:2]) + ("-pair-per-block" if p[2] else ""),
)
def setup(request):
    dataset, conditioning, pair_per_block = request.param
    batch, K = real_batch(dataset)
    torch.manual_seed(0)
    config = DenoiserConfig(num_classes=K, conditioning=conditioning, pair_per_block=pair_per_block,
                            **TINY_ARCHITECTURE)
    return Denoiser(config).double().eval(), batch


def test_pair_per_block_gives_each_block_its_own_pair_features():
    batch, K = real_batch("carbon_24")
    torch.manual_seed(0)
    shared = Denoiser(DenoiserConfig(num_classes=K, **TINY_ARCHITECTURE)).double().eval()
    per_block = Denoiser(DenoiserConfig(num_classes=K, pair_per_block=True, **TINY_ARCHITECTURE)).double().eval()
    assert per_block.pair is None and all(block.pair is not None for block in per_block.blocks)
    assert shared.pair is not None and all(block.pair is None for block in shared.blocks)
    # Copy the shared features into every block: the two networks then compute the same function.
    state = {k: v for k, v in shared.state_dict().items() if not k.startswith("pair.")}
    for i in range(len(per_block.blocks)):
        state |= {f"blocks.{i}.pair.{k}": v for k, v in shared.pair.state_dict().items()}
    per_block.load_state_dict(state)
    torch.testing.assert_close(run(per_block, batch).score_frac, run(shared, batch).score_frac)
    with torch.no_grad():
        per_block.blocks[1].pair[2].weight.add_(0.5)
    assert not torch.allclose(run(per_block, batch).score_frac, run(shared, batch).score_frac)


def test_output_shapes(setup):
    net, batch = setup
    out = run(net, batch)
    B, N = batch.atom_mask.shape
    assert out.score_frac.shape == (B, N, 3)
    assert out.species_logits.shape == (B, N, net.config.num_classes)
    assert out.eps_lattice.shape == (B, 3, 3)
    assert all(torch.isfinite(x).all() for x in out)


def test_permutation_equivariance(setup):
    net, batch = setup
    out = run(net, batch)
    generator = torch.Generator().manual_seed(1)
    for b in range(batch.lattice.shape[0]):
        n = int(batch.atom_mask[b].sum())
        perm = torch.arange(batch.atom_mask.shape[1])
        perm[:n] = torch.randperm(n, generator=generator)
        permuted = run(
            net, batch,
            species=F.one_hot(batch.species[:, perm], net.config.num_classes).double(),
            frac=batch.frac[:, perm].double(),
        )
        torch.testing.assert_close(permuted.score_frac[b, :n], out.score_frac[b, perm[:n]])
        torch.testing.assert_close(permuted.species_logits[b, :n], out.species_logits[b, perm[:n]])
        torch.testing.assert_close(permuted.eps_lattice[b], out.eps_lattice[b])


def test_periodic_translation_invariance(setup):
    net, batch = setup
    out = run(net, batch)
    shift = torch.tensor([0.37, -0.81, 0.5], dtype=torch.float64)
    shifted = run(net, batch, frac=torch.remainder(batch.frac.double() + shift, 1.0))
    mask = batch.atom_mask
    torch.testing.assert_close(shifted.score_frac[mask], out.score_frac[mask])
    torch.testing.assert_close(shifted.species_logits[mask], out.species_logits[mask])
    torch.testing.assert_close(shifted.eps_lattice, out.eps_lattice)


def test_rotation_equivariance_of_the_lattice_output(setup):
    net, batch = setup
    out = run(net, batch)
    R = random_rotation(torch.Generator().manual_seed(2))
    rotated = run(net, batch, lattice=batch.lattice.double() @ R.T)  # rows are lattice vectors
    mask = batch.atom_mask
    torch.testing.assert_close(rotated.eps_lattice, out.eps_lattice @ R.T)
    torch.testing.assert_close(rotated.score_frac[mask], out.score_frac[mask])
    torch.testing.assert_close(rotated.species_logits[mask], out.species_logits[mask])


def test_padding_does_not_change_real_atoms():
    """A structure alone and the same structure padded in a batch give the same outputs."""
    batch, K = real_batch("mp_20", rows=8)
    torch.manual_seed(0)
    net = Denoiser(DenoiserConfig(num_classes=K, **TINY_ARCHITECTURE)).double().eval()
    out = run(net, batch)
    counts = batch.atom_mask.sum(1)
    assert counts.min() < counts.max(), "the slice must mix atom counts to test padding"
    b = int(counts.argmin())
    n = int(counts[b])
    alone = batch.__class__(*(getattr(batch, k)[b : b + 1] for k in batch.__dataclass_fields__))
    alone.frac, alone.species, alone.atom_mask = alone.frac[:, :n], alone.species[:, :n], alone.atom_mask[:, :n]
    single = run(net, alone)
    torch.testing.assert_close(single.score_frac[0], out.score_frac[b, :n])
    torch.testing.assert_close(single.eps_lattice[0], out.eps_lattice[b])


def test_condition_changes_the_output():
    batch, K = real_batch("perov_5")
    for conditioning in ("cdi", "cds"):
        torch.manual_seed(0)
        net = Denoiser(DenoiserConfig(num_classes=K, conditioning=conditioning, **TINY_ARCHITECTURE)).double()
        a = run(net, batch).score_frac
        batch.prop = batch.prop + 1.0
        b = run(net, batch).score_frac
        batch.prop = batch.prop - 1.0
        assert not torch.allclose(a, b), conditioning


def test_config_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="conditioning"):
        DenoiserConfig(num_classes=3, conditioning="film")
    with pytest.raises(ValueError, match="divisible"):
        DenoiserConfig(num_classes=3, d_model=130, num_heads=4)
    assert math.isfinite(DenoiserConfig(num_classes=3).d_model)
