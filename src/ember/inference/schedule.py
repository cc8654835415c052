"""The auto-refine schedule (ALGORITHM §6): current resolution, Fourier windows, angular and
translational sampling, local searches, convergence."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ember.inference.sampling import angular_step_deg

FSC_HIGH_AT_LIMIT = 0.2


@dataclass
class AutoRefineState:
    """Everything the schedule decides from, saved each iteration for `--continue`."""

    iteration: int
    healpix_order: int
    oversampling: int
    offset_range_px: float
    offset_step_px: float
    resolution_shell: int  # i_max of the current resolution
    sigma_ang_deg: float | None = None
    incr_size: int = 10
    nr_iter_wo_resol_gain: int = 0
    nr_iter_wo_hidden_changes: int = 0
    smallest_angle_change: float = 999.0
    smallest_offset_change: float = 999.0
    best_resolution_shell: int = 0
    has_fine_enough_angular_sampling: bool = False
    has_high_fsc_at_limit: bool = False
    converged: bool = False
    final: bool = False
    acc_rot_deg: float = 999.0
    acc_trans_px: float = 999.0
    current_size: int = 0
    offset_change_px: float = 0.0  # RMS change of the best offsets in the last iteration (VDAM's auto-sampling)

    def to_dict(self) -> dict:
        return asdict(self)


def fine_angular_step(state: AutoRefineState) -> float:
    return angular_step_deg(state.healpix_order + state.oversampling)


def current_size(state: AutoRefineState, box: int, ave_pmax: float) -> int:
    """Window W (even, ≤ N) from the current resolution (§6.3); W = N in the final iteration."""
    if state.final:
        return box
    i = state.resolution_shell
    i += math.floor(0.25 * box / 2 + 0.5) if (ave_pmax > 0.1 and state.has_high_fsc_at_limit) else state.incr_size
    return int(min(2 * i, box))


def coarse_size(order: int, diameter_angstrom: float, box: int, pixel: float, window: int) -> int:
    """Coarse window W_c = 2·ceil(N·a/d_c), d_c = (Δ(n)/360·π·D)/1.2, W_c ≤ W (§4.6)."""
    d_c = angular_step_deg(order) / 360.0 * math.pi * diameter_angstrom / 1.2
    return int(min(window, 2 * math.ceil(box * pixel / d_c)))


def resolution_from_fsc(fsc: torch.Tensor, tau2_fudge: float = 1.0, minres_shell: int = 5) -> int:
    """i_max from data_vs_prior = T·FSC/(1−FSC) (§6.2, gold-standard branch)."""
    f = fsc.clamp(0.001, 0.999)
    ssnr = tau2_fudge * f / (1 - f)
    below = torch.nonzero(ssnr[1:] < 1)
    i1 = int(below[0, 0]) if len(below) else len(fsc) - 1
    above = torch.nonzero(ssnr[1:] > 1)
    i2 = int(above[-1, 0]) + 1 if len(above) else 0
    i = i2 if i2 > i1 + 3 else i1
    return max(i, minres_shell)


def resolution_from_ssnr(ssnr: torch.Tensor, class_prior, minres_shell: int = 5) -> int:
    """i_max = (first shell ≥ 1 with data_vs_prior < 1) − 1, the best over the classes with
    particles (§6.2, classification branch); ssnr (K, S), class_prior (K,)."""
    best = 0
    for k in range(len(ssnr)):
        if class_prior[k] > 0:
            below = torch.nonzero(ssnr[k, 1:] < 1)
            best = max(best, int(below[0, 0]) if len(below) else ssnr.shape[1] - 1)
    return max(best, minres_shell)


def update_resolution(state: AutoRefineState, fsc: torch.Tensor, tau2_fudge: float) -> None:
    """New current resolution, the no-gain counter, incr_size and the high-FSC-at-limit flag."""
    new = resolution_from_fsc(fsc, tau2_fudge)
    if new <= state.resolution_shell:  # RELION: no gain over the previous iteration's resolution
        state.nr_iter_wo_resol_gain += 1
    else:
        state.nr_iter_wo_resol_gain = 0
    state.best_resolution_shell = max(state.best_resolution_shell, new)
    state.resolution_shell = new
    below05 = torch.nonzero(fsc[1:] < 0.5)
    below0143 = torch.nonzero(fsc[1:] < 0.143)
    if len(below05) and len(below0143):
        state.incr_size = max(state.incr_size, int(below0143[0, 0]) - int(below05[0, 0]) + 5)
    limit = state.current_size // 2 - 1
    if 0 < limit < len(fsc) and fsc[limit] > FSC_HIGH_AT_LIMIT:
        state.has_high_fsc_at_limit = True


def update_hidden_changes(state: AutoRefineState, angle_change_deg: float, offset_change_px: float) -> None:
    """Counter of iterations without large hidden-variable changes (§6.4)."""
    fine_angle = fine_angular_step(state)
    fine_offset = state.offset_step_px / 2**state.oversampling
    small_angle = angle_change_deg < 0.4 * fine_angle or angle_change_deg >= state.smallest_angle_change / 1.03
    small_offset = offset_change_px < 0.4 * fine_offset or offset_change_px >= state.smallest_offset_change / 1.03
    if small_angle and small_offset:
        state.nr_iter_wo_hidden_changes += 1
    else:
        state.nr_iter_wo_hidden_changes = 0
    state.smallest_angle_change = min(state.smallest_angle_change, angle_change_deg)
    state.smallest_offset_change = min(state.smallest_offset_change, offset_change_px)


def update_sampling(state: AutoRefineState, rms_offset_change_px: float, auto_local_order: int, *,
                    pixel_angstrom: float, gradient: bool = False) -> bool:
    """Refine angles/translations when resolution and hidden variables have stalled (§6.4).

    As RELION 3.1's `updateAngularSampling` (which works in Å): the coarse offset step is at most
    1.5 Å·2^os (`pixel_angstrom` converts), and a step that would be coarser than the current one
    keeps both the current step and range. `gradient` (VDAM, §8.1.4): hidden-variable changes are
    ignored (RELION `--auto_ignore_angles`) and the HEALPix order never reaches `auto_local_order`
    (no local searches); the translations are still refined. Returns True when the HEALPix order
    changed (the caller resets pdf_direction)."""
    stalled = state.nr_iter_wo_hidden_changes >= 1 or gradient
    if state.iteration < 2 or state.nr_iter_wo_resol_gain < 1 or not stalled:
        return False
    if fine_angular_step(state) < 0.75 * state.acc_rot_deg:
        state.has_fine_enough_angular_sampling = True
        return False
    os_factor = 2**state.oversampling
    step = min(1.5 / pixel_angstrom, 0.75 * state.acc_trans_px) * os_factor
    rng = min(5 * rms_offset_change_px, 1.3 * state.offset_range_px)
    rng = max(rng, 1.5 * step)
    if rng > 4 * step:
        rng /= 2
    if rng > 4 * step:
        step = rng / 4
    if step <= state.offset_step_px:
        state.offset_step_px, state.offset_range_px = step, rng
    finer = not (gradient and state.healpix_order + 1 >= auto_local_order)
    if finer:
        state.healpix_order += 1
        if state.healpix_order >= auto_local_order:
            state.sigma_ang_deg = 2 * fine_angular_step(state)
    state.nr_iter_wo_resol_gain = 0
    state.nr_iter_wo_hidden_changes = 0
    state.smallest_angle_change = state.smallest_offset_change = 999.0
    return finer


def check_convergence(state: AutoRefineState) -> None:
    if (state.has_fine_enough_angular_sampling and state.nr_iter_wo_resol_gain >= 1
            and state.nr_iter_wo_hidden_changes >= 1):
        state.converged = True


def coarser_sampling(healpix_order: int, oversampling: int, offset_step_px: float, offset_range_px: float,
                     acc_rot_deg: float, acc_trans_px: float) -> tuple[int, float]:
    """Classification's `--allow_coarser_sampling` (RELION `updateAngularSampling`, K > 1): the
    coarsest HEALPix order whose fine step Δ(n + os) stays below 0.8·acc_rot, never finer than the
    original `healpix_order` (nor below order 0), and the coarse offset step 0.8·acc_trans·2^os,
    at most 0.95·range and never finer than the original step → (order, step px)."""
    order, decreased = healpix_order, False
    while order > 0 and angular_step_deg(order + oversampling) < 0.8 * acc_rot_deg:
        order -= 1
        decreased = True
    if decreased and angular_step_deg(order + oversampling) >= 0.8 * acc_rot_deg:
        order += 1  # back to the last order finer than 80 % of the accuracy
    step = min(0.8 * acc_trans_px * 2**oversampling, 0.95 * offset_range_px)
    return min(order, healpix_order), max(step, offset_step_px)
