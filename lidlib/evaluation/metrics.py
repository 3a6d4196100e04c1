"""The paper's quantitative evaluations (Sec. 4.2–4.4) and a class-discrimination score with ground truth.

Every metric takes a model, a preprocessed batch ``x`` (B, 3, H, W), the target classes and heatmaps
(B, H, W) at input size — e.g. ``lidlib.explain(model, x, c, "SIG-LID-IG").heatmap(5)`` — and returns
tensors with one row per image:

* :func:`probability_change` (Sec. 4.2, Fig. 8, Table 4): remove a share of the pixels, least relevant
  first, and report ``P_c(masked) − P_c(x)``.
* :func:`multiscale_probability_change` (Fig. 9): the same for the heatmaps s5, s54, …, s54321 of one
  explanation.
* :func:`minimal_patch` (Sec. 4.3, Fig. 11): remove a square of side ``2r + 1`` centred on the heatmap's
  minimum and report ``ΔP_c``.
* :func:`robustness` (Sec. 4.4, Fig. 14, made quantitative): explain translated and scaled copies, map
  each heatmap back, and report its Pearson correlation with the unjittered heatmap and the share of
  pixels whose sign flips.
* :func:`class_discrimination` (beyond the paper): on an image with two objects and known regions, the
  share of positive relevance inside the target's region and the mean relevance on the other object.

Conventions (the same in every metric, chosen once and documented here):

*Removed, least relevant first.*  The paper's text calls the x-axis of Fig. 8 "the ratio of pixels the
mask keeps", but its numbers (Table 4: about −0.01 at 0.1, about −0.45 at 0.9, and a *rise* of ``P_c``
for SIG-LID-IG at 0.1) only make sense if the ratio is the share REMOVED, lowest relevance first:
keeping only 10 % of an image cannot cost 1 % of the probability, and removing pixels can raise ``P_c``
only if the removed pixels count against the class, i.e. carry negative relevance.  So ratio ``r``
removes the ``round(r · H · W)`` pixels with the smallest (most negative) heatmap values; a higher
curve is better.

*Fill value.*  A removed pixel is set to the explanation's reference input ``X̂`` (``fill="reference"``:
0 after preprocessing, the paper's "usually zero" reference; for ImageNet mean/std preprocessing this is
the dataset's mean colour, for EfficientNet-Lite0's ``(255·x − 127) / 128`` a mid grey).  Removing a
pixel then means exactly what the explanation means by "no increment": the masked image lies on the
straight line between ``X̂`` and ``X`` pixel by pixel, and removing everything gives ``P_c(X̂) − P_c(X)``
= −(the total that SIG decomposes).  The cost of this choice: it favours methods that use the same
reference (LID, IG, SIG) over those that do not (LRP, CAMs).  ``fill="mean"`` (each image's per-channel
mean), a number, or a tensor broadcastable to ``x`` are the alternatives.

*Ties* (equal heatmap values, e.g. the zeros of a ReLU-ed CAM) are broken by a seeded random permutation
of the pixels: pixels are sorted by relevance with a stable sort after the permutation, so ties fall in
random but reproducible order, and untied pixels are never reordered (unlike additive jitter).
``tie_break="index"`` uses row-major pixel order instead (which biases ties towards the top-left).
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..checks import _model_dtype_device

__all__ = ["RATIOS", "RADII", "SCALES", "Curve", "Robustness", "Discrimination", "stage_key", "heatmaps",
           "removal_order", "removal_masks", "ROUNDING_FACTOR", "undecided_cuts", "fill_values", "probabilities",
           "probability_change",
           "multiscale_probability_change", "patch_masks", "minimal_patch", "random_transforms", "jitter",
           "unjitter", "visible", "robustness", "class_discrimination", "Interval", "N_BOOT", "bootstrap_mean",
           "paired_difference", "VERDICTS", "MIN_IMAGES", "verdict", "combine_verdicts"]

#: removal ratios of Fig. 8 / Table 4
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: minimal-patch radii of Fig. 11 (side 2r + 1)
RADII = (1, 2, 3, 5, 10, 20)
#: the multi-scale heatmaps of Fig. 9
SCALES = ("s5", "s54", "s543", "s5432", "s54321")


class Curve(NamedTuple):
    """A probability-change curve for each image of a batch.

    ``params``: the ratios (or radii); ``delta`` (B, P): ``P_c(masked) − P_c(x)``; ``p`` (B,): ``P_c(x)``;
    ``p_masked`` (B, P).
    """
    params: Tuple
    delta: torch.Tensor
    p: torch.Tensor
    p_masked: torch.Tensor


class Robustness(NamedTuple):
    """Heatmap stability under jitter.  ``transforms``: per image, the ``(dx, dy, s)`` of each copy (pixels,
    pixels, scale); ``pearson`` and ``sign_flip`` (B, n); ``reference`` (B, H, W) the unjittered heatmap;
    ``mapped`` (B, n, H, W) each copy's heatmap in the original frame; ``valid`` (B, n, H, W) where both
    frames see the image."""
    transforms: list
    pearson: torch.Tensor
    sign_flip: torch.Tensor
    reference: torch.Tensor
    mapped: torch.Tensor
    valid: torch.Tensor


class Discrimination(NamedTuple):
    """Class discrimination on images with two known object regions, (B,) each.

    ``pos_in_target``: ``Σ_target h⁺ / Σ h⁺`` (1 = every positive relevance on the target object);
    ``other_mean``: mean of ``h / max|h|`` on the other object (negative = the other object counts
    against the target, what contrastive methods promise; 0 = ignored);
    ``neg_in_other``: ``Σ_other h⁻ / Σ h⁻`` (NaN where the map has no negative relevance).
    """
    pos_in_target: torch.Tensor
    other_mean: torch.Tensor
    neg_in_other: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------------
# Heatmaps from an explanation
# ---------------------------------------------------------------------------------------------------------------------

def stage_key(stages) -> str:
    """Canonical name of a heatmap: ``5`` / ``"s5"`` → ``"s5"``, ``(5, 4)`` / ``"s54"`` → ``"s54"``,
    ``"input"`` → ``"input"`` (the channel-summed input relevance, for toy models without stages)."""
    if isinstance(stages, str):
        if stages == "input":
            return stages
        if len(stages) >= 2 and stages[0] == "s" and stages[1:].isdigit():
            return stages
        raise ValueError(f"unknown stages {stages!r}: use 5, 's5', (5, 4), 's54', … or 'input'")
    if isinstance(stages, numbers.Integral) and not isinstance(stages, bool):
        return f"s{int(stages)}"
    if isinstance(stages, (tuple, list)) and stages and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in stages):
        return "s" + "".join(str(int(s)) for s in stages)
    raise ValueError(f"unknown stages {stages!r}: use 5, 's5', (5, 4), 's54', … or 'input'")


def heatmaps(explanation, stages=5) -> torch.Tensor:
    """The (B, H, W) heatmap of an :class:`~lidlib.Explanation`: ``explanation.heatmap(stages)``, or, for
    ``stages="input"``, the input relevance summed over channels."""
    key = stage_key(stages)
    if key == "input":
        if "input" not in explanation.relevance:
            raise ValueError(f"{getattr(explanation.method, 'name', explanation.method)} has no input relevance; "
                             "use a stage (5, 's54', …)")
        r = explanation.relevance["input"]
        return r.sum(dim=1) if r.dim() == 4 else r
    return explanation.heatmap(key if len(key) > 2 else int(key[1:]))


# ---------------------------------------------------------------------------------------------------------------------
# Probability change (Sec. 4.2)
# ---------------------------------------------------------------------------------------------------------------------

def _check_heatmaps(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a preprocessed batch (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"heatmaps must be a tensor (B, H, W), got {type(h).__name__}")
    if h.dim() == 2:
        h = h[None]
    if h.dim() != 3 or h.shape[0] != x.shape[0] or tuple(h.shape[1:]) != tuple(x.shape[2:]):
        raise ValueError(f"heatmaps must be (B, H, W) = {(x.shape[0],) + tuple(x.shape[2:])} (the input size: "
                         f"use explanation.heatmap(...)), got {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise ValueError("heatmaps contain NaN or infinite values")
    return h.detach()


def _targets(target, batch: int) -> torch.Tensor:
    if isinstance(target, torch.Tensor):
        t = target.detach().reshape(-1).long().cpu()
    elif isinstance(target, numbers.Integral) and not isinstance(target, bool):
        t = torch.full((batch,), int(target), dtype=torch.long)
    else:
        t = torch.tensor([int(v) for v in target], dtype=torch.long)
    if t.numel() == 1 and batch > 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"target has {t.numel()} entries but x has batch size {batch}")
    return t


def removal_order(heatmap: torch.Tensor, generator: Optional[torch.Generator] = None,
                  tie_break: str = "random") -> torch.Tensor:
    """Flat pixel indices of one (H, W) heatmap, least relevant (most negative) first.

    ``tie_break="random"``: a permutation drawn from ``generator`` decides the order of equal values;
    ``"index"``: row-major order does.  Untied pixels are always in increasing order of relevance.
    """
    flat = heatmap.reshape(-1).double().cpu()
    if tie_break == "index":
        return torch.sort(flat, stable=True).indices
    if tie_break != "random":
        raise ValueError(f"tie_break must be 'random' or 'index', got {tie_break!r}")
    perm = torch.randperm(flat.numel(), generator=generator)
    return perm[torch.sort(flat[perm], stable=True).indices]


def _count(ratio: float, n: int) -> int:
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ratios must lie in [0, 1], got {ratio}")
    return int(math.floor(float(ratio) * n + 0.5))


def removal_masks(heatmaps: torch.Tensor, ratios: Sequence[float] = RATIOS, *, seed: int = 0,
                  tie_break: str = "random") -> torch.Tensor:
    """Boolean masks (B, R, H, W), True on the ``round(r·H·W)`` least relevant pixels of each heatmap.

    One generator seeded with ``seed`` draws the tie-breaking permutation of image 0, then image 1, …
    """
    h = heatmaps[None] if heatmaps.dim() == 2 else heatmaps
    b, hh, ww = h.shape
    n = hh * ww
    g = torch.Generator().manual_seed(int(seed))
    masks = torch.zeros(b, len(ratios), n, dtype=torch.bool)
    for i in range(b):
        order = removal_order(h[i], g, tie_break)
        for j, r in enumerate(ratios):
            masks[i, j, order[:_count(r, n)]] = True
    return masks.reshape(b, len(ratios), hh, ww).to(h.device)


#: how far beyond one measured sample of float rounding (the difference that another thread count makes)
#: other arithmetic is taken to reach: a cut or a committed value within it counts as rounding
ROUNDING_FACTOR = 10


def undecided_cuts(heatmap: torch.Tensor, other: torch.Tensor, ratios: Sequence[float] = RATIOS,
                   factor: float = ROUNDING_FACTOR) -> list:
    """For each ratio, whether float rounding decides which pixels it removes from one (H, W) heatmap.

    ``other`` is the same heatmap computed with other float arithmetic (e.g. another thread count); with
    ``d = max |heatmap − other|``, the cut after the ``round(r·H·W)`` least relevant pixels is *undecided*
    where the last removed and the first kept pixel lie within ``factor·d`` of each other (ties included):
    there, other arithmetic can swap them, and a probability change can move by far more than the
    rounding (a few pixels of an image are a large change for a network)."""
    flat = heatmap.reshape(-1).double().cpu()
    d = float((flat - other.reshape(-1).double().cpu()).abs().max())
    v = torch.sort(flat).values
    n = v.numel()
    out = []
    for r in ratios:
        k = _count(r, n)
        out.append(0 < k < n and float(v[k] - v[k - 1]) <= factor * d)
    return out


def fill_values(x: torch.Tensor, fill="reference") -> torch.Tensor:
    """What removed pixels become, shaped like ``x``: ``"reference"`` (0, the explanation's X̂),
    ``"mean"`` (each image's per-channel mean), a number, or a tensor broadcastable to ``x``."""
    if isinstance(fill, str):
        if fill == "reference":
            return torch.zeros_like(x)
        if fill == "mean":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        raise ValueError(f"fill must be 'reference', 'mean', a number or a tensor, got {fill!r}")
    if isinstance(fill, numbers.Number) and not isinstance(fill, bool):
        return torch.full_like(x, float(fill))
    if isinstance(fill, torch.Tensor):
        return fill.to(dtype=x.dtype, device=x.device).expand_as(x)
    raise TypeError(f"fill must be 'reference', 'mean', a number or a tensor, got {type(fill).__name__}")


def probabilities(model, x: torch.Tensor, target) -> torch.Tensor:
    """``softmax(model(x))_c`` (float64) for a batch, in one forward pass without gradients."""
    dtype, device = _model_dtype_device(model, x)
    x = x.detach().to(device=device, dtype=dtype)
    if x.dim() == 4:        # channels-last: the same numbers, about twice as fast for depthwise convs on CPU
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        z = model(x)
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != x.shape[0]:
        raise ValueError(f"the model must return logits (B, K); it returned "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    c = _targets(target, x.shape[0]).to(z.device)
    if bool(((c < 0) | (c >= z.shape[1])).any()):
        raise ValueError(f"target out of range for a model with {z.shape[1]} classes")
    return z.double().softmax(dim=1).gather(1, c[:, None])[:, 0].cpu()


def _masked_curve(model, x, target, masks, params, fill) -> Curve:
    """One forward pass per image: the image itself, then one masked copy per parameter."""
    c = _targets(target, x.shape[0])
    fills = fill_values(x, fill)
    p0, pm = [], []
    for i in range(x.shape[0]):
        m = masks[i][:, None].to(x.device)                                   # (P, 1, H, W)
        batch = torch.cat([x[i:i + 1], torch.where(m, fills[i:i + 1], x[i:i + 1])])
        p = probabilities(model, batch, c[i].expand(batch.shape[0]))
        p0.append(p[0])
        pm.append(p[1:])
    p0, pm = torch.stack(p0), torch.stack(pm)
    return Curve(tuple(params), pm - p0[:, None], p0, pm)


def probability_change(model, x: torch.Tensor, target, heatmaps: torch.Tensor, ratios: Sequence[float] = RATIOS,
                       *, fill="reference", seed: int = 0, tie_break: str = "random") -> Curve:
    """Probability change (Sec. 4.2, Fig. 8, Table 4): ``P_c(x with the least relevant share r removed) − P_c(x)``.

    For each ratio ``r``, the ``round(r·H·W)`` pixels with the lowest heatmap values (most negative first;
    ties: see the module docstring) are set to ``fill`` (default: the reference ``X̂ = 0``) in every channel.
    All ratios of one image go through the model in ONE batched forward pass (with the image itself).
    Higher is better; a positive value means the removed pixels counted against class ``c``.
    """
    h = _check_heatmaps(x, heatmaps)
    return _masked_curve(model, x, target, removal_masks(h, ratios, seed=seed, tie_break=tie_break), ratios, fill)


def multiscale_probability_change(model, x: torch.Tensor, target, explanation, scales: Sequence = SCALES,
                                  ratios: Sequence[float] = RATIOS, **kwargs) -> Dict[str, Curve]:
    """Fig. 9: :func:`probability_change` for each multi-scale heatmap (s5, s54, …, s54321) of one explanation."""
    return {stage_key(s): probability_change(model, x, target, heatmaps(explanation, s), ratios, **kwargs)
            for s in scales}


# ---------------------------------------------------------------------------------------------------------------------
# Minimal patch (Sec. 4.3)
# ---------------------------------------------------------------------------------------------------------------------

def patch_masks(heatmaps: torch.Tensor, radii: Sequence[int] = RADII, at: str = "min", *, seed: int = 0,
                tie_break: str = "random") -> Tuple[torch.Tensor, torch.Tensor]:
    """Square masks (B, R, H, W) of side ``2r + 1`` centred on each heatmap's minimum (``at="max"``: maximum),
    clipped at the image border; and the centres (B, 2) as (row, column).

    Ties (several pixels at the extreme value, e.g. the zeros of a ReLU-ed CAM or the flat border of an
    upsampled map): one of them drawn by a generator seeded with ``seed`` (``tie_break="index"``: the first in
    row-major order, which would put every tied patch in the top-left corner).
    """
    h = heatmaps[None] if heatmaps.dim() == 2 else heatmaps
    b, hh, ww = h.shape
    if at not in ("min", "max"):
        raise ValueError(f"at must be 'min' or 'max', got {at!r}")
    if tie_break not in ("random", "index"):
        raise ValueError(f"tie_break must be 'random' or 'index', got {tie_break!r}")
    flat = h.reshape(b, -1).detach().cpu()
    g = torch.Generator().manual_seed(int(seed))
    idx = []
    for i in range(b):
        extreme = flat[i].min() if at == "min" else flat[i].max()
        ties = torch.nonzero(flat[i] == extreme)[:, 0]
        pick = torch.randint(len(ties), (1,), generator=g).item() if tie_break == "random" else 0
        idx.append(int(ties[pick]))
    idx = torch.tensor(idx, dtype=torch.long)
    rows, cols = idx // ww, idx % ww
    ii = torch.arange(hh)[:, None]
    jj = torch.arange(ww)[None, :]
    masks = torch.zeros(b, len(radii), hh, ww, dtype=torch.bool)
    for k, r in enumerate(radii):
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0:
            raise ValueError(f"radii must be integers >= 0, got {r!r}")
        for i in range(b):
            masks[i, k] = ((ii - rows[i]).abs() <= r) & ((jj - cols[i]).abs() <= r)
    return masks.to(h.device), torch.stack([rows, cols], dim=1)


def minimal_patch(model, x: torch.Tensor, target, heatmaps: torch.Tensor, radii: Sequence[int] = RADII, *,
                  fill="reference", at: str = "min", seed: int = 0, tie_break: str = "random") -> Curve:
    """Minimal patch (Sec. 4.3, Fig. 11): remove a square of side ``2r + 1`` centred on the heatmap's minimum
    (the most negative pixel) and report ``P_c(masked) − P_c(x)`` for each radius, all radii in one forward
    pass.  Higher is better for methods that explain negative relevance.  ``at="max"`` is the maximal patch
    of SG-LRP's evaluation (lower is better there).  Ties at the extreme: see :func:`patch_masks`."""
    h = _check_heatmaps(x, heatmaps)
    masks, _ = patch_masks(h, radii, at, seed=seed, tie_break=tie_break)
    return _masked_curve(model, x, target, masks, radii, fill)


# ---------------------------------------------------------------------------------------------------------------------
# Robustness (Sec. 4.4)
# ---------------------------------------------------------------------------------------------------------------------

def random_transforms(n: int, *, max_shift: float = 0.1, scale: Tuple[float, float] = (0.9, 1.1), size: int = 224,
                      generator: Optional[torch.Generator] = None) -> list:
    """``n`` random ``(dx, dy, s)``: shifts uniform in ``±max_shift·size`` pixels, scale uniform in ``scale``."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    out = []
    for a, b, c in u.tolist():
        out.append(((2 * a - 1) * max_shift * size, (2 * b - 1) * max_shift * size,
                    scale[0] + c * (scale[1] - scale[0])))
    return out


def _theta(transforms, h: int, w: int, inverse: bool, dtype, device) -> torch.Tensor:
    """Affine matrices for ``F.affine_grid`` (normalised coordinates, ``align_corners=False``).

    The jitter ``T`` maps original coordinates ``p`` to jittered ones ``s·p + t`` (about the centre).
    Sampling the jittered image needs ``T⁻¹``; mapping a heatmap back needs ``T``.
    """
    rows = []
    for dx, dy, s in transforms:
        tx, ty = 2.0 * dx / w, 2.0 * dy / h
        rows.append([[1 / s, 0, -tx / s], [0, 1 / s, -ty / s]] if inverse else [[s, 0, tx], [0, s, ty]])
    return torch.tensor(rows, dtype=dtype, device=device)


def jitter(x: torch.Tensor, transforms) -> torch.Tensor:
    """Copies (n, C, H, W) of one image ``x`` (1, C, H, W) or (C, H, W), translated by ``(dx, dy)`` pixels and
    scaled by ``s`` about the centre (bilinear); what comes from outside the image is 0 (the reference)."""
    x = x[None] if x.dim() == 3 else x
    n = len(transforms)
    theta = _theta(transforms, x.shape[-2], x.shape[-1], True, x.dtype, x.device)
    grid = F.affine_grid(theta, [n] + list(x.shape[1:]), align_corners=False)
    return F.grid_sample(x.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def unjitter(maps: torch.Tensor, transforms) -> torch.Tensor:
    """Heatmaps (n, H, W) of jittered copies, mapped back to the original frame (bilinear)."""
    theta = _theta(transforms, maps.shape[-2], maps.shape[-1], False, maps.dtype, maps.device)
    grid = F.affine_grid(theta, [maps.shape[0], 1] + list(maps.shape[-2:]), align_corners=False)
    return F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]


def visible(transforms, h: int, w: int) -> torch.Tensor:
    """(n, H, W) bool: original pixels whose jittered position lies within the jittered frame's pixel centres,
    so that mapping back interpolates between real pixels only (the region visible in both frames)."""
    theta = _theta(transforms, h, w, False, torch.float64, "cpu")
    grid = F.affine_grid(theta, [len(transforms), 1, h, w], align_corners=False)
    eps = 1e-9
    return ((grid[..., 0].abs() <= 1 - 1 / w + eps) & (grid[..., 1].abs() <= 1 - 1 / h + eps))


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float((a.square().sum() * b.square().sum()).sqrt())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def robustness(model, x: torch.Tensor, target, explainer, *, stages=5, n_copies: int = 4, max_shift: float = 0.1,
               scale: Tuple[float, float] = (0.9, 1.1), seed: int = 0, transforms=None, n_steps: Optional[int] = 10,
               baseline=None) -> Robustness:
    """Robustness (Sec. 4.4, Fig. 14), quantitative.

    For each image, ``n_copies`` jittered copies (random translation by up to ``max_shift·size`` pixels and
    scaling in ``scale``, drawn from a generator seeded with ``seed``; or the given ``transforms``, a list of
    ``(dx, dy, s)`` used for every image) are explained for the same target in one batch with the image
    itself.  Each copy's heatmap is mapped back to the original frame (the inverse transform) and compared,
    on the region visible in both frames, with the unjittered heatmap: Pearson correlation (1 = the same map
    up to scale) and the share of pixels whose sign flips (``h·h' < 0``).

    ``explainer``: a method name (or :class:`~lidlib.Method`), explained with ``lidlib.explain`` and turned into
    a heatmap at ``stages``; or a callable ``(model, x, target) → (B, H, W)``.
    """
    from ..explainer import Explainer

    if callable(explainer):
        heat = explainer
    else:
        bound = {}                                       # one Explainer (reference pass) per model

        def heat(m, xx, tt):
            if m not in bound:
                bound[m] = Explainer(m, explainer, n_steps=n_steps, baseline=baseline)
            return heatmaps(bound[m](xx, tt), stages)
    c = _targets(target, x.shape[0])
    g = torch.Generator().manual_seed(int(seed))
    hh, ww = x.shape[-2:]
    all_t, pear, flip, refs, mapped, valid = [], [], [], [], [], []
    for i in range(x.shape[0]):
        ts = list(transforms) if transforms is not None else random_transforms(
            n_copies, max_shift=max_shift, scale=scale, size=ww, generator=g)
        batch = torch.cat([x[i:i + 1], jitter(x[i:i + 1], ts)])
        h = heat(model, batch, c[i].expand(batch.shape[0]).clone()).detach()
        back = unjitter(h[1:], ts)
        vis = visible(ts, hh, ww).to(back.device)
        pear.append([_pearson(h[0][v], b[v]) for b, v in zip(back, vis)])
        flip.append([float(((h[0][v] * b[v]) < 0).double().mean()) if v.any() else float("nan")
                     for b, v in zip(back, vis)])
        all_t.append(ts)
        refs.append(h[0])
        mapped.append(back)
        valid.append(vis)
    return Robustness(all_t, torch.tensor(pear, dtype=torch.float64), torch.tensor(flip, dtype=torch.float64),
                      torch.stack(refs), torch.stack(mapped), torch.stack(valid))


# ---------------------------------------------------------------------------------------------------------------------
# Class discrimination with ground truth (beyond the paper)
# ---------------------------------------------------------------------------------------------------------------------

def class_discrimination(heatmaps: torch.Tensor, target_mask: torch.Tensor, other_mask: torch.Tensor) -> Discrimination:
    """Where a heatmap puts its relevance on an image with two objects whose regions are known.

    ``heatmaps`` (B, H, W) for the target class; ``target_mask`` / ``other_mask`` (H, W) or (B, H, W) bool: the
    target object's region and the other object's region (e.g. from :func:`lidlib.images.composite`).
    """
    h = heatmaps[None] if heatmaps.dim() == 2 else heatmaps
    h = h.detach().double().cpu()
    tm = target_mask.bool().cpu().expand_as(h)
    om = other_mask.bool().cpu().expand_as(h)
    pos, neg = h.clamp_min(0), (-h).clamp_min(0)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    pos_tot, neg_tot = pos.flatten(1).sum(1), neg.flatten(1).sum(1)
    pos_in = torch.where(pos_tot > 0, (pos * tm).flatten(1).sum(1) / pos_tot.clamp_min(1e-300), nan)
    neg_in = torch.where(neg_tot > 0, (neg * om).flatten(1).sum(1) / neg_tot.clamp_min(1e-300), nan)
    peak = h.abs().flatten(1).max(dim=1).values
    scaled = h / torch.where(peak > 0, peak, torch.ones_like(peak))[:, None, None]
    other_mean = (scaled * om).flatten(1).sum(1) / om.flatten(1).sum(1).clamp_min(1)
    return Discrimination(pos_in, other_mean, neg_in)


# ---------------------------------------------------------------------------------------------------------------------
# Uncertainty: bootstrap intervals over images, paired differences, three-way verdicts
# ---------------------------------------------------------------------------------------------------------------------

class Interval(NamedTuple):
    """A mean over images with its bootstrap confidence interval: ``mean``, ``lo``, ``hi``, ``n`` images."""
    mean: float
    lo: float
    hi: float
    n: int

    def __str__(self):
        return f"{self.mean:+.4f} [{self.lo:+.4f}, {self.hi:+.4f}]"


#: bootstrap resamples of :func:`bootstrap_mean`
N_BOOT = 2000


def bootstrap_mean(values, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Mean of ``values`` (one per image; NaNs left out) and its percentile bootstrap interval.

    The images are resampled with replacement ``n_boot`` times with a generator seeded by ``seed``,
    and the interval is the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the resampled means.
    For n independent values of standard deviation σ it is about ``mean ± 1.96 σ/√n`` (tested)."""
    import numpy as np
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[~np.isnan(v)]
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if v.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(int(seed))
    means = np.empty(int(n_boot))
    step = max(1, 2_000_000 // v.size)                   # resample in blocks: bounded memory
    for k in range(0, int(n_boot), step):
        m = min(step, int(n_boot) - k)
        means[k:k + m] = v[rng.integers(0, v.size, size=(m, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(v.mean()), float(lo), float(hi), int(v.size))


def paired_difference(a: Dict[str, float], b: Dict[str, float], **kwargs) -> Interval:
    """Mean over the images both have of ``a[image] − b[image]``, with its bootstrap interval (the
    comparison of two methods on the SAME images: the images' own difficulty cancels)."""
    common = [k for k in a if k in b and not (math.isnan(a[k]) or math.isnan(b[k]))]
    return bootstrap_mean([a[k] - b[k] for k in common], **kwargs)


#: the three outcomes of :func:`verdict`
VERDICTS = ("agrees", "disagrees", "inconclusive")


#: fewer images than this decide nothing (:func:`verdict`): a bootstrap of a handful of values is too narrow
MIN_IMAGES = 10


def verdict(interval: Interval, direction: int = 1, min_n: int = MIN_IMAGES) -> str:
    """Three-way verdict on a claim "the quantity is > 0" (``direction=+1``) or "< 0" (``-1``):
    ``"agrees"`` if the whole interval lies on the claimed side of 0, ``"disagrees"`` if it lies
    wholly on the other side, ``"inconclusive"`` if it covers 0, is empty, or rests on fewer than
    ``min_n`` images (the percentile bootstrap of 3 values has only 10 distinct resamples)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    if interval.n < min_n:
        return "inconclusive"
    lo, hi = direction * interval.lo, direction * interval.hi
    lo, hi = min(lo, hi), max(lo, hi)
    if interval.n == 0 or math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if lo > 0:
        return "agrees"
    if hi < 0:
        return "disagrees"
    return "inconclusive"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A claim made of several parts: agrees if every part agrees, disagrees if any part disagrees,
    inconclusive otherwise."""
    v = list(verdicts)
    if any(x == "disagrees" for x in v):
        return "disagrees"
    if v and all(x == "agrees" for x in v):
        return "agrees"
    return "inconclusive"
