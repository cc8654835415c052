"""`ember simulate`: ground-truth particle data sets from a map or an atomic model.

Forward model: X = shift(C · P_A V, −t) + noise, with A uniform on SO(3) (or given), t uniform
sub-pixel offsets, a per-particle astigmatic CTF and white Gaussian noise. Images are scaled so
that the noise has unit variance per pixel (RELION-normalised particles); SNR is the variance of
the noise-free CTF-modulated image over the whole box divided by the noise variance, averaged over
particles. `truth.mrc` is written on the same scale as the images.

Mixtures of structural states (3D-classification ground truth): several maps of one box and pixel
size, or one atomic model with several chain sets, each state's map in the frame of the first
state's centroid. Particle i is given state k (counts from `fractions`, seeded random order) and is
projected from that state's map; one noise scale for all, set by the first state's signal, so the
SNR is the first state's. The true state is written as rlnClassNumber (1-based) and each state's
map as truth_classNNN.mrc on the images' scale.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ember.errors import EmberInputError
from ember.io.atomic_model import model_centroid, model_density, read_model
from ember.io.mrc import StackWriter, read_map, write_map
from ember.io.star import ParticleTable, read_particles_star, write_particles_star
from ember.jobs.common import Progress, batches, job_report, write_job_json
from ember.maths.rotations import euler_to_matrix, matrix_to_euler, random_rotations
from ember.operators.ctf import CtfOptics, ctf_2d
from ember.operators.forward import clean_images
from ember.operators.projector import Projector
from ember.report.html import Report
from ember.report.plots import figure_central_sections, figure_image_montage

logger = logging.getLogger(__name__)
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
BATCH = 256  # fixed so that results under --seed do not depend on anything else


@dataclass(frozen=True)
class SimulateConfig:
    output: Path
    n_particles: int
    map_path: Path | Sequence[Path] | None = None  # one map, or one per state (same box and pixel size)
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
    states: tuple[tuple[str, ...], ...] | None = None  # chain sets of model_path, one per state
    fractions: tuple[float, ...] | None = None  # share of particles per state; default equal

    def __post_init__(self) -> None:
        if self.map_path is not None and not isinstance(self.map_path, (str, Path)):
            paths = tuple(self.map_path)  # several maps stay a tuple; one collapses to a Path
            if not paths:
                raise EmberInputError(None, "give at least one --map", "")
            object.__setattr__(self, "map_path", paths if len(paths) > 1 else Path(paths[0]))
        if self.states is not None:
            object.__setattr__(self, "states", tuple(tuple(str(c) for c in chains) for chains in self.states))
        if self.fractions is not None:
            object.__setattr__(self, "fractions", tuple(float(x) for x in self.fractions))
        if (self.map_path is None) == (self.model_path is None):
            raise EmberInputError(None, "give exactly one of --map or --model", "")
        if self.states is not None:
            if self.model_path is None:
                raise EmberInputError(None, "--states needs --model", "with maps, repeat --map once per state")
            if self.chains is not None:
                raise EmberInputError(None, "give --chains or --states, not both", "")
            if not self.states:
                raise EmberInputError(None, "--states is empty", 'e.g. --states "A,B,C,D;A,B,C"')
            for k, chains in enumerate(self.states):
                if not chains or not all(chains):
                    raise EmberInputError(None, f"state {k + 1} of --states has an empty chain name or none",
                                          'e.g. --states "A,B,C,D;A,B,C"')
        if self.fractions is not None:
            f = self.fractions
            if len(f) != self.n_states:
                raise EmberInputError(
                    None, f"--fractions has {len(f)} values for {self.n_states} states", "give one per state"
                )
            if not all(math.isfinite(x) and x >= 0 for x in f) or abs(math.fsum(f) - 1) > 1e-6:
                raise EmberInputError(
                    None, f"--fractions must be ≥ 0 and sum to 1 (got {','.join(f'{x:g}' for x in f)})", ""
                )
        if self.n_particles < 1:
            raise EmberInputError(None, f"--n must be ≥ 1 (got {self.n_particles})", "")
        if self.box is not None and (self.box < 8 or self.box % 2):
            raise EmberInputError(None, f"--box must be even and ≥ 8 (got {self.box})", "")
        if self.snr is not None and self.snr <= 0:
            raise EmberInputError(None, f"--snr must be > 0 (got {self.snr})", "omit it for noise-free")
        if not 0 <= self.defocus_min_um <= self.defocus_max_um:
            raise EmberInputError(None, "--defocus needs 0 ≤ MIN ≤ MAX (µm)", "")

    @property
    def map_paths(self) -> tuple[Path, ...]:
        """The maps given, one per state (empty with a model)."""
        if self.map_path is None:
            return ()
        if isinstance(self.map_path, (str, Path)):
            return (Path(self.map_path),)
        return tuple(Path(p) for p in self.map_path)

    @property
    def n_states(self) -> int:
        """Number of structural states: maps given, or chain sets in `states`, else 1."""
        if self.map_path is not None:
            return len(self.map_paths)
        return len(self.states) if self.states else 1


def load_states(cfg: SimulateConfig) -> tuple[list[np.ndarray], float]:
    """The ground-truth map (N, N, N) of every state and their pixel size in Å.

    Maps must share box and pixel size. Model states are all put in the frame of the first
    state's centroid (that point at voxel N/2), so that they differ only where their chains do."""
    if cfg.map_path is not None:
        vols: list[np.ndarray] = []
        first = 0.0
        for path in cfg.map_paths:
            vol, pixel = read_map(path)
            if cfg.pixel_size and abs(cfg.pixel_size - pixel) > 1e-3 * pixel:
                raise EmberInputError(
                    path,
                    f"header pixel size {pixel} Å differs from --angpix {cfg.pixel_size}",
                    "omit --angpix or fix the header",
                )
            if not vols:
                first = pixel
            elif vol.shape != vols[0].shape or abs(pixel - first) > 1e-3 * first:
                raise EmberInputError(
                    path,
                    f"box {vol.shape[0]} px at {pixel:.4f} Å/px differs from {cfg.map_paths[0]}'s "
                    f"{vols[0].shape[0]} px at {first:.4f} Å/px",
                    "give maps of one box and pixel size (relion_image_handler --rescale_angpix / --new_box)",
                )
            vols.append(vol)
        return vols, first
    if cfg.box is None or cfg.pixel_size is None:
        raise EmberInputError(cfg.model_path, "--model needs --box and --angpix", "add them")
    chain_sets = cfg.states if cfg.states else (cfg.chains,)
    structures = []
    for k, chains in enumerate(chain_sets):
        try:
            structures.append(read_model(cfg.model_path, list(chains) if chains else None))
        except EmberInputError as exc:
            where = f"state {k + 1} ({','.join(chains)}): " if cfg.states and len(cfg.states) > 1 else ""
            raise EmberInputError(cfg.model_path, where + exc.problem, exc.fix) from None
    centre = model_centroid(structures[0]) if len(structures) > 1 else None
    vols = []
    for k, st in enumerate(structures):
        try:
            vols.append(
                model_density(
                    st,
                    box=cfg.box,
                    pixel_size=cfg.pixel_size,
                    bfactor_floor=cfg.bfactor_floor,
                    centre_angstrom=centre,
                )
            )
        except EmberInputError as exc:
            where = f"state {k + 1}: " if len(structures) > 1 else ""
            raise EmberInputError(cfg.model_path, where + exc.problem, exc.fix) from None
    return vols, cfg.pixel_size


