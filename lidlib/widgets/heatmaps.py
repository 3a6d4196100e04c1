"""Stage heatmaps of a real ImageNet network: a live explorer and its static gallery (Sec. 4.1, Fig. 4–7).

* :class:`HeatmapRenderer` does all the work, with no widget in sight: it turns a :class:`State`
  (image, method, class, stage, ``n``, reference) into a heatmap and a matplotlib figure.  It caches
  one explanation per (image, method, class, n, reference) and derives every stage from it
  (``e.heatmap(...)`` on the cached object: no extra forward or backward pass), so changing the stage
  costs only the upsampling and the drawing.
* :func:`render` is the plain function the live widget's callback calls (ipywidgets swallows
  exceptions inside callbacks, so ``tests/test_widgets.py`` drives this function directly).
* :func:`heatmap_explorer` is the live ipywidgets UI (it needs a running kernel).
* :func:`heatmap_gallery` is its static counterpart: every combination precomputed into a
  :func:`lidlib.widgets.gallery.gallery_grid`, switched in the browser with no kernel.
* :func:`scorecam_explanation` is ScoreCAM at one layer for several classes of ONE image: the same
  numbers as ``lidlib.explain(..., "ScoreCAM")`` (tested), with the masked forwards shared between
  the classes and the all-zero masks (constant channels) evaluated once.

Images are (3, H, W) tensors in [0, 1]; the renderer fits them to the model's input size once.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision.transforms.functional as TF

import lidlib  # ``lidlib.explain`` is looked up at call time, so tests can count its calls

from .. import comparison
from .. import images as _images
from .. import models as _models
from ..explanation import Explanation
from ..methods import get_method, last_stage_only
from .gallery import Gallery, gallery_grid, small_png, to_png
from .plot import relevance_colorbar, show_heatmap, update_heatmap

__all__ = ["COMPOSITE", "STAGES", "REFERENCES", "State", "HeatmapRenderer", "render", "default_renderer",
           "heatmap_explorer", "HeatmapExplorer", "heatmap_gallery", "scorecam_explanation", "write_scorecam_cache",
           "ScoreCAMCacheMismatch",
           "uses_steps", "uses_reference", "stage_label"]

#: name of the two-object composite (:func:`lidlib.images.two_object`) among the explorer's images
COMPOSITE = "two-object (coffee | cat)"
#: stage choices: single stages from the top down, then the multi-scale map (Sec. 4, stage notation)
STAGES = ("s5", "s4", "s3", "s2", "s1", "s54321")
#: reference inputs X̂ the explorer offers
REFERENCES = {"zeros": "zeros (model input 0)", "blur": "blurred image", "mean": "mean colour"}
#: target keys: class A / B of the composite, top-1 / top-2 prediction of a photo
COMPOSITE_TARGETS = ("A", "B")
PHOTO_TARGETS = ("top-1", "top-2")
BLUR_SIGMA = 8.0


def uses_steps(method) -> bool:
    """Whether ``n_steps`` changes the method: a SIG top (Sec. 3.3), a path-averaged middle rule
    (``D̄``, Eq. 21) or the comparison method IG (Eq. 11)."""
    return get_method(method).uses_steps


def uses_reference(method) -> bool:
    """Whether the method has a reference input X̂ (the LID family, DeepLIFT, IG; not LRP, not CAMs)."""
    return get_method(method).needs_reference


def stage_label(stage) -> str:
    """``5`` / ``"s5"`` -> ``"s5"``; ``(5, 4, 3, 2, 1)`` / ``"s54321"`` -> ``"s54321"``."""
    if isinstance(stage, (tuple, list)):
        return "s" + "".join(str(int(s)) for s in stage)
    return stage if isinstance(stage, str) else f"s{int(stage)}"


@dataclass(frozen=True)
class State:
    """Everything the explorer's controls choose.

    ``target``: ``"A"`` / ``"B"`` (classes of the composite) or ``"top-1"`` / ``"top-2"`` (predictions
    of a photo).  ``stage``: one of :data:`STAGES`.  ``n_steps``: path samples (ignored with
    ``exact=True``, which asks for the closed-form limit n → ∞).  ``reference``: a key of :data:`REFERENCES`.
    """
    image: str = COMPOSITE
    method: str = "SIG-LID-IG"
    target: str = "A"
    stage: str = "s54321"
    n_steps: int = 10
    exact: bool = False
    reference: str = "zeros"

    @classmethod
    def of(cls, state: Union["State", Mapping]) -> "State":
        """A :class:`State` from a State or a mapping of its fields (unknown fields are an error)."""
        if isinstance(state, State):
            return state
        if not isinstance(state, Mapping):
            raise TypeError("state must be a lidlib.widgets.heatmaps.State or a dict of its fields, "
                            f"got {type(state).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(state) - fields)
        if unknown:
            raise ValueError(f"unknown state field(s) {unknown}; the fields are {sorted(fields)}")
        return cls(**state)


# ---------------------------------------------------------------------------------------------------------------------
# ScoreCAM for several classes of one image
# ---------------------------------------------------------------------------------------------------------------------

def scorecam_explanation(model, x: torch.Tensor, targets: Sequence[int], layer: Optional[str] = None,
                        batch_size: int = 32, *, cache: Optional[Union[str, Path]] = None,
                        check: int = 16) -> Explanation:
    """ScoreCAM of ONE image ``x`` (1, 3, H, W) for the classes ``targets``, as an :class:`Explanation`
    with one row per class and relevance only at ``layer`` (default: the model's stage s5).

    Same formula and the same masked forwards as :func:`lidlib.comparison.scorecam` (upsampled channel
    ``A_k``, min-max normalised to a mask ``M_k``; ``w = softmax_k Z_c(X ⊙ M_k)``;
    ``cam = ReLU(Σ_k w_k A_k)``): one forward per non-constant channel serves every class, and all
    constant channels share one forward of ``0 · X`` (:func:`lidlib.comparison.scorecam_scores`).
    ``e.scorecam_forwards`` is the number of masked images evaluated.

    ``cache``: a results file written by :func:`write_scorecam_cache` (ScoreCAM costs one forward per
    channel: 800+ on EfficientNet-Lite0).  If it holds the scores of this model, layer, image and
    classes, they are used, after ``check`` randomly chosen channels (and the constant ones) have been
    evaluated again and compared: a mismatch raises :class:`ScoreCAMCacheMismatch`.  Otherwise (no file,
    another model or image) every channel is evaluated.  ``e.scorecam_checked`` is the number of
    channels re-evaluated against the file (``None`` without it), ``e.scorecam_live`` the number of
    non-constant channels.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image batch (1, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    layer, c, z, a, masks, live = _scorecam_setup(model, x, targets, layer)
    saved = _read_scorecam_cache(cache, _scorecam_key(model, x, layer), c) if cache is not None else None
    checked = None
    if saved is None:
        scores, forwards = comparison.scorecam_scores(model, x[0], masks, live, batch_size)
        scores_c = scores[:, c]                                             # (C, len(c)): Z_c(X ⊙ M_k)
    else:
        scores_c = saved.to(z.dtype)
        k_live, k_dead = torch.nonzero(live).flatten(), torch.nonzero(~live).flatten()
        pick = k_live[torch.randperm(len(k_live))[:check]]
        sample = torch.cat([pick, k_dead[:1]]).sort().values
        fresh, forwards = comparison.scorecam_scores(model, x[0], masks[sample], live[sample], batch_size)
        fresh = fresh[:, c]
        tol = 1e-4 * max(1.0, float(scores_c.abs().max()))
        if not torch.allclose(fresh, scores_c[sample], rtol=1e-4, atol=tol):
            worst = float((fresh - scores_c[sample]).abs().max())
            raise ScoreCAMCacheMismatch(
                f"{cache}: the saved ScoreCAM scores differ from the ones evaluated now (largest difference "
                f"{worst:.3g} at the channels {sample.tolist()[:8]}...). The file is stale (another model, "
                f"lidlib or image version): delete it and write it again with "
                f"lidlib.widgets.heatmaps.write_scorecam_cache(path, model, x, targets)")
        checked = len(sample)
    cam = comparison.scorecam_map(scores_c.T, a[None])                      # softmax over channels, per class
    e = Explanation({layer: cam[:, None]}, None, get_method("ScoreCAM"), c, z.expand(len(c), -1).clone(),
                    model=model, input_shape=(len(c),) + tuple(x.shape[1:]))
    e.scorecam_forwards = forwards
    e.scorecam_checked = checked
    e.scorecam_live = int(live.sum())
    return e


def _scorecam_setup(model, x, targets, layer):
    """Checks, then the layer, classes, logits, the layer's output ``A`` (C, h, w), masks and live channels."""
    if any(m.training for m in model.modules()):
        raise RuntimeError("the model is in training mode; call model.eval() first")
    if layer is None:
        stages = getattr(model, "stages", None) or {}
        if "s5" not in stages:
            raise ValueError("the model has no stage s5: pass layer=<module name>")
        layer = stages["s5"]
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        raise ValueError(f"unknown layer {layer!r}; use a name from model.named_modules()")
    c = torch.as_tensor(list(targets), dtype=torch.long)
    if c.dim() != 1 or len(c) == 0:
        raise ValueError("targets must be a non-empty sequence of class indices")
    captured = []
    handle = modules[layer].register_forward_hook(lambda mod, args, out: captured.append(out.detach().clone()))
    try:
        with torch.no_grad():
            z = model(x)
    finally:
        handle.remove()
    if not (0 <= int(c.min()) and int(c.max()) < z.shape[1]):
        raise ValueError(f"targets {c.tolist()} out of range for {z.shape[1]} classes")
    a = captured[0][0]                                                      # (C, h, w)
    masks, live = comparison.scorecam_masks(a[None], x.shape[-2:])
    return layer, c, z, a, masks[0], live[0]


class ScoreCAMCacheMismatch(RuntimeError):
    """A ScoreCAM results file no longer matches what the model computes now."""


def _scorecam_key(model, x: torch.Tensor, layer: str) -> str:
    """What the saved scores depend on: the model (name, size, a checksum of its weights), the layer,
    and the input image (shape and three checksums, two of them position-weighted), to 5 significant digits."""
    params = list(model.parameters())
    total = sum(float(p.detach().double().sum()) for p in params)
    xd = x.detach().double().flatten()
    pos = torch.arange(1, len(xd) + 1, dtype=torch.float64) / len(xd)         # position-weighted: a flip changes it
    sums = [float(xd.sum()), float((xd * pos).sum()), float((xd * torch.sin(40.0 * pos)).sum())]
    return json.dumps({"model": getattr(model, "display_name", type(model).__name__), "layer": layer,
                       "parameters": sum(p.numel() for p in params), "weights": f"{total:.5g}",
                       "input": [list(x.shape)] + [f"{v:.5g}" for v in sums]})


def _read_scorecam_cache(path, key: str, c: torch.Tensor) -> Optional[torch.Tensor]:
    """The saved scores (C, len(c)) of classes ``c`` if ``path`` holds them for ``key``, else None."""
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        if str(f["key"]) != key:
            return None
        classes = [int(k) for k in f["classes"]]
        if not all(int(k) in classes for k in c):
            return None
        scores = torch.from_numpy(f["scores"].astype(np.float64))
    return scores[:, [classes.index(int(k)) for k in c]]


def write_scorecam_cache(path, model, x: torch.Tensor, targets: Sequence[int], layer: Optional[str] = None,
                         batch_size: int = 32) -> Path:
    """Evaluate every masked image of ScoreCAM once and save the target logits ``Z_c(X ⊙ M_k)``
    (channels × classes) with what they depend on, for :func:`scorecam_explanation`'s ``cache``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        raise ValueError("x must be one image batch (1, C, H, W)")
    layer, c, _, _, masks, live = _scorecam_setup(model, x, targets, layer)
    scores, _ = comparison.scorecam_scores(model, x[0], masks, live, batch_size)
    c = c.tolist()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, key=np.array(_scorecam_key(model, x, layer)), classes=np.array(c),
                        scores=scores[:, c].detach().cpu().numpy().astype(np.float32))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The renderer: state -> explanation (cached) -> heatmap -> figure
# ---------------------------------------------------------------------------------------------------------------------

def _default_images(size: int) -> Dict[str, Tuple[torch.Tensor, Optional[Tuple[int, int]]]]:
    two = _images.two_object(size)
    out = {COMPOSITE: (two.image, tuple(two.classes))}
    for name in _images.PHOTOS:
        out[name] = (_images.photo(name), None)
    return out


class HeatmapRenderer:
    """State -> heatmap -> figure for one model, with a cache of explanations.

    ``images``: name -> (3, H, W) image in [0, 1], or name -> ``(image, (class_A, class_B))`` for an
    image with two known classes (the targets are then ``"A"``/``"B"``; otherwise the model's top-1 and
    top-2 predictions).  Default: the composite :data:`COMPOSITE` and the photos of
    :data:`lidlib.images.PHOTOS`.  ``size``: the input side (default ``model.input_size``).
    ``explanations_computed`` counts the explanations actually computed (cache misses).
    ``scorecam_cache``: a ScoreCAM results file (see :func:`scorecam_explanation`).
    """

    def __init__(self, model=None, images: Optional[Mapping] = None, *, size: Optional[int] = None,
                 figsize=(3.9, 3.4), dpi: int = 100, scorecam_cache: Optional[Union[str, Path]] = None):
        self.model = _models.imagenet() if model is None else model
        self.size = int(size or getattr(self.model, "input_size", 224))
        raw = _default_images(self.size) if images is None else dict(images)
        if not raw:
            raise ValueError("images is empty: give at least one image (name -> (3, H, W) tensor in [0, 1])")
        self.images: Dict[str, torch.Tensor] = {}
        self.pairs: Dict[str, Tuple[int, int]] = {}
        for name, v in raw.items():
            img, pair = (v if isinstance(v, tuple) else (v, None))
            self.images[name] = _images.fit(img, self.size)
            if pair is not None:
                self.pairs[name] = (int(pair[0]), int(pair[1]))
        self.categories = list(getattr(self.model, "categories", None) or [])
        self.figsize, self.dpi = figsize, dpi
        self.scorecam_cache = scorecam_cache
        self.cache: Dict[tuple, Tuple[Explanation, int]] = {}
        self.explanations_computed = 0
        self._inputs: Dict[str, torch.Tensor] = {}
        self._probs: Dict[str, torch.Tensor] = {}
        self._refs: Dict[Tuple[str, str], Optional[torch.Tensor]] = {}
        self._explainers: Dict[str, lidlib.Explainer] = {}    # method -> its Explainer (reference pass reused)

    # -- inputs, classes, references ----------------------------------------------------------------------------------
    def input(self, image: str) -> torch.Tensor:
        """The model input (1, 3, S, S) of image ``image``."""
        self._check_image(image)
        if image not in self._inputs:
            self._inputs[image] = self.model.preprocess(self.images[image])[None]
        return self._inputs[image]

    def probabilities(self, image: str) -> torch.Tensor:
        """Softmax output (K,) of the model on ``image`` (one forward pass, cached)."""
        if image not in self._probs:
            with torch.no_grad():
                self._probs[image] = torch.softmax(self.model(self.input(image)), dim=1)[0]
        return self._probs[image]

    def class_name(self, index: int) -> str:
        return self.categories[index] if index < len(self.categories) else f"class {index}"

    def target_keys(self, image: str) -> Tuple[str, ...]:
        self._check_image(image)
        return COMPOSITE_TARGETS if image in self.pairs else PHOTO_TARGETS

    def class_index(self, image: str, target: str) -> int:
        """ImageNet index of target ``"A"``/``"B"`` (two-class images) or ``"top-1"``/``"top-2"``."""
        keys = self.target_keys(image)
        if target not in keys:
            raise ValueError(f"target {target!r} is not available for image {image!r}; choose one of {keys}")
        if image in self.pairs:
            return self.pairs[image][keys.index(target)]
        return int(self.probabilities(image).topk(2).indices[keys.index(target)])

    def target_options(self, image: str):
        """``[(label, key)]`` for a dropdown: ``"A: Egyptian cat (P = 0.67)"`` etc."""
        p = self.probabilities(image)
        out = []
        for key in self.target_keys(image):
            k = self.class_index(image, key)
            out.append((f"{key}: {self.class_name(k)} (P = {float(p[k]):.2f})", key))
        return out

    def reference(self, image: str, kind: str) -> Optional[torch.Tensor]:
        """The reference input X̂ (1, 3, S, S): ``None`` for zeros (lidlib's default), the preprocessed
        Gaussian-blurred image (σ = :data:`BLUR_SIGMA` pixels), or the image's mean colour."""
        if kind not in REFERENCES:
            raise ValueError(f"unknown reference {kind!r}; choose one of {list(REFERENCES)}")
        self._check_image(image)
        if (image, kind) not in self._refs:
            img = self.images[image]
            if kind == "zeros":
                ref = None
            elif kind == "blur":
                k = int(4 * BLUR_SIGMA) | 1
                ref = self.model.preprocess(TF.gaussian_blur(img, [k, k], [BLUR_SIGMA, BLUR_SIGMA]))[None]
            else:
                ref = self.model.preprocess(img.mean(dim=(1, 2), keepdim=True).expand_as(img))[None]
            self._refs[(image, kind)] = ref
        return self._refs[(image, kind)]

    def _check_image(self, image: str) -> None:
        if image not in self.images:
            raise ValueError(f"unknown image {image!r}; choose one of {list(self.images)}")

    # -- explanations -------------------------------------------------------------------------------------------------
    def key(self, image: str, method: str, class_index: int, n_steps: Optional[int], reference: str) -> tuple:
        """Cache key; ``n`` and the reference are dropped for methods they do not affect."""
        return (image, method, int(class_index), n_steps if uses_steps(method) else "-",
                reference if uses_reference(method) else "-")

    def explain(self, image: str, method: str, targets: Sequence[str] = None, *, n_steps: int = 10,
                exact: bool = False, reference: str = "zeros") -> Explanation:
        """Explain ``image`` for several targets in ONE batch (copies of the image), fill the cache, and
        return the batched :class:`~lidlib.Explanation` (row i = ``targets[i]``).  Cached rows are reused
        only when every target is cached in the same explanation."""
        m = get_method(method)
        method = m.name
        targets = tuple(self.target_keys(image) if targets is None else targets)
        n = self._steps(method, n_steps, exact)
        idx = [self.class_index(image, t) for t in targets]
        self.reference(image, reference)
        keys = [self.key(image, method, k, n, reference) for k in idx]
        hits = [self.cache.get(k) for k in keys]
        if all(h is not None for h in hits) and len({id(h[0]) for h in hits}) == 1 \
                and [h[1] for h in hits] == list(range(len(keys))):
            return hits[0][0]
        x = self.input(image)
        if method == "ScoreCAM":
            e = scorecam_explanation(self.model, x, idx, cache=self.scorecam_cache)
        else:
            if method not in self._explainers:
                layers = list(getattr(self.model, "stages", {}).values()) or None
                self._explainers[method] = lidlib.Explainer(self.model, m, layers=layers)
            ex = self._explainers[method]
            ex.baseline, ex.n_steps = self.reference(image, reference), n   # same baseline object: cache hit
            e = ex(x.expand(len(idx), -1, -1, -1), torch.tensor(idx))
        self.explanations_computed += 1
        for row, k in enumerate(keys):
            self.cache[k] = (e, row)
        return e

    def explanation(self, state) -> Tuple[Explanation, int]:
        """``(explanation, row)`` for a state: from the cache, or computed for that one class."""
        s = self._check(state)
        k = self.key(s.image, s.method, self.class_index(s.image, s.target),
                     self._steps(s.method, s.n_steps, s.exact), s.reference)
        if k not in self.cache:
            self.explain(s.image, s.method, (s.target,), n_steps=s.n_steps, exact=s.exact, reference=s.reference)
        return self.cache[k]

    @staticmethod
    def _steps(method: str, n_steps, exact: bool) -> Optional[int]:
        if exact:
            if method == "IG":
                raise ValueError("IG has no closed-form limit: untick 'exact' and choose n")
            return None
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        return int(n_steps)

    def _check(self, state) -> State:
        s = State.of(state)
        self._check_image(s.image)
        get_method(s.method)                                               # ValueError listing the methods
        if s.stage not in STAGES:
            raise ValueError(f"unknown stage {s.stage!r}; choose one of {STAGES}")
        if last_stage_only(s.method) and s.stage != "s5":
            raise ValueError(f"{s.method} is computed at stage s5 only (one forward pass per channel); choose s5")
        if s.reference not in REFERENCES:
            raise ValueError(f"unknown reference {s.reference!r}; choose one of {list(REFERENCES)}")
        self.class_index(s.image, s.target)
        self._steps(s.method, s.n_steps, s.exact)
        return s

    # -- heatmaps and figures -----------------------------------------------------------------------------------------
    def heatmap(self, state) -> torch.Tensor:
        """The (S, S) heatmap of a state: ``e.heatmap(stage)`` of the cached explanation, one row."""
        s = self._check(state)
        e, row = self.explanation(s)
        return e.heatmap(s.stage)[row]

    def title(self, state) -> str:
        s = State.of(state)
        k = self.class_index(s.image, s.target)
        p = float(self.probabilities(s.image)[k])
        extra = []
        if uses_steps(s.method):
            extra.append("exact" if s.exact else f"n={s.n_steps}")
        if uses_reference(s.method):
            extra.append(f"X̂: {s.reference}")
        head = f"{s.method}-{s.stage}" + (f" ({', '.join(extra)})" if extra else "")
        return f"{head}\n{s.target}: {self.class_name(k)}, P = {p:.2f}"

    def render(self, state) -> "plt.Figure":
        """The figure of a state: the heatmap over a grey copy of the photo (red +, blue −, white 0)."""
        s = self._check(state)
        h = self.heatmap(s)
        fig, ax = plt.subplots(figsize=self.figsize, dpi=self.dpi)
        show_heatmap(ax, h, image=self.images[s.image], title=self.title(s))
        fig.tight_layout()
        return fig


_DEFAULT: Dict[str, HeatmapRenderer] = {}


def default_renderer() -> HeatmapRenderer:
    """One shared renderer on :func:`lidlib.models.imagenet` (created on first use)."""
    if "r" not in _DEFAULT:
        _DEFAULT["r"] = HeatmapRenderer()
    return _DEFAULT["r"]


def render(state, renderer: Optional[HeatmapRenderer] = None) -> "plt.Figure":
    """The plain function behind the explorer: ``state`` (a :class:`State` or a dict of its fields) -> Figure.

    Raises ``ValueError`` for a bad state (unknown image, method, class, stage or reference;
    ``exact`` with IG; a stage other than s5 with ScoreCAM).
    """
    return (renderer or default_renderer()).render(state)


# ---------------------------------------------------------------------------------------------------------------------
# The live explorer
# ---------------------------------------------------------------------------------------------------------------------

class HeatmapExplorer(widgets.VBox):
    """Controls above a heatmap; every change calls :meth:`HeatmapRenderer.render` (needs a kernel).

    Attributes: ``renderer``, ``controls`` (dict of the widgets by state field), ``image`` (the
    :class:`ipywidgets.Image`), ``status`` (an HTML line: timing, cache, or the error of a bad state),
    ``state`` (the current :class:`State`) and ``update()`` (the callback, callable directly).
    """

    def __init__(self, renderer: HeatmapRenderer, state: Optional[State] = None, width: str = "360px"):
        s = State.of(state) if state is not None else State(image=next(iter(renderer.images)))
        self.renderer = renderer
        style = {"description_width": "initial"}
        c = {
            "image": widgets.Dropdown(options=list(renderer.images), value=s.image, description="Image:", style=style),
            "method": widgets.Dropdown(options=list(lidlib.METHODS), value=s.method, description="Method:",
                                       style=style),
            "target": widgets.Dropdown(options=renderer.target_options(s.image), value=s.target,
                                       description="Class:", style=style),
            "stage": widgets.ToggleButtons(options=list(STAGES), value=s.stage, description="Stage:",
                                           style={"description_width": "initial", "button_width": "auto"}),
            "n_steps": widgets.IntSlider(value=s.n_steps, min=1, max=50, description="n:", style=style,
                                         continuous_update=False),
            "exact": widgets.Checkbox(value=s.exact, description="exact (n → ∞)", indent=False),
            "reference": widgets.Dropdown(options=[(v, k) for k, v in REFERENCES.items()], value=s.reference,
                                          description="Reference X̂:", style=style),
        }
        self.controls = c
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=f"min(100%, {width})"))
        self.status = widgets.HTML()
        self._busy = False
        wrap = widgets.Layout(flex_flow="row wrap")
        super().__init__([widgets.HBox([c["image"], c["method"]], layout=wrap), c["target"], c["stage"],
                          widgets.HBox([c["n_steps"], c["exact"], c["reference"]], layout=wrap),
                          self.status, self.image])
        c["image"].observe(self._image_changed, names="value")
        for name, w in c.items():
            if name != "image":
                w.observe(self.update, names="value")
        self.update()

    @property
    def state(self) -> State:
        return State(**{k: w.value for k, w in self.controls.items()})

    def _image_changed(self, change=None):
        self._busy = True                          # new class options fire a change: draw once, below
        try:
            keys = self.renderer.target_keys(self.controls["image"].value)
            old = self.controls["target"].value
            self.controls["target"].options = self.renderer.target_options(self.controls["image"].value)
            self.controls["target"].value = old if old in keys else keys[0]
        finally:
            self._busy = False
        self.update()

    def _set(self, name: str, value) -> None:
        """Set a control without triggering a redraw (the caller draws once)."""
        self._busy = True
        try:
            self.controls[name].value = value
        finally:
            self._busy = False

    def update(self, change=None) -> None:
        """Redraw for the current controls (the callback of every control)."""
        if self._busy:
            return
        s = self.state
        if s.method == "ScoreCAM" and s.stage != "s5":          # ScoreCAM exists at s5 only
            self._set("stage", "s5")
        if s.method == "IG" and s.exact:                         # IG has no closed form
            self._set("exact", False)
        s = self.state
        self.controls["n_steps"].disabled = s.exact or not uses_steps(s.method)
        self.controls["exact"].disabled = not uses_steps(s.method) or s.method == "IG"
        self.controls["reference"].disabled = not uses_reference(s.method)
        before = self.renderer.explanations_computed
        if s.method == "ScoreCAM":
            self.status.value = "<small>ScoreCAM: one forward pass per channel of s5, this takes a while …</small>"
        t0 = time.perf_counter()
        try:
            self.image.value = to_png(self.renderer.render(s))
        except Exception as err:              # a bad combination: say why, keep the last image
            self.status.value = f"<span style='color:#b00'>⚠ {type(err).__name__}: {err}</span>"
            return
        hit = "cached explanation" if self.renderer.explanations_computed == before else "new explanation"
        self.status.value = f"<small>{hit}, {time.perf_counter() - t0:.2f} s</small>"


def heatmap_explorer(model=None, images: Optional[Mapping] = None, *, renderer: Optional[HeatmapRenderer] = None,
                     state: Optional[Union[State, Mapping]] = None, width: str = "360px") -> HeatmapExplorer:
    """The live explorer: image, method, class, stage, n (or exact) and reference -> heatmap.

    Give a ``model`` and ``images`` (see :class:`HeatmapRenderer`), or a ``renderer`` whose cache is
    reused (e.g. the one that drew a chapter's figures).  Default: :func:`lidlib.models.imagenet` and
    the composite plus the bundled photos.  The first heatmap is drawn now.
    """
    if renderer is None:
        renderer = HeatmapRenderer(model, images) if (model is not None or images is not None) else default_renderer()
    return HeatmapExplorer(renderer, state, width)


# ---------------------------------------------------------------------------------------------------------------------
# The static gallery
# ---------------------------------------------------------------------------------------------------------------------

def heatmap_gallery(renderer: HeatmapRenderer, image: str, methods: Sequence[str], targets: Sequence[str] = None,
                    stages: Sequence[str] = STAGES, *, n_steps: int = 10, reference: str = "zeros",
                    figsize=(3.9, 3.3), dpi: int = 100, width: Optional[str] = None, colors: int = 256) -> Gallery:
    """Every (method, target) × stage heatmap of one image, precomputed into a
    :func:`lidlib.widgets.gallery.gallery_grid` that switches in the built page with no kernel.

    Rows are ``"<method> · <target label>"``, columns the stages.  Each (method, image) is explained once
    for all ``targets`` in one batch (through the renderer's cache), so the cost is
    ``len(methods)`` explanations plus ``len(methods) · len(targets) · len(stages)`` small PNGs
    (``figsize`` inches at ``dpi``, each with its colour bar, reduced to ``colors`` palette colours: they
    all go into the page).  One figure is redrawn for every map, so all images have the same size.
    """
    targets = tuple(renderer.target_keys(image) if targets is None else targets)
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; choose from {STAGES}")
    for method in methods:
        if method == "ScoreCAM" and any(s != "s5" for s in stages):
            raise ValueError("ScoreCAM is computed at stage s5 only: use stages=('s5',) or leave it out")
    # one figure, redrawn for every map (update_heatmap): the same size for all, and no new figure each time
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    # laid out once, for the widest colour-bar labels a map can have ("-8.8e-38"), so none is cut later
    im = show_heatmap(ax, torch.full((renderer.size, renderer.size), -8.8e-38), image=renderer.images[image],
                      title=" ")
    fig.tight_layout()
    images = {}
    try:
        for method in methods:
            renderer.explain(image, method, targets, n_steps=n_steps, reference=reference)
            for t in targets:
                k = renderer.class_index(image, t)
                row = f"{method} · {t}: {renderer.class_name(k)}"
                for s in stages:
                    state = State(image=image, method=method, target=t, stage=s, n_steps=n_steps, reference=reference)
                    update_heatmap(im, renderer.heatmap(state))
                    ax.set_title(f"{method}-{s}, {t}: {renderer.class_name(k)}", fontsize=9)
                    images[(row, s)] = small_png(fig, colors, close=False, tight=False)
    finally:
        plt.close(fig)
    return gallery_grid(images, descriptions=("Method · class:", "Stage:"), controls=("dropdown", "toggle"),
                        width=width)


def stage_grid(renderer: HeatmapRenderer, image: str, methods: Sequence[str], target: str,
               stages: Sequence[str] = ("s5", "s4", "s3", "s2", "s1"), *, n_steps: int = 10,
               reference: str = "zeros", cell: float = 1.9) -> "plt.Figure":
    """A methods × stages grid of heatmaps over the photo (the layout of the paper's Fig. 5 and 6)."""
    fig, axes = plt.subplots(len(methods), len(stages), figsize=(cell * len(stages) + 0.8, cell * len(methods) + 0.3),
                             squeeze=False, layout="constrained")
    for i, method in enumerate(methods):
        for j, s in enumerate(stages):
            st = State(image=image, method=method, target=target, stage=s, n_steps=n_steps, reference=reference)
            show_heatmap(axes[i, j], renderer.heatmap(st), image=renderer.images[image], colorbar=False)
            if i == 0:
                axes[i, j].set_title(s, fontsize=12)
        axes[i, 0].set_ylabel(method, fontsize=12)
    relevance_colorbar(fig, axes)
    k = renderer.class_index(image, target)
    fig.suptitle(f"class {target}: {renderer.class_name(k)}", fontsize=13)
    return fig
