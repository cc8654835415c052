"""Regenerates the real-world-layout fixtures in this folder (python make_fixtures.py; see README.md).

Each file mimics a layout RELION users have, at a tiny size (boxes of 8-16 px, 2-3 images)."""

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

HERE = Path(__file__).parent
rng = np.random.default_rng(0)


def mrc(path, data, voxel, stack=False):
    path = HERE / path
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data.astype(np.float32))
        if stack:
            m.set_image_stack()
        m.voxel_size = voxel


def optics(pixel, box, dim=2, **extra):
    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                         "rlnAmplitudeContrast": [0.1], "rlnSphericalAberration": [2.7], "rlnVoltage": [300.0],
                         "rlnImagePixelSize": [pixel], "rlnImageSize": [box], "rlnImageDimensionality": [dim],
                         **{k: [v] for k, v in extra.items()}})


def particles(names, **extra):
    n = len(names)
    return pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": [1] * n, "rlnDefocusU": [15000.0] * n,
                         "rlnDefocusV": [14800.0] * n, "rlnDefocusAngle": [30.0] * n,
                         "rlnAngleRot": [10.0] * n, "rlnAngleTilt": [80.0] * n, "rlnAnglePsi": [-40.0] * n, **extra})


def star(path, blocks):
    starfile.write(blocks, HERE / path, overwrite=True)


images = rng.normal(size=(2, 16, 16))
two = ["000001@stack.mrcs", "000002@stack.mrcs"]
# a plain RELION 3.1 stack (2 Å) for the STAR files below
mrc("stack.mrcs", images, 2.0, stack=True)

# RELION 4 subtomogram averaging: 3D subtomograms, one .mrc volume per particle, no slice@
mrc("relion4_subtomo/Subtomograms/TS_01/1_subtomo.mrc", rng.normal(size=(8, 8, 8)), 4.0)
star("relion4_subtomo/particles.star", {
    "optics": optics(4.0, 8, dim=3, rlnTomoTiltSeriesPixelSize=1.0, rlnTomoSubtomogramBinning=4.0),
    "particles": pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnTomoParticleName": ["TS_01/1"],
                               "rlnCoordinateX": [100.0], "rlnCoordinateY": [120.0], "rlnCoordinateZ": [60.0],
                               "rlnImageName": ["Subtomograms/TS_01/1_subtomo.mrc"],
                               "rlnCtfImage": ["Subtomograms/TS_01/1_ctf.mrc"], "rlnOpticsGroup": [1],
                               "rlnAngleRot": [12.0], "rlnAngleTilt": [85.0], "rlnAnglePsi": [-30.0]})})

# RELION 5 tomography: each particle a 2D stack of its tilt images (no slice@), rlnTomoName, data_general
mrc("relion5_tomo/Subtomograms/TS_01/1_stack2d.mrcs", rng.normal(size=(3, 8, 8)), 4.0, stack=True)
star("relion5_tomo/particles.star", {
    "general": {"rlnTomoSubTomosAre2DStacks": 1},
    "optics": optics(4.0, 8, rlnTomoTiltSeriesPixelSize=1.0, rlnTomoSubtomogramBinning=4.0),
    "particles": pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnTomoParticleName": ["TS_01/1"],
                               "rlnCenteredCoordinateXAngst": [10.0], "rlnCenteredCoordinateYAngst": [-20.0],
                               "rlnCenteredCoordinateZAngst": [5.0],
                               "rlnImageName": ["Subtomograms/TS_01/1_stack2d.mrcs"], "rlnOpticsGroup": [1],
                               "rlnAngleRot": [12.0], "rlnAngleTilt": [85.0], "rlnAnglePsi": [-30.0]})})

# a stack whose header lacks the "MAP " ID string (old EMAN/IMAGIC conversions) and the same cut short
mrc("no_map_id.mrcs", images, 2.0, stack=True)
raw = bytearray((HERE / "no_map_id.mrcs").read_bytes())
raw[208:212] = b"\0\0\0\0"
(HERE / "no_map_id.mrcs").write_bytes(raw)
(HERE / "no_map_id_truncated.mrcs").write_bytes(raw[: 1024 + 16 * 16 * 4 + 100])
star("no_map_id.star", {"optics": optics(2.0, 16), "particles": particles([n.replace("stack", "no_map_id")
                                                                           for n in two])})
star("no_map_id_truncated.star", {"optics": optics(2.0, 16),
                                  "particles": particles([n.replace("stack", "no_map_id_truncated") for n in two])})

# a stack with the placeholder header pixel size 1.0 Å, the STAR saying 12 Å (binned tomography-style data)
mrc("apix_placeholder.mrcs", images, 1.0, stack=True)
star("apix_placeholder.star", {"optics": optics(12.0, 16),
                               "particles": particles([n.replace("stack", "apix_placeholder") for n in two])})

# relion_ctf_refine output: beam tilt, odd/even Zernike terms and an anisotropic magnification matrix
star("ctf_refined.star", {
    "optics": optics(2.0, 16, rlnBeamTiltX=0.35, rlnBeamTiltY=-0.21,
                     rlnOddZernike="[0.012,-0.034,0.002,0.0051,0.0003,-0.0007]",
                     rlnEvenZernike="[0.011,0.0,-0.027,0.004,0.0009,0.0,0.0,-0.0012,0.0]",
                     rlnMagMat00=1.0042, rlnMagMat01=0.0031, rlnMagMat10=0.0029, rlnMagMat11=0.9968),
    "particles": particles(two)})

# RELION 3.1 layout with offsets only in the RELION 3.0 pixel columns (hand-converted / third-party)
star("relion31_pixel_offsets.star", {"optics": optics(2.0, 16),
                                     "particles": particles(two, rlnOriginX=[3.0, -2.0], rlnOriginY=[1.0, 0.5])})

# a cryoSPARC .cs particle file: a NumPy structured array written with np.save
cs = np.zeros(2, dtype=[("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
                        ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("alignments3D/pose", "<f4", (3,))])
cs["uid"] = [1234567890123, 1234567890124]
cs["blob/path"] = b"J12/extract/mic_001_particles.mrc"
cs["blob/idx"] = [0, 1]
cs["blob/psize_A"] = 2.0
with open(HERE / "cryosparc_particles.cs", "wb") as f:
    np.save(f, cs)

# a map with voxel size 0 in its header (written by tools that leave the cell zero)
mrc("map_apix0.mrc", rng.normal(size=(8, 8, 8)), 0.0)

# a STAR whose loop has a row with too many fields
(HERE / "malformed.star").write_text(
    "data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n000001@stack.mrcs 15000\n"
    "000002@stack.mrcs 15000 0.0 7\n"
)
