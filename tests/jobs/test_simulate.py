from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from ember.io.mrc import read_map, write_map
from ember.io.particles import ParticleDataSet
from ember.io.star import read_particles_star
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.fourier import ifft2_centered, shift_phases_2d
from ember.maths.rotations import euler_to_matrix
from ember.operators.ctf import particle_ctfs
from ember.operators.projector import Projector
from tests.conftest import blob_volume


def centred_blob_map(tmp_path: Path, n=32) -> Path:
    write_map(tmp_path / "blob.mrc", blob_volume(n, blobs=((0.0, 0.0, 0.0, 4.0, 1.0),)).numpy(), 2.0)
    return tmp_path / "blob.mrc"


def test_offset_sign_follows_relion(tmp_path):
    """A particle at +t px from the centre has rlnOriginXAngst = −t·a (ALGORITHM pitfall 1)."""
    cfg = SimulateConfig(
        output=tmp_path / "s", n_particles=20, map_path=centred_blob_map(tmp_path), ctf=False, max_offset_px=4.0, seed=3
    )
    star = simulate(cfg)
    t = read_particles_star(star).particles
    with mrcfile.open(tmp_path / "s" / "particles.mrcs") as m:
        images = m.data.astype(np.float64)
    c = np.arange(32) - 16
    for img, ox, oy in zip(images, t["rlnOriginXAngst"], t["rlnOriginYAngst"], strict=True):
        w = np.clip(img, 0, None)
        cx, cy = (w.sum(0) * c).sum() / w.sum(), (w.sum(1) * c).sum() / w.sum()
        assert cx == pytest.approx(-ox / 2.0, abs=0.05)
        assert cy == pytest.approx(-oy / 2.0, abs=0.05)


def test_deterministic_under_seed_and_snr_as_defined(tmp_path):
    mp = centred_blob_map(tmp_path)
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        simulate(SimulateConfig(output=tmp_path / name, n_particles=300, map_path=mp, snr=0.5, seed=seed))
        with mrcfile.open(tmp_path / name / "particles.mrcs") as m:
            runs.append(m.data.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    # SNR = signal variance / noise variance; noise variance 1 → total ≈ 1 + SNR
    assert runs[0].var(axis=(1, 2)).mean() == pytest.approx(1.5, rel=0.05)


def test_truth_map_and_star_reproduce_the_images(tmp_path):
    """Round trip: projecting truth.mrc at the STAR's angles, shifting by −rlnOrigin/a and applying
    the STAR's CTF gives the (noise-free) images, so the truth is on the images' scale and the
    STAR columns (degrees, Å, defocus) describe them."""
    blobs = ((3.0, -1.0, 5.0, 8.0, 1.0), (-4.0, 4.0, 0.0, 5.0, 0.5))  # asymmetric: angles matter
    write_map(tmp_path / "blob.mrc", blob_volume(32, blobs=blobs).numpy(), 2.0)
    star = simulate(SimulateConfig(output=tmp_path / "s", n_particles=8, map_path=tmp_path / "blob.mrc", seed=1))
    ds = ParticleDataSet.from_star(star)
    truth, pixel = read_map(tmp_path / "s" / "truth.mrc")
    rotations = euler_to_matrix(torch.from_numpy(ds.angles_deg()))
    spectra = Projector.from_volume(torch.from_numpy(truth).double()).project(rotations).to(torch.complex128)
    spectra = spectra * particle_ctfs(ds, np.arange(8), dtype=torch.float64)
    spectra = spectra * shift_phases_2d(32, -torch.from_numpy(ds.offsets_px()))
    predicted = ifft2_centered(spectra, 32).numpy()
    images = ds.images(np.arange(8)).astype(np.float64)
    assert pixel == pytest.approx(2.0)
    assert np.abs(predicted - images).max() < 1e-3 * np.abs(images).max()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "job.json",
        "particles.mrcs",
        "particles.star",
        "truth.mrc",
    ]  # no temporaries left behind


def test_model_density_is_centred(tmp_path):
    model = Path(__file__).parents[2] / "src" / "ember" / "data" / "1ake.cif"
    simulate(SimulateConfig(output=tmp_path / "s", n_particles=2, model_path=model, box=48, pixel_size=2.0))
    with mrcfile.open(tmp_path / "s" / "truth.mrc") as m:
        vol = torch.from_numpy(m.data.astype(np.float64))
        assert float(m.voxel_size.x) == pytest.approx(2.0)
    c = torch.arange(48, dtype=torch.float64) - 24
    mass = vol.clamp(min=0)
    for axis in range(3):
        dims = [d for d in range(3) if d != axis]
        centroid = (mass.sum(dims) * c).sum() / mass.sum()
        assert abs(float(centroid)) < 1.0
