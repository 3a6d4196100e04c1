"""The LRP family's ε (the paper's set-up) against a slow reference of Eq. 5, the bootstrap intervals, the
three-way verdicts, and the vectorised path average of the SIG top."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import lidlib
from lidlib import rules, top
from lidlib.evaluation import metrics as M
from lidlib.methods import LRP0_EXACT, get_method

# ---------------------------------------------------------------------------------------------------------------------
# ε: a slow reference of Eq. 5 with the stabiliser z + ε·sign z at conv, linear and max-pool, message 0 where |z| ≤ ε
# ---------------------------------------------------------------------------------------------------------------------

def small_cnn(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(12, 4)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)   # non-zero biases
    return model


def _den(z, eps):
    return z + eps * (1.0 if z >= 0 else -1.0)


@torch.no_grad()
def reference_lrp_eps(model, x, c, eps, top_kind="logit", zplus=False):
    """Input relevance of LRP-ε (or z⁺ with ε), written as explicit messages with loops (Eq. 5, Eq. 9)."""
    conv, relu, pool, flat, lin = model
    x = x.detach()
    a0 = x[0]                                     # (2, 4, 4)
    z1 = conv(x)[0]
    a1 = relu(z1[None])[0]
    a2 = pool(a1[None])[0]                        # (3, 2, 2)
    a3 = a2.reshape(-1)
    z = lin(a3[None])[0]
    if top_kind == "logit":
        R = torch.zeros(4, dtype=torch.float64)
        R[c] = z[c]
    else:                                         # SG: R = P'_c (Eq. 10)
        p = torch.softmax(z, 0)
        R = torch.tensor([p[c] * ((1.0 if i == c else 0.0) - p[i]) for i in range(4)], dtype=torch.float64)
    W, Wc = lin.weight.detach(), conv.weight.detach()
    # linear layer: R_i = Σ_j x_i w_ij R_j / (z_j + ε sign z_j)
    R3 = torch.zeros(12, dtype=torch.float64)
    for j in range(4):
        den = float(sum(a3[i] * max(W[j, i], 0) for i in range(12))) if zplus else float(z[j])
        if abs(den) <= eps or (eps == 0 and den == 0):
            continue
        for i in range(12):
            w = max(float(W[j, i]), 0.0) if zplus else float(W[j, i])
            R3[i] += a3[i] * w * R[j] / _den(den, eps)
    R2 = R3.reshape(3, 2, 2)
    # max-pool: all of R_j goes to the window's winner, scaled by z_j / (z_j + ε sign z_j)
    R1 = torch.zeros(3, 4, 4, dtype=torch.float64)
    for ch in range(3):
        for u in range(2):
            for v in range(2):
                win = a1[ch, 2 * u:2 * u + 2, 2 * v:2 * v + 2]
                k = int(torch.argmax(win.reshape(-1)))
                zj = float(win.reshape(-1)[k])
                if abs(zj) <= eps or (eps == 0 and zj == 0):
                    continue
                R1[ch, 2 * u + k // 2, 2 * v + k % 2] += zj * R2[ch, u, v] / _den(zj, eps)
    # ReLU: pass
    # conv layer: R_i = Σ_j x_i w_ij R_j / (z_j + ε sign z_j), zero padding
    R0 = torch.zeros(2, 4, 4, dtype=torch.float64)
    for o in range(3):
        for yy in range(4):
            for xx in range(4):
                msgs = {}
                for i in range(2):
                    for dy in range(3):
                        for dx in range(3):
                            py, px = yy + dy - 1, xx + dx - 1
                            if 0 <= py < 4 and 0 <= px < 4:
                                w = float(Wc[o, i, dy, dx])
                                msgs[(i, py, px)] = a0[i, py, px] * (max(w, 0.0) if zplus else w)
                den = float(sum(msgs.values())) if zplus else float(z1[o, yy, xx])
                if abs(den) <= eps or (eps == 0 and den == 0):
                    continue
                for key, m in msgs.items():
                    R0[key] += m * R1[o, yy, xx] / _den(den, eps)
    return R0


def _x(seed=1, positive=False):
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.abs() if positive else x


@pytest.mark.parametrize("eps", [1e-9, 0.05, 0.4, 1.5])
@pytest.mark.parametrize("name,top_kind", [("LRP-0", "logit"), ("SG-LRP-0", "SG")])
def test_lrp_eps_matches_slow_reference(eps, name, top_kind):
    model, x = small_cnn(), _x()
    method = get_method(name) if eps == rules.PAPER_EPS else get_method(name).with_eps(eps)
    assert method.rule.eps == eps and method.rule.cutoff
    for c in range(4):
        ours = lidlib.explain(model, x, c, method).relevance["input"][0]
        ref = reference_lrp_eps(model, x, c, eps, top_kind)
        assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-12), (c, float((ours - ref).abs().max()))


def test_the_cutoff_and_max_pool_epsilon_are_exercised():
    """The reference can tell the rules apart: at ε = 0.4 some denominators are cut off, and a reference
    without ε at max-pool, or without the cut-off, gives a different answer."""
    model, x = small_cnn(), _x()
    z1 = model[0](x)
    assert ((z1.abs() <= 0.4) & (z1 != 0)).any()
    ours = lidlib.explain(model, x, 0, get_method("LRP-0").with_eps(0.4)).relevance["input"][0]
    plain = lidlib.explain(model, x, 0, lidlib.Method("LRP-ε", "logit", rules.epsilon(0.4), False)).relevance["input"][0]
    assert not torch.allclose(ours, plain, rtol=1e-3)          # Eq. 5 without cut-off and max-pool ε differs


@pytest.mark.parametrize("eps", [1e-9, 0.05, 0.5])
def test_sg_lrp_zp_eps_matches_slow_reference(eps):
    model, x = small_cnn(2), _x(3, positive=True)
    method = get_method("SG-LRP-ZP") if eps == rules.PAPER_EPS else get_method("SG-LRP-ZP").with_eps(eps)
    for c in range(4):
        ours = lidlib.explain(model, x, c, method).relevance["input"][0]
        ref = reference_lrp_eps(model, x, c, eps, "SG", zplus=True)
        assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_exact_lrp0_is_gradient_times_input_and_the_default_is_the_papers():
    model, x = small_cnn(), _x()
    xg = x.clone().requires_grad_(True)
    model(xg)[0, 2].backward()
    exact = lidlib.explain(model, x, 2, LRP0_EXACT).relevance["input"]
    assert torch.allclose(exact, xg.grad * x, rtol=1e-12, atol=1e-14)
    assert get_method("LRP-0").with_eps(0).rule is rules.LRP0
    assert get_method("LRP-0").rule.eps == rules.PAPER_EPS == 1e-9
    assert get_method("LRP-0 (ε=0.05)").rule.eps == 0.05            # the name form the runner accepts
    with pytest.raises(ValueError, match="LRP family"):
        get_method("LID-IG").with_eps(0.1)
    with pytest.raises(ValueError, match="eps"):
        rules.lrp_epsilon(-1.0)


def test_sg_top_puts_p_prime_on_the_logits_and_cuts_off_small_logits():
    z = torch.tensor([[2.0, -1e-10, 3e-3, -0.5]], dtype=torch.float64)
    c = torch.tensor([0])
    g, r = top.top_relevance("SG", z, torch.zeros(()), c, eps=1e-9)
    assert torch.allclose(r, top.softmax_gradient(z, c))
    assert g[0, 1] == 0                                             # |Z| ≤ ε: no message
    assert torch.allclose(g[0, [0, 2, 3]] * z[0, [0, 2, 3]], r[0, [0, 2, 3]], rtol=1e-14)
    g2, _ = top.top_relevance("SG", z, torch.zeros(()), c, eps=1e-2)
    assert g2[0, 2] == 0 and g2[0, 3] != 0


# ---------------------------------------------------------------------------------------------------------------------
# The vectorised path average (SIG top, n_steps=None)
# ---------------------------------------------------------------------------------------------------------------------

def _slow_path_average(z_ref, dz, c, n_steps):
    if n_steps is not None:
        pts = [(k / n_steps, 1.0 / n_steps) for k in range(1, n_steps + 1)]
    else:
        spread = float((dz.max(dim=1).values - dz.min(dim=1).values).max())
        panels = int(min(4096, max(4, math.ceil(spread / 2))))
        x, w = np.polynomial.legendre.leggauss(16)
        pts = [(lo + (xi + 1) / 2 / panels, wi / 2 / panels) for p in range(panels) for lo in [p / panels]
               for xi, wi in zip(x, w)]
    acc = torch.zeros_like(dz)
    for t, w in pts:
        acc += w * top.softmax_gradient(z_ref + t * dz, c)
    return acc


@pytest.mark.parametrize("n_steps", [1, 10, None])
def test_vectorised_path_average_matches_the_node_loop(n_steps):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, generator=g, dtype=torch.float64) * 40
    z_ref = torch.randn(2, 5, generator=g, dtype=torch.float64)
    c = torch.tensor([1, 3])
    fast = top.path_average(lambda zz: top.softmax_gradient(zz, c), z_ref, z - z_ref, n_steps)
    slow = _slow_path_average(z_ref, z - z_ref, c, n_steps)
    assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("n_steps", [1, 10, None])
@pytest.mark.parametrize("ref_shape", ["batch", "one", "scalar"])
def test_sig_top_average_is_the_path_average_of_the_softmax_gradient(n_steps, ref_shape):
    """The SIG top's ``e_c Σ w P_c − Σ w P_c P`` is the node loop of ``P'_c`` (float64 rounding), also
    in several chunks of nodes (3 × 1000 logits, spread 160: 2 560 nodes, 333 per chunk)."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 1000, generator=g, dtype=torch.float64) * 20
    z_ref = {"batch": torch.randn(3, 1000, generator=g, dtype=torch.float64),
             "one": torch.randn(1, 1000, generator=g, dtype=torch.float64),
             "scalar": torch.tensor(0.5, dtype=torch.float64)}[ref_shape]
    c = torch.tensor([1, 999, 500])
    dz = z - z_ref
    fast = top.softmax_gradient_average(z_ref, dz, c, n_steps)
    slow = _slow_path_average(z_ref.expand_as(z), dz, c, n_steps)
    assert top._nodes(dz, n_steps)[0].numel() > top._nodes(dz, n_steps)[2] or n_steps is not None
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-15)
    g_top, r_top = top.top_relevance("SIG", z, z_ref, c, n_steps)
    assert torch.equal(g_top, fast) and torch.equal(r_top, fast * dz)


