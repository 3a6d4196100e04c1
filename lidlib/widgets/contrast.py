"""The top of the network: logits, the softmax and the top relevances (the contrast axis, Table 2).

* :func:`softmax_scale_figure` / :func:`softmax_scale_widget` (Chapter 4) — the saturation of the
  softmax gradient ``P'_c`` (Sec. 1.5, Fig. 1) when the logits grow.
* :func:`logit_shift_figure` / :func:`logit_shift_widget` (Chapter 4) — adding the same constant to
  every logit leaves the softmax unchanged but not LRP-0 / LRP-ZP (Sec. 1.4).
* :func:`st_top_figure` / :func:`st_widget` (Chapter 8) — the SG (Eq. 10) and ST (Sec. 3.1) top
  relevances per class against ``ΔP_c``.
* :func:`sig_contrast_figure` / :func:`sig_contrast_widget` (Chapter 10) — ``ΔP_c`` against the ST
  top (first order) and the SIG top (path average, Sec. 3.3), with the softmax along ``Ẑ → Z``.

Each widget's callback only calls a plain function (``*_data`` / ``*_rows`` for the numbers,
``*_figure`` for the picture), which the tests drive.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence, Tuple

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .. import rules
from .. import top as _top
from ..api import explain
from ..methods import Method, get_method
from ..paths import riemann_points
from ..top import softmax_gradient, top_relevance
from .conservation import N_CHOICES
from .gallery import control_image, control_output, controls_image
from .messages import LRP0, _np, _vector

__all__ = ["softmax_scale_data", "softmax_scale_figure", "softmax_scale_widget",
           "shift_logits", "logit_shift_data", "logit_shift_figure", "logit_shift_widget",
           "contrast_logits", "st_top_data", "st_top_figure", "st_widget",
           "SCALE_CHOICES", "scaled_logits", "sig_contrast_rows", "sig_contrast_figure", "sig_contrast_widget"]

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
    return control_image(slider, lambda s: st_top_figure(s, z_ref, direction, c))


def shift_logits(model: nn.Sequential, delta: float) -> nn.Sequential:
    """A copy of ``model`` whose last Linear layer's bias is shifted by ``delta``: every logit
    moves by ``delta``, the softmax ``P`` does not change."""
    if not isinstance(model[-1], nn.Linear):
        raise TypeError("shift_logits needs a Sequential model ending in a Linear layer (the logits)")
    m = copy.deepcopy(model)
    with torch.no_grad():
        m[-1].bias.add_(delta)
    return m


def logit_shift_data(model: nn.Sequential, x: torch.Tensor, target: int, delta: float,
                     baseline: torch.Tensor, methods: Sequence = ("LRP-0", "LRP-ZP", "DeepLIFT")) -> dict:
    """Input relevance of ``methods`` after adding ``delta`` to every logit, with ``P_c``, ``Z_c`` and
    the totals.  ``"LRP-ZP"`` is the z⁺ rule with the logit top, ``Method("LRP-ZP", "logit", ZPLUS, False)``,
    and ``"LRP-0"`` the exact rule (ε = 0, :data:`LRP0`), as in the toy chapters' derivations."""
    x2 = _vector(x)[None]
    m = shift_logits(model, delta)
    with torch.no_grad():
        z = m(x2)[0]
    out = {"P_c": float(torch.softmax(z, 0)[target]), "Z_c": float(z[target]), "relevance": {}, "total": {}}
    for meth in methods:
        exact = {"LRP-ZP": Method("LRP-ZP", "logit", rules.ZPLUS, False), "LRP-0": LRP0}
        meth = exact[meth] if isinstance(meth, str) and meth in exact else get_method(meth)
        e = explain(m, x2, target, meth, baseline=_vector(baseline)[None], n_steps=None)
        out["relevance"][meth.name] = _np(e.relevance["input"][0])
        out["total"][meth.name] = float(e.total[0])
    return out


