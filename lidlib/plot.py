"""Heatmap colours as in the paper (Sec. 4.1): red positive, blue negative, white zero."""
from __future__ import annotations

import numpy as np
import torch

CMAP = "bwr"


def _np(t):
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=float)


def symmetric_limit(heatmap) -> float:
    """The colour limit ``max |h|`` (1 for an all-zero map), so that zero is white."""
    m = float(np.abs(_np(heatmap)).max()) if np.size(_np(heatmap)) else 0.0
    return m if m > 0 else 1.0


def show_heatmap(ax, heatmap, image=None, alpha: float = 0.6, title: str = None, colorbar: bool = False):
    """Draw a (H, W) relevance map on ``ax`` with a symmetric red–white–blue scale.

    With ``image`` (a (3, H, W) tensor in [0, 1] or (H, W, 3) array) the map is overlaid on a grey
    copy of the photo with opacity ``alpha``.  Returns the matplotlib image.
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
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return im


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
