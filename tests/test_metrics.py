"""lidlib.evaluation.metrics on cases whose answers are known by construction.

The toy models are conv-free (Flatten → Linear, float64): the logit of class c is a weighted sum of
pixels, so the exact relevance of a pixel (LID with the reference X̂ = 0) is its term ``w_i·x_i`` and
removing a set S of pixels (fill = X̂) changes the logit by exactly ``−Σ_{i∈S} r_i``.
"""
import math

import pytest
import torch
from torch import nn

import lidlib
import lidlib.images
import lidlib.toy
from lidlib.evaluation import metrics as M

H = W = 8
N = H * W


def linear_model(weights: torch.Tensor, biases) -> nn.Module:
    """logit_k = <weights[k], x> + b_k for inputs (B, 3, H, W); float64, eval mode."""
    k = weights.shape[0]
    lin = nn.Linear(weights[0].numel(), k).double()
    with torch.no_grad():
        lin.weight.copy_(weights.reshape(k, -1))
        lin.bias.copy_(torch.as_tensor(biases, dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), lin).eval()


def region_model(seed=0):
    """Class 0 sees only the region A (the left 5 columns), as a masked average with channel weights;
    class 1 is a constant logit.  Returns the model, the input x and the exact pixel relevance r."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(H, W, dtype=torch.float64)
    mask[:, :5] = 1
    w_ch = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    w0 = w_ch[:, None, None] * mask / mask.sum() * 20
    weights = torch.stack([w0, torch.zeros_like(w0)])
    model = linear_model(weights, [0.3, 1.0])
    x = torch.randn(1, 3, H, W, generator=g, dtype=torch.float64)
    r = (w0 * x[0]).sum(0)                      # exact relevance of each pixel (H, W)
    return model, x, r


def p0_after_removal(model, x, r, k):
    """P_0 after removing the k pixels of smallest relevance, by hand: z_0 − Σ (k smallest r)."""
    z = model(x)[0].detach()
    removed = torch.sort(r.flatten()).values[:k].sum()
    z0 = z[0] - removed
    return float(torch.softmax(torch.stack([z0, z[1]]), 0)[0])


# ---------------------------------------------------------------------------------------------------------------------
# probability change
# ---------------------------------------------------------------------------------------------------------------------

def test_exact_relevance_equals_lid_input_relevance():
    model, x, r = region_model()
    for method in ("LID-IG", "LID-Taylor", "DeepLIFT"):
        e = lidlib.explain(model, x, 0, method)
        assert torch.allclose(M.heatmaps(e, "input")[0], r, atol=1e-12)


def test_probability_change_matches_hand_computation():
    model, x, r = region_model()
    curve = M.probability_change(model, x, 0, r[None])
    p = float(torch.softmax(model(x)[0].detach(), 0)[0])
    assert curve.params == M.RATIOS
    assert math.isclose(float(curve.p[0]), p, rel_tol=1e-12)
    for j, ratio in enumerate(M.RATIOS):
        k = int(math.floor(ratio * N + 0.5))
        assert math.isclose(float(curve.delta[0, j]), p0_after_removal(model, x, r, k) - p, abs_tol=1e-12)


def test_removed_reading_endpoints_and_negative_relevance_raises_probability():
    model, x, r = region_model()
    assert (r < 0).float().mean() > 0.1         # more than 10 % of the pixels count against class 0
    curve = M.probability_change(model, x, 0, r[None], ratios=(0.0, 0.1, 1.0))
    p_ref = float(torch.softmax(model(torch.zeros_like(x))[0].detach(), 0)[0])
    assert float(curve.delta[0, 0]) == 0.0                          # nothing removed
    assert float(curve.delta[0, 1]) > 0                              # negative pixels removed first: P_0 rises
    assert math.isclose(float(curve.p_masked[0, 2]), p_ref, rel_tol=1e-12)   # all removed = the reference X̂


def test_exact_heatmap_gives_the_best_curve():
    """Removing the k least relevant pixels maximises P_c(masked) over every set of k pixels, so the exact
    heatmap's curve is an upper bound for any other heatmap; random ones are strictly worse."""
    model, x, r = region_model(seed=1)
    best = M.probability_change(model, x, 0, r[None]).delta[0]
    g = torch.Generator().manual_seed(3)
    worse = 0
    for _ in range(5):
        rand = torch.randn(1, H, W, generator=g, dtype=torch.float64)
        d = M.probability_change(model, x, 0, rand).delta[0]
        assert bool((best >= d - 1e-12).all())
        worse += int((best > d + 1e-6).any())
    assert worse == 5
    noisy = r + 0.5 * r.abs().mean() * torch.randn(H, W, generator=g, dtype=torch.float64)
    flipped = M.probability_change(model, x, 0, -r[None]).delta[0]
    d_noisy = M.probability_change(model, x, 0, noisy[None]).delta[0]
    assert bool((best >= d_noisy - 1e-12).all()) and bool((d_noisy >= flipped - 1e-12).all())
    assert float(best.mean()) > float(d_noisy.mean()) > float(flipped.mean())