def test_exact_sig_top_agrees_with_a_rule_eight_times_finer():
    """One 16-node panel per 2 units of logit spread is exact to rounding (1e-13; the entries of P'_c
    are at most 1/4): against 8 times as many panels, on spreads from 2 to 6 000, with near-ties
    (three logits crossing at one point) and logits that swap their order along the path.  (One panel
    per 16 units misses by 5e-11.)"""
    g = torch.Generator().manual_seed(5)
    for trial, (k, scale) in enumerate([(3, 1), (3, 1000), (10, 10), (10, 1000), (1000, 1), (1000, 10),
                                        (50, 100), (50, 300)] * 3):
        z = torch.randn(2, k, generator=g, dtype=torch.float64) * scale
        z_ref = torch.randn(2, k, generator=g, dtype=torch.float64) * scale * (trial % 2)
        if trial >= 8:                                  # near-ties
            z[:, :3] = z[:, :1] + torch.randn(2, 3, generator=g, dtype=torch.float64) * 10.0 ** -(trial % 4)
        c, dz = torch.tensor([0, k - 1]), z - z_ref
        got = top.softmax_gradient_average(z_ref, dz, c, None)
        spread = float((dz.max(dim=1).values - dz.min(dim=1).values).max())
        t, w = top.gauss_legendre(16, 8 * int(min(4096, max(4, math.ceil(spread / 2)))))
        fine = sum((w[i:i + 512, None, None] * top.softmax_gradient(z_ref + t[i:i + 512, None, None] * dz, c)).sum(0)
                   for i in range(0, len(t), 512))
        torch.testing.assert_close(got, fine, rtol=0, atol=1e-13)


