"""The checkpoint format: one .safetensors file, EMA weights plus JSON metadata in its header.

The header carries everything needed to rebuild and use the model (network and diffusion
configs, dataset, property normalisation, atom-count distribution, element vocabulary, the
coordinate-noise weights lambda_t) and the training record. Loading never unpickles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.diffusion import DiffusionConfig, Schedule
from model.network import Denoiser, DenoiserConfig
from xtaldiff.checkpoint_file import (
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    CheckpointFileError,
    CheckpointMeta,
    check_metadata,
)

SCHEDULE_PREFIX = "schedule."


class CheckpointError(ValueError):
    """A file that is not a usable xtaldiff checkpoint; the message says what is wrong."""


@dataclass
class TrainedModel:
    """A loaded checkpoint, ready for `model.sampling.design`."""

    denoiser: Denoiser
    schedule: Schedule
    meta: CheckpointMeta
    sha256: str
    device: torch.device

    @property
    def dataset(self) -> str:
        return self.meta.dataset


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 of the tensor bytes only: unchanged when `rewrite_metadata` replaces the header,
    so reports made before and after a header rewrite name the same weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_len)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def names_these_weights(record: dict, path: Path) -> bool:
    """Whether a report's provenance or a samples sidecar names the weights of the checkpoint at
    `path`: by the tensors' sha256 where it has one; else by the file's, which record-evaluation's
    header rewrite changes (the header keeps the hash of the file that was evaluated)."""
    if "weights_sha256" in record:
        return record["weights_sha256"] == weights_sha256(path)
    evaluated = read_metadata(path).metrics.get("evaluated_sha256")
    return record.get("checkpoint_sha256") in {file_sha256(path), evaluated} - {None}


def make_header(denoiser: Denoiser, schedule: Schedule, meta: dict) -> dict:
    """The JSON header of a checkpoint: `meta` (dataset facts, training record) and the configs."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **meta,
        "conditioning": denoiser.config.conditioning,
        "network": asdict(denoiser.config),
        "diffusion": asdict(schedule.config),
    }


def save_checkpoint(path: Path, denoiser: Denoiser, schedule: Schedule, meta: dict) -> None:
    """Write weights and metadata atomically (a crash never leaves a half-written file)."""
    meta = make_header(denoiser, schedule, meta)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in denoiser.state_dict().items()}
    tensors[SCHEDULE_PREFIX + "lambda_t"] = schedule.lambda_t.cpu().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    tmp.replace(path)


def rewrite_metadata(path: Path, meta: dict) -> None:
    """Replace a checkpoint's header, keeping its tensors byte for byte (atomically)."""
    path = Path(path)
    read_metadata(path)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    tmp.replace(path)


def read_metadata(path: Path | str) -> CheckpointMeta:
    """The checked header of a checkpoint, without reading any weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a safetensors file ({exc})") from exc
    if META_KEY not in header:
        raise CheckpointError(f"{path} is a safetensors file but not an xtaldiff checkpoint (no '{META_KEY}' metadata)")
    try:
        return check_metadata(header)
    except CheckpointFileError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: Path | str, device: torch.device | str | None = None) -> TrainedModel:
    """Rebuild the network from the header's config and load the weights (never unpickles)."""
    path = Path(path)
    meta = read_metadata(path)
    device = torch.device(device) if device is not None else default_device()
    try:
        network_config = DenoiserConfig(**meta.network)
        diffusion_config = DiffusionConfig(**meta.diffusion)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the configs in the metadata do not match this xtaldiff ({exc})") from exc
    if network_config.num_classes != len(meta.elements):
        raise CheckpointError(
            f"{path}: {network_config.num_classes} species classes but {len(meta.elements)} elements"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the weights ({exc})") from exc
    lambda_t = tensors.pop(SCHEDULE_PREFIX + "lambda_t", None)
    if lambda_t is None or lambda_t.shape != (diffusion_config.timesteps + 1,):
        raise CheckpointError(f"{path}: missing or mis-shaped '{SCHEDULE_PREFIX}lambda_t'")
    denoiser = Denoiser(network_config)
    try:
        denoiser.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the architecture in its header ({first_line})") from exc
    schedule = Schedule(diffusion_config, lambda_t=lambda_t.double())
    denoiser.to(device).eval()
    return TrainedModel(denoiser, schedule.to(device), meta, file_sha256(path), device)
