"""Input checks shared by every entry point: clear errors that say what to do."""
from __future__ import annotations

import difflib
import itertools
import numbers
import threading
from contextlib import contextmanager
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

Target = Union[int, Sequence[int], torch.Tensor]
Layer = Union[str, nn.Module]


_WALK = threading.local()


def walk(model: nn.Module) -> list:
    """``list(model.named_modules())``, walked once per explanation (:func:`walking`): the recursive
    walk costs ~5 µs a module, and an explanation needs the module list a dozen times."""
    cached = getattr(_WALK, "model", None)
    if cached is not None and cached[0] is model:
        return cached[1]
    return list(model.named_modules())


def state_tensors(model: nn.Module) -> list:
    """Every parameter and buffer of ``model``, module by module (:func:`walk`; shared ones repeated)."""
    return [t for _, m in walk(model) for t in itertools.chain(m._parameters.values(), m._buffers.values())
            if t is not None]


@contextmanager
def walking(model: nn.Module):
    """Within this block, this thread's :func:`walk` of ``model`` is one list (the model's
    structure does not change during an explanation)."""
    previous = getattr(_WALK, "model", None)
    if previous is not None and previous[0] is model:
        yield
        return
    _WALK.model = (model, list(model.named_modules()))
    try:
        yield
    finally:
        _WALK.model = previous


class TrainingModeError(RuntimeError, ValueError):
    """The model is in training mode (a RuntimeError as before, and a ValueError like every other
    refused input)."""


def _check_eval(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    bad = [name or "<model>" for name, m in walk(model) if m.training]
    if bad:
        raise TrainingModeError(
            f"the model is in training mode ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            "call model.eval() first: dropout and batch-norm statistics would make the explanation "
            "random or batch-dependent")


def _check_logits_model(model: nn.Module) -> None:
    """Every method explains logits: a model ending in (or containing) Softmax is refused."""
    for name, m in walk(model):
        if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmax2d)):
            raise TypeError(f"layer {name or '<model>'!r} ({type(m).__name__}): the model must return logits; "
                            "drop the Softmax (the SG/ST/SIG methods apply the softmax themselves)")


#: dtypes lidlib explains in; half precision is refused (path averages and conservation need more bits)
FLOAT_DTYPES = (torch.float32, torch.float64)


def _model_dtype_device(model: nn.Module, x: torch.Tensor) -> Tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first floating-point parameter (or buffer), else of ``x``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = next((t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()), None)
    if found is not None:
        dtype, device = found.dtype, found.device
    else:
        dtype, device = (x.dtype if x.is_floating_point() else torch.get_default_dtype()), x.device
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"lidlib explains float32 and float64 models; this one is {dtype}, whose rounding "
                        "(~1e-3) would silently spoil the relevances: explain a float32 copy, "
                        "e.g. copy.deepcopy(model).float(), with x.float()")
    return dtype, device


def _as_input(model: nn.Module, x: torch.Tensor, min_dim: int = 2) -> torch.Tensor:
    """``x`` detached, in the model's dtype and on its device; integer tensors are converted (their
    values are kept exactly), bool and complex ones refused."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"x must hold real numbers (a float or integer tensor), got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"x must have a batch dimension and at least {min_dim} dimensions, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x has an empty batch")
    dtype, device = _model_dtype_device(model, x)
    return x.detach().to(device=device, dtype=dtype)


def _check_target(target: Target, batch: int, device: torch.device) -> torch.Tensor:
    """``target`` as a (B,) long tensor; the range is checked against the logits later.  NumPy integer
    scalars and arrays are accepted like Python ints and tensors."""
    if isinstance(target, np.ndarray):
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"target must hold integer class indices, got a NumPy array of dtype {target.dtype}")
        target = torch.as_tensor(target.astype(np.int64))
    elif isinstance(target, np.generic) and not isinstance(target, np.integer):
        raise TypeError(f"target must be an integer class index, got {type(target).__name__}")
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
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"the model must return a logits tensor of shape (B, K), it returned {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, K), got {tuple(z.shape)}")
    k = z.shape[1]
    if bool(((c < 0) | (c >= k)).any()):
        bad = c[(c < 0) | (c >= k)].unique().tolist()
        raise ValueError(f"target class(es) {bad} out of range for a model with {k} outputs "
                         f"(valid: 0..{k - 1})")
    return z.gather(1, c[:, None])[:, 0]


def _check_layers(layers) -> Optional[list]:
    """``layers`` as a list of names/modules; a lone string is refused (it would split into characters)."""
    if layers is None:
        return None
    if isinstance(layers, (str, nn.Module)):
        raise TypeError(f"layers must be a list of module names, e.g. layers=[{layers!r}], "
                        f"got a single {type(layers).__name__}")
    try:
        return list(layers)
    except TypeError:
        raise TypeError(f"layers must be a list of module names, got {type(layers).__name__}") from None


def _check_baseline(baseline, x: torch.Tensor, one: bool = False) -> torch.Tensor:
    """The reference ``X̂`` as a tensor like ``x`` (``one=True``: like ``x[:1]``, one reference for the
    whole batch); errors name the shape of ``x`` itself."""
    like = x[:1] if one else x
    if baseline is None:
        return torch.zeros_like(like)
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        return torch.full_like(like, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be None, a number or a tensor, got {type(baseline).__name__}")
    if baseline.dtype == torch.bool or baseline.is_complex():
        raise TypeError(f"baseline must hold real numbers, got dtype {baseline.dtype}")
    try:
        shape = torch.broadcast_shapes(baseline.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} cannot be broadcast to the "
                         f"input shape {tuple(x.shape)}")
    return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(like)


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
    modules = dict(walk(model))
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
