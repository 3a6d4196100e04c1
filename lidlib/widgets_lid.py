"""Live widgets of chapters 5–8 (integrated gradients, LID-Taylor, its essence, contrast lifting).

Each widget is a control above a precomputed-on-demand image: the control's callback only calls a
plain function of this module (``*_data`` computes the numbers, ``*_figure`` draws them) and puts
the PNG into an :class:`ipywidgets.Image`.  ipywidgets swallows exceptions raised inside
callbacks, so the plain functions are what ``tests/test_widgets_lid.py`` drives; the widgets
themselves only need a running kernel to react (in the static book their image stays as built, and
the chapters add a :func:`lidlib.gallery.gallery` that switches precomputed images with no kernel).

The running example of the four chapters is :func:`running_example`: a seeded float64 ReLU MLP
with non-zero biases, an input ``X`` and a non-zero reference ``X̂``.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Optional, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from . import rules, toy
from .api import explain
from .gallery import to_png
from .methods import Method
from .paths import riemann_points
from .top import softmax_gradient, top_relevance

__all__ = [
    "running_example", "forward_with_gradients", "path_derivative", "ig_riemann", "riemann_data", "riemann_figure", "ig_widget",
    "lid_gap_data", "lid_gap_figure", "lid_gap_widget", "LRP_TAYLOR", "absorbed_data",
    "absorbed_figure", "absorbed_widget", "contrast_logits", "st_top_data", "st_top_figure",
    "st_widget", "live", "Table",
]

#: LRP-Taylor (Sec. 2.4, Eq. 18): the local Jacobian at every layer, relevance of activations Y^l
LRP_TAYLOR = Method("LRP-Taylor", top="logit", rule=rules.TAYLOR, increment=False)


def running_example(seed: int = 1):
    """``(model, x, x_ref, c)``: ``toy.mlp((4, 8, 8, 3))``, ``X ~ N(0, I)``, ``X̂ ~ N(0, 0.25 I)``, class 0."""
    model = toy.mlp((4, 8, 8, 3))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, dtype=torch.float64, generator=g)
    x_ref = 0.5 * torch.randn(1, 4, dtype=torch.float64, generator=g)
    return model, x, x_ref, 0


def live(control: widgets.Widget, render: Callable[[object], "plt.Figure"], width: str = "640px") -> widgets.VBox:
    """A control above an image: every change of ``control.value`` redraws ``render(value)``.

    The returned box has ``.image`` (the :class:`ipywidgets.Image`) and ``.update()`` (the callback,
    callable directly).  The first image is drawn now, so the built page shows it.
    """
    image = widgets.Image(format="png", layout=widgets.Layout(width=f"min(100%, {width})"))

    def update(change=None):
        image.value = to_png(render(control.value))

    control.observe(update, names="value")
    update()
    box = widgets.VBox([control, image])
    box.image, box.update = image, update
    return box


def forward_with_gradients(model: nn.Sequential, x: torch.Tensor, c: Optional[int]):
    """``(ys, grads)``: ``ys[0] = x`` and ``ys[l+1]`` the output of module ``l`` (detached), and
    ``grads[l] = ∂Z_c/∂ys[l]`` by autograd (``grads = None`` when ``c`` is None)."""
    h = x.detach().clone().requires_grad_(c is not None)
    ys = [h]
    with torch.enable_grad() if c is not None else torch.no_grad():
        for layer in model:
            h = layer(h)
            ys.append(h)
        grads = list(torch.autograd.grad(h[0, c], ys)) if c is not None else None
    return [y.detach() for y in ys], grads


class Table:
    """A small HTML table for the book (``_repr_html_``; plain text otherwise): ``Table(header, rows)``."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[object]]):
        self.header = [str(h) for h in header]
        self.rows = [[str(v) for v in r] for r in rows]

    def _repr_html_(self) -> str:
        import html
        th = "".join(f"<th style='padding:2px 10px'>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td style='padding:2px 10px'>{html.escape(v)}</td>" for v in r) + "</tr>"
                       for r in self.rows)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        return "\n".join(" | ".join(r) for r in [self.header] + self.rows)


