"""The contrast axis: the top relevance ``R(Y^L)`` and the backward signal ``g^L`` it starts.

Every method of the paper's panorama starts its backward pass from a top relevance on the logits
(Table 2).  In gradient form (Eq. 15) the relevance of the logits is ``g^L ⊙ ΔZ`` (``g^L ⊙ Z``
without increment), so each function below returns the pair ``(g, R)`` with ``R = g ⊙ ΔZ``:

===========  =====================================  ==========================
name         top relevance R(Y^L)                   backward signal g^L
===========  =====================================  ==========================
``logit``    ``e_c ⊙ ΔZ``  (LRP-0, LID-Taylor)      ``e_c``
``SG``       ``P'_c``      (Eq. 10, SG-LRP)         ``P'_c / ΔZ``
``ST``       ``P'_c ⊙ ΔZ`` (Sec. 3.1)               ``P'_c``
``SIG``      ``P̄'_c ⊙ ΔZ`` (Sec. 3.3)               ``P̄'_c``
===========  =====================================  ==========================

``P'_c = ∂P_c/∂Z`` is the c-th row of the softmax Jacobian, Eq. (10); ``P̄'_c`` is its average on the
straight path ``Ẑ → Z`` (right Riemann sum with ``n`` points, or Gauss-Legendre quadrature for the
exact limit ``n = None``).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .paths import gauss_legendre, right_riemann

TOPS = ("logit", "SG", "ST", "SIG")


def softmax_gradient(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``P'_c = ∂P_c/∂Z`` at logits ``z`` (B, K) for classes ``c`` (B,), Eq. (10).

    Entry ``i`` is ``(1 − P_c) P_i`` for ``i = c`` and ``−P_c P_i`` otherwise, i.e. ``P_c (e_c − P)``.
    ``z`` may have leading axes (..., B, K) (several points of a path at once).
    """
    p = torch.softmax(z, dim=-1)
    idx = c.expand(z.shape[:-1])[..., None]
    pc = p.gather(-1, idx)
    e_c = torch.zeros_like(p).scatter_(-1, idx, 1.0)
    return pc * (e_c - p)


def path_average(fn: Callable[[torch.Tensor], torch.Tensor], z_ref: torch.Tensor, dz: torch.Tensor,
                 n_steps: Optional[int]) -> torch.Tensor:
    """Average of ``fn`` on the straight path ``z_ref → z_ref + dz`` (Eq. 21, applied to the softmax).

    ``n_steps = k`` samples the path at ``z_ref + (k/n) dz``, k = 1..n (a right Riemann sum, as in
    the paper); ``n_steps = None`` integrates exactly up to floating point with a composite
    16-point Gauss-Legendre rule, one panel per 2 units of the spread ``L = max ΔZ − min ΔZ``: the
    softmax along the path is analytic but can be steep, and has no pole within ``π/L`` of the real
    ``t`` axis (there ``Σ_j exp(Ẑ_j + tΔZ_j)`` has a positive real part), so on every panel the rule's
    error falls like ``ρ^−32`` with ``ρ = π + √(π² + 1) ≈ 6.4``, far below rounding.  ``fn`` must
    accept a leading axis of path points, (T, B, K): the points are evaluated in chunks of that
    shape, not one by one.
    """
    t, w, chunk = _nodes(dz, n_steps)
    acc = torch.zeros_like(dz)
    for k in range(0, t.numel(), chunk):
        tt, ww = t[k:k + chunk, None, None], w[k:k + chunk, None, None]
        acc = acc + (ww * fn(z_ref + tt * dz)).sum(dim=0)
    return acc


