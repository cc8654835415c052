"""`ember reconstruct`: 3D reconstruction of particles with known orientations (as
`relion_reconstruct`): CTF-weighted back-projection, then V = Σ C·X / (Σ C² + regulariser).

Without `--wiener` the regulariser is RELION's floor only (1/1000 of the shell-average weight).
With `--wiener` the two random halves (rlnRandomSubset) are reconstructed separately, their FSC
gives τ² = SSNR·σ²_ref (as in auto-refine), and the final map of all particles is the 3D Wiener
filter with the full-set SSNR from √(2·FSC/(1+FSC)).

Each particle's CTF uses its optics group's voltage, Cs, amplitude contrast and pixel size; particles
of groups with rlnCtfDataAreCtfPremultiplied = 1 are inserted as stored (data += X, weight += C²).

Optics groups may differ in pixel size and box (as in RELION 3.1): the map is made at the first
optics group's pixel size and box (RELION's relion_reconstruct without --angpix), and each group's
image frequency k (cycles per its box) is inserted at k·(N·a)/(N_g·a_g) on the model grid
(RELION `ObservationModel::applyScaleDifference`); offsets in Å are converted with the group's pixel
size. Image frequencies beyond the model's Nyquist (or --maxres) are dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ember.errors import EmberInputError
from ember.io.mrc import write_map
from ember.io.particles import ParticleDataSet
from ember.jobs.common import Progress, batches, job_report, select_device
from ember.maths.fourier import (
    fft2_centered,
    hermitian_unique_mask_2d,
    resolution_angstrom,
    rfft_frequencies_2d,
    shell_index,
    shell_of_resolution,
    shift_phases_2d,
)
from ember.maths.fsc import fsc, resolution_shell
from ember.maths.rotations import euler_to_matrix
from ember.maths.symmetry import symmetry_operators
from ember.operators.ctf import particle_ctfs
from ember.operators.reconstructor import Reconstructor, tau2_from_fsc
from ember.report.html import Report
from ember.report.plots import figure_angular_distribution, figure_central_sections, figure_fsc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructConfig:
    star: Path
    output: Path
    symmetry: str = "C1"
    subset: int | None = None
    maxres_angstrom: float | None = None
    ctf: bool = True
    wiener: bool = False
    tau2_fudge: float = 1.0
    pad: int = 2
    batch_size: int = 128
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.subset not in (None, 1, 2):
            raise EmberInputError(None, f"--subset must be 1 or 2 (got {self.subset})", "")
        if self.wiener and self.subset is not None:
            raise EmberInputError(None, "--wiener uses both halves", "drop --subset or --wiener")


def select_particles(dataset: ParticleDataSet, subset: int | None) -> np.ndarray:
    """Row indices of the particles to use (all, or one rlnRandomSubset half)."""
    if subset is None:
        return np.arange(len(dataset))
    halves = dataset.column("rlnRandomSubset", 0).astype(int)
    if not np.isin(halves, (1, 2)).all():
        raise EmberInputError(
            dataset.star_path,
            "--subset needs rlnRandomSubset = 1 or 2 on every particle",
            "add the column (ember refine3d writes it) or drop --subset",
        )
    return np.flatnonzero(halves == subset)


def backproject(
    dataset: ParticleDataSet,
    indices: np.ndarray,
    reconstructor: Reconstructor,
    *,
    ctf: bool = True,
    batch_size: int = 128,
    progress: Progress | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> None:
    """Insert particles `indices` at their STAR poses: data += C·shift(X, +t), weight += C²,
    each optics group at its own pixel size and box onto the model grid (dataset.box, dataset.pixel_size)."""
    device = reconstructor.device
    angles = dataset.angles_deg()
    offsets = dataset.offsets_px()  # in each group's pixels
    use_ctf = ctf and dataset.has_ctf
    premultiplied = torch.from_numpy(dataset.ctf_premultiplied()).to(device)
    group_of = dataset.optics_group_index()[indices]
    total = len(indices) if total is None else total
    done = done_before
    for g in np.unique(group_of):
        optics = dataset.optics_groups[g]
        group_indices = indices[group_of == g]
        scale = (dataset.box * dataset.pixel_size) / (optics.box * optics.pixel_size)
        for start, stop in batches(len(group_indices), batch_size):
            idx = group_indices[start:stop]
            images = torch.from_numpy(dataset.images(idx)).to(device)
            spectra = fft2_centered(images)  # (B, N_g, N_g//2+1)
            t = torch.from_numpy(offsets[idx]).to(device)
            spectra = spectra * shift_phases_2d(optics.box, t).to(spectra.dtype)
            rot = euler_to_matrix(torch.from_numpy(angles[idx])).to(device)
            if use_ctf:
                c = particle_ctfs(dataset, idx, device=device)  # with the group's optics and pixel size
                data, weight = torch.where(premultiplied[idx][:, None, None], spectra, spectra * c), c * c
            else:
                data, weight = spectra, torch.ones_like(spectra.real)
            insert_scaled(reconstructor, data, weight, rot, scale)
            done += len(idx)
            if progress:
                progress(done, total)


def insert_scaled(
    rec: Reconstructor, data: torch.Tensor, weight: torch.Tensor, rot: torch.Tensor, scale: float
) -> None:
    """Back-project (B, n, n//2+1) image spectra whose frequency k (cycles per image box) lies at
    k·scale on the model grid; frequencies beyond the model's r_max are dropped."""
    n = data.shape[-2]
    if n == rec.box and scale == 1.0:
        rec.insert(data, weight, rot)
        return
    k = rfft_frequencies_2d(n, device=rec.device).to(torch.float64) * scale
    keep = (shell_index(k) <= rec.r_max) & hermitian_unique_mask_2d(n, device=rec.device)
    rec.insert_frequencies(data[:, keep], weight[:, keep], rot, k[keep].to(torch.float32))


def reconstruct(cfg: ReconstructConfig, progress: Progress | None = None) -> np.ndarray:
    """Run the job; writes cfg.output (MRC) atomically and returns the map (N, N, N)."""
    device = select_device(cfg.device, cfg.threads)
    dataset = ParticleDataSet.from_star(cfg.star, mixed_sizes=True)
    try:
        ops = symmetry_operators(cfg.symmetry)
        box, pixel = dataset.box, dataset.pixel_size
        r_max = None
        if cfg.maxres_angstrom is not None:
            if cfg.maxres_angstrom < 2 * pixel:
                raise EmberInputError(
                    None, f"--maxres {cfg.maxres_angstrom} Å is beyond Nyquist ({2 * pixel:.2f} Å)", ""
                )
            r_max = shell_of_resolution(cfg.maxres_angstrom, box, pixel)
        make = lambda: Reconstructor(box, pad=cfg.pad, r_max=r_max, device=device)  # noqa: E731
        half_fsc = None
        if cfg.wiener:
            volume, half_fsc = _wiener(dataset, cfg, make, ops, progress)
        else:
            indices = select_particles(dataset, cfg.subset)
            rec = make()
            backproject(dataset, indices, rec, ctf=cfg.ctf, batch_size=cfg.batch_size, progress=progress)
            volume = rec.reconstruct(symmetry=ops).cpu().numpy()
    finally:
        dataset.close()
    write_map(cfg.output, volume, pixel)
    report = _report(cfg, dataset, volume, half_fsc).write(report_path(cfg.output))
    logger.info("wrote %s (%d particles, box %d, %.3f Å/px) and %s", cfg.output, len(dataset), box, pixel, report)
    return volume


def report_path(output: Path) -> Path:
    """`map.mrc` → `map_report.html` beside it (the job writes a file, not a folder)."""
    output = Path(output)
    return output.with_name(f"{output.stem}_report.html")


def _report(cfg: ReconstructConfig, dataset: ParticleDataSet, volume: np.ndarray,
            half_fsc: torch.Tensor | None) -> Report:
    """report.html: the numbers, central sections, the angles used and, with --wiener, the halves' FSC."""
    report = job_report("reconstruct", f"reconstruct: {Path(cfg.output).name}", cfg)
    box, pixel = dataset.box, dataset.pixel_size
    used = select_particles(dataset, cfg.subset)
    report.number("particles", f"{len(used)}" + ("" if cfg.subset is None else f" (half {cfg.subset})"))
    report.number("box, pixel size", f"{box} px, {pixel:.3f} Å/px")
    report.number("optics groups", dataset.n_optics_groups)
    report.number("symmetry", cfg.symmetry)
    report.number("filter", "3D Wiener filter, τ² from the halves' FSC" if cfg.wiener else "none (RELION's default)")
    if half_fsc is not None:
        shell = resolution_shell(half_fsc, 0.143)
        report.number("half-set resolution (FSC 0.143)", f"{resolution_angstrom(shell, box, pixel):.2f} Å")
        report.figure("FSC between the reconstructions of the two random halves.",
                      figure_fsc({"half 1 vs half 2": half_fsc.numpy()}, box=box, pixel_size=pixel))
    report.figure("Central sections of the map.", figure_central_sections([volume], [Path(cfg.output).name]))
    report.figure("Viewing directions used (from the STAR file).",
                  figure_angular_distribution(dataset.angles_deg()[used]))
    return report


def _wiener(dataset, cfg: ReconstructConfig, make, ops, progress) -> tuple[np.ndarray, torch.Tensor]:
    halves = [make(), make()]
    total = len(dataset)
    done = 0
    for h, rec in zip((1, 2), halves, strict=True):
        idx = select_particles(dataset, h)
        backproject(
            dataset,
            idx,
            rec,
            ctf=cfg.ctf,
            batch_size=cfg.batch_size,
            progress=progress,
            done_before=done,
            total=total,
        )
        done += len(idx)
    full = make()
    for rec in halves:
        full.add(rec)
    maps = [rec.reconstruct(symmetry=ops) for rec in halves]
    curve = fsc(maps[0].double(), maps[1].double())
    full.prepare(ops)
    tau2 = tau2_from_fsc(curve, full.sigma2_ref(), tau2_fudge=cfg.tau2_fudge, joined=True)
    return full.reconstruct(tau2=tau2, tau2_fudge=cfg.tau2_fudge).cpu().numpy(), curve.cpu()
