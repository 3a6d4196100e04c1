"""Solutions of chapter 3 (DeepLIFT and deep Taylor decomposition)."""
import torch

import lidlib
from lidlib import rules, toy

LRP_ZP = lidlib.Method("LRP-ZP", "logit", rules.ZPLUS, increment=False)


def exercise_1():
    """DeepLIFT by hand for toy.two_two_one() at X = (1, 2), X̂ = (1, 0)."""
    model = toy.two_two_one()
    x, x_ref = torch.tensor([1.0, 2.0]).double(), torch.tensor([1.0, 0.0]).double()
    W1, B1 = torch.tensor([[1.0, -1.0], [2.0, 1.0]]).double(), torch.tensor([0.5, -1.0]).double()
    W3, B3 = torch.tensor([[1.0, -2.0]]).double(), torch.tensor([0.25]).double()
    y1, y1r = W1 @ x + B1, W1 @ x_ref + B1                 # (-0.5, 3), (1.5, 1)
    y2, y2r = y1.clamp(min=0), y1r.clamp(min=0)            # (0, 3), (1.5, 1)
    z, zr = W3 @ y2 + B3, W3 @ y2r + B3                    # -5.75, -0.25
    d1, d2, dz = y1 - y1r, y2 - y2r, z - zr                # (-2, 2), (-1.5, 2), -5.5
    multipliers = d2 / d1                                  # Rescale: (0.75, 1)
    assert torch.allclose(multipliers, torch.tensor([0.75, 1.0]).double())
    R3 = dz
    M2 = R3[:, None] * W3 * d2[None, :] / dz[:, None]      # Eq. (7): (-1.5, -4)
    R2 = M2.sum(0)
    R1 = R2 * multipliers * d1 / d2                        # Rescale message = R_j
    M0 = R1[:, None] * W1 * (x - x_ref)[None, :] / d1[:, None]
    R0 = M0.sum(0)                                         # (0, -5.5)
    assert torch.allclose(R2, torch.tensor([-1.5, -4.0]).double()) and torch.allclose(R1, R2)
    assert torch.allclose(R0, torch.tensor([0.0, -5.5]).double())
    for R in (R3, R2, R1, R0):
        assert abs(float(R.sum() - dz)) < 1e-12            # Eq. (6) at every layer
    for method, kw in (("DeepLIFT", {}), ("LID-IG", {"n_steps": None})):
        e = lidlib.explain(model, x[None], 0, method, baseline=x_ref[None], **kw)
        assert torch.allclose(e.relevance["input"][0], R0, atol=1e-12)
        assert torch.allclose(e.relevance["0"][0], R1, atol=1e-12)
        assert torch.allclose(e.relevance["1"][0], R2, atol=1e-12)
    return {"multipliers": multipliers, "R(X)": R0, "ΔZ": float(dz)}


def zplus_gradient(model, x, c):
    """The z⁺ rule as a modified gradient: R(Y^l) = g^l ⊙ Y^l for every layer (input first)."""
    ys = [x]
    with torch.no_grad():
        for m in model:
            ys.append(m(ys[-1]))
    g = torch.zeros_like(ys[-1])
    g[torch.arange(len(x)), c] = 1.0
    out = [g * ys[-1]]
    for k in reversed(range(len(model))):
        m = model[k]
        if isinstance(m, torch.nn.Linear):
            Wp = m.weight.detach().clamp(min=0)
            g = (g * ys[k + 1] / (ys[k] @ Wp.T)) @ Wp
        else:
            g = g * (ys[k] > 0).to(g.dtype)
        out.insert(0, g * ys[k])
    return out


def exercise_2():
    """z⁺ as a modified gradient vs lidlib's LRP-ZP; conservation and signs in the hidden layers."""
    model = toy.mlp((8, 32, 32, 5), seed=2)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        z = model(x)
    c = z.argmax(dim=1)
    keep = z.gather(1, c[:, None])[:, 0] > 0
    x, c, zc = x[keep], c[keep], z.gather(1, c[:, None])[keep, 0]
    e = lidlib.explain(model, x, c, LRP_ZP)
    mine = zplus_gradient(model, x, c)
    for r, name in zip(mine, e.relevance):
        # lidlib adds ε = 1e-9 to Σ W⁺Y; at the signed input a denominator can be tiny (instability)
        assert torch.allclose(e.relevance[name], r, rtol=1e-7 if name != "input" else 1e-5, atol=1e-12)
    for name in ("0", "1", "2", "3"):
        assert torch.allclose(e.relevance[name].sum(dim=1), zc, rtol=1e-8)   # (a) conserves Z_c
        assert (e.relevance[name] >= 0).all()                                # (b) non-negative
    return {"samples": int(keep.sum()), "max hidden gap": e.conservation().max_rel_gap(["0", "1", "2", "3"])}
