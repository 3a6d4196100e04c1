"""Solutions of chapter 2 (LRP-0 and LRP-ε)."""
import numpy as np
import torch

import lidlib
from lidlib import rules, toy


def exercise_1():
    """LRP-0 by hand for toy.two_two_one() at X = (1, 2)."""
    model = toy.two_two_one()
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    W1, B1 = torch.tensor([[1.0, -1.0], [2.0, 1.0]]).double(), torch.tensor([0.5, -1.0]).double()
    W3, B3 = torch.tensor([[1.0, -2.0]]).double(), torch.tensor([0.25]).double()
    y1 = W1 @ x + B1                       # (-0.5, 3)
    y2 = y1.clamp(min=0)                   # (0, 3)
    z = W3 @ y2 + B3                       # -5.75
    R3 = z.clone()                         # R(Z) = Z (one class)
    R2 = (R3[:, None] * W3 * y2[None, :] / z[:, None]).sum(0)       # Eq. (5): (0, -6)
    R1 = R2.clone()                                                  # ReLU: pass
    R0 = (R1[:, None] * W1 * x[None, :] / y1[:, None]).sum(0)       # (-4, -4)
    bias_top = float(R3.sum() - R2.sum())                            # B^3 keeps 0.25
    bias_first = float(R1.sum() - R0.sum())                          # B^1 keeps 2
    assert torch.allclose(R2, torch.tensor([0.0, -6.0]).double())
    assert torch.allclose(R0, torch.tensor([-4.0, -4.0]).double())
    assert abs(bias_top - 0.25) < 1e-12 and abs(bias_first - 2.0) < 1e-12
    assert abs(float(R0.sum()) + bias_first + bias_top - float(z)) < 1e-12
    e = lidlib.explain(model, x[None], 0, "LRP-0")
    assert torch.allclose(e.relevance["input"][0], R0, atol=1e-12)
    xg = x[None].clone().requires_grad_(True)
    model(xg)[0, 0].backward()
    assert torch.allclose((xg.grad * xg).detach()[0], R0, atol=1e-12)   # gradient × input
    return {"R(X)": R0, "absorbed by B^3": bias_top, "absorbed by B^1": bias_first}


def lrp_eps_gradient(model, x, c, eps):
    """LRP-ε as a modified gradient: R(Y^l) = g^l ⊙ Y^l for every layer (input first)."""
    ys = [x]
    with torch.no_grad():
        for m in model:
            ys.append(m(ys[-1]))
    g = torch.zeros_like(ys[-1])
    g[:, c] = 1.0
    out = [g * ys[-1]]
    for k in reversed(range(len(model))):
        m = model[k]
        if isinstance(m, torch.nn.Linear):
            y = ys[k + 1]
            g = (g * y / (y + eps * torch.where(y >= 0, torch.ones_like(y), -torch.ones_like(y)))) @ m.weight.detach()
        else:                                             # ReLU: the local gradient
            g = g * (ys[k] > 0).to(g.dtype)
        out.insert(0, g * ys[k])
    return out


def exercise_2():
    """LRP-ε as a modified gradient, checked against lidlib, and its limit ε → 0."""
    model = toy.mlp((4, 8, 8, 3), seed=1)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = 0
    method = lidlib.Method("LRP-ε", "logit", rules.epsilon(0.1), False)
    e = lidlib.explain(model, x, c, method)
    mine = lrp_eps_gradient(model, x, c, 0.1)
    for r, name in zip(mine, e.relevance):
        assert torch.allclose(e.relevance[name], r, rtol=1e-10, atol=1e-12)
    lrp0 = lidlib.explain(model, x, c, "LRP-0").relevance["input"]
    eps = np.array([1e-2, 1e-3, 1e-4, 1e-5])
    err = np.array([float((lrp_eps_gradient(model, x, c, float(ep))[0] - lrp0).abs().max()) for ep in eps])
    slope = np.polyfit(np.log(eps), np.log(err), 1)[0]
    assert abs(slope - 1) < 0.05                       # error ∝ ε
    return {"errors": dict(zip(eps.tolist(), err.tolist())), "log-log slope": float(slope)}
