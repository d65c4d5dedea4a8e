"""CDVAE-format crystal datasets: parse the CIFs once, cache arrays on disk, batch by atom count.

A split is stored as flat arrays (no pickle): lattices (S, 3, 3) with one lattice vector per
row, fractional coordinates and atomic numbers concatenated over all atoms, and the atom count
of each structure. `CrystalSet` turns them into padded tensors for the network.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from xtaldiff.datasets import DATA_ROOT, Dataset, dataset

CACHE_VERSION = 1


class DatasetError(ValueError):
    """A dataset name, split or file that cannot be used; the message says what to change."""


def dataset_info(name: str) -> Dataset:
    try:
        return dataset(name)
    except KeyError as exc:
        raise DatasetError(exc.args[0]) from None


@dataclass(frozen=True)
class CrystalArrays:
    """One split, flat. `offsets[i]:offsets[i+1]` indexes the atoms of structure i."""

    ids: np.ndarray  # (S,) str
    lattices: np.ndarray  # (S, 3, 3) float64, Angstrom, rows are lattice vectors
    frac_coords: np.ndarray  # (sum N, 3) float64 in [0, 1)
    atomic_numbers: np.ndarray  # (sum N,) int64
    num_atoms: np.ndarray  # (S,) int64
    properties: np.ndarray  # (S,) float64

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.num_atoms)])

    def __len__(self) -> int:
        return len(self.num_atoms)


def parse_cif(cif: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CIF text -> (lattice (3, 3), frac (N, 3), Z (N,)) after Niggli reduction.

    As in CDVAE's pipeline: Niggli-reduce (not primitive-reduce), then rebuild the lattice from
    its parameters so that every structure has the same canonical orientation.
    """
    from pymatgen.core import Structure

    from model.geometry import canonical_niggli_cell

    with warnings.catch_warnings():
        # pymatgen reports every coordinate it snaps to a special position; it is not an error.
        warnings.filterwarnings("ignore", "Issues encountered while parsing CIF")
        structure = canonical_niggli_cell(Structure.from_str(cif, fmt="cif"))
    return structure.lattice.matrix, structure.frac_coords, np.array(structure.atomic_numbers, dtype=np.int64)


def _read_rows(csv_path: Path, property_name: str, limit: int | None) -> list[dict[str, str]]:
    opener = gzip.open if csv_path.suffix == ".gz" else open
    with opener(csv_path, "rt", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"cif", property_name} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{csv_path} has no column(s) {sorted(missing)}")
        rows = []
        for row in reader:
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _parse_rows(rows: list[dict[str, str]], property_name: str, workers: int) -> CrystalArrays:
    cifs = [row["cif"] for row in rows]
    if workers > 1 and len(cifs) > 200:
        with ProcessPoolExecutor(workers) as pool:
            parsed = list(pool.map(parse_cif, cifs, chunksize=64))
    else:
        parsed = [parse_cif(cif) for cif in cifs]
    ids = [row.get("material_id") or str(i) for i, row in enumerate(rows)]
    return CrystalArrays(
        ids=np.array(ids, dtype=str),
        lattices=np.stack([p[0] for p in parsed]),
        frac_coords=np.concatenate([p[1] for p in parsed]),
        atomic_numbers=np.concatenate([p[2] for p in parsed]),
        num_atoms=np.array([len(p[2]) for p in parsed], dtype=np.int64),
        properties=np.array([float(row[property_name]) for row in rows]),
    )