def test_one_forward_pass_per_image():
    model, x, r = region_model()
    calls = []
    h = model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        xb = torch.cat([x, 2 * x])
        M.probability_change(model, xb, torch.tensor([0, 0]), torch.stack([r, r]))
    finally:
        h.remove()
    assert calls == [len(M.RATIOS) + 1] * 2


def test_tie_breaking_is_seeded_and_stable():
    zero = torch.zeros(1, H, W)
    a = M.removal_masks(zero, (0.25, 0.5), seed=0)
    b = M.removal_masks(zero, (0.25, 0.5), seed=0)
    c = M.removal_masks(zero, (0.25, 0.5), seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a[0, 0].sum()) == 16 and int(a[0, 1].sum()) == 32
    assert bool((a[0, 0] <= a[0, 1]).all())                # nested: what 0.25 removes, 0.5 removes too
    idx = M.removal_masks(zero, (0.25,), tie_break="index")
    assert idx[0, 0].flatten()[:16].all() and not idx[0, 0].flatten()[16:].any()
    # untied values are never reordered by the tie-breaking permutation
    h = torch.arange(N, dtype=torch.float64).reshape(1, H, W).flip(-1)
    for seed in range(3):
        m = M.removal_masks(h, (0.1,), seed=seed)[0, 0]
        assert torch.equal(m, h[0] < torch.sort(h.flatten()).values[6])


def test_undecided_cuts_are_the_cuts_within_the_rounding():
    # N distinct values 0, 1, …, N−1 (gaps of 1): rounding below 1 / ROUNDING_FACTOR decides every cut
    h = torch.arange(N, dtype=torch.float64).reshape(H, W)
    ratios = (0.25, 0.5, 0.75)
    assert M.undecided_cuts(h, h + 0.03 * torch.rand(H, W), ratios) == [False, False, False]
    assert M.undecided_cuts(h, h, ratios) == [False, False, False]
    # move the first kept pixel of ratio 0.5 next to the last removed one: only that cut is undecided
    k = M._count(0.5, N)
    g = h.clone().flatten()
    g[k] = g[k - 1] + 0.1
    g = g.reshape(H, W)
    other = g.clone()
    other.view(-1)[0] += 0.06                      # rounding of size 0.06 somewhere: 2·0.06 > 0.1
    assert M.undecided_cuts(g, other, ratios, factor=2) == [False, True, False]
    assert M.undecided_cuts(g, other, ratios, factor=1) == [False, False, False]
    other.view(-1)[0] += 0.011 - 0.06                  # 0.011: within ROUNDING_FACTOR · 0.011 only
    assert M.ROUNDING_FACTOR == 10 and M.undecided_cuts(g, other, ratios) == [False, True, False]
    assert M.undecided_cuts(g, g, ratios) == [False, False, False]         # exact arithmetic decides it
    # ties at a cut are undecided whatever the rounding; empty and full removals never are
    assert M.undecided_cuts(torch.zeros(H, W), torch.zeros(H, W), (0.0, 0.5, 1.0)) == [False, True, False]


def test_fill_values():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert torch.equal(M.fill_values(x), torch.zeros_like(x))
    assert torch.allclose(M.fill_values(x, "mean")[:, :, 0, 0], x.mean(dim=(2, 3)))
    assert torch.equal(M.fill_values(x, -1.5), torch.full_like(x, -1.5))
    col = torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    assert torch.equal(M.fill_values(x, col)[1, :, 2, 3], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="fill"):
        M.fill_values(x, "blur")


def test_bad_heatmaps_are_refused():
    model, x, r = region_model()
    with pytest.raises(ValueError, match="input size"):
        M.probability_change(model, x, 0, r[None, :4])
    with pytest.raises(ValueError, match="NaN"):
        M.probability_change(model, x, 0, torch.full((1, H, W), float("nan")))
    with pytest.raises(ValueError, match="ratios"):
        M.probability_change(model, x, 0, r[None], ratios=(1.5,))


def test_stage_keys():
    assert M.stage_key(5) == "s5" and M.stage_key("s5") == "s5"
    assert M.stage_key((5, 4, 3)) == "s543" and M.stage_key("s54321") == "s54321"
    assert M.stage_key("input") == "input"
    with pytest.raises(ValueError):
        M.stage_key("five")


