"""report.html: one self-contained page whose inline figures decode, in Python and in Chromium."""

import base64
import io

import numpy as np
from matplotlib.image import imread

from ember.report.html import Report
from ember.report.plots import figure_central_sections, figure_spectra, png_bytes
from tests.report_check import assert_renders, inline_images, needs_chromium, number, render


def _report() -> Report:
    vol = np.random.default_rng(0).normal(size=(16, 16, 16))
    rep = Report("refine3d", "refine3d <test> & more", version="0.0", command=["ember", "refine3d", "--o", "a b"],
                 settings={"seed": 3})
    rep.number("resolution", "4.20 Å")
    rep.figure("sections", figure_central_sections([vol], ["map"]))
    rep.figure("spectra", figure_spectra(np.ones((1, 9)), np.full((2, 9), 2.0), np.zeros((2, 9)), box=16,
                                         pixel_size=2.0))
    return rep


def test_page_is_self_contained_and_escaped(tmp_path):
    """Figures are inline PNGs that decode to the rendered pixels; text is escaped; the command
    line is shell-quoted; nothing refers to another file; no scripts."""
    rep = _report()
    path = rep.write(tmp_path / "report.html")
    html = path.read_text()
    assert "<script" not in html and "refine3d &lt;test&gt; &amp; more" in html
    assert "ember refine3d --o &#x27;a b&#x27;" in html
    assert number(html, "resolution") == "4.20 Å"
    images = inline_images(html)
    assert len(images) == 2
    first = imread(io.BytesIO(rep.figures[0][1]), format="png")
    np.testing.assert_array_equal(images[0], first)
    assert 'src="http' not in html and "href=\"http" not in html


def test_png_bytes_of_a_file_are_the_file(tmp_path):
    png = png_bytes(figure_central_sections([np.ones((8, 8, 8))], ["x"]))
    (tmp_path / "a.png").write_bytes(png)
    assert png_bytes(tmp_path / "a.png") == png and png[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_chromium_renders_every_figure(tmp_path):
    result = assert_renders(_report().write(tmp_path / "report.html"), tmp_path, 2)
    assert result["widths"][0] > 100


@needs_chromium
def test_chromium_check_sees_a_broken_image(tmp_path):
    """The render check can fail: a corrupt inline PNG is counted as not decoded."""
    path = _report().write(tmp_path / "report.html")
    html = path.read_text()
    good = html.split('base64,', 1)[1].split('"', 1)[0]
    path.write_text(html.replace(good, base64.b64encode(b"not a png").decode(), 1))
    result = render(path, tmp_path)
    assert result["images"] == 2 and result["decoded"] == 1
