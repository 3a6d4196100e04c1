"""Solutions of chapter 5 (integrated gradients, Eq. 11)."""
import torch

import lidlib
from lidlib import comparison, toy


def exercise_1():
    """2-2-1 network, X = (1, 1), X̂ = 0: exact IG by hand, and the right Riemann sum with n = 4."""
    model = toy.two_two_one()
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    x_ref = torch.zeros_like(x)
    # by hand: pre-activations along (t, t) are 0.5 and 3t - 1 -> the second ReLU is on for t > 1/3
    # grad f = (1, -1) + 1[t > 1/3] * (-2) * (2, 1)
    exact = torch.tensor([1.0, -1.0], dtype=torch.float64) + (2 / 3) * torch.tensor([-4.0, -2.0], dtype=torch.float64)
    riemann4 = (torch.tensor([1.0, -1.0], dtype=torch.float64)
                + (3 / 4) * torch.tensor([-4.0, -2.0], dtype=torch.float64))
    with torch.no_grad():
        delta = float(model(x)[0, 0] - model(x_ref)[0, 0])
    assert abs(delta - (-4.0)) < 1e-12 and abs(float(exact.sum()) - delta) < 1e-12   # completeness
    lib4 = comparison.integrated_gradients(model, x, 0, x_ref, n_steps=4)[0]
    assert torch.allclose(lib4, riemann4, atol=1e-12)
    # n = 3 samples t = 1/3 (ReLU'(0) = 0 in PyTorch), 2/3, 1: two of three on -> the exact value
    lib3 = lidlib.explain(model, x, 0, "IG", baseline=x_ref, n_steps=3).input[0]
    assert torch.allclose(lib3, exact, atol=1e-12)
    lib_big = comparison.integrated_gradients(model, x, 0, x_ref, n_steps=3000)[0]
    assert torch.allclose(lib_big, exact, atol=1e-3)
    return {"exact": exact.tolist(), "riemann n=4": riemann4.tolist(), "sum n=4": float(riemann4.sum()),
            "delta": delta}


def exercise_2(n: int = 50):
    """Layer conductance at module 1 of the running example, from scratch, against lidlib."""
    model, x, x_ref, c = toy.running_example()
    t = torch.arange(0, n + 1, dtype=x.dtype)[:, None] / n          # x_0 = X̂, ..., x_n = X
    points = x_ref + t * (x - x_ref)
    h = model[:2](points).detach().requires_grad_(True)            # h(x_k), k = 0..n
    grad, = torch.autograd.grad(model[2:](h)[:, c].sum(), h)       # ∂F/∂h at every h(x_k)
    cond = (grad[1:] * (h[1:] - h[:-1]).detach()).sum(0)            # right end of each step
    lib = comparison.integrated_gradients(model, x, c, x_ref, n_steps=n, layer="1")[0]
    assert torch.allclose(cond, lib, rtol=0, atol=1e-12)
    via_explain = lidlib.explain(model, x, c, "IG", baseline=x_ref, n_steps=n, layers=["1"]).layer("1")[0]
    assert torch.allclose(cond, via_explain, rtol=0, atol=1e-12)
    return cond


def exercise_3(n: int = 20000):
    """IG along a broken path: first X_1, then the rest.  Same total, different attribution."""
    model, x, x_ref, c = toy.running_example()
    corner = x_ref.clone()
    corner[0, 0] = x[0, 0]

    def leg(a, b):
        t = torch.arange(1, n + 1, dtype=x.dtype)[:, None] / n
        p = (a + t * (b - a)).requires_grad_(True)
        g, = torch.autograd.grad(model(p)[:, c].sum(), p)
        return (b - a)[0] * g.mean(0)

    broken = leg(x_ref, corner) + leg(corner, x)
    straight = comparison.integrated_gradients(model, x, c, x_ref, n_steps=n)[0]
    with torch.no_grad():
        delta = float(model(x)[0, c] - model(x_ref)[0, c])
    assert abs(float(broken.sum()) - delta) < 1e-3 * abs(delta)
    assert abs(float(straight.sum()) - delta) < 1e-3 * abs(delta)
    assert float((broken - straight).abs().max()) > 1e-2
    return {"straight": straight.tolist(), "broken": broken.tolist(), "delta": delta}
