"""Point groups in RELION's orientation conventions (`src/symmetries.cpp`).

Cn: n-fold along z. Dn: n-fold along z, 2-fold along x. T: 3-fold z, 2-fold (0, .816496, .577350).
O: 3-fold (1,1,1)/√3, 4-fold z. I/I2: 2-fold z, 5-fold (.525731, 0, .850651), 3-fold
(0, .356822, .934172); I1, I3, I4 as RELION. The full group is built by closure.
"""

from __future__ import annotations

import math
import re

import torch

from ember.errors import EmberInputError
from ember.maths.rotations import axis_angle_matrix

_ICOSAHEDRAL = {
    "I": [((0, 0, 1), 2), ((0.525731, 0, 0.850651), 5), ((0, 0.356822, 0.934172), 3)],
    "I1": [((1, 0, 0), 2), ((0.850651, 0, -0.525731), 5)],
    "I3": [((0, 0, 1), 5), ((-0.525731, 0, 0.850651), 2)],
    "I4": [((0, 0, 1), 5), ((0.894427, 0, 0.447214), 5), ((0.525731, 0, 0.850651), 2)],
}
_GENERATORS = {
    "T": [((0, 0, 1), 3), ((0, 0.816496, 0.577350), 2)],
    "O": [((1, 1, 1), 3), ((0, 0, 1), 4)],
    **_ICOSAHEDRAL,
    "I2": _ICOSAHEDRAL["I"],
}
_ORDER = {"T": 12, "O": 24, "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def _generators(name: str) -> tuple[list[tuple[tuple[float, float, float], int]], int]:
    m = re.fullmatch(r"([CD])(\d+)", name)
    if m:
        n = int(m.group(2))
        if n < 1:
            raise ValueError
        if m.group(1) == "C":
            return [((0, 0, 1), n)], n
        return [((0, 0, 1), n), ((1, 0, 0), 2)], 2 * n
    return _GENERATORS[name], _ORDER[name]


def symmetry_generators(name: str) -> torch.Tensor:
    """(n_gen, 3, 3) float64 generators of point group `name` (rotations by 2π/n about each
    generating axis): a map invariant under these is invariant under the whole group; (0, 3, 3)
    for C1."""
    ops = symmetry_operators(name)  # validates the name
    gens, _ = _generators(name.strip().upper())
    mats = _rotations(g for g in gens if g[1] > 1)
    return torch.stack(mats) if mats else ops[:0]


def _rotations(generators) -> list[torch.Tensor]:
    """The rotation by 2π/n about each (axis, n) of `generators`."""
    return [axis_angle_matrix(torch.tensor(ax, dtype=torch.float64), 2 * math.pi / n) for ax, n in generators]


def symmetry_operators(name: str) -> torch.Tensor:
    """(G, 3, 3) float64 rotation matrices of point group `name` (C1, Cn, Dn, T, O, I[1-4]).

    The identity is first. Matrices act on map (x, y, z) column vectors.
    """
    key = name.strip().upper()
    try:
        gens, order = _generators(key)
    except (KeyError, ValueError):
        raise EmberInputError(
            None, f"unknown or unsupported symmetry '{name}'", "use C1, Cn, Dn, T, O or I[1-4]"
        ) from None
    mats = _rotations(gens)
    group = [torch.eye(3, dtype=torch.float64)]
    frontier = list(group)
    while frontier:
        new = []
        for g in frontier:
            for h in mats:
                cand = h @ g
                if not any(torch.allclose(cand, e, atol=1e-4) for e in group):
                    group.append(cand)
                    new.append(cand)
        frontier = new
        if len(group) > order:
            break
    if len(group) != order:
        raise RuntimeError(f"closure of {name} gave {len(group)} operators, expected {order}")
    return torch.stack(group)
