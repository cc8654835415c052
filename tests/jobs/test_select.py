"""`ember select`: exactly the rows the filters ask for, optics and columns kept, clean refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.star import read_particles_star
from ember.jobs.select import select_particles

runner = CliRunner()


def optics_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
            "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnSphericalAberration": [2.7, 1.4],
            "rlnVoltage": [300.0, 200.0],
            "rlnImagePixelSize": [1.06, 1.244],
            "rlnImageSize": [64, 64],
            "rlnImageDimensionality": [2, 2],
        }
    )


def particle_table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Classes 1–4; Pmax in tenths and log-likelihoods in halves, so thresholds can equal values."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@Extract/job007/mic{i % 3}.mrcs" for i in range(n)],
            "rlnDefocusU": rng.uniform(8000, 25000, n).round(2),
            "rlnOpticsGroup": rng.integers(1, 3, n),
            "rlnClassNumber": rng.integers(1, 5, n),
            "rlnMaxValueProbDistribution": rng.integers(0, 11, n) / 10,
            "rlnLogLikeliContribution": rng.integers(20000, 20040, n) / 2,
            "rlnRandomSubset": rng.integers(1, 3, n),
        }
    )


@pytest.fixture
def star(tmp_path: Path) -> Path:
    path = tmp_path / "run_data.star"
    starfile.write({"optics": optics_table(), "particles": particle_table()}, path)
    return path


def run(*args: str):
    return runner.invoke(app, ["select", *args])


# (options, the rows they should keep, computed here from the table independently of ember)
CASES = {
    "class": (["--class", "1,3"], lambda p: p["rlnClassNumber"].isin([1, 3])),
    "min_pmax": (["--min_pmax", "0.5"], lambda p: p["rlnMaxValueProbDistribution"] >= 0.5),
    "max_pmax": (["--max_pmax", "0.3"], lambda p: p["rlnMaxValueProbDistribution"] <= 0.3),
    "min_loglik": (["--min_loglik", "10010"], lambda p: p["rlnLogLikeliContribution"] >= 10010),
    "max_loglik": (["--max_loglik", "10005.5"], lambda p: p["rlnLogLikeliContribution"] <= 10005.5),
    "all_and": (
        ["--class", "2,4", "--min_pmax", "0.4", "--min_loglik", "10004", "--max_loglik", "10016"],
        lambda p: p["rlnClassNumber"].isin([2, 4])
        & (p["rlnMaxValueProbDistribution"] >= 0.4)
        & (p["rlnLogLikeliContribution"] >= 10004)
        & (p["rlnLogLikeliContribution"] <= 10016),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_keeps_exactly_the_rows_of_the_mask(star, tmp_path, case):
    """The output's particle rows are the input rows the filters pass (AND, bounds inclusive), in
    order, with every column; the thresholds equal some values, so ≥ and > would differ."""
    options, rule = CASES[case]
    particles = starfile.read(star)["particles"]
    mask = rule(particles)
    assert 0 < mask.sum() < len(particles)
    out = tmp_path / "selected.star"
    res = run("--i", str(star), "--o", str(out), *options)
    assert res.exit_code == 0, res.output
    expected = particles[mask].reset_index(drop=True)
    pd.testing.assert_frame_equal(starfile.read(out)["particles"], expected)
    pd.testing.assert_frame_equal(read_particles_star(out).particles, expected)
    assert f"kept {mask.sum():,} of {len(particles):,} particles" in res.output


def test_optics_table_round_trips(tmp_path):
    """data_optics comes out as it went in, both groups, though group 2 keeps no particle."""
    star, out = tmp_path / "run_data.star", tmp_path / "selected.star"
    particles = particle_table()
    particles.loc[particles["rlnClassNumber"] == 1, "rlnOpticsGroup"] = 1
    starfile.write({"optics": optics_table(), "particles": particles}, star)
    result = select_particles(star, out, classes=[1])
    n_class_1 = (particles["rlnClassNumber"] == 1).sum()
    assert (result.output, result.kept, result.total) == (out, n_class_1, len(particles))
    assert set(starfile.read(out)["particles"]["rlnOpticsGroup"]) == {1}
    pd.testing.assert_frame_equal(starfile.read(out)["optics"], optics_table())
    pd.testing.assert_frame_equal(read_particles_star(out).optics, read_particles_star(star).optics)


def test_output_folder_is_refused(star, tmp_path):
    """--o naming a folder: one line asking for a file name, exit 2, nothing written into it."""
    before = sorted(tmp_path.rglob("*"))
    res = run("--i", str(star), "--o", str(tmp_path), "--class", "1")
    assert res.exit_code == 2 and "--o is a folder" in res.output, res.output
    assert sorted(tmp_path.rglob("*")) == before


def test_prints_per_class_counts(star, tmp_path):
    """With --class: one line per chosen class with the particles kept of those in that class."""
    particles = starfile.read(star)["particles"]
    res = run("--i", str(star), "--o", str(tmp_path / "s.star"), "--class", "3,1", "--min_pmax", "0.5")
    assert res.exit_code == 0, res.output
    for c in (3, 1):
        in_class = particles["rlnClassNumber"] == c
        kept = (in_class & (particles["rlnMaxValueProbDistribution"] >= 0.5)).sum()
        assert f"class {c}: kept {kept} of {in_class.sum()}" in res.output
    assert "class 2" not in res.output


@pytest.fixture
def without_columns(tmp_path: Path) -> Path:
    path = tmp_path / "no_scores.star"
    particles = particle_table().drop(columns=["rlnClassNumber", "rlnMaxValueProbDistribution"])
    starfile.write({"optics": optics_table(), "particles": particles}, path)
    return path


BAD = {
    "no filter": (["--i", "{star}"], "no filter given"),
    "missing file": (["--i", "{tmp}/missing.star", "--min_pmax", "0.1"], "missing.star: file not found"),
    "no class column": (["--i", "{bare}", "--class", "1"], "no_scores.star: --class needs rlnClassNumber"),
    "no pmax column": (["--i", "{bare}", "--min_pmax", "0.2"], "needs rlnMaxValueProbDistribution"),
    "absent class": (["--i", "{star}", "--class", "2,7"], "class 7 not in rlnClassNumber (present: 1, 2, 3, 4)"),
    "keeps none": (["--i", "{star}", "--class", "1", "--min_loglik", "1e6"], "keeps 0 of 60 particles"),
    "bad class list": (["--i", "{star}", "--class", "1;3"], "--class '1;3' is not a comma-separated list"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_in_one_line_and_writes_nothing(star, without_columns, tmp_path, case):
    """Each refusal: exit code 2, one line naming the problem, no output file, no temporary left."""
    args, match = BAD[case]
    out = tmp_path / "out" / "selected.star"
    before = sorted(tmp_path.rglob("*"))
    args = [a.format(star=star, bare=without_columns, tmp=tmp_path) for a in args]
    res = run(*args, "--o", str(out))
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ember: error:") and match in lines[0], res.output
    assert not out.exists()
    assert sorted(tmp_path.rglob("*")) == before


def test_refusal_leaves_an_existing_output_untouched(star, tmp_path):
    """A selection that keeps nothing does not overwrite (or empty) a previous output."""
    out = tmp_path / "selected.star"
    out.write_text("previous\n")
    res = run("--i", str(star), "--o", str(out), "--min_pmax", "1.5")
    assert res.exit_code == 2 and "loosen the filters (rlnMaxValueProbDistribution spans 0 to 1)" in res.output
    assert out.read_text() == "previous\n"


def test_image_names_follow_the_output_folder(tmp_path, monkeypatch):
    """Stacks named relative to the input STAR's folder still load from a selection written in
    another folder (the names are rewritten), and they are the chosen particles' images; run from
    the input's folder (RELION's project folder) the names are kept as they are."""
    import mrcfile

    from ember.io.particles import ParticleDataSet

    (tmp_path / "a").mkdir()
    images = np.random.default_rng(1).normal(size=(6, 16, 16)).astype(np.float32)
    with mrcfile.new(tmp_path / "a" / "particles.mrcs") as mrc:
        mrc.set_data(images)
        mrc.voxel_size = 2.0
    optics = optics_table().iloc[:1].assign(rlnImageSize=16, rlnImagePixelSize=2.0)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(6)],
                              "rlnOpticsGroup": 1, "rlnClassNumber": [1, 2, 1, 2, 2, 1]})
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "a" / "run_data.star")
    out = tmp_path / "b" / "c" / "selected.star"
    res = run("--i", str(tmp_path / "a" / "run_data.star"), "--o", str(out), "--class", "2")
    assert res.exit_code == 0, res.output
    dataset = ParticleDataSet.from_star(out)
    np.testing.assert_array_equal(dataset.images(np.arange(3)), images[[1, 3, 4]])
    monkeypatch.chdir(tmp_path / "a")
    assert run("--i", "run_data.star", "--o", str(out), "--class", "2").exit_code == 0
    names = starfile.read(out)["particles"]["rlnImageName"].tolist()
    assert names == ["000002@particles.mrcs", "000004@particles.mrcs", "000005@particles.mrcs"]
