"""Conservation layer by layer: bars of ``Σ R(Y^l)`` per layer against what the method decomposes.

* :func:`lid_gap_figure` / :func:`lid_gap_widget` (Chapter 6) — LID-Taylor with the reference moved
  towards ``X``: what each layer loses, and the Taylor remainders (Eq. 12).
* :func:`absorbed_figure` / :func:`absorbed_widget` (Chapter 7) — LRP-Taylor (Eq. 18) against
  LID-Taylor (Eq. 15) as the biases grow: the relevance the reference outputs absorb.
* :func:`gap_figure` / :func:`lid_ig_gap_widget` (Chapter 9) — the worst conservation gap of
  LID-IG and SIG-LID-IG at every layer, for ``n`` samples or the exact limit (Eq. 21).

Each widget's callback only calls a plain function (``*_data`` / :func:`layer_gaps` for the
numbers, ``*_figure`` for the picture), because exceptions inside widget callbacks are swallowed by
the front end; ``tests/test_widgets_lid.py`` and ``tests/test_widgets_ig.py`` drive those.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from .. import rules
from ..api import explain
from ..methods import Method
from ..toy import forward_with_gradients, running_example
from .gallery import control_image, controls_image

__all__ = ["N_CHOICES", "GAP_FLOOR", "layer_gaps", "gap_figure", "lid_ig_gap_view", "lid_ig_gap_widget",
           "LRP_TAYLOR", "scaled_biases", "lid_gap_data", "lid_gap_figure", "lid_gap_widget", "absorbed_data",
           "absorbed_figure", "absorbed_widget"]


#: values of the ``n`` slider (path samples, Eq. 21)
N_CHOICES: Tuple[int, ...] = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
#: gaps below this are drawn at this height on a log axis (an exact zero has no logarithm)
GAP_FLOOR = 1e-17


# --------------------------------------------------------------------------- Chapter 9: LID-IG, every layer's gap
def layer_gaps(model: nn.Module, x: torch.Tensor, target: int, method: str, baseline: torch.Tensor,
               n_steps: Optional[int]) -> List[Tuple[str, float]]:
    """``[(layer, relative gap)]``: ``|Σ R(Y^l) − Σ R(Y^L)| / Σ|R(Y^L)|`` at every layer, input first.

    The worst over the batch ``x``; ``n_steps=None`` is the exact limit.
    """
    e = explain(model, x, int(target), method, baseline=baseline, n_steps=n_steps)
    return [(row.layer, float(row.rel_gap.max())) for row in e.conservation()]


def gap_figure(gaps: Dict[str, Sequence[Tuple[str, float]]], title: str = "", floor: float = GAP_FLOOR):
    """Grouped bars, one group per layer, one bar per method, log scale (gaps below ``floor`` at ``floor``)."""
    names = list(gaps)
    if not names:
        raise ValueError("gap_figure needs at least one method's gaps")
    layers = [layer for layer, _ in gaps[names[0]]]
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(names)
    pos = np.arange(len(layers))
    for k, name in enumerate(names):
        vals = np.maximum([g for _, g in gaps[name]], floor)
        ax.bar(pos + (k - (len(names) - 1) / 2) * width, vals, width, label=name)
    ax.set_yscale("log")
    ax.set_ylim(floor / 3, 3.0)
    ax.set_xticks(pos)
    ax.set_xticklabels(layers)
    ax.set_xlabel("layer (output of module; 'input' = $Y^0$)")
    ax.set_ylabel("relative conservation gap")
    ax.axhline(1e-10, color="k", lw=0.6, ls=":")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def lid_ig_gap_view(model, x, target, baseline, n: int, exact: bool,
                    methods: Sequence[str] = ("LID-IG", "SIG-LID-IG")):
    """The figure of :func:`lid_ig_gap_widget` for one setting: per-layer gaps at ``n`` samples (or exact)."""
    n_steps = None if exact else int(n)
    gaps = {m: layer_gaps(model, x, target, m, baseline, n_steps) for m in methods}
    label = "exact (n → ∞)" if exact else f"n = {n}"
    worst = max(g for rows in gaps.values() for _, g in rows)
    return gap_figure(gaps, title=f"{label}: worst gap {worst:.1e}")


def lid_ig_gap_widget(model, x, target, baseline, methods: Sequence[str] = ("LID-IG", "SIG-LID-IG")) -> widgets.VBox:
    """A live ``n`` slider and an "exact" switch over the per-layer conservation gap (needs a kernel).

    The box has attributes ``n``, ``exact`` (the controls), ``image`` (the figure, a PNG Image
    widget), ``update`` (the callback) and ``setting`` (the last drawn ``(n, exact)``).
    """
    n = widgets.SelectionSlider(options=list(N_CHOICES), value=10, description="n (path samples)",
                                style={"description_width": "initial"}, layout=widgets.Layout(width="28em"))
    exact = widgets.Checkbox(value=False, description="exact (n → ∞)")
    return controls_image({"n": n, "exact": exact},
                          lambda n_, exact_: lid_ig_gap_view(model, x, target, baseline, n_, exact_, methods),
                          before=lambda n_, exact_: setattr(n, "disabled", exact_))


#: LRP-Taylor (Sec. 2.4, Eq. 18): the local Jacobian at every layer, relevance of activations Y^l
LRP_TAYLOR = Method("LRP-Taylor", top="logit", rule=rules.TAYLOR, increment=False)


def scaled_biases(model: nn.Module, scale: float) -> nn.Module:
    """A copy of ``model`` with every bias multiplied by ``scale``."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in m.modules():
            if getattr(mod, "bias", None) is not None:
                mod.bias.mul_(scale)
    return m.eval()


def lid_gap_data(model: nn.Sequential, x: torch.Tensor, x_ref0: torch.Tensor, c: int,
                 alpha: float) -> Dict[str, object]:
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
    return control_image(slider, lambda a: lid_gap_figure(a, model, x, x_ref0, c))


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
    return control_image(slider, lambda s: absorbed_figure(s, model, x, c, x_ref))