def _nodes(dz: torch.Tensor, n_steps: Optional[int]):
    """``(t, w, chunk)``: the nodes and weights of :func:`path_average` on the path ``Ẑ → Ẑ + ΔZ``
    (``dz``: (B, K)), and how many nodes to evaluate at once: T·B·K ≤ 1e6, 4 MB of float32 (bounded
    memory; measured faster than 16 MB chunks, which cost fresh pages on every allocation)."""
    if n_steps is not None:
        t, w = right_riemann(n_steps)
    else:
        spread = float((dz.max(dim=1).values - dz.min(dim=1).values).max()) if dz.numel() else 0.0
        panels = int(min(4096, max(4, math.ceil(spread / 2))))
        t, w = gauss_legendre(16, panels)
    chunk = max(1, 1_000_000 // max(1, dz.numel()))
    return t.to(dtype=dz.dtype, device=dz.device), w.to(dtype=dz.dtype, device=dz.device), chunk


def softmax_gradient_average(z_ref: torch.Tensor, dz: torch.Tensor, c: torch.Tensor,
                             n_steps: Optional[int]) -> torch.Tensor:
    """``P̄'_c``, the SIG top's path average of :func:`softmax_gradient` (Sec. 3.3) on the nodes of
    :func:`path_average`: since ``P'_c = P_c (e_c − P)``, it is ``e_c Σ_t w_t P_c(t) − Σ_t w_t P_c(t) P(t)``,
    one softmax per node and a weighted sum over the nodes (no further (T, B, K) tensors)."""
    t, w, chunk = _nodes(dz, n_steps)
    idx = c[:, None]
    acc, acc_c = torch.zeros_like(dz), dz.new_zeros(dz.shape[0])
    for k in range(0, t.numel(), chunk):
        p = torch.softmax(torch.addcmul(z_ref, t[k:k + chunk, None, None], dz), dim=-1)     # (T, B, K)
        wpc = p.gather(-1, idx.expand(p.shape[0], -1, 1))[..., 0].mul_(w[k:k + chunk, None])  # w_t P_c(t)
        acc_c += wpc.sum(0)
        acc -= torch.einsum("tb,tbk->bk", wpc, p)
    return acc.scatter_add_(1, idx, acc_c[:, None])


def top_relevance(kind: str, z: torch.Tensor, z_ref: torch.Tensor, c: torch.Tensor,
                  n_steps: Optional[int] = 10, eps: float = 1e-9) -> Tuple[torch.Tensor, torch.Tensor]:
    """The top relevance ``R(Y^L)`` and backward signal ``g^L`` of a method (Table 2).

    ``z`` are the logits, ``z_ref`` the reference logits (zeros for the LRP family, where
    ``ΔZ = Z``), ``c`` the target classes.  Returns ``(g, R)`` with ``R = g ⊙ (z − z_ref)``.

    SG (Eq. 10) puts ``R = P'_c`` on the logits exactly, so ``g = P'_c / ΔZ``; the stabilised
    division ``1 / (Z + ε·sign Z)`` of LRP-ε is applied by the layer below (the last linear layer's
    ε rule), not here, so it is not applied twice.  ``eps`` (the method's ``Rule.eps``) is the
    cut-off: no message from a logit with ``|ΔZ| ≤ ε`` (first author's convention; ``eps = 0``: only
    where ``ΔZ = 0``).  On a network with logits near 0 this choice decides SG's result (book, Ch. 12).
    """
    dz = z - z_ref
    if kind == "logit":
        g = torch.zeros_like(z).scatter_(1, c[:, None], 1.0)
        return g, g * dz
    if kind == "ST":
        g = softmax_gradient(z, c)
        return g, g * dz
    if kind == "SIG":
        g = softmax_gradient_average(z_ref, dz, c, n_steps)
        return g, g * dz
    if kind == "SG":
        r = softmax_gradient(z, c)
        keep = dz.abs() > eps
        g = torch.where(keep, r / torch.where(keep, dz, torch.ones_like(dz)), torch.zeros_like(r))
        return g, r
    raise ValueError(f"unknown top relevance {kind!r}; choose one of {TOPS}")


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + ε·sign(z)`` with ``sign(0) = +1``: the LRP-ε stabiliser of a denominator."""
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
