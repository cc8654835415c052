"""One E-step over a set of particles: builds the (class, orientation) candidates (global or
local), the coarse projections of every class, streams the particles a batch at a time and calls
`estep.expectation`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import healpy
import numpy as np
import torch

from ember.errors import EmberInputError
from ember.inference.estep import (
    STAGES,
    Candidates,
    EStepSettings,
    FineGrid,
    Projections,
    expectation,
    project_rows,
)
from ember.inference.images import prepare_batch
from ember.inference.local_search import local_candidates
from ember.inference.model import Model, ParticleResults, SamplingState, Sums
from ember.inference.sampling import (
    OrientationGrid,
    coarse_orientations,
    in_plane_orientations,
    in_plane_perturbation,
    perturbation_matrix,
)
from ember.io.particles import ParticleDataSet
from ember.maths.rotations import angular_distance_deg, euler_to_matrix
from ember.operators.projector import Projector

CACHE_BYTES = 1e9  # local-search projections kept across the batches of an E-step

__all__ = ["global_candidates", "local_candidates", "pose_candidates", "reference_projector", "run_expectation",
           "run_expectation_assigned", "angular_changes"]


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, 1e-300))


def global_candidates(sampling: SamplingState, model: Model, rho: float) -> Candidates:
    """All coarse orientations over the asymmetric unit for every class; prior log π_k +
    log pdf_direction_k(direction)."""
    if sampling.psi_step_deg is not None:
        grid = in_plane_orientations(sampling.psi_step_deg)
        e = in_plane_perturbation(rho, sampling.psi_step_deg, sampling.oversampling)
    else:
        grid = coarse_orientations(sampling.healpix_order, sampling.directions)
        e = perturbation_matrix(rho, sampling.healpix_order, sampling.oversampling)
    single = Candidates(grid, grid.matrices(e), torch.zeros(len(grid), dtype=torch.float64))
    cand = single.with_classes(_log(model.class_prior))
    log_pdf = torch.from_numpy(_log(model.pdf_direction[:, grid.direction]).reshape(-1))
    cand.log_prior = cand.log_prior + log_pdf
    return cand


class ProjectionCache:
    """Coarse projections of local-search candidates kept across the batches of one E-step, keyed
    by (class, HEALPix direction, psi index) (the perturbation is fixed within an E-step), so that
    batches of neighbouring poses reuse them; the least recently used rows make room.

    budget_bytes bounds the rows kept (2K + K float32 each at K frequencies)."""

    def __init__(self, budget_bytes: float | None = None) -> None:
        self.budget = CACHE_BYTES if budget_bytes is None else budget_bytes
        self.keys = np.zeros(0, dtype=np.int64)  # (C,) key of each row, −1 free
        self.last = np.zeros(0, dtype=np.int64)  # (C,) batch that last used each row
        self.rows: Projections | None = None
        self.batch = 0

    def projections(self, cand: Candidates, projectors: list[Projector], k: torch.Tensor) -> Projections:
        """The projections of every row of `cand.table` at frequencies k (K, 2), from the cache
        where present; the rest are projected and kept."""
        self.batch += 1
        table = cand.table
        keys = ((cand.classes.cpu().numpy() * (12 * 4**table.order) + table.direction) * table.n_psi
                + table.psi_index)
        if self.rows is None:
            capacity = int(self.budget // (12 * max(len(k), 1)))
            self.keys, self.last = np.full(capacity, -1, dtype=np.int64), np.zeros(capacity, dtype=np.int64)
            self.rows = Projections(torch.empty((capacity, 2 * len(k)), device=k.device),
                                    torch.empty((capacity, len(k)), device=k.device))
        if len(keys) > len(self.keys):  # a batch larger than the cache: project it all
            return Projections.of(project_rows(projectors, cand.matrices, cand.classes, k))
        by_key = np.argsort(self.keys)
        pos = np.minimum(np.searchsorted(self.keys[by_key], keys), len(by_key) - 1)
        hit = self.keys[by_key[pos]] == keys
        slots = np.where(hit, by_key[pos], -1)
        self.last[slots[hit]] = self.batch
        miss = np.flatnonzero(~hit)
        if len(miss):
            free = np.argsort(self.last, kind="stable")[: len(miss)]  # least recently used; never this batch's hits
            rows = torch.from_numpy(miss).to(cand.matrices.device)
            new = Projections.of(project_rows(projectors, cand.matrices[rows], cand.classes[rows], k))
            at = torch.from_numpy(free).to(k.device)
            self.rows.real[at], self.rows.abs2[at] = new.real, new.abs2
            self.keys[free], self.last[free], slots[miss] = keys[miss], self.batch, free
        return self.rows[torch.from_numpy(slots).to(k.device)]


def orientation_order(angles_deg: np.ndarray) -> np.ndarray:
    """An order of poses (n, 3) (rot, tilt, psi) degrees that keeps neighbours together: by the
    NESTED HEALPix pixel of order 2 of the direction (15° patches along a space-filling curve),
    then by psi in 30° bins; so that the batches of a local search share candidates."""
    theta, phi = np.radians(angles_deg[:, 1]), np.radians(angles_deg[:, 0]) % (2 * np.pi)
    pixel = healpy.ang2pix(4, theta, phi, nest=True)
    psi_bin = np.floor((angles_deg[:, 2] % 360.0) / 30.0).astype(np.int64)
    return np.argsort(pixel * 12 + psi_bin, kind="stable")


def reference_projector(reference: torch.Tensor, r_max: int | None = None, pad: int = 2) -> Projector:
    """Projector of a 3D map (N, N, N) or of a 2D class average (N, N), padded `pad` times."""
    if reference.ndim == 2:
        return Projector.from_image(reference, r_max=r_max, pad=pad)
    return Projector.from_volume(reference, r_max=r_max, pad=pad)


def pose_candidates(angles_deg: np.ndarray) -> Candidates:
    """One orientation per image, its given pose (B, 3) degrees (`--skip_align`: only the class
    is a hidden variable); prior 0, direction index 0."""
    n = len(angles_deg)
    table = OrientationGrid(np.asarray(angles_deg, dtype=np.float64), np.zeros(n, dtype=np.int64),
                            np.zeros(n, dtype=np.int64), 0, 1)
    per_image = torch.arange(n)[:, None]
    return Candidates(table, table.matrices(), torch.zeros((n, 1), dtype=torch.float64), per_image)


def run_expectation(
    dataset: ParticleDataSet,
    indices: np.ndarray,
    model: Model,
    sampling: SamplingState,
    settings: EStepSettings,
    sums: Sums,
    results: ParticleResults,
    *,
    prior_angles_deg: np.ndarray,
    prior_offsets_px: np.ndarray,
    offset_priors_px: np.ndarray | None = None,
    image_scales: np.ndarray | None = None,
    symmetry: torch.Tensor,
    mask_radius_px: float,
    batch_size: int = 64,
    use_ctf: bool = True,
    progress: Callable[[int], None] | None = None,
    fixed_poses: bool = False,
    device: torch.device | str = "cpu",
) -> None:
    """E-step of one model over particles `indices` (rows of the data set) on `device`: the
    model's maps and spectra, the images, the candidates and the sums of the E-step live there;
    the sums are added into `sums` (wherever they are) at the end.

    prior_angles_deg : (n, 3) centres of local searches; prior_offsets_px : (n, 2) current origins
    (images are pre-centred by their rounded values); offset_priors_px : (n, 2) centres of the
    offset prior (default 0); image_scales : (n,) factors on the images (norm correction avg/norm_j).
    Offsets, translations and the mask radius are in pixels of the reference (the first optics
    group); optics groups of another box or pixel size are compared with the reference at their
    own sampling (RELION's applyScaleDifference) and their offsets converted in and out."""
    device = torch.device(device)
    r_max = settings.fine_window.size // 2
    work = sums if sums.device == device else sums.zeros_on(device)
    on_device = model.to(device)
    with STAGES("coarse projections"):
        projectors = [reference_projector(ref, r_max, model.pad) for ref in on_device.references]
    global_search = sampling.sigma_ang_deg is None and not fixed_poses
    shared = global_candidates(sampling, model, model.rho).to(device) if global_search else None
    box, pixel = dataset.box, dataset.pixel_size
    for box_g, pixel_g, rows in dataset.size_classes(indices):
        ratio = pixel / pixel_g  # reference px → this group's px
        group_settings = _for_images(settings, box_g, pixel_g, (box * pixel) / (box_g * pixel_g), ratio)
        offsets = prior_offsets_px * ratio if ratio != 1.0 else prior_offsets_px
        centres = None if offset_priors_px is None else offset_priors_px * ratio
        _expectation_of_rows(dataset, rows, on_device, sampling, group_settings.to(device), work, results,
                             projectors, shared, prior_angles_deg=prior_angles_deg, prior_offsets_px=offsets,
                             offset_priors_px=centres, image_scales=image_scales, symmetry=symmetry,
                             mask_radius_px=mask_radius_px * ratio, batch_size=batch_size, use_ctf=use_ctf,
                             progress=progress, fixed_poses=fixed_poses)
        if ratio != 1.0:
            results.offsets_px[rows] /= ratio
    if work is not sums:
        sums.add_(work)


def _for_images(settings: EStepSettings, box: int, pixel: float, scale: float, ratio: float) -> EStepSettings:
    """The settings for images of box N_g (px) at pixel a_g (Å): windows on their grid, whose
    frequency k lies at k·scale on the reference's; translations in their pixels."""
    if scale == 1.0 and ratio == 1.0 and box == settings.fine_window.box:
        return settings
    return dataclasses.replace(
        settings, coarse_window=settings.coarse_window.for_images(box, scale),
        fine_window=settings.fine_window.for_images(box, scale), translations_px=settings.translations_px * ratio,
        offset_step_px=settings.offset_step_px * ratio, pixel_size=pixel)


def _expectation_of_rows(dataset: ParticleDataSet, indices: np.ndarray, model: Model, sampling: SamplingState,
                         settings: EStepSettings, sums: Sums, results: ParticleResults, projectors: list[Projector],
                         shared: Candidates | None, *, prior_angles_deg: np.ndarray, prior_offsets_px: np.ndarray,
                         offset_priors_px: np.ndarray | None, image_scales: np.ndarray | None, symmetry: torch.Tensor,
                         mask_radius_px: float, batch_size: int, use_ctf: bool,
                         progress: Callable[[int], None] | None, fixed_poses: bool) -> None:
    """`run_expectation` for particles of one box and pixel size (settings on their grid), on the
    device of the model."""
    device = model.sigma2_noise.device
    grid = None
    if shared is not None:
        with STAGES("coarse projections"):
            proj_c = Projections.of(project_rows(projectors, shared.matrices, shared.classes,
                                                 settings.coarse_window.k_ref))
        if settings.oversampling > 0 and FineGrid.fits(len(shared.table), settings.oversampling, settings.fine_window):
            grid = FineGrid.build(shared, settings.oversampling, settings.fine_window)
    log_pi = _log(model.class_prior)
    cache = None
    if shared is None and not fixed_poses:  # local searches: batches of neighbouring poses share projections
        indices = indices[orientation_order(prior_angles_deg[indices])]
        cache = ProjectionCache()
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        with STAGES("reading and transforming images"):
            batch = prepare_batch(dataset, idx, prior_offsets_px[idx], mask_radius_px=mask_radius_px,
                                  use_ctf=use_ctf, device=device,
                                  offset_priors_px=None if offset_priors_px is None else offset_priors_px[idx],
                                  image_scale=None if image_scales is None else image_scales[idx])
        if shared is None:
            cand = pose_candidates(prior_angles_deg[idx]) if fixed_poses else \
                local_candidates(sampling, prior_angles_deg[idx], symmetry, model.rho)
            cand = cand.with_classes(log_pi).to(device)
            with STAGES("coarse projections"):
                proj = cache.projections(cand, projectors, settings.coarse_window.k_ref) if cache is not None else \
                    Projections.of(project_rows(projectors, cand.matrices, cand.classes, settings.coarse_window.k_ref))
        else:
            cand, proj = shared, proj_c
        try:
            expectation(batch, model, projectors, cand, proj, settings, sums, results, grid)
        except torch.cuda.OutOfMemoryError as err:
            raise EmberInputError(None, f"the E-step of a batch of {len(idx)} particles does not fit in the memory "
                                        f"of {device}", "use a smaller --batch_size") from err
        if progress:
            progress(len(idx))
    if grid is not None:
        with STAGES("back-projection of the fine grid"):
            grid.insert_into(sums, settings.fine_window, settings.residual_sums)


def run_expectation_assigned(dataset: ParticleDataSet, indices: np.ndarray, assigned: np.ndarray, model: Model,
                             sampling: SamplingState, settings: EStepSettings, sums: Sums, results: ParticleResults,
                             **options) -> None:
    """E-step in which particle `indices[j]` sees class `assigned[j]` (0-based) only, e.g. RELION's
    seed generation (each particle aligned against one random class, so the K new references
    are reconstructions of random subsets). Options as `run_expectation`."""
    n, k_classes = len(results.pmax), model.n_classes
    for k in range(k_classes):
        rows = indices[assigned == k]
        if len(rows) == 0:
            continue
        single = dataclasses.replace(model, references=[model.references[k]], class_prior=np.ones(1),
                                     pdf_direction=model.pdf_direction[k : k + 1])
        part = Sums([sums.reconstructors[k]], torch.zeros_like(sums.sigma2), torch.zeros_like(sums.n_images),
                    np.zeros_like(sums.pdf_direction[:1]), np.zeros(1),
                    signal_product=np.zeros_like(sums.signal_product),
                    reference_power=np.zeros_like(sums.reference_power), scale_weight=np.zeros_like(sums.scale_weight))
        res = ParticleResults.empty(n, 1)
        run_expectation(dataset, rows, single, sampling, settings, part, res, **options)
        sums.add_class(k, part)
        for name in ("angles", "offsets_px", "pmax", "n_significant", "loglik", "residual_power"):
            getattr(results, name)[rows] = getattr(res, name)[rows]
        results.classes[rows] = k
        results.class_posterior[rows] = np.eye(k_classes)[k]


def angular_changes(old_deg: np.ndarray, new_deg: np.ndarray, symmetry: torch.Tensor | None = None) -> np.ndarray:
    """Angle (deg) between old and new orientations (n, 3) of each particle, the smallest over the
    symmetry mates A·R of the new pose (G, 3, 3) (RELION `monitorHiddenVariableChanges`)."""
    a = euler_to_matrix(torch.from_numpy(old_deg))
    b = euler_to_matrix(torch.from_numpy(new_deg))
    ops = torch.eye(3, dtype=b.dtype)[None] if symmetry is None else symmetry.to(b.dtype)
    return torch.stack([angular_distance_deg(a, b @ op) for op in ops]).amin(dim=0).numpy()
