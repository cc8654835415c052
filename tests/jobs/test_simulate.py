from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ember.cli.main import app
from ember.io.atomic_model import model_centroid, model_density, read_model
from ember.io.mrc import read_map, write_map
from ember.io.particles import ParticleDataSet
from ember.io.star import read_particles_star
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.fourier import ifft2_centered, shift_phases_2d
from ember.maths.rotations import euler_to_matrix
from ember.operators.ctf import particle_ctfs
from ember.operators.projector import Projector
from tests.conftest import blob_volume
from tests.report_check import assert_report, number


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
    html = assert_report(tmp_path / "a" / "report.html", tmp_path, 2)
    assert number(html, "particles") == "300"


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
    assert "rlnClassNumber" not in read_particles_star(star).particles  # one state: no class column
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "job.json",
        "particles.mrcs",
        "particles.star",
        "report.html",
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


STRUCTURES = Path(__file__).parents[2].parent / "shared" / "data" / "structures"
BLOBS_1 = ((3.0, -1.0, 5.0, 8.0, 1.0), (-4.0, 4.0, 0.0, 5.0, 0.5))
BLOBS_2 = ((3.0, -1.0, 5.0, 8.0, 1.0), (2.0, 6.0, -5.0, 5.0, 0.8))  # state 2: a domain moved


def two_state_maps(tmp_path: Path, n=32) -> tuple[Path, Path]:
    for name, blobs in (("s1.mrc", BLOBS_1), ("s2.mrc", BLOBS_2)):
        write_map(tmp_path / name, blob_volume(n, blobs=blobs).numpy(), 2.0)
    return tmp_path / "s1.mrc", tmp_path / "s2.mrc"


def predicted_images(ds: ParticleDataSet, truth: Path, idx: np.ndarray) -> np.ndarray:
    """Noise-free images of particles `idx` from map `truth` at the STAR's angles, offsets and CTF."""
    vol, _ = read_map(truth)
    n = vol.shape[0]
    rotations = euler_to_matrix(torch.from_numpy(ds.angles_deg()[idx]))
    spectra = Projector.from_volume(torch.from_numpy(vol).double()).project(rotations).to(torch.complex128)
    spectra = spectra * particle_ctfs(ds, idx, dtype=torch.float64)
    spectra = spectra * shift_phases_2d(n, -torch.from_numpy(ds.offsets_px()[idx]))
    return ifft2_centered(spectra, n).numpy()


def test_mixture_class_counts_follow_the_fractions(tmp_path):
    """--map twice with 0.8/0.2: round(0.8·n) particles of state 1 in a seeded random order, the
    true state as rlnClassNumber, one truth map per state and truth.mrc = state 1."""
    maps = two_state_maps(tmp_path)
    cfg = SimulateConfig(output=tmp_path / "s", n_particles=45, map_path=maps, fractions=(0.8, 0.2), seed=2)
    t = read_particles_star(simulate(cfg)).particles
    classes = t["rlnClassNumber"].to_numpy()
    assert (classes == 1).sum() == 36 and (classes == 2).sum() == 9
    assert np.any(np.diff(classes) < 0)  # shuffled, not state 1 then state 2
    again = read_particles_star(simulate(SimulateConfig(**{**cfg.__dict__, "output": tmp_path / "t"}))).particles
    np.testing.assert_array_equal(again["rlnClassNumber"], classes)
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["job.json", "particles.mrcs", "particles.star", "report.html", "truth.mrc",
                     "truth_class001.mrc", "truth_class002.mrc"]
    assert number(assert_report(tmp_path / "s" / "report.html", tmp_path, 2), "states") == \
        "1: 36 particles, 2: 9 particles"
    np.testing.assert_array_equal(read_map(tmp_path / "s" / "truth.mrc")[0],
                                  read_map(tmp_path / "s" / "truth_class001.mrc")[0])


