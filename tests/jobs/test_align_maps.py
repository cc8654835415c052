"""`ember align-maps`: a known rotation and shift of a real structure (1AKE) are recovered, the
mirror image is found to be the other hand and aligned, maps on different grids are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.atomic_model import model_density, read_model
from ember.io.mrc import read_map, write_map
from ember.jobs.align_maps import align_maps, apply_rigid, mirror_z
from ember.maths.fourier import resolution_angstrom
from ember.maths.fsc import fsc, resolution_shell
from ember.maths.rotations import angular_distance_deg, euler_to_matrix, random_rotations
from tests.conftest import blob_volume

runner = CliRunner()
BOX, PIXEL = 40, 2.0
MODEL = Path(__file__).resolve().parents[2] / "src" / "ember" / "data" / "1ake.cif"


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """1AKE density, box 40 at 2 Å/px (resolution 4 Å = Nyquist)."""
    return model_density(read_model(MODEL), box=BOX, pixel_size=PIXEL)


def moved(truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """truth moved by a seeded random rotation Q and shift s (px): (map, Q, s)."""
    q = random_rotations(1, torch.Generator().manual_seed(seed))[0].numpy()
    s = np.random.default_rng(seed).uniform(-2.5, 2.5, 3)
    return apply_rigid(truth, q, s), q, s


def fsc05(a: np.ndarray, b: np.ndarray) -> float:
    curve = fsc(torch.from_numpy(a).double(), torch.from_numpy(b).double())
    return float(resolution_angstrom(resolution_shell(curve, 0.5), BOX, PIXEL))


def check_recovered(result, truth: np.ndarray, moving: np.ndarray, q: np.ndarray, s: np.ndarray) -> None:
    """moving(r) = truth(Qᵀ(r − s)) is undone by R = Qᵀ, t = −Qᵀs: angle < 3°, shift < 0.5 px,
    FSC 0.5 within 10 % of that of the exact inverse."""
    angle = float(angular_distance_deg(torch.from_numpy(result.rotation), torch.from_numpy(q.T)))
    shift_error = np.linalg.norm(result.shift_angstrom / PIXEL - (-q.T @ s))
    assert angle < 3.0, angle
    assert shift_error < 0.5, shift_error
    exact = apply_rigid(moving if not result.flipped else mirror_z(moving), q.T, -q.T @ s)
    assert result.fsc05_angstrom <= 1.1 * fsc05(truth, exact), (result.fsc05_angstrom, fsc05(truth, exact))
    assert result.fsc05_angstrom == pytest.approx(fsc05(truth, result.aligned))
    assert result.correlation > 0.9


def test_rigid_motion_convention():
    """apply_rigid moves the point r to R·r + t (x, y, z px from N/2); mirror_z sends z to −z."""
    n = 24
    vol = np.zeros((n, n, n), dtype=np.float32)
    vol[n // 2, n // 2, n // 2 + 5] = 1.0  # x = +5
    rz90 = euler_to_matrix(torch.tensor([90.0, 0.0, 0.0], dtype=torch.float64)).numpy().T  # x → y
    out = apply_rigid(vol, rz90, np.array([0.0, 0.0, 2.0]), order=1)
    assert np.unravel_index(np.argmax(out), out.shape) == (n // 2 + 2, n // 2 + 5, n // 2)  # (z, y, x)
    vol = np.zeros((n, n, n), dtype=np.float32)
    vol[n // 2 + 3, n // 2 - 1, n // 2 + 2] = 1.0
    assert np.unravel_index(np.argmax(mirror_z(vol)), vol.shape) == (n // 2 - 3, n // 2 - 1, n // 2 + 2)


def test_known_rotation_and_shift_are_recovered(truth):
    """A random rotation and sub-pixel shift of 1AKE: recovered, and the given hand is kept."""
    moving, q, s = moved(truth, seed=3)
    result = align_maps(truth, moving, PIXEL)
    assert not result.flipped
    assert result.other_hand_correlation is not None and result.other_hand_correlation < result.search_correlation
    check_recovered(result, truth, moving, q, s)
    np.testing.assert_allclose(euler_to_matrix(torch.from_numpy(result.euler_deg)).numpy(), result.rotation,
                               atol=1e-6)


def test_mirror_image_is_flipped_and_aligned(truth):
    """The mirror image (z → −z) of a moved 1AKE is reported as the other hand and aligned."""
    moving, q, s = moved(truth, seed=5)
    mirrored = mirror_z(moving)
    result = align_maps(truth, mirrored, PIXEL)
    assert result.flipped
    check_recovered(result, truth, mirrored, q, s)


def test_cli_writes_the_aligned_map_and_prints_the_fit(truth, tmp_path):
    """ember align-maps --no-flip: the aligned map is written with the fixed map's pixel size, and
    the printed Euler angles are those of the rotation that undoes the motion."""
    moving, q, s = moved(truth, seed=7)
    write_map(tmp_path / "fixed.mrc", truth, PIXEL)
    write_map(tmp_path / "moving.mrc", moving, PIXEL)
    out = tmp_path / "aligned.mrc"
    res = runner.invoke(app, ["align-maps", str(tmp_path / "fixed.mrc"), str(tmp_path / "moving.mrc"),
                              "--o", str(out), "--no-flip"])
    assert res.exit_code == 0, res.output
    aligned, pixel = read_map(out)
    assert pixel == pytest.approx(PIXEL)
    assert fsc05(truth, aligned) <= 1.1 * fsc05(truth, apply_rigid(moving, q.T, -q.T @ s))
    rot, tilt, psi = (float(v) for v in res.output.split("rotation:")[1].split("\n")[0].replace("°", "")
                      .replace(",", "").split()[1::2])
    printed = euler_to_matrix(torch.tensor([rot, tilt, psi], dtype=torch.float64))
    assert float(angular_distance_deg(printed, torch.from_numpy(q.T))) < 3.0
    assert "as given" in res.output and "FSC 0.5:" in res.output


@pytest.mark.parametrize("box, pixel, what", [(32, PIXEL, "box 32"), (BOX, 2.5, "pixel size 2.5000")])
def test_maps_on_different_grids_are_refused(truth, tmp_path, box, pixel, what):
    """A map of another box or pixel size: one line naming it, the fix (relion_image_handler),
    exit 2, nothing written."""
    write_map(tmp_path / "fixed.mrc", truth, PIXEL)
    write_map(tmp_path / "other.mrc", np.zeros((box,) * 3, dtype=np.float32), pixel)
    out = tmp_path / "aligned.mrc"
    res = runner.invoke(app, ["align-maps", str(tmp_path / "fixed.mrc"), str(tmp_path / "other.mrc"),
                              "--o", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "ember: error:" in lines[0], res.output
    assert what in lines[0] and "other.mrc" in lines[0] and "relion_image_handler" in lines[0]
    assert "Traceback" not in res.output and not out.exists()


@pytest.mark.parametrize("symmetry", ["D2", "C3"])
def test_align_to_symmetry_puts_a_map_on_the_group_axes(symmetry):
    """A symmetric object turned by a random rotation and shifted off-centre is moved back onto
    the axes of its group: the moved map equals its own average over the group (correlation
    > 0.98), which the input did not (< 0.8)."""
    from ember.jobs.align_maps import align_to_symmetry
    from ember.maths.symmetry import symmetry_operators
    from ember.operators.filters import symmetrise_map

    ops = symmetry_operators(symmetry)
    base = blob_volume(40, ((6.0, -2.0, 5.0, 8.0, 1.0), (-5.0, 6.0, 1.0, 6.0, 0.7), (2.0, 3.0, -6.0, 5.0, 0.5)))
    symmetric = symmetrise_map(base, ops).numpy().astype(np.float32)
    turn = random_rotations(1, torch.Generator().manual_seed(4))[0].numpy()
    moved = apply_rigid(symmetric, turn, np.array([2.0, -1.5, 1.0]))

    def cc(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))

    assert cc(moved, symmetrise_map(torch.from_numpy(moved), ops).numpy()) < 0.8
    fit = align_to_symmetry(moved, 3.0, symmetry)
    assert cc(fit.aligned, fit.symmetrised) > 0.98
    assert fit.score > 0.95
