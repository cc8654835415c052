import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ember.cli.main import app
from ember.errors import EmberInputError
from ember.io.mrc import read_map, write_map
from ember.io.particles import ParticleDataSet
from ember.io.star import ParticleTable, read_particles_star, write_particles_star
from ember.jobs.reconstruct import ReconstructConfig, reconstruct, report_path
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.fourier import fft2_centered, ifft2_centered
from ember.maths.fsc import fsc, resolution_shell
from ember.operators.ctf import particle_ctfs
from tests.report_check import assert_report, number

MODEL = Path(__file__).parents[2] / "src" / "ember" / "data" / "1ake.cif"


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    out = tmp_path_factory.mktemp("noisy")
    return simulate(
        SimulateConfig(output=out, n_particles=1500, model_path=MODEL, box=32, pixel_size=2.5, snr=0.2, seed=2)
    )


def fsc_vs_truth(volume: np.ndarray, star: Path) -> torch.Tensor:
    truth, _ = read_map(star.parent / "truth.mrc")
    return fsc(torch.from_numpy(volume).double(), torch.from_numpy(truth).double())


def test_noise_free_reconstruction_reaches_near_nyquist(tmp_path):
    star = simulate(
        SimulateConfig(output=tmp_path / "s", n_particles=1000, model_path=MODEL, box=32, pixel_size=2.5, seed=1)
    )
    vol = reconstruct(ReconstructConfig(star=star, output=tmp_path / "rec.mrc"))
    curve = fsc_vs_truth(vol, star)
    assert resolution_shell(curve, 0.5) >= 14  # of 16 (Nyquist)
    assert read_map(tmp_path / "rec.mrc")[1] == pytest.approx(2.5)


def test_ctf_correction_matters(noisy, tmp_path):
    with_ctf = fsc_vs_truth(reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "a.mrc")), noisy)
    without = fsc_vs_truth(reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "b.mrc", ctf=False)), noisy)
    assert with_ctf[1:12].mean() > without[1:12].mean() + 0.2


def test_halves_and_wiener(noisy, tmp_path):
    h1 = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "h1.mrc", subset=1))
    h2 = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "h2.mrc", subset=2))
    full = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "w.mrc", wiener=True))
    half_curve = fsc(torch.from_numpy(h1).double(), torch.from_numpy(h2).double())
    truth_h1, truth_full = fsc_vs_truth(h1, noisy), fsc_vs_truth(full, noisy)
    # the halves are independent noisy estimates: their FSC is below each one's FSC with the truth
    assert half_curve[4:14].mean() < truth_h1[4:14].mean()
    # all particles with the Wiener filter beat one half
    assert resolution_shell(truth_full, 0.5) >= resolution_shell(truth_h1, 0.5)
    assert truth_full[8:16].mean() > truth_h1[8:16].mean()
    # Wiener filtering damps the noise-dominated shells relative to the unregularised map
    plain = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "p.mrc"))
    assert np.abs(full).sum() < np.abs(plain).sum()
    html = assert_report(report_path(tmp_path / "w.mrc"), tmp_path, 3)  # FSC, sections, directions
    below = np.flatnonzero(half_curve[1:].numpy() < 0.143)  # the last shell at or above 0.143
    shell = int(below[0]) if len(below) else 16
    assert number(html, "half-set resolution (FSC 0.143)") == f"{32 * 2.5 / shell:.2f} Å"


def test_maxres_and_bad_options(noisy, tmp_path):
    vol = reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "m.mrc", maxres_angstrom=10.0))
    curve = fsc_vs_truth(vol, noisy)
    assert curve[12:].abs().max() < 0.2  # nothing beyond shell 8 (10 Å) but interpolation leakage
    with pytest.raises(EmberInputError, match="Nyquist"):
        reconstruct(ReconstructConfig(star=noisy, output=tmp_path / "x.mrc", maxres_angstrom=3.0))
    with pytest.raises(EmberInputError, match="subset"):
        ReconstructConfig(star=noisy, output=tmp_path / "x.mrc", subset=3)
    assert not (tmp_path / "x.mrc").exists()


# (voltage kV, Cs mm, amplitude contrast) of the two simulated optics groups
GROUPS = ((300.0, 2.7, 0.1), (200.0, 2.0, 0.07))
CONSTANTS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