def test_path_average_evaluates_the_softmax_in_a_few_batched_calls():
    """A spread of 3127 needs 1 564 panels × 16 nodes; they go through the softmax in a few batched calls."""
    z = torch.zeros(2, 5, dtype=torch.float64)
    z[0, 0], z[1, 2] = 3127.0, -40.0
    c = torch.tensor([0, 1])
    calls = []

    def fn(zz):
        calls.append(zz.shape)
        return top.softmax_gradient(zz, c)
    out = top.path_average(fn, torch.zeros(()), z, None)
    assert len(calls) <= 2 and sum(s[0] for s in calls) == 1564 * 16
    # the exact average of P'_c on the path: [P_c(Z) − P_c(0)] / ΔZ along a direction ... checked by its sum:
    # Σ_k P̄'_c,k ΔZ_k = P_c(Z) − P_c(Ẑ) (the fundamental theorem of calculus, Sec. 3.3)
    total = (out * z).sum(dim=1)
    expect = torch.softmax(z, 1).gather(1, c[:, None])[:, 0] - 0.2
    assert torch.allclose(total, expect, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# Intervals and verdicts
# ---------------------------------------------------------------------------------------------------------------------

def test_bootstrap_interval_of_known_variance_data():
    """n normal values of σ = 2: the 95 % interval is about mean ± 1.96 σ/√n."""
    v = np.random.default_rng(1).normal(3.0, 2.0, size=1600)
    iv = M.bootstrap_mean(v, seed=0)
    half = (iv.hi - iv.lo) / 2
    assert abs(half / (1.96 * 2.0 / 40) - 1) < 0.1
    assert iv.lo < iv.mean < iv.hi and iv.n == 1600 and abs(iv.mean - v.mean()) < 1e-12
    assert M.bootstrap_mean(v, seed=0) == iv                       # seeded: reproducible


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(7)
    hits = 0
    trials = 300
    for k in range(trials):
        iv = M.bootstrap_mean(rng.normal(0.5, 1.0, size=60), n_boot=800, seed=k)
        hits += iv.lo <= 0.5 <= iv.hi
    assert 0.89 <= hits / trials <= 0.99                            # binomial sd ≈ 1.3 %


def test_bootstrap_drops_nans_and_handles_empty():
    iv = M.bootstrap_mean([1.0, float("nan"), 3.0], seed=0)
    assert iv.n == 2 and iv.mean == 2.0
    e = M.bootstrap_mean([], seed=0)
    assert e.n == 0 and math.isnan(e.mean) and M.verdict(e) == "inconclusive"
    with pytest.raises(ValueError, match="level"):
        M.bootstrap_mean([1.0, 2.0], level=1.5)


def test_paired_difference_cancels_the_images_own_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 5, size=200)
    a = {f"im{k}": d + 0.1 + rng.normal(0, 0.05) for k, d in enumerate(difficulty)}
    b = {f"im{k}": d for k, d in enumerate(difficulty)}
    b["only-b"] = 100.0
    paired = M.paired_difference(a, b, seed=0)
    assert paired.n == 200 and paired.lo > 0.08 and paired.hi < 0.12 and paired.hi - paired.lo < 0.02
    unpaired_a, unpaired_b = M.bootstrap_mean(list(a.values()), seed=0), M.bootstrap_mean(list(b.values())[:200], seed=1)
    assert unpaired_a.lo < unpaired_b.hi                             # unpaired, the same data cannot tell them apart
    assert M.verdict(paired) == "agrees"


