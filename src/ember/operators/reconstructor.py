"""Back-projector and regularised (Wiener) reconstruction (RELION `BackProjector`).

Accumulates data(p) += C·X and weight(p) += C² at p = pad·Aᵀk in a centred half volume,
then V̂ = data / max(weight + 1/(ω·T·τ²), ε) with ω = pad³, and a gridding correction.
"""

from __future__ import annotations

import torch

from ember.maths.fourier import hermitian_unique_mask_2d, rfft_frequencies_2d, shell_index
from ember.operators.interpolation import (
    centred_to_half,
    centred_to_half_2d,
    fold_periodic,
    gather,
    half_to_centred,
    half_to_centred_2d,
    scatter_add,
    trilinear_corners,
)
from ember.operators.masks import radius_grid, soft_mask_outside
from ember.operators.projector import gridding_kernel


def blob_transform(size: int, ndim: int, *, radius: float = 3.8, alpha: float = 15.0, device=None) -> torch.Tensor:
    """(size,)*ndim real-space transform of RELION's order-0 Kaiser–Bessel blob (radius in Fourier
    voxels), normalised to 1 at the origin, with the origin at index 0 (FFT order).

    FT(w) ∝ I₃/₂(s)/s^{3/2} ∝ (cosh s − sinh s / s)/s² with s² = α² − (2π·radius·w)², w the
    real-space radius in cycles (|x|/size); for s² < 0 it continues as (sin s' / s' − cos s')/s'²."""
    w = torch.fft.ifftshift(radius_grid(size, ndim, device=device)) / size
    s2 = alpha**2 - (2 * torch.pi * radius * w) ** 2

    def shape(v: torch.Tensor) -> torch.Tensor:
        s = torch.sqrt(v.abs()).clamp(min=1e-6)
        real = (torch.cosh(s) - torch.sinh(s) / s) / s**2
        imaginary = (torch.sin(s) / s - torch.cos(s)) / s**2
        return torch.where(v >= 0, real, imaginary)

    return shape(s2) / shape(torch.tensor(alpha**2, dtype=torch.float64))


