"""Solutions of the exercises of the chapter on LID-IG (Eq. 19–23)."""
import torch
from torch import nn

import lidlib
from lidlib import rules, toy


def exercise_1():
    """Exact and sampled path shares of a two-input max-pool window, by hand and by lidlib."""
    a = torch.tensor([1.0, 0.25], dtype=torch.float64)       # reference inputs of the window
    b = torch.tensor([-1.0, 1.0], dtype=torch.float64)       # their increments
    t_star = (a[1] - a[0]) / (b[0] - b[1])                   # 1 - t = 1/4 + t  ->  t* = 3/8
    by_hand = {"exact": torch.tensor([t_star, 1 - t_star]), 10: torch.tensor([0.3, 0.7])}
    assert abs(float(t_star) - 3 / 8) < 1e-15

    pool = nn.MaxPool2d((1, 2))
    x_ref, x = a.reshape(1, 1, 1, 2), (a + b).reshape(1, 1, 1, 2)
    rule = rules.Rule("IG", elementwise="D̄", maxpool="D̄")
    out = {}
    for n in ("exact", 10):
        steps = None if n == "exact" else n
        shares = rules.path_shares(a[None], b[None], steps)[0]            # the window's lines directly
        xx = x.clone().requires_grad_(True)                                 # the layer's backward: D̄ᵀ·1
        y = rules.apply_rule(rule, pool, xx, x_ref, pool(xx), pool(x_ref), steps)
        (grad,) = torch.autograd.grad(y.sum(), xx)
        assert torch.allclose(grad.flatten(), shares, atol=1e-12)
        out[n] = shares
        assert torch.allclose(out[n], by_hand[n].to(out[n].dtype), atol=1e-12), n
    d_max = float(pool(x) - pool(x_ref))                     # max(0, 5/4) - max(1, 1/4) = 1/4
    assert abs(float(out["exact"] @ b) - d_max) < 1e-12      # exact shares conserve
    assert abs(float(out[10] @ b) - d_max) > 0.01            # n = 10 does not
    return {"t*": float(t_star), "exact shares": out["exact"].tolist(), "n=10 shares": out[10].tolist(),
            "Δmax": d_max, "n=10 share·ΔY": float(out[10] @ b)}


def exercise_2():
    """LID-Taylor, LID-IG (n = 2) and exact LID-IG on the 2-2-1 network, by hand and by lidlib."""
    net = toy.two_two_one()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    x_ref = torch.zeros_like(x)
    W1 = torch.tensor([[1.0, -1.0], [2.0, 1.0]], dtype=torch.float64)
    w2 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    dx = (x - x_ref)[0]
    by_hand = {
        "LID-Taylor": (w2 * torch.tensor([0.0, 1.0], dtype=torch.float64)) @ W1 * dx,   # D at the input
        "LID-IG n=2": (w2 * torch.tensor([0.0, 1.0], dtype=torch.float64)) @ W1 * dx,   # samples t = 1/2, 1
        "LID-IG exact": (w2 * torch.tensor([0.5, 0.75], dtype=torch.float64)) @ W1 * dx,  # secant slopes
    }
    assert torch.allclose(by_hand["LID-IG exact"], torch.tensor([-2.5, -4.0], dtype=torch.float64))
    runs = {"LID-Taylor": ("LID-Taylor", 10), "LID-IG n=2": ("LID-IG", 2), "LID-IG exact": ("LID-IG", None)}
    result = {}
    for label, (method, n) in runs.items():
        e = lidlib.explain(net, x, 0, method, baseline=x_ref, n_steps=n)
        assert torch.allclose(e.input[0], by_hand[label], atol=1e-12), label
        result[label] = {"R(X)": e.input[0].tolist(), "sum": float(e.input.sum()), "ΔZ": float(e.total[0])}
    assert abs(result["LID-IG exact"]["sum"] - (-6.5)) < 1e-12 and abs(result["LID-Taylor"]["sum"] - (-8.0)) < 1e-12
    return result


def envelope_shares(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact share of t ∈ [0, 1] on which each line a_i + t b_i of a row is the maximum, by brute force."""
    shares = torch.zeros_like(a)
    for row in range(a.shape[0]):
        ts = {0.0, 1.0}
        K = a.shape[1]
        for i in range(K):
            for j in range(i + 1, K):
                if b[row, i] != b[row, j]:
                    t = float((a[row, j] - a[row, i]) / (b[row, i] - b[row, j]))
                    if 0 < t < 1:
                        ts.add(t)
        ts = sorted(ts)
        for t0, t1 in zip(ts[:-1], ts[1:]):
            winner = int(torch.argmax(a[row] + (t0 + t1) / 2 * b[row]))
            shares[row, winner] += t1 - t0
    return shares


def exercise_3():
    """Brute-force upper envelope against lidlib.rules.path_shares (exact mode)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 9, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(200, 9, generator=g, dtype=torch.float64)
    mine = envelope_shares(a, b)
    theirs = rules.path_shares(a, b, None)
    assert torch.allclose(mine, theirs, atol=1e-12)
    assert torch.allclose(mine.sum(dim=1), torch.ones(200, dtype=torch.float64), atol=1e-12)
    # conservation per window: Σ share_i b_i = max(a + b) - max(a)
    assert torch.allclose((mine * b).sum(1), (a + b).max(1).values - a.max(1).values, atol=1e-12)
    changed = int((a.argmax(1) != (a + b).argmax(1)).sum())
    return {"windows": 200, "winner changes on the path": changed,
            "max |mine - lidlib|": float((mine - theirs).abs().max())}
