"""The auto-refine schedule against ALGORITHM §4.6 and §6.2–6.5 (hand-worked cases)."""

import math

import pytest
import torch

from ember.inference.schedule import (
    AutoRefineState,
    check_convergence,
    coarse_size,
    current_size,
    resolution_from_fsc,
    update_hidden_changes,
    update_resolution,
    update_sampling,
)


def state(**kw) -> AutoRefineState:
    """HEALPix order 2 + oversampling 1 (fine step 7.5°), coarse offsets 2 px (fine 1 px)."""
    base = dict(iteration=3, healpix_order=2, oversampling=1, offset_range_px=5.0, offset_step_px=2.0,
                resolution_shell=20)
    base.update(kw)
    return AutoRefineState(**base)


def curve(values, n=33) -> torch.Tensor:
    """FSC (n,) starting with `values` at shells 0, 1, …, then 0.01 up to Nyquist."""
    out = torch.full((n,), 0.01, dtype=torch.float64)
    out[: len(values)] = torch.tensor(values, dtype=torch.float64)
    return out


# §6.3 window growth ------------------------------------------------------------------------------


@pytest.mark.parametrize("pmax,high", [(0.5, False), (0.05, True), (0.05, False)])
def test_window_grows_by_incr_size(pmax, high):
    """W = 2·(i + incr_size) unless ave_Pmax > 0.1 AND the FSC was high at the limit."""
    s = state(resolution_shell=20, incr_size=13, has_high_fsc_at_limit=high)
    assert current_size(s, 128, pmax) == 2 * (20 + 13)


def test_window_grows_by_a_quarter_box_when_fsc_high_at_limit():
    s = state(resolution_shell=20, incr_size=10, has_high_fsc_at_limit=True)
    assert current_size(s, 128, 0.5) == 2 * (20 + 16)  # ROUND(0.25·128/2) = 16


def test_quarter_box_step_rounds_half_away_from_zero():
    s = state(resolution_shell=10, has_high_fsc_at_limit=True)
    assert current_size(s, 100, 0.5) == 2 * (10 + 13)


def test_window_is_capped_at_box_and_full_in_final_iteration():
    assert current_size(state(resolution_shell=60, incr_size=10), 128, 0.5) == 128
    assert current_size(state(resolution_shell=5, final=True), 128, 0.0) == 128


# §4.6 coarse window -----------------------------------------------------------------------------


def test_coarse_size_hand_example():
    """Order 2 (Δ = 15°), D = 160 Å: d_c = 15/360·π·160/1.2 = 17.4533 Å; N·a = 128·1.5 = 192 Å;
    192/17.4533 = 11.0008 → ceil 12 → W_c = 24 (rounding instead of ceil would give 22)."""
    d_c = 15 / 360 * math.pi * 160 / 1.2
    assert 192 / d_c == pytest.approx(11.0008, abs=1e-4)
    assert coarse_size(2, 160.0, 128, 1.5, window=64) == 24
    assert coarse_size(2, 160.0, 128, 1.5, window=20) == 20  # W_c ≤ W
    # one order finer: Δ = 7.5° halves d_c → ceil(22.0017) = 23 → 46
    assert coarse_size(3, 160.0, 128, 1.5, window=128) == 46


# §6.2 current resolution ------------------------------------------------------------------------


def test_resolution_is_last_shell_before_fsc_drops_below_half():
    fsc = curve([1.0, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.45, 0.3])
    assert resolution_from_fsc(fsc) == 8  # FSC(9) = 0.45 < 0.5 ⇔ T·FSC/(1−FSC) < 1


def test_resolution_uses_data_vs_prior_with_t():
    """With T = 4, data_vs_prior = 4·FSC/(1−FSC) < 1 ⇔ FSC < 0.2."""
    fsc = curve([1.0, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.45, 0.3, 0.25, 0.21, 0.19, 0.1])
    assert resolution_from_fsc(fsc, tau2_fudge=4.0) == 12


