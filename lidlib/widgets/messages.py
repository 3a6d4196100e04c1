"""Message matrices of the explicit form (Fig. 2): ``R_{j→i}`` of a toy MLP, one layer at a time.

* :func:`message_figure` / :func:`message_widget` (Chapters 2–4) — the paper's Fig. 2: the message
  matrix ``R_{j→i}`` of one layer, its row sums (distribution, Eq. 2) and column sums (absorption, Eq. 3).
* :func:`epsilon_messages` / :func:`epsilon_figure` / :func:`epsilon_widget` (Chapter 2) — LRP-ε
  (Eq. 5 with a stabilised denominator) in explicit division form, and what ε absorbs.

The numbers come from :mod:`lidlib.explicit`.  Figures are :class:`matplotlib.figure.Figure`
objects made without pyplot (never shown twice, no ``plt.close``); ``tests/test_widgets_toy.py``
drives the plain functions, because an exception inside a widget callback does not fail a build.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .. import explicit, rules
from ..explicit import LayerMessages
from ..methods import Method, get_method
from .gallery import control_output
from .plot import CMAP

__all__ = ["message_data", "draw_messages", "message_figure", "message_widget",
           "epsilon_messages", "epsilon_figure", "epsilon_widget"]


#: an LRP-0 method object, used where the explicit form needs the pass rule at activations
LRP0 = Method("LRP-0", "logit", rules.LRP0, increment=False)


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=float)


def _vector(x: torch.Tensor) -> torch.Tensor:
    """One sample as a 1-D tensor (accepts (D,) or (1, D))."""
    if x.dim() == 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 1:
        raise ValueError(f"the toy widgets explain one sample: give x of shape (D,) or (1, D), got {tuple(x.shape)}")
    return x


def _step(steps: List[LayerMessages], layer: int) -> LayerMessages:
    names = [s.name for s in steps]
    if str(layer) not in names:
        raise ValueError(f"layer must be a module index of the Sequential model, one of {sorted(names, key=int)}; "
                         f"got {layer!r}")
    return steps[names.index(str(layer))]


# --------------------------------------------------------------------------- Fig. 2: message matrices
def message_data(model: nn.Sequential, x: torch.Tensor, target: int, method, layer: int,
                 baseline: Optional[torch.Tensor] = None, n_steps: Optional[int] = None) -> LayerMessages:
    """The :class:`~lidlib.explicit.LayerMessages` of module ``layer`` (its index in ``model``)."""
    x = _vector(x)
    if baseline is not None:
        baseline = _vector(baseline)
    steps = explicit.decompose(model, x, target, method, baseline, n_steps)
    return _step(steps, layer)


def draw_messages(M, R_out, R_in=None, title: Optional[str] = None, tol: float = 1e-9,
                  annotate: bool = True, fig: Optional[Figure] = None) -> Figure:
    """Draw a message matrix as in the paper's Fig. 2.

    Centre: ``M[j, i] = R_{j→i}`` (rows: neurons j of layer l, columns: neurons i of layer l−1).
    Left column: ``R(Y_j^l)``, the relevance each row has to distribute.  Right column: the row
    sums ``Σ_i R_{j→i}`` (Eq. 2), outlined in black where they differ from ``R(Y_j^l)`` by more than
    ``tol`` (relevance lost or created by the rule).  Top row: the column sums ``Σ_j R_{j→i}`` — the
    absorbed relevance ``R(Y_i^{l-1})`` (Eq. 3).  One symmetric red (+) / blue (−) colour scale for all.
    """
    M, R_out = _np(M), _np(R_out)
    N, K = M.shape
    rows, cols = M.sum(axis=1), M.sum(axis=0)
    if R_in is not None and not np.allclose(_np(R_in), cols, rtol=1e-9, atol=1e-12):
        raise ValueError("R_in is not the column sums of M (absorption, Eq. 3)")
    lim = max(np.abs(M).max(), np.abs(R_out).max(), np.abs(rows).max(), np.abs(cols).max(), 1e-300)
    height = 1.5 + 0.42 * (N + 1)
    if fig is None:
        fig = Figure(figsize=(1.6 + 0.62 * (K + 2), height))
    else:                                   # a subfigure: margins relative to the parent figure
        height = fig.figure.get_figheight()
    gs = fig.add_gridspec(2, 3, width_ratios=[1, K, 1], height_ratios=[1, N], wspace=0.08, hspace=0.1,
                          left=0.12, right=0.86, top=1 - 0.75 / height, bottom=0.5 / height)
    ax_top, ax_left = fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 0])
    ax, ax_right = fig.add_subplot(gs[1, 1]), fig.add_subplot(gs[1, 2])
    kw = dict(cmap=CMAP, vmin=-lim, vmax=lim, aspect="auto")
    im = ax.imshow(M, **kw)
    ax_left.imshow(R_out[:, None], **kw)
    ax_right.imshow(rows[:, None], **kw)
    ax_top.imshow(cols[None, :], **kw)
    fs = 7 if max(N, K) <= 8 else 5
    if annotate:
        for (a, data) in ((ax, M), (ax_left, R_out[:, None]), (ax_right, rows[:, None]), (ax_top, cols[None, :])):
            for (r, c), v in np.ndenumerate(data):
                a.text(c, r, f"{v + 0.0:.2g}", ha="center", va="center", fontsize=fs,   # no "-0"
                       color="white" if abs(v) > 0.6 * lim else "black")
    for j in np.nonzero(np.abs(rows - R_out) > tol * max(1.0, np.abs(R_out).max()))[0]:
        ax_right.add_patch(_box(j))
    for a in (ax, ax_left, ax_right, ax_top):
        a.set_xticks([])
        a.set_yticks([])
    ax_left.set_yticks(range(N))
    ax_left.set_yticklabels([f"j={j}" for j in range(N)], fontsize=7)
    ax_top.set_xticks(range(K))
    ax_top.set_xticklabels([f"i={i}" for i in range(K)], fontsize=7)
    ax_top.xaxis.set_ticks_position("top")
    ax_left.set_xlabel("$R(Y_j^l)$", fontsize=8)
    ax_right.set_xlabel("$\\sum_i R_{j\\to i}$", fontsize=8)
    ax.set_xlabel("messages $R_{j\\to i}^{l\\to l-1}$", fontsize=8)
    ax_top.set_ylabel("$\\sum_j$", fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.12 / height, va="top")
    fig.colorbar(im, ax=[ax, ax_right], fraction=0.04, pad=0.03)
    return fig


def _box(j):
    from matplotlib.patches import Rectangle
    return Rectangle((-0.5, j - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2)


def message_figure(model: nn.Sequential, x: torch.Tensor, target: int, method, layer: int,
                   baseline: Optional[torch.Tensor] = None, n_steps: Optional[int] = None) -> Figure:
    """Fig. 2 for module ``layer`` of a toy MLP under ``method`` (a name of METHODS or a Method)."""
    st = message_data(model, x, target, method, layer, baseline, n_steps)
    name = get_method(method).name
    kind = type(model[layer]).__name__
    return draw_messages(st.messages, st.R_out, st.R_in, title=f"{name}: module {layer} ({kind})")


def message_widget(model: nn.Sequential, x: torch.Tensor, target: int,
                   methods: Sequence[str] = ("LRP-0", "DeepLIFT", "LID-Taylor", "LID-IG"),
                   layers: Optional[Sequence[int]] = None, baseline: Optional[torch.Tensor] = None,
                   n_steps: Optional[int] = None) -> widgets.VBox:
    """Live Fig. 2: pick a method and a layer; needs a running kernel."""
    layers = list(layers) if layers is not None else list(range(len(model)))[::-1]
    m = widgets.Dropdown(options=list(methods), description="Method:")
    l = widgets.Dropdown(options=[(f"module {k} ({type(model[k]).__name__})", k) for k in layers],
                         description="Layer:")
    return control_output([m, l], lambda: message_figure(model, x, target, m.value, l.value, baseline, n_steps))


# --------------------------------------------------------------------------- LRP-ε (Eq. 5)
def epsilon_messages(model: nn.Sequential, x: torch.Tensor, target: int, eps: float) -> List[LayerMessages]:
    """LRP-ε in explicit division form, top-down (first entry: the last module).

    Top relevance ``e_c ⊙ Z``; at Linear layers ``R_{j→i} = R_j W_ji Y_i / (Y_j + ε·sign(Y_j))``
    (``sign(0) = +1``; Eq. 5 for ε = 0); activations pass relevance on (the LRP-0 rule).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x = _vector(x)
    with torch.no_grad():
        ys = [x]
        for layer in model:
            ys.append(layer(ys[-1][None])[0])
        R = torch.zeros_like(ys[-1])
        R[target] = ys[-1][target]
        steps = []
        for idx in reversed(range(len(model))):
            zeros = torch.zeros_like(ys[idx])
            A, u, v = explicit.layer_matrix(model[idx], LRP0, ys[idx], zeros, ys[idx + 1],
                                            torch.zeros_like(ys[idx + 1]), None)
            if isinstance(model[idx], nn.Linear) and eps > 0:
                v = v + eps * torch.where(v >= 0, torch.ones_like(v), -torch.ones_like(v))
            M = explicit.messages(R, A, u, v)
            steps.append(LayerMessages(str(idx), A, M, R, explicit.absorb(M)))
            R = steps[-1].R_in
    return steps


