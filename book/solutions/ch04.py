"""Solutions of chapter 4 (Softmax-gradient LRP and the saturation of the softmax)."""
import copy

import numpy as np
import torch

import lidlib
from lidlib import toy
from lidlib.top import softmax_gradient


def exercise_1():
    """Eq. (10) by central differences; two classes: P'_c = σ'(Z_c − Z_i)(1, −1)."""
    z = torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = 2
    exact = softmax_gradient(z[None], torch.tensor([c]))[0]
    errors = {}
    for h in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
        fd = torch.stack([(torch.softmax(z + h * e, 0)[c] - torch.softmax(z - h * e, 0)[c]) / (2 * h)
                          for e in torch.eye(6, dtype=torch.float64)])
        errors[h] = float((fd - exact).abs().max())
    best = min(errors, key=errors.get)
    assert errors[best] < 1e-9 and 1e-7 <= best <= 1e-3    # truncation ~h², rounding ~1e-16/h
    # two classes: P_c = σ(Z_c − Z_i), so ∂P_c/∂Z_c = σ'(·) = −∂P_c/∂Z_i
    for zc, zi in ((0.3, -0.2), (4.0, -1.0), (-2.0, 5.0)):
        z2 = torch.tensor([zc, zi], dtype=torch.float64)
        sig = torch.sigmoid(torch.tensor(zc - zi, dtype=torch.float64))
        g = softmax_gradient(z2[None], torch.tensor([0]))[0]
        assert torch.allclose(g, sig * (1 - sig) * torch.tensor([1.0, -1.0], dtype=torch.float64), atol=1e-15)
    return {"errors": errors, "best h": best}


def exercise_2():
    """SG-LRP-0 blows up like 1/δ when a non-target logit is δ; ST-LRP-0 does not."""
    model = toy.mlp((4, 8, 8, 5), seed=0)
    x = torch.tensor([[1.0, -0.25, -0.75, -1.6]], dtype=torch.float64)
    with torch.no_grad():
        z = model(x)[0]
    c = int(z.argmax())
    j = next(int(i) for i in torch.argsort(z) if int(i) != c)     # the lowest non-target logit
    sg, st = [], []
    deltas = [10.0 ** -k for k in range(1, 7)]
    for d in deltas:
        m = copy.deepcopy(model)
        with torch.no_grad():
            m[-1].bias[j] += d - z[j]                # logit j is now d
            assert abs(float(m(x)[0, j]) - d) < 1e-12
        sg.append(float(lidlib.explain(m, x, c, "SG-LRP-0").relevance["input"].abs().sum()))
        st.append(float(lidlib.explain(m, x, c, "ST-LRP-0").relevance["input"].abs().sum()))
    slope = np.polyfit(np.log(deltas), np.log(sg), 1)[0]
    assert abs(slope + 1) < 0.05                     # SG-LRP-0 ∝ 1/δ
    assert max(st) < 2 * min(st)                     # ST-LRP-0 stays put
    return {"class": j, "SG-LRP-0 |R(X)|": dict(zip(deltas, sg)), "ST-LRP-0 |R(X)|": dict(zip(deltas, st)),
            "log-log slope (SG)": float(slope)}