def load_split(
    dataset: str,
    split: str,
    *,
    limit: int | None = None,
    root: Path = DATA_ROOT,
    workers: int = 2,
) -> CrystalArrays:
    """Parsed arrays of one split, from the on-disk cache when it matches the CSV.

    `limit` parses only the first rows (tests); limited loads are not cached.
    """
    info = dataset_info(dataset)
    if split not in ("train", "val", "test"):
        raise DatasetError(f"unknown split {split!r}; choose train, val or test")
    csv_path = root / dataset / f"{split}.csv.gz"
    if not csv_path.exists():
        raise DatasetError(f"{csv_path} not found; the benchmark sets live in data/")
    if limit is not None:
        return _parse_rows(_read_rows(csv_path, info.property_name, limit), info.property_name, 1)

    digest = hashlib.sha256(csv_path.read_bytes()).hexdigest()[:16]
    cache = root / dataset / "cache" / f"{split}-v{CACHE_VERSION}-{digest}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            return CrystalArrays(**{k: f[k] for k in CrystalArrays.__dataclass_fields__})
    arrays = _parse_rows(_read_rows(csv_path, info.property_name, None), info.property_name, workers)
    cache.parent.mkdir(exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")  # processes that parse at once do not collide
    np.savez(tmp, **{k: getattr(arrays, k) for k in CrystalArrays.__dataclass_fields__})
    tmp.replace(cache)
    return arrays


@lru_cache(maxsize=3)
def load_all_splits(dataset: str) -> dict[str, CrystalArrays]:
    """Every split of `dataset` on this machine, read once per process (what the worker matches and
    measures designed structures against); DatasetError when there is none."""
    splits = {split: load_split(dataset, split) for split in ("train", "val", "test")
              if (DATA_ROOT / dataset / f"{split}.csv.gz").exists()}
    if not splits:
        raise DatasetError(f"no split of {dataset} is on this machine (data/{dataset}/)")
    return splits


def dataset_statistics(train: CrystalArrays, dataset: str) -> dict:
    """What a checkpoint records about its training split (JSON-ready)."""
    from pymatgen.core import Element

    info = dataset_info(dataset)
    y = train.properties
    counts = np.bincount(train.num_atoms)
    vocab = sorted(set(train.atomic_numbers.tolist()))
    return {
        "name": info.property_name,
        "unit": info.unit,
        "mean": float(y.mean()),
        "std": float(y.std()),
        "min": float(y.min()),
        "max": float(y.max()),
        "percentiles": {str(p): float(np.percentile(y, p)) for p in (5, 10, 15, 50, 85, 95)},
        "num_atoms": {str(n): float(c / counts.sum()) for n, c in enumerate(counts) if c},
        "elements": [Element.from_Z(z).symbol for z in vocab],
        "num_structures": len(train),
    }


PROPERTY_BINS = 20  # 5% of the training split each, the share under the SR5 threshold


def atom_counts_by_property(train: CrystalArrays) -> dict | None:
    """The split's atom counts in PROPERTY_BINS bins of its property, each holding about the same
    number of structures (edges at its quantiles, each a training value, so no bin is empty).

    p(N | y) for a design request: the paper draws N from the whole split's counts, which at an
    extreme target asks for cells unlike those of the training crystals near it (carbon_24: the
    5% of lowest energy are 52% six-atom cells and none has more than 14 atoms; the whole split is
    34% six-atom cells and 8% above 14). None when the property takes a single value.
    """
    y = train.properties
    edges = np.unique(np.quantile(y, np.linspace(0, 1, PROPERTY_BINS + 1), method="inverted_cdf"))
    if len(edges) < 2:
        return None
    bins = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, len(edges) - 2)
    return {
        "edges": edges.tolist(),
        "counts": {str(n): np.bincount(bins[train.num_atoms == n], minlength=len(edges) - 1).tolist()
                   for n in np.unique(train.num_atoms)},
    }


LATTICE_BOUND_FACTOR = 2.0  # sampler clips predicted L_0 entries to this multiple of the training maximum


def checkpoint_metadata(train: CrystalArrays, dataset: str) -> dict:
    """The dataset-derived part of a checkpoint's header."""
    stats = dataset_statistics(train, dataset)
    return {
        "dataset": dataset,
        "property": {k: v for k, v in stats.items() if k not in ("num_atoms", "elements")},
        "elements": stats["elements"],
        "num_atoms": stats["num_atoms"],
        "num_atoms_by_property": atom_counts_by_property(train),
        "sampling": {
            "step_lr": dataset_info(dataset).step_lr,
            "lattice_bound": LATTICE_BOUND_FACTOR * float(np.abs(train.lattices).max()),
        },
    }


