"""Ember: regularised-likelihood cryo-EM reconstruction with RELION-compatible files.

The public API re-exports the layers' main names; see each sub-package for the rest.
"""

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