def test_each_state_is_projected_from_its_own_map(tmp_path):
    """Noise-free: every particle's image is its own state's truth_classNNN.mrc at its true pose
    (and the other state's map does not reproduce it), so the class maps are on the images' scale."""
    maps = two_state_maps(tmp_path)
    star = simulate(SimulateConfig(output=tmp_path / "s", n_particles=24, map_path=maps, seed=3))
    ds = ParticleDataSet.from_star(star)
    classes = read_particles_star(star).particles["rlnClassNumber"].to_numpy()
    assert sorted(np.bincount(classes)[1:]) == [12, 12]
    for k, other in ((1, 2), (2, 1)):
        idx = np.flatnonzero(classes == k)
        images = ds.images(idx).astype(np.float64)
        own = predicted_images(ds, tmp_path / "s" / f"truth_class{k:03d}.mrc", idx)
        wrong = predicted_images(ds, tmp_path / "s" / f"truth_class{other:03d}.mrc", idx)
        assert np.abs(own - images).max() < 1e-3 * np.abs(images).max()
        assert np.abs(wrong - images).max() > 0.1 * np.abs(images).max()


def test_model_states_share_the_first_states_frame(tmp_path):
    """--states "A,B,C,D;A,B,C" of β-galactosidase: both maps are in the frame of the tetramer's
    centroid, so tetramer − trimer is the density of chain D alone in that frame (density is additive
    over atoms), on the images' scale."""
    model = STRUCTURES / "5a1a.cif.gz"
    if not model.exists():
        pytest.skip("shared/data/structures not beside the repository")
    res = CliRunner().invoke(app, ["simulate", "--model", str(model), "--states", "A,B,C,D;A,B,C", "--box", "32",
                                   "--angpix", "7", "--n", "4", "--o", str(tmp_path / "s"), "-q"])
    assert res.exit_code == 0, res.output
    full, pixel = read_map(tmp_path / "s" / "truth_class001.mrc")
    trimer, _ = read_map(tmp_path / "s" / "truth_class002.mrc")
    tetramer = read_model(model, ["A", "B", "C", "D"])
    centre = model_centroid(tetramer)
    ref = model_density(tetramer, box=32, pixel_size=pixel, centre_angstrom=centre).astype(np.float64)
    scale = float((full * ref).sum() / (ref * ref).sum())
    np.testing.assert_allclose(full, scale * ref, atol=1e-5 * np.abs(full).max())
    chain_d = scale * model_density(read_model(model, ["D"]), box=32, pixel_size=pixel, centre_angstrom=centre)
    assert np.abs((full - trimer) - chain_d).max() < 1e-4 * np.abs(full).max()
    assert np.abs(chain_d).sum() > 0.2 * np.abs(full).sum()  # one subunit of four: the check has teeth


def run_cli(args: list[str]):
    res = CliRunner().invoke(app, ["simulate", *args, "-q"])
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    return res.exit_code, lines


@pytest.mark.parametrize(
    ("fractions", "match"),
    [("0.7,0.2", "sum to 1"), ("0.5,0.3,0.2", "3 values for 2 states"), ("1.2,-0.2", "≥ 0"), ("a,b", "numbers")],
)
def test_bad_fractions_fail_in_one_line(tmp_path, fractions, match):
    m1, m2 = two_state_maps(tmp_path)
    code, lines = run_cli(["--map", str(m1), "--map", str(m2), "--fractions", fractions, "--n", "10",
                           "--o", str(tmp_path / "s")])
    assert code == 2 and len(lines) == 1 and "ember: error:" in lines[0] and match in lines[0], lines
    assert not (tmp_path / "s").exists()


def test_maps_of_different_boxes_fail_naming_the_file(tmp_path):
    m1, _ = two_state_maps(tmp_path)
    write_map(tmp_path / "small.mrc", blob_volume(16).numpy(), 2.0)
    code, lines = run_cli(["--map", str(m1), "--map", str(tmp_path / "small.mrc"), "--n", "10",
                           "--o", str(tmp_path / "s")])
    assert code == 2 and len(lines) == 1 and "small.mrc" in lines[0] and "16 px" in lines[0], lines
    assert not (tmp_path / "s").exists()


def test_unknown_chain_in_states_fails_naming_it(tmp_path):
    model = Path(__file__).parents[2] / "src" / "ember" / "data" / "1ake.cif"
    code, lines = run_cli(["--model", str(model), "--states", "A;E", "--box", "32", "--angpix", "2.5", "--n", "4",
                           "--o", str(tmp_path / "s")])
    assert code == 2 and len(lines) == 1 and "state 2 (E): no chain E" in lines[0], lines
    assert not (tmp_path / "s").exists()
