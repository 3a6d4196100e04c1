"""Integrated gradients along the path ``X̂ → X`` (Eq. 11): the integrand and its Riemann sum.

Used in Chapter 5.  :func:`riemann_figure` draws the integrand ``φ'(t)`` of IG on the straight path
with the ``n`` right-Riemann rectangles whose area is ``Σ_i R(X_i)``; :func:`ig_widget` is its live
``n`` slider.  The callback only calls the plain functions (``*_data`` computes the numbers,
``*_figure`` draws them), which ``tests/test_widgets_lid.py`` drives, because ipywidgets swallows
exceptions raised inside callbacks.  The running example is :func:`lidlib.toy.running_example`.
"""
from __future__ import annotations

from typing import Dict

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ..paths import riemann_points
from ..toy import running_example
from .gallery import control_image

__all__ = ["path_derivative", "ig_riemann", "riemann_data", "riemann_figure", "ig_widget"]


# --------------------------------------------------------------------------- chapter 5: IG, Eq. 11
def path_derivative(model: nn.Module, x: torch.Tensor, x_ref: torch.Tensor, c: int, t: torch.Tensor) -> torch.Tensor:
    """``φ'(t) = ∇f(X̂ + tΔX) · ΔX`` with ``f = Z_c``, at the points ``t`` (1-D): the integrand of Eq. 11
    summed over i."""
    dx = (x - x_ref).reshape(1, -1)
    pts = (x_ref.reshape(1, -1) + t[:, None].to(dx.dtype) * dx).requires_grad_(True)
    with torch.enable_grad():
        grad, = torch.autograd.grad(model(pts.view((-1,) + tuple(x.shape[1:])))[:, c].sum(), pts)
    return (grad * dx).sum(1).detach()


def ig_riemann(model: nn.Module, x: torch.Tensor, x_ref: torch.Tensor, c: int, n: int) -> torch.Tensor:
    """IG from scratch, Eq. 11 with a right Riemann sum: ``ΔX ⊙ (1/n) Σ_{k=1..n} ∇f(X̂ + (k/n)ΔX)``;
    shape of ``x[0]``."""
    dx = (x - x_ref).reshape(1, -1)
    t = riemann_points(n, dx.dtype)
    pts = (x_ref.reshape(1, -1) + t[:, None] * dx).requires_grad_(True)
    with torch.enable_grad():
        grad, = torch.autograd.grad(model(pts.view((-1,) + tuple(x.shape[1:])))[:, c].sum(), pts)
    return (dx[0] * grad.mean(0)).view(x.shape[1:]).detach()


def riemann_data(model: nn.Module, x: torch.Tensor, x_ref: torch.Tensor, c: int, n: int,
                 fine: int = 4096) -> Dict[str, object]:
    """The right Riemann sum of IG with ``n`` points, against the integrand ``φ'(t)`` on a fine grid.

    Returns ``t`` and ``phi`` (the fine grid), ``t_k`` and ``phi_k`` (the samples ``k/n``), ``riemann``
    (``Σ_i R(X_i) = (1/n) Σ_k φ'(k/n)``), ``delta`` (``ΔZ_c = f(X) − f(X̂)``) and ``rel_error``.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    t = torch.linspace(0.0, 1.0, fine + 1, dtype=torch.float64)
    t_k = riemann_points(n)
    phi, phi_k = path_derivative(model, x, x_ref, c, t), path_derivative(model, x, x_ref, c, t_k)
    with torch.no_grad():
        delta = float(model(x)[0, c] - model(x_ref)[0, c])
    riemann = float(phi_k.mean())
    return dict(t=t.numpy(), phi=phi.numpy(), t_k=t_k.numpy(), phi_k=phi_k.numpy(), n=n,
                riemann=riemann, delta=delta, rel_error=abs(riemann - delta) / abs(delta))


def riemann_figure(n: int, model=None, x=None, x_ref=None, c: int = 0) -> "plt.Figure":
    """Draw ``φ'(t)`` and the ``n`` right-Riemann rectangles whose area is ``Σ_i R(X_i)``."""
    if model is None:
        model, x, x_ref, c = running_example()
    d = riemann_data(model, x, x_ref, c, n)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    edges = np.concatenate([[0.0], d["t_k"]])
    ax.bar(edges[:-1], d["phi_k"], width=np.diff(edges), align="edge", color="tab:orange", alpha=0.35,
           edgecolor="tab:orange", label=f"right Riemann sum, n = {d['n']}")
    ax.plot(d["t"], d["phi"], color="k", lw=1.2, label=r"$\varphi'(t)=\nabla f(\hat X+t\Delta X)\cdot\Delta X$")
    ax.plot(d["t_k"], d["phi_k"], "o", color="tab:orange", ms=3)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("t (position on the path $\\hat X \\to X$)")
    ax.set_title(f"$\\Sigma_i R(X_i)$ = {d['riemann']:.5f},  $\\Delta Z_c$ = {d['delta']:.5f},  "
                 f"rel. error {d['rel_error']:.1e}", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def ig_widget(model=None, x=None, x_ref=None, c: int = 0, n_max: int = 200) -> widgets.VBox:
    """Live: an ``n`` slider redrawing :func:`riemann_figure` (needs a running kernel)."""
    if model is None:
        model, x, x_ref, c = running_example()
    slider = widgets.IntSlider(value=5, min=1, max=n_max, description="n", continuous_update=False)
    return control_image(slider, lambda n: riemann_figure(n, model, x, x_ref, c))


# --------------------------------------------------------------------------- chapter 6: LID-Taylor gap


# --------------------------------------------------------------------------- chapter 7: LRP-Taylor vs LID-Taylor


# --------------------------------------------------------------------------- chapter 8: ST top relevance


