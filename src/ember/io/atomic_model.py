"""Atomic models (PDB/mmCIF) → density maps on a cubic grid through `gemmi`."""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np

from ember.errors import EmberInputError


def read_model(path: str | Path, chains: list[str] | None = None) -> gemmi.Structure:
    """Read a PDB/mmCIF file (gzip allowed): first model, biological assembly 1 when the file
    describes one, waters removed; `chains` keeps only those chain names."""
    path = Path(path)
    if not path.exists():
        raise EmberInputError(path, "file not found", "check the path")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as exc:
        raise EmberInputError(path, f"not a readable PDB/mmCIF file ({exc})", "check the file") from None
    st.setup_entities()
    if chains is None and st.assemblies:
        how = gemmi.HowToNameCopiedChain.Short
        model = gemmi.make_assembly(st.assemblies[0], st[0], how)
        st = gemmi.Structure()
        st.add_model(model)
    st.remove_waters()
    while len(st) > 1:
        del st[1]
    if chains is not None:
        present = [ch.name for ch in st[0]]
        missing = [c for c in chains if c not in present]
        if missing:
            raise EmberInputError(
                path, f"no chain {', '.join(missing)} in the model (chains: {', '.join(present)})", "check the names"
            )
        for name in [ch.name for ch in st[0] if ch.name not in chains]:
            st[0].remove_chain(name)
    if st[0].count_atom_sites() == 0:
        raise EmberInputError(path, "no atoms left after selecting chains", "check --chains")
    return st


def atom_positions(st: gemmi.Structure) -> np.ndarray:
    """(M, 3) float64 Cartesian positions (x, y, z) in Å of every atom of the first model."""
    return np.array([a.pos.tolist() for ch in st[0] for r in ch for a in r])


def model_centroid(st: gemmi.Structure) -> tuple[float, float, float]:
    """Unweighted mean (x, y, z) in Å of the atoms of the first model."""
    return tuple(float(v) for v in atom_positions(st).mean(axis=0))


def model_density(
    st: gemmi.Structure,
    *,
    box: int,
    pixel_size: float,
    bfactor_floor: float = 20.0,
    centre_angstrom: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Electron-scattering density of a structure, centroid (or `centre_angstrom`) at voxel N/2.

    box : N (pixels, even); pixel_size : Å/px; bfactor_floor : Å², raises every atomic B to at
    least this (files such as 4AKE carry B = 0, which would give a delta-like map);
    centre_angstrom : (x, y, z) Å model point put at voxel N/2 instead of the model's own centroid,
    so that a structure and a subset of its chains come out in one frame (density is additive over
    atoms: the map of the whole is the sum of the maps of its parts).
    returns : (N, N, N) float32, axes (z, y, x)
    """
    st = st.clone()
    pos = atom_positions(st)
    centroid = pos.mean(axis=0) if centre_angstrom is None else np.asarray(centre_angstrom, dtype=np.float64)
    if centroid.shape != (3,):
        raise EmberInputError(None, f"centre must be 3 numbers (x, y, z) in Å (got {centre_angstrom})", "")
    rmax = float(np.linalg.norm(pos - centroid, axis=1).max())
    if rmax + 5 > box * pixel_size / 2:
        raise EmberInputError(
            None,
            f"model radius {rmax:.0f} Å does not fit a {box}-px box at {pixel_size} Å/px",
            "choose a larger --box or --angpix",
        )
    for ch in st[0]:
        for r in ch:
            for a in r:
                a.b_iso = max(a.b_iso, bfactor_floor)
    shift = gemmi.Vec3(*(box // 2 * pixel_size - centroid))
    st[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), shift))
    side = box * pixel_size
    st.cell = gemmi.UnitCell(side, side, side, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 2 * pixel_size
    dc.set_grid_cell_and_spacegroup(st)
    dc.grid.set_size(box, box, box)
    dc.grid.fill(0)
    dc.add_model_density_to_grid(st[0])
    grid = np.array(dc.grid, copy=True)  # (x, y, z)
    return np.ascontiguousarray(grid.transpose(2, 1, 0), dtype=np.float32)
