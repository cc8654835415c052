"""`ember mask` (relion_mask_create): threshold, extension, soft edge, volume/MW level, RELION parity."""

from __future__ import annotations

import gzip
import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.mrc import read_map, write_map
from ember.jobs.mask import create_mask, protein_volume_angstrom3, threshold_for_volume

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "relion" / "postprocess"
runner = CliRunner()


def radius(n: int) -> np.ndarray:
    """Distance (px) of every voxel from the centre voxel N/2."""
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2)


def relion_auto_mask(binary: np.ndarray, extend: float, width: float) -> np.ndarray:
    """RELION `autoMask` steps B and C written as its loops do (cube search of CEIL(|e|) and CEIL(w)
    around each voxel, distances² compared strictly), over shifted copies: the reference."""
    def shifted(a: np.ndarray, dz: int, dy: int, dx: int, fill: float) -> np.ndarray:
        n = a.shape[0]
        out = np.full_like(a, fill)
        src = [slice(max(0, d), n + min(0, d)) for d in (dz, dy, dx)]
        dst = [slice(max(0, -d), n + min(0, -d)) for d in (dz, dy, dx)]
        out[tuple(dst)] = a[tuple(src)]  # out[p] = a[p + d]
        return out

    m = binary.astype(np.float64)
    if extend != 0:
        size = abs(math.ceil(extend))
        hit = np.zeros(m.shape, bool)
        for dz, dy, dx in itertools.product(range(-size, size + 1), repeat=3):
            if dz * dz + dy * dy + dx * dx < extend * extend:
                neighbour = shifted(m, dz, dy, dx, fill=0.5)  # outside the box: neither 0 nor 1
                hit |= (neighbour > 0.999) if extend > 0 else (neighbour < 0.001)
        m = np.where(m < 0.001, np.where(hit, 1.0, 0.0), 1.0) if extend > 0 else np.where(hit, 0.0, m)
    if width > 0:
        size = math.ceil(width)
        best = np.full(m.shape, 9999.0)
        for dz, dy, dx in itertools.product(range(-size, size + 1), repeat=3):
            r2 = float(dz * dz + dy * dy + dx * dx)
            best = np.where(shifted(m, dz, dy, dx, fill=0.0) > 0.999, np.minimum(best, r2), best)
        soft = np.where(best < width * width, 0.5 + 0.5 * np.cos(np.pi * np.sqrt(best) / width), 0.0)
        m = np.where(m < 0.001, soft, m)
    return m


def test_sphere_threshold_radius_extension_and_soft_edge():
    """A sphere of radius 7 px (box 32) thresholded at 0.5 gives exactly the voxels within 7 px;
    extended by 3 px it holds every voxel within 7 + 3 − 1 px and none beyond 7 + 3 + 1; along an axis
    the soft edge of 4 px is ½ + ½cos(π·d/4) at d = 1 … 3 px from the surface, then 0."""
    n, r0 = 32, 7.0
    r = radius(n)
    sphere = (r <= r0).astype(np.float32)
    mask, level = create_mask(sphere, pixel_size=1.0, threshold=0.5)
    assert level == 0.5
    np.testing.assert_array_equal(mask, sphere)
    ext, _ = create_mask(sphere, pixel_size=1.0, threshold=0.5, extend_px=3)
    assert (ext[r <= r0 + 2] == 1).all() and (ext[r > r0 + 4] == 0).all()
    assert ext.sum() > sphere.sum()
    shrunk, _ = create_mask(sphere, pixel_size=1.0, threshold=0.5, extend_px=-2)
    assert (shrunk[r <= r0 - 3] == 1).all() and (shrunk[r > r0 - 0.5] == 0).all()
    soft, _ = create_mask(sphere, pixel_size=1.0, threshold=0.5, soft_edge_px=4)
    c = n // 2
    profile = soft[c, c, c + int(r0) : c + int(r0) + 6]  # surface voxel, then d = 1 … 5 px along +x
    np.testing.assert_allclose(profile, [1.0, *(0.5 + 0.5 * np.cos(np.pi * d / 4) for d in (1, 2, 3)), 0.0, 0.0],
                               atol=1e-7)
    assert ((soft > 0) & (soft < 1) == (sphere == 0) & (soft > 0)).all()  # soft values only outside


