"""`ember local-resolution` (RELION's run_locres): a map whose left half is filtered to 4 Å and
right half to 8 Å, the batched pieces against their one-at-a-time originals, clean failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.mrc import read_map, write_map
from ember.jobs.local_resolution import batched_fsc, grid_centres, soft_spheres
from ember.jobs.postprocess import radius_squared, rfft3, shell_fsc, shells_of

runner = CliRunner()
BOX, PIXEL = 64, 1.5  # Å/px: Nyquist 3 Å, so 4 Å (shell 24) and 8 Å (shell 12) are both resolvable


def _lowpass(volume: np.ndarray, resolution: float) -> np.ndarray:
    """Hard low-pass of a (N, N, N) map at `resolution` Å (pixel PIXEL)."""
    n = volume.shape[0]
    k, kx = torch.fft.fftfreq(n), torch.fft.rfftfreq(n)
    s = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2) / PIXEL
    f = torch.fft.rfftn(torch.from_numpy(volume)) * (s <= 1.0 / resolution)
    return torch.fft.irfftn(f, s=volume.shape).numpy()


def make_halves(folder: Path, noise: float = 0.55, seed: int = 1) -> np.ndarray:
    """Random smooth object in an ellipsoid (semi-axes 26, 18, 18 px) with a 16-px gap at x = 0: the
    left part low-passed to 4 Å, the right to 8 Å (std 1 inside); half maps = truth + independent
    white noise (std `noise`); mask = the slightly larger soft ellipsoid. → x (px from the centre)."""
    rng = np.random.default_rng(seed)
    ax = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    rr = np.sqrt((x / 26) ** 2 + (y / 18) ** 2 + (z / 18) ** 2)
    env = np.clip((1.0 - rr) / 0.15, 0, 1)
    obj = rng.standard_normal((BOX, BOX, BOX)) * env * np.clip((np.abs(x) - 8) / 3.0, 0, 1)
    left = (x < 0).astype(float)
    truth = _lowpass(obj * left, 4.0) + _lowpass(obj * (1 - left), 8.0)
    truth /= truth[env > 0.5].std()
    mask = np.clip((1.1 - rr) / 0.2, 0, 1)
    for name, v in (("h1", truth + noise * rng.standard_normal(truth.shape)),
                    ("h2", truth + noise * rng.standard_normal(truth.shape)), ("mask", mask)):
        write_map(folder / f"{name}.mrc", v.astype(np.float32), PIXEL)
    return x


def test_left_half_at_4_and_right_half_at_8_angstrom(tmp_path):
    """Median local resolution inside the mask is within 15 % of the filter in each half; locres.mrc
    is 0 outside the mask; the filtered map, the histogram and the window table are written."""
    x = make_halves(tmp_path)
    out = tmp_path / "locres"
    args = ["local-resolution", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "h2.mrc"),
            "--mask", str(tmp_path / "mask.mrc"), "--o", str(out), "--locres_sampling", "15"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "median" in res.output and "range" in res.output
    locres, pix = read_map(out / "locres.mrc")
    mask, _ = read_map(tmp_path / "mask.mrc")
    assert pix == pytest.approx(PIXEL)
    inside = mask > 0.5
    left, right = np.median(locres[inside & (x < 0)]), np.median(locres[inside & (x >= 0)])
    print(f"median local resolution: left {left:.2f} Å (filter 4), right {right:.2f} Å (filter 8)")
    assert left == pytest.approx(4.0, rel=0.15), (left, right)
    assert right == pytest.approx(8.0, rel=0.15), (left, right)
    assert np.all(locres[mask == 0] == 0) and np.all(locres[inside] > 0)
    filtered, _ = read_map(out / "locres_filtered.mrc")
    assert filtered.shape == (BOX,) * 3 and np.isfinite(filtered).all() and filtered[inside].std() > 0
    assert imread(out / "locres_histogram.png").shape[0] > 100
    assert (out / "locres_points.star").exists() and (out / "job.json").exists()


def test_batched_windows_equal_relion_one_at_a_time():
    """The batched windowed FSC equals postprocess's shell_fsc window by window; the windows are
    RELION's raisedCosineMask (1 inside r, ½ − ½cos(π(r_o − d)/(r_o − r)) on the edge, 0 beyond); the
    grid is RELION's (−N/2 + k·step, |c| < N/2 − maskrad)."""
    n = 16
    centres = grid_centres(n, 5, 2)
    logical = centres - n // 2
    assert np.all(np.sqrt((logical.astype(float) ** 2).sum(1)) < n // 2 - 2) and len(centres) == 8
    win = soft_spheres(torch.tensor([[8, 8, 8], [5, 9, 11]]), n, 2.0, 5.0, torch.device("cpu"))
    assert win[0, 8, 8, 8] == 1 and win[0, 8, 8, 12] == pytest.approx(0.5 - 0.5 * np.cos(np.pi * 1 / 3))
    assert win[0, 8, 8, 14] == 0 and win[1, 5, 9, 11] == 1
    g = torch.Generator().manual_seed(0)
    h1, h2 = (torch.randn(n, n, n, generator=g, dtype=torch.float64) for _ in range(2))
    shells = shells_of(radius_squared(n)).reshape(-1)
    keep = shells < n // 2 + 1
    f = lambda v: torch.fft.rfftn(v[None] * win, dim=(-3, -2, -1))  # noqa: E731
    batched = batched_fsc(f(h1), f(h2), shells[keep], keep, n // 2 + 1)
    for j in range(2):
        one = shell_fsc(rfft3(h1 * win[j]), rfft3(h2 * win[j]), shells_of(radius_squared(n)))
        np.testing.assert_allclose(batched[j], one, atol=1e-12)


@pytest.mark.parametrize("problem", ["mask box", "empty mask", "odd box"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, problem):
    """A mask of another box, a mask with nothing above 0.5, an odd box: exit 2, one line, no output."""
    n = 17 if problem == "odd box" else 16
    vol = np.random.default_rng(0).standard_normal((n, n, n)).astype(np.float32)
    write_map(tmp_path / "h1.mrc", vol, 2.0)
    write_map(tmp_path / "h2.mrc", vol, 2.0)
    m = 20 if problem == "mask box" else n
    write_map(tmp_path / "mask.mrc", np.full((m, m, m), 0.0 if problem == "empty mask" else 1.0, np.float32), 2.0)
    out = tmp_path / "out"
    res = runner.invoke(app, ["local-resolution", "--half1", str(tmp_path / "h1.mrc"), "--half2",
                              str(tmp_path / "h2.mrc"), "--mask", str(tmp_path / "mask.mrc"), "--o", str(out)])
    assert res.exit_code == 2, res.output
    assert len([ln for ln in res.output.strip().splitlines() if ln.strip()]) == 1, res.output
    assert "Traceback" not in res.output and not out.exists()
