"""Jobs and CLI on real-world-layout files (tests/data/realworld, made by make_fixtures.py there):
one-line refusals, exit code 2, nothing written."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ember.cli.main import app
from ember.errors import EmberInputError
from ember.jobs.fsc import fsc_job

DATA = Path(__file__).parents[1] / "data" / "realworld"
runner = CliRunner()


def one_line_error(args: list[str], match: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "ember: error:" in lines[0] and match in lines[0], res.output


@pytest.mark.parametrize("star", ["relion4_subtomo/particles.star", "relion5_tomo/particles.star"])
def test_reconstruct_refuses_tomography_particles_in_one_line(tmp_path, star):
    """Before: RELION 4 subtomograms were back-projected as their first z slice and a map written."""
    one_line_error(["reconstruct", "--i", str(DATA / star), "--o", str(tmp_path / "rec.mrc")], "rlnTomoName")
    assert not (tmp_path / "rec.mrc").exists()


def test_fsc_of_maps_with_voxel_size_0_refused(tmp_path):
    """Before: `ember fsc` printed "FSC 0.5: 0.00 Å" (and the plot divided by zero)."""
    with pytest.raises(EmberInputError, match=r"map_apix0.mrc: .*pixel size 0"):
        fsc_job(DATA / "map_apix0.mrc", DATA / "map_apix0.mrc", tmp_path / "out")
    one_line_error(["fsc", str(DATA / "map_apix0.mrc"), str(DATA / "map_apix0.mrc"), "--o", str(tmp_path / "o")],
                   "pixel size 0")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_reconstruct_refuses_cryosparc_file_in_one_line(tmp_path):
    one_line_error(["reconstruct", "--i", str(DATA / "cryosparc_particles.cs"), "--o", str(tmp_path / "r.mrc")],
                   "csparc2star.py")
    assert not (tmp_path / "r.mrc").exists()
