"""The methods the paper compares against (Sec. 4): integrated gradients and class activation maps.

Each is a :class:`Comparison` that carries its own function and what it needs (a reference input
``X̂``, path samples, which of the model's stages), so :func:`lidlib.explain` runs it without
dispatching on its name (cf. pytorch-grad-cam's ``model_targets``: behaviour as small callables):

* :data:`IG` -- :func:`integrated_gradients`, Eq. (11), at the input; at a hidden layer, the IG of the
  path induced by the input path (layer conductance).
* :data:`GRADCAM` (:func:`gradcam`, Selvaraju et al., ICCV 2017), :data:`LAYERCAM` (:func:`layercam`,
  Jiang et al., IEEE TIP 2021), :data:`SCORECAM` (:func:`scorecam`, Wang et al., CVPR-W 2020, at the
  last stage only: one forward per channel) and :func:`layercam_multiscale`.
* :func:`upsample` and :func:`minmax`: the post-processing that CAM libraries apply, kept separate so
  that the maps themselves stay un-normalised, at the layer's own spatial size.

Every function leaves the model as it found it: forward hooks are removed, the ``inplace`` flags of
its modules (torchvision's VGG uses ``nn.ReLU(inplace=True)``) are switched off for the call and
restored (:func:`lidlib.engine.patched`), parameters, their ``requires_grad`` flags and ``.grad`` are
not touched (gradients are taken with :func:`torch.autograd.grad`), and the train/eval mode is not
changed -- also when an exception is raised half-way.  The model must be in eval mode and return
logits (no final Softmax).  Computations run in the dtype and on the device of the model's parameters
(float32 or float64; half precision is refused).  Calls on the same model from several threads are
serialised (:func:`lidlib.engine.exclusive`).
"""
from __future__ import annotations

import contextlib
import numbers
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .checks import (
    Layer,
    Target,
    _as_input,
    _check_baseline,
    _check_batch_size,
    _check_eval,
    _check_logits_model,
    _check_steps,
    _check_target,
    _resolve_layer,
    _select,
)
from .explanation import Explanation
from .paths import riemann_points

__all__ = [
    "Comparison",
    "COMPARISONS",
    "integrated_gradients",
    "gradcam",
    "layercam",
    "scorecam",
    "scorecam_map",
    "layercam_multiscale",
    "upsample",
    "minmax",
]



class _Capture:
    """Outputs of the hooked modules during the latest forward pass."""

    def __init__(self, names: List[str]):
        self.names = names
        self.outputs: Dict[str, List[torch.Tensor]] = {n: [] for n in names}

    def clear(self) -> None:
        for v in self.outputs.values():
            v.clear()

    def get(self, name: str) -> torch.Tensor:
        outs = self.outputs[name]
        if len(outs) != 1:
            raise RuntimeError(f"layer {name!r} was called {len(outs)} times in one forward pass; "
                               "choose a module that is used exactly once (e.g. not a shared ReLU)")
        return outs[0]


