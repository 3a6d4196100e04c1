"""Live widgets of the chapters on LID-IG (Eq. 19–23) and SIG-LID-IG (Eq. 24).

Every widget here is a function returning an ipywidgets box; what its callback computes lives in a
separate plain function (``*_rows`` for the numbers, ``*_figure`` for the picture), because
exceptions inside widget callbacks are swallowed by the front end and a build that succeeds says
nothing about them.  ``tests/test_widgets_ig.py`` drives the plain functions and the wiring.

* :func:`lid_ig_gap_widget` — an ``n`` slider and an "exact" switch: the worst conservation gap of
  LID-IG and SIG-LID-IG at every layer (Eq. 21: the sampled ``D̄`` conserves only as ``n → ∞``).
* :func:`sig_contrast_widget` — a logit-scale slider (softmax saturation) and ``n``: the decision
  increment ``ΔP_c`` against the ST top (first order, Sec. 3.1) and the SIG top (path average,
  Sec. 3.3), with the softmax along the path ``Ẑ → Z``.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from . import top as _top
from .api import explain
from .gallery import to_png
from .paths import riemann_points

__all__ = ["N_CHOICES", "SCALE_CHOICES", "layer_gaps", "gap_figure", "lid_ig_gap_view", "lid_ig_gap_widget",
           "scaled_logits", "sig_contrast_rows", "sig_contrast_figure", "sig_contrast_widget", "GAP_FLOOR"]

#: values of the ``n`` slider (path samples, Eq. 21)
N_CHOICES: Tuple[int, ...] = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
#: values of the logit-scale slider of :func:`sig_contrast_widget`
SCALE_CHOICES: Tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: gaps below this are drawn at this height on a log axis (an exact zero has no logarithm)
GAP_FLOOR = 1e-17


def _target(target) -> int:
    return int(target)


# --------------------------------------------------------------------------- chapter 9: LID-IG
def layer_gaps(model: nn.Module, x: torch.Tensor, target: int, method: str, baseline: torch.Tensor,
               n_steps: Optional[int]) -> List[Tuple[str, float]]:
    """``[(layer, relative gap)]``: ``|Σ R(Y^l) − Σ R(Y^L)| / Σ|R(Y^L)|`` at every layer, input first.

    The worst over the batch ``x``; ``n_steps=None`` is the exact limit.
    """
    e = explain(model, x, _target(target), method, baseline=baseline, n_steps=n_steps)
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


def _show(image: widgets.Image, fig) -> None:
    """Render ``fig`` into the Image widget (and close it): works with or without a kernel, and the
    image drawn at build time is saved in the page's widget state."""
    image.value = to_png(fig)


def lid_ig_gap_widget(model, x, target, baseline, methods: Sequence[str] = ("LID-IG", "SIG-LID-IG")) -> widgets.VBox:
    """A live ``n`` slider and an "exact" switch over the per-layer conservation gap (needs a kernel).

    The box has attributes ``n``, ``exact`` (the controls), ``image`` (the figure, a PNG Image
    widget), ``update`` (the callback) and ``setting`` (the last drawn ``(n, exact)``).
    """
    n = widgets.SelectionSlider(options=list(N_CHOICES), value=10, description="n (path samples)",
                                style={"description_width": "initial"}, layout=widgets.Layout(width="28em"))
    exact = widgets.Checkbox(value=False, description="exact (n → ∞)")
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
    box = widgets.VBox([widgets.HBox([n, exact]), image])

    def update(_=None):
        n.disabled = exact.value
        _show(image, lid_ig_gap_view(model, x, target, baseline, n.value, exact.value, methods))
        box.setting = (n.value, exact.value)

    n.observe(update, "value")
    exact.observe(update, "value")
    box.n, box.exact, box.image, box.update = n, exact, image, update
    update()
    return box


# --------------------------------------------------------------------------- chapter 10: SIG top
def scaled_logits(model: nn.Sequential, scale: float) -> nn.Sequential:
    """A copy of ``model`` whose last Linear layer (the logits) is multiplied by ``scale``."""
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise TypeError("scaled_logits needs an nn.Sequential whose last layer is nn.Linear (the logits)")
    m = copy.deepcopy(model)
    with torch.no_grad():
        m[-1].weight.mul_(scale)
        m[-1].bias.mul_(scale)
    return m.eval()