def epsilon_figure(model: nn.Sequential, x: torch.Tensor, target: int, eps: float, layer: int = 0) -> Figure:
    """Left: the messages of module ``layer`` under LRP-ε.  Right: ``Σ R(Y^l)`` per layer for this
    ε and for LRP-0 (ε = 0), with the decision ``Z_c``: what ε (and the biases) absorb."""
    steps = epsilon_messages(model, x, target, eps)
    base = epsilon_messages(model, x, target, 0.0)
    st = _step(steps, layer)
    fig = Figure(figsize=(10, 4.0))
    sub = fig.subfigures(1, 2, width_ratios=[1.25, 1])
    draw_messages(st.messages, st.R_out, st.R_in, title=f"LRP-ε, ε = {eps:.2g}: module {layer}", fig=sub[0])
    ax = sub[1].add_subplot(1, 1, 1)
    sub[1].subplots_adjust(bottom=0.17, top=0.9)
    labels = ["input"] + [s.name for s in reversed(steps)]
    for ss, style, name in ((base, "o-", "LRP-0 (ε = 0)"), (steps, "s--", f"LRP-ε, ε = {eps:.2g}")):
        sums = [float(ss[-1].R_in.sum())] + [float(s.R_out.sum()) for s in reversed(ss)]
        ax.plot(range(len(labels)), sums, style, label=name)
    ax.axhline(float(steps[0].R_out.sum()), color="gray", lw=0.8, ls=":", label="$Z_c$")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel("layer (module output)")
    ax.set_ylabel("$\\sum R(Y^l)$")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def epsilon_widget(model: nn.Sequential, x: torch.Tensor, target: int, layer: int = 0,
                   exponents=(-6.0, 1.0)) -> widgets.VBox:
    """Live LRP-ε: a log-scale ε slider (10^a … 10^b); needs a running kernel."""
    s = widgets.FloatLogSlider(value=10 ** exponents[0], base=10, min=exponents[0], max=exponents[1],
                               step=0.25, description="ε:", readout_format=".1e")
    return control_output([s], lambda: epsilon_figure(model, x, target, s.value, layer))


# --------------------------------------------------------------------------- shifting the logits


# --------------------------------------------------------------------------- softmax saturation