def logit_shift_figure(model: nn.Sequential, x: torch.Tensor, target: int, delta: float,
                       baseline: torch.Tensor, methods: Sequence = ("LRP-0", "LRP-ZP", "DeepLIFT"),
                       ylim: Optional[float] = None) -> Figure:
    """Bars of the input relevance of each method when every logit is shifted by ``delta``."""
    d = logit_shift_data(model, x, target, delta, baseline, methods)
    names = list(d["relevance"])
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(bottom=0.12, top=0.9)
    D = len(next(iter(d["relevance"].values())))
    w = 0.8 / len(names)
    for k, n in enumerate(names):
        ax.bar(np.arange(D) + (k - (len(names) - 1) / 2) * w, d["relevance"][n], w,
               label=f"{n} (Σ = {d['total'][n]:.3g})")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(D))
    ax.set_xticklabels([f"$X_{i}$" for i in range(D)])
    ax.set_ylabel("$R(X_i)$")
    if ylim:
        ax.set_ylim(-ylim, ylim)
    ax.set_title(f"shift δ = {delta:+.2f}:  $Z_c$ = {d['Z_c']:.3f},  $P_c$ = {d['P_c']:.4f}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3, axis="y")
    return fig


def logit_shift_widget(model: nn.Sequential, x: torch.Tensor, target: int, baseline: torch.Tensor,
                       span: float = 3.0, ylim: Optional[float] = None) -> widgets.VBox:
    """Live: a slider adding δ ∈ [−span, span] to every logit; needs a running kernel."""
    s = widgets.FloatSlider(value=0.0, min=-span, max=span, step=0.1, description="δ:")
    return control_output([s], lambda: logit_shift_figure(model, x, target, s.value, baseline, ylim=ylim))


def softmax_scale_data(z: torch.Tensor, target: int, scale: float) -> dict:
    """``P`` and ``P'_c`` (Eq. 10) of the scaled logits ``scale · z`` (1-D), as NumPy arrays, and
    ``|P'_c|_1 = 2 P_c (1 − P_c)``."""
    z = _vector(torch.as_tensor(z, dtype=torch.float64))
    zs = scale * z
    p = torch.softmax(zs, 0)
    g = softmax_gradient(zs[None], torch.tensor([target]))[0]
    return {"logits": _np(zs), "P": _np(p), "grad": _np(g), "grad_l1": float(g.abs().sum())}


def softmax_scale_figure(z: torch.Tensor, target: int, scale: float) -> Figure:
    """Bars of ``P`` and of ``P'_c`` for the logits ``scale · z``: P'_c vanishes as P_c → 1."""
    d = softmax_scale_data(z, target, scale)
    K = len(d["P"])
    fig = Figure(figsize=(8, 3.0))
    a1, a2 = fig.subplots(1, 2)
    fig.subplots_adjust(bottom=0.17, top=0.88, wspace=0.3)
    colors = ["C3" if i == target else "C0" for i in range(K)]
    a1.bar(range(K), d["P"], color=colors)
    a1.set_ylim(0, 1)
    a1.set_title(f"softmax $P$ of {scale:g}·Z  ($P_c$ = {d['P'][target]:.4f})", fontsize=9)
    a2.bar(range(K), d["grad"], color=colors)
    a2.axhline(0, color="black", lw=0.6)
    a2.set_ylim(-0.3, 0.3)
    a2.set_title(f"$P'_c = \\partial P_c/\\partial Z$  ($|P'_c|_1$ = {d['grad_l1']:.2e})", fontsize=9)
    for a in (a1, a2):
        a.set_xticks(range(K))
        a.set_xticklabels([f"{i}" + (" (c)" if i == target else "") for i in range(K)], fontsize=8)
        a.set_xlabel("class i")
        a.grid(alpha=0.3, axis="y")
    return fig


def softmax_scale_widget(z: torch.Tensor, target: int, max_scale: float = 10.0) -> widgets.VBox:
    """Live: a slider scaling the logits (an inverse temperature); needs a running kernel."""
    s = widgets.FloatSlider(value=1.0, min=0.1, max=max_scale, step=0.1, description="scale:")
    return control_output([s], lambda: softmax_scale_figure(z, target, s.value))


#: values of the logit-scale slider of :func:`sig_contrast_widget`
SCALE_CHOICES: Tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


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
    c = torch.tensor([int(target)])
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
    c = int(target)
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
    return controls_image({"scale": scale, "n": n},
                          lambda s, k: sig_contrast_figure(model, x, target, baseline, s, k))
