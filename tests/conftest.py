"""Shared fixtures: small slices of the real benchmark sets and a tiny checkpoint."""

from pathlib import Path

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.data import checkpoint_metadata, load_split
from model.diffusion import DiffusionConfig, Schedule
from model.network import Denoiser, DenoiserConfig

TINY_ARCHITECTURE = {"d_model": 32, "num_blocks": 2, "num_heads": 4, "num_freqs": 4, "d_pair": 16}
TINY_DIFFUSION = DiffusionConfig(timesteps=50, lambda_draws=1000)


def tiny_checkpoint_file(
    path: Path, dataset: str = "perov_5", conditioning: str = "cdi", seed: int = 0,
    diffusion: DiffusionConfig = TINY_DIFFUSION,
) -> Path:
    """A randomly initialised model with the real dataset's metadata (first 64 training rows)."""
    meta = checkpoint_metadata(load_split(dataset, "train", limit=64), dataset)
    torch.manual_seed(seed)
    net = Denoiser(DenoiserConfig(num_classes=len(meta["elements"]), conditioning=conditioning, **TINY_ARCHITECTURE))
    meta["training"] = {"epochs": 0, "note": "untrained test fixture"}
    save_checkpoint(path, net, Schedule(diffusion), meta)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Path to a tiny untrained perov_5 checkpoint (T = 50): samples in about a second."""
    return tiny_checkpoint_file(tmp_path_factory.mktemp("checkpoints") / "tiny_perov_5.safetensors")
