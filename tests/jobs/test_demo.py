import re
from pathlib import Path

import starfile
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.mrc import read_map
from ember.jobs.align_maps import align_maps
from tests.report_check import assert_report, number


def test_quick_demo_determines_the_structure_from_unknown_orientations(tmp_path):
    """`ember demo --quick` end to end (300 particles of 1AKE, box 32 at 2.5 Å, SNR 1): initial model
    without a reference → refine3d → mask → postprocess. The refined map matches the ground truth
    (FSC 0.5 after alignment) to better than 4 pixels, and the printed resolutions are the ones the
    files hold."""
    res = CliRunner().invoke(app, ["demo", "--quick", "--o", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    for folder in ("simulate", "initial_model", "refine3d", "postprocess"):
        assert (tmp_path / folder / "job.json").exists()
    truth, pixel = read_map(tmp_path / "simulate" / "truth.mrc")
    refined, _ = read_map(tmp_path / "refine3d" / "run_class001.mrc")
    vs_truth = align_maps(truth, refined, pixel).fsc05_angstrom
    assert vs_truth < 4 * pixel
    general = starfile.read(tmp_path / "postprocess" / "postprocess.star")["general"]
    printed = re.search(r"FSC 0\.143\): ([\d.]+) Å.*against the ground truth: FSC 0\.5 at ([\d.]+) Å", res.output,
                        re.S)
    assert printed, res.output
    assert float(printed.group(1)) == round(float(general["rlnFinalResolution"]), 2)
    assert float(printed.group(2)) == round(vs_truth, 2)
    png = imread(tmp_path / "fsc_vs_truth.png")
    assert png.ndim == 3 and png.std() > 0.01  # a decodable, non-blank plot
    printed_report = re.search(r"report: (\S+)", res.output)
    assert printed_report and Path(printed_report.group(1)) == tmp_path / "report.html"
    html = assert_report(tmp_path / "report.html", tmp_path, 2)
    assert number(html, "final resolution (half maps, FSC 0.143, masked)") == f"{printed.group(1)} Å"
    assert number(html, "resolution against the ground truth (FSC 0.5, after alignment)").startswith(
        f"{printed.group(2)} Å")
    for folder, images in (("simulate", 2), ("initial_model", 5), ("refine3d", 5), ("postprocess", 3)):
        assert f'href="{folder}/report.html"' in html
        assert_report(tmp_path / folder / "report.html", tmp_path, images)
    assert torch.isfinite(torch.from_numpy(read_map(tmp_path / "postprocess" / "postprocess.mrc")[0])).all()
