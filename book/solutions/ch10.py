"""Solutions of the exercises of the chapter on SIG-LID-IG (Eq. 24, Algorithm 1)."""
import math

import torch

import lidlib
from lidlib import rules, top, toy


def _toy_case():
    """The chapter's toy CNN, input, non-zero reference and predicted class."""
    model = toy.cnn()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 12, 12, generator=gen, dtype=torch.float64)
    x_ref = 0.5 * torch.randn(1, 2, 12, 12, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        z, z_ref = model(x), model(x_ref)
    return model, x, x_ref, int(z.argmax()), z, z_ref


def exercise_1():
    """ST and SIG top relevance of a two-class softmax, by hand and by lidlib."""
    s = lambda u: 1 / (1 + math.exp(-u))
    z_ref = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    c = torch.tensor([0])
    by_hand = {"ΔP": s(3) - s(0), "ST": 3 * s(3) * (1 - s(3)), "SIG exact": s(3) - s(0),
               "SIG n=10": sum(3 * s(0.3 * k) * (1 - s(0.3 * k)) for k in range(1, 11)) / 10}
    lib = {"ST": top.top_relevance("ST", z, z_ref, c)[1].sum(),
           "SIG exact": top.top_relevance("SIG", z, z_ref, c, n_steps=None)[1].sum(),
           "SIG n=10": top.top_relevance("SIG", z, z_ref, c, n_steps=10)[1].sum()}
    for k, val in lib.items():
        assert abs(float(val) - by_hand[k]) < 1e-12, k
    dP = float(torch.softmax(z, 1)[0, 0] - torch.softmax(z_ref, 1)[0, 0])
    assert abs(dP - by_hand["ΔP"]) < 1e-15
    return by_hand


def exercise_2():
    """ST-LID-IG conserves its own top sum P'_c·ΔZ, not ΔP_c; SIG-LID-IG conserves ΔP_c."""
    model, x, x_ref, c, z, z_ref = _toy_case()
    dP = float(torch.softmax(z, 1)[0, c] - torch.softmax(z_ref, 1)[0, c])
    st_lid_ig = lidlib.Method("ST-LID-IG", "ST", rules.IG, increment=True)
    out = {"ΔP_c": dP}
    for m in (st_lid_ig, "SIG-LID-IG"):
        e = lidlib.explain(model, x, c, m, baseline=x_ref, n_steps=None)
        sums = [float(r.sum()) for r in e.relevance.values()]
        total = float(e.total[0])
        assert max(abs(s - total) for s in sums) < 1e-10        # every layer = its own top sum
        name = getattr(m, "name", m)
        out[name] = {"top sum": total, "worst |Σ R(Y^l) − ΔP_c|": max(abs(s - dP) for s in sums)}
    assert out["SIG-LID-IG"]["worst |Σ R(Y^l) − ΔP_c|"] < 1e-10
    assert out["ST-LID-IG"]["worst |Σ R(Y^l) − ΔP_c|"] > 1e-3
    return out


def exercise_3():
    """Without increments the IG rule is void at ReLU and max-pool: SIG-LRP-IG = SIG-LRP-0 = SIG-LRP-Taylor."""
    model, x, _, c, _, _ = _toy_case()
    cells = [lidlib.Method("SIG-LRP-IG", "SIG", rules.IG, increment=False),
             lidlib.METHODS["SIG-LRP-0"].with_eps(0),          # ε = 0: exact
             lidlib.Method("SIG-LRP-Taylor", "SIG", rules.TAYLOR, increment=False)]
    out = {}
    for n in (3, 10):
        ex = [lidlib.explain(model, x, c, m, n_steps=n) for m in cells]
        for other in ex[1:]:
            for k in ex[0].relevance:
                assert torch.allclose(ex[0].relevance[k], other.relevance[k], rtol=0, atol=1e-12), (n, k)
        out[f"n={n}"] = max(float((ex[0].relevance[k] - e.relevance[k]).abs().max())
                            for e in ex[1:] for k in ex[0].relevance)
    return {"largest difference between the three": out}
