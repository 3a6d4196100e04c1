"""The path grids: where every path average of lidlib samples the straight path ``X̂ → X``.

A path average ``∫₀¹ f(X̂ + tΔX) dt`` is taken in one of two ways, and both live here:

* :func:`right_riemann` — the paper's right Riemann sum, ``t_k = k/n``, k = 1..n, weights ``1/n``
  (IG, Eq. 11; the path-averaged Jacobian ``D̄``, Eq. 21; the SIG top, Sec. 3.3);
* :func:`gauss_legendre` — a composite Gauss–Legendre rule on [0, 1], for the exact limit
  ``n → ∞`` where no closed form exists (the SIG top's softmax);
* :func:`gauss_kronrod` — an n-node Gauss rule and its (2n+1)-node Kronrod extension on the same
  nodes, for an exact limit whose error is measured by one set of evaluations (normalisation and
  self-attention layers).

The points are computed in float64 and then cast, so ``k/n`` is the correctly rounded quotient in
every dtype, wherever it is used.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np
import torch


def riemann_points(n_steps: int, dtype: torch.dtype = torch.float64, device=None, first: int = 1) -> torch.Tensor:
    """``t_k = k/n`` for k = ``first``..n (default 1..n, the right Riemann sum; ``first=0`` adds the
    start ``X̂`` of the path, which layer conductance needs)."""
    t = torch.arange(first, n_steps + 1, dtype=torch.float64).div_(n_steps)
    return t.to(dtype=dtype, device=device)


def right_riemann(n_steps: int, dtype: torch.dtype = torch.float64, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Points ``k/n`` (k = 1..n) and weights ``1/n`` of the right Riemann sum (Eq. 11, 21)."""
    t = riemann_points(n_steps, dtype, device)
    return t, torch.full_like(t, 1.0 / n_steps)


def gauss_legendre(n_points: int, n_panels: int = 1, dtype: torch.dtype = torch.float64,
                   device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of a composite Gauss–Legendre rule on [0, 1]: ``n_panels`` equal panels of
    ``n_points`` nodes each (exact for polynomials of degree ``2·n_points − 1`` on every panel)."""
    nodes, weights = _gauss_legendre(n_points, n_panels)
    return torch.tensor(nodes, dtype=dtype, device=device), torch.tensor(weights, dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _gauss_legendre(n_points: int, n_panels: int) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`gauss_legendre` in float64 NumPy, computed once per rule (the nodes are the eigenvalues
    of a matrix: about 0.15 ms each time, against a normalisation layer's few ms)."""
    x, w = np.polynomial.legendre.leggauss(n_points)
    edges = np.linspace(0.0, 1.0, n_panels + 1)
    half = np.diff(edges) / 2
    mid = (edges[:-1] + edges[1:]) / 2
    nodes = (mid[:, None] + half[:, None] * x[None, :]).ravel()
    weights = (half[:, None] * w[None, :]).ravel()
    nodes.flags.writeable = weights.flags.writeable = False     # (shared by every call)
    return nodes, weights


def gauss_kronrod(n: int, dtype: torch.dtype = torch.float64,
                  device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(t, w_K, w_G)`` on [0, 1]: the 2n + 1 nodes of the Gauss–Kronrod rule of order n, its
    weights ``w_K`` (exact for polynomials of degree 3n + 1) and the embedded n-node Gauss–Legendre
    weights ``w_G`` on the same nodes (zero at the n + 1 Kronrod nodes).  ``|Σ w_K f − Σ w_G f|``
    estimates the Gauss rule's error from the same 2n + 1 evaluations (the Kronrod sum's own error
    is far smaller)."""
    t, wk, wg = _gauss_kronrod(n)
    return tuple(torch.tensor(v, dtype=dtype, device=device) for v in (t, wk, wg))


@functools.lru_cache(maxsize=16)
def _gauss_kronrod(n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`gauss_kronrod` in float64 NumPy, computed once per order.

    The n + 1 Kronrod nodes are the zeros of the Stieltjes polynomial ``E = P_{n+1} + Σ_j c_j P_j``,
    orthogonal to every polynomial of degree ≤ n under the weight ``P_n`` on [-1, 1]:
    ``Σ_j c_j ∫P_n P_j P_k = −∫P_n P_{n+1} P_k`` (k = 0..n; only j of the parity of n + 1 and odd
    k enter, a square system).  The weights of all 2n + 1 nodes then integrate
    ``P_0 .. P_2n`` exactly."""
    leg = np.polynomial.legendre
    x, w = leg.leggauss(3 * n + 3)                              # exact for the triple products
    p = leg.legvander(x, n + 1).T                               # p[j] = P_j at the nodes
    triple = np.einsum("km,jm,m->kj", p[: n + 1], p, w * p[n])  # ∫ P_n P_j P_k
    js = list(range((n + 1) % 2, n + 1, 2))                     # j of the parity of n + 1
    ks = list(range(1, n + 1, 2))                               # (n + j + k even: the others vanish)
    c = np.zeros(n + 2)
    c[n + 1] = 1.0
    if js:
        c[js] = np.linalg.solve(triple[np.ix_(ks, js)], -triple[ks, n + 1])
    kronrod = np.sort(leg.legroots(c).real)
    for _ in range(2):                                          # (Newton: the roots to full precision)
        kronrod -= leg.legval(kronrod, c) / leg.legval(kronrod, leg.legder(c))
    gauss, gauss_w = leg.leggauss(n)
    nodes = np.concatenate([gauss, kronrod])
    order = np.argsort(nodes)
    moments = np.zeros(2 * n + 1)
    moments[0] = 2.0
    wk = np.linalg.solve(leg.legvander(nodes, 2 * n).T, moments)
    wg = np.concatenate([gauss_w, np.zeros(n + 1)])
    t, wk, wg = (nodes[order] + 1) / 2, wk[order] / 2, wg[order] / 2
    for v in (t, wk, wg):
        v.flags.writeable = False                               # (shared by every call)
    return t, wk, wg
