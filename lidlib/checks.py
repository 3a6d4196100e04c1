"""Input checks shared by every entry point: clear errors that say what to do."""
from __future__ import annotations

import difflib
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

Target = Union[int, Sequence[int], torch.Tensor]
Layer = Union[str, nn.Module]


def _check_eval(model: nn.Module) -> None:
    bad = [name or "<model>" for name, m in model.named_modules() if m.training]
    if bad:
        raise RuntimeError(
            f"the model is in training mode ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            "call model.eval() first: dropout and batch-norm statistics would make the explanation "
            "random or batch-dependent")


def _model_dtype_device(model: nn.Module, x: torch.Tensor) -> Tuple[torch.dtype, torch.device]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    for b in model.buffers():
        if b.is_floating_point():
            return b.dtype, b.device
    return (x.dtype if x.is_floating_point() else torch.get_default_dtype()), x.device


def _as_input(model: nn.Module, x: torch.Tensor, min_dim: int = 2) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"x must have a batch dimension and at least {min_dim} dimensions, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x has an empty batch")
    dtype, device = _model_dtype_device(model, x)
    return x.detach().to(device=device, dtype=dtype)


def _check_target(target: Target, batch: int, device: torch.device) -> torch.Tensor:
    """``target`` as a (B,) long tensor; the range is checked against the logits later."""
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        t = target.detach().reshape(-1) if target.dim() <= 1 else None
        if t is None:
            raise ValueError(f"target must be an int or a (B,) tensor, got shape {tuple(target.shape)}")
        if target.dim() == 0:
            t = t.expand(batch)
    elif isinstance(target, bool):
        raise TypeError("target must be an int class index or a (B,) long tensor, got a bool")
    elif isinstance(target, numbers.Integral):
        t = torch.full((batch,), int(target), dtype=torch.long)
    elif isinstance(target, (list, tuple)) and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in target):
        t = torch.tensor([int(v) for v in target], dtype=torch.long)
    else:
        raise TypeError("target must be an int class index or a (B,) long tensor, "
                        f"got {type(target).__name__}")
    if t.numel() != batch:
        raise ValueError(f"target has {t.numel()} entries but x has batch size {batch}")
    return t.to(device=device, dtype=torch.long)


def _select(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``Z_c`` for every row of the logits ``z`` (N, K), with a clear range check."""
    if z.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, K), got {tuple(z.shape)}")
    k = z.shape[1]
    if bool(((c < 0) | (c >= k)).any()):
        bad = c[(c < 0) | (c >= k)].unique().tolist()
        raise ValueError(f"target class(es) {bad} out of range for a model with {k} outputs "
                         f"(valid: 0..{k - 1})")
    return z.gather(1, c[:, None])[:, 0]


def _check_baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, numbers.Number) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be None, a number or a tensor, got {type(baseline).__name__}")
    try:
        shape = torch.broadcast_shapes(baseline.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} cannot be broadcast to the "
                         f"input shape {tuple(x.shape)}")
    return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(x)


def _check_steps(n_steps) -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    return int(n_steps)


def _check_batch_size(bs, name: str) -> Optional[int]:
    if bs is None:
        return None
    if isinstance(bs, bool) or not isinstance(bs, numbers.Integral) or bs < 1:
        raise ValueError(f"{name} must be None or an integer >= 1, got {bs!r}")
    return int(bs)


def _resolve_layer(model: nn.Module, layer: Layer) -> Tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, m in modules.items():
            if m is layer:
                return name, m
        raise ValueError("the given layer module is not a submodule of the model")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a qualified module name (str), got {type(layer).__name__}")
    if layer in modules and layer != "":
        return layer, modules[layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    hint = close if close else names[:3] + names[-3:] if len(names) > 6 else names
    raise ValueError(f"unknown layer {layer!r}; valid names come from model.named_modules(), "
                     f"e.g. {', '.join(repr(n) for n in hint)}")
