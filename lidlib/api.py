"""``explain``: one signature for every method of the paper (the panorama and the baselines)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import baselines
from .checks import _as_input, _check_baseline, _check_steps, _check_target, _resolve_layer
from .engine import check_model, propagate
from .explanation import Explanation
from .methods import Baseline, Method, get_method


def explain(model: torch.nn.Module, x: torch.Tensor, target, method: Union[str, Method] = "SIG-LID-IG", *,
            baseline: Optional[torch.Tensor] = None, n_steps: Optional[int] = 10,
            layers: Optional[Sequence[str]] = None) -> Explanation:
    """Explain class ``target`` of ``model`` at the batch ``x`` with a method of :data:`lidlib.METHODS`.

    ``target``: an int or a (B,) tensor of class indices.  ``baseline``: the reference input X̂,
    ``None`` for zeros (the paper's default), or a tensor broadcastable to ``x``; the LRP family has
    no reference and ignores it.  ``n_steps``: path samples for IG rules, the SIG top and IG (paper:
    10); ``None`` is the exact limit n → ∞ (not for the baseline IG).  ``layers``: module names whose
    relevance to keep (default: every layer; for CAMs, the model's stages — only s5 for ScoreCAM).
    The model must be in eval mode; it is left unchanged, also when an error is raised.
    """
    m = get_method(method)
    if isinstance(m, Baseline):
        return _explain_baseline(model, x, target, m, baseline, n_steps, layers)
    check_model(model)
    if n_steps is not None:
        n_steps = _check_steps(n_steps)
    x = _finite(_as_input(model, x), "x")
    target = _check_target(target, x.shape[0], x.device)
    ref = None
    if m.increment:
        ref = _finite(_check_baseline(baseline, x[:1] if _one_reference(baseline, x) else x), "baseline")
    keep = None if layers is None else {_resolve_layer(model, l)[0] for l in layers}
    return propagate(model, x, target, m, ref, n_steps, keep)


def _one_reference(baseline, x) -> bool:
    """True when one reference serves the whole batch (then it is forwarded once, not B times)."""
    return baseline is None or not isinstance(baseline, torch.Tensor) or baseline.dim() < x.dim() or baseline.shape[0] == 1


def _finite(t: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; explain finite inputs only")
    return t


def _stage_layers(model, method: Baseline, layers):
    if layers is not None:
        return list(layers)
    stages = getattr(model, "stages", None)
    if not stages:
        raise ValueError(f"{method.name} needs layers=[...] (module names) for a model without `stages`")
    names = [stages[k] for k in sorted(stages)]
    return names[-1:] if method.name == "ScoreCAM" else names


def _explain_baseline(model, x, target, m: Baseline, baseline, n_steps, layers) -> Explanation:
    x = _finite(_as_input(model, x), "x")
    c = _check_target(target, x.shape[0], x.device)
    if m.name == "IG":
        if n_steps is None:
            raise ValueError("IG has no closed form: give n_steps (the paper uses 10)")
        names = list(layers) if layers is not None else [v for _, v in sorted((getattr(model, "stages", None) or {}).items())]
        inp, conds = baselines.integrated_gradients_layers(model, x, c, baseline, n_steps, names)
        relevance = dict(zip(names, conds))
        relevance = {"input": inp, **relevance}
        with torch.no_grad():
            z = model(x)
            z_ref = model(_check_baseline(baseline, x))
        top = torch.zeros_like(z).scatter_(1, c[:, None], 1.0) * (z - z_ref)
        return Explanation(relevance, top, m, c, z, z_ref, n_steps, model, input_shape=x.shape)
    names = _stage_layers(model, m, layers)
    if m.name == "ScoreCAM":
        maps = [baselines.scorecam(model, x, c, name) for name in names]
        with torch.no_grad():
            z = model(x)
    else:
        fn = baselines.gradcam_map if m.name == "GradCAM" else baselines.layercam_map
        acts, grads, z = baselines._acts_grads(model, x, c, names)      # all stages: one pass
        maps = [fn(a, g) for a, g in zip(acts, grads)]
    relevance = {name: cam[:, None] for name, cam in zip(names, maps)}
    return Explanation(relevance, None, m, c, z, None, None, model, input_shape=x.shape)