@contextlib.contextmanager
def _prepared(model: nn.Module, layers: Sequence[Layer]) -> Iterator[_Capture]:
    """Check eval mode, then :func:`lidlib.engine.patched` (hold the model, switch ``inplace`` off,
    remove every hook on exit) with the input-shape hooks and a capture hook on each of ``layers``.

    The hook stores the layer's output ``h`` and hands a clone to the rest of the network, so that no
    later in-place operation (a functional ReLU, ``out += identity`` in a ResNet) can overwrite the
    stored values or re-base their autograd history; ``∂Z/∂h`` is then taken w.r.t. ``h`` itself.
    """
    from .engine import _in_thread, patched, shape_hooks  # here, not at the top: engine -> methods -> comparison

    _check_eval(model)
    _check_logits_model(model)
    resolved = [_resolve_layer(model, l) for l in layers]
    names = [n for n, _ in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate layers in {names}")
    cap = _Capture(names)
    owner = threading.get_ident()           # (the capture ignores another thread running the model meanwhile)
    with patched(model) as handles:
        try:
            handles += shape_hooks(model)
            for name, m in resolved:
                def hook(_module, _inputs, output, _name=name):
                    if not isinstance(output, torch.Tensor):
                        raise TypeError(f"layer {_name!r} returns {type(output).__name__}, not a tensor")
                    cap.outputs[_name].append(output)
                    return output.clone()
                handles.append(m.register_forward_hook(_in_thread(owner, hook)))
            yield cap
        finally:
            cap.clear()


def _chunks(n: int, size: Optional[int]) -> List[Tuple[int, int]]:
    size = n if size is None else size
    return [(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------------------------
# Integrated gradients, Eq. (11)
# ----------------------------------------------------------------------------------------------

def integrated_gradients(model: nn.Module, x: torch.Tensor, target: Target, baseline=None,
                         n_steps: int = 10, layer: Optional[Layer] = None,
                         internal_batch_size: Optional[int] = None) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017), the paper's Eq. (11), right Riemann sum.

    Path ``x_k = X̂ + (k/n)(X − X̂)``, k = 0..n, with ``X̂ = baseline`` (``None``: zeros; a number or a
    tensor broadcastable to ``x``).

    * ``layer=None``: ``R(X) = (X − X̂) ⊙ (1/n) Σ_{k=1..n} ∂Z_c/∂X (x_k)``.  Identical to Captum's
      ``IntegratedGradients(model).attribute(x, baselines, target, n_steps=n, method="riemann_right")``.
    * ``layer="features.30"`` (a name from ``model.named_modules()``): IG at that module's output ``h``
      along the path induced by the input path (layer conductance),
      ``R(h) = Σ_{k=1..n} ∂Z_c/∂h (x_k) ⊙ (h(x_k) − h(x_{k−1}))``, gradient at the RIGHT end of each
      step, and ``x_0 = X̂`` so that ``Σ R(h) → Z_c(X) − Z_c(X̂)`` as n grows.  Returns a tensor shaped
      like the layer's output.

      Captum's ``LayerConductance`` uses another grid: with ``method="riemann_right"`` and
      ``n_steps=n`` it evaluates ``n+1`` points ``α_j = j/(n+1)``, j = 1..n+1, and returns
      ``Σ_{j=1..n} ∂Z_c/∂h(α_j) ⊙ (h(α_{j+1}) − h(α_j))``: gradient at the LEFT end of each step, and the
      first step ``[0, 1/(n+1)]`` is missing, so its sum tends to ``Z_c(X) − Z_c(x_{1/(n+1)})``.  Our
      value equals exactly ``−LayerConductance(model, layer).attribute(baseline, baselines=x,
      target=target, n_steps=n, method="riemann_trapezoid")`` (its alphas are then ``j/n``, j = 0..n,
      walked from X to X̂, which turns Captum's left-end gradient into our right-end one).

    All ``B·n`` path points (``B·(n+1)`` with ``layer``) go through ONE forward/backward pass, or
    through chunks of ``internal_batch_size`` points.
    """
    inp, conds = integrated_gradients_layers(model, x, target, baseline, n_steps,
                                             [] if layer is None else [layer], internal_batch_size)
    return inp if layer is None else conds[0]


def integrated_gradients_layers(model: nn.Module, x: torch.Tensor, target: Target, baseline=None,
                                n_steps: int = 10, layers: Sequence[Layer] = (),
                                internal_batch_size: Optional[int] = None):
    """IG at the input and conductance at every layer of ``layers``, from ONE batched pass.

    Returns ``(R(X), [R(h_l) for l in layers])``; see :func:`integrated_gradients` for the formulas.
    """
    n = _check_steps(n_steps)
    ibs = _check_batch_size(internal_batch_size, "internal_batch_size")
    _check_eval(model)
    x = _as_input(model, x)
    batch = x.shape[0]
    c = _check_target(target, batch, x.device)
    xb = _check_baseline(baseline, x)
    layers = list(layers)
    first = 0 if layers else 1                 # conductance needs h(x_0) = h(X̂) too
    alphas = riemann_points(n, x.dtype, x.device, first=first)
    m = alphas.numel()
    shape = (m,) + (1,) * x.dim()
    points = (xb + alphas.view(shape) * (x - xb)).reshape((m * batch,) + tuple(x.shape[1:]))
    targets = c.repeat(m)                      # point index = step * B + sample
    grads = []
    evals = {}
    with _prepared(model, layers) as cap:
        for lo, hi in _chunks(points.shape[0], ibs):
            cap.clear()
            with torch.enable_grad():
                p = points[lo:hi].detach().requires_grad_(True)
                zc = _select(model(p), targets[lo:hi])
                hs = [cap.get(name) for name in cap.names]
                gs = torch.autograd.grad(zc.sum(), [p] + hs)
            grads.append([g.detach() for g in gs])
            for name, h in zip(cap.names, hs):
                evals.setdefault(name, []).append(h.detach())
            cap.clear()
        names = list(cap.names)

    def stacked(chunks):
        t = torch.cat(chunks)
        return t.reshape((m, batch) + tuple(t.shape[1:]))
    g_in = stacked([g[0] for g in grads])
    inp = g_in[1 - first:].sum(0) / n * (x - xb)      # right Riemann sum: k = 1..n
    conds = []
    for i, name in enumerate(names, start=1):
        g, h = stacked([gg[i] for gg in grads]), stacked(evals[name])
        conds.append((g[1:] * (h[1:] - h[:-1])).sum(0))
    return inp, conds


# ----------------------------------------------------------------------------------------------
# Class activation maps
# ----------------------------------------------------------------------------------------------

def _acts_grads(model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[Layer],
                need_grads: bool = True) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]], torch.Tensor]:
    """Outputs ``A`` of ``layers``, ``∂Z_c/∂A`` and the logits, from one forward and one backward pass."""
    x = _as_input(model, x, min_dim=4)
    c = _check_target(target, x.shape[0], x.device)
    with _prepared(model, layers) as cap:
        with torch.enable_grad() if need_grads else torch.no_grad():
            p = x.detach().requires_grad_(need_grads)   # keeps the graph alive if params are frozen
            z = model(p)
            zc = _select(z, c)
            acts = [cap.get(n) for n in cap.names]
            for n, a in zip(cap.names, acts):
                if a.dim() != 4:
                    raise ValueError(f"layer {n!r} outputs shape {tuple(a.shape)}; a class activation "
                                     "map needs a (B, C, h, w) feature map")
            grads = (list(torch.autograd.grad(zc.sum(), acts)) if need_grads
                     else [None] * len(acts))
        acts = [a.detach() for a in acts]
        grads = [None if g is None else g.detach() for g in grads]
        cap.clear()
    return acts, grads, z.detach()


def gradcam(model: nn.Module, x: torch.Tensor, target: Target, layer: Layer,
            relu: bool = True) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017) at the output ``A`` of ``layer``.

    ``w_k = mean_{ij} ∂Z_c/∂A_kij``, ``cam = ReLU(Σ_k w_k A_k)`` (``relu=False``: the signed map).
    Returns (B, h, w) at the layer's spatial size, un-normalised (see :func:`upsample`, :func:`minmax`).
    """
    (a,), (g,), _ = _acts_grads(model, x, target, [layer])
    return gradcam_map(a, g, relu)


def gradcam_map(a: torch.Tensor, g: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Grad-CAM from activations ``A`` and gradients ``∂Z_c/∂A`` (B, C, h, w)."""
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)
    return cam.clamp_min(0) if relu else cam


def layercam(model: nn.Module, x: torch.Tensor, target: Target, layer: Layer,
             relu: bool = True) -> torch.Tensor:
    """Layer-CAM (Jiang et al., IEEE TIP 2021) at the output ``A`` of ``layer``.

    ``cam = ReLU(Σ_k ReLU(∂Z_c/∂A_k) ⊙ A_k)``; ``relu=False`` drops only the outer ReLU (signed map;
    the gradient ReLU is part of the method).  Returns (B, h, w), un-normalised.
    """
    (a,), (g,), _ = _acts_grads(model, x, target, [layer])
    return layercam_map(a, g, relu)


def layercam_map(a: torch.Tensor, g: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Layer-CAM from activations ``A`` and gradients ``∂Z_c/∂A`` (B, C, h, w)."""
    cam = (g.clamp_min(0) * a).sum(1)
    return cam.clamp_min(0) if relu else cam


def scorecam_masks(a: torch.Tensor, size) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score-CAM's masks ``M_k = (A_k − min) / (max − min + 1e-8)`` of the channels of ``a``
    (B, C, h, w), upsampled to ``size`` (bilinear, ``align_corners=True`` as pytorch-grad-cam's
    ``UpsamplingBilinear2d``), and which channels are not constant, ``(masks (B, C, *size), live (B, C))``.
    A constant channel's mask is 0 exactly."""
    up = F.interpolate(a, size=tuple(size), mode="bilinear", align_corners=True)
    flat = up.reshape(a.shape[0], a.shape[1], -1)
    lo_, hi_ = flat.min(-1)[0], flat.max(-1)[0]
    return (up - lo_[..., None, None]) / (hi_ - lo_ + 1e-8)[..., None, None], hi_ > lo_


def scorecam_scores(model: nn.Module, image: torch.Tensor, masks: torch.Tensor, live: torch.Tensor,
                    batch_size: Optional[int] = 64) -> Tuple[torch.Tensor, int]:
    """The logits of the masked inputs ``image ⊙ M_k`` of ONE image (C, H, W), for every channel k:
    ``(scores (C, classes), forwards)``.  The masked inputs do not depend on the class, so the scores
    serve every class; all constant channels (``live`` False: mask 0) share one forward of ``0 · X``.
    ``forwards`` counts the masked images evaluated, in batches of ``batch_size``."""
    k_live, k_dead = torch.nonzero(live).flatten(), torch.nonzero(~live).flatten()
    groups = ([k_dead] if len(k_dead) else []) + [k_live[lo:hi] for lo, hi in _chunks(len(k_live), batch_size)]
    scores, forwards = None, 0
    with _prepared(model, []), torch.no_grad():
        for k in groups:
            shown = k if live[k[0]] else k[:1]           # constant channels: one mask 0 serves them all
            z = model(image[None] * masks[shown][:, None])
            forwards += len(shown)
            if scores is None:
                scores = z.new_empty(len(live), z.shape[1])
            scores[k] = z
    return scores, forwards


def scorecam(model: nn.Module, x: torch.Tensor, target: Target, layer: Layer,
             batch_size: int = 64, relu: bool = True) -> torch.Tensor:
    """Score-CAM (Wang et al., CVPR Workshops 2020) at the output ``A`` of ``layer``, as pytorch-grad-cam.

    Each channel ``A_k`` is upsampled to the input size, min-max normalised per channel and masks
    the input (:func:`scorecam_masks`); ``w = softmax_k(Z_c(X ⊙ M_k))`` (softmax over channels of the
    target logit of the masked inputs, as pytorch-grad-cam; the Score-CAM authors' code instead
    weights each channel by the softmax probability ``P_c`` of its masked input),
    ``cam = ReLU(Σ_k w_k A_k)``.  Unlike pytorch-grad-cam, the scores stay in the model's dtype.
    The masked inputs are evaluated in batches of ``batch_size``, once per distinct image of the
    batch (copies of one image for several classes share them) and once for all constant channels
    (:func:`scorecam_scores`).  Returns (B, h, w).
    """
    bs = _check_batch_size(batch_size, "batch_size")
    (a,), _, _ = _acts_grads(model, x, target, [layer], need_grads=False)
    x = _as_input(model, x, min_dim=4)
    c = _check_target(target, x.shape[0], x.device)
    masks, live = scorecam_masks(a, x.shape[-2:])
    scores = torch.empty(a.shape[:2], dtype=a.dtype, device=a.device)           # (B, C): Z_c(X ⊙ M_k)
    done = {}                                                                   # image index -> its scores
    for b in range(x.shape[0]):
        r = next((r for r in done if torch.equal(x[r], x[b])), b)                # a copy of an earlier image?
        if r not in done:
            done[r] = scorecam_scores(model, x[r], masks[r], live[r], bs)[0]
        scores[b] = done[r][:, c[b]]
    return scorecam_map(scores, a, relu)


def scorecam_map(scores: torch.Tensor, a: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Score-CAM from the target logits of the masked inputs ``scores`` (B, C) and the activations ``A``
    (B or 1, C, h, w): ``cam = ReLU(Σ_k softmax_k(scores)_k A_k)``, (B, h, w)."""
    w = torch.softmax(scores, dim=1)
    cam = (w[:, :, None, None] * a).sum(1)
    return cam.clamp_min(0) if relu else cam


def layercam_multiscale(model: nn.Module, x: torch.Tensor, target: Target, layers: Sequence[Layer],
                        size=None) -> torch.Tensor:
    """Multi-scale Layer-CAM: ``Σ_l minmax(upsample(layercam_l, size))``, shape (B, *size).

    Each layer's Layer-CAM (with its ReLU) is upsampled to ``size`` (bilinear, ``align_corners=False``;
    ``None``: the input's spatial size) and then min-max normalised to [0, 1] per image, and the maps
    are summed -- the fusion of scales of Layer-CAM (Jiang et al. 2021) that the paper's stage maps
    ``s54321`` follow (Sec. 4).  All layers share ONE forward and ONE backward pass.
    """
    if isinstance(layers, (str, nn.Module)) or len(layers) == 0:
        raise ValueError("layers must be a non-empty list of layer names")
    if size is None:
        if not isinstance(x, torch.Tensor) or x.dim() < 4:
            raise ValueError("size=None needs an image batch x of shape (B, C, H, W)")
        size = tuple(x.shape[-2:])
    acts, grads, _ = _acts_grads(model, x, target, list(layers))
    total = None
    for a, g in zip(acts, grads):
        cam = minmax(upsample(layercam_map(a, g), size))
        total = cam if total is None else total + cam
    return total


# ----------------------------------------------------------------------------------------------
# Post-processing
# ----------------------------------------------------------------------------------------------

def upsample(cam: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) of ``cam`` (B, h, w) or (B, C, h, w) to ``size``.

    ``size`` is an int or ``(H, W)``.  ``align_corners=False`` is the half-pixel convention of
    ``cv2.resize(..., INTER_LINEAR)``, which pytorch-grad-cam uses.
    """
    if isinstance(size, numbers.Integral):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (H, W), got {size}")
    if cam.dim() == 3:
        return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if cam.dim() == 4:
        return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"cam must have shape (B, h, w) or (B, C, h, w), got {tuple(cam.shape)}")


def minmax(cam: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per-image min-max normalisation, ``(cam − min) / (max − min + eps)``, over all non-batch dims.

    ``eps=0`` maps a constant map to zeros; pytorch-grad-cam uses ``eps=1e-7``.
    """
    flat = cam.reshape(cam.shape[0], -1)
    lo = flat.min(1)[0].view((-1,) + (1,) * (cam.dim() - 1))
    span = flat.max(1)[0].view((-1,) + (1,) * (cam.dim() - 1)) - lo + eps
    out = cam - lo
    return torch.where(span > 0, out / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(out))


# ----------------------------------------------------------------------------------------------
# The comparison methods as values: each carries its function and what it needs
# ----------------------------------------------------------------------------------------------

def _model_stages(model) -> List[str]:
    """The module names of the model's stages s1 … s5 (``model.stages``), in order; [] without them."""
    stages = getattr(model, "stages", None) or {}
    return [stages[k] for k in sorted(stages)]


def _explain_ig(method: "Comparison", model, x, c, baseline, n_steps, layers) -> Explanation:
    """IG (Eq. 11) at the input and conductance at ``layers`` (default: the model's stages), one pass."""
    if n_steps is None:
        raise ValueError("IG has no closed form: give n_steps (the paper uses 10)")
    names = list(layers) if layers is not None else _model_stages(model)
    inp, conds = integrated_gradients_layers(model, x, c, baseline, n_steps, names)
    relevance = {"input": inp, **dict(zip(names, conds))}
    with torch.no_grad():
        z = model(x)
        z_ref = model(_check_baseline(baseline, x))
    top = torch.zeros_like(z).scatter_(1, c[:, None], 1.0) * (z - z_ref)
    return Explanation(relevance, top, method, c, z, reference_logits=z_ref, n_steps=n_steps, model=model,
                       input_shape=x.shape)


def _stage_layers(model, method: "Comparison", layers) -> List:
    """The layers of a CAM: ``layers`` as given, else the model's stages (the last one only where
    ``method.stages == "last"``)."""
    if layers is not None:
        if not layers:
            raise ValueError(f"{method.name} needs at least one layer: layers=[...] (module names), or None "
                             "for the model's stages")
        return list(layers)
    names = _model_stages(model)
    if not names:
        raise ValueError(f"{method.name} needs layers=[...] (module names) for a model without `stages`")
    return names[-1:] if method.stages == "last" else names


def _cam_explanation(method: "Comparison", model, x, c, names, maps, z) -> Explanation:
    relevance = {name: cam[:, None] for name, cam in zip(names, maps)}
    return Explanation(relevance, None, method, c, z, model=model, input_shape=x.shape)


def _gradient_cam(combine: Callable) -> Callable:
    """The explanation function of a CAM whose map combines activations and gradients (all layers:
    one forward and one backward pass)."""
    def explain(method, model, x, c, baseline, n_steps, layers) -> Explanation:
        names = _stage_layers(model, method, layers)
        acts, grads, z = _acts_grads(model, x, c, names)
        return _cam_explanation(method, model, x, c, names, [combine(a, g) for a, g in zip(acts, grads)], z)
    return explain


def _explain_scorecam(method: "Comparison", model, x, c, baseline, n_steps, layers) -> Explanation:
    names = _stage_layers(model, method, layers)
    maps = [scorecam(model, x, c, name) for name in names]
    with torch.no_grad():
        z = model(x)
    return _cam_explanation(method, model, x, c, names, maps, z)


@dataclass(frozen=True)
class Comparison:
    """A method the paper compares against (Sec. 4), with its own function and what it needs.

    ``needs_reference``: it uses the reference input ``X̂`` (IG; the argument ``baseline``, as everywhere);
    ``uses_steps``: ``n_steps`` changes it; ``stage_maps``: a class activation map, relevance at stages
    only and none at the input;
    ``stages``: the model's stages it explains by default, ``"all"`` or ``"last"`` (ScoreCAM, one
    forward per channel: it is computed at the last stage only);
    ``compute(method, model, x, target, baseline, n_steps, layers)``: the :class:`lidlib.Explanation`
    for a checked input ``x`` and (B,) targets."""
    name: str
    needs_reference: bool = False
    uses_steps: bool = False
    stage_maps: bool = False
    stages: str = "all"
    compute: Optional[Callable] = field(default=None, repr=False, compare=False)

    def explain(self, model, x, target, baseline, n_steps, layers) -> Explanation:
        return self.compute(self, model, x, target, baseline, n_steps, layers)


IG = Comparison("IG", needs_reference=True, uses_steps=True, compute=_explain_ig)
GRADCAM = Comparison("GradCAM", stage_maps=True, compute=_gradient_cam(gradcam_map))
LAYERCAM = Comparison("LayerCAM", stage_maps=True, compute=_gradient_cam(layercam_map))
SCORECAM = Comparison("ScoreCAM", stage_maps=True, stages="last", compute=_explain_scorecam)
#: the comparison methods of Sec. 4, in the paper's order
COMPARISONS = (IG, GRADCAM, LAYERCAM, SCORECAM)
