"""Operators: CTF, projector, reconstructor, masks, the forward model."""

from ember.operators.ctf import CtfOptics, ctf_2d
from ember.operators.projector import Projector
from ember.operators.reconstructor import Reconstructor, tau2_from_fsc

__all__ = ["CtfOptics", "Projector", "Reconstructor", "ctf_2d", "tau2_from_fsc"]
