"""Solutions of the exercises of chapter 13 (beyond VGG: residuals, gates, normalisation)."""
import torch
from torch import nn

import lidlib
from lidlib import rules


def exercise_1():
    """A constant factor γ: b̂ = b = γ, so b̄ = b̂ + w·0 = γ for every n (and exactly)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    a_ref = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    gamma = torch.rand(4, 1, 1, generator=g, dtype=torch.float64)
    w = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    grads = {}
    for n in (1, 3, 10, None):
        aa = a.clone().requires_grad_(True)
        y = rules.product_substitute(aa, gamma, a_ref, gamma, n)
        (grads[n],) = torch.autograd.grad(y, aa, w)
        assert torch.allclose(grads[n], w * gamma, rtol=1e-15)
    return {n: float(v.sum()) for n, v in grads.items()}


class HalfMish(nn.Module):
    """σ(x) = x·tanh(softplus(x))/2 + x/2."""

    def forward(self, x):
        return x * torch.tanh(nn.functional.softplus(x)) / 2 + x / 2


def exercise_2():
    """Unregistered: refused by name; registered: exact LID-IG conserves ΔZ_c."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), HalfMish(), nn.Linear(6, 3)).double().eval()
    x, base = torch.randn(2, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    try:
        lidlib.explain(model, x, 1, "LID-IG", baseline=base, n_steps=None)
        raise AssertionError("an unregistered activation must be refused")
    except TypeError as err:
        assert "HalfMish" in str(err)
    fam = rules.register_elementwise(HalfMish)
    try:
        e = lidlib.explain(model, x, 1, "LID-IG", baseline=base, n_steps=None)
        gap = e.conservation().max_rel_gap(["input", "0", "1"])
        assert gap < 1e-12
    finally:
        rules.FAMILIES.remove(fam)
    return gap
