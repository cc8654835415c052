"""Maths and geometry: FFT conventions, Euler angles, point groups, FSC."""

from ember.maths.fsc import fsc, resolution_shell
from ember.maths.rotations import euler_to_matrix, matrix_to_euler
from ember.maths.symmetry import symmetry_operators

__all__ = ["euler_to_matrix", "fsc", "matrix_to_euler", "resolution_shell", "symmetry_operators"]