# --------------------------------------------------------------------------- chapter 5: IG, Eq. 11
def path_derivative(model: nn.Module, x: torch.Tensor, x_ref: torch.Tensor, c: int, t: torch.Tensor) -> torch.Tensor:
    """``φ'(t) = ∇f(X̂ + tΔX) · ΔX`` with ``f = Z_c``, at the points ``t`` (1-D): the integrand of Eq. 11 summed over i."""
    dx = (x - x_ref).reshape(1, -1)
    pts = (x_ref.reshape(1, -1) + t[:, None].to(dx.dtype) * dx).requires_grad_(True)
    with torch.enable_grad():
        grad, = torch.autograd.grad(model(pts.view((-1,) + tuple(x.shape[1:])))[:, c].sum(), pts)
    return (grad * dx).sum(1).detach()


def ig_riemann(model: nn.Module, x: torch.Tensor, x_ref: torch.Tensor, c: int, n: int) -> torch.Tensor:
    """IG from scratch, Eq. 11 with a right Riemann sum: ``ΔX ⊙ (1/n) Σ_{k=1..n} ∇f(X̂ + (k/n)ΔX)``; shape of ``x[0]``."""
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
    return live(slider, lambda n: riemann_figure(n, model, x, x_ref, c))


# --------------------------------------------------------------------------- chapter 6: LID-Taylor gap
def lid_gap_data(model: nn.Sequential, x: torch.Tensor, x_ref0: torch.Tensor, c: int, alpha: float) -> Dict[str, object]:
    """LID-Taylor with the reference moved to ``X̂ = X + α(X̂₀ − X)``, i.e. the increment
    ``ΔX = α(X − X̂₀)``: per-layer sums and the Taylor remainders (Eq. 12).  ``α = 0`` is ``X̂ = X``,
    ``α = 1`` is ``X̂₀``.

    Returns ``layers`` (``"input"``, ``"0"``, …), ``sums`` (``Σ R(Y^l)``), ``total`` (``ΔZ_c``),
    ``loss`` (per module ``l``: ``Σ R(Y^l) − Σ R(Y^{l-1})``, what the step loses), ``remainder``
    (per module: ``Σ_j g_j ε_j`` with ``ε = ΔY^l − D^l ΔY^{l-1}`` and ``g = ∂Z_c/∂Y^l``) and
    ``switched`` (per module: how many of its outputs change linear piece between ``X̂`` and ``X``).
    """
    x_ref = x + alpha * (x_ref0 - x)
    e = explain(model, x, c, "LID-Taylor", baseline=x_ref)
    layers = list(e.relevance)
    sums = [float(e.relevance[k].sum()) for k in layers]
    ys, grads = forward_with_gradients(model, x, c)
    refs, _ = forward_with_gradients(model, x_ref, None)
    loss, remainder, switched = [], [], []
    for i, layer in enumerate(model):
        dy_in, dy_out = ys[i] - refs[i], ys[i + 1] - refs[i + 1]
        if isinstance(layer, rules.ELEMENTWISE):
            d = rules.local_slope(layer, ys[i])
            eps = dy_out - d * dy_in
            switched.append(int((rules.local_slope(layer, refs[i]) != d).sum()))
        else:
            eps = torch.zeros_like(dy_out)
            switched.append(0)
        loss.append(sums[i + 1] - sums[i])
        remainder.append(float((grads[i + 1] * eps).sum()))
    return dict(layers=layers, sums=sums, total=float(e.total[0]), loss=loss, remainder=remainder,
                switched=switched, alpha=float(alpha))


