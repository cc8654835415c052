"""`ember simulate`: ground-truth particle data sets from a map or an atomic model.

Forward model: X = shift(C · P_A V, −t) + noise, with A uniform on SO(3) (or given), t uniform
sub-pixel offsets, a per-particle astigmatic CTF and white Gaussian noise. Images are scaled so
that the noise has unit variance per pixel (RELION-normalised particles); SNR is the variance of
the noise-free CTF-modulated image over the whole box divided by the noise variance, averaged over
particles. `truth.mrc` is written on the same scale as the images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ember.errors import EmberInputError
from ember.io.atomic_model import model_density, read_model
from ember.io.mrc import StackWriter, read_map, write_map
from ember.io.star import ParticleTable, read_particles_star, write_particles_star
from ember.jobs.common import Progress, batches, write_job_json
from ember.maths.rotations import euler_to_matrix, matrix_to_euler, random_rotations
from ember.operators.ctf import CtfOptics, ctf_2d
from ember.operators.forward import clean_images
from ember.operators.projector import Projector

logger = logging.getLogger(__name__)
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
BATCH = 256  # fixed so that results under --seed do not depend on anything else


@dataclass(frozen=True)
class SimulateConfig:
    output: Path
    n_particles: int
    map_path: Path | None = None
    model_path: Path | None = None
    chains: tuple[str, ...] | None = None
    box: int | None = None
    pixel_size: float | None = None
    snr: float | None = None
    defocus_min_um: float = 1.0
    defocus_max_um: float = 3.0
    astigmatism_angstrom: float = 200.0
    max_offset_px: float = 3.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    ctf: bool = True
    angles_from: Path | None = None
    bfactor_floor: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.map_path is None) == (self.model_path is None):
            raise EmberInputError(None, "give exactly one of --map or --model", "")
        if self.n_particles < 1:
            raise EmberInputError(None, f"--n must be ≥ 1 (got {self.n_particles})", "")
        if self.box is not None and (self.box < 8 or self.box % 2):
            raise EmberInputError(None, f"--box must be even and ≥ 8 (got {self.box})", "")
        if self.snr is not None and self.snr <= 0:
            raise EmberInputError(None, f"--snr must be > 0 (got {self.snr})", "omit it for noise-free")
        if not 0 <= self.defocus_min_um <= self.defocus_max_um:
            raise EmberInputError(None, "--defocus needs 0 ≤ MIN ≤ MAX (µm)", "")


def load_truth(cfg: SimulateConfig) -> tuple[np.ndarray, float]:
    """The ground-truth map (N, N, N) and its pixel size in Å."""
    if cfg.map_path is not None:
        vol, pixel = read_map(cfg.map_path)
        if cfg.pixel_size and abs(cfg.pixel_size - pixel) > 1e-3 * pixel:
            raise EmberInputError(
                cfg.map_path,
                f"header pixel size {pixel} Å differs from --angpix {cfg.pixel_size}",
                "omit --angpix or fix the header",
            )
        return vol, pixel
    if cfg.box is None or cfg.pixel_size is None:
        raise EmberInputError(cfg.model_path, "--model needs --box and --angpix", "add them")
    st = read_model(cfg.model_path, list(cfg.chains) if cfg.chains else None)
    try:
        vol = model_density(st, box=cfg.box, pixel_size=cfg.pixel_size, bfactor_floor=cfg.bfactor_floor)
    except EmberInputError as exc:
        raise EmberInputError(cfg.model_path, exc.problem, exc.fix) from None
    return vol, cfg.pixel_size


def draw_parameters(cfg: SimulateConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Orientations, offsets and CTF parameters for every particle (RELION columns)."""
    n = cfg.n_particles
    if cfg.angles_from is not None:
        given = read_particles_star(cfg.angles_from)
        missing = [c for c in ANGLE_COLUMNS if c not in given.particles]
        if missing:
            raise EmberInputError(cfg.angles_from, f"no {', '.join(missing)} column", "give a STAR with angles")
        if cfg.map_path is not None and "rlnImagePixelSize" in given.optics:
            star_pixel = float(given.optics["rlnImagePixelSize"].iloc[0])
            _, pixel = read_map(cfg.map_path)
            if abs(star_pixel - pixel) > 1e-3 * pixel:
                raise EmberInputError(
                    cfg.map_path,
                    f"map pixel size {pixel:.4f} Å differs from {cfg.angles_from}'s {star_pixel:.4f} Å",
                    "fix the map header or the STAR's rlnImagePixelSize",
                )
        angles = given.particles[list(ANGLE_COLUMNS)].to_numpy(dtype=np.float64)
        angles = angles[np.arange(n) % len(angles)]
    else:
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        angles = matrix_to_euler(random_rotations(n, gen)).numpy()
    offsets = rng.uniform(-cfg.max_offset_px, cfg.max_offset_px, size=(n, 2))
    mean_defocus = rng.uniform(cfg.defocus_min_um, cfg.defocus_max_um, size=n) * 1e4
    astig = rng.uniform(0, cfg.astigmatism_angstrom, size=n)
    return pd.DataFrame(
        {
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            "rlnOriginXAngst": offsets[:, 0],
            "rlnOriginYAngst": offsets[:, 1],
            "rlnDefocusU": mean_defocus + astig / 2,
            "rlnDefocusV": mean_defocus - astig / 2,
            "rlnDefocusAngle": rng.uniform(-180, 180, size=n),
            "rlnRandomSubset": rng.integers(1, 3, size=n),
        }
    )


