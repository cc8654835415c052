"""A particle data set: a RELION STAR table plus its image stacks, read lazily a batch at a time.

Images are (B, N, N) float32 in real space, origin at pixel N/2 (RELION convention).
Stacks are memory-mapped, so memory is bounded by the batch, not by the number of particles.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ember.errors import EmberInputError
from ember.io.mrc import open_stack
from ember.io.star import ParticleTable, read_particles_star

logger = logging.getLogger(__name__)

REQUIRED_OPTICS = ("rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize")
CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV")
CTF_OPTICS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
PREMULTIPLIED = "rlnCtfDataAreCtfPremultiplied"  # RELION's label (EMDL_OPTIMISER_DATA_ARE_CTF_PREMULTIPLIED)
ANGLE_PRIORS = ("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior")
OFFSET_PRIORS = ("rlnOriginXPriorAngst", "rlnOriginYPriorAngst")
# Optics corrections RELION applies and Ember does not, with their "no correction" value
# (Zernike columns hold lists, "[c1,c2,...]": no correction when empty or all zero).
CORRECTIONS = {
    "rlnBeamTiltX": ("beam tilt", 0.0),
    "rlnBeamTiltY": ("beam tilt", 0.0),
    "rlnOddZernike": ("odd Zernike terms", None),
    "rlnEvenZernike": ("even Zernike terms", None),
    "rlnMagMat00": ("anisotropic magnification", 1.0),
    "rlnMagMat01": ("anisotropic magnification", 0.0),
    "rlnMagMat10": ("anisotropic magnification", 0.0),
    "rlnMagMat11": ("anisotropic magnification", 1.0),
}
SINGLE_PARTICLE_ONLY = "Ember handles single-particle data only (use RELION's tomography pipeline)"


def _unset_prior(values: np.ndarray) -> np.ndarray:
    """RELION's "not set" sentinel for priors: 999 (tested as 998.99 < v < 999.01)."""
    return (values > 998.99) & (values < 999.01)


def _zernike_nonzero(value) -> bool:
    """A Zernike list cell ("[0.01,-0.002]") holds a nonzero term (or cannot be read)."""
    text = str(value).strip().strip("[]").replace(",", " ").split()
    try:
        return any(float(v) != 0 for v in text)
    except ValueError:
        return True


def _applies_correction(name: str, values) -> bool:
    """Whether a correction column holds a value other than "no correction" anywhere."""
    _, neutral = CORRECTIONS[name]
    if neutral is None:
        return any(_zernike_nonzero(v) for v in values)
    x = np.asarray([float(v) if _is_number(v) else np.nan for v in values])
    return bool((~(np.abs(x - neutral) <= 1e-6)).any())


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def parse_image_name(name: str) -> tuple[int, str]:
    """`"000123@stack.mrcs"` → (122, "stack.mrcs"): 0-based slice, stack path."""
    if "@" not in name:
        return 0, name
    index, path = name.split("@", 1)
    return int(index) - 1, path


def find_stack(star_dir: Path, stack: str) -> Path | None:
    """Where an image stack named in a STAR file in `star_dir` lies: beside the STAR first, then from
    the current folder (RELION's project-relative names); None if in neither."""
    for path in (star_dir / stack, Path(stack)):
        if path.exists():
            return path
    return None


def rebase_image_names(names: pd.Series, star_dir: str | Path, out_dir: str | Path) -> pd.Series:
    """rlnImageName values read from a STAR in `star_dir`, for a STAR written in `out_dir`: a relative
    stack path found beside the input STAR (Ember's first reading) becomes relative to `out_dir`;
    absolute paths, names that also resolve from the current folder (RELION's project-relative
    names) and stacks not found are kept as they are."""
    star_dir, out_dir = Path(star_dir).resolve(), Path(out_dir).resolve()
    if star_dir == out_dir:
        return names
    parts = names.astype(str).str.partition("@")
    has_slice = parts[1] == "@"
    stacks = parts[2].where(has_slice, parts[0])

    def rebase(stack: str) -> str:
        found = find_stack(star_dir, stack)
        if found is None or Path(stack).is_absolute() or (Path(stack).exists() and Path(stack).samefile(found)):
            return stack
        return os.path.relpath(found.resolve(), out_dir)

    new_stacks = stacks.map({stack: rebase(stack) for stack in dict.fromkeys(stacks)})
    return (parts[0] + "@" + new_stacks).where(has_slice, new_stacks)


