"""The CLI in-process: help, one-line errors with exit code 2, nothing written on failure."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.mrc import write_map
from ember.io.star import read_particles_star, write_particles_star
from tests.conftest import blob_volume

runner = CliRunner()


def test_help_lists_jobs_and_units():
    out = runner.invoke(app, ["--help"]).output
    for job in ("simulate", "reconstruct", "fsc", "demo"):
        assert job in out
    assert "µm" in runner.invoke(app, ["simulate", "--help"], terminal_width=200).output
    assert "Å" in runner.invoke(app, ["reconstruct", "--help"], terminal_width=200).output


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
    out = tmp_path / "rec.mrc"
    res = runner.invoke(app, ["reconstruct", "--i", str(dataset), "--o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["fsc", str(out), str(dataset.parent / "truth.mrc"), "--o", str(tmp_path / "f")])
    assert res.exit_code == 0 and "FSC 0.143" in res.output
    assert (tmp_path / "f" / "fsc.star").exists() and (tmp_path / "f" / "fsc.png").stat().st_size > 1000


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
