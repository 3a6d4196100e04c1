"""The engine: one reference pass, one forward pass with the middle rule, one backward pass.

This is the two-step algorithm of Sec. 2.3 and Algorithm 1: the backward signal is propagated
layer by layer (Eq. 17, 22), and every layer's relevance is read off as the signal times the
increment (Eq. 15, 23, 24) — ``R(Y^l) = g^{l+1} ⊙ ΔY^l``, or ``g ⊙ Y^l`` without increment (Eq. 18).
Path averages are per layer (Eq. 21), so they cost element-wise work, not extra network passes.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .checks import _check_eval
from .explanation import Explanation
from .methods import Method
from .rules import apply_rule, layer_kind
from .top import top_relevance


def check_model(model: nn.Module) -> None:
    """Raise a clear error for a model in training mode or with a layer lidlib cannot explain."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_eval(model)
    for name, m in model.named_modules():
        if next(m.children(), None) is None and layer_kind(m) is None:
            hint = (" The model must return logits: drop the final Softmax." if isinstance(m, (nn.Softmax, nn.LogSoftmax))
                    else " Supported non-linear layers: ReLU, ReLU6, LeakyReLU, Hardtanh, MaxPool2d; "
                         "linear layers: Conv, Linear, BatchNorm (eval), AvgPool, AdaptiveAvgPool, Flatten, "
                         "Dropout (eval), Identity, zero/constant padding.")
            raise TypeError(f"lidlib cannot explain layer {name or '<model>'!r} ({type(m).__name__}).{hint}")


#: non-linear functions that, called in a model's own forward code (outside a layer module), would
#: silently be treated with their local gradient: lidlib refuses them and asks for a module instead
NONLINEAR_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6,
    F.leaky_relu, F.leaky_relu_, F.hardtanh, F.hardtanh_, F.elu, F.gelu, F.silu, F.mish, F.hardswish,
    F.sigmoid, torch.sigmoid, torch.Tensor.sigmoid, F.tanh, torch.tanh, torch.Tensor.tanh,
    F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax, F.max_pool1d, F.max_pool2d,
    F.max_pool3d, torch.max_pool2d, F.adaptive_max_pool2d, torch.clamp, torch.Tensor.clamp,
    torch.clamp_min, torch.Tensor.clamp_min, torch.clamp_max, torch.Tensor.clamp_max,
    torch.maximum, torch.minimum, torch.abs, torch.Tensor.abs,
}


class _FunctionalGuard(TorchFunctionMode):
    """Raise if the model's forward code calls a non-linear function outside a layer module."""

    def __init__(self):
        super().__init__()
        self.depth = 0

    def enter(self, module, args):
        self.depth += 1

    def leave(self, module, args, output):
        self.depth -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and func in NONLINEAR_FUNCTIONS:
            name = getattr(func, "__qualname__", getattr(func, "__name__", str(func)))
            raise TypeError(f"the model's forward code calls the non-linear function {name} outside a "
                            "layer module; lidlib propagates relevance through modules only, so write it "
                            "as a module (e.g. nn.ReLU(), nn.MaxPool2d(...)) in the model")
        return func(*args, **(kwargs or {}))


@contextmanager
def patched(model: nn.Module):
    """Switch off in-place flags for the duration; restore them and remove all hooks afterwards."""
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    handles = []
    try:
        for m in inplace:
            m.inplace = False
        yield handles
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True


class _Pass:
    """Forward hooks for one network pass: record outputs, and (actual pass) substitute outputs."""

    def __init__(self, names, reference: Optional["_Pass"] = None, method: Optional[Method] = None,
                 n_steps=None):
        self.names, self.reference, self.method, self.n_steps = names, reference, method, n_steps
        self.calls = {}
        self.outputs = OrderedDict()      # key -> output tensor, in order of completion
        self.inputs = {}                  # key -> input tensor (non-linear and rule-modified layers)
        self.aliases = {}                 # container key -> key of the same output tensor

    def hook(self, module, args, output):
        if not isinstance(output, torch.Tensor):
            return None
        name = self.names[module]
        k = self.calls[name] = self.calls.get(name, 0) + 1
        key = name if k == 1 else f"{name}#{k}"
        leaf = next(module.children(), None) is None
        if not leaf:
            same = next((k for k, t in self.outputs.items() if t is output), None)
            if same is not None:          # a container handing on its last child's tensor
                self.aliases[key] = same
                return None
        if leaf and layer_kind(module) in ("elementwise", "maxpool", "linear"):
            self.inputs[key] = args[0]
        if self.method is not None and leaf:
            x = args[0]
            if self.reference is None:    # no increment: every layer's reference is 0
                x_ref, y_ref = torch.zeros((), dtype=x.dtype), torch.zeros((), dtype=x.dtype)
            else:
                x_ref, y_ref = self.reference.inputs[key], self.reference.outputs[key]
            new = apply_rule(self.method.rule, module, x, x_ref, output, y_ref, self.n_steps)
            if new is not None:
                output = new
        self.outputs[key] = output
        return output


