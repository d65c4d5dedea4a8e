"""Training: Adam, linear warm-up then cosine LR, value clipping, EMA with warm-up, resumable.

Two files come out, rewritten every `eval_every` epochs: the checkpoint (`out`, EMA weights)
and the resume state (`state_path(out, state_dir)`: raw weights, optimizer, RNG states and the
sha256 of the checkpoint that holds the EMA; tensors only, read back with weights_only=True),
which the CLI keeps outside the repository so that a run survives a fresh checkout. An
interrupted run resumes from the last written epoch and then continues exactly as if it had
never stopped. With no state to resume from, `--resume`
warm-starts from the checkpoint itself (its EMA weights, a fresh optimizer, the schedule
position from its header).

The LR plan is fixed at the start by `epochs` (warm-up, then cosine decay to lr_min over all
planned steps); a resumed run keeps it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from model.checkpoint import SCHEDULE_PREFIX, CheckpointError, file_sha256, load_model, read_metadata, save_checkpoint
from model.data import DATA_ROOT, CrystalSet, checkpoint_metadata, load_split
from model.diffusion import DiffusionConfig, LossTerms, Schedule, diffusion_loss
from model.network import Denoiser, DenoiserConfig


class ResumeError(ValueError):
    """A run cannot resume as asked; the message says why and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    conditioning: str = "cdi"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    lr_min: float = 1e-5  # the cosine decay ends here at the last planned step
    warmup_steps: int = 1000  # linear LR warm-up from 0
    grad_clip: float = 0.5  # by value
    ema_decay: float = 0.999  # reached after warm-up: min(ema_decay, (1 + n) / (10 + n)) at step n
    bf16: bool = True  # autocast on CUDA (no effect on CPU)
    eval_every: int = 1  # validate and write the checkpoint every N epochs (and at the end)
    seed: int = 0
    by_atom_count: bool = True  # batches of one atom count (no padding); see data.CrystalSet
    max_train: int | None = None  # use only the first rows of the split (tests, smoke runs)
    max_val: int | None = None
    max_minutes: float | None = None  # stop after the epoch that crosses this wall time
    architecture: dict = field(default_factory=dict)  # DenoiserConfig overrides, e.g. {"num_blocks": 2}
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


def default_state_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "xtaldiff" / "runs"


def state_path(out: Path, state_dir: Path | None = None) -> Path:
    """Resume state of the run writing `out`: `<state_dir>/<out stem>/state.pt`."""
    out = Path(out)
    if state_dir is None:
        return out.with_name(out.name + ".state.pt")
    return Path(state_dir) / out.stem / "state.pt"


def learning_rate(step: int, planned_steps: int, config: TrainConfig, start_step: int = 0) -> float:
    """Linear warm-up to `lr`, then half a cosine down to `lr_min` at the last planned step.

    start_step: where a fresh optimizer took over (0, or a warm start's position). Its first
    updates are sign-like, of size lr for every weight, so the rate ramps up again over
    `warmup_steps` from there (without it, mp_20's validation loss rose 1.5744 -> 1.5856 after
    a warm start at 5e-4)."""
    ramp = min(1.0, (step - start_step + 1) / config.warmup_steps)
    progress = min(1.0, max(0, step - config.warmup_steps) / max(1, planned_steps - config.warmup_steps))
    return ramp * (config.lr_min + 0.5 * (config.lr - config.lr_min) * (1 + math.cos(math.pi * progress)))