def test_resolution_jumps_to_high_shell_only_beyond_three_shells():
    """i₂ (highest shell with data_vs_prior > 1) replaces i₁ only if i₂ > i₁ + 3."""
    dip = [1.0, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.4, 0.45]  # i₁ = 6
    assert resolution_from_fsc(curve(dip + [0.6, 0.6, 0.3])) == 10  # i₂ = 10 = i₁ + 4
    assert resolution_from_fsc(curve(dip + [0.6, 0.3])) == 6  # i₂ = 9 = i₁ + 3: keep i₁


def test_resolution_never_below_minres_map():
    fsc = curve([1.0, 0.9, 0.3, 0.2])
    assert resolution_from_fsc(fsc) == 5  # i₁ = 1, minres_map = 5
    assert resolution_from_fsc(fsc, minres_shell=3) == 3


def test_no_gain_counter_and_best_resolution():
    s = state(resolution_shell=5, best_resolution_shell=5)
    update_resolution(s, curve([1.0] + [0.9] * 8), 1.0)  # shell 8: gain
    assert (s.resolution_shell, s.nr_iter_wo_resol_gain) == (8, 0)
    update_resolution(s, curve([1.0] + [0.9] * 8), 1.0)  # same: no gain
    assert s.nr_iter_wo_resol_gain == 1
    update_resolution(s, curve([1.0] + [0.9] * 7), 1.0)  # worse: still no gain
    assert (s.resolution_shell, s.nr_iter_wo_resol_gain) == (7, 2)


def test_gain_is_measured_against_previous_iteration():
    s = state(resolution_shell=10, best_resolution_shell=12, nr_iter_wo_resol_gain=1)
    update_resolution(s, curve([1.0] + [0.9] * 11), 1.0)  # 11 > previous 10 (though < best 12)
    assert s.resolution_shell == 11
    assert s.nr_iter_wo_resol_gain == 0


def test_incr_size_from_gap_between_half_and_0143():
    s = state(current_size=40)
    # FSC < 0.5 first at shell 6, < 0.143 first at shell 17: 17 − 6 + 5 = 16
    values = [1.0, 0.95, 0.9, 0.8, 0.7, 0.6] + [0.4] * 11
    update_resolution(s, curve(values), 1.0)
    assert s.incr_size == 16
    # a narrow gap never lowers it below the default 10
    s = state(current_size=40)
    update_resolution(s, curve([1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.3]), 1.0)
    assert s.incr_size == 10


def test_incr_size_is_only_ever_raised():
    s = state(current_size=40, incr_size=16)
    update_resolution(s, curve([1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.3]), 1.0)  # gap + 5 = 6
    assert s.incr_size == 16


def test_high_fsc_at_limit_latches():
    """True once FSC(W/2 − 1) > 0.2 (W = 20: shell 9), and stays true."""
    s = state(current_size=20)
    low = curve([1.0] + [0.9] * 5 + [0.3, 0.25, 0.22, 0.15, 0.1])
    update_resolution(s, low, 1.0)
    assert not s.has_high_fsc_at_limit
    high = curve([1.0] + [0.9] * 5 + [0.3, 0.25, 0.22, 0.21, 0.1])
    update_resolution(s, high, 1.0)
    assert s.has_high_fsc_at_limit
    update_resolution(s, low, 1.0)
    assert s.has_high_fsc_at_limit


# §6.4 hidden-variable changes -------------------------------------------------------------------