@pytest.mark.parametrize("extend, width", [(2.5, 0.0), (-1.5, 3.0), (0.0, 2.5), (2.0, 3.0)])
def test_matches_relion_automask_loops(extend, width):
    """An irregular binary object touching the box edge: extension/shrinking and soft edge equal
    RELION's cube-search loops voxel for voxel."""
    gen = np.random.default_rng(1)
    n = 20
    vol = (gen.random((n, n, n)) > 0.985) | (radius(n) < 4)
    vol[0, :3, :3] = True  # on the box edge
    mask, _ = create_mask(vol.astype(np.float32), pixel_size=1.0, threshold=0.5, extend_px=extend,
                          soft_edge_px=width)
    np.testing.assert_allclose(mask, relion_auto_mask(vol, extend, width), atol=1e-6)


def test_volume_and_molecular_weight_pick_the_level():
    """A map with distinct values: the level for V Å³ keeps exactly round(V/a³) voxels; 50 kDa of
    protein at 1.35 g/cm³ is 61,501 Å³ (≈ 1230 Å³/kDa)."""
    n, pixel = 32, 1.5
    gen = np.random.default_rng(0)
    vol = np.exp(-(radius(n) ** 2) / 40.0) + 1e-6 * gen.random((n, n, n))
    for enclosed in (1000.0, 20000.0, 61501.0):
        level = threshold_for_volume(vol, enclosed, pixel)
        assert (vol >= level).sum() == round(enclosed / pixel**3)
    assert protein_volume_angstrom3(50.0) == pytest.approx(61501, rel=1e-4)
    by_mw, level_mw = create_mask(vol, pixel_size=pixel, enclosed_angstrom3=protein_volume_angstrom3(50.0))
    assert by_mw.sum() == round(protein_volume_angstrom3(50.0) / pixel**3)
    assert level_mw == pytest.approx(threshold_for_volume(vol, 61501.0, pixel))


def test_parity_with_relion_mask_create(tmp_path):
    """relion_mask_create --lowpass 14 --ini_threshold 100 --extend_inimask 3 --width_soft_edge 6 on the
    average of the fixture's half maps (make_fixture.sh) equals Ember's mask."""
    halves = []
    for name in ("half1.mrc", "half2.mrc", "mask.mrc"):
        with gzip.open(FIXTURES / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    for name in ("half1.mrc", "half2.mrc"):
        halves.append(read_map(tmp_path / name)[0])
    average = (halves[0] + halves[1]) / 2
    relion, pixel = read_map(tmp_path / "mask.mrc")
    ours, _ = create_mask(average, pixel_size=pixel, threshold=100, extend_px=3, soft_edge_px=6, lowpass_angstrom=14)
    assert 0.05 < (relion > 0.5).mean() < 0.5  # a real mask, not an empty or full box
    np.testing.assert_allclose(ours, relion, atol=1e-6)


def test_mask_command(tmp_path):
    """`ember mask --mw_kda` writes a mask with the input's pixel size and prints the level; two level
    options at once fail in one line, nothing written."""
    from tests.test_cli import expect_clean_failure

    n, pixel = 24, 2.0
    vol = np.exp(-(radius(n) ** 2) / 20.0).astype(np.float32) + 1e-4 * np.random.default_rng(2).random((n, n, n),
                                                                                                       np.float32)
    write_map(tmp_path / "map.mrc", vol, pixel)
    res = runner.invoke(app, ["mask", "--i", str(tmp_path / "map.mrc"), "--o", str(tmp_path / "m.mrc"),
                              "--mw_kda", "10", "--extend_inimask", "1", "--width_soft_edge", "2"])
    assert res.exit_code == 0, res.output
    mask, mpix = read_map(tmp_path / "m.mrc")
    assert mpix == pytest.approx(pixel) and mask.min() == 0 and mask.max() == 1
    assert "level" in res.output and "wrote" in res.output
    expect_clean_failure(["mask", "--i", str(tmp_path / "map.mrc"), "--o", str(tmp_path / "out"), "--mw_kda", "10",
                          "--ini_threshold", "0.1"], "--ini_threshold and --mw_kda", tmp_path / "out")
