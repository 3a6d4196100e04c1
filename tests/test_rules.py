"""Targeted checks of the closed-form path averages (Eq. 21) on hand-made inputs."""
import pytest
import reference
import torch
from torch import nn
from torch.autograd.functional import jacobian

from lidlib import rules


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


# ----------------------------------------------------------------------------- the fast closed forms
ACTS = [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.2), nn.Hardtanh(-1.5, 2.0)]


def _random_path(n_el=3000, seed=0):
    """Random float64 paths, with some on a kink, some with x = x̂ and some on integer grids (exact ties)."""
    g = torch.Generator().manual_seed(seed)
    x_ref = torch.randn(n_el, generator=g, dtype=torch.float64) * 4
    x = torch.randn(n_el, generator=g, dtype=torch.float64) * 4
    x[:200] = x_ref[:200]                                     # Δx = 0
    x[200:400], x_ref[200:400] = x[200:400].round(), x_ref[200:400].round()   # samples on kinks
    x[400:500] = 0.0
    x_ref[500:600] = 6.0
    return x, x_ref


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n", [1, 3, 10])
def test_elementwise_counts_match_sampled_derivatives_on_random_paths(act, n):
    x, x_ref = _random_path()
    fast = rules.path_slope(act, x, x_ref, act(x), act(x_ref), n)
    slow = torch.stack([reference._slope(act, x_ref + (k / n) * (x - x_ref)) for k in range(1, n + 1)]).mean(0)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-14), (fast - slow).abs().max()


@pytest.mark.parametrize("act", ACTS)
def test_elementwise_exact_is_secant_on_random_paths(act):
    x, x_ref = _random_path(seed=1)
    fast = rules.path_slope(act, x, x_ref, act(x), act(x_ref), None)
    dx = x - x_ref
    secant = torch.where(dx == 0, reference._slope(act, x), (act(x) - act(x_ref)) / dx)
    assert torch.allclose(fast, secant, rtol=0, atol=1e-12)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n", [4, None])
def test_elementwise_backward_is_path_slope_times_gradient(act, n):
    """The substitute's backward multiplies by D̄; also for a batch-1 and a 0-dim reference."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64) * 3
    for x_ref in (torch.randn(1, 5, 7, generator=g, dtype=torch.float64), torch.zeros((), dtype=torch.float64)):
        xg = x.clone().requires_grad_(True)
        out = rules.elementwise_substitute(act, xg, x_ref, act(xg), act(x_ref), n)
        assert torch.equal(out, act(x))
        grad_out = torch.randn(x.shape, generator=g, dtype=torch.float64)
        (grad,) = torch.autograd.grad(out, xg, grad_out)
        expected = grad_out * rules.path_slope(act, x, x_ref.expand_as(x), act(x), act(x_ref).expand_as(x), n)
        assert torch.allclose(grad, expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.SiLU()])
@pytest.mark.parametrize("n", [3, 127, 128, None])
def test_path_slope_is_taken_in_the_forward_pass(act, n):
    """D̄ is computed from the forward pass's values and kept (counts in one byte for ReLU/ReLU6, n ≤ 127):
    an in-place change of the layer's input or of the reference afterwards does not change it."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g) * 4
    x_ref = torch.randn(1, 6, dtype=torch.float64, generator=g)
    expected = rules.path_slope(act, x, x_ref.expand_as(x), act(x), act(x_ref).expand_as(x), n) if not \
        isinstance(act, nn.SiLU) else rules.smooth_path_slope(act, x, x_ref, act(x), act(x_ref), n)
    xg = x.clone().requires_grad_(True)
    h, h_ref = xg * 1.0, x_ref.clone()
    sub = rules.smooth_substitute if isinstance(act, nn.SiLU) else rules.elementwise_substitute
    out = sub(act, h, h_ref, act(h), act(h_ref), n)
    saved = out.grad_fn.saved_tensors
    integer = n is not None and n <= 127 and not isinstance(act, (nn.LeakyReLU, nn.SiLU))
    assert [t.dtype for t in saved] == [torch.int8 if integer else torch.float64]
    with torch.no_grad():
        h.add_(1.0)
        h_ref.mul_(-2.0)
    (grad,) = torch.autograd.grad(out.sum(), xg)
    assert torch.allclose(grad, expected, rtol=1e-15, atol=1e-15)


