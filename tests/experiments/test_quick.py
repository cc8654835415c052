"""Smoke tests of benchmarks/experiments at their --quick size: each runs as a module, writes its
table and figure, and its numbers say what the experiment is about."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmarks.experiments.model_bias import fake_domain
from matplotlib.image import imread

from tests.conftest import blob_volume

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "structures").exists(),
                                reason="../shared/data/structures not beside the repository")


def run(name: str, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", f"benchmarks.experiments.{name}", "--quick", "--out", str(out)], cwd=ROOT,
                   check=True, capture_output=True, text=True, timeout=600)
    png = imread(out / f"{name}.png")
    assert png.ndim == 3 and png.std() > 0.01
    assert (out / f"{name}.md").read_text().startswith("| ")
    return json.loads((out / f"{name}.json").read_text())


def test_wiener(tmp_path):
    """The learned filter needs no cut-off and still matches the truth at least as well as the
    unfiltered map in real space, and as the best cut-off to within a few per cent."""
    rows = {r["map"]: r for r in run("wiener", tmp_path)["rows"]}
    learned, plain = rows["learned τ² (Wiener)"], rows["unregularised"]
    hand = [r for name, r in rows.items() if name.startswith("low-pass")]
    assert learned["real-space CC vs truth"] > plain["real-space CC vs truth"]
    assert learned["real-space CC vs truth"] > 0.95 * max(r["real-space CC vs truth"] for r in hand)
    assert learned["FSC 0.5 vs truth (Å)"] <= 1.05 * min(r["FSC 0.5 vs truth (Å)"] for r in hand)


def test_alignment(tmp_path):
    """A 20 Å reference aligns worse than the truth at Nyquist; half and whole maps align alike."""
    rows = run("alignment", tmp_path)["rows"]
    err = {r["reference"]: r["median angular error (°)"] for r in rows}
    assert err["truth low-passed to 20 Å"] > min(v for k, v in err.items() if k.startswith("truth at Nyquist"))
    half, whole = err["half-1 map (half-1 particles)"], err["whole-data map (half-1 particles)"]
    assert abs(half - whole) < 0.5 * whole


def test_overfitting(tmp_path):
    """Both runs report a resolution and a true one; the gold-standard run's two agree."""
    rows = {r["run"]: r for r in run("overfitting", tmp_path)["rows"]}
    gold = rows["gold-standard regularised likelihood"]
    assert 0.75 < gold["true / reported"] < 1.33
    assert rows["projection matching (--maxcc --no_halves)"]["true, FSC 0.5 with the truth (Å)"] > 0


def test_classification(tmp_path):
    """Four classes hold every particle; the confusion matrix accounts for each one once."""
    result = run("classification", tmp_path)
    rows = result["rows"]
    assert len(rows) == 4
    assert sum(r["particles"] for r in rows) == sum(r["state 1 (A–D)"] + r["state 2 (A–C)"] for r in rows) == 300
    assert sum(r["π_k at the end"] for r in rows) == pytest.approx(1.0, abs=4 * 5e-7)  # 6 decimals in the STAR


def test_model_bias(tmp_path):
    """Three runs, each with a resolution against the truth and a measure of the fake domain kept."""
    rows = run("model_bias", tmp_path)["rows"]
    assert [r["run"] for r in rows] == ["projection matching from the wrong reference",
                                        "gold standard from the wrong reference",
                                        "gold standard from an Ember initial model"]
    assert all(0 < r["FSC 0.5 with the truth (Å)"] < 100 for r in rows)
    assert all(np.isfinite(r["fake domain kept (fraction of the start's)"]) for r in rows)
    # the measure's zero point: a start without the fake domain leaves none of it
    assert abs(rows[2]["fake domain kept (fraction of the start's)"]) < 0.15


def test_fake_domain_holds_a_quarter_of_the_mass_outside_the_protein():
    truth = blob_volume(32).numpy()
    blob = fake_domain(truth)
    assert blob.sum() == pytest.approx(0.25 * truth.sum(), rel=1e-4)
    peak = np.unravel_index(blob.argmax(), blob.shape)
    assert truth[peak] < 0.1 * truth.max()  # centred outside the protein's density
