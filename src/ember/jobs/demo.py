"""`ember demo`: simulate a data set from the bundled 1AKE structure, reconstruct it from the
true angles (gold-standard Wiener reconstruction) and compare the result with the ground truth."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ember.io.mrc import read_map
from ember.jobs.common import Progress
from ember.jobs.fsc import FscResult, fsc_of_maps
from ember.jobs.reconstruct import ReconstructConfig, reconstruct
from ember.jobs.simulate import SimulateConfig, simulate
from ember.report.plots import plot_fsc

logger = logging.getLogger(__name__)


def demo_structure() -> Path:
    """Path of the bundled 1AKE mmCIF."""
    return Path(str(files("ember") / "data" / "1ake.cif"))


@dataclass(frozen=True)
class DemoConfig:
    output: Path = Path("ember_demo")
    n_particles: int = 3000
    box: int = 64
    pixel_size: float = 1.5
    snr: float = 0.1
    seed: int = 0
    device: str = "cpu"


def demo(cfg: DemoConfig, progress: Progress | None = None) -> FscResult:
    """Simulate → reconstruct → FSC against the truth; writes everything under cfg.output."""
    out = Path(cfg.output)
    star = simulate(
        SimulateConfig(
            output=out / "simulate",
            n_particles=cfg.n_particles,
            model_path=demo_structure(),
            box=cfg.box,
            pixel_size=cfg.pixel_size,
            snr=cfg.snr,
            defocus_min_um=1.0,
            defocus_max_um=2.5,
            seed=cfg.seed,
        ),
        progress,
    )
    rec_path = out / "reconstruct" / "map.mrc"
    volume = reconstruct(ReconstructConfig(star=star, output=rec_path, wiener=True, device=cfg.device), progress)
    truth, pixel = read_map(out / "simulate" / "truth.mrc")
    result = fsc_of_maps(volume, truth, pixel)
    plot_fsc(
        out / "fsc_vs_truth.png",
        {"reconstruction vs ground truth": result.curve},
        box=result.box,
        pixel_size=pixel,
        title="ember demo: 1AKE, known angles",
    )
    return result
