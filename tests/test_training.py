"""Training on real structures: a tiny model overfits, runs resume exactly, checkpoints round-trip."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError, load_model, read_metadata
from model.data import CrystalSet, dataset_statistics, load_split
from model.diffusion import DiffusionConfig, Schedule, diffusion_loss
from model.network import Denoiser, DenoiserConfig
from model.training import TrainConfig, state_path, train
from tests.conftest import TINY_ARCHITECTURE, TINY_DIFFUSION

TINY_RUN = dict(
    dataset="perov_5", batch_size=16, max_train=32, max_val=16,
    architecture=TINY_ARCHITECTURE, diffusion=TINY_DIFFUSION, lr=3e-3,
)


def test_tiny_model_overfits_a_few_structures():
    """Loss on 4 memorised structures falls well below the untrained model's.

    It cannot reach zero: the network is invariant to translations (so the coordinate score
    keeps the uncertainty of the origin) and its lattice readout is rotation-equivariant (so a
    fixed orientation of L_0 is not memorisable). The lattice term is the clearest signal.
    """
    arrays = load_split("perov_5", "train", limit=4)
    stats = dataset_statistics(arrays, "perov_5")
    vocab = sorted(set(arrays.atomic_numbers.tolist()))
    data = CrystalSet(arrays, vocab, stats["mean"], stats["std"])
    batch = data.batch(torch.arange(len(data)))
    schedule = Schedule(DiffusionConfig(timesteps=50, lambda_draws=1000, cond_drop_prob=0.0))
    torch.manual_seed(0)
    net = Denoiser(DenoiserConfig(num_classes=len(vocab), **TINY_ARCHITECTURE))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def mean_losses(repeats=16):
        torch.manual_seed(123)
        with torch.no_grad():
            terms = [diffusion_loss(net, batch, schedule, len(vocab)) for _ in range(repeats)]
        return {k: sum(getattr(x, k).item() for x in terms) / repeats for k in ("total", "lattice")}

    before = mean_losses()
    for _ in range(500):
        loss = diffusion_loss(net, batch, schedule, len(vocab)).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = mean_losses()
    assert after["total"] < before["total"] / 1.4, (before, after)
    assert after["lattice"] < before["lattice"] / 1.8, (before, after)


def test_resume_continues_exactly(tmp_path):
    straight = tmp_path / "straight.safetensors"
    train(TrainConfig(**TINY_RUN, epochs=2), straight, show_progress=False)

    interrupted = tmp_path / "interrupted.safetensors"
    train(TrainConfig(**TINY_RUN, epochs=1), interrupted, show_progress=False)
    assert read_metadata(interrupted)["training"]["epochs"] == 1
    record = train(TrainConfig(**TINY_RUN, epochs=2), interrupted, resume=True, show_progress=False)
    assert record["epochs"] == 2

    a, b = load_file(straight), load_file(interrupted)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_resume_refuses_a_different_run(tmp_path):
    out = tmp_path / "run.safetensors"
    train(TrainConfig(**TINY_RUN, epochs=1), out, show_progress=False)
    assert state_path(out).exists()
    with pytest.raises(ValueError, match="different configuration"):
        train(TrainConfig(**{**TINY_RUN, "lr": 1e-4}, epochs=2), out, resume=True, show_progress=False)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    out = tmp_path / "model.safetensors"
    train(TrainConfig(**TINY_RUN, epochs=1, conditioning="cds"), out, show_progress=False)
    meta = read_metadata(out)
    assert meta["conditioning"] == "cds" and meta["dataset"] == "perov_5"
    assert meta["property"]["name"] == "heat_ref" and meta["property"]["unit"] == "eV"
    assert meta["num_atoms"] == {"5": 1.0}
    assert meta["training"]["epochs"] == 1 and meta["training"]["device"] == "cpu"
    first, second = load_model(out, "cpu"), load_model(out, "cpu")
    assert first.sha256 == second.sha256
    K = first.denoiser.config.num_classes
    generator = torch.Generator().manual_seed(0)
    args = (
        torch.softmax(torch.randn(2, 5, K, generator=generator), -1), torch.rand(2, 5, 3, generator=generator),
        torch.eye(3).expand(2, 3, 3) * 4, torch.tensor([10, 40]), torch.zeros(2),
        torch.ones(2, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool),
    )
    with torch.no_grad():
        for x, y in zip(first.denoiser(*args), second.denoiser(*args), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(first.schedule.lambda_t, second.schedule.lambda_t)


def test_corrupt_and_mismatched_checkpoints_say_what_is_wrong(tmp_path, tiny_checkpoint):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(missing)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04 this is a pickle, not safetensors" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(garbage)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError):
        load_model(truncated)

    tensors = load_file(tiny_checkpoint)
    meta = read_metadata(tiny_checkpoint)
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, foreign, metadata={"framework": "pt"})
    with pytest.raises(CheckpointError, match="not an xtaldiff checkpoint"):
        load_model(foreign)

    wider = tmp_path / "wider.safetensors"
    meta["network"]["d_model"] = 64
    save_file(tensors, wider, metadata={"xtaldiff": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        load_model(wider)
