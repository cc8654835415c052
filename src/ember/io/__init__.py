"""File formats: MRC maps/stacks, RELION STAR tables, particle data sets, atomic models."""

from ember.io.mrc import read_map, write_map
from ember.io.particles import ParticleDataSet
from ember.io.star import ParticleTable, read_particles_star, write_particles_star

__all__ = [
    "ParticleDataSet",
    "ParticleTable",
    "read_map",
    "read_particles_star",
    "write_map",
    "write_particles_star",
]
