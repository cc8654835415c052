import torch

from ember.maths.fsc import fsc, resolution_shell


def test_fsc_of_map_with_itself_is_one(random_object):
    curve = fsc(random_object, random_object)
    torch.testing.assert_close(curve, torch.ones_like(curve))


def test_fsc_of_independent_noise_is_small():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(32, 32, 32, dtype=torch.float64, generator=gen)
    b = torch.randn(32, 32, 32, dtype=torch.float64, generator=gen)
    curve = fsc(a, b)
    assert curve[0] == 1
    # shells with ≥ 100 voxels: |FSC| ~ 1/sqrt(count) is far below 0.3
    assert curve[3:].abs().max() < 0.3


def test_fsc_of_scaled_map_is_one_and_negated_is_minus_one(random_object):
    assert torch.allclose(fsc(random_object, 3 * random_object)[1:], torch.ones(12, dtype=torch.float64))
    assert torch.allclose(fsc(random_object, -random_object)[1:], -torch.ones(12, dtype=torch.float64))


def test_resolution_shell_is_last_shell_above_threshold():
    curve = torch.tensor([1.0, 0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.3])
    assert resolution_shell(curve, 0.5) == 3
    assert resolution_shell(curve, 0.143) == 5
    assert resolution_shell(torch.ones(5), 0.143) == 4