def state_labels(cfg: SimulateConfig, rng: np.random.Generator) -> np.ndarray:
    """(n,) int 0-based state of every particle, in a seeded random order.

    State k gets round(F_k·n) − round(F_{k−1}·n) particles, F the cumulative fractions (equal by
    default): with two states that is round(f_1·n) and the remainder; the counts always sum to n."""
    n, k = cfg.n_particles, cfg.n_states
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    fractions = cfg.fractions or (1.0 / k,) * k
    bounds = [0, *(round(c * n) for c in np.cumsum(fractions)[:-1]), n]
    counts = np.maximum(np.diff(bounds), 0)
    return rng.permutation(np.repeat(np.arange(k), counts))


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
            _, pixel = read_map(cfg.map_paths[0])
            if abs(star_pixel - pixel) > 1e-3 * pixel:
                raise EmberInputError(
                    cfg.map_paths[0],
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
    """Write truth.mrc, particles.mrcs and particles.star into cfg.output; returns the STAR path.

    With ≥ 2 states also truth_class001.mrc, … and rlnClassNumber; one state gives exactly the
    single-map output."""
    vols, pixel = load_states(cfg)
    box = vols[0].shape[0]
    rng = np.random.default_rng(cfg.seed)
    params = draw_parameters(cfg, rng)
    params[["rlnOriginXAngst", "rlnOriginYAngst"]] *= pixel
    labels = state_labels(cfg, rng)
    projectors = [Projector.from_volume(torch.from_numpy(vol)) for vol in vols]
    optics = CtfOptics(cfg.voltage_kv, cfg.cs_mm, cfg.amplitude_contrast)
    rotations = euler_to_matrix(torch.tensor(params[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()))
    offsets = torch.tensor(params[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()) / pixel

    def batch_images(start: int, stop: int, own_states: bool = True) -> torch.Tensor:
        """Noise-free images of particles [start, stop), each from its own state's map (or, with
        own_states False, all from the first state's)."""
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
        lab = labels[start:stop]
        if not own_states or len(projectors) == 1:
            return clean_images(projectors[0], rotations[start:stop], offsets[start:stop], ctf)
        images = torch.empty((stop - start, box, box), dtype=torch.float32)
        for k in np.unique(lab):
            idx = torch.from_numpy(np.flatnonzero(lab == k))
            members = start + idx
            images[idx] = clean_images(
                projectors[k], rotations[members], offsets[members], None if ctf is None else ctf[idx]
            )
        return images

    signal_var = float(
        np.mean(
            [
                batch_images(s, e, own_states=False).var(dim=(1, 2)).mean()
                for s, e in batches(min(cfg.n_particles, 512), BATCH)
            ]
        )
    )
    if signal_var <= 0:
        where = cfg.map_paths[0] if cfg.map_path is not None else cfg.model_path
        raise EmberInputError(where, "the map projects to zero", "check the map")
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
            if start == 0:
                shown = images[:8].numpy().copy()
            if progress:
                progress(stop, cfg.n_particles)
    except BaseException:
        writer.close(ok=False)
        raise
    writer.close()
    write_map(out / "truth.mrc", vols[0] * scale, pixel)
    if len(vols) > 1:
        for k, vol in enumerate(vols):
            write_map(out / f"truth_class{k + 1:03d}.mrc", vol * scale, pixel)
    write_particles_star(out / "particles.star", particle_table(cfg, params, box, pixel, labels))
    plain = replace(cfg, map_path=tuple(str(p) for p in cfg.map_paths)) if len(cfg.map_paths) > 1 else cfg
    write_job_json(out, "simulate", plain)  # (several map paths as strings: JSON has no Path)
    clean = (batch_images(0, len(shown)) * scale).numpy()
    _report(cfg, plain, vols, scale, np.concatenate([clean, shown]), labels, pixel).write(out / "report.html")
    logger.info("simulated %d particles of box %d at %.3f Å/px into %s", cfg.n_particles, box, pixel, out)
    if len(vols) > 1:
        counts = np.bincount(labels, minlength=len(vols))
        logger.info("states: %s particles", ", ".join(f"{k + 1}: {c}" for k, c in enumerate(counts)))
    return out / "particles.star"


def _report(cfg: SimulateConfig, settings: SimulateConfig, vols: list[np.ndarray], scale: float, examples: np.ndarray,
            labels: np.ndarray, pixel: float) -> Report:
    """report.html: the data set's numbers, the truth's central sections and example images,
    (2n, N, N): n without noise, then the same n as written."""
    out = Path(cfg.output)
    report = job_report("simulate", f"simulate: {cfg.n_particles} particles ({out.name})", settings)
    box = vols[0].shape[0]
    report.number("particles", cfg.n_particles)
    report.number("box, pixel size", f"{box} px, {pixel:.3f} Å/px")
    report.number("SNR (signal variance / noise variance over the box)", "noise-free" if cfg.snr is None else cfg.snr)
    if cfg.ctf:
        report.number("defocus", f"{cfg.defocus_min_um}–{cfg.defocus_max_um} µm, {cfg.voltage_kv} kV, "
                                 f"Cs {cfg.cs_mm} mm, amplitude contrast {cfg.amplitude_contrast}")
    if len(vols) > 1:
        counts = np.bincount(labels, minlength=len(vols))
        report.number("states", ", ".join(f"{k + 1}: {c} particles" for k, c in enumerate(counts)))
    names = ["truth"] if len(vols) == 1 else [f"state {k + 1}" for k in range(len(vols))]
    report.figure("Central sections of the ground truth (truth.mrc; per state when several).",
                  figure_central_sections([v * scale for v in vols], names))
    n = len(examples) // 2
    titles = [f"{i + 1} clean" for i in range(n)] + [f"{i + 1} as written" for i in range(n)]
    report.figure("The first particles without noise (top, CTF applied) and as written to particles.mrcs (bottom).",
                  figure_image_montage(examples, titles, columns=n))
    return report


def particle_table(
    cfg: SimulateConfig, params: pd.DataFrame, box: int, pixel: float, labels: np.ndarray | None = None
) -> ParticleTable:
    """RELION 3.1 tables holding the true parameters (and the true 1-based rlnClassNumber when
    `labels`, 0-based states, hold ≥ 2 states)."""
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
    if labels is not None and cfg.n_states > 1:
        particles["rlnClassNumber"] = labels.astype(int) + 1
    return ParticleTable(optics, particles)
