"""The CLI in-process: help, one-line errors with exit code 2, nothing written on failure."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.mrc import read_map, write_map
from ember.io.star import read_particles_star, write_particles_star
from ember.maths.fsc import fsc, resolution_shell
from tests.conftest import blob_volume

runner = CliRunner()


BAD_CALLS = {
    "simulate": (["--map", "{d}/missing.mrc", "--n", "5", "--o", "{d}/out"], "missing.mrc"),
    "reconstruct": (["--i", "{d}/missing.star", "--o", "{d}/out"], "missing.star"),
    "fsc": (["{d}/missing.mrc", "{d}/missing2.mrc", "--o", "{d}/out"], "missing.mrc"),
    "refine3d": (["--i", "{d}/missing.star", "--ref", "{d}/r.mrc", "--o", "{d}/out", "--particle_diameter", "100"],
                 "missing.star"),
    "class3d": (["--i", "{d}/missing.star", "--ref", "{d}/r.mrc", "--o", "{d}/out", "--K", "2",
                 "--particle_diameter", "100"], "missing.star"),
    "class2d": (["--i", "{d}/missing.star", "--o", "{d}/out", "--K", "2", "--particle_diameter", "100"],
                "missing.star"),
    "initial-model": (["--i", "{d}/missing.star", "--o", "{d}/out", "--particle_diameter", "100"], "missing.star"),
    "select": (["--i", "{d}/missing.star", "--o", "{d}/out", "--class", "1"], "missing.star"),
    "mask": (["--i", "{d}/missing.mrc", "--o", "{d}/out"], "missing.mrc"),
    "postprocess": (["--half1", "{d}/missing.mrc", "--half2", "{d}/h2.mrc", "--o", "{d}/out"], "missing.mrc"),
    "local-resolution": (["--half1", "{d}/missing.mrc", "--half2", "{d}/h2.mrc", "--mask", "{d}/m.mrc",
                          "--o", "{d}/out"], "missing.mrc"),
    "align-maps": (["{d}/missing.mrc", "{d}/missing2.mrc", "--o", "{d}/out"], "missing.mrc"),
    "demo": (["--n", "0", "--o", "{d}/out", "-q"], "--n must be"),
}


def test_every_command_has_a_bad_call_case():
    """Each command registered on the app is covered by the clean-failure test below."""
    assert sorted(c.name or c.callback.__name__ for c in app.registered_commands) == sorted(BAD_CALLS)


@pytest.mark.parametrize("command", list(BAD_CALLS))
def test_command_help_and_clean_failure(command, tmp_path):
    """`ember CMD --help` exits 0 with the command's usage; a bad input exits 2 with one line naming
    the problem and writes nothing."""
    res = runner.invoke(app, [command, "--help"], prog_name="ember")
    assert res.exit_code == 0 and f"Usage: ember {command} " in res.output, res.output
    args, match = BAD_CALLS[command]
    expect_clean_failure([command, *(a.format(d=tmp_path) for a in args)], match, tmp_path / "out")


def test_defocus_option_is_in_micrometres(tmp_path):
    """--defocus 1.5 1.5 µm with no astigmatism writes rlnDefocusU = rlnDefocusV = 15000 Å."""
    write_map(tmp_path / "blob.mrc", blob_volume(16).numpy(), 2.0)
    args = ["simulate", "--map", str(tmp_path / "blob.mrc"), "--n", "3", "--defocus", "1.5", "1.5",
            "--astigmatism", "0", "--o", str(tmp_path / "s"), "-q"]
    assert runner.invoke(app, args).exit_code == 0
    t = read_particles_star(tmp_path / "s" / "particles.star").particles
    np.testing.assert_allclose(t[["rlnDefocusU", "rlnDefocusV"]].to_numpy(), 15000.0)


@pytest.fixture
def dataset(tmp_path):
    write_map(tmp_path / "blob.mrc", blob_volume(16, blobs=((1.0, 0.0, -1.0, 4.0, 1.0),)).numpy(), 2.0)
    res = runner.invoke(
        app,
        [
            "simulate",
            "--map",
            str(tmp_path / "blob.mrc"),
            "--n",
            "20",
            "--snr",
            "1",
            "--o",
            str(tmp_path / "sim"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    return tmp_path / "sim" / "particles.star"


def expect_clean_failure(args, match, out_path: Path):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "ember: error:" in lines[0] and match in lines[0], res.output
    assert not out_path.exists()


def test_reconstruct_and_fsc_work(dataset, tmp_path):
    """reconstruct → fsc: fsc.star holds the FSC of the two maps and the printed resolutions are
    where that curve crosses 0.5 and 0.143."""
    out = tmp_path / "rec.mrc"
    res = runner.invoke(app, ["reconstruct", "--i", str(dataset), "--o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    truth = dataset.parent / "truth.mrc"
    res = runner.invoke(app, ["fsc", str(out), str(truth), "--o", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    (rec, pixel), (ref, _) = read_map(out), read_map(truth)
    curve = fsc(torch.from_numpy(rec).double(), torch.from_numpy(ref).double())
    table = starfile.read(tmp_path / "f" / "fsc.star")
    table = table["fsc"] if isinstance(table, dict) else table
    np.testing.assert_allclose(table["rlnFourierShellCorrelation"], curve.numpy(), atol=1e-5)
    printed = dict(re.findall(r"FSC (0\.5|0\.143):\s+([\d.]+) Å", res.output))
    for threshold in ("0.5", "0.143"):
        expected = 16 * pixel / resolution_shell(curve, float(threshold))
        assert float(printed[threshold]) == pytest.approx(expected, abs=0.01)
    png = imread(tmp_path / "f" / "fsc.png")
    assert png.ndim == 3 and png.std() > 0.01  # a decodable, non-blank plot


def test_fsc_command_prints_where_the_curve_crosses(tmp_path):
    """Two maps sharing a signal whose SSNR falls gradually, (9.5/i)⁴: the FSC crosses 0.5 near
    shell 9.5 and 0.143 (SSNR 1/6) near 14.9, and the printed resolutions are N·a/i there."""
    n, pixel = 32, 1.5
    rng = np.random.default_rng(0)
    k = np.fft.fftfreq(n, 1 / n)
    gz, gy, gx = np.meshgrid(k, k, np.arange(n // 2 + 1), indexing="ij")
    shell = np.maximum(np.floor(np.sqrt(gx**2 + gy**2 + gz**2) + 0.5), 1)
    signal = np.fft.irfftn(np.fft.rfftn(rng.standard_normal((n, n, n))) * (9.5 / shell) ** 2, s=(n, n, n),
                          axes=(0, 1, 2))
    maps = [signal + rng.standard_normal((n, n, n)) for _ in range(2)]
    for name, m in zip(("a.mrc", "b.mrc"), maps, strict=True):
        write_map(tmp_path / name, m.astype(np.float32), pixel)
    res = runner.invoke(app, ["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")])
    assert res.exit_code == 0, res.output
    curve = fsc(*(torch.from_numpy(m.astype(np.float32)).double() for m in maps))
    i05, i0143 = resolution_shell(curve, 0.5), resolution_shell(curve, 0.143)
    assert 8 <= i05 <= 10 and 13 <= i0143 <= 15
    printed = dict(re.findall(r"FSC (0\.5|0\.143):\s+([\d.]+) Å", res.output))
    assert float(printed["0.5"]) == pytest.approx(n * pixel / i05, abs=0.01)
    assert float(printed["0.143"]) == pytest.approx(n * pixel / i0143, abs=0.01)


def test_truncated_stack(dataset, tmp_path):
    stack = dataset.parent / "particles.mrcs"
    stack.write_bytes(stack.read_bytes()[:3000])
    expect_clean_failure(
        ["reconstruct", "--i", str(dataset), "--o", str(tmp_path / "r.mrc")], "particles.mrcs", tmp_path / "r.mrc"
    )


def test_star_without_image_name(dataset, tmp_path):
    t = read_particles_star(dataset)
    t.particles = t.particles.drop(columns=["rlnImageName"])
    write_particles_star(dataset, t)
    expect_clean_failure(
        ["reconstruct", "--i", str(dataset), "--o", str(tmp_path / "r.mrc")], "rlnImageName", tmp_path / "r.mrc"
    )


def test_box_not_matching_optics_group(dataset, tmp_path):
    t = read_particles_star(dataset)
    t.optics["rlnImageSize"] = 18
    write_particles_star(dataset, t)
    expect_clean_failure(
        ["reconstruct", "--i", str(dataset), "--o", str(tmp_path / "r.mrc")], "optics group", tmp_path / "r.mrc"
    )


def test_nan_pixels(tmp_path):
    stack = np.zeros((3, 16, 16), np.float32)
    stack[1, 4, 4] = np.nan
    write_map(tmp_path / "p.mrcs", stack, 2.0)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0], "rlnImageSize": [16]})
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i}@p.mrcs" for i in (1, 2, 3)],
            "rlnOpticsGroup": [1] * 3,
            "rlnAngleRot": [0.0] * 3,
            "rlnAngleTilt": [0.0] * 3,
            "rlnAnglePsi": [0.0] * 3,
        }
    )
    from ember.io.star import ParticleTable

    write_particles_star(tmp_path / "p.star", ParticleTable(optics, particles))
    expect_clean_failure(
        ["reconstruct", "--i", str(tmp_path / "p.star"), "--o", str(tmp_path / "r.mrc")], "NaN", tmp_path / "r.mrc"
    )


def test_truncated_map_in_fsc(tmp_path):
    write_map(tmp_path / "a.mrc", np.zeros((16, 16, 16), np.float32), 1.0)
    (tmp_path / "b.mrc").write_bytes((tmp_path / "a.mrc").read_bytes()[:5000])
    expect_clean_failure(
        ["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--o", str(tmp_path / "f")], "b.mrc", tmp_path / "f"
    )


def test_map_and_star_pixel_sizes_disagree(dataset, tmp_path):
    write_map(tmp_path / "other.mrc", blob_volume(16).numpy(), 3.0)
    expect_clean_failure(
        [
            "simulate",
            "--map",
            str(tmp_path / "other.mrc"),
            "--angles-from",
            str(dataset),
            "--n",
            "5",
            "--o",
            str(tmp_path / "s2"),
        ],
        "pixel size",
        tmp_path / "s2",
    )


def test_odd_box_option(tmp_path):
    expect_clean_failure(
        ["simulate", "--model", "x.cif", "--box", "33", "--angpix", "1", "--n", "5", "--o", str(tmp_path / "s")],
        "even",
        tmp_path / "s",
    )


def test_refine3d_offset_prior_must_be_positive(dataset, tmp_path):
    write_map(tmp_path / "ref.mrc", blob_volume(16).numpy(), 2.0)
    expect_clean_failure(
        ["refine3d", "--i", str(dataset), "--ref", str(tmp_path / "ref.mrc"), "--o", str(tmp_path / "out"),
         "--particle_diameter", "20", "--offset", "-1"],
        "--offset must be > 0",
        tmp_path / "out",
    )
