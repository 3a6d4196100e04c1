"""The path grids: where every path average of lidlib samples the straight path ``X̂ → X``.

A path average ``∫₀¹ f(X̂ + tΔX) dt`` is taken in one of two ways, and both live here:

* :func:`right_riemann` — the paper's right Riemann sum, ``t_k = k/n``, k = 1..n, weights ``1/n``
  (IG, Eq. 11; the path-averaged Jacobian ``D̄``, Eq. 21; the SIG top, Sec. 3.3);
* :func:`gauss_legendre` — a composite Gauss–Legendre rule on [0, 1], for the exact limit
  ``n → ∞`` where no closed form exists (the SIG top's softmax, normalisation layers).

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