def ema_decay(step: int, config: TrainConfig) -> float:
    """Short memory at first, so the EMA does not carry the random initial weights."""
    return min(config.ema_decay, (1 + step) / (10 + step))


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def config_record(config: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


RESUMABLE_CHANGES = ("max_minutes", "eval_every")  # what a resumed run may ask differently


def same_run(a: dict, b: dict) -> bool:
    return all(a[k] == b.get(k) for k in a if k not in RESUMABLE_CHANGES)


def mean_losses(terms: list[LossTerms]) -> dict[str, float]:
    keys = ("total", "lattice", "coords", "species")
    return {k: float(torch.stack([getattr(x, k).detach() for x in terms]).mean()) for k in keys}


def validation_loss(net, data: CrystalSet, schedule: Schedule, batch_size: int, by_atom_count: bool, device) -> dict:
    """Validation loss with fixed noise, so that epochs compare."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(1234)
        terms = [
            diffusion_loss(net, batch.to(device), schedule, net.config.num_classes)
            for batch in data.batches(batch_size, None, by_atom_count)
        ]
    return mean_losses(terms)


def warm_start(path: Path, net, ema, dataset: str, vocab_z: list[int], steps_per_epoch: int) -> dict:
    """Load a checkpoint's EMA weights into `net` and `ema`; the record resumes at its epoch."""
    meta = read_metadata(path)
    if meta.dataset != dataset or DenoiserConfig(**meta.network) != net.config:
        raise ResumeError(f"--resume: {path} is a {meta.dataset} model of another shape; it cannot seed this run")
    trained = load_model(path, device="cpu")
    net.load_state_dict(trained.denoiser.state_dict())
    ema.load_state_dict(trained.denoiser.state_dict())
    epochs = int(meta.training.get("epochs", 0))
    steps = epochs * steps_per_epoch
    return {"epochs": epochs, "steps": steps, "wall_time_s": 0.0, "history": [],
            "warm_started_from": {"sha256": trained.sha256, "epochs": epochs, "step": steps}}


def train(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    state_dir: Path | None = None,
    device: torch.device | None = None,
    data_root: Path = DATA_ROOT,
    show_progress: bool = True,
    log=print,
    stop_requested: Callable[[], bool] = lambda: False,
) -> dict:
    """Train (or resume) and keep `out` up to date; returns the training record.

    state_dir: where the resume state lives (None: beside `out`).
    stop_requested: asked after every epoch; when it says yes, the run validates, writes the
    checkpoint and its resume state, and returns, as at the end of --max-minutes.
    """
    out = Path(out)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)

    train_arrays = load_split(config.dataset, "train", limit=config.max_train, root=data_root)
    val_arrays = load_split(config.dataset, "val", limit=config.max_val, root=data_root)
    dataset_meta = checkpoint_metadata(train_arrays, config.dataset)
    stats = dataset_meta["property"]
    vocab_z = sorted(set(train_arrays.atomic_numbers.tolist()))
    train_set = CrystalSet(train_arrays, vocab_z, stats["mean"], stats["std"])
    val_set = CrystalSet(val_arrays, vocab_z, stats["mean"], stats["std"])
    steps_per_epoch = train_set.num_batches(config.batch_size, config.by_atom_count)
    planned_steps = config.epochs * steps_per_epoch

    net_config = DenoiserConfig(num_classes=len(vocab_z), conditioning=config.conditioning, **config.architecture)
    net = Denoiser(net_config).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    schedule = Schedule(config.diffusion).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    shuffle = torch.Generator().manual_seed(config.seed)
    record = {"epochs": 0, "steps": 0, "wall_time_s": 0.0, "history": []}

    path = state_path(out, state_dir)
    if resume and path.exists():
        # On the CPU: the generators' states must stay there; load_state_dict moves the rest to the device.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not same_run(config_record(config), state["config"]):
            raise ResumeError(f"--resume: {path} was trained with a different configuration: {state['config']}")
        net.load_state_dict(state["net"])
        # The EMA lives only in the checkpoint (it would make the state a third larger).
        if not out.exists() or file_sha256(out) != state["checkpoint_sha256"]:
            raise ResumeError(f"--resume: {out} is not the checkpoint written with {path}; resume needs both")
        ema.load_state_dict(
            {k: v for k, v in load_file(out, device=str(device)).items() if not k.startswith(SCHEDULE_PREFIX)}
        )
        optimizer.load_state_dict(state["optimizer"])
        shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        record = json.loads(state["record"])
    elif resume:
        if not out.exists():
            raise FileNotFoundError(f"--resume: neither a training state at {path} nor a checkpoint at {out}")
        try:
            record = warm_start(out, net, ema, config.dataset, vocab_z, steps_per_epoch)
        except CheckpointError as exc:
            raise ResumeError(f"--resume: {exc}") from exc
        log(f"--resume: no training state at {path}; warm-starting from the EMA weights of {out} "
            f"(epoch {record['epochs']}, fresh optimizer)")

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and config.bf16)
    started = time.time() - record["wall_time_s"]
    start_step = record.get("warm_started_from", {}).get("step", 0)
    session_start = time.time()
    bar = tqdm(range(record["epochs"], config.epochs), initial=record["epochs"], total=config.epochs,
               unit="epoch", disable=not show_progress)
    terms, epochs_seen, window_start = [], [], time.time()  # the epochs since the last validation
    for epoch in bar:
        net.train()
        epochs_seen.append(epoch)
        for batch in train_set.batches(config.batch_size, shuffle, config.by_atom_count):
            lr = learning_rate(record["steps"], planned_steps, config, start_step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                loss = diffusion_loss(net, batch.to(device), schedule, net_config.num_classes)
            optimizer.zero_grad(set_to_none=True)
            # A remainder chunk of one atom count gets a step in proportion to its size.
            (loss.total * (len(batch.prop) / config.batch_size)).backward()
            torch.nn.utils.clip_grad_value_(net.parameters(), config.grad_clip)
            optimizer.step()
            with torch.no_grad():
                decay = ema_decay(record["steps"], config)
                torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)
            terms.append(loss)
            record["steps"] += 1
        out_of_time = config.max_minutes is not None and time.time() - session_start > 60 * config.max_minutes
        stopping = out_of_time or stop_requested()
        if (epoch + 1) % config.eval_every and epoch + 1 < config.epochs and not stopping:
            continue
        train_losses = mean_losses(terms)
        val_losses = validation_loss(ema, val_set, schedule, config.batch_size, config.by_atom_count, device)
        record["epochs"] = epoch + 1
        record["wall_time_s"] = time.time() - started
        record["history"].append({
            "epoch": epoch + 1, "step": record["steps"], "train": train_losses["total"],
            "val": val_losses["total"], "val_terms": val_losses, "lr": lr,
            "seconds_per_epoch": (time.time() - window_start) / len(epochs_seen),
        })
        record["final"] = {"train": train_losses, "val": val_losses}
        bar.set_postfix(loss=f"{train_losses['total']:.3f}", val=f"{val_losses['total']:.3f}", lr=f"{lr:.1e}")

        save_checkpoint(out, ema, schedule, {
            **dataset_meta,
            "training": {
                **{k: v for k, v in record.items() if k != "history"},
                "planned_steps": planned_steps,
                "device": str(device), "torch": torch.__version__, "git_commit": git_commit(),
                "config": config_record(config), "dropped_val_structures": val_set.num_dropped,
            },
        })
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({
            "config": config_record(config), "net": net.state_dict(), "checkpoint_sha256": file_sha256(out),
            "optimizer": optimizer.state_dict(),
            "shuffle_rng": shuffle.get_state(), "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            "record": json.dumps(record),
        }, tmp)
        tmp.replace(path)
        terms, epochs_seen, window_start = [], [], time.time()
        if stopping:
            break
    return record
