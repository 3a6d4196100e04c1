"""Live widgets and their figures for the toy-MLP chapters (Part I of the book).

Every widget here is a function returning an :mod:`ipywidgets` widget: a control above an
``Output`` that shows a figure.  The callback only calls a plain function that builds the figure
(``*_figure``) from plain data (``*_data``/``*_messages``); those plain functions are what
``tests/test_widgets_toy.py`` drives, because an exception inside a widget callback does not fail a
book build.  Figures are :class:`matplotlib.figure.Figure` objects made without pyplot, so they are
never shown twice and need no ``plt.close``; :func:`lidlib.gallery.gallery` accepts them as they are
for the static galleries of the book.

* :func:`message_figure` / :func:`message_widget` — the paper's Fig. 2: the message matrix
  ``R_{j→i}`` of one layer, its row sums (distribution, Eq. 2) and column sums (absorption, Eq. 3).
* :func:`epsilon_messages` / :func:`epsilon_figure` / :func:`epsilon_widget` — LRP-ε (Eq. 5 with a
  stabilised denominator) in explicit division form, and what ε absorbs.
* :func:`shift_logits` / :func:`logit_shift_figure` / :func:`logit_shift_widget` — adding the same
  constant to every logit leaves the softmax unchanged but not LRP-0 / LRP-ZP (Sec. 1.4).
* :func:`softmax_scale_data` / :func:`softmax_scale_figure` / :func:`softmax_scale_widget` — the
  saturation of the softmax gradient (Sec. 1.5, Fig. 1) when the logits grow.
"""
from __future__ import annotations

import copy
from typing import Callable, List, Optional, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from . import explicit, rules
from .explicit import LayerMessages
from .methods import Method, get_method
from .plot import CMAP
from .top import softmax_gradient

__all__ = [
    "png", "show", "message_data", "draw_messages", "message_figure", "message_widget",
    "epsilon_messages", "epsilon_figure", "epsilon_widget",
    "shift_logits", "logit_shift_data", "logit_shift_figure", "logit_shift_widget",
    "softmax_scale_data", "softmax_scale_figure", "softmax_scale_widget",
]

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


def png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure drawn here, for :func:`lidlib.gallery.gallery`: the layouts of this
    module leave room for their labels, so no ``bbox_inches="tight"`` pass (it doubles the cost)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def show(fig: Figure, dpi: int = 100):
    """An IPython image of a figure drawn here, to show it in a notebook cell (it does not depend on
    the state of matplotlib's inline backend, which a figure made without pyplot would need)."""
    from IPython.display import Image

    return Image(data=png(fig, dpi))


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


def _live(controls: Sequence[widgets.Widget], render: Callable[[], Figure]) -> widgets.VBox:
    """Controls above an Output that shows ``render()`` now and after every change."""
    from IPython.display import clear_output, display

    out = widgets.Output()

    def update(change=None):
        with out:
            clear_output(wait=True)
            display(show(render()))

    for c in controls:
        c.observe(update, names="value")
    update()
    row = controls[0] if len(controls) == 1 else widgets.HBox(list(controls))
    return widgets.VBox([row, out])


def message_widget(model: nn.Sequential, x: torch.Tensor, target: int,
                   methods: Sequence[str] = ("LRP-0", "DeepLIFT", "LID-Taylor", "LID-IG"),
                   layers: Optional[Sequence[int]] = None, baseline: Optional[torch.Tensor] = None,
                   n_steps: Optional[int] = None) -> widgets.VBox:
    """Live Fig. 2: pick a method and a layer; needs a running kernel."""
    layers = list(layers) if layers is not None else list(range(len(model)))[::-1]
    m = widgets.Dropdown(options=list(methods), description="Method:")
    l = widgets.Dropdown(options=[(f"module {k} ({type(model[k]).__name__})", k) for k in layers],
                         description="Layer:")
    return _live([m, l], lambda: message_figure(model, x, target, m.value, l.value, baseline, n_steps))


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
    return _live([s], lambda: epsilon_figure(model, x, target, s.value, layer))


# --------------------------------------------------------------------------- shifting the logits
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
    from .api import explain

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
    return _live([s], lambda: logit_shift_figure(model, x, target, s.value, baseline, ylim=ylim))


# --------------------------------------------------------------------------- softmax saturation
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
    return _live([s], lambda: softmax_scale_figure(z, target, s.value))
