"""CrystalNN crystal graphs exactly as CDVAE built them, computed in guarded worker processes.

CDVAE's property predictors were trained on CrystalNN graphs, not radius graphs: each CIF was
parsed, Niggli-reduced (``niggli: true, primitive: false``), rebuilt from its lattice parameters,
and passed to ``StructureGraph`` with ``CrystalNN(distance_cutoffs=None, x_diff_weight=-1,
porous_adjustment=False)``; every bond became two directed edges carrying the lattice image of
their source. A radius graph gives about ten times the error, so this module reproduces that.

CrystalNN is the slow part (tens to hundreds of ms per structure) and can hang, raise, or crash
the interpreter (qhull) on unphysical input. So every structure is first screened by cheap
checks, and CrystalNN runs in worker processes that are killed and replaced when one exceeds
its time limit or dies; such a structure gets a ``GraphFailure`` with the reason, never a hang.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import numpy as np
from pymatgen.core import Structure

from model.geometry import canonical_niggli_cell, shortest_distance
from model.metrics import MIN_DISTANCE  # CDVAE's validity cut, also the oracle's

# Guard thresholds. The training sets span 5.4-202 A^3 per atom and at most 16 CrystalNN bonds
# per atom; the bounds are far outside that, so they only catch structures on which CrystalNN is
# pathologically slow or the predictor extrapolates wildly (a 2 A^3/atom cell of an untrained
# model's was "predicted" at -12,586 eV, which would count as a success).
MIN_VOLUME_PER_ATOM = 2.5  # A^3, under half the densest training structure (diamond, 5.4)
MAX_VOLUME_PER_ATOM = 1000.0  # A^3
MAX_SITES = 200
MAX_NEIGHBOURS = 48  # CrystalNN bonds of one atom
MAX_ATOMIC_NUMBER = 94  # the predictors embed atomic numbers 0..94
DEFAULT_TIMEOUT_S = 60.0  # per structure; CrystalNN takes < 1 s on any training structure
_WORKER_PRELOAD = ["pymatgen.analysis.graphs", "pymatgen.analysis.local_env"]


@dataclass(frozen=True)
class CrystalGraph:
    """The predictor's input for one crystal, in CDVAE's canonical Niggli cell.

    atomic_numbers: (n,) int64; frac_coords: (n, 3) float64; lattice: (3, 3) float64, rows are
    the lattice vectors in A; edge_index: (2, E) int64, row 0 the source atom j, row 1 the
    target atom i; edge_images: (E, 3) int64, the lattice image of j as seen from i, so the
    bond vector is pos[j] - pos[i] + edge_images @ lattice.
    """

    atomic_numbers: np.ndarray
    frac_coords: np.ndarray
    lattice: np.ndarray
    edge_index: np.ndarray
    edge_images: np.ndarray


@dataclass(frozen=True)
class GraphFailure:
    """Why no graph (and so no prediction) exists for a structure."""

    reason: str


def screen(structure: Structure) -> str | None:
    """Cheap checks before CrystalNN: the reason the structure is unusable, or None."""
    if not structure.is_ordered:
        return "disordered structure (partial occupancies) is not supported"
    n_sites = len(structure)
    if n_sites == 0:
        return "structure has no atoms"
    if n_sites > MAX_SITES:
        return f"{n_sites} sites, more than the oracle's limit of {MAX_SITES}"
    numbers = [getattr(site.specie, "Z", 0) for site in structure]
    if min(numbers) < 1 or max(numbers) > MAX_ATOMIC_NUMBER:
        return f"unsupported species (atomic numbers must be 1-{MAX_ATOMIC_NUMBER})"
    finite = np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.frac_coords).all()
    if not finite:
        return "non-finite lattice or coordinates"
    volume_per_atom = structure.volume / n_sites
    if not MIN_VOLUME_PER_ATOM <= volume_per_atom <= MAX_VOLUME_PER_ATOM:
        return f"volume per atom {volume_per_atom:.3g} A^3 outside [{MIN_VOLUME_PER_ATOM}, {MAX_VOLUME_PER_ATOM}]"
    return None


def crystal_graph(structure: Structure) -> CrystalGraph | GraphFailure:
    """CDVAE's CrystalNN graph of one structure, or the reason there is none.

    Runs in-process without a time limit; ``build_graphs`` adds the process guard.
    """
    # Imported lazily: only the worker processes build graphs (their forkserver preloads these).
    from pymatgen.analysis.graphs import StructureGraph
    from pymatgen.analysis.local_env import CrystalNN

    reason = screen(structure)
    if reason is not None:
        return GraphFailure(reason)
    try:
        cell = canonical_niggli_cell(structure)
    except Exception as error:  # pymatgen raises bare ValueError/RuntimeError on odd lattices
        return GraphFailure(f"Niggli reduction failed: {error}")
    distance = shortest_distance(cell)
    if distance < MIN_DISTANCE:
        return GraphFailure(f"atoms {distance:.3f} A apart (< {MIN_DISTANCE} A)")
    strategy = CrystalNN(distance_cutoffs=None, x_diff_weight=-1, porous_adjustment=False)
    try:
        graph = StructureGraph.from_local_env_strategy(cell, strategy)
    except Exception as error:  # CrystalNN raises many types on unphysical input
        return GraphFailure(f"CrystalNN failed: {type(error).__name__}: {error}")

    edges, images = [], []
    for from_index, to_index, to_image in graph.graph.edges(data="to_jimage"):
        # CDVAE's build_crystal_graph: the bond (i -> j at image) in both directions.
        edges += [(to_index, from_index), (from_index, to_index)]
        images += [to_image, tuple(-k for k in to_image)]
    if not edges:
        return GraphFailure("CrystalNN found no bonds")
    edge_index = np.asarray(edges, dtype=np.int64).T
    neighbours = np.bincount(edge_index[1], minlength=len(cell)).max()
    if neighbours > MAX_NEIGHBOURS:
        return GraphFailure(f"an atom has {neighbours} CrystalNN neighbours (> {MAX_NEIGHBOURS})")
    return CrystalGraph(
        atomic_numbers=np.asarray(cell.atomic_numbers, dtype=np.int64),
        frac_coords=np.asarray(cell.frac_coords, dtype=np.float64),
        lattice=np.asarray(cell.lattice.matrix, dtype=np.float64),
        edge_index=edge_index,
        edge_images=np.asarray(images, dtype=np.int64),
    )


def _worker_main(connection: Connection) -> None:
    """Worker process: receive (index, structure dict), answer (index, graph or failure)."""
    while True:
        try:
            task = connection.recv()
        except EOFError:
            return
        if task is None:
            return
        index, structure_dict = task
        connection.send((index, crystal_graph(Structure.from_dict(structure_dict))))


class _Worker:
    """One worker process, the task it holds and that task's deadline."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_end,), daemon=True)
        self.process.start()
        child_end.close()
        self.task: int | None = None
        self.deadline = float("inf")

    def submit(self, index: int, structure: Structure, timeout_s: float) -> None:
        self.task = index
        self.deadline = time.monotonic() + timeout_s
        self.connection.send((index, structure.as_dict()))

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()

    def stop(self) -> None:
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def build_graphs(
    structures: Sequence[Structure],
    workers: int = 2,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = False,
) -> list[CrystalGraph | GraphFailure]:
    """CrystalNN graphs of many structures in ``workers`` guarded processes, in input order.

    A structure whose CrystalNN run exceeds ``timeout_s`` seconds or kills its worker gets a
    ``GraphFailure``; its worker is replaced and the others go on.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[CrystalGraph | GraphFailure | None] = [None] * len(structures)
    pending: deque[int] = deque()
    for index, structure in enumerate(structures):
        reason = screen(structure)
        if reason is None:
            pending.append(index)
        else:
            results[index] = GraphFailure(reason)
    if not pending:
        return results  # type: ignore[return-value]

    # forkserver: the parent may hold torch's thread pools, which must not be forked.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *_WORKER_PRELOAD])
    bar = _progress_bar(len(pending)) if progress else None
    pool = [_Worker(context) for _ in range(min(workers, len(pending)))]
    try:
        while pending or any(worker.task is not None for worker in pool):
            for worker in pool:
                if worker.task is None and pending:
                    index = pending.popleft()
                    worker.submit(index, structures[index], timeout_s)
            busy = [worker for worker in pool if worker.task is not None]
            wait_s = max(0.0, min(worker.deadline for worker in busy) - time.monotonic())
            ready = set(wait([worker.connection for worker in busy], timeout=wait_s))
            for slot, worker in enumerate(pool):
                if worker.task is None:
                    continue
                failure = None
                if worker.connection in ready:
                    try:
                        index, result = worker.connection.recv()
                        results[index] = result
                    except (EOFError, OSError):
                        failure = "CrystalNN crashed its worker process"
                elif time.monotonic() >= worker.deadline:
                    failure = f"CrystalNN timed out after {timeout_s:g} s"
                else:
                    continue
                if failure is not None:
                    results[worker.task] = GraphFailure(failure)
                    worker.kill()
                    pool[slot] = _Worker(context)
                else:
                    worker.task = None
                if bar is not None:
                    bar.update(1)
    finally:
        for worker in pool:
            if worker.task is None:
                worker.stop()
            else:
                worker.kill()
        if bar is not None:
            bar.close()
    return results  # type: ignore[return-value]


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="CrystalNN graphs", unit="structure")