@dataclass
class CrystalBatch:
    """Padded tensors; `atom_mask` is False on padding."""

    lattice: torch.Tensor  # (B, 3, 3)
    frac: torch.Tensor  # (B, N, 3)
    species: torch.Tensor  # (B, N) class index into the vocabulary, 0 on padding
    atom_mask: torch.Tensor  # (B, N) bool
    prop: torch.Tensor  # (B,) standardised property

    def to(self, device: torch.device) -> CrystalBatch:
        return CrystalBatch(*(getattr(self, k).to(device) for k in self.__dataclass_fields__))


class CrystalSet:
    """A split as padded tensors, with species mapped to class indices of a vocabulary.

    Structures with an element outside the vocabulary (possible in val/test) are dropped;
    `num_dropped` says how many.
    """

    def __init__(self, arrays: CrystalArrays, vocab_z: list[int], prop_mean: float, prop_std: float):
        z_to_class = np.full(max(119, max(vocab_z) + 1), -1, dtype=np.int64)
        z_to_class[vocab_z] = np.arange(len(vocab_z))
        offsets = arrays.offsets
        classes = z_to_class[arrays.atomic_numbers]
        keep = [i for i in range(len(arrays)) if (classes[offsets[i] : offsets[i + 1]] >= 0).all()]
        self.num_dropped = len(arrays) - len(keep)
        n_max = int(arrays.num_atoms.max())
        size = len(keep)
        self.frac = torch.zeros(size, n_max, 3)
        self.species = torch.zeros(size, n_max, dtype=torch.long)
        self.atom_mask = torch.zeros(size, n_max, dtype=torch.bool)
        for row, i in enumerate(keep):
            a, b = offsets[i], offsets[i + 1]
            self.frac[row, : b - a] = torch.from_numpy(arrays.frac_coords[a:b])
            self.species[row, : b - a] = torch.from_numpy(classes[a:b])
            self.atom_mask[row, : b - a] = True
        self.lattice = torch.from_numpy(arrays.lattices[keep]).float()
        self.num_atoms = torch.from_numpy(arrays.num_atoms[keep])
        self.prop = torch.from_numpy((arrays.properties[keep] - prop_mean) / prop_std).float()

    def __len__(self) -> int:
        return len(self.num_atoms)

    def batch(self, index: torch.Tensor) -> CrystalBatch:
        n = int(self.num_atoms[index].max())
        return CrystalBatch(
            self.lattice[index],
            self.frac[index, :n],
            self.species[index, :n],
            self.atom_mask[index, :n],
            self.prop[index],
        )

    def batches(
        self, batch_size: int, generator: torch.Generator | None, by_atom_count: bool
    ) -> Iterator[CrystalBatch]:
        """One epoch. Shuffled when a generator is given.

        by_atom_count: every batch holds structures of a single atom count, so there is no
        padding at all (mp_20, 1-20 atoms, pads a random batch to ~20).
        """
        size = len(self)
        order = torch.randperm(size, generator=generator) if generator else torch.arange(size)
        if not by_atom_count:
            chunks = list(order.split(batch_size))
        else:
            chunks = []
            counts = self.num_atoms[order]
            for n in counts.unique().tolist():
                chunks += list(order[counts == n].split(batch_size))
            if generator is not None:
                chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator)]
        for chunk in chunks:
            yield self.batch(chunk)

    def num_batches(self, batch_size: int, by_atom_count: bool) -> int:
        if not by_atom_count:
            return math.ceil(len(self) / batch_size)
        counts = torch.bincount(self.num_atoms)
        return int(sum(math.ceil(c / batch_size) for c in counts.tolist() if c))