def test_multiscale_uses_the_explanations_stage_heatmaps():
    model = lidlib.toy.cnn(3, 16, 5, seed=2)
    model.stages = {"s1": "1", "s2": "2", "s3": "3", "s4": "4", "s5": "5"}
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    e = lidlib.explain(model, x, 1, "SIG-LID-IG")
    out = M.multiscale_probability_change(model, x, 1, e)
    assert list(out) == list(M.SCALES)
    for key, curve in out.items():
        ref = M.probability_change(model, x, 1, e.heatmap(key if len(key) > 2 else 5))
        assert torch.equal(curve.delta, ref.delta)


# ---------------------------------------------------------------------------------------------------------------------
# minimal patch
# ---------------------------------------------------------------------------------------------------------------------

def test_minimal_patch_on_a_known_negative_pixel():
    """Per-pixel weights with one strongly negative weight at (1, 6), near the border; positive inputs,
    so the relevance minimum is there and each patch's effect is known exactly."""
    g = torch.Generator().manual_seed(0)
    w = torch.rand(H, W, generator=g, dtype=torch.float64) * 0.2
    w[1, 6] = -3.0
    weights = torch.stack([w.expand(3, H, W) / 3, torch.zeros(3, H, W, dtype=torch.float64)])
    model = linear_model(weights, [0.0, 0.5])
    x = torch.rand(1, 3, H, W, generator=g, dtype=torch.float64) + 0.5
    r = (weights[0] * x[0]).sum(0)
    assert divmod(int(r.argmin()), W) == (1, 6)
    radii = (0, 1, 2, 3)
    masks, centres = M.patch_masks(r[None], radii)
    assert centres.tolist() == [[1, 6]]
    assert [int(m.sum()) for m in masks[0]] == [1, 3 * 3, 4 * 4, 5 * 5]   # r = 2, 3: clipped at the top and right border
    curve = M.minimal_patch(model, x, 0, r[None], radii)
    z = model(x)[0].detach()
    p = float(torch.softmax(z, 0)[0])
    for k, m in enumerate(masks[0]):
        z0 = z[0] - r[m].sum()
        expected = float(torch.softmax(torch.stack([z0, z[1]]), 0)[0]) - p
        assert math.isclose(float(curve.delta[0, k]), expected, abs_tol=1e-12)
    assert float(curve.delta[0, 0]) > 0          # removing the negative pixel raises P_c
    # a heatmap that does not see the negative pixel (a ReLU-ed map) patches elsewhere and lowers P_c
    cam = r.clamp_min(0)
    cam[1, 6] = 0.5
    assert float(M.minimal_patch(model, x, 0, cam[None], (1,)).delta[0, 0]) < 0


def test_minimal_patch_ties_are_seeded():
    flat = torch.zeros(1, H, W)
    flat[0, 3, 3] = 1.0                                   # every other pixel ties at the minimum
    first = M.patch_masks(flat, (1,), tie_break="index")[1]
    assert first.tolist() == [[0, 0]]
    centres = {tuple(M.patch_masks(flat, (1,), seed=s)[1][0].tolist()) for s in range(6)}
    assert len(centres) > 1 and (3, 3) not in centres
    assert torch.equal(M.patch_masks(flat, (1,), seed=4)[1], M.patch_masks(flat, (1,), seed=4)[1])
    assert M.patch_masks(flat, (0,), at="max")[1].tolist() == [[3, 3]]


# ---------------------------------------------------------------------------------------------------------------------
# robustness
# ---------------------------------------------------------------------------------------------------------------------

def uniform_model():
    """Translation-equivariant relevance: logit_0 = Σ_pixels Σ_ch w_ch x_ch (same weight at every pixel)."""
    w_ch = torch.tensor([0.7, -0.4, 1.1], dtype=torch.float64)
    w0 = w_ch[:, None, None].expand(3, H, W)
    return linear_model(torch.stack([w0 / 10, torch.zeros_like(w0)]), [0.1, 0.0])


def test_jitter_and_unjitter_are_exact_inverses_for_integer_shifts():
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    ts = [(2, 0, 1.0), (-1, 3, 1.0)]
    j = M.jitter(x, ts)
    assert torch.allclose(j[0, :, :, 2:], x[0, :, :, :-2], atol=1e-12)   # content moved right by 2 pixels
    assert torch.equal(j[0, :, :, :2], torch.zeros(3, H, 2, dtype=torch.float64))   # filled with X̂ = 0
    back = M.unjitter(j[:, 0], ts)
    vis = M.visible(ts, H, W)
    assert [int(v.sum()) for v in vis] == [H * (W - 2), (H - 3) * (W - 1)]
    for b, v in zip(back, vis):
        assert torch.allclose(b[v], x[0, 0][v], atol=1e-12)


