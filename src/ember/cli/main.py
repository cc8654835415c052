"""The `ember` command line: parses options, calls the job functions, reports errors in one line."""

from __future__ import annotations

import functools
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ember.errors import EmberInputError

app = typer.Typer(
    help="Ember: regularised-likelihood cryo-EM reconstruction (RELION-compatible files).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]ember: error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _worker() -> bool:
    """A torchrun rank other than 0 (rank 0 speaks for all)."""
    return os.environ.get("RANK", "0") != "0"


def handles_errors(func):
    """Turn EmberInputError (and a few stdlib input errors) into one line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.WARNING if _worker() else logging.INFO, format="%(message)s",
                            stream=sys.stderr)
        try:
            return func(*args, **kwargs)
        except EmberInputError as exc:
            _fail(str(exc))
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            _fail(f"{exc.filename}: {exc.strerror}")

    return wrapper


@contextmanager
def progress_bar(description: str, quiet: bool = False):
    """Yield a `progress(done, total)` callback drawing a rich bar (or nothing when quiet).

    The bar appears at the first update, so input errors found before any work print alone."""
    if quiet or _worker():
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task(description, total=None, rate="")

    last = [0]

    def update(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        if done < last[0]:
            bar.reset(task)
        last[0] = done
        elapsed = bar.tasks[task].elapsed or 0.0
        rate = f"{done / elapsed:,.0f} particles/s" if elapsed > 0 else ""
        bar.update(task, completed=done, total=total, rate=rate)

    def describe(text: str) -> None:
        bar.update(task, description=text)

    update.describe = describe
    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Seed = Annotated[int, typer.Option(help="Random seed (results are reproducible under it).")]
Device = Annotated[str, typer.Option(help="Compute device: cpu, or cuda / cuda:K.")]
Threads = Annotated[Optional[int], typer.Option("--j", help="CPU threads for torch.")]
DontSkipGridding = Annotated[bool, typer.Option(
    "--dont_skip_gridding", help="Iterative gridding in the M-step (RELION 3.1's default; RELION 4/5 skip it).")]
GriddingIter = Annotated[int, typer.Option("--gridding_iter", help="Iterations of the gridding with --dont_skip_gridding.")]
SigmaOffset = Annotated[float, typer.Option(
    "--offset", help="Initial σ (Å) of the Gaussian prior on each particle's translation, centred on rlnOriginX/YPriorAngst "
    "or else the box centre (RELION's --offset); re-estimated every iteration unless --fix_sigma_offset.")]
FixSigmaOffset = Annotated[bool, typer.Option(
    "--fix_sigma_offset", help="Keep the translation prior's σ at --offset instead of re-estimating it (RELION's flag).")]
Norm = Annotated[bool, typer.Option("--norm", help=(
    "Per-particle norm correction (RELION --norm): images scaled by ⟨norm⟩/norm_j, norm_j = residual standard deviation."))]
Scale = Annotated[bool, typer.Option("--scale", help=(
    "Per-group intensity scale correction (RELION --scale) over rlnGroupNumber groups (needs ≥ 2 groups)."))]


@app.command()
@handles_errors
def simulate(
    output: Annotated[Path, typer.Option("--o", help="Output folder.")],
    n: Annotated[int, typer.Option("--n", help="Number of particles.")],
    map_path: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--map",
            help="Ground-truth MRC map (pixel size from its header). Repeat for a mixture of states "
            "(maps of one box and pixel size; state k = the k-th --map).",
        ),
    ] = None,
    model: Annotated[
        Optional[Path], typer.Option("--model", help="Atomic model (PDB/mmCIF, .gz ok) → density with gemmi.")
    ] = None,
    chains: Annotated[
        Optional[str], typer.Option(help="Comma-separated chains of --model to keep (default: assembly 1).")
    ] = None,
    states: Annotated[
        Optional[str],
        typer.Option(
            help='Mixture of states of --model: chain sets separated by ";", e.g. "A,B,C,D;A,B,C". All '
            "maps in the frame of the first state's centroid."
        ),
    ] = None,
    fractions: Annotated[
        Optional[str],
        typer.Option(help="Share of particles per state, comma-separated, summing to 1 (default: equal), e.g. 0.8,0.2."),
    ] = None,
    box: Annotated[Optional[int], typer.Option(help="Box size in pixels (even; needed with --model).")] = None,
    angpix: Annotated[Optional[float], typer.Option(help="Pixel size in Å (needed with --model).")] = None,
    snr: Annotated[
        Optional[float],
        typer.Option(
            help="Signal-to-noise ratio (signal variance / noise variance over the box); omit for noise-free."
        ),
    ] = None,
    defocus: Annotated[tuple[float, float], typer.Option(help="Defocus range MIN MAX in µm (underfocus positive).")] = (
        1.0,
        3.0,
    ),
    astigmatism: Annotated[float, typer.Option(help="Largest |DefocusU − DefocusV| in Å.")] = 200.0,
    max_offset: Annotated[float, typer.Option(help="Largest |offset| per axis in pixels (uniform, sub-pixel).")] = 3.0,
    voltage: Annotated[float, typer.Option(help="Acceleration voltage in kV.")] = 300.0,
    cs: Annotated[float, typer.Option(help="Spherical aberration in mm.")] = 2.7,
    q0: Annotated[float, typer.Option(help="Amplitude contrast (fraction).")] = 0.1,
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Do not apply a CTF.")] = False,
    angles_from: Annotated[
        Optional[Path], typer.Option(help="Take orientations from this STAR instead of uniform random.")
    ] = None,
    bfactor_floor: Annotated[float, typer.Option(help="Raise atomic B-factors to at least this (Å²).")] = 20.0,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Simulate particles: X = shift(CTF · projection, −offset) + white noise.

    Writes particles.mrcs, a RELION 3.1 particles.star holding the true angles, offsets and CTF,
    truth.mrc (on the images' scale) and job.json. With several states (--map repeated, or --states)
    also truth_class001.mrc, … and the true state as rlnClassNumber; the SNR is the first state's.

    Example: ember simulate --model 6msm.pdb.gz --box 128 --angpix 1.5 --n 5000 --snr 0.05 --o sim/

    Example: ember simulate --model 5a1a.cif.gz --states "A,B,C,D;A,B,C" --fractions 0.8,0.2 --box 128 --angpix 2
    --n 5000 --snr 0.05 --o sim/
    """
    from ember.jobs.simulate import SimulateConfig
    from ember.jobs.simulate import simulate as run

    share: tuple[float, ...] | None = None
    if fractions is not None:
        try:
            share = tuple(float(x) for x in fractions.split(","))
        except ValueError:
            raise EmberInputError(
                None, f"--fractions must be numbers separated by commas (got '{fractions}')", "e.g. --fractions 0.8,0.2"
            ) from None
    cfg = SimulateConfig(
        output=output,
        n_particles=n,
        map_path=tuple(map_path) if map_path else None,
        model_path=model,
        chains=tuple(chains.split(",")) if chains else None,
        states=tuple(tuple(c.strip() for c in part.split(",") if c.strip()) for part in states.split(";"))
        if states is not None
        else None,
        fractions=share,
        box=box,
        pixel_size=angpix,
        snr=snr,
        defocus_min_um=defocus[0],
        defocus_max_um=defocus[1],
        astigmatism_angstrom=astigmatism,
        max_offset_px=max_offset,
        voltage_kv=voltage,
        cs_mm=cs,
        amplitude_contrast=q0,
        ctf=not no_ctf,
        angles_from=angles_from,
        bfactor_floor=bfactor_floor,
        seed=seed,
    )
    with progress_bar("simulating", quiet) as bar:
        star = run(cfg, bar)
    console.print(f"wrote {star} and {star.parent / 'report.html'}")


@app.command()
@handles_errors
def reconstruct(
    star: Annotated[Path, typer.Option("--i", help="Particle STAR file (RELION 3.0 or 3.1+).")],
    output: Annotated[Path, typer.Option("--o", help="Output map (.mrc).")],
    sym: Annotated[str, typer.Option("--sym", help="Point group: C1, Cn, Dn, T, O, I (RELION axes).")] = "C1",
    subset: Annotated[Optional[int], typer.Option(help="Use only rlnRandomSubset = 1 or 2.")] = None,
    maxres: Annotated[Optional[float], typer.Option(help="Highest resolution used, in Å.")] = None,
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Ignore the CTF columns.")] = False,
    wiener: Annotated[
        bool,
        typer.Option(
            "--wiener", help="Gold-standard Wiener filter: τ² from the FSC of the two rlnRandomSubset halves."
        ),
    ] = False,
    tau2_fudge: Annotated[float, typer.Option(help="Regularisation parameter T (with --wiener).")] = 1.0,
    pad: Annotated[int, typer.Option(help="Fourier padding factor.")] = 2,
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Reconstruct a map from particles with known orientations (like relion_reconstruct).

    Uses rlnAngleRot/Tilt/Psi (degrees), rlnOriginX/YAngst and the CTF columns.

    Example: ember reconstruct --i sim/particles.star --o rec.mrc --sym D7 --j 2
    """
    from ember.jobs.reconstruct import ReconstructConfig, report_path
    from ember.jobs.reconstruct import reconstruct as run

    cfg = ReconstructConfig(
        star=star,
        output=output,
        symmetry=sym,
        subset=subset,
        maxres_angstrom=maxres,
        ctf=not no_ctf,
        wiener=wiener,
        tau2_fudge=tau2_fudge,
        pad=pad,
        device=device,
        threads=threads,
    )
    with progress_bar("back-projecting", quiet) as bar:
        run(cfg, bar)
    console.print(f"wrote {output} and {report_path(output)}")


@app.command()
@handles_errors
def fsc(
    map1: Annotated[Path, typer.Argument(help="First map (.mrc).")],
    map2: Annotated[Path, typer.Argument(help="Second map (.mrc).")],
    output: Annotated[Optional[Path], typer.Option("--o", help="Folder for fsc.star and fsc.png.")] = None,
) -> None:
    """Fourier shell correlation of two maps; prints the resolution (Å) at FSC 0.5 and 0.143.

    Example: ember fsc half1.mrc half2.mrc --o fsc/
    """
    from ember.jobs.fsc import fsc_job

    result = fsc_job(map1, map2, output)
    typer.echo(f"FSC 0.5:   {result.resolution_05:.2f} Å")
    typer.echo(f"FSC 0.143: {result.resolution_0143:.2f} Å")


@app.command()
@handles_errors
def refine3d(
    star: Annotated[Path, typer.Option("--i", help="Particle STAR file (RELION 3.0 or 3.1+).")],
    reference: Annotated[Path, typer.Option("--ref", help="Starting reference map (.mrc), same box and pixel size as the particles.")],
    output: Annotated[Path, typer.Option("--o", help="Output folder (RELION job layout: run_itNNN_*).")],
    particle_diameter: Annotated[float, typer.Option("--particle_diameter", help="Particle diameter in Å (soft circular mask and solvent mask).")],
    sym: Annotated[str, typer.Option("--sym", help="Point group: C1, Cn, Dn, T, O, I.")] = "C1",
    ini_high: Annotated[float, typer.Option("--ini_high", help="Low-pass the reference to this resolution (Å) first.")] = 60.0,
    healpix_order: Annotated[int, typer.Option("--healpix_order", help="Initial HEALPix order (2 = 15° coarse, 7.5° after oversampling).")] = 2,
    oversampling: Annotated[int, typer.Option("--oversampling", help="Adaptive oversampling order (0 = one pass).")] = 1,
    offset_range: Annotated[float, typer.Option("--offset_range", help="Translation search range in pixels.")] = 5.0,
    offset_step: Annotated[float, typer.Option("--offset_step", help="Coarse translation step in pixels (fine = step / 2^oversampling).")] = 2.0,
    sigma_offset: SigmaOffset = 10.0,
    fix_sigma_offset: FixSigmaOffset = False,
    auto_local_healpix_order: Annotated[int, typer.Option("--auto_local_healpix_order", help="Switch to local searches from this HEALPix order.")] = 4,
    low_resol_join_halves: Annotated[float, typer.Option("--low_resol_join_halves", help="Halves share data below this resolution (Å).")] = 40.0,
    tau2_fudge: Annotated[float, typer.Option("--tau2_fudge", help="Regularisation parameter T.")] = 1.0,
    maxsig: Annotated[Optional[int], typer.Option("--maxsig", help="At most this many significant coarse samples per image (default: no cap).")] = None,
    dont_skip_gridding: DontSkipGridding = False,
    gridding_iter: GriddingIter = 10,
    iterations: Annotated[int, typer.Option("--iter", help="Maximum number of iterations before the final one.")] = 50,
    sigma_ang: Annotated[Optional[float], typer.Option("--sigma_ang", help="Local searches from the first iteration: σ (degrees) of the Gaussian prior around each particle's prior angles (rlnAngleRot/Tilt/PsiPrior where set, else its current angles); ±3σ are searched.")] = None,
    norm: Norm = False,
    scale: Scale = False,
    maxcc: Annotated[bool, typer.Option("--maxcc", help="Conventional baseline: best cross-correlation match, one orientation per image.")] = False,
    no_halves: Annotated[bool, typer.Option("--no_halves", help="Refine one model from all data (no gold standard).")] = False,
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Ignore the CTF columns.")] = False,
    continue_from: Annotated[Optional[Path], typer.Option("--continue", help="Resume from a run_itNNN_state.json.")] = None,
    batch_size: Annotated[int, typer.Option(help="Particles per E-step batch (memory).")] = 64,
    seed: Seed = 0,
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Gold-standard 3D auto-refinement with marginalisation over orientations and translations.

    Writes run_itNNN_half{1,2}_class001.mrc, run_itNNN_data.star, run_itNNN_half{1,2}_model.star
    every iteration and run_class001.mrc, run_half{1,2}_class001_unfil.mrc, run_data.star,
    run_model.star, fsc.png and angular_distribution.png at the end.

    Example: ember refine3d --i particles.star --ref init.mrc --particle_diameter 160 --ini_high 40 --o refine/

    Several processes share the particles (same result): torchrun --standalone --nproc_per_node 4 -m ember
    refine3d … (gloo on CPU, NCCL with --device cuda; --nnodes for several machines).
    """
    from ember.jobs.refine3d import Refine3DConfig
    from ember.jobs.refine3d import refine3d as run

    cfg = Refine3DConfig(
        star=star, reference=reference, output=output, particle_diameter_angstrom=particle_diameter, symmetry=sym,
        ini_high_angstrom=ini_high, healpix_order=healpix_order, oversampling=oversampling,
        offset_range_px=offset_range, offset_step_px=offset_step, sigma_offset_angstrom=sigma_offset, fix_sigma_offset=fix_sigma_offset,
        auto_local_healpix_order=auto_local_healpix_order,
        low_resol_join_halves_angstrom=low_resol_join_halves, tau2_fudge=tau2_fudge, maxsig=maxsig, sigma_ang_deg=sigma_ang, norm=norm, scale=scale,
        gridding_iterations=gridding_iter if dont_skip_gridding else 0,
        max_iterations=iterations, maxcc=maxcc, no_halves=no_halves, ctf=not no_ctf, batch_size=batch_size,
        device=device, threads=threads, seed=seed, continue_from=continue_from,
    )
    with progress_bar("refine3d", quiet) as bar:
        final = run(cfg, bar)
    if not _worker():
        console.print(f"wrote {final} and {final.parent / 'report.html'}")


@app.command()
@handles_errors
def class2d(
    star: Annotated[Path, typer.Option("--i", help="Particle STAR file (RELION 3.0 or 3.1+).")],
    output: Annotated[Path, typer.Option("--o", help="Output folder (RELION job layout: run_itNNN_*).")],
    n_classes: Annotated[int, typer.Option("--K", "--k", help="Number of classes.")],
    particle_diameter: Annotated[float, typer.Option("--particle_diameter", help="Particle diameter in Å (soft circular mask).")],
    iterations: Annotated[int, typer.Option("--iter", help="Number of iterations.")] = 25,
    psi_step: Annotated[float, typer.Option("--psi_step", help="Coarse in-plane angular step (degrees); the fine step is 2^oversampling smaller.")] = 12.0,
    oversampling: Annotated[int, typer.Option("--oversampling", help="Adaptive oversampling order (0 = one pass).")] = 1,
    offset_range: Annotated[float, typer.Option("--offset_range", help="Translation search range in pixels.")] = 5.0,
    offset_step: Annotated[float, typer.Option("--offset_step", help="Coarse translation step in pixels.")] = 2.0,
    tau2_fudge: Annotated[float, typer.Option("--tau2_fudge", help="Regularisation parameter T (RELION's Class2D: 2).")] = 2.0,
    center_classes: Annotated[bool, typer.Option("--center_classes/--no_center_classes", help="Re-centre each average on its centre of mass every iteration.")] = True,
    fast_subsets: Annotated[bool, typer.Option("--fast_subsets", help="Iterations 1–15 on growing random subsets (needs --iter ≥ 20).")] = False,
    maxsig: Annotated[Optional[int], typer.Option("--maxsig", help="At most this many significant coarse samples per image.")] = None,
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Ignore the CTF columns.")] = False,
    continue_from: Annotated[Optional[Path], typer.Option("--continue", help="Resume from a run_itNNN_state.json.")] = None,
    batch_size: Annotated[int, typer.Option(help="Particles per E-step batch (memory).")] = 64,
    seed: Seed = 0,
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Reference-free 2D classification: CTF-corrected class averages, marginalising over class,
    in-plane rotation and translation.

    Writes run_itNNN_classes.mrcs, run_itNNN_data.star (rlnClassNumber, rlnAnglePsi, offsets) and
    run_itNNN_model.star (rlnClassDistribution) every iteration, class_sizes.png and classes.png
    (the averages sorted by size, with their particle counts).

    Example: ember class2d --i particles.star --K 50 --particle_diameter 160 --o class2d/
    """
    from ember.jobs.class2d import Class2DConfig
    from ember.jobs.class2d import class2d as run

    cfg = Class2DConfig(
        star=star, output=output, n_classes=n_classes, particle_diameter_angstrom=particle_diameter,
        iterations=iterations, psi_step_deg=psi_step, oversampling=oversampling, offset_range_px=offset_range,
        offset_step_px=offset_step, tau2_fudge=tau2_fudge, center_classes=center_classes, fast_subsets=fast_subsets,
        maxsig=maxsig, ctf=not no_ctf, batch_size=batch_size, device=device, threads=threads, seed=seed,
        continue_from=continue_from,
    )
    with progress_bar("class2d", quiet) as bar:
        averages = run(cfg, bar)
    console.print(f"wrote {averages} and {averages.parent / 'report.html'}")


@app.command("initial-model")
@handles_errors
def initial_model(
    star: Annotated[Path, typer.Option("--i", help="Particle STAR file (RELION 3.0 or 3.1+).")],
    output: Annotated[Path, typer.Option("--o", help="Output folder (RELION job layout: run_itNNN_*).")],
    particle_diameter: Annotated[float, typer.Option("--particle_diameter", help="Particle diameter in Å (soft circular mask and solvent mask).")],
    n_classes: Annotated[int, typer.Option("--K", "--k", help="Number of classes (one map each).")] = 1,
    sym: Annotated[str, typer.Option("--sym", help="Point group: the model is built in C1, then the largest class is put on its axes and symmetrised.")] = "C1",
    iterations: Annotated[int, typer.Option("--iter", help="Number of mini-batch iterations.")] = 200,
    tau2_fudge: Annotated[float, typer.Option("--tau2_fudge", help="Final regularisation parameter T (rises from 1).")] = 4.0,
    ini_high: Annotated[float, typer.Option("--ini_high", help="Resolution (Å) of the random-blob start.")] = 30.0,
    healpix_order: Annotated[int, typer.Option("--healpix_order", help="HEALPix order (1 = 30° coarse, 15° after oversampling).")] = 1,
    auto_sampling: Annotated[bool, typer.Option(
        "--auto_sampling/--no_auto_sampling", help="Every 10 iterations, finer angles and offsets when the expected "
        "accuracy allows (RELION's rules, never into local searches: at most HEALPix order 3).")] = True,
    offset_range: Annotated[float, typer.Option("--offset_range", help="Translation search range in pixels.")] = 6.0,
    offset_step: Annotated[float, typer.Option("--offset_step", help="Coarse translation step in pixels.")] = 2.0,
    pad: Annotated[int, typer.Option("--pad", help="Fourier padding factor of projections and gradients (RELION's initial model: 1).")] = 1,
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Ignore the CTF columns.")] = False,
    continue_from: Annotated[Optional[Path], typer.Option("--continue", help="Resume from the latest run_itNNN_state.json.")] = None,
    batch_size: Annotated[int, typer.Option(help="Particles per E-step batch (memory).")] = 64,
    seed: Seed = 0,
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """A 3D starting map from the particles alone (RELION's VDAM gradient scheme, no reference).

    Writes run_itNNN_classNNN.mrc and run_itNNN_model.star every iteration, run_itNNN_data.star
    every 10, initial_model.mrc (the largest class), resolution.png, class_sizes.png, classes.png.

    Example: ember initial-model --i particles.star --particle_diameter 160 --o initial/
    """
    from ember.jobs.initial_model import InitialModelConfig
    from ember.jobs.initial_model import initial_model as run

    cfg = InitialModelConfig(
        star=star, output=output, particle_diameter_angstrom=particle_diameter, n_classes=n_classes, symmetry=sym,
        iterations=iterations, tau2_fudge=tau2_fudge, ini_high_angstrom=ini_high, healpix_order=healpix_order,
        auto_sampling=auto_sampling, offset_range_px=offset_range, offset_step_px=offset_step, pad=pad,
        ctf=not no_ctf, batch_size=batch_size, device=device, threads=threads, seed=seed, continue_from=continue_from,
    )
    with progress_bar("initial-model", quiet) as bar:
        path = run(cfg, bar)
    console.print(f"wrote {path} and {path.parent / 'report.html'}")


@app.command()
@handles_errors
def select(
    star: Annotated[Path, typer.Option("--i", help="Particle STAR file, e.g. a classification's or refinement's run_data.star.")],
    output: Annotated[Path, typer.Option("--o", help="Output particle STAR file (RELION 3.1, optics table kept).")],
    classes: Annotated[Optional[str], typer.Option("--class", help="Keep these rlnClassNumber values, comma-separated (e.g. 1,3).")] = None,
    min_pmax: Annotated[Optional[float], typer.Option("--min_pmax", help="Keep rlnMaxValueProbDistribution ≥ this.")] = None,
    max_pmax: Annotated[Optional[float], typer.Option("--max_pmax", help="Keep rlnMaxValueProbDistribution ≤ this.")] = None,
    min_loglik: Annotated[Optional[float], typer.Option("--min_loglik", help="Keep rlnLogLikeliContribution ≥ this.")] = None,
    max_loglik: Annotated[Optional[float], typer.Option("--max_loglik", help="Keep rlnLogLikeliContribution ≤ this.")] = None,
) -> None:
    """Keep the particles that pass every given filter (at least one); all columns are kept.

    Example: ember select --i Class3D/run_it025_data.star --class 1,3 --min_pmax 0.2 --o selected.star
    """
    from ember.jobs.select import parse_classes, select_particles

    result = select_particles(
        star, output, classes=parse_classes(classes) if classes is not None else None, min_pmax=min_pmax,
        max_pmax=max_pmax, min_loglik=min_loglik, max_loglik=max_loglik,
    )
    for number, (kept, in_class) in result.per_class.items():
        typer.echo(f"class {number}: kept {kept:,} of {in_class:,}")
    typer.echo(f"kept {result.kept:,} of {result.total:,} particles → {result.output}")


@app.command()
@handles_errors
def class3d(
    star: Annotated[Path, typer.Option("--i", help="Particle STAR file (RELION 3.0 or 3.1+).")],
    reference: Annotated[Path, typer.Option("--ref", help="Starting reference map (.mrc): every class starts from it, low-passed to --ini_high; or a STAR file (e.g. a model.star) whose rlnReferenceImage lists one map per class (no random seeds).")],
    output: Annotated[Path, typer.Option("--o", help="Output folder (RELION job layout: run_itNNN_*).")],
    particle_diameter: Annotated[float, typer.Option("--particle_diameter", help="Particle diameter in Å (soft circular mask and solvent mask).")],
    n_classes: Annotated[Optional[int], typer.Option("--K", "--k", help="Number of classes (needed with a .mrc reference; a STAR reference sets it).")] = None,
    sym: Annotated[str, typer.Option("--sym", help="Point group: C1, Cn, Dn, T, O, I.")] = "C1",
    ini_high: Annotated[float, typer.Option("--ini_high", help="Low-pass the reference to this resolution (Å) first.")] = 60.0,
    iterations: Annotated[int, typer.Option("--iter", help="Number of iterations.")] = 25,
    healpix_order: Annotated[int, typer.Option("--healpix_order", help="HEALPix order (2 = 15° coarse, 7.5° after oversampling), fixed.")] = 2,
    oversampling: Annotated[int, typer.Option("--oversampling", help="Adaptive oversampling order (0 = one pass).")] = 1,
    offset_range: Annotated[float, typer.Option("--offset_range", help="Translation search range in pixels.")] = 5.0,
    offset_step: Annotated[float, typer.Option("--offset_step", help="Coarse translation step in pixels.")] = 2.0,
    tau2_fudge: Annotated[float, typer.Option("--tau2_fudge", help="Regularisation parameter T (RELION's Class3D: 4).")] = 4.0,
    sigma_ang: Annotated[Optional[float], typer.Option("--sigma_ang", help="Local searches: σ (degrees) of the Gaussian prior around each particle's input angles.")] = None,
    sigma_offset: SigmaOffset = 10.0,
    fix_sigma_offset: FixSigmaOffset = False,
    input_offset_prior: Annotated[bool, typer.Option(
        "--input_offset_prior", help="Centre each particle's translation prior on its input offsets (they become "
        "rlnOriginX/YPriorAngst): trust a consensus refinement's centring; with a small --offset and --fix_sigma_offset.")] = False,
    skip_align: Annotated[bool, typer.Option("--skip_align", help="No alignment: classify with the input angles and offsets.")] = False,
    allow_coarser_sampling: Annotated[bool, typer.Option(
        "--allow_coarser_sampling", help="Each iteration, angular and offset steps as coarse as 80 % of the expected "
        "accuracy allows (never finer than given).")] = False,
    maxsig: Annotated[Optional[int], typer.Option("--maxsig", help="At most this many significant coarse samples per image.")] = None,
    dont_skip_gridding: DontSkipGridding = False,
    gridding_iter: GriddingIter = 10,
    norm: Norm = False,
    scale: Scale = False,
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Ignore the CTF columns.")] = False,
    continue_from: Annotated[Optional[Path], typer.Option("--continue", help="Resume from a run_itNNN_state.json.")] = None,
    batch_size: Annotated[int, typer.Option(help="Particles per E-step batch (memory).")] = 64,
    seed: Seed = 0,
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """3D classification into K classes, marginalising over class, orientation and translation.

    Writes run_itNNN_classNNN.mrc, run_itNNN_data.star (rlnClassNumber), run_itNNN_model.star
    (rlnClassDistribution, per-class resolution) every iteration, class_sizes.png and classes.png.

    Example: ember class3d --i particles.star --ref consensus.mrc --K 4 --particle_diameter 160 --ini_high 40 --o class3d/
    """
    from ember.jobs.class3d import Class3DConfig
    from ember.jobs.class3d import class3d as run

    cfg = Class3DConfig(
        star=star, reference=reference, output=output, n_classes=n_classes, particle_diameter_angstrom=particle_diameter,
        symmetry=sym, ini_high_angstrom=ini_high, iterations=iterations, healpix_order=healpix_order,
        oversampling=oversampling, offset_range_px=offset_range, offset_step_px=offset_step, tau2_fudge=tau2_fudge,
        sigma_offset_angstrom=sigma_offset, fix_sigma_offset=fix_sigma_offset,
        input_offset_prior=input_offset_prior, sigma_ang_deg=sigma_ang, skip_align=skip_align, allow_coarser_sampling=allow_coarser_sampling, maxsig=maxsig,
        norm=norm, scale=scale, gridding_iterations=gridding_iter if dont_skip_gridding else 0, ctf=not no_ctf,
        batch_size=batch_size, device=device, threads=threads, seed=seed, continue_from=continue_from,
    )
    with progress_bar("class3d", quiet) as bar:
        model_star = run(cfg, bar)
    console.print(f"wrote {model_star} and {model_star.parent / 'report.html'}")


@app.command()
@handles_errors
def mask(
    input_map: Annotated[Path, typer.Option("--i", help="Input map (.mrc) to threshold, e.g. a refinement's run_class001.mrc.")],
    output: Annotated[Path, typer.Option("--o", help="Output mask (.mrc), values in [0, 1].")],
    ini_threshold: Annotated[Optional[float], typer.Option("--ini_threshold", help="Binarise at map ≥ this value (default 0.01, as relion_mask_create).")] = None,
    volume_angstrom3: Annotated[Optional[float], typer.Option("--volume_angstrom3", help="Instead: the level whose binary mask encloses this volume (Å³).")] = None,
    mw_kda: Annotated[Optional[float], typer.Option("--mw_kda", help="Instead: the level enclosing this molecular weight (kDa) of protein at 1.35 g/cm³ (≈ 1230 Å³ per kDa).")] = None,
    extend_inimask: Annotated[float, typer.Option("--extend_inimask", help="Extend the binary mask by this many pixels (negative: shrink).")] = 0.0,
    width_soft_edge: Annotated[float, typer.Option("--width_soft_edge", help="Width of the raised-cosine soft edge in pixels.")] = 0.0,
    lowpass: Annotated[Optional[float], typer.Option("--lowpass", help="Low-pass filter the map at this resolution (Å) before binarising.")] = None,
    angpix: Annotated[Optional[float], typer.Option("--angpix", help="Pixel size in Å (default: the map header's).")] = None,
) -> None:
    """Make a soft solvent mask from a map, as relion_mask_create: (low-pass,) threshold, extend, soft edge.

    Example: ember mask --i run_class001.mrc --lowpass 15 --ini_threshold 0.02 --extend_inimask 3 --width_soft_edge 6 --o mask.mrc
    """
    from ember.jobs.mask import MaskConfig, mask_job

    result = mask_job(MaskConfig(
        input=input_map, output=output, ini_threshold=ini_threshold, volume_angstrom3=volume_angstrom3, mw_kda=mw_kda,
        extend_inimask=extend_inimask, width_soft_edge=width_soft_edge, lowpass=lowpass, angpix=angpix,
    ))
    typer.echo(f"level {result.level:.6g}: {result.voxels_inside:,} voxels inside (mask > 0.5), "
               f"{result.volume_inside_angstrom3:,.0f} Å³")
    typer.echo(f"wrote {result.output}")


@app.command()
@handles_errors
def postprocess(
    half1: Annotated[Path, typer.Option("--half1", help="Unfiltered half map 1 (.mrc), e.g. run_half1_class001_unfil.mrc.")],
    half2: Annotated[Path, typer.Option("--half2", help="Unfiltered half map 2 (.mrc).")],
    output: Annotated[Path, typer.Option("--o", help="Output folder: postprocess.mrc, postprocess_masked.mrc, postprocess.star, PNGs.")],
    mask_path: Annotated[Optional[Path], typer.Option("--mask", help="Solvent mask (.mrc, values in [0, 1]; see ember mask).")] = None,
    angpix: Annotated[Optional[float], typer.Option("--angpix", help="Pixel size in Å (default: the half maps' header).")] = None,
    adhoc_bfac: Annotated[Optional[float], typer.Option("--adhoc_bfac", help="Sharpen with this B-factor (Å², negative sharpens) instead of the automatic one.")] = None,
    autob_lowres: Annotated[float, typer.Option("--autob_lowres", help="Lowest resolution (Å) in the Guinier fit of the automatic B-factor.")] = 10.0,
    autob_highres: Annotated[float, typer.Option("--autob_highres", help="Highest resolution (Å) in the fit (0: every shell the FSC weighting leaves, as RELION).")] = 0.0,
    mtf: Annotated[Optional[Path], typer.Option("--mtf", help="Detector MTF STAR (rlnResolutionInversePixel, rlnMtfValue) to divide by.")] = None,
    mtf_angpix: Annotated[Optional[float], typer.Option("--mtf_angpix", help="Pixel size (Å) of the micrographs the MTF refers to (default: --angpix).")] = None,
    randomize_at_fsc: Annotated[float, typer.Option("--randomize_at_fsc", help="Randomise phases from where the unmasked FSC drops below this.")] = 0.8,
    randomize_at_a: Annotated[Optional[float], typer.Option("--randomize_at_A", help="Instead: randomise phases from this resolution (Å).")] = None,
    low_pass: Annotated[float, typer.Option("--low_pass", help="Low-pass the final map at this resolution (Å); 0: none (RELION's default), negative: at the final resolution.")] = 0.0,
    skip_fsc_weighting: Annotated[bool, typer.Option("--skip_fsc_weighting", help="No FSC weighting √(2FSC/(1+FSC)).")] = False,
    force_mask: Annotated[bool, typer.Option("--force_mask", help="Keep the masked FSC even where the unmasked one reaches further.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the phase randomisation (RELION's --random_seed: the same seed draws the same phases as relion_postprocess).")] = 0,
) -> None:
    """Solvent-corrected resolution and a sharpened map from two half maps, as relion_postprocess.

    FSC of the masked halves corrected by phase randomisation, resolution at FSC 0.143, FSC
    weighting, B-factor from the Guinier fit (10 Å to the limit) or --adhoc_bfac, optional MTF.

    Example: ember postprocess --half1 run_half1_class001_unfil.mrc --half2 run_half2_class001_unfil.mrc --mask mask.mrc --o post/
    """
    from ember.jobs.postprocess import PostprocessConfig
    from ember.jobs.postprocess import postprocess as run

    result = run(PostprocessConfig(
        half1=half1, half2=half2, output=output, mask=mask_path, angpix=angpix, adhoc_bfac=adhoc_bfac,
        autob_lowres=autob_lowres, autob_highres=autob_highres, mtf=mtf, mtf_angpix=mtf_angpix,
        randomize_at_fsc=randomize_at_fsc, randomize_at_angstrom=randomize_at_a, low_pass=low_pass,
        skip_fsc_weighting=skip_fsc_weighting, force_mask=force_mask, seed=seed,
    ))
    typer.echo(f"final resolution: {result.final_resolution:.2f} Å (FSC 0.143)")
    typer.echo(f"B-factor: {result.bfactor:.1f} Å²" + (" (Guinier fit)" if adhoc_bfac is None else " (ad hoc)"))
    typer.echo(f"wrote {output / 'postprocess.mrc'} and {output / 'report.html'}")


@app.command("align-maps")
@handles_errors
def align_maps(
    fixed: Annotated[Path, typer.Argument(help="Fixed (reference) map (.mrc).")],
    moving: Annotated[Path, typer.Argument(help="Map to move onto it (.mrc; same box and pixel size).")],
    output: Annotated[Path, typer.Option("--o", help="Output: the moving map aligned onto the fixed one (.mrc).")],
    flip: Annotated[
        Optional[bool],
        typer.Option(
            "--flip/--no-flip",
            help="Only the mirror image (z → −z) / only the map as given (default: try both hands, keep the better).",
        ),
    ] = None,
    lowpass: Annotated[
        Optional[float],
        typer.Option("--lowpass", help="Resolution (Å) of the global search; refinement goes to half of it (default: 15 Å, or 4 px if coarser)."),
    ] = None,
    angular_step: Annotated[float, typer.Option("--angular_step", help="Global-search angular step (degrees; HEALPix × psi).")] = 15.0,
    seed: Seed = 0,
    threads: Threads = None,
) -> None:
    """Rigid 3D alignment of MOVING onto FIXED (rotation search, local refinement, translations),
    with a handedness check; prints the correlation, the hand, the Euler angles, the shift and the
    FSC 0.5 resolution after alignment.

    The moving map's point r (from voxel N/2; mirrored z → −z first if flipped) goes to R·r + t.
    R is printed as RELION ZYZ Euler angles (rot, tilt, psi) in degrees, t as (x, y, z) in Å.

    Example: ember align-maps truth.mrc initial_model.mrc --o initial_model_aligned.mrc
    """
    from ember.jobs.align_maps import align_maps_job
    from ember.jobs.common import select_device

    select_device("cpu", threads)
    result = align_maps_job(fixed, moving, output, flip=flip, lowpass=lowpass, angular_step=angular_step, seed=seed)
    rot, tilt, psi = result.euler_deg
    x, y, z = result.shift_angstrom
    if result.other_hand_correlation is None:
        hand = "mirrored (z → −z), as asked" if result.flipped else "as given, as asked"
    else:
        hand = "mirrored (z → −z)" if result.flipped else "as given"
        hand += (f": search correlation {result.search_correlation:.4f} vs {result.other_hand_correlation:.4f} "
                 "for the other hand")
    typer.echo(f"hand:        {hand}")
    typer.echo(f"correlation: {result.correlation:.4f}")
    typer.echo(f"rotation:    rot {rot:.2f}°, tilt {tilt:.2f}°, psi {psi:.2f}°")
    typer.echo(f"shift:       x {x:.2f} Å, y {y:.2f} Å, z {z:.2f} Å")
    typer.echo(f"FSC 0.5:     {result.fsc05_angstrom:.2f} Å")
    console.print(f"wrote {output}")


@app.command("local-resolution")
@handles_errors
def local_resolution(
    half1: Annotated[Path, typer.Option("--half1", help="Unfiltered half map 1 (.mrc), e.g. run_half1_class001_unfil.mrc.")],
    half2: Annotated[Path, typer.Option("--half2", help="Unfiltered half map 2 (.mrc).")],
    mask_path: Annotated[Path, typer.Option("--mask", help="Solvent mask (.mrc, values in [0, 1]; see ember mask): where local resolution is reported.")],
    output: Annotated[Path, typer.Option("--o", help="Output folder: locres.mrc, locres_filtered.mrc, locres_histogram.png, locres_points.star.")],
    sampling: Annotated[float, typer.Option("--locres_sampling", help="Spacing (Å) of the window centres; the window has radius sampling/2 and a cosine edge of sampling.")] = 25.0,
    randomize_at: Annotated[float, typer.Option("--locres_randomize_at", help="Randomise phases beyond this resolution (Å).")] = 25.0,
    minres: Annotated[float, typer.Option("--locres_minres", help="Worst local resolution reported (Å).")] = 50.0,
    maskrad: Annotated[Optional[float], typer.Option("--locres_maskrad", help="Hard radius of the window (Å; default sampling/2).")] = None,
    edgwidth: Annotated[Optional[float], typer.Option("--locres_edgwidth", help="Cosine edge of the window (Å; default sampling).")] = None,
    angpix: Annotated[Optional[float], typer.Option("--angpix", help="Pixel size in Å (default: the half maps' header).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the phase randomisation (RELION's --random_seed).")] = 0,
    device: Device = "cpu",
) -> None:
    """Local resolution from the FSC in a sliding soft window, as relion_postprocess --locres.

    Phase-randomised FSC correction beyond --locres_randomize_at, FSC 0.143 per window, the
    window-weighted harmonic mean onto the map, and the average map locally filtered.

    Example: ember local-resolution --half1 run_half1_class001_unfil.mrc --half2 run_half2_class001_unfil.mrc --mask mask.mrc --o locres/
    """
    from ember.jobs.local_resolution import LocalResolutionConfig
    from ember.jobs.local_resolution import local_resolution as run

    result = run(LocalResolutionConfig(
        half1=half1, half2=half2, mask=mask_path, output=output, angpix=angpix, sampling=sampling,
        randomize_at=randomize_at, minres=minres, maskrad=maskrad, edgwidth=edgwidth, seed=seed, device=device,
    ))
    typer.echo(f"local resolution inside the mask: median {result.median:.2f} Å, "
               f"range {result.highest:.2f}–{result.lowest:.2f} Å ({len(result.centres)} windows)")
    typer.echo(f"wrote {output / 'locres.mrc'}")


@app.command()
@handles_errors
def demo(
    output: Annotated[Path, typer.Option("--o", help="Output folder.")] = Path("ember_demo"),
    n: Annotated[int, typer.Option("--n", help="Number of particles.")] = 500,
    snr: Annotated[float, typer.Option(help="Signal-to-noise ratio.")] = 0.5,
    quick: Annotated[bool, typer.Option("--quick", help="A small, fast run (300 particles, short schedules) for tests.")] = False,
    seed: Seed = 0,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """The method end to end on the bundled 1AKE: simulate particles in unknown orientations →
    initial model without a reference → gold-standard refine3d → mask and postprocess; prints the
    final resolution and the resolution against the ground truth.

    Example: ember demo --o ember_demo
    """
    from ember.jobs.demo import DemoConfig
    from ember.jobs.demo import demo as run

    if n < 1:
        raise EmberInputError(None, f"--n must be ≥ 1 (got {n})", "")
    cfg = DemoConfig.quick(output, seed) if quick else DemoConfig(output=output, n_particles=n, snr=snr, seed=seed,
                                                                  device=device)
    with progress_bar("demo", quiet) as bar:
        result = run(cfg, bar)
    hand = " (the mirror image: the data cannot tell the hand)" if result.flipped else ""
    typer.echo(f"final resolution (half maps, FSC 0.143): {result.final_resolution:.2f} Å, "
               f"B-factor {result.bfactor:.0f} Å²")
    typer.echo(f"against the ground truth: FSC 0.5 at {result.resolution_vs_truth:.2f} Å{hand} "
               f"(Nyquist {2 * result.pixel_size:.2f} Å)")
    typer.echo(f"map: {result.final_map}; plot: {result.fsc_plot}")
    typer.echo(f"report: {result.report} (open it in a web browser)")


def main() -> None:
    app()
