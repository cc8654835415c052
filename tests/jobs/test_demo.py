import re

import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.mrc import read_map
from ember.maths.fsc import fsc, resolution_shell


def test_demo_reconstructs_close_to_truth(tmp_path):
    """`ember demo` end to end (600 particles, SNR 0.1, box 64 at 1.5 Å): the map it writes has an
    FSC against the ground truth it writes above 0.5 to better than 4 Å (Nyquist 3 Å), and the
    resolutions it prints are that curve's 0.5 and 0.143 crossings."""
    res = CliRunner().invoke(app, ["demo", "--o", str(tmp_path), "--n", "600", "-q"])
    assert res.exit_code == 0, res.output
    rec, pixel = read_map(tmp_path / "reconstruct" / "map.mrc")
    truth, _ = read_map(tmp_path / "simulate" / "truth.mrc")
    curve = fsc(torch.from_numpy(rec).double(), torch.from_numpy(truth).double())
    box = rec.shape[0]
    d05, d0143 = (box * pixel / resolution_shell(curve, t) for t in (0.5, 0.143))
    assert d05 < 4.0
    printed = re.search(r"0\.5 at ([\d.]+) Å, 0\.143 at ([\d.]+) Å \(Nyquist ([\d.]+) Å\)", res.output)
    assert printed, res.output
    assert [float(x) for x in printed.groups()] == [round(d05, 2), round(d0143, 2), 2 * pixel]
    png = imread(tmp_path / "fsc_vs_truth.png")
    assert png.ndim == 3 and png.std() > 0.01  # a decodable, non-blank plot
