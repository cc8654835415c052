"""The image-formation model X = shift(C · P_A V, −t) (+ noise), used by the simulator."""

from __future__ import annotations

import torch

from ember.maths.fourier import ifft2_centered, shift_phases_2d
from ember.operators.projector import Projector


def clean_images(
    projector: Projector,
    rotations: torch.Tensor,
    offsets_px: torch.Tensor,
    ctf: torch.Tensor | None,
) -> torch.Tensor:
    """Noise-free particle images.

    rotations : (B, 3, 3) A (map → image); offsets_px : (B, 2) RELION origin (x, y) in pixels,
    i.e. the particle centre sits at −offset from the box centre; ctf : (B, N, N//2+1) or None
    returns : (B, N, N) float32, origin at N/2
    """
    spectra = projector.project(rotations)
    if ctf is not None:
        spectra = spectra * ctf
    spectra = spectra * shift_phases_2d(projector.box, -offsets_px.to(torch.float64)).to(spectra.dtype)
    return ifft2_centered(spectra, projector.box).to(torch.float32)
