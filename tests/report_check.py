"""Render a job's report.html in headless Chromium (Debian's package) and read back what loaded.

A copy of the page gets a probe script at the top of <head>: it records script errors and, after
the load event, writes the number of images and of images that decoded into document.title,
which `--dump-dom` then prints. The report itself carries no scripts."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="headless Chromium not installed (apt-get install chromium)")

_PROBE = """<script>
window.__errors = [];
window.addEventListener('error',
  e => window.__errors.push(e.message || ('failed: ' + (e.target.src || e.target))), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.title = 'PROBE' + JSON.stringify({images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    widths: imgs.map(i => i.naturalWidth), errors: window.__errors,
    external: [...document.querySelectorAll('[src]')].map(e => e.getAttribute('src'))
      .filter(s => !s.startsWith('data:'))});
});
</script>"""


def render(report: Path, tmp_dir: Path) -> dict:
    """Load `report` in headless Chromium; returns {images, decoded, widths, errors, external}."""
    html = report.read_text(encoding="utf-8")
    probed = tmp_dir / f"probed_{report.parent.name}_{report.name}"
    probed.write_text(html.replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    profile = tmp_dir / "chromium_profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.search(r"<title>PROBE(.*?)</title>", dom, re.S)
    assert found, f"the page did not finish loading: {dom[:500]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def inline_images(html: str) -> list[np.ndarray]:
    """Decode every inline PNG of a page (raises on a corrupt one)."""
    return [imread(io.BytesIO(base64.b64decode(b)), format="png")
            for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def assert_renders(report: Path, tmp_dir: Path, min_images: int) -> dict:
    """The page loads without script errors, refers to no external file, and every one of its
    (at least `min_images`) images decodes in Chromium."""
    assert report.exists(), report
    result = render(report, tmp_dir)
    assert result["errors"] == [], result["errors"]
    assert result["external"] == []
    assert result["images"] >= min_images, result
    assert result["decoded"] == result["images"], result
    return result


def assert_report(report: Path, tmp_dir: Path, min_images: int) -> str:
    """report.html has no scripts, at least `min_images` inline PNGs that decode and are not blank,
    and (where Chromium is installed) renders; returns the page's text."""
    html = report.read_text(encoding="utf-8")
    assert "<script" not in html
    images = inline_images(html)
    assert len(images) >= min_images, len(images)
    assert all(img.ndim == 3 and img.std() > 0.01 for img in images)
    if CHROMIUM is not None:
        assert_renders(report, tmp_dir, min_images)
    return html


def number(html: str, label: str) -> str:
    """The value of a key-number row of a report."""
    found = re.search(rf"<th>{re.escape(label)}</th><td[^>]*>([^<]*)</td>", html)
    assert found, label
    return found.group(1)