POOLS = [nn.MaxPool2d(2), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(3, stride=1), nn.MaxPool2d(2, ceil_mode=True),
         nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2, stride=1, dilation=2), nn.MaxPool2d((2, 3))]


def _random_maxpool_input(kind, seed):
    """Random windows; VGG-like ones (a reference map constant per channel, ReLU zeros: ties at x̂ and
    at x, crossings at t = 1) and inputs on a grid (exact ties at sample points)."""
    g = torch.Generator().manual_seed(seed)
    C, H, W = 3, 6, 7
    x = torch.randn(1, C, H, W, generator=g, dtype=torch.float64)
    x_ref = torch.randn(1, C, H, W, generator=g, dtype=torch.float64)
    if kind in ("vgg", "grid"):
        x_ref = torch.randn(1, C, 1, 1, generator=g, dtype=torch.float64).expand(1, C, H, W).clone()
        x_ref[:, 0, 2] += 0.7
    if kind == "vgg":
        x, x_ref = x.relu(), x_ref.relu()
    if kind == "grid":
        x = (4 * x).round() / 4
    return x, x_ref


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("kind", ["random", "vgg", "grid"])
def test_maxpool_two_line_closed_form_matches_window_loops(pool, kind):
    for seed in range(3):
        x, x_ref = _random_maxpool_input(kind, seed)
        for n in (1, 3, 10, None):
            fast = _fast_maxpool_matrix(pool, x, x_ref, n)
            slow = reference.maxpool_matrix(pool, x.shape[1:], x.reshape(-1), x_ref.reshape(-1), n)
            assert torch.allclose(fast, slow, atol=1e-12), (seed, n, (fast - slow).abs().max())


def test_maxpool_third_line_windows_use_the_general_solver():
    """Two lines tied at x̂ with different slopes, and a third line above the crossing of w0 and w1."""
    x_ref = torch.tensor([[1.0, 1.0], [0.5, 0.2]], dtype=torch.float64)[None, None]
    delta = torch.tensor([[0.0, 0.5], [2.0, 0.0]], dtype=torch.float64)[None, None]
    pool = nn.MaxPool2d(2)
    p = rules.maxpool_path_weights(pool, x_ref + delta, x_ref, (1, 1), None)
    assert p["rows"] is not None and p["rows"][0].tolist() == [0]
    exact = _fast_maxpool_matrix(pool, x_ref + delta, x_ref, None)
    assert torch.allclose(exact, torch.tensor([[0.0, 1 / 3, 2 / 3, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1)])
@pytest.mark.parametrize("n", [10, None])
def test_maxpool_batch_broadcast_and_unbatched_inputs(pool, n):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64).relu()
    x_ref = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64).relu()
    grad_out = torch.randn(pool(x).shape, generator=g, dtype=torch.float64)

    def grad(x, x_ref, grad_out):
        xg = x.clone().requires_grad_(True)
        out = rules.maxpool_substitute(pool, xg, x_ref, pool(xg), None, n)
        assert torch.equal(out, pool(x))
        return torch.autograd.grad(out, xg, grad_out)[0]
    batch = grad(x, x_ref, grad_out)
    for b in range(3):
        assert torch.equal(batch[b], grad(x[b], x_ref[0], grad_out[b]))               # unbatched (C, H, W)
        A = reference.maxpool_matrix(pool, x.shape[1:], x[b].reshape(-1), x_ref[0].reshape(-1), n)
        assert torch.allclose(batch[b].reshape(-1), grad_out[b].reshape(-1) @ A, atol=1e-12)
    zero = grad(x, torch.zeros((), dtype=torch.float64), grad_out)
    assert torch.equal(zero, grad(x, torch.zeros_like(x), grad_out))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(3, stride=1)])
