"""Heatmap colours as in the paper (Sec. 4.1): red positive, blue negative, white zero.

Every relevance map is drawn on a symmetric scale ``[-max |h|, +max |h|]`` (zero is white) and carries
a colour bar: :func:`show_heatmap` gives a single map its own bar (in the map's units);
:func:`relevance_colorbar` gives a grid of maps, each scaled to its own largest value, one shared bar
from ``-max`` to ``+max``.
"""
from __future__ import annotations

import numpy as np
import torch

CMAP = "bwr"
#: tick labels of the shared bar of maps that are each scaled to their own max |h|
SHARED_TICKS = ("−max", "0", "+max")


def _np(t):
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=float)


def symmetric_limit(heatmap) -> float:
    """The colour limit ``max |h|`` (1 for an all-zero map), so that zero is white."""
    m = float(np.abs(_np(heatmap)).max()) if np.size(_np(heatmap)) else 0.0
    return m if m > 0 else 1.0


def show_heatmap(ax, heatmap, image=None, alpha: float = 0.6, title: str = None, colorbar: bool = True):
    """Draw a (H, W) relevance map on ``ax`` with a symmetric red–white–blue scale.

    With ``image`` (a (3, H, W) tensor in [0, 1] or (H, W, 3) array) the map is overlaid on a grey
    copy of the photo with opacity ``alpha``.  ``colorbar``: a colour bar beside the map, ticks at
    ``-max |h|``, 0 and ``+max |h|``; pass ``False`` in a grid and add one :func:`relevance_colorbar`
    for all maps.  Returns the matplotlib image.
    """
    h = _np(heatmap)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be (H, W); got shape {h.shape} (select one sample: hm[0])")
    lim = symmetric_limit(h)
    if image is not None:
        img = _np(image)
        if img.ndim == 3 and img.shape[0] == 3:
            img = img.transpose(1, 2, 0)
        ax.imshow(img.mean(axis=2), cmap="gray", vmin=0, vmax=1)
        im = ax.imshow(h, cmap=CMAP, vmin=-lim, vmax=lim, alpha=alpha)
    else:
        im = ax.imshow(h, cmap=CMAP, vmin=-lim, vmax=lim)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.ax.tick_params(labelsize=7)
        cb.solids.set_alpha(1.0)
        _label_bar(cb, lim)
    return im


def _label_bar(cb, lim: float) -> None:
    cb.set_ticks([-lim, 0.0, lim])
    cb.set_ticklabels([f"{-lim:.2g}", "0", f"{lim:.2g}"])


def update_heatmap(im, heatmap) -> None:
    """Show another (H, W) map in an image made by :func:`show_heatmap` (same axes, same photo): new
    data, its own symmetric limits, and the colour bar's ticks.  Much cheaper than drawing a new figure
    when many maps are rendered one after the other (a gallery)."""
    h = _np(heatmap)
    if h.shape != im.get_array().shape:
        raise ValueError(f"heatmap shape {h.shape} differs from the drawn one {im.get_array().shape}")
    lim = symmetric_limit(h)
    im.set_data(h)
    im.set_clim(-lim, lim)
    if im.colorbar is not None:
        _label_bar(im.colorbar, lim)


def relevance_colorbar(fig, axes=None, *, cax=None, label: str = "each map scaled to its own max |R|",
                       fontsize: float = 8, **kwargs):
    """One colour bar for maps that :func:`show_heatmap` drew each on its own symmetric scale:
    blue ``-max``, white 0, red ``+max``.  Give the ``axes`` it belongs to (the figure should use
    ``layout="constrained"``; ``tight_layout`` cannot place a bar shared by several axes) or a ``cax``.
    Returns the colour bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(-1.0, 1.0), cmap=CMAP)
    if cax is None:
        if axes is None:
            raise ValueError("relevance_colorbar needs the axes of the maps (axes=...) or an axes for the bar "
                             "(cax=...)")
        kwargs.setdefault("shrink", 0.8)
        kwargs.setdefault("aspect", 25)
        cb = fig.colorbar(sm, ax=np.ravel(axes).tolist(), ticks=[-1, 0, 1], **kwargs)
    else:
        cb = fig.colorbar(sm, cax=cax, ticks=[-1, 0, 1], **kwargs)
    if cb.orientation == "vertical":
        cb.ax.set_yticklabels(list(SHARED_TICKS))
    else:
        cb.ax.set_xticklabels(list(SHARED_TICKS))
    cb.ax.tick_params(labelsize=fontsize)
    if label:
        cb.set_label(label, fontsize=fontsize)
    return cb


def show_image(ax, image, title: str = None):
    """Draw a (3, H, W) [0, 1] tensor or (H, W, 3) array without ticks."""
    img = _np(image)
    if img.ndim == 3 and img.shape[0] == 3:
        img = img.transpose(1, 2, 0)
    ax.imshow(np.clip(img, 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
