"""Relaxing designed structures with a universal interatomic potential (CHGNet 0.3.0, via ASE).

A generated cell is rarely at an energy minimum, and the oracle that scored it was trained on
the same data as the generator. Relaxing each design with a potential trained on the whole
Materials Project (CHGNet, Deng et al. 2023) says whether it holds together, how far it moves,
and how its energy falls. CHGNet's weights ship inside its PyPI wheel: no download at run time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pymatgen.core import Structure

from model.geometry import right_handed

CHGNET_VERSION = "0.3.0"
CHGNET_FILE = "chgnet_0.3.0_e29f68s314m37.pth.tar"
FMAX = 0.1  # eV/A: forces (and stress, through the cell filter) below this count as relaxed
MAX_STEPS = 200  # FIRE steps before a relaxation is given up as not converged
# CHGNet's neighbour lists grow as 1 / (volume per atom). One evaluate --relax run of generated
# cells exhausted 24 GB; a cell that is, or collapses to, far denser than any solid (the densest
# hold ~5 A^3 per atom) is the suspected cause, not yet confirmed. Relaxation stops there, and
# likewise when the cell swells past MAX_SWELLING times its volume.
MIN_VOLUME_PER_ATOM = 3.0  # A^3
MAX_SWELLING = 8.0


class RelaxationUnavailable(RuntimeError):
    """CHGNet is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Relaxation:
    """One structure before and after relaxation. Energies are CHGNet's, in eV/atom."""

    relaxed: Structure | None  # None when the potential could not be evaluated on the structure
    energy_before: float | None
    energy_after: float | None
    steps: int
    converged: bool
    # StructureMatcher's RMS displacement (normalised by (V / n)^(1/3)) between the generated and
    # the relaxed structure; None when relaxation changed it beyond matching ("no match").
    rms_displacement: float | None
    error: str | None = None

    def as_dict(self) -> dict:
        return {
            "energy_before_ev_per_atom": self.energy_before, "energy_after_ev_per_atom": self.energy_after,
            "steps": self.steps, "converged": self.converged, "rms_displacement": self.rms_displacement,
            "error": self.error,
        }


@functools.cache
def load_chgnet():
    """CHGNet 0.3.0 from the file in its wheel, read with torch.load(weights_only=True): the
    checkpoint is a dict of tensors and numbers, so nothing but those is unpickled."""
    try:
        from chgnet.model import CHGNet
    except ImportError as exc:
        raise RelaxationUnavailable(
            "relaxation needs CHGNet: `pip install chgnet==0.4.2` (scripts/setup.sh installs it)"
        ) from exc
    path = importlib.resources.files("chgnet") / "pretrained" / CHGNET_VERSION / CHGNET_FILE
    with importlib.resources.as_file(path) as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its size
        warnings.simplefilter("ignore")
        model = CHGNet.from_dict(state["model"])
    return model.eval()


@functools.cache
def _calculator():
    model = load_chgnet()  # first: it turns a missing chgnet into RelaxationUnavailable
    from chgnet.model.dynamics import CHGNetCalculator

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # An atom with no neighbour within CHGNet's cutoff has no force: refuse it rather than relax it.
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints the device
        return CHGNetCalculator(model=model, use_device=device, on_isolated_atoms="error")


def relax(structure: Structure, fmax: float = FMAX, max_steps: int = MAX_STEPS) -> Relaxation:
    """Relax positions and cell together (FIRE on ASE's FrechetCellFilter)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(right_handed(structure))
    n = len(atoms)
    volume = atoms.get_volume()
    unbounded = _volume_problem(volume, volume, n)
    if unbounded:
        return Relaxation(None, None, None, 0, False, None, unbounded)
    atoms.calc = _calculator()
    try:
        with warnings.catch_warnings():  # CHGNet warns on every call about a tensor it converts
            warnings.simplefilter("ignore")
            energy_before = float(atoms.get_potential_energy()) / n
            optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
            converged = False
            for converged in optimizer.irun(fmax=fmax, steps=max_steps):  # noqa: B007 (the last value counts)
                unbounded = _volume_problem(atoms.get_volume(), volume, n)
                if unbounded:
                    return Relaxation(None, None, None, optimizer.nsteps, False, None,
                                      f"{unbounded} after {optimizer.nsteps} FIRE steps")
            converged = bool(converged)
            energy_after = float(atoms.get_potential_energy()) / n
    except (ValueError, RuntimeError, IndexError) as exc:  # e.g. an atom with no neighbour in the cutoff
        return Relaxation(None, None, None, 0, False, None, f"CHGNet could not evaluate it: {exc}")
    except MemoryError:  # the last guard: a graph too large for this machine ends this structure only
        return Relaxation(None, None, None, 0, False, None, "CHGNet ran out of memory on it")
    if not (math.isfinite(energy_before) and math.isfinite(energy_after)):
        return Relaxation(None, None, None, optimizer.nsteps, False, None, "CHGNet's energy is not finite")
    relaxed = AseAtomsAdaptor.get_structure(atoms)
    relaxed = Structure(relaxed.lattice, relaxed.species, np.mod(relaxed.frac_coords, 1.0))
    return Relaxation(relaxed, energy_before, energy_after, int(optimizer.nsteps), converged,
                      displacement(structure, relaxed))


def _volume_problem(volume: float, start: float, n: int) -> str | None:
    if volume / n < MIN_VOLUME_PER_ATOM:
        return f"cell at {volume / n:.2f} A^3 per atom, denser than any solid (< {MIN_VOLUME_PER_ATOM}): not relaxed"
    if volume > MAX_SWELLING * start:
        return f"cell swelled to {volume / start:.1f} times its volume: not relaxed"
    return None


def displacement(generated: Structure, relaxed: Structure) -> float | None:
    """StructureMatcher's normalised RMS distance, None when the two do not match."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    rms = StructureMatcher().get_rms_dist(generated, relaxed)
    return None if rms is None else float(rms[0])


def relax_all(
    structures: Sequence[Structure], max_steps: int = MAX_STEPS,
    progress: Callable[[int, int], None] | None = None,
) -> list[Relaxation]:
    """Relax each structure in turn; progress(done, total) after each (raise from it to stop)."""
    results = []
    for structure in structures:
        results.append(relax(structure, max_steps=max_steps))
        if progress is not None:
            progress(len(results), len(structures))
    return results
