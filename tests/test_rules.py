"""Targeted checks of the closed-form path averages (Eq. 21) on hand-made inputs."""
import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from lidlib import rules

import reference


def _fast_maxpool_matrix(pool, x, x_ref, n):
    f = lambda t: rules.maxpool_substitute(pool, t, x_ref, pool(t), None, n).reshape(-1)
    return jacobian(f, x).reshape(-1, x.numel())


def _crafted_maxpool_input():
    """Lines x̂ + tΔ with crossings, parallel lines, identical lines and constant windows."""
    x_ref = torch.tensor([[0.0, 1.0, 2.0, 2.0, 0.5],
                          [1.0, 0.0, 2.0, 2.0, -1.0],
                          [0.3, 0.3, 0.3, -2.0, 4.0],
                          [0.3, 0.3, 1.0, 0.0, 0.0],
                          [5.0, -5.0, 0.0, 0.0, 0.0]], dtype=torch.float64)[None, None]
    delta = torch.tensor([[2.0, -1.0, 1.0, 1.0, 0.0],      # crossing at t=1/3; parallel, offset equal
                          [0.0, 2.0, 1.0, 1.0, 3.0],       # identical lines (2,1) and (2,1)
                          [1.0, 1.0, 1.0, 0.0, -8.0],      # three identical lines
                          [0.0, 0.0, -2.0, 0.5, 0.5],
                          [-10.0, 10.0, 0.0, 0.0, 0.0]], dtype=torch.float64)[None, None]
    x_ref = torch.cat([x_ref, -x_ref], 1)
    delta = torch.cat([delta, 0.5 * delta], 1)
    return x_ref + delta, x_ref


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(3, stride=1),
                                  nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(3, stride=2, padding=1),
                                  nn.MaxPool2d(2, stride=1, dilation=2)])
@pytest.mark.parametrize("n", [1, 3, 7, None])
def test_maxpool_path_average_matches_window_loops(pool, n):
    x, x_ref = _crafted_maxpool_input()
    fast = _fast_maxpool_matrix(pool, x, x_ref, n)
    slow = reference.maxpool_matrix(pool, x.shape[1:], x.reshape(-1), x_ref.reshape(-1), n)
    assert torch.allclose(fast, slow, atol=1e-12), (fast - slow).abs().max()
    assert torch.allclose(fast.sum(1), torch.ones(fast.shape[0], dtype=fast.dtype))   # a convex split


def test_maxpool_exact_is_the_limit_of_samples():
    x, x_ref = _crafted_maxpool_input()
    pool = nn.MaxPool2d(2, padding=1)
    exact = _fast_maxpool_matrix(pool, x, x_ref, None)
    gaps = [(_fast_maxpool_matrix(pool, x, x_ref, n) - exact).abs().max().item() for n in (10, 100, 1000)]
    assert gaps[2] <= 2e-3 and gaps[1] <= 2e-2 and gaps[0] > 0


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.2)])
@pytest.mark.parametrize("n", [1, 4, 10])
def test_elementwise_closed_form_counts_match_sampled_derivatives(act, n):
    x_ref = torch.tensor([-1.0, 0.0, 0.0, 6.0, 3.0, -2.0, 7.0, 0.5, 0.0, 6.0], dtype=torch.float64)
    x = torch.tensor([3.0, 2.0, -1.0, 0.0, 3.0, 10.0, -1.0, -0.5, 0.0, 6.0], dtype=torch.float64)
    fast = rules.path_slope(act, x, x_ref, act(x), act(x_ref), n)
    slow = torch.stack([reference._slope(act, x_ref + (k / n) * (x - x_ref)) for k in range(1, n + 1)]).mean(0)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-14)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.2)])
def test_elementwise_exact_is_secant(act):
    x_ref = torch.tensor([-1.0, 0.0, 6.0, 3.0, -2.0, 7.0, 0.5, 2.0], dtype=torch.float64)
    x = torch.tensor([3.0, 2.0, 0.0, 3.0, 10.0, -1.0, -0.5, 2.0], dtype=torch.float64)
    fast = rules.path_slope(act, x, x_ref, act(x), act(x_ref), None)
    slow = torch.diagonal(reference.elementwise_exact(act, x, x_ref))
    assert torch.allclose(fast, slow, atol=1e-14)