def test_hidden_changes_counter():
    """Fine steps 7.5° and 1 px: 'small' is < 0.4 × fine step or ≥ smallest-so-far/1.03."""
    s = state()
    update_hidden_changes(s, 2.9, 0.39)  # both below 0.4 × fine step
    assert s.nr_iter_wo_hidden_changes == 1
    s = state()
    update_hidden_changes(s, 2.9, 0.5)  # offset 0.5 px ≥ 0.4 × 1 px (the fine step is 2 px / 2^os)
    assert s.nr_iter_wo_hidden_changes == 0
    s = state()
    update_hidden_changes(s, 20.0, 3.0)  # large, and smaller than the initial 999
    assert s.nr_iter_wo_hidden_changes == 0
    assert (s.smallest_angle_change, s.smallest_offset_change) == (20.0, 3.0)
    update_hidden_changes(s, 19.5, 2.95)  # large but no longer decreasing by 3 %
    assert s.nr_iter_wo_hidden_changes == 1
    update_hidden_changes(s, 19.5, 2.95)
    assert s.nr_iter_wo_hidden_changes == 2
    update_hidden_changes(s, 15.0, 2.95)  # angles still improving: reset
    assert s.nr_iter_wo_hidden_changes == 0
    update_hidden_changes(s, 15.0, 1.0)  # offsets still improving: reset
    assert s.nr_iter_wo_hidden_changes == 0
    update_hidden_changes(s, 3.1, 0.3)  # angle 3.1 ≥ 0.4·7.5 and < 15/1.03: reset
    assert s.nr_iter_wo_hidden_changes == 0


# §6.4 auto-sampling -----------------------------------------------------------------------------


def stalled(**kw) -> AutoRefineState:
    base = dict(nr_iter_wo_resol_gain=1, nr_iter_wo_hidden_changes=1, acc_rot_deg=3.0, acc_trans_px=1.0)
    base.update(kw)
    return state(**base)


@pytest.mark.parametrize("kw", [dict(iteration=1), dict(nr_iter_wo_resol_gain=0), dict(nr_iter_wo_hidden_changes=0)])
def test_sampling_unchanged_before_iteration_2_or_when_not_stalled(kw):
    s = stalled(**kw)
    before = s.to_dict()
    assert update_sampling(s, 0.5, auto_local_order=4, pixel_angstrom=1.0) is False
    assert s.to_dict() == before


def test_fine_enough_sampling_stops_refining():
    """Fine step Δ(2+1) = 7.5° < 0.75·acc_rot ⇔ acc_rot > 10°."""
    s = stalled(acc_rot_deg=10.1)
    assert update_sampling(s, 0.5, auto_local_order=4, pixel_angstrom=1.0) is False
    assert s.has_fine_enough_angular_sampling and s.healpix_order == 2
    s = stalled(acc_rot_deg=10.0)
    assert update_sampling(s, 0.5, auto_local_order=4, pixel_angstrom=1.0) is True
    assert not s.has_fine_enough_angular_sampling and s.healpix_order == 3


def test_refinement_step_resets_counters_and_stays_global_below_local_order():
    s = stalled(smallest_angle_change=4.0, smallest_offset_change=0.5)
    assert update_sampling(s, 0.5, auto_local_order=4, pixel_angstrom=1.0) is True
    assert s.healpix_order == 3 and s.sigma_ang_deg is None
    assert (s.nr_iter_wo_resol_gain, s.nr_iter_wo_hidden_changes) == (0, 0)
    assert (s.smallest_angle_change, s.smallest_offset_change) == (999.0, 999.0)


def test_local_searches_from_auto_local_order():
    """New order 4 (≥ auto_local_healpix_order) with os 1: σ_ang = 2·Δ(5) = 2·1.875° = 3.75°."""
    s = stalled(healpix_order=3, acc_rot_deg=1.0)
    assert update_sampling(s, 0.5, auto_local_order=4, pixel_angstrom=1.0) is True
    assert s.healpix_order == 4
    assert s.sigma_ang_deg == pytest.approx(3.75)