@pytest.fixture(scope="module")
def two_groups(tmp_path_factory):
    """Noise-free particles of one map from two microscopes, merged into one two-group STAR."""
    out = tmp_path_factory.mktemp("two_groups")
    optics, particles = [], []
    for g, (kv, cs, q0) in enumerate(GROUPS, start=1):
        star = simulate(
            SimulateConfig(
                output=out / f"g{g}",
                n_particles=500,
                model_path=MODEL,
                box=32,
                pixel_size=2.5,
                voltage_kv=kv,
                cs_mm=cs,
                amplitude_contrast=q0,
                seed=10 + g,
            )
        )
        t = read_particles_star(star)
        optics.append(t.optics.assign(rlnOpticsGroup=g, rlnOpticsGroupName=f"group{g}"))
        particles.append(
            t.particles.assign(
                rlnOpticsGroup=g, rlnImageName=t.particles["rlnImageName"].str.replace("@", f"@g{g}/", regex=False)
            )
        )
    table = ParticleTable(pd.concat(optics, ignore_index=True), pd.concat(particles, ignore_index=True))
    write_particles_star(out / "both.star", table)
    return out / "both.star"


def test_two_optics_groups_each_get_their_own_ctf(two_groups, tmp_path):
    t = read_particles_star(two_groups)
    first_for_all = tmp_path / "first.star"
    t.optics.loc[1, list(CONSTANTS)] = t.optics.loc[0, list(CONSTANTS)].to_numpy()  # group 2 told group 1's
    t.particles["rlnImageName"] = ParticleDataSet.from_star(two_groups).image_names_relative_to(tmp_path)
    write_particles_star(first_for_all, t)
    truth_star = two_groups.parent / "g1" / "particles.star"
    right = fsc_vs_truth(reconstruct(ReconstructConfig(star=two_groups, output=tmp_path / "r.mrc")), truth_star)
    wrong = fsc_vs_truth(reconstruct(ReconstructConfig(star=first_for_all, output=tmp_path / "w.mrc")), truth_star)
    assert resolution_shell(right, 0.5) >= 14
    # noise-free: per-group optics leave a tiny error; group 2 with group 1's constants a large one
    assert (1 - right[4:15]).mean() < 0.1 * (1 - wrong[4:15]).mean()


@pytest.mark.skipif(shutil.which("relion_reconstruct") is None, reason="RELION not installed")
def test_two_voltages_match_relion_reconstruct(two_groups, tmp_path):
    """relion_reconstruct --ctf (RELION 3.1.3) of the 300 kV + 200 kV STAR: the same map, FSC ≥ 0.98
    over the band up to 15/16 of Nyquist (issue 13's bar)."""
    out = tmp_path / "relion.mrc"
    subprocess.run(["relion_reconstruct", "--i", two_groups.name, "--o", str(out), "--ctf"], cwd=two_groups.parent,
                   check=True, capture_output=True)
    theirs, _ = read_map(out)
    ours = reconstruct(ReconstructConfig(star=two_groups, output=tmp_path / "ours.mrc"))
    agreement = fsc(torch.from_numpy(ours).double(), torch.from_numpy(theirs).double())
    assert agreement[1:16].min() >= 0.98, agreement


def test_ctf_premultiplied_per_optics_group(two_groups, tmp_path):
    """Group 2's images stored as C·X with rlnCtfDataAreCtfPremultiplied = 1 give the same map."""
    ds = ParticleDataSet.from_star(two_groups)
    second = np.flatnonzero(ds.optics_group_index() == 1)
    c = particle_ctfs(ds, second, dtype=torch.float64)
    images = torch.from_numpy(ds.images(second)).double()
    premultiplied = ifft2_centered(fft2_centered(images) * c, ds.box).float().numpy()
    write_map(tmp_path / "premult.mrcs", premultiplied, ds.pixel_size)
    t = read_particles_star(two_groups)
    names = np.array(ds.image_names_relative_to(tmp_path), dtype=object)
    names[second] = [f"{i + 1:06d}@premult.mrcs" for i in range(len(second))]
    t.particles["rlnImageName"] = names
    t.optics["rlnCtfDataAreCtfPremultiplied"] = [0, 1]
    write_particles_star(tmp_path / "premult.star", t)
    ds.close()
    plain = reconstruct(ReconstructConfig(star=two_groups, output=tmp_path / "a.mrc"))
    premult = reconstruct(ReconstructConfig(star=tmp_path / "premult.star", output=tmp_path / "b.mrc"))
    np.testing.assert_allclose(premult, plain, atol=1e-4 * np.abs(plain).max())


def test_cli_refuses_missing_voltage_with_ctf_columns(two_groups, tmp_path):
    t = read_particles_star(two_groups)
    t.optics = t.optics.drop(columns=["rlnVoltage"])
    t.particles["rlnImageName"] = ParticleDataSet.from_star(two_groups).image_names_relative_to(tmp_path)
    write_particles_star(tmp_path / "p.star", t)
    out = tmp_path / "r.mrc"
    res = CliRunner().invoke(app, ["reconstruct", "--i", str(tmp_path / "p.star"), "--o", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "ember: error:" in lines[0] and "rlnVoltage" in lines[0], res.output
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "p.star"]