def lid_gap_figure(alpha: float, model=None, x=None, x_ref0=None, c: int = 0) -> "plt.Figure":
    """Bars of ``Σ R(Y^l)`` for LID-Taylor with ``X̂ = X + α(X̂₀ − X)``, against ``ΔZ_c`` (dashed)."""
    if model is None:
        model, x, x_ref0, c = running_example()
    d = lid_gap_data(model, x, x_ref0, c, alpha)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    names = [("X" if k == "input" else f"{k}: {type(model[int(k)]).__name__}") for k in d["layers"]]
    colors = ["tab:blue" if abs(s - d["total"]) <= 1e-9 * max(1.0, abs(d["total"])) else "tab:red" for s in d["sums"]]
    ax.bar(range(len(names)), d["sums"], color=colors)
    ax.axhline(d["total"], color="k", ls="--", lw=1, label=r"$\Delta Z_c$")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel(r"$\Sigma_j R(Y^l_j)$")
    n_sw = sum(d["switched"])
    ax.set_title(f"LID-Taylor, $\\hat X = X + {alpha:.2f}(\\hat X_0 - X)$: {n_sw} ReLU(s) switch; "
                 f"input gap {d['sums'][0] - d['total']:+.3f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lid_gap_widget(model=None, x=None, x_ref0=None, c: int = 0) -> widgets.VBox:
    """Live: a slider for α in ``X̂ = X + α(X̂₀ − X)`` redrawing :func:`lid_gap_figure`."""
    if model is None:
        model, x, x_ref0, c = running_example()
    slider = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="α", continuous_update=False)
    return live(slider, lambda a: lid_gap_figure(a, model, x, x_ref0, c))


