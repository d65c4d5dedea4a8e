"""Shared fixtures: small slices of the real benchmark sets and a tiny checkpoint."""

from pathlib import Path

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.data import dataset_info, dataset_statistics, load_split
from model.diffusion import DiffusionConfig, Schedule
from model.network import Denoiser, DenoiserConfig

TINY_ARCHITECTURE = {"d_model": 32, "num_blocks": 2, "num_heads": 4, "num_freqs": 4, "d_pair": 16}
TINY_DIFFUSION = DiffusionConfig(timesteps=50, lambda_draws=1000)


def tiny_checkpoint_file(path: Path, dataset: str = "perov_5", conditioning: str = "cdi", seed: int = 0) -> Path:
    """A randomly initialised model with the real dataset's metadata (first 64 training rows)."""
    arrays = load_split(dataset, "train", limit=64)
    stats = dataset_statistics(arrays, dataset)
    torch.manual_seed(seed)
    net = Denoiser(DenoiserConfig(num_classes=len(stats["elements"]), conditioning=conditioning, **TINY_ARCHITECTURE))
    meta = {
        "dataset": dataset,
        "property": {k: v for k, v in stats.items() if k not in ("num_atoms", "elements")},
        "elements": stats["elements"],
        "num_atoms": stats["num_atoms"],
        "sampling": {"step_lr": dataset_info(dataset).step_lr},
        "training": {"epochs": 0, "note": "untrained test fixture"},
    }
    save_checkpoint(path, net, Schedule(TINY_DIFFUSION), meta)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Path to a tiny untrained perov_5 checkpoint (T = 50): samples in about a second."""
    return tiny_checkpoint_file(tmp_path_factory.mktemp("checkpoints") / "tiny_perov_5.safetensors")