def propagate(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: Method,
              baseline: Optional[torch.Tensor], n_steps: Optional[int], keep=None) -> Explanation:
    """Run ``method`` on an eval-mode model (inputs already validated by :func:`lidlib.explain`).

    ``keep``: names of the layers whose relevance to return (None: all); the input is always kept.
    """
    names = {m: name for name, m in model.named_modules() if name}
    leaves = [m for m in names if next(m.children(), None) is None]
    guard = _FunctionalGuard()
    with patched(model) as handles:
        reference = None
        z_ref = torch.zeros((), dtype=x.dtype)
        if method.increment:
            reference = _Pass(names)
            handles += [m.register_forward_hook(reference.hook) for m in names]
            handles += _guard_hooks(guard, leaves)
            with torch.no_grad(), guard:
                z_ref = model(baseline)
            for h in handles:
                h.remove()
            handles.clear()
        actual = _Pass(names, reference, method, n_steps)
        handles += [m.register_forward_hook(actual.hook) for m in names]
        handles += _guard_hooks(guard, leaves)
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            with guard:
                z = model(x_in)
            _check_logits(z, target, x)
            g_top, r_top = top_relevance(method.top, z.detach(), z_ref, target, n_steps, method.rule.eps)
            wanted = None if keep is None else {actual.aliases.get(k, k) for k in keep}
            keys = [k for k in actual.outputs if wanted is None or k in wanted]
            tensors = [x_in] + [actual.outputs[k] for k in keys]
            grads = torch.autograd.grad(z, tensors, grad_outputs=g_top, allow_unused=True)
    refs = [baseline if method.increment else None] + [reference.outputs[k] if reference else None for k in keys]
    relevance = _record(["input"] + keys, tensors, grads, refs, model, z_ref, g_top)
    return Explanation(relevance, r_top, method, target, z.detach(),
                       z_ref.expand_as(z).clone() if method.increment else None, n_steps, model,
                       aliases=actual.aliases, input_shape=x.shape)


def _record(keys, tensors, grads, refs, model, z_ref, g_top) -> "OrderedDict[str, torch.Tensor]":
    """``R(Y^l) = g ⊙ ΔY^l`` (Eq. 15, 23, 24), or ``g ⊙ Y^l`` without increment (Eq. 18), per layer.

    The product is written into a buffer this call owns — the layer's reference output, or its
    gradient without increment — when no other recorded tensor, parameter, buffer or the caller's
    baseline shares that memory; otherwise into a new one.  (Recording every layer of VGG-16 then
    costs a few passes over memory, not a new 110 MB each call.)"""
    shared = Counter(_storage(t) for t in list(refs) + list(grads) + [z_ref, g_top]
                     + list(model.parameters()) + list(model.buffers()) if isinstance(t, torch.Tensor))
    shared[_storage(refs[0])] += 2                          # the caller's baseline (or x̂ derived from it)
    relevance = OrderedDict()
    for key, t, g, ref in zip(keys, tensors, grads, refs):
        t = t.detach()
        if g is None:                                    # the layer does not reach the logits
            relevance[key] = torch.zeros_like(t if ref is None else t - ref)
        elif ref is None:
            own = shared[_storage(g)] == 1 and g.shape == t.shape and g.is_contiguous()
            relevance[key] = g.mul_(t) if own else g * t
        else:
            own = (shared[_storage(ref)] == 1 and ref.shape == t.shape and ref.dtype == t.dtype
                   and ref.is_contiguous())
            relevance[key] = torch.sub(t, ref, out=ref if own else None).mul_(g)
    return relevance


def _storage(t) -> int:
    return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else 0


def _guard_hooks(guard: _FunctionalGuard, leaves):
    """Count the depth inside layer modules; the leave hook runs after the rule's forward hook."""
    return ([m.register_forward_pre_hook(guard.enter) for m in leaves]
            + [m.register_forward_hook(guard.leave) for m in leaves])


def _check_logits(z, target, x):
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != x.shape[0]:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"the model must return logits of shape (batch, classes); it returned {shape}")
    bad = (target < 0) | (target >= z.shape[1])
    if bad.any():
        raise ValueError(f"target {target[bad][0].item()} is out of range: the model has {z.shape[1]} "
                         f"classes, so targets must lie in 0..{z.shape[1] - 1}")
