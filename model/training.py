"""Training: Adam, LR on plateau, value clipping, EMA, validation each epoch, resumable.

Two files come out: the checkpoint (`out`, EMA weights, rewritten after every epoch) and the
resume state beside it (`<out>.state.pt`: raw weights, EMA, optimizer, scheduler, RNG states;
tensors only, read back with weights_only=True). An interrupted run resumes from the last
finished epoch and then continues exactly as if it had never stopped.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from model.checkpoint import save_checkpoint
from model.data import DATA_ROOT, CrystalSet, checkpoint_metadata, load_split
from model.diffusion import DiffusionConfig, LossTerms, Schedule, diffusion_loss
from model.network import Denoiser, DenoiserConfig


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    conditioning: str = "cdi"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    lr_factor: float = 0.6  # ReduceLROnPlateau, DiffCSP's settings
    lr_patience: int = 30
    lr_min: float = 1e-4
    grad_clip: float = 0.5  # by value
    ema_decay: float = 0.999
    seed: int = 0
    by_atom_count: bool = True  # batches of one atom count (no padding); see data.CrystalSet
    max_train: int | None = None  # use only the first rows of the split (tests, smoke runs)
    max_val: int | None = None
    max_minutes: float | None = None  # stop after the epoch that crosses this wall time
    architecture: dict = field(default_factory=dict)  # DenoiserConfig overrides, e.g. {"num_blocks": 2}
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.pt")


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


RESUMABLE_CHANGES = ("epochs", "max_minutes")  # what a resumed run may ask differently


def same_run(a: dict, b: dict) -> bool:
    return all(a[k] == b.get(k) for k in a if k not in RESUMABLE_CHANGES)


def mean_losses(terms: list[LossTerms]) -> dict[str, float]:
    keys = ("total", "lattice", "coords", "species")
    return {k: float(torch.stack([getattr(x, k).detach() for x in terms]).mean()) for k in keys}


def evaluate_loss(net, data: CrystalSet, schedule: Schedule, batch_size: int, by_atom_count: bool, device) -> dict:
    """Validation loss with fixed noise, so that epochs compare."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(1234)
        terms = [
            diffusion_loss(net, batch.to(device), schedule, net.config.num_classes)
            for batch in data.batches(batch_size, None, by_atom_count)
        ]
    return mean_losses(terms)


def train(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    device: torch.device | None = None,
    data_root: Path = DATA_ROOT,
    show_progress: bool = True,
) -> dict:
    """Train (or resume) and keep `out` up to date; returns the training record."""
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

    net_config = DenoiserConfig(num_classes=len(vocab_z), conditioning=config.conditioning, **config.architecture)
    net = Denoiser(net_config).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    schedule = Schedule(config.diffusion).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.lr_min
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    record = {"epochs": 0, "steps": 0, "wall_time_s": 0.0, "history": []}

    if resume:
        path = state_path(out)
        if not path.exists():
            raise FileNotFoundError(f"--resume: no training state at {path}")
        state = torch.load(path, map_location=device, weights_only=True)
        if not same_run(config_record(config), state["config"]):
            raise ValueError(f"--resume: {path} was trained with a different configuration: {state['config']}")
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        plateau.load_state_dict(state["plateau"])
        shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        record = json.loads(state["record"])

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    started = time.time() - record["wall_time_s"]
    session_start = time.time()
    bar = tqdm(range(record["epochs"], config.epochs), initial=record["epochs"], total=config.epochs,
               unit="epoch", disable=not show_progress)
    for epoch in bar:
        net.train()
        epoch_start = time.time()
        terms = []
        for batch in train_set.batches(config.batch_size, shuffle, config.by_atom_count):
            with autocast:
                loss = diffusion_loss(net, batch.to(device), schedule, net_config.num_classes)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            torch.nn.utils.clip_grad_value_(net.parameters(), config.grad_clip)
            optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - config.ema_decay)
            terms.append(loss)
            record["steps"] += 1
        train_losses = mean_losses(terms)
        val_losses = evaluate_loss(ema, val_set, schedule, config.batch_size, config.by_atom_count, device)
        plateau.step(val_losses["total"])
        record["epochs"] = epoch + 1
        record["wall_time_s"] = time.time() - started
        record["history"].append({
            "epoch": epoch + 1, "train": train_losses["total"], "val": val_losses["total"],
            "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - epoch_start,
        })
        record["final"] = {"train": train_losses, "val": val_losses}
        bar.set_postfix(loss=f"{train_losses['total']:.3f}", val=f"{val_losses['total']:.3f}",
                        lr=f"{optimizer.param_groups[0]['lr']:.1e}", ep_s=f"{1 / (time.time() - epoch_start):.2f}")

        save_checkpoint(out, ema, schedule, {
            **dataset_meta,
            "training": {
                **{k: v for k, v in record.items() if k != "history"},
                "device": str(device), "torch": torch.__version__, "git_commit": git_commit(),
                "config": config_record(config), "dropped_val_structures": val_set.num_dropped,
            },
        })
        tmp = state_path(out).with_suffix(".tmp")
        torch.save({
            "config": config_record(config), "net": net.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "plateau": plateau.state_dict(),
            "shuffle_rng": shuffle.get_state(), "torch_rng": torch.get_rng_state(),
            "record": json.dumps(record),
        }, tmp)
        tmp.replace(state_path(out))
        if config.max_minutes is not None and time.time() - session_start > 60 * config.max_minutes:
            break
    return record
