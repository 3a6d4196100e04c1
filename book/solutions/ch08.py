"""Solutions of chapter 8 (contrast lifting: ST-LID-Taylor, Sec. 3.1)."""
import copy

import numpy as np
import torch

import lidlib
from lidlib import top, toy


def exercise_1():
    """Z = (2, 1, 0), Ẑ = (1, 1.5, 0), c = 0: P, P'_c, SG and ST top relevances by hand."""
    z = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    z_ref = torch.tensor([[1.0, 1.5, 0.0]], dtype=torch.float64)
    c = torch.tensor([0])
    ex = np.exp([2.0, 1.0, 0.0])
    P = ex / ex.sum()
    Pg = P[0] * (np.array([1.0, 0.0, 0.0]) - P)                 # Eq. (10)
    dZ = np.array([1.0, -0.5, 0.0])
    st = Pg * dZ
    ex_ref = np.exp([1.0, 1.5, 0.0])
    dP = P[0] - ex_ref[0] / ex_ref.sum()
    _, R_sg = top.top_relevance("SG", z, z_ref, c)
    _, R_st = top.top_relevance("ST", z, z_ref, c)
    assert np.allclose(R_sg[0].numpy(), Pg, atol=1e-15) and np.allclose(R_st[0].numpy(), st, atol=1e-15)
    assert R_sg[0, 1] < 0 and R_st[0, 1] > 0            # class 1 fell: SG says −, ST says +
    assert abs(st.sum() - 0.3041) < 1e-4 and abs(dP - 0.3337) < 1e-4
    return {"P": P.round(4).tolist(), "P'_c": Pg.round(4).tolist(), "ST": st.round(4).tolist(),
            "sum ST": round(float(st.sum()), 4), "dP_c": round(float(dP), 4)}


def exercise_2(a: float = 3.0):
    """Shift every logit (and reference logit) by a: which totals change?"""
    model, x, x_ref, c = toy.running_example()
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted[-1].bias.add_(a)
    out = {}
    for method in ("LRP-0", "ST-LRP-0", "LID-Taylor", "ST-LID-Taylor"):
        before = float(lidlib.explain(model, x, c, method, baseline=x_ref).total[0])
        after = float(lidlib.explain(shifted, x, c, method, baseline=x_ref).total[0])
        out[method] = after - before
    assert abs(out["LRP-0"] - a) < 1e-12
    for method in ("ST-LRP-0", "LID-Taylor", "ST-LID-Taylor"):
        assert abs(out[method]) < 1e-12, method
    return {f"change of the {k} total": v for k, v in out.items()}


def exercise_3():
    """ST-LID-Taylor from scratch on toy.cnn(): the two-step algorithm started from P'_c."""
    cnn = toy.cnn()
    x = torch.rand(3, 2, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x_ref = torch.zeros_like(x[:1])
    targets = torch.tensor([0, 2, 4])
    with torch.no_grad():
        Y, Yr = [x], [x_ref]
        for layer in cnn:
            Y.append(layer(Y[-1]))
            Yr.append(layer(Yr[-1]))
    g = top.softmax_gradient(Y[-1], targets)                        # start from P'_c, not e_c
    R = [None] * len(Y)
    R[-1] = g * (Y[-1] - Yr[-1])                                    # P'_c ⊙ ΔZ
    for l in range(len(cnn), 0, -1):
        inp = Y[l - 1].clone().requires_grad_(True)
        g, = torch.autograd.grad(cnn[l - 1](inp), inp, grad_outputs=g)
        R[l - 1] = g * (Y[l - 1] - Yr[l - 1])
    e = lidlib.explain(cnn, x, targets, "ST-LID-Taylor", baseline=x_ref)
    for r, name in zip(R, e.relevance):
        assert torch.allclose(r, e.relevance[name], rtol=0, atol=1e-12), name
    return {"layers checked": len(R), "totals": e.total.tolist()}
