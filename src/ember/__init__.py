"""Ember: regularised-likelihood cryo-EM reconstruction with RELION-compatible files.

The public API re-exports the layers' main names; see each sub-package for the rest.

OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless the user set it) when Ember is
imported before torch: with the default spin-waiting, torch's parallel kernels ran 50× slower as
soon as another process shared the cores (a second job, torchrun ranks, a test suite).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ember.errors import EmberInputError
from ember.io import ParticleDataSet, read_map, read_particles_star, write_map, write_particles_star
from ember.maths import euler_to_matrix, fsc, matrix_to_euler, symmetry_operators
from ember.operators import Projector, Reconstructor, ctf_2d

__all__ = [
    "EmberInputError",
    "ParticleDataSet",
    "Projector",
    "Reconstructor",
    "ctf_2d",
    "euler_to_matrix",
    "fsc",
    "matrix_to_euler",
    "read_map",
    "read_particles_star",
    "symmetry_operators",
    "write_map",
    "write_particles_star",
]
