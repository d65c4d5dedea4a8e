"""Checks a checkpoint file's safetensors header without torch, before anything else reads it.

A safetensors file is ``u64 little-endian N | N bytes of JSON header | tensor bytes``. The
header maps each tensor to its dtype, shape and byte range, and ``__metadata__`` holds
string-to-string pairs (xtaldiff keeps its JSON metadata there). Nothing here executes or
unpickles anything: the API uses it on untrusted uploads, the worker then loads the weights.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

from xtaldiff.datasets import DATASET_NAMES
from xtaldiff.samplers import DEFAULT_SAMPLER, SAMPLERS

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
FORMAT = "xtaldiff-checkpoint"  # model.checkpoint writes it, every reader checks it here
META_KEY = "xtaldiff"  # the __metadata__ entry holding the JSON header
FORMAT_VERSION = 1
CONDITIONINGS = ("cdi", "cds")
REQUIRED_PROPERTY_KEYS = ("name", "unit", "min", "max", "mean", "std")
MAX_ATOMS = 64  # the network is O(N^2) per structure; beyond this a user wants another model


class CheckpointFileError(ValueError):
    """The file is not a checkpoint xtaldiff can serve; the message says why."""


@dataclass(frozen=True)
class PropertyStats:
    """The conditioning property over the training split, in its unit."""

    name: str
    unit: str
    mean: float
    std: float
    min: float
    max: float
    percentiles: Mapping[str, float]  # "5", "10", ... -> value


@dataclass(frozen=True)
class AtomCountsByProperty:
    """The training split's atom counts in bins of its property, each bin about the same number
    of structures (model.data.atom_counts_by_property): the cells the training crystals near a
    target had."""

    edges: tuple[float, ...]  # ascending; bin k is [edges[k], edges[k + 1]), the last one closed
    counts: Mapping[int, tuple[int, ...]]  # atom count -> training structures in each bin

    def bin_of(self, target: float) -> int:
        """The bin holding target (the first or last for a target outside the split's range)."""
        return min(max(bisect.bisect_right(self.edges, target) - 1, 0), len(self.edges) - 2)

    def near(self, target: float) -> dict[int, float]:
        """Atom count -> probability among the training structures of target's bin."""
        k = self.bin_of(target)
        total = sum(per_bin[k] for per_bin in self.counts.values())
        return {n: per_bin[k] / total for n, per_bin in self.counts.items() if per_bin[k]}


@dataclass(frozen=True)
class CheckpointMeta:
    """A checked checkpoint header, typed: built only by `parse_header`."""

    dataset: str
    conditioning: str
    property: PropertyStats
    elements: tuple[str, ...]  # the model's species vocabulary, in class order
    num_atoms: Mapping[int, float]  # atom count -> probability, as in the training split
    # None in headers written before it existed: atom counts are then drawn from num_atoms.
    num_atoms_by_property: AtomCountsByProperty | None
    timesteps: int  # T
    step_lr: float  # the Langevin corrector's step size gamma
    lattice_bound: float  # largest lattice-vector component a sample may have
    # The guidance scale, sampler and reverse steps a request that names none runs at: those its
    # evaluation chose (`xtaldiff record-evaluation`), else w = 0, the paper's sampler and T steps.
    default_guidance: float
    default_sampler: str
    default_steps: int
    # Whether that evaluation ran the charge-balanced species step (model.charge_balance).
    default_charge_balance: bool
    network: Mapping  # model.network.DenoiserConfig's fields
    diffusion: Mapping  # model.diffusion.DiffusionConfig's fields
    training: Mapping  # the training record ({} for a header without one)
    metrics: Mapping  # the evaluation record ({} for a model never evaluated)
    header: Mapping  # the JSON object as read; `as_dict` gives a copy to edit and write back

    @property
    def max_num_atoms(self) -> int:
        return max(self.num_atoms)

    @property
    def default_atom_counts(self) -> str:
        """What a request naming neither num_atoms nor atom_counts draws from (design_params.ATOM_COUNTS)."""
        return "training" if self.num_atoms_by_property is None else "near_target"

    def as_dict(self) -> dict:
        return copy.deepcopy(dict(self.header))


@dataclass(frozen=True)
class CheckpointFile:
    sha256: str
    size_bytes: int
    meta: CheckpointMeta
    num_tensors: int


def inspect_checkpoint(stream: BinaryIO) -> CheckpointFile:
    """Check header, shapes and metadata of a seekable file, then hash it.

    Raises CheckpointFileError naming the first problem found.
    """
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise CheckpointFileError("file is shorter than a safetensors header (8 bytes)")
    header_len = int.from_bytes(prefix, "little")
    if header_len > MAX_HEADER_BYTES or header_len > size - 8:
        raise CheckpointFileError(
            f"header length {header_len} does not fit the file ({size} bytes): "
            "not a safetensors file"
        )
    header = _parse_json(stream.read(header_len), "safetensors header")
    if not isinstance(header, dict):
        raise CheckpointFileError("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    num_tensors = _check_tensors(header, data_bytes=size - 8 - header_len)
    meta = check_metadata(metadata)
    stream.seek(0)
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    return CheckpointFile(digest.hexdigest(), size, meta, num_tensors)


def _check_tensors(tensors: dict, *, data_bytes: int) -> int:
    if not tensors:
        raise CheckpointFileError("the file holds no tensors")
    spans = []
    for name, info in tensors.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointFileError(f"tensor {name!r}: entry needs dtype, shape, data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise CheckpointFileError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise CheckpointFileError(f"tensor {name!r}: shape must be a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
                and offsets[0] <= offsets[1]):
            raise CheckpointFileError(f"tensor {name!r}: data_offsets must be [begin, end]")
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise CheckpointFileError(
                f"tensor {name!r}: shape {shape} of {dtype} needs {expected} bytes, "
                f"offsets give {offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise CheckpointFileError(f"tensor {name!r}: data overlaps or leaves a gap")
        position = end
    if position != data_bytes:
        raise CheckpointFileError(
            f"tensors cover {position} bytes but the file holds {data_bytes}: truncated or padded"
        )
    return len(spans)


def _parse_json(text: bytes | str, what: str) -> object:
    # ValueError covers integers past Python's digit limit; RecursionError, absurd nesting.
    try:
        return json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointFileError(f"{what} is not valid JSON: {str(err)[:200]}") from None


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_metadata(metadata: object) -> CheckpointMeta:
    """The xtaldiff header of a safetensors `__metadata__` dict, checked field by field: the one
    check every reader (the API's upload, the model loader) runs. Raises CheckpointFileError."""
    if not isinstance(metadata, dict) or META_KEY not in metadata:
        raise CheckpointFileError(
            "no xtaldiff metadata in the header (__metadata__.xtaldiff): "
            "save checkpoints with model.checkpoint"
        )
    if not isinstance(metadata[META_KEY], str):
        raise CheckpointFileError("xtaldiff metadata must be a JSON string")
    return parse_header(_parse_json(metadata[META_KEY], "xtaldiff metadata"))


def parse_header(meta: object) -> CheckpointMeta:
    """Check a header's JSON object and type it (also for headers kept in the database)."""
    if not isinstance(meta, dict):
        raise CheckpointFileError("xtaldiff metadata is not a JSON object")
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise CheckpointFileError(
            f"checkpoint format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"this server reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    if meta.get("dataset") not in DATASET_NAMES:
        raise CheckpointFileError(f"metadata dataset must be one of {', '.join(DATASET_NAMES)}")
    if meta.get("conditioning") not in CONDITIONINGS:
        raise CheckpointFileError(
            f"metadata conditioning must be one of {', '.join(CONDITIONINGS)}"
        )
    prop = meta.get("property")
    if not isinstance(prop, dict) or any(k not in prop for k in REQUIRED_PROPERTY_KEYS):
        raise CheckpointFileError(
            f"metadata property needs {', '.join(REQUIRED_PROPERTY_KEYS)}"
        )
    if not all(_is_finite_number(prop[k]) for k in ("min", "max", "mean", "std")) \
            or prop["min"] > prop["max"] or prop["std"] <= 0:
        raise CheckpointFileError(
            "metadata property min, max, mean and std must be finite numbers, min <= max, std > 0"
        )
    elements = meta.get("elements")
    if not (isinstance(elements, list) and elements and all(isinstance(e, str) for e in elements)):
        raise CheckpointFileError("metadata elements must be a non-empty list of symbols")
    num_atoms = meta.get("num_atoms")
    if not (isinstance(num_atoms, dict) and num_atoms
            and all(k.isascii() and k.isdigit() and 0 < int(k) <= MAX_ATOMS for k in num_atoms)
            and all(_is_finite_number(p) and p >= 0 for p in num_atoms.values())
            and sum(num_atoms.values()) > 0):
        raise CheckpointFileError(
            f"metadata num_atoms must map atom counts from 1 to {MAX_ATOMS} to probabilities"
        )
    by_property = _parse_atom_counts_by_property(meta.get("num_atoms_by_property"))
    timesteps = meta.get("diffusion", {}).get("timesteps") if isinstance(meta.get("diffusion"), dict) else None
    if not (_is_count(timesteps) and timesteps > 0):
        raise CheckpointFileError("metadata diffusion.timesteps must be a positive integer")
    sampling = meta.get("sampling")
    guidance = sampling.get("default_guidance", 0.0) if isinstance(sampling, dict) else None
    if not (isinstance(guidance, int | float) and not isinstance(guidance, bool)
            and math.isfinite(guidance) and guidance >= 0):
        raise CheckpointFileError("metadata sampling must be an object; its default_guidance a number >= 0")
    steps = sampling.get("default_steps", timesteps)
    if not (_is_count(steps) and 1 <= steps <= timesteps):
        raise CheckpointFileError(f"metadata sampling.default_steps must be an integer from 1 to {timesteps}")
    default_sampler = sampling.get("default_sampler", DEFAULT_SAMPLER)
    if not (isinstance(default_sampler, str) and default_sampler in SAMPLERS):
        raise CheckpointFileError(f"metadata sampling.default_sampler must be one of {', '.join(SAMPLERS)}")
    default_charge_balance = sampling.get("default_charge_balance", False)
    if not isinstance(default_charge_balance, bool):
        raise CheckpointFileError("metadata sampling.default_charge_balance must be true or false")
    for key in ("step_lr", "lattice_bound"):
        if not (_is_finite_number(sampling.get(key)) and sampling[key] > 0):
            raise CheckpointFileError(f"metadata sampling.{key} must be a number > 0")
    for key in ("network", "diffusion"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointFileError(f"metadata {key} must be an object")
    for key in ("training", "metrics"):
        if not isinstance(meta.get(key) or {}, dict):
            raise CheckpointFileError(f"metadata {key} must be an object when present")
    percentiles = prop.get("percentiles") or {}
    if not (isinstance(percentiles, dict) and all(_is_finite_number(v) for v in percentiles.values())):
        raise CheckpointFileError("metadata property percentiles must map quantiles to numbers")
    return CheckpointMeta(
        dataset=meta["dataset"], conditioning=meta["conditioning"],
        property=PropertyStats(
            name=str(prop["name"]), unit=str(prop["unit"]), mean=float(prop["mean"]), std=float(prop["std"]),
            min=float(prop["min"]), max=float(prop["max"]), percentiles=percentiles,
        ),
        elements=tuple(elements), num_atoms={int(k): float(p) for k, p in num_atoms.items()},
        num_atoms_by_property=by_property,
        timesteps=timesteps, step_lr=float(sampling["step_lr"]), lattice_bound=float(sampling["lattice_bound"]),
        default_guidance=float(guidance), default_sampler=default_sampler, default_steps=steps,
        default_charge_balance=default_charge_balance,
        network=meta["network"], diffusion=meta["diffusion"],
        training=meta.get("training") or {}, metrics=meta.get("metrics") or {}, header=meta,
    )


def _parse_atom_counts_by_property(table: object) -> AtomCountsByProperty | None:
    if table is None:
        return None
    problem = ("metadata num_atoms_by_property must hold ascending property edges and, for each atom "
               f"count from 1 to {MAX_ATOMS}, one count of structures per bin, every bin holding some")
    if not isinstance(table, dict):
        raise CheckpointFileError(problem)
    edges, counts = table.get("edges"), table.get("counts")
    if not (isinstance(edges, list) and len(edges) >= 2 and all(_is_finite_number(e) for e in edges)
            and all(a < b for a, b in zip(edges, edges[1:], strict=False))
            and isinstance(counts, dict) and counts
            and all(isinstance(k, str) and k.isascii() and k.isdigit() and 0 < int(k) <= MAX_ATOMS for k in counts)
            and all(isinstance(v, list) and len(v) == len(edges) - 1 and all(_is_count(c) for c in v)
                    for v in counts.values())
            and all(sum(bins) > 0 for bins in zip(*counts.values(), strict=True))):
        raise CheckpointFileError(problem)
    return AtomCountsByProperty(tuple(float(e) for e in edges),
                                {int(k): tuple(v) for k, v in counts.items()})
