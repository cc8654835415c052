"""Preparing a batch of particles for the likelihood: integer pre-centring, soft circular mask,
Fourier transforms, CTFs and the frequency lists of the current windows (ALGORITHM §3.4, §1.5)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ember.io.particles import ParticleDataSet
from ember.maths.fourier import fft2_centered, hermitian_unique_mask_2d, rfft_frequencies_2d, shell_index
from ember.operators.ctf import particle_ctfs
from ember.operators.masks import soft_sphere


@dataclass(frozen=True)
class FrequencyWindow:
    """The Fourier pixels used at window size W: |k| ≤ W/2, without the kx = 0, ky < 0 mates.

    box : N of the images' (N, N//2+1) half transform; index : (K,) flat indices into it;
    k : (K, 2) float (kx, ky) in cycles per image box; shell : (K,) long shell index on the image
    grid; k_ref : (K, 2) the same frequencies on the reference's grid (k·scale, ALGORITHM §1.6:
    optics groups whose box or pixel size differ from the reference's); scale : that factor.
    """

    size: int
    index: torch.Tensor
    k: torch.Tensor
    shell: torch.Tensor
    box: int = 0
    k_ref: torch.Tensor | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.k_ref is None:
            object.__setattr__(self, "k_ref", self.k)

    @classmethod
    def build(cls, box: int, size: int, device=None, *, scale: float = 1.0, ref_size: int | None = None
              ) -> FrequencyWindow:
        """Window W = `size` on an N = `box` image grid; with `scale`, also only frequencies whose
        reference-grid shell round(|k|·scale) is ≤ ref_size/2."""
        k = rfft_frequencies_2d(box, device=device)
        shells = shell_index(k)
        keep = (shells <= size // 2) & hermitian_unique_mask_2d(box, device=device)
        if scale != 1.0 and ref_size is not None:
            keep &= shell_index(k * scale) <= ref_size // 2
        flat = torch.nonzero(keep.reshape(-1)).squeeze(1)
        k = k.reshape(-1, 2)[flat].to(torch.float64)
        return cls(size, flat, k, shells.reshape(-1)[flat], box, k * scale if scale != 1.0 else k, scale)

    def for_images(self, box: int, scale: float) -> FrequencyWindow:
        """This window (W on the reference grid) for images of box N_g whose frequency k lies at
        k·scale on the reference grid, scale = (N·a)/(N_g·a_g) (RELION's applyScaleDifference):
        W_g = 2·round(W/(2·scale)) image pixels, at most N_g."""
        if box == self.box and scale == 1.0:
            return self
        size = min(box, 2 * round(self.size / (2 * scale)))
        return FrequencyWindow.build(box, size, device=self.k.device, scale=scale, ref_size=self.size)

    def to(self, device: torch.device) -> FrequencyWindow:
        """This window with its frequency lists on `device`."""
        if self.k.device == torch.device(device):
            return self
        return dataclasses.replace(self, index=self.index.to(device), k=self.k.to(device),
                                   shell=self.shell.to(device), k_ref=self.k_ref.to(device))

    @property
    def ref_shell(self) -> torch.Tensor:
        """(K,) shell of each frequency on the reference grid."""
        return self.shell if self.scale == 1.0 else shell_index(self.k_ref)


def npix_per_shell(box: int) -> torch.Tensor:
    """(N//2+1,) number of unique half-transform pixels per shell (ALGORITHM §1.4)."""
    w = FrequencyWindow.build(box, box)
    return torch.bincount(w.shell, minlength=box // 2 + 1)[: box // 2 + 1].to(torch.float64)


@dataclass
class ImageBatch:
    """A batch of B particles ready for the E-step.

    indices : (B,) rows of the particle table; masked, unmasked : (B, N, N//2+1) complex spectra
    of the pre-centred image with and without the soft circular mask; ctf : (B, N, N//2+1) real;
    offset0_px : (B, 2) the integer (rounded) old offsets already applied; offset_prior_px : (B, 2)
    centre of the offset prior (RELION origin, px); group : (B,) 0-based optics group;
    premultiplied : (B,) bool, images already multiplied by their CTF; scale_group : (B,) 0-based
    intensity-scale group (rlnGroupNumber − 1)
    """

    indices: np.ndarray
    masked: torch.Tensor
    unmasked: torch.Tensor
    ctf: torch.Tensor
    offset0_px: torch.Tensor
    offset_prior_px: torch.Tensor
    group: torch.Tensor
    premultiplied: torch.Tensor
    scale_group: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, members: torch.Tensor) -> ImageBatch:
        """The images at positions `members` (B',) of this batch."""
        m = members.cpu().numpy()
        return ImageBatch(self.indices[m], self.masked[members], self.unmasked[members], self.ctf[members],
                          self.offset0_px[members], self.offset_prior_px[members], self.group[members],
                          self.premultiplied[members], self.scale_group[members])

    def window(self, win: FrequencyWindow, *, masked: bool = True) -> torch.Tensor:
        """(B, K) complex spectra at the window's frequencies (masked or unmasked images)."""
        x = self.masked if masked else self.unmasked
        return x.reshape(len(self), -1)[:, win.index]

    def ctf_terms(self, win: FrequencyWindow, scale: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_ref, c_image, c2), each (B, K): the factor on the reference in the likelihood (s·C, or
        s·C² for premultiplied images), the factor on the image in back-projection (s·C, or s) and
        the back-projection weight s²C² (ALGORITHM §3.3, §5.6, pitfall 18); s : (B,) intensity scale
        of each image's group (default 1)."""
        c = self.ctf.reshape(len(self), -1)[:, win.index]
        s = torch.ones(len(self), dtype=c.dtype, device=c.device) if scale is None else scale.to(c.dtype)
        s = s[:, None]
        pre = self.premultiplied[:, None]
        return s * torch.where(pre, c * c, c), s * torch.where(pre, torch.ones_like(c), c), (s * c) ** 2


def roll_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Move the content of images (B, N, N) by integer shifts (B, 2) (x, y) px, wrapping round."""
    b, n = images.shape[0], images.shape[-1]
    ar = torch.arange(n, device=images.device)
    rows = (ar[None] - shifts_px[:, 1:2]) % n  # (B, N)
    cols = (ar[None] - shifts_px[:, 0:1]) % n
    return images[torch.arange(b, device=images.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def prepare_batch(
    dataset: ParticleDataSet,
    indices: np.ndarray,
    offsets_px: np.ndarray,
    *,
    offset_priors_px: np.ndarray | None = None,
    image_scale: np.ndarray | None = None,
    mask_radius_px: float,
    mask_edge_px: float = 5.0,
    use_ctf: bool = True,
    device: torch.device | str = "cpu",
) -> ImageBatch:
    """Read, pre-centre by the rounded old offsets, mask and transform particles `indices`.

    offsets_px : (B, 2) RELION origins in pixels (the particle centre is at −origin);
    offset_priors_px : (B, 2) centres of the offset prior (default 0, the box centre);
    image_scale : (B,) factors on the images, avg_norm/norm_j of the norm correction (default 1).
    """
    images = torch.from_numpy(dataset.images(indices))
    if torch.device(device).type == "cuda":  # page-locked, so that the copy runs at the bus's speed
        images = images.pin_memory()
    images = images.to(device, torch.float64, non_blocking=True)
    if image_scale is not None:
        images = images * torch.as_tensor(image_scale, dtype=torch.float64, device=device)[:, None, None]
    t0 = np.rint(offsets_px).astype(np.int64)
    centred = roll_images(images, torch.from_numpy(t0).to(device))
    mask = soft_sphere(images.shape[-1], mask_radius_px, mask_edge_px, ndim=2, device=device)
    outside = 1 - mask
    background = (centred * outside).sum(dim=(1, 2), keepdim=True) / outside.sum().clamp(min=1e-12)
    masked = centred * mask + background * outside
    if use_ctf and dataset.has_ctf:
        ctf = particle_ctfs(dataset, indices, device=device, dtype=torch.float64)
    else:
        n = images.shape[-1]
        ctf = torch.ones((len(indices), n, n // 2 + 1), dtype=torch.float64, device=device)
    priors = np.zeros((len(indices), 2)) if offset_priors_px is None else offset_priors_px
    return ImageBatch(
        indices=np.asarray(indices),
        masked=fft2_centered(masked),
        unmasked=fft2_centered(centred),
        ctf=ctf,
        offset0_px=torch.from_numpy(t0.astype(np.float64)).to(device),
        offset_prior_px=torch.as_tensor(priors, dtype=torch.float64, device=device),
        group=torch.from_numpy(dataset.optics_group_index()[indices]).long().to(device),
        premultiplied=torch.from_numpy(dataset.ctf_premultiplied()[indices] & (use_ctf and dataset.has_ctf)).to(device),
        scale_group=torch.from_numpy(dataset.group_numbers()[indices] - 1).long().to(device),
    )