def test_robustness_is_one_for_an_equivariant_toy():
    model = uniform_model()
    x = torch.randn(2, 3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ts = [(2, 0, 1.0), (-1, 3, 1.0), (0, -2, 1.0)]
    res = M.robustness(model, x, 0, "LID-IG", stages="input", transforms=ts)
    assert res.pearson.shape == (2, 3)
    assert torch.allclose(res.pearson, torch.ones(2, 3, dtype=torch.float64), atol=1e-12)
    assert torch.equal(res.sign_flip, torch.zeros(2, 3, dtype=torch.float64))


def test_robustness_drops_for_a_position_dependent_model():
    g = torch.Generator().manual_seed(4)
    weights = torch.stack([torch.randn(3, H, W, generator=g, dtype=torch.float64),
                           torch.zeros(3, H, W, dtype=torch.float64)])
    model = linear_model(weights, [0.0, 0.0])
    x = torch.randn(1, 3, H, W, dtype=torch.float64, generator=g)
    res = M.robustness(model, x, 0, "LID-IG", stages="input", transforms=[(2, 1, 1.0)])
    assert float(res.pearson[0, 0]) < 0.9 and float(res.sign_flip[0, 0]) > 0.1


def test_robustness_random_transforms_are_seeded_and_identity_is_exact():
    model = uniform_model()
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    a = M.robustness(model, x, 0, "LID-Taylor", stages="input", n_copies=2, seed=5)
    b = M.robustness(model, x, 0, "LID-Taylor", stages="input", n_copies=2, seed=5)
    assert a.transforms == b.transforms and torch.equal(a.pearson, b.pearson)
    for dx, dy, s in a.transforms[0]:
        assert abs(dx) <= 0.1 * W and abs(dy) <= 0.1 * H and 0.9 <= s <= 1.1
    ident = M.robustness(model, x, 0, lambda m, xx, tt: torch.randn(xx.shape[0], H, W).double()
                         .index_select(0, torch.zeros(xx.shape[0], dtype=torch.long)), transforms=[(0, 0, 1.0)])
    assert math.isclose(float(ident.pearson[0, 0]), 1.0, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# class discrimination
# ---------------------------------------------------------------------------------------------------------------------

def test_class_discrimination_by_hand():
    h = torch.tensor([[2.0, 1.0, -1.0, 0.0]])
    target = torch.tensor([[True, True, False, False]])
    other = torch.tensor([[False, False, True, True]])
    d = M.class_discrimination(h[None, :, :], target, other)
    assert math.isclose(float(d.pos_in_target[0]), 1.0)
    assert math.isclose(float(d.other_mean[0]), (-1.0 / 2 + 0.0) / 2)      # (−1/max|h| + 0) / 2 pixels
    assert math.isclose(float(d.neg_in_other[0]), 1.0)
    d = M.class_discrimination(torch.tensor([[[1.0, -1.0, 3.0, 0.0]]]), target, other)
    assert math.isclose(float(d.pos_in_target[0]), 0.25) and math.isclose(float(d.neg_in_other[0]), 0.0)


def test_class_discrimination_on_a_synthetic_composite():
    """Class 0 sees only the left photo, class 1 only the right one.  The logit method puts nothing on the
    right half (other_mean = 0); the contrastive SIG-LID-IG puts negative relevance there."""
    g = torch.Generator().manual_seed(0)
    left, right = torch.rand(3, 12, 6, generator=g) * 0.5 + 0.5, torch.rand(3, 12, 6, generator=g) * 0.5 + 0.5
    img, (ml, mr) = lidlib.images.composite(left, right, size=H)
    x = img[None].double()
    w0 = ml.double().expand(3, H, W) / ml.sum() * 4
    w1 = mr.double().expand(3, H, W) / mr.sum() * 4
    model = linear_model(torch.stack([w0, w1]), [0.2, -0.1])
    e = lidlib.explain(model, x, 0, "LID-IG")
    d = M.class_discrimination(M.heatmaps(e, "input"), ml, mr)
    assert math.isclose(float(d.pos_in_target[0]), 1.0) and float(d.other_mean[0]) == 0.0
    assert math.isnan(float(d.neg_in_other[0]))
    e = lidlib.explain(model, x, 0, "SIG-LID-IG")
    d = M.class_discrimination(M.heatmaps(e, "input"), ml, mr)
    assert math.isclose(float(d.pos_in_target[0]), 1.0) and float(d.other_mean[0]) < -0.1
    assert math.isclose(float(d.neg_in_other[0]), 1.0)