# --------------------------------------------------------------------------- chapter 7: LRP-Taylor vs LID-Taylor
def scaled_biases(model: nn.Module, scale: float) -> nn.Module:
    """A copy of ``model`` with every bias multiplied by ``scale``."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in m.modules():
            if getattr(mod, "bias", None) is not None:
                mod.bias.mul_(scale)
    return m.eval()


def absorbed_data(model: nn.Module, x: torch.Tensor, c: int, bias_scale: float = 1.0,
                  x_ref: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """LRP-Taylor (Eq. 18) against LID-Taylor (Eq. 15) on ``model`` with its biases scaled.

    ``x_ref``: the reference (None: zeros).  Returns ``layers``, ``lrp`` and ``lid`` (``Σ R(Y^l)`` of
    each), ``absorbed`` (``Σ R_LRP − Σ R_LID``) and ``g_ref`` (``Σ G^{l+1} ⊙ Ŷ^l``, computed apart:
    the relevance the reference outputs take), and ``max_ref`` (``max_l max |Ŷ^l|``).
    """
    m = scaled_biases(model, bias_scale)
    x_ref = torch.zeros_like(x) if x_ref is None else x_ref
    lrp = explain(m, x, c, LRP_TAYLOR)
    lid = explain(m, x, c, "LID-Taylor", baseline=x_ref)
    layers = list(lid.relevance)
    _, grads = forward_with_gradients(m, x, c)
    refs, _ = forward_with_gradients(m, x_ref, None)
    g_ref = [float((g * r).sum()) for g, r in zip(grads, refs)]
    s_lrp = [float(lrp.relevance[k].sum()) for k in layers]
    s_lid = [float(lid.relevance[k].sum()) for k in layers]
    return dict(layers=layers, lrp=s_lrp, lid=s_lid, absorbed=[a - b for a, b in zip(s_lrp, s_lid)],
                g_ref=g_ref, max_ref=max(float(r.abs().max()) for r in refs),
                bias_scale=float(bias_scale))


def absorbed_figure(bias_scale: float, model=None, x=None, c: int = 0, x_ref=None) -> "plt.Figure":
    """Grouped bars of ``Σ R(Y^l)``: LRP-Taylor (Eq. 18) and LID-Taylor (Eq. 15)."""
    if model is None:
        model, x, _, c = running_example()
    d = absorbed_data(model, x, c, bias_scale, x_ref)
    k = np.arange(len(d["layers"]))
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.bar(k - 0.2, d["lrp"], 0.4, label=r"LRP-Taylor: $\Sigma\, G\odot Y^l$", color="tab:purple")
    ax.bar(k + 0.2, d["lid"], 0.4, label=r"LID-Taylor: $\Sigma\, G\odot\Delta Y^l$", color="tab:green")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(k, ["X" if n == "input" else n for n in d["layers"]])
    ax.set_xlabel("layer l (module index)")
    ax.set_title(f"biases × {bias_scale:.2f}: max |$\\hat Y^l$| = {d['max_ref']:.3f}, "
                 f"absorbed at the top = {d['absorbed'][-1]:+.3f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def absorbed_widget(model=None, x=None, c: int = 0, x_ref=None) -> widgets.VBox:
    """Live: a bias-scale slider redrawing :func:`absorbed_figure` (reference ``X̂ = 0`` by default)."""
    if model is None:
        model, x, _, c = running_example()
    slider = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="bias ×",
                                 continuous_update=False)
    return live(slider, lambda s: absorbed_figure(s, model, x, c, x_ref))


# --------------------------------------------------------------------------- chapter 8: ST top relevance
def contrast_logits():
    """``(z_ref, direction, c)``: reference logits of 4 classes and an increment direction in
    which the target ``c = 0`` and class 1 rise and class 2 falls (class 3 stays)."""
    z_ref = torch.tensor([[0.5, 0.3, 0.8, 0.0]], dtype=torch.float64)
    direction = torch.tensor([[1.0, 0.5, -0.6, 0.0]], dtype=torch.float64)
    return z_ref, direction, 0


def st_top_data(z_ref: torch.Tensor, direction: torch.Tensor, c: int, s: float) -> Dict[str, object]:
    """Top relevances at ``Z = Ẑ + s·direction``: SG (Eq. 10) and ST (Sec. 3.1), and ``ΔP_c``.

    Returns ``z``, ``dz``, ``p`` and ``p_ref`` (softmax), ``sg`` (``P'_c``), ``st`` (``P'_c ⊙ ΔZ``),
    ``delta_p`` (``P_c(Z) − P_c(Ẑ)``), ``st_sum`` (``Σ R_ST``) and ``gap`` (``ΔP_c − Σ R_ST``).
    """
    z = z_ref + s * direction
    cc = torch.tensor([c])
    _, sg = top_relevance("SG", z, z_ref, cc)
    _, st = top_relevance("ST", z, z_ref, cc)
    p, p_ref = torch.softmax(z, 1)[0], torch.softmax(z_ref, 1)[0]
    delta_p = float(p[c] - p_ref[c])
    return dict(z=z[0].numpy(), dz=(z - z_ref)[0].numpy(), p=p.numpy(), p_ref=p_ref.numpy(),
                sg=softmax_gradient(z, cc)[0].numpy(), st=st[0].numpy(), delta_p=delta_p,
                st_sum=float(st.sum()), gap=delta_p - float(st.sum()), s=float(s))


def st_top_figure(s: float, z_ref=None, direction=None, c: int = 0) -> "plt.Figure":
    """Bars of the SG and ST top relevances per class, and ``ΔP_c`` against ``Σ R_ST``."""
    if z_ref is None:
        z_ref, direction, c = contrast_logits()
    d = st_top_data(z_ref, direction, c, s)
    K = len(d["z"])
    k = np.arange(K)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(7.2, 3.0), gridspec_kw=dict(width_ratios=(3, 1.3)))
    ax.bar(k - 0.2, d["sg"], 0.4, label=r"SG: $P'_c$", color="tab:gray")
    ax.bar(k + 0.2, d["st"], 0.4, label=r"ST: $P'_c\odot\Delta Z$", color="tab:red")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(k, [f"{i}{' (c)' if i == c else ''}\nΔZ={d['dz'][i]:+.2f}" for i in k], fontsize=8)
    ax.set_title(f"s = {s:.2f}:  $P_c$ = {d['p'][c]:.3f}", fontsize=9)
    ax.legend(fontsize=8)
    bx.bar([0, 1], [d["delta_p"], d["st_sum"]], color=["k", "tab:red"])
    bx.set_xticks([0, 1], [r"$\Delta P_c$", r"$\Sigma R_{ST}$"])
    bx.axhline(0, color="grey", lw=0.5)
    bx.set_title(f"gap {d['gap']:+.1e}", fontsize=9)
    fig.tight_layout()
    return fig


def st_widget(z_ref=None, direction=None, c: int = 0) -> widgets.VBox:
    """Live: a slider for the size ``s`` of the logit increment, redrawing :func:`st_top_figure`."""
    if z_ref is None:
        z_ref, direction, c = contrast_logits()
    slider = widgets.FloatSlider(value=1.0, min=0.0, max=8.0, step=0.1, description="s", continuous_update=False)
    return live(slider, lambda s: st_top_figure(s, z_ref, direction, c))
