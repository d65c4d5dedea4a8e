"""Periodic geometry of crystal structures: CDVAE's canonical cell and shortest distances.

The periodic maths of the model itself stays beside the equations that use it: the wrapped
normal of the coordinate noise in model/diffusion.py (eq. 4-5), the Fourier features of
fractional differences in model/network.py (eq. 14).
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure


def canonical_niggli_cell(structure: Structure) -> Structure:
    """Niggli-reduce (not primitive-reduce), then rebuild the lattice from its parameters, as
    CDVAE's `build_crystal` did: every structure in one canonical orientation, coordinates in [0, 1)."""
    reduced = structure.get_reduced_structure()
    return Structure(Lattice.from_parameters(*reduced.lattice.parameters), reduced.species,
                     np.mod(reduced.frac_coords, 1.0))


def right_handed(structure: Structure) -> Structure:
    """The same crystal on a right-handed basis (det L > 0). A generated lattice has either
    handedness, and ASE's cell filters take a left-handed cell's stress the wrong way round:
    relaxed with CHGNet such cells collapse or swell where the right-handed one converges.
    Negating the first lattice vector and the first fractional coordinate keeps every
    Cartesian position, so this is not the mirror image."""
    matrix = structure.lattice.matrix
    if np.linalg.det(matrix) > 0:
        return structure
    flip = np.array([-1.0, 1.0, 1.0])
    return Structure(Lattice(matrix * flip[:, None]), structure.species, np.mod(structure.frac_coords * flip, 1.0),
                     site_properties=structure.site_properties)


def closest_pair(structure: Structure) -> tuple[float, int, int]:
    """(distance in A, i, j) of the closest two distinct sites, minimum image; inf for one site."""
    if len(structure) < 2:
        return float("inf"), 0, 0
    distances = structure.distance_matrix
    np.fill_diagonal(distances, np.inf)
    i, j = np.unravel_index(distances.argmin(), distances.shape)
    return float(distances[i, j]), int(i), int(j)


def shortest_distance(structure: Structure) -> float:
    """Shortest periodic distance between atoms, an atom and its own images included (A).

    Expects a Niggli-reduced cell, whose first lattice vector is the shortest lattice vector.
    """
    return min(closest_pair(structure)[0], structure.lattice.abc[0])