def simulate(cfg: SimulateConfig, progress: Progress | None = None) -> Path:
    """Write truth.mrc, particles.mrcs and particles.star into cfg.output; returns the STAR path."""
    vol, pixel = load_truth(cfg)
    box = vol.shape[0]
    rng = np.random.default_rng(cfg.seed)
    params = draw_parameters(cfg, rng)
    params[["rlnOriginXAngst", "rlnOriginYAngst"]] *= pixel
    projector = Projector.from_volume(torch.from_numpy(vol))
    optics = CtfOptics(cfg.voltage_kv, cfg.cs_mm, cfg.amplitude_contrast)
    rotations = euler_to_matrix(torch.tensor(params[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()))
    offsets = torch.tensor(params[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()) / pixel

    def batch_images(start: int, stop: int) -> torch.Tensor:
        ctf = None
        if cfg.ctf:
            p = params.iloc[start:stop]
            ctf = ctf_2d(
                box,
                pixel,
                optics=optics,
                defocus_u_angstrom=torch.tensor(p["rlnDefocusU"].to_numpy()),
                defocus_v_angstrom=torch.tensor(p["rlnDefocusV"].to_numpy()),
                defocus_angle_deg=torch.tensor(p["rlnDefocusAngle"].to_numpy()),
            )
        return clean_images(projector, rotations[start:stop], offsets[start:stop], ctf)

    signal_var = float(
        np.mean([batch_images(s, e).var(dim=(1, 2)).mean() for s, e in batches(min(cfg.n_particles, 512), BATCH)])
    )
    if signal_var <= 0:
        raise EmberInputError(cfg.map_path or cfg.model_path, "the map projects to zero", "check the map")
    target = 1.0 if cfg.snr is None else cfg.snr
    scale = math.sqrt(target / signal_var)

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    writer = StackWriter(out / "particles.mrcs", cfg.n_particles, box, pixel)
    try:
        for i, (start, stop) in enumerate(batches(cfg.n_particles, BATCH)):
            images = batch_images(start, stop) * scale
            if cfg.snr is not None:
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
                images += torch.randn(images.shape, generator=gen)
            writer.write(start, images.numpy())
            if progress:
                progress(stop, cfg.n_particles)
    except BaseException:
        writer.close(ok=False)
        raise
    writer.close()
    write_map(out / "truth.mrc", vol * scale, pixel)
    write_particles_star(out / "particles.star", particle_table(cfg, params, box, pixel))
    write_job_json(out, "simulate", cfg)
    logger.info("simulated %d particles of box %d at %.3f Å/px into %s", cfg.n_particles, box, pixel, out)
    return out / "particles.star"


def particle_table(cfg: SimulateConfig, params: pd.DataFrame, box: int, pixel: float) -> ParticleTable:
    """RELION 3.1 tables holding the true parameters."""
    n = cfg.n_particles
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [cfg.amplitude_contrast],
            "rlnSphericalAberration": [cfg.cs_mm],
            "rlnVoltage": [cfg.voltage_kv],
            "rlnImagePixelSize": [pixel],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
            "rlnCtfDataAreCtfPremultiplied": [0],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
            "rlnMicrographName": ["simulated.mrc"] * n,
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )
    particles = pd.concat([particles, params], axis=1)
    if not cfg.ctf:
        particles = particles.drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"])
    else:
        particles["rlnPhaseShift"] = 0.0
        particles["rlnCtfBfactor"] = 0.0
        particles["rlnCtfScalefactor"] = 1.0
    return ParticleTable(optics, particles)