def test_three_way_verdicts():
    I = M.Interval
    assert M.verdict(I(0.2, 0.1, 0.3, 10)) == "agrees"
    assert M.verdict(I(-0.2, -0.3, -0.1, 10)) == "disagrees"
    assert M.verdict(I(0.1, -0.1, 0.3, 10)) == "inconclusive"
    assert M.verdict(I(-0.2, -0.3, -0.1, 10), direction=-1) == "agrees"
    assert M.verdict(I(0.2, 0.0, 0.3, 10)) == "inconclusive"           # touching 0 decides nothing
    assert M.verdict(I(0.2, 0.1, 0.3, 9)) == "inconclusive"            # too few images decide nothing
    assert M.verdict(I(0.2, 0.1, 0.3, 3), min_n=3) == "agrees"
    with pytest.raises(ValueError, match="direction"):
        M.verdict(I(0.2, 0.1, 0.3, 10), direction=0)
    assert M.combine_verdicts(["agrees", "agrees"]) == "agrees"
    assert M.combine_verdicts(["agrees", "inconclusive"]) == "inconclusive"
    assert M.combine_verdicts(["agrees", "disagrees", "inconclusive"]) == "disagrees"
    assert set(M.VERDICTS) == {"agrees", "disagrees", "inconclusive"}