@pytest.mark.parametrize("n", [10, None, 200])
def test_maxpool_backward_in_blocks_of_planes_is_the_same(monkeypatch, pool, n):
    """The max-pool's backward pass makes its int64 window positions a block of planes at a time
    (rules.POOL_BLOCK): any block size, down to one plane, gives the same gradient bit for bit, with
    windows solved in general (a third line on top at t*) present, and matches the slow reference."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 9, 9, generator=g, dtype=torch.float64)
    x_ref = torch.randn(1, 5, 9, 9, generator=g, dtype=torch.float64) * 0.5
    grad_out = torch.randn(pool(x).shape, generator=g, dtype=torch.float64)
    assert rules.maxpool_path_weights(pool, x, x_ref, pool(x).shape[-2:], n)["rows"] is not None

    def grad():
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad(rules.maxpool_substitute(pool, xg, x_ref, pool(xg), None, n), xg, grad_out)[0]
    monkeypatch.setattr(rules, "POOL_BLOCK", 10 ** 9)
    whole = grad()
    for block in (1, 30, 100, 500):
        monkeypatch.setattr(rules, "POOL_BLOCK", block)
        assert torch.equal(grad(), whole), block
    for b in range(3):
        A = reference.maxpool_matrix(pool, x.shape[1:], x[b].reshape(-1), x_ref[0].reshape(-1), n)
        assert torch.allclose(whole[b].reshape(-1), grad_out[b].reshape(-1) @ A, atol=1e-12)


@pytest.mark.parametrize("kind", ["random", "vgg", "grid"])
def test_tiled_pool_is_the_layer_and_feeds_the_same_path_average(kind):
    """rules.tiled_pool (the engine's forward for path-averaged VGG-style pools) gives the layer's
    own output bit for bit, ties included, and its window images give the same D̄ as recomputing them."""
    pool = nn.MaxPool2d(2)
    for seed in range(3):
        x, x_ref = _random_maxpool_input(kind, seed)
        x, x_ref = x[..., :6], x_ref[..., :6]                            # 6×6: windows tile the input
        p = rules.tiled_pool(pool, x)
        assert torch.equal(p["y"], pool(x)) and p["y"].is_contiguous()
        for n in (1, 3, 10, None):
            f = lambda t: rules.maxpool_substitute(pool, t, x_ref, pool(t), None, n, rules.tiled_pool(pool, t),
                                                   rules.tiled_pool(pool, x_ref)).reshape(-1)
            fast = jacobian(f, x).reshape(-1, x.numel())
            slow = reference.maxpool_matrix(pool, x.shape[1:], x.reshape(-1), x_ref.reshape(-1), n)
            assert torch.allclose(fast, slow, atol=1e-12), (seed, n, (fast - slow).abs().max())
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64)
    for other in (nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2), nn.MaxPool2d(2, padding=1),
                  nn.MaxPool2d(2, dilation=2), nn.MaxPool2d(2, return_indices=True)):
        assert rules.tiled_pool(other, x) is None                        # 7 rows, overlap, padding, …


@pytest.mark.parametrize("method", ["LID-IG", "SIG-LID-IG"])
@pytest.mark.parametrize("n", [10, None])
@pytest.mark.parametrize("refs", [1, 2])
def test_engine_gives_the_same_relevance_with_and_without_tiled_pooling(monkeypatch, method, n, refs):
    """The engine's VGG-style pools go through rules.tiled_pool in both passes; switching that off
    (every pool recomputes its window images) changes no relevance, for one reference or a batch."""
    import lidlib
    from lidlib import engine, toy
    model = toy.cnn(in_channels=3, size=16, seed=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    base = torch.randn(refs, 3, 16, 16, generator=g, dtype=torch.float64) * 0.3
    fast = lidlib.explain(model, x, torch.tensor([1, 4]), method, baseline=base, n_steps=n)
    calls = []
    monkeypatch.setattr(engine, "tiled_pool", lambda m, t: calls.append(1))
    slow = lidlib.explain(model, x, torch.tensor([1, 4]), method, baseline=base, n_steps=n)
    assert calls                                                         # the switch was in effect
    for k in fast.relevance:
        torch.testing.assert_close(fast.relevance[k], slow.relevance[k], rtol=1e-12, atol=1e-14)