class Reconstructor:
    """Accumulators for one reconstruction of an N³ map.

    While inserting, `sums` (P+1, P+1, P//2+1, 3) float32 holds (Re data, Im data, weight);
    `prepare` turns it into `data` complex128 and `weight` float64 of shape (P+1, P+1, P//2+1).
    P = pad·N. With `ndim=2` the reconstruction is an (N, N) image (a 2D class average) from
    images inserted at in-plane rotations about z, on a single plane (1, P+1, P//2+1).
    """

    def __init__(self, box: int, *, pad: int = 2, r_max: int | None = None, ndim: int = 3, device=None) -> None:
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, not {ndim}")
        self.box, self.pad, self.ndim = box, pad, ndim
        self.r_max = box // 2 if r_max is None else min(r_max, box // 2)
        size = pad * box
        shape = (size + 1 if ndim == 3 else 1, size + 1, size // 2 + 1)
        self.sums = torch.zeros((*shape, 3), dtype=torch.float32, device=device)
        self.data = torch.zeros(0, dtype=torch.complex128, device=device)
        self.weight = torch.zeros(0, dtype=torch.float64, device=device)
        self._prepared = False
        self._shells: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.sums.device

    def _voxel_frequencies(self) -> torch.Tensor:
        """(P+1, P+1, P//2+1, 3) (x, y, z) padded-grid frequency of every stored voxel (z = 0 in 2D)."""
        size = self.pad * self.box
        y = torch.arange(size + 1, device=self.device, dtype=torch.float64) - size // 2
        z = y if self.ndim == 3 else torch.zeros(1, device=self.device, dtype=torch.float64)
        x = torch.arange(size // 2 + 1, device=self.device, dtype=torch.float64)
        gz, gy, gx = torch.meshgrid(z, y, x, indexing="ij")
        return torch.stack([gx, gy, gz], dim=-1)

    def insert(
        self,
        ctf_images: torch.Tensor,
        ctf2: torch.Tensor,
        rotations: torch.Tensor,
    ) -> None:
        """Back-project a batch.

        ctf_images : (B, N, N//2+1) complex, C·X (already weighted/shifted as wanted)
        ctf2 : (B, N, N//2+1) real, C² (times any weight)
        rotations : (B, 3, 3) matrices A (map → image)
        """
        n = self.box
        k2d = rfft_frequencies_2d(n, device=self.device)
        keep = shell_index(k2d) <= self.r_max
        keep &= hermitian_unique_mask_2d(n, device=self.device)  # drop the mates of ky > 0
        self.insert_frequencies(ctf_images[:, keep], ctf2[:, keep], rotations, k2d[keep])

    def insert_frequencies(
        self, values: torch.Tensor, weights: torch.Tensor, rotations: torch.Tensor, k: torch.Tensor
    ) -> None:
        """Back-project values at a list of 2D frequencies.

        values : (B, K) complex; weights : (B, K) real; rotations : (B, 3, 3);
        k : (K, 2) (kx, ky) cycles per box, without kx = 0, ky < 0 mates, |k| ≤ r_max
        """
        if self._prepared:
            raise RuntimeError("insert() after reconstruct(): make a new Reconstructor")
        k3 = torch.cat([k, torch.zeros_like(k[:, :1])], dim=1).to(self.device, torch.float32)
        a = rotations.to(self.device, torch.float32)
        points = (k3[None] @ a) * self.pad  # (B, K, 3): p = pad·Aᵀk
        corners = trilinear_corners(points, tuple(self.sums.shape))
        v = values.reshape(-1)
        stacked = torch.stack([v.real, v.imag, weights.reshape(-1).to(v.real.dtype)], 1)
        scatter_add(self.sums, corners, stacked)

    def add(self, other: Reconstructor) -> None:
        """Add another reconstructor's accumulators (joining half-sets) before `prepare`."""
        self.sums += other.sums.to(self.device)

    def add_prepared(self, first: Reconstructor, second: Reconstructor) -> None:
        """Become the sum of two prepared reconstructors (symmetry already applied)."""
        self.data = first.data + second.data
        self.weight = first.weight + second.weight
        self._prepared = True

    def prepare(self, symmetry: torch.Tensor | None = None) -> None:
        """Fold periodic planes, enforce Hermitian symmetry on x = 0 (sum of mates, as RELION)
        and apply point-group symmetry operators (G, 3, 3) to data and weight."""
        if self._prepared:
            return
        sums = fold_periodic(self.sums.to(torch.float64))
        data, weight = torch.complex(sums[..., 0], sums[..., 1]), sums[..., 2]
        data[..., 0] = data[..., 0] + torch.flip(data[..., 0], dims=(0, 1)).conj()
        weight[..., 0] = weight[..., 0] + torch.flip(weight[..., 0], dims=(0, 1))
        if symmetry is not None and len(symmetry) > 1:
            if self.ndim == 2:
                raise ValueError("point-group symmetry applies to 3D reconstructions only")
            data, weight = self._symmetrise(data, weight, symmetry)
        self.data, self.weight = data, weight
        self._prepared = True

    def _symmetrise(self, data, weight, ops: torch.Tensor):
        p = self._voxel_frequencies()
        inside = torch.linalg.vector_norm(p, dim=-1) <= self.pad * self.r_max
        pts = p[inside]  # (M, 3)
        sym_data, sym_weight = data[inside].clone(), weight[inside].clone()
        for op in ops[1:].to(self.device, torch.float64):
            q = pts @ op.T  # R·p
            corners = trilinear_corners(q.to(torch.float32), tuple(data.shape))
            sym_data += gather(data, q, corners)
            sym_weight += gather(weight, q, corners)
        data, weight = torch.zeros_like(data), torch.zeros_like(weight)
        data[inside], weight[inside] = sym_data, sym_weight
        return data, weight

    def shells(self) -> torch.Tensor:
        """(P+1, P+1, P//2+1) long: model shell ROUND(|p|/pad) of every voxel (computed once)."""
        if self._shells is None:
            self._shells = shell_index(self._voxel_frequencies() / self.pad)
        return self._shells

    def downsampled_average(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Σdata/Σweight over the padded voxels of each N-grid voxel ROUND(p/pad) (0 where no weight)
        → (values (M,) complex128, shells (M,) long) over the M = (N+1)²(N/2+1) voxels of the
        centred N-grid half volume."""
        self.prepare()
        n, size = self.box, self.pad * self.box
        p = self._voxel_frequencies()[:size, :size]  # drop the repeated ±P/2 planes
        q = torch.floor(p / self.pad + 0.5).long()  # N-grid voxel (x ≥ 0, y, z centred)
        shells = self.shells()[:size, :size]
        keep = shells <= n // 2
        side = n + 1
        bins = ((q[..., 2] + n // 2) * side + q[..., 1] + n // 2) * (n // 2 + 1) + q[..., 0]
        bins = bins[keep]
        m = side * side * (n // 2 + 1)
        data = torch.zeros(m, dtype=torch.complex128, device=self.device)
        data.index_add_(0, bins, self.data[:size, :size][keep])
        weight = torch.zeros(m, dtype=torch.float64, device=self.device)
        weight.index_add_(0, bins, self.weight[:size, :size][keep])
        every = torch.arange(m, device=self.device)
        x = every % (n // 2 + 1)
        y = (every // (n // 2 + 1)) % side - n // 2
        z = every // ((n // 2 + 1) * side) - n // 2
        avg = torch.where(weight > 0, data / weight.clamp(min=1e-300), torch.zeros_like(data))
        return avg, shell_index(torch.stack([x, y, z], dim=-1))

    def completeness(self, tau2: torch.Tensor, tau2_fudge: float = 1.0) -> torch.Tensor:
        """(N//2+1,) fraction of the padded voxels of each shell with ω·T·τ²·weight ≥ 1
        (RELION rlnFourierCompleteness)."""
        n_shells = self.box // 2 + 1
        shells = self.shells().reshape(-1)
        keep = shells < n_shells
        s = shells[keep]
        omega = self.pad**self.ndim
        ratio = omega * tau2_fudge * tau2.to(self.device, torch.float64)[s] * self.weight.reshape(-1)[keep]
        hit = torch.zeros(n_shells, dtype=torch.float64, device=self.device).index_add_(0, s, (ratio >= 1).double())
        return hit / torch.bincount(s, minlength=n_shells).double().clamp(min=1)

    def sigma2_ref(self) -> torch.Tensor:
        """(N//2+1,) count / Σ(ω·weight) per shell (RELION rlnReferenceSigma2)."""
        n_shells = self.box // 2 + 1
        shells = self.shells().reshape(-1)
        keep = shells < n_shells
        omega = float(self.pad**self.ndim)
        w = torch.zeros(n_shells, dtype=torch.float64, device=self.device)
        c = torch.zeros_like(w)
        w.index_add_(0, shells[keep], omega * self.weight.reshape(-1)[keep])
        c.index_add_(0, shells[keep], torch.ones_like(w[shells[keep]]))
        return torch.where(w > 0, c / w.clamp(min=1e-300), torch.zeros_like(w))

    def reconstruct(
        self,
        *,
        tau2: torch.Tensor | None = None,
        tau2_fudge: float = 1.0,
        minres_shell: int = 5,
        symmetry: torch.Tensor | None = None,
        gridding_iterations: int = 0,
    ) -> torch.Tensor:
        """Regularised reconstruction → (N, N, N) float32 map ((N, N) in 2D), origin at N/2.

        tau2 : (N//2+1,) prior power per shell on the 2D-image scale, or None for no prior
        (only RELION's floor ε = 1/1000 of the shell-average weight).
        gridding_iterations : 0 divides by the weight (RELION 4/5 default, `--skip_gridding`);
        n > 0 uses n iterations of RELION 3.1's iterative gridding (its default, 10) instead.
        """
        self.prepare(symmetry)
        n, pad = self.box, self.pad
        n_shells = n // 2 + 1
        shells = self.shells()
        inside = shells <= self.r_max
        weight = self.weight.clone()
        if tau2 is not None:
            t = tau2.to(self.device, torch.float64)
            omega = pad**self.ndim
            reg_shell = torch.where(t > 0, 1.0 / (omega * tau2_fudge * t.clamp(min=1e-300)), torch.zeros_like(t))
            s = shells.clamp(max=n_shells - 1)
            reg = reg_shell[s]
            no_prior = t[s] <= 0
            reg = torch.where(no_prior, 1.0 / (0.001 * weight.clamp(min=1e-300)), reg)
            weight = torch.where(inside & (shells >= minres_shell), weight + reg, weight)
        if gridding_iterations > 0:
            inverse = self._gridding_inverse(weight, inside, gridding_iterations)
            return self._to_real_space(torch.where(inside, self.data * inverse, torch.zeros_like(self.data)))
        flat_s = shells[inside]
        sums = torch.zeros(n_shells, dtype=torch.float64, device=self.device)
        counts = torch.zeros_like(sums)
        sums.index_add_(0, flat_s, weight[inside])
        counts.index_add_(0, flat_s, torch.ones_like(weight[inside]))
        eps = 1e-3 * sums / counts.clamp(min=1)
        denom = torch.maximum(weight, eps[shells.clamp(max=n_shells - 1)])
        spectrum = torch.where(inside & (denom > 0), self.data / denom.clamp(min=1e-300), torch.zeros_like(self.data))
        return self._to_real_space(spectrum)

    def _gridding_inverse(self, weight: torch.Tensor, inside: torch.Tensor, iterations: int) -> torch.Tensor:
        """Pipe & Menon (1999) density compensation, as RELION 3.1's `BackProjector::reconstruct`:
        W ← W / max(10⁻⁶, |(W·weight) ⊛ blob|), W = 1 inside r_max at the start; the blob
        (Kaiser–Bessel, order 0, radius 3.8 padded voxels, α = 15) is applied as a product with its
        transform in real space. Returns W, an approximate inverse of the weight, in the centred layout."""
        size = self.pad * self.box
        dims = (size,) * self.ndim
        half_inside = self._to_half(inside)
        fweight = self._to_half(weight)
        w = half_inside.to(torch.float64)
        blob = blob_transform(size, self.ndim, device=self.device)
        for _ in range(iterations):
            conv = torch.fft.rfftn(torch.fft.irfftn(w * fweight, s=dims) * blob, s=dims).abs()
            w = torch.where(half_inside, w / conv.clamp(min=1e-6), w)
        return self._from_half(w)

    def _to_half(self, centred: torch.Tensor) -> torch.Tensor:
        return centred_to_half(centred) if self.ndim == 3 else centred_to_half_2d(centred)

    def _from_half(self, half: torch.Tensor) -> torch.Tensor:
        return half_to_centred(half) if self.ndim == 3 else half_to_centred_2d(half)

    def _to_real_space(self, spectrum: torch.Tensor) -> torch.Tensor:
        n, pad = self.box, self.pad
        size = pad * n
        if self.ndim == 2:
            img = torch.fft.irfft2(centred_to_half_2d(spectrum), s=(size, size), norm="forward") / pad**2
            o = size // 2 - n // 2
            img = torch.fft.fftshift(img)[o : o + n, o : o + n]
            img = soft_mask_outside(img, n / 2, 5.0) / gridding_kernel(n, pad, ndim=2, device=img.device)
            return img.to(torch.float32)
        half = centred_to_half(spectrum)
        vol = torch.fft.irfftn(half, s=(size, size, size), norm="forward") / (pad**3 * n)
        vol = torch.fft.fftshift(vol)
        o = size // 2 - n // 2
        vol = vol[o : o + n, o : o + n, o : o + n]
        vol = soft_mask_outside(vol, n / 2, 5.0)
        vol = vol / gridding_kernel(n, pad, device=vol.device)
        return vol.to(torch.float32)


def half_set_fsc(first: Reconstructor, second: Reconstructor) -> torch.Tensor:
    """Gold-standard FSC of two prepared half reconstructors → (N//2+1,) float64 (RELION
    `getDownsampledAverage` + `calculateDownSampledFourierShellCorrelation`, ALGORITHM §5.4).

    Data and weight are summed into N-grid voxels ROUND(p/pad), divided, and correlated per
    shell; only shells ≤ r_max (where the E-step put data) count, the rest are 0; FSC(0) = 1."""
    r_max = min(first.r_max, second.r_max)
    n_shells = first.box // 2 + 1
    avg1, shells = first.downsampled_average()
    avg2, _ = second.downsampled_average()
    keep = shells < n_shells
    avg1, avg2, shells = avg1[keep], avg2[keep], shells[keep]

    def per_shell(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_shells, dtype=torch.float64, device=v.device).index_add_(0, shells, v)

    num = per_shell((avg1 * avg2.conj()).real)
    den = torch.sqrt(per_shell(avg1.abs() ** 2) * per_shell(avg2.abs() ** 2))
    out = torch.where(den > 1e-50, num / den.clamp(min=1e-300), torch.zeros_like(num))
    out[r_max + 1 :] = 0.0
    out[0] = 1.0
    return out


def tau2_from_fsc(
    fsc: torch.Tensor, sigma2_ref: torch.Tensor, *, tau2_fudge: float = 1.0, joined: bool = False
) -> torch.Tensor:
    """Gold-standard τ² per shell (RELION `updateSSNRarrays`, ALGORITHM §5.4).

    FSC' = max(0.001, FSC); if `joined` (map of both halves) FSC' = √(2FSC'/(1+FSC'));
    FSC' = min(0.999, FSC'); SSNR = T·FSC'/(1−FSC'); τ² = SSNR·σ²_ref.
    """
    f = fsc.to(torch.float64).clamp(min=0.001)
    if joined:
        f = torch.sqrt(2 * f / (1 + f))
    f = f.clamp(max=0.999)
    return tau2_fudge * f / (1 - f) * sigma2_ref.to(torch.float64)


def join_low_resolution(first: Reconstructor, second: Reconstructor, shell: int) -> None:
    """Average data and weight of two prepared half reconstructors for model shells ≤ `shell`
    (RELION `joinTwoHalvesAtLowResolution`): the only information the halves share."""
    first.prepare()
    second.prepare()
    low = first.shells() <= shell
    data = (first.data[low] + second.data[low]) / 2
    weight = (first.weight[low] + second.weight[low]) / 2
    first.data[low], second.data[low] = data, data
    first.weight[low], second.weight[low] = weight, weight