def test_gradient_refinement_ignores_hidden_changes_and_never_enters_local_searches():
    """VDAM (§8.1.4, RELION 5 `--grad`): stalled resolution alone refines the sampling; from order
    3 the order stays (order 4 would mean local searches) while the translations are still refined."""
    s = stalled(nr_iter_wo_hidden_changes=0)
    assert update_sampling(s, 0.5, auto_local_order=4, pixel_angstrom=1.0, gradient=True) is True
    assert s.healpix_order == 3 and s.sigma_ang_deg is None
    s = stalled(healpix_order=3, acc_rot_deg=1.0, offset_range_px=5.0, offset_step_px=2.0)
    assert update_sampling(s, 0.5, auto_local_order=4, pixel_angstrom=1.0, gradient=True) is False
    assert s.healpix_order == 3 and s.sigma_ang_deg is None
    assert (s.offset_step_px, s.offset_range_px) == (pytest.approx(1.5), pytest.approx(2.5))  # 5 × 0.5 px
    assert s.nr_iter_wo_resol_gain == 0
    s = stalled(nr_iter_wo_resol_gain=0)
    assert update_sampling(s, 0.5, auto_local_order=4, pixel_angstrom=1.0, gradient=True) is False
    assert s.healpix_order == 2


@pytest.mark.parametrize(
    "acc_trans,rms_change,old_range,old_step,step,rng",
    [
        # step = min(1.5, 0.75)·2 = 1.5; range = min(5·0.2, 1.3·5) = 1 → at least 1.5·1.5 = 2.25
        (1.0, 0.2, 5.0, 2.0, 1.5, 2.25),
        # step = min(1.5, 3)·2 = 3, coarser than the current 2: RELION keeps step and range
        (4.0, 3.0, 10.0, 2.0, 2.0, 10.0),
        # step = min(1.5, 0.3)·2 = 0.6; range 13 → 6.5, still > 2.4 → step = 6.5/4 = 1.625
        (0.4, 3.0, 10.0, 2.0, 1.625, 6.5),
    ],
)
def test_translation_sampling_rules(acc_trans, rms_change, old_range, old_step, step, rng):
    s = stalled(acc_trans_px=acc_trans, offset_range_px=old_range, offset_step_px=old_step)
    assert update_sampling(s, rms_change, auto_local_order=4, pixel_angstrom=1.0) is True
    assert s.offset_step_px == pytest.approx(step)
    assert s.offset_range_px == pytest.approx(rng)


def test_translation_step_capped_at_1_5_angstrom():
    """RELION 3.1 works in Å: at 4 Å/px the coarse step is at most 1.5 Å·2 = 0.75 px (not 3 px)."""
    s = stalled(acc_trans_px=2.0, offset_range_px=6.0, offset_step_px=2.0)
    assert update_sampling(s, 0.5, auto_local_order=4, pixel_angstrom=4.0) is True
    assert s.offset_step_px == pytest.approx(0.75)
    assert s.offset_range_px == pytest.approx(2.5)  # 5 × 0.5 px, ≤ 4 steps


# §6.5 convergence -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fine,no_gain,no_change,converged",
    [(True, 1, 1, True), (False, 1, 1, False), (True, 0, 1, False), (True, 1, 0, False), (True, 2, 3, True)],
)
def test_convergence_needs_all_three(fine, no_gain, no_change, converged):
    s = state(has_fine_enough_angular_sampling=fine, nr_iter_wo_resol_gain=no_gain,
              nr_iter_wo_hidden_changes=no_change)
    check_convergence(s)
    assert s.converged is converged


@pytest.mark.parametrize(("acc_rot", "acc_trans", "order", "step"), [
    (30.0, 1.0, 1, 2.0),    # 15° < 24° ≤ 30°: one order coarser; offsets not finer than the given 2 px
    (5.0, 1.0, 2, 2.0),     # 7.5° is already coarser than 0.8·5°: the given order stays
    (999.0, 999.0, 0, 4.75),  # no accuracy yet: order 0 at most; the step at most 0.95 × the 5 px range
    (60.0, 2.0, 0, 3.2),    # 0.8 × 2 px × 2^os = 3.2 px
])
def test_coarser_sampling_follows_relion(acc_rot, acc_trans, order, step):
    """RELION's --allow_coarser_sampling from the original order 2 (+ os 1 = 7.5°), offsets 2/5 px."""
    from ember.inference.schedule import coarser_sampling

    assert coarser_sampling(2, 1, 2.0, 5.0, acc_rot, acc_trans) == (order, pytest.approx(step))
