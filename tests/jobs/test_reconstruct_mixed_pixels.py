"""Optics groups with different pixel sizes in one reconstruction (as RELION's relion_reconstruct)
and one refinement (as RELION 3.1's relion_refine): each group compared with and back-projected
into the model grid of the first optics group at its own pixel size and box."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from typer.testing import CliRunner

from ember.cli.main import app
from ember.errors import EmberInputError
from ember.io.atomic_model import model_density, read_model
from ember.io.mrc import read_map, write_map
from ember.io.particles import ParticleDataSet
from ember.io.star import ParticleTable, read_particles_star, write_particles_star
from ember.jobs.reconstruct import ReconstructConfig, reconstruct
from ember.jobs.refine3d import Refine3DConfig, refine3d
from ember.jobs.simulate import SimulateConfig, simulate
from ember.maths.fsc import fsc
from ember.maths.rotations import angular_distance_deg, euler_to_matrix

MODEL = Path(__file__).parents[2] / "src" / "ember" / "data" / "1ake.cif"
# (pixel size Å, box) of the two groups: the same map imaged at two magnifications
GROUPS = ((2.5, 32), (2.0, 32))  # group 2: 2.5/2.0 = 1.25× finer pixels, 64 Å instead of 80 Å
BOX_GROUPS = ((2.5, 32), (2.0, 40))  # the same 80 Å field of view in a larger box
SHELLS = slice(2, 15)


def combine(out: Path, stars: list[Path], name: str = "combined.star") -> Path:
    """One STAR with the particles of `stars` (each a one-group simulate output) as optics groups 1, 2, …"""
    optics, particles = [], []
    for g, star in enumerate(stars, start=1):
        t = read_particles_star(star)
        optics.append(t.optics.assign(rlnOpticsGroup=g, rlnOpticsGroupName=f"opticsGroup{g}"))
        folder = star.parent.relative_to(out)
        particles.append(
            t.particles.assign(
                rlnOpticsGroup=g,
                rlnImageName=t.particles["rlnImageName"].str.replace("@", f"@{folder}/", regex=False),
            )
        )
    table = ParticleTable(pd.concat(optics, ignore_index=True), pd.concat(particles, ignore_index=True))
    write_particles_star(out / name, table)
    return out / name


def resample(volume: np.ndarray, pixel: float, new_pixel: float, new_box: int) -> np.ndarray:
    """`volume` at `new_pixel` (Fourier padding, same band) and cropped/padded to `new_box`, centred."""
    n = volume.shape[0]
    m = round(n * pixel / new_pixel)  # the same field of view at the new pixel size
    assert m * new_pixel == pytest.approx(n * pixel) and m >= n
    f = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(torch.from_numpy(volume).double())))
    padded = torch.zeros((m, m, m), dtype=f.dtype)
    o = m // 2 - n // 2
    padded[o : o + n, o : o + n, o : o + n] = f
    v = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(padded))).real.numpy() * (m / n) ** 3
    out = np.zeros((new_box,) * 3, dtype=np.float32)
    a, b = m // 2 - min(m, new_box) // 2, new_box // 2 - min(m, new_box) // 2
    c = min(m, new_box)
    out[b : b + c, b : b + c, b : b + c] = v[a : a + c, a : a + c, a : a + c]
    return out


def make_mixed(out: Path, groups) -> Path:
    """The same map (1AKE at the first group's pixel size) imaged at each group's pixel size and box:
    groups 2, … from the map resampled (the same Fourier band, so all groups see one object; a box
    of 32 at 2.0 Å crops its corners)."""
    (pixel, box), *others = groups
    truth = model_density(read_model(MODEL, None), box=box, pixel_size=pixel, bfactor_floor=20.0)
    maps = [out / "map_g1.mrc"]
    write_map(maps[0], truth, pixel)
    for g, (p, b) in enumerate(others, start=2):
        maps.append(out / f"map_g{g}.mrc")
        write_map(maps[-1], resample(truth, pixel, p, b), p)
    stars = [
        simulate(SimulateConfig(output=out / f"g{g}", n_particles=600, map_path=m, snr=0.3, seed=20 + g))
        for g, m in enumerate(maps, start=1)
    ]
    return combine(out, stars)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return make_mixed(tmp_path_factory.mktemp("mixed"), GROUPS)


@pytest.fixture(scope="module")
def mixed_boxes(tmp_path_factory):
    return make_mixed(tmp_path_factory.mktemp("mixed_boxes"), BOX_GROUPS)


def fsc_vs_truth(volume, truth_path: Path) -> torch.Tensor:
    truth, _ = read_map(truth_path)
    return fsc(torch.as_tensor(volume).double(), torch.from_numpy(truth).double())


def test_groups_at_two_pixel_sizes_reconstruct_together(mixed, tmp_path):
    truth = mixed.parent / "g1" / "truth.mrc"
    both = reconstruct(ReconstructConfig(star=mixed, output=tmp_path / "both.mrc"))
    assert read_map(tmp_path / "both.mrc")[1] == pytest.approx(GROUPS[0][0])  # the first group's pixel size
    first = reconstruct(ReconstructConfig(star=mixed.parent / "g1" / "particles.star", output=tmp_path / "g1.mrc"))
    # group 2 told group 1's pixel size: loads as one pixel size, back-projected at the wrong scale
    t = read_particles_star(mixed)
    t.optics.loc[1, "rlnImagePixelSize"] = GROUPS[0][0]
    write_particles_star(mixed.parent / "wrong.star", t)
    wrong = reconstruct(ReconstructConfig(star=mixed.parent / "wrong.star", output=tmp_path / "wrong.mrc"))
    f_both, f_first, f_wrong = (fsc_vs_truth(v, truth)[SHELLS].mean().item() for v in (both, first, wrong))
    print(f"FSC vs truth, shells 2-14: both {f_both:.3f}, group 1 alone {f_first:.3f}, wrong pixel {f_wrong:.3f}")
    assert f_both > f_first + 0.02  # group 2's particles add signal
    assert f_both > f_wrong + 0.1  # and only at their own pixel size


def test_wiener_and_halves_with_two_pixel_sizes(mixed, tmp_path):
    truth = mixed.parent / "g1" / "truth.mrc"
    full = reconstruct(ReconstructConfig(star=mixed, output=tmp_path / "w.mrc", wiener=True))
    half = reconstruct(ReconstructConfig(star=mixed, output=tmp_path / "h.mrc", subset=1))
    assert fsc_vs_truth(full, truth)[SHELLS].mean() > fsc_vs_truth(half, truth)[SHELLS].mean()


def test_other_jobs_refuse_mixed_pixel_sizes_in_one_line(mixed):
    with pytest.raises(EmberInputError, match="rescale_angpix") as err:
        ParticleDataSet.from_star(mixed)
    assert "2.5" in str(err.value) and "2" in str(err.value) and "\n" not in str(err.value)


def test_class3d_cli_refuses_mixed_pixel_sizes(mixed, tmp_path):
    out = tmp_path / "class3d"
    ref = mixed.parent / "g1" / "truth.mrc"
    args = ["class3d", "--i", str(mixed), "--ref", str(ref), "--o", str(out), "--K", "2", "--particle_diameter", "60"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "refine3d handle" in lines[0] and "rescale_angpix" in lines[0], res.output
    assert not out.exists() or not any(out.iterdir())


def _refine(star: Path, reference: Path, out: Path) -> Path:
    return refine3d(Refine3DConfig(star=star, reference=reference, output=out,
                                   particle_diameter_angstrom=65.0, ini_high_angstrom=15.0, healpix_order=1,
                                   auto_local_healpix_order=3, max_iterations=6, seed=3))


@pytest.mark.parametrize("which", ["mixed", "mixed_boxes"])
def test_refine3d_aligns_each_group_at_its_own_pixel_size(which, request, tmp_path):
    """refine3d of two optics groups (2.5 Å and 2.0 Å pixels; box 32, or 32 and 40): the particles
    of both groups get their true poses and their true offsets in Å, the σ² of each group is
    written over its own shells, and the map uses both groups (closer to the truth than the
    first group's particles refined alone)."""
    star = request.getfixturevalue(which)
    groups = GROUPS if which == "mixed" else BOX_GROUPS
    truth_map = star.parent / "g1" / "truth.mrc"
    final = _refine(star, truth_map, tmp_path / "both")
    truth = read_particles_star(star).particles
    data = read_particles_star(final.parent / "run_data.star").particles
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    err = angular_distance_deg(euler_to_matrix(torch.tensor(data[cols].to_numpy())),
                               euler_to_matrix(torch.tensor(truth[cols].to_numpy()))).numpy()
    shift = np.hypot(*(data[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
                       - truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).T)
    for g, (pixel, _) in enumerate(groups, start=1):
        mine = (truth["rlnOpticsGroup"] == g).to_numpy()
        print(f"group {g}: median angular error {np.median(err[mine]):.2f}°, shift {np.median(shift[mine]):.2f} Å")
        assert np.median(err[mine]) < 10.0
        assert np.median(shift[mine]) < 0.5 * pixel
    model = starfile.read(final.parent / "run_model.star", always_dict=True)
    for g, (pixel, box) in enumerate(groups, start=1):
        table = model[f"model_optics_group_{g}"]
        assert len(table) == box // 2 + 1
        assert table["rlnResolution"].iloc[-1] == pytest.approx(1 / (2 * pixel))
    alone = _refine(star.parent / "g1" / "particles.star", truth_map, tmp_path / "alone")
    f_both, f_alone = (fsc_vs_truth(read_map(f)[0], truth_map)[SHELLS].mean().item() for f in (final, alone))
    print(f"FSC vs truth, shells 2-14: both groups {f_both:.3f}, group 1 alone {f_alone:.3f}")
    assert f_both > f_alone + 0.01


def test_groups_with_different_boxes_reconstruct_together(mixed_boxes, tmp_path):
    truth = mixed_boxes.parent / "g1" / "truth.mrc"
    both = reconstruct(ReconstructConfig(star=mixed_boxes, output=tmp_path / "both.mrc"))
    assert both.shape == (32, 32, 32)
    first_star = mixed_boxes.parent / "g1" / "particles.star"
    first = reconstruct(ReconstructConfig(star=first_star, output=tmp_path / "g1.mrc"))
    f_both, f_first = (fsc_vs_truth(v, truth)[SHELLS].mean().item() for v in (both, first))
    print(f"FSC vs truth, shells 2-14: both {f_both:.3f}, group 1 alone {f_first:.3f}")
    assert f_both > f_first + 0.03


@pytest.mark.skipif(shutil.which("relion_reconstruct") is None, reason="RELION not installed")
@pytest.mark.parametrize("which", ["mixed", "mixed_boxes"])
def test_matches_relion_reconstruct(which, request, tmp_path):
    """relion_reconstruct (3.1: the first optics group's pixel size and box) of the same STAR."""
    star = request.getfixturevalue(which)
    out = tmp_path / "relion.mrc"
    subprocess.run(
        ["relion_reconstruct", "--i", star.name, "--o", str(out), "--ctf"],
        cwd=star.parent, check=True, capture_output=True,
    )
    theirs, pixel = read_map(out)
    assert pixel == pytest.approx(GROUPS[0][0]) and theirs.shape == (32, 32, 32)
    ours = reconstruct(ReconstructConfig(star=star, output=tmp_path / "ours.mrc"))
    agreement = fsc(torch.from_numpy(ours).double(), torch.from_numpy(theirs).double())
    print("FSC ember vs relion_reconstruct:", [round(float(v), 3) for v in agreement])
    assert agreement[1:15].min() > 0.97
