"""lidlib: layer-wise increment decomposition (LID) and the LRP family.

After Chen, Li, Shao and Sun, "Layer-wise increment decomposition-based neuron relevance
explanation for deep networks", Acta Automatica Sinica 50(10), 2024.  One call explains a batch::

    import lidlib
    e = lidlib.explain(model, x, target, method="SIG-LID-IG")
    e.relevance["input"], e.total, e.conservation()

The package mirrors the paper's panorama (Fig. 3): :mod:`lidlib.top` is the contrast axis,
:mod:`lidlib.rules` the non-linearity axis, :class:`lidlib.Method` joins them with the increment
axis, :mod:`lidlib.engine` runs the two-step algorithm (Eq. 15, 17, 22–24), and
:mod:`lidlib.explicit` is the plain message-matrix form (Eq. 2, 3, 5, 7, 13, 14, 20).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import rules, top
from .engine import check_model, propagate
from .explanation import ConservationTable, Explanation
from .methods import METHODS, Method, get_method
from .rules import Rule

__all__ = ["explain", "METHODS", "Method", "Rule", "Explanation", "ConservationTable", "rules", "top"]


def explain(model: torch.nn.Module, x: torch.Tensor, target, method: Union[str, Method] = "SIG-LID-IG", *,
            baseline: Optional[torch.Tensor] = None, n_steps: Optional[int] = 10) -> Explanation:
    """Explain class ``target`` of ``model`` at the batch ``x`` with one method of the panorama.

    ``target``: an int or a (B,) tensor of class indices.  ``baseline``: the reference input X̂,
    ``None`` for zeros (the paper's default), or a tensor broadcastable to ``x``; the LRP family has
    no reference and ignores it.  ``n_steps``: path samples for IG rules and the SIG top (paper:
    10); ``None`` is the exact limit n → ∞.  The model must be in eval mode; it is left unchanged.
    """
    m = get_method(method)
    check_model(model)
    if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1):
        raise ValueError(f"n_steps must be a positive int, or None for the exact limit; got {n_steps!r}")
    x = _as_input(model, x)
    target = _as_target(target, x.shape[0])
    baseline = _as_baseline(baseline, x)
    return propagate(model, x, target, m, baseline, n_steps)


def _as_input(model, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor batch (B, ...), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch of shape (B, ...); got shape {tuple(x.shape)} "
                         "(add a batch dimension with x[None])")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else (x.dtype if x.is_floating_point() else torch.get_default_dtype())
    x = x.to(dtype)
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values; explain finite inputs only")
    return x


def _as_target(target, batch):
    if isinstance(target, bool) or not isinstance(target, (int, torch.Tensor)):
        raise TypeError(f"target must be an int or a (B,) tensor of class indices, got {type(target).__name__}")
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.is_complex():
        raise TypeError("target must hold integer class indices")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"target must be an int or have shape ({batch},) to match the batch; got "
                         f"shape {tuple(t.shape)}")
    return t.long()


def _as_baseline(baseline, x):
    if baseline is None:
        return torch.zeros((1,) + x.shape[1:], dtype=x.dtype)
    b = torch.as_tensor(baseline, dtype=x.dtype)
    try:
        shape = torch.broadcast_shapes(b.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"baseline of shape {tuple(b.shape)} does not broadcast to the input's shape "
                         f"{tuple(x.shape)}; pass one reference per sample or one for the batch")
    if not torch.isfinite(b).all():
        raise ValueError("baseline contains NaN or infinite values")
    while b.dim() < x.dim():
        b = b[None]
    return b.expand((b.shape[0],) + x.shape[1:]).contiguous()
