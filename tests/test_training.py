"""Training on real structures: a tiny model overfits, runs resume exactly, checkpoints round-trip."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError, load_model, read_metadata
from model.data import CrystalSet, dataset_statistics, load_split
from model.diffusion import DiffusionConfig, Schedule, diffusion_loss
from model.network import Denoiser, DenoiserConfig
from model.training import TrainConfig, ema_decay, learning_rate, state_path, train
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


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_resume_continues_exactly(tmp_path, device):
    device = torch.device(device)
    straight = tmp_path / "straight.safetensors"
    train(TrainConfig(**TINY_RUN, epochs=2), straight, show_progress=False, device=device)

    interrupted = tmp_path / "interrupted.safetensors"
    states = tmp_path / "states"
    # max_minutes=0 stops after the first epoch, with the LR plan of the whole run.
    train(TrainConfig(**TINY_RUN, epochs=2, max_minutes=0), interrupted, state_dir=states, show_progress=False,
          device=device)
    assert read_metadata(interrupted).training["epochs"] == 1
    assert state_path(interrupted, states).exists()
    record = train(TrainConfig(**TINY_RUN, epochs=2), interrupted, resume=True, state_dir=states, show_progress=False,
                   device=device)
    assert record["epochs"] == 2

    a, b = load_file(straight), load_file(interrupted)
    assert a.keys() == b.keys()
    # CUDA's atomic scatter-adds sum in no fixed order, so there the two runs agree only to rounding.
    tolerance = 0 if device.type == "cpu" else 1e-4
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tolerance, atol=tolerance)


def test_a_stop_request_ends_the_run_after_the_epoch_and_it_resumes(tmp_path):
    out, states = tmp_path / "run.safetensors", tmp_path / "states"
    asked = []
    # eval_every 5: without the request, the first checkpoint would come at the end of the run.
    config = TrainConfig(**TINY_RUN, epochs=3, eval_every=5)
    record = train(config, out, state_dir=states, show_progress=False, stop_requested=lambda: not asked.append(1))
    assert record["epochs"] == 1 and len(asked) == 1
    assert read_metadata(out).training["epochs"] == 1 and state_path(out, states).exists()
    assert train(config, out, resume=True, state_dir=states, show_progress=False)["epochs"] == 3


def test_resume_refuses_a_different_run(tmp_path):
    out = tmp_path / "run.safetensors"
    train(TrainConfig(**TINY_RUN, epochs=1), out, show_progress=False)
    assert state_path(out).exists()
    with pytest.raises(ValueError, match="different configuration"):
        train(TrainConfig(**{**TINY_RUN, "lr": 1e-4}, epochs=1), out, resume=True, show_progress=False)
    with pytest.raises(ValueError, match="different configuration"):  # the LR plan is fixed by epochs
        train(TrainConfig(**TINY_RUN, epochs=3), out, resume=True, show_progress=False)


def test_resume_without_state_warm_starts_from_the_checkpoint(tmp_path):
    out = tmp_path / "run.safetensors"
    train(TrainConfig(**TINY_RUN, epochs=1), out, show_progress=False)
    first = load_file(out)
    lines = []
    record = train(TrainConfig(**TINY_RUN, epochs=3), out, resume=True, state_dir=tmp_path / "elsewhere",
                   show_progress=False, log=lines.append)
    assert len(lines) == 1 and "warm-starting" in lines[0]
    assert record["epochs"] == 3 and record["warm_started_from"]["epochs"] == 1
    assert record["warm_started_from"]["step"] == record["steps"] // 3
    assert read_metadata(out).training["warm_started_from"]["epochs"] == 1
    assert any(not torch.equal(first[k], v) for k, v in load_file(out).items())

    with pytest.raises(FileNotFoundError, match="neither a training state"):
        train(TrainConfig(**TINY_RUN, epochs=1), tmp_path / "none.safetensors", resume=True, show_progress=False)
    with pytest.raises(ValueError, match="another shape"):
        train(TrainConfig(**{**TINY_RUN, "architecture": {**TINY_RUN["architecture"], "d_model": 16}}, epochs=2),
              out, resume=True, state_dir=tmp_path / "elsewhere2", show_progress=False)


def test_learning_rate_warms_up_then_decays_to_lr_min():
    config = TrainConfig(dataset="perov_5", lr=1e-3, lr_min=1e-5, warmup_steps=100)
    rates = [learning_rate(step, 1000, config) for step in range(1000)]
    assert rates[0] == pytest.approx(1e-5) and rates[99] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(rates[:100], rates[1:100], strict=False))
    assert all(a >= b for a, b in zip(rates[100:], rates[101:], strict=False))
    assert rates[550] == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(1000, 1000, config) == pytest.approx(1e-5)


def test_a_warm_start_ramps_the_learning_rate_up_again():
    config = TrainConfig(dataset="perov_5", lr=1e-3, lr_min=1e-5, warmup_steps=100)
    planned = learning_rate(400, 1000, config)
    assert learning_rate(400, 1000, config, start_step=400) == pytest.approx(planned / 100)
    assert learning_rate(449, 1000, config, start_step=400) == pytest.approx(learning_rate(449, 1000, config) / 2)
    assert learning_rate(499, 1000, config, start_step=400) == pytest.approx(learning_rate(499, 1000, config))


def test_ema_decay_starts_short_and_reaches_the_configured_decay():
    config = TrainConfig(dataset="perov_5", ema_decay=0.999)
    assert ema_decay(0, config) == pytest.approx(0.1)
    assert ema_decay(100, config) < 0.95
    assert ema_decay(100_000, config) == 0.999


def test_num_batches_counts_the_batches_of_an_epoch():
    arrays = load_split("perov_5", "train", limit=40)
    stats = dataset_statistics(arrays, "perov_5")
    data = CrystalSet(arrays, sorted(set(arrays.atomic_numbers.tolist())), stats["mean"], stats["std"])
    assert data.num_batches(16, by_atom_count=True) == 3 == len(list(data.batches(16, None, True)))


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    out = tmp_path / "model.safetensors"
    train(TrainConfig(**TINY_RUN, epochs=1, conditioning="cds"), out, show_progress=False)
    meta = read_metadata(out)
    assert meta.conditioning == "cds" and meta.dataset == "perov_5"
    assert meta.property.name == "heat_ref" and meta.property.unit == "eV"
    assert meta.num_atoms == {5: 1.0}
    assert meta.training["epochs"] == 1 and meta.training["device"] == "cpu"
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
    meta = read_metadata(tiny_checkpoint).as_dict()
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, foreign, metadata={"framework": "pt"})
    with pytest.raises(CheckpointError, match="not an xtaldiff checkpoint"):
        load_model(foreign)

    wider = tmp_path / "wider.safetensors"
    meta["network"]["d_model"] = 64
    save_file(tensors, wider, metadata={"xtaldiff": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        load_model(wider)
