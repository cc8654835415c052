"""`--device` through whole jobs: refine3d and class3d with their E-steps on a device.

Without a GPU the device is `FakeDevice` (CPU memory, CUDA's rules; tests/fake_device.py): the
jobs must run with every E-step tensor on it and write the same files as on the host. With CUDA
present the refinement on the GPU must agree with the CPU's (FSC between the final maps)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ember.io.mrc import read_map
from ember.io.star import read_particles_star
from ember.jobs import class3d as class3d_job
from ember.jobs import refine3d as refine3d_job
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.fsc import fsc
from tests.fake_device import FAKE, FakeDevice

MODEL = Path(__file__).parents[2] / "src" / "ember" / "data" / "1ake.cif"


@pytest.fixture(scope="module")
def particles(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    return simulate(SimulateConfig(output=root / "sim", n_particles=80, model_path=MODEL, box=32, pixel_size=2.5,
                                   snr=0.2, defocus_min_um=1.0, defocus_max_um=2.5, seed=1))


def _refine(star: Path, out: Path, device: str = "cpu") -> Path:
    return refine3d_job.refine3d(refine3d_job.Refine3DConfig(
        star=star, reference=star.parent / "truth.mrc", output=out, particle_diameter_angstrom=65.0,
        ini_high_angstrom=15.0, healpix_order=1, max_iterations=2, seed=3, device=device))


def _columns(path: Path) -> np.ndarray:
    table = read_particles_star(path).particles
    return table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                  "rlnMaxValueProbDistribution"]].to_numpy()


def test_refine3d_on_a_device_writes_the_host_run(particles, tmp_path, monkeypatch):
    """Two iterations and the final one: the same poses and the same final map as on the host."""
    host = _refine(particles, tmp_path / "host")
    monkeypatch.setattr(refine3d_job, "select_device", lambda name, threads=None: FAKE)
    mode = FakeDevice()
    with mode:
        on_device = _refine(particles, tmp_path / "device")
    assert mode.device_ops > 10_000  # the E-steps ran there
    np.testing.assert_array_equal(_columns(on_device.parent / "run_data.star"), _columns(host.parent / "run_data.star"))
    np.testing.assert_array_equal(read_map(on_device)[0], read_map(host)[0])


def test_class3d_on_a_device_writes_the_host_run(particles, tmp_path, monkeypatch):
    """K = 2, two iterations (the first with RELION's random-class seeds): same classes and maps."""
    def run(out: Path, device: str) -> Path:
        class3d_job.class3d(class3d_job.Class3DConfig(
            star=particles, reference=particles.parent / "truth.mrc", output=out, n_classes=2,
            particle_diameter_angstrom=65.0, ini_high_angstrom=15.0, healpix_order=1, iterations=2, seed=2,
            device=device))
        return out

    host = run(tmp_path / "host", "cpu")
    monkeypatch.setattr(class3d_job, "select_device", lambda name, threads=None: FAKE)
    mode = FakeDevice()
    with mode:
        on_device = run(tmp_path / "device", "meta")
    assert mode.device_ops > 10_000
    for name in ("run_it002_class001.mrc", "run_it002_class002.mrc"):
        np.testing.assert_array_equal(read_map(on_device / name)[0], read_map(host / name)[0])
    found, expected = (read_particles_star(d / "run_it002_data.star").particles for d in (on_device, host))
    np.testing.assert_array_equal(found["rlnClassNumber"].to_numpy(), expected["rlnClassNumber"].to_numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_refine3d_on_cuda_agrees_with_the_cpu(particles, tmp_path):
    """The GPU run (float32 products, other summation orders) gives the CPU run's map: FSC > 0.99
    in every shell up to 2/3 Nyquist and the same poses for most particles."""
    host = _refine(particles, tmp_path / "host")
    gpu = _refine(particles, tmp_path / "gpu", "cuda")
    a, b = (torch.from_numpy(read_map(p)[0]).double() for p in (host, gpu))
    assert float(fsc(a, b)[: 2 * len(a) // 6].min()) > 0.99
    ang = np.abs(_columns(gpu.parent / "run_data.star")[:, :3] - _columns(host.parent / "run_data.star")[:, :3])
    assert np.mean(np.minimum(ang, 360 - ang).max(axis=1) < 1.0) > 0.9