@dataclass(frozen=True)
class Optics:
    """One optics group: pixel size (Å), box (px), voltage (kV), Cs (mm), amplitude contrast,
    images CTF-premultiplied, and its rlnOpticsGroup number. Voltage, Cs and amplitude contrast
    are NaN when the STAR has no CTF columns and does not give them."""

    pixel_size: float
    box: int
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    ctf_premultiplied: bool = False
    number: int = 1


class ParticleDataSet:
    """STAR table + lazily opened stacks. Indices are 0-based rows of the particle table."""

    def __init__(self, table: ParticleTable, star_path: str | Path, *, mixed_sizes: bool = False) -> None:
        """`mixed_sizes`: accept optics groups with different pixel or box sizes (for jobs that handle
        each group at its own size, as `ember reconstruct`); otherwise they are refused."""
        self.table = table
        self.star_path = Path(star_path)
        self._mixed_sizes = mixed_sizes
        self._check_single_particle()
        self._check_corrections()
        self._check_columns()
        self.optics_groups, self._group_index = self._read_optics()
        self.optics = self.optics_groups[0]  # the first group, for callers that assume one
        self.pixel_size = self.optics.pixel_size  # the first group's: the model's with mixed sizes
        self.box = self.optics.box
        self._group_pixel = np.array([o.pixel_size for o in self.optics_groups])[self._group_index]
        names = table.particles["rlnImageName"].astype(str).map(parse_image_name)
        self._slices = np.array([n[0] for n in names], dtype=np.int64)
        self._stack_of = [n[1] for n in names]
        self._whole_files = {name for name in table.particles["rlnImageName"].astype(str) if "@" not in name}
        self._stacks: dict[str, object] = {}
        self._header_notes: list[str] = []
        self._header_pixels: list[tuple[Path, float, float]] = []
        for stack in dict.fromkeys(self._stack_of):
            self._open(stack)
        self._warn_headers()

    @classmethod
    def from_star(cls, path: str | Path, *, mixed_sizes: bool = False) -> ParticleDataSet:
        return cls(read_particles_star(path), path, mixed_sizes=mixed_sizes)

    def __len__(self) -> int:
        return len(self.table.particles)

    @property
    def has_ctf(self) -> bool:
        return all(c in self.table.particles for c in CTF_COLUMNS)

    @property
    def n_optics_groups(self) -> int:
        return len(self.optics_groups)

    @property
    def uniform_sizes(self) -> bool:
        """Whether all optics groups share one pixel size and box."""
        return len({(o.pixel_size, o.box) for o in self.optics_groups}) == 1

    def size_classes(self, indices: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
        """Particles `indices` split by their optics groups' (box px, pixel Å): [(N_g, a_g, rows)],
        in order of first appearance; one entry when all groups share one size."""
        indices = np.asarray(indices, dtype=np.int64)
        boxes = np.array([o.box for o in self.optics_groups])[self._group_index[indices]]
        pixels = self._group_pixel[indices]
        out = []
        for box, pixel in dict.fromkeys(zip(boxes.tolist(), pixels.tolist(), strict=True)):
            out.append((int(box), float(pixel), indices[(boxes == box) & (pixels == pixel)]))
        return out

    def pixel_sizes(self) -> np.ndarray:
        """(n,) float64: each particle's optics-group pixel size (Å)."""
        return self._group_pixel.copy()

    def optics_group_index(self) -> np.ndarray:
        """(n,) int64: each particle's 0-based index into `optics_groups`."""
        return self._group_index.copy()

    def optics_group_counts(self) -> np.ndarray:
        """(G,) int64: the number of particles in each optics group."""
        return np.bincount(self._group_index, minlength=self.n_optics_groups)

    def ctf_premultiplied(self) -> np.ndarray:
        """(n,) bool: whether each particle's image is already multiplied by its CTF."""
        flags = np.array([o.ctf_premultiplied for o in self.optics_groups], dtype=bool)
        return flags[self._group_index]

    def _check_single_particle(self) -> None:
        """Refuse tomography STAR files (RELION 4 subtomograms, RELION 5 2D tilt stacks)."""
        if any("rlnTomoName" in df for df in (self.table.particles, self.table.optics)):
            raise EmberInputError(
                self.star_path,
                "tomography particles (rlnTomoName) are not single-particle images",
                SINGLE_PARTICLE_ONLY,
            )
        if "rlnImageDimensionality" in self.table.optics:
            dims = self.table.optics["rlnImageDimensionality"].astype(float)
            if (dims == 3).any():
                raise EmberInputError(
                    self.star_path,
                    "3D particle images (rlnImageDimensionality 3 in data_optics) are subtomograms, "
                    "not single-particle images",
                    SINGLE_PARTICLE_ONLY,
                )

    def _check_corrections(self) -> None:
        """Refuse optics corrections (beam tilt, Zernike terms, magnification matrix) with values that
        would change the images' model: Ember does not apply them, so it does not drop them silently."""
        tables = (self.table.optics, self.table.particles)
        found = [n for n in CORRECTIONS if any(n in df and _applies_correction(n, df[n]) for df in tables)]
        if found:
            kinds = ", ".join(dict.fromkeys(CORRECTIONS[n][0] for n in found))
            raise EmberInputError(
                self.star_path,
                f"optics corrections Ember does not apply: {kinds} ({', '.join(found)})",
                "remove the columns to ignore the correction, at your own risk",
            )

    def _check_columns(self) -> None:
        if "rlnImageName" not in self.table.particles:
            raise EmberInputError(
                self.star_path,
                "particle table has no rlnImageName column",
                "add rlnImageName (slice@stack.mrcs) for every particle",
            )
        if "rlnImageSize" not in self.table.optics:  # RELION 3.0 files: the box from the first stack
            _, stack = parse_image_name(str(self.table.particles["rlnImageName"].iloc[0]))
            mrc = open_stack(self._resolve(stack))
            self.table.optics["rlnImageSize"] = int(mrc.data.shape[-1])
            mrc.close()
        missing = [c for c in REQUIRED_OPTICS if c not in self.table.optics]
        if missing:
            raise EmberInputError(self.star_path, f"data_optics lacks {', '.join(missing)}", "add the columns")

    def _read_optics(self) -> tuple[list[Optics], np.ndarray]:
        """The optics groups the particles use (in rlnOpticsGroup order) and each particle's index."""
        optics = self.table.optics
        numbers = optics["rlnOpticsGroup"].astype(int)
        if numbers.duplicated().any():
            raise EmberInputError(
                self.star_path,
                f"data_optics lists optics group {int(numbers[numbers.duplicated()].iloc[0])} twice",
                "give each optics group one row",
            )
        of_particle = self.table.particles["rlnOpticsGroup"].astype(int).to_numpy()
        used = np.unique(of_particle)
        rows = optics[numbers.isin(used)].assign(_n=numbers).sort_values("_n")
        if len(rows) != len(used):
            absent = sorted(set(used.tolist()) - set(numbers.tolist()))
            raise EmberInputError(
                self.star_path,
                f"particles refer to optics group(s) {absent} missing from data_optics",
                "add the groups to data_optics",
            )
        pixels = rows["rlnImagePixelSize"].astype(float).round(5).to_numpy()
        boxes = rows["rlnImageSize"].astype(int).to_numpy()
        if not self._mixed_sizes and (len(set(pixels)) > 1 or len(set(boxes)) > 1):
            listed = zip(rows["_n"], pixels, boxes, strict=True)
            sizes = ", ".join(f"group {int(n)}: {p:g} Å, {b} px" for n, p, b in listed)
            raise EmberInputError(
                self.star_path,
                f"optics groups with different pixel or box sizes ({sizes}) are not yet supported by this job "
                "(ember reconstruct and refine3d handle them)",
                "rescale the particles to one pixel size and box (relion_image_handler --rescale_angpix "
                "--new_box) or re-extract them at one pixel size",
            )
        for box in boxes:
            if box % 2:
                raise EmberInputError(self.star_path, f"box {box} is odd", "re-extract with an even box")
        each = zip(rows.iterrows(), pixels, boxes, strict=True)
        groups = [self._optics_row(row, float(p), int(b)) for (_, row), p, b in each]
        return groups, np.searchsorted(used, of_particle).astype(np.int64)

    def _optics_row(self, row, pixel_size: float, box: int) -> Optics:
        """One data_optics row → Optics; refuses missing CTF constants when the particles have CTFs."""
        number = int(row["rlnOpticsGroup"])
        values = {}
        for name in CTF_OPTICS:
            value = float(row[name]) if name in row.index else float("nan")
            if not np.isfinite(value) and self.has_ctf:
                raise EmberInputError(
                    self.star_path,
                    f"optics group {number} has no {name} but the particles have CTF parameters",
                    f"add {name} to data_optics (RELION refuses such files too)",
                )
            values[name] = value
        q0 = values["rlnAmplitudeContrast"]
        if self.has_ctf and not (0 <= q0 < 1 and values["rlnVoltage"] > 0):
            raise EmberInputError(
                self.star_path,
                f"optics group {number}: voltage {values['rlnVoltage']} kV or amplitude contrast {q0} out of range",
                "give voltage > 0 kV and 0 ≤ rlnAmplitudeContrast < 1",
            )
        premult = row[PREMULTIPLIED] if PREMULTIPLIED in row.index else 0
        return Optics(
            pixel_size=pixel_size,
            box=box,
            voltage_kv=values["rlnVoltage"],
            cs_mm=values["rlnSphericalAberration"],
            amplitude_contrast=q0,
            ctf_premultiplied=bool(int(premult)) if np.isfinite(float(premult)) else False,
            number=number,
        )

    def _resolve(self, stack: str) -> Path:
        path = find_stack(self.star_path.parent, stack)
        if path is not None:
            return path
        raise EmberInputError(
            self.star_path.parent / stack,
            f"image stack named in {self.star_path} not found",
            "run from the RELION project folder or fix rlnImageName",
        )

    def _open(self, stack: str) -> None:
        path = self._resolve(stack)
        mrc = open_stack(path, self._header_notes)
        shape = mrc.data.shape
        ny, nx = shape[-2:]
        if stack in self._whole_files and len(shape) == 3 and shape[0] > 1:
            mrc.close()
            raise EmberInputError(
                path,
                f"image named without slice@ is 3D ({shape[0]}×{ny}×{nx}): a subtomogram or tilt stack, "
                "not a single-particle image",
                SINGLE_PARTICLE_ONLY,
            )
        rows = np.array([s == stack for s in self._stack_of])
        groups = [self.optics_groups[g] for g in np.unique(self._group_index[rows])]
        for group in groups:
            if (ny, nx) != (group.box, group.box):
                mrc.close()
                raise EmberInputError(
                    path,
                    f"images are {nx}×{ny} px but the optics group says {group.box} (rlnOpticsGroup {group.number})",
                    "fix rlnImageSize in data_optics or re-extract",
                )
        pixel = float(mrc.voxel_size.x)
        star_pixel = groups[0].pixel_size
        if abs(pixel - star_pixel) > 1e-3 * star_pixel:  # RELION uses the STAR's: so do we, saying so
            self._header_pixels.append((path, pixel, star_pixel))
        n = 1 if len(shape) == 2 else shape[0]
        used = self._slices[rows]
        if used.max() >= n or used.min() < 0:
            mrc.close()
            raise EmberInputError(
                path,
                f"STAR refers to slice {used.max() + 1} but the stack has {n}",
                "fix rlnImageName or the stack",
            )
        self._stacks[stack] = mrc

    def _warn_headers(self) -> None:
        """One warning per kind for the stacks opened: nonstandard headers, header pixel sizes
        that differ from the STAR's (the first stack named, the others counted)."""

        def more(n: int) -> str:
            return f" (and {n} more stack{'s' if n > 1 else ''})" if n else ""

        if self._header_notes:
            logger.warning("%s%s", self._header_notes[0], more(len(self._header_notes) - 1))
        if self._header_pixels:
            path, pixel, star_pixel = self._header_pixels[0]
            logger.warning(
                "%s: header pixel size %.4f Å differs from the STAR's rlnImagePixelSize %.4f Å%s; "
                "using the STAR's, as RELION does",
                path, pixel, star_pixel, more(len(self._header_pixels) - 1),
            )

    def images(self, indices: np.ndarray) -> np.ndarray:
        """Read particles `indices` → (B, N, N) float32, N their optics groups' box (one box for all
        `indices`). Raises on NaN/inf pixels."""
        boxes = {self.optics_groups[g].box for g in self._group_index[np.asarray(indices, dtype=np.int64)]}
        if len(boxes) > 1:
            raise ValueError(f"particles of optics groups with different boxes {sorted(boxes)} read together")
        box = boxes.pop() if boxes else self.box
        out = np.empty((len(indices), box, box), dtype=np.float32)
        for b, i in enumerate(indices):
            data = self._stacks[self._stack_of[i]].data
            out[b] = data[self._slices[i]] if data.ndim == 3 else data
        if not np.isfinite(out).all():
            bad = int(indices[np.flatnonzero(~np.isfinite(out).all(axis=(1, 2)))[0]])
            raise EmberInputError(
                self._resolve(self._stack_of[bad]),
                f"particle {self._slices[bad] + 1} holds NaN or infinite pixels",
                "re-extract or remove it from the STAR",
            )
        return out

    def image_names_relative_to(self, folder: str | Path) -> list[str]:
        """rlnImageName values with stack paths rewritten relative to `folder` (for a STAR written
        there: Ember reads it from anywhere, RELION when run from that folder)."""
        folder = Path(folder).resolve()
        rel = {s: os.path.relpath(self._resolve(s).resolve(), folder) for s in dict.fromkeys(self._stack_of)}
        return [f"{i + 1:06d}@{rel[s]}" for i, s in zip(self._slices, self._stack_of, strict=True)]

    def column(self, name: str, default: float | None = None) -> np.ndarray:
        """A numeric particle column as float64, or `default` everywhere if absent."""
        df = self.table.particles
        if name in df:
            return df[name].to_numpy(dtype=np.float64)
        if default is None:
            raise EmberInputError(self.star_path, f"particle table has no {name} column", "add it")
        return np.full(len(df), default, dtype=np.float64)

    def angles_deg(self) -> np.ndarray:
        """(n, 3) RELION (rot, tilt, psi) in degrees."""
        return np.stack([self.column(f"rlnAngle{a}") for a in ("Rot", "Tilt", "Psi")], axis=1)

    def offsets_px(self) -> np.ndarray:
        """(n, 2) rlnOriginX/YAngst converted to pixels of each particle's optics group."""
        angst = np.stack([self.column(f"rlnOrigin{a}Angst", 0.0) for a in ("X", "Y")], axis=1)
        return angst / self._group_pixel[:, None]

    def prior_angles_deg(self) -> np.ndarray | None:
        """(n, 3) rlnAngle{Rot,Tilt,Psi}Prior in degrees; NaN where unset (absent column or 999).
        None if the STAR has none of the three columns."""
        return self._priors(ANGLE_PRIORS)

    def prior_offsets_px(self) -> np.ndarray | None:
        """(n, 2) rlnOrigin{X,Y}PriorAngst in pixels of each particle's optics group; NaN where unset
        (absent column or 999 Å). None if the STAR has neither column."""
        priors = self._priors(OFFSET_PRIORS)
        return None if priors is None else priors / self._group_pixel[:, None]

    def _priors(self, names: tuple[str, ...]) -> np.ndarray | None:
        if not any(n in self.table.particles for n in names):
            return None
        out = np.stack([self.column(n, np.nan) for n in names], axis=1)
        out[_unset_prior(out)] = np.nan
        return out

    def group_numbers(self) -> np.ndarray:
        """(n,) int64 rlnGroupNumber (1-based scale groups), all 1 if the column is absent."""
        groups = self.column("rlnGroupNumber", 1.0)
        if not (np.isfinite(groups).all() and (groups >= 1).all() and (groups == np.round(groups)).all()):
            raise EmberInputError(self.star_path, "rlnGroupNumber must be integers ≥ 1", "fix the column")
        return groups.astype(np.int64)

    def close(self) -> None:
        for mrc in self._stacks.values():
            mrc.close()
        self._stacks.clear()


def check_map_matches(map_path: str | Path, box: int, pixel_size: float, dataset: ParticleDataSet) -> None:
    """Raise if a reference map's box or pixel size (Å) disagrees with the particles'. A header pixel
    size of 0 (unset) or 1.0 Å (a common placeholder) is taken as the particles', with a warning."""
    if box != dataset.box:
        raise EmberInputError(
            map_path,
            f"map box {box} differs from the particles' {dataset.box} ({dataset.star_path})",
            "resample the map to the particles' box",
        )
    if abs(pixel_size - dataset.pixel_size) <= 1e-3 * dataset.pixel_size:
        return
    if pixel_size == 0 or abs(pixel_size - 1.0) < 1e-6:  # header never set (0) or the common placeholder 1.0 Å
        logger.warning(
            "%s: map header pixel size %.4f Å (unset or a placeholder) differs from the particles' %.4f Å; "
            "the box matches, so the map is taken at the particles' pixel size",
            map_path, pixel_size, dataset.pixel_size,
        )
        return
    raise EmberInputError(
        map_path,
        f"map pixel size {pixel_size:.4f} Å differs from the particles' "
        f"{dataset.pixel_size:.4f} Å ({dataset.star_path})",
        "fix the map header or rescale the map",
    )