def sig_contrast_rows(model, x, target, baseline, scale: float, n: int) -> Dict[str, float]:
    """The numbers of :func:`sig_contrast_widget` for one logit scale and ``n`` (first sample of ``x``).

    Keys: ``dP`` (``ΔP_c``), ``ST`` (``P'_c(Z)·ΔZ``), ``SIG_n`` (``P̄'_c·ΔZ`` with ``n`` samples),
    ``SIG_exact`` (the exact path average), ``P``/``P_ref`` (``P_c`` at ``Z`` and ``Ẑ``), and
    ``gap_n`` / ``gap_exact``: the worst layer of SIG-LID-IG, ``max_l |Σ R(Y^l) − ΔP_c| / |ΔP_c|``.
    """
    m = scaled_logits(model, scale)
    c = torch.tensor([_target(target)])
    with torch.no_grad():
        z, z_ref = m(x[:1]), m(baseline[:1] if baseline.dim() == x.dim() else baseline[None])
    p, p_ref = torch.softmax(z, 1)[0, c], torch.softmax(z_ref, 1)[0, c]
    dz = z - z_ref
    st = float((_top.softmax_gradient(z, c) * dz).sum())
    sig = {}
    for key, steps in (("n", int(n)), ("exact", None)):
        pbar = _top.path_average(lambda zz: _top.softmax_gradient(zz, c), z_ref, dz, steps)
        sig[key] = float((pbar * dz).sum())
    dP = float(p - p_ref)
    gaps = {}
    for key, steps in (("n", int(n)), ("exact", None)):
        e = explain(m, x[:1], c, "SIG-LID-IG", baseline=baseline, n_steps=steps)
        sums = [float(r.flatten(1).sum()) for r in e.relevance.values()]
        gaps[key] = max(abs(s - dP) for s in sums) / max(abs(dP), 1e-300)
    return {"dP": dP, "ST": st, "SIG_n": sig["n"], "SIG_exact": sig["exact"], "P": float(p),
            "P_ref": float(p_ref), "gap_n": gaps["n"], "gap_exact": gaps["exact"], "scale": float(scale), "n": int(n)}


def sig_contrast_figure(model, x, target, baseline, scale: float, n: int, rows: Optional[Dict[str, float]] = None):
    """Left: ``P_c`` on the path ``Ẑ + tΔZ`` with the ST tangent (at ``t = 1``) and the SIG chord.
    Right: ``ΔP_c`` against the sums of the ST and SIG tops."""
    rows = rows or sig_contrast_rows(model, x, target, baseline, scale, n)
    m = scaled_logits(model, scale)
    c = _target(target)
    with torch.no_grad():
        z, z_ref = m(x[:1]), m(baseline[:1] if baseline.dim() == x.dim() else baseline[None])
    t = torch.linspace(0, 1, 201, dtype=z.dtype)
    tn = t.numpy()
    path = torch.softmax(z_ref + t[:, None] * (z - z_ref), 1)[:, c].numpy()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(8.5, 3), gridspec_kw={"width_ratios": [1.3, 1]})
    a0.plot(tn, path, color="k", lw=2, label=r"$P_c(\hat Z + t\,\Delta Z)$")
    a0.plot([0, 1], [rows["P"] - rows["ST"], rows["P"]], color="tab:orange", ls="--", label="ST: tangent at $Z$")
    a0.plot([0, 1], [rows["P_ref"], rows["P"]], color="tab:green", ls=":", lw=2, label="SIG: chord")
    ts = riemann_points(n, z.dtype)
    samples = torch.softmax(z_ref + ts[:, None] * (z - z_ref), 1)[:, c]
    a0.plot(ts.numpy(), samples.numpy(), "o", ms=3, color="tab:blue", label=f"n = {n} samples")
    a0.set_xlabel("t")
    a0.set_ylabel("$P_c$")
    a0.legend(fontsize=7)
    a0.grid(alpha=0.3)
    labels = [r"$\Delta P_c$", "ST", f"SIG n={n}", "SIG exact"]
    vals = [rows["dP"], rows["ST"], rows["SIG_n"], rows["SIG_exact"]]
    a1.bar(labels, vals, color=["k", "tab:orange", "tab:blue", "tab:green"])
    a1.axhline(rows["dP"], color="k", lw=0.6)
    a1.set_ylabel("sum of the top relevance")
    a1.set_title(f"SIG-LID-IG worst layer gap: n={n}: {rows['gap_n']:.1e}, exact: {rows['gap_exact']:.0e}",
                 fontsize=8)
    a1.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"logit scale {scale:g}", fontsize=10)
    fig.tight_layout()
    return fig


def sig_contrast_widget(model, x, target, baseline) -> widgets.VBox:
    """A live logit-scale slider (softmax saturation) and ``n`` slider (needs a kernel).

    The box has attributes ``scale``, ``n`` (the controls), ``image`` (the figure), ``update`` (the
    callback) and ``setting`` (the last drawn ``(scale, n)``).
    """
    scale = widgets.SelectionSlider(options=list(SCALE_CHOICES), value=1.0, description="logit scale",
                                    style={"description_width": "initial"}, layout=widgets.Layout(width="24em"))
    n = widgets.SelectionSlider(options=list(N_CHOICES), value=10, description="n",
                                style={"description_width": "initial"}, layout=widgets.Layout(width="24em"))
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
    box = widgets.VBox([widgets.HBox([scale, n]), image])

    def update(_=None):
        _show(image, sig_contrast_figure(model, x, target, baseline, scale.value, n.value))
        box.setting = (scale.value, n.value)

    scale.observe(update, "value")
    n.observe(update, "value")
    box.scale, box.n, box.image, box.update = scale, n, image, update
    update()
    return box
