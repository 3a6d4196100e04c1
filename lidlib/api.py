"""``explain``: one signature for every method of the paper (the panorama and the comparison methods)."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch

from .checks import _as_input, _check_baseline, _check_eval, _check_layers, _check_steps, _check_target, _resolve_layer
from .comparison import COMPARISONS, Comparison
from .engine import check_model, exclusive, propagate
from .explanation import Explanation
from .methods import Method, get_method


def explain(model: torch.nn.Module, x: torch.Tensor, target, method: Union[str, Method] = "SIG-LID-IG", *,
            baseline: Optional[torch.Tensor] = None, n_steps: Optional[int] = 10,
            layers: Optional[Sequence[str]] = None) -> Explanation:
    """Explain class ``target`` of ``model`` at the batch ``x`` with a method of :data:`lidlib.METHODS`.

    ``target``: an int or a (B,) tensor (or NumPy array) of class indices.  ``baseline``: the
    reference input X̂, ``None`` for zeros (the paper's default), a number, or a tensor broadcastable
    to ``x``; the LRP family has no reference and ignores it.  ``n_steps``: path samples for IG rules,
    the SIG top and IG (paper: 10); ``None`` is the exact limit n → ∞ (not for the baseline IG);
    methods that sample no path ignore it.  ``layers``: a list of module names whose relevance to
    keep (default: every layer; for CAMs, the model's stages — only s5 for ScoreCAM).

    The model must be in eval mode, in float32 or float64 (half precision is refused), and return
    logits; integer inputs are converted to its dtype.  It is left unchanged, also when an error is
    raised.  Explanations of one model object are serialised by a lock on that model (other threads
    wait; different models run in parallel); an explanation started from inside the model's own
    forward pass during another explanation of it raises RuntimeError (see
    :func:`lidlib.engine.exclusive`).  For repeated calls with one reference, :class:`lidlib.Explainer`
    gives the same result and skips the reference pass.
    """
    m = _check_method(get_method(method))
    _check_eval(model)
    with exclusive(model):
        if isinstance(m, Comparison):
            layers = _check_layers(layers)
            x = _finite(_as_input(model, x), "x")
            return m.explain(model, x, _check_target(target, x.shape[0], x.device), baseline, n_steps, layers)
        call = prepare(model, x, target, m, baseline, n_steps, layers)
        return propagate(model, call.x, call.target, m, call.baseline, call.n_steps, call.keep)


class Call(NamedTuple):
    """The validated arguments of one panorama explanation."""
    x: torch.Tensor
    target: torch.Tensor
    baseline: Optional[torch.Tensor]
    n_steps: Optional[int]
    keep: Optional[set]


def prepare(model, x, target, m: Method, baseline, n_steps, layers) -> Call:
    """Check a panorama call (model, input, target, reference, n_steps, layers) as :func:`explain` does."""
    check_model(model)
    n_steps = _steps(m, n_steps)
    layers = _check_layers(layers)
    x = _finite(_as_input(model, x), "x")
    target = _check_target(target, x.shape[0], x.device)
    ref = None
    if m.needs_reference:
        ref = _finite(_check_baseline(baseline, x, one=_one_reference(baseline, x)), "baseline")
    keep = None if layers is None else {_resolve_layer(model, l)[0] for l in layers}
    return Call(x, target, ref, n_steps, keep)


def _check_method(m):
    if isinstance(m, Method) and not isinstance(m.increment, bool):
        raise TypeError(f"Method.increment must be True or False, got {m.increment!r}")
    if isinstance(m, Comparison) and m not in COMPARISONS:
        raise ValueError(f"unknown baseline method {m!r}; the comparison methods are "
                         f"{', '.join(b.name for b in COMPARISONS)}: pass one of these names")
    return m


def _steps(m: Method, n_steps):
    if n_steps is None:
        return None
    if not m.uses_steps:             # ignored, as the CAMs ignore it: kept if valid, else None
        try:
            return _check_steps(n_steps)
        except ValueError:
            return None
    return _check_steps(n_steps)


def _one_reference(baseline, x) -> bool:
    """True when one reference serves the whole batch (then it is forwarded once, not B times)."""
    return (baseline is None or not isinstance(baseline, torch.Tensor) or baseline.dim() < x.dim()
            or baseline.shape[0] == 1)


def _finite(t: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; explain finite inputs only")
    return t
