"""The non-linearity axis: the middle rule, i.e. what replaces the local Jacobian ``D^l``.

In gradient form every method propagates a backward signal ``g`` (Eq. 17, 22) and reads the
relevance of a layer as ``R(Y^l) = g^{l+1} ⊙ ΔY^l`` (Eq. 15, 23, 24).  A middle rule says which
matrix each layer contributes to that backward pass:

* ``D``  — the local Jacobian at the actual input (LID-Taylor, Eq. 12–15; the plain gradient);
* ``D̄``  — the Jacobian averaged on the straight path ``Ŷ^{l-1} → Y^{l-1}`` (LID-IG, Eq. 19–21),
  with ``n`` right-Riemann samples or, for ``n = None``, in closed form: the secant slope
  ``(σ(y) − σ(ŷ)) / (y − ŷ)`` for an element-wise layer and, for max-pool, the fraction of the
  path on which each input is its window's maximum;
* ``W⁺`` scaled — the z⁺ rule of DTD (Eq. 9), a modified gradient at conv/linear layers;
* the LRP-0 "pass" at activations and winner-take-all at max-pool (Sec. 1.2): with the zero
  reference of the LRP family the pass rule *is* the secant slope ``σ(y)/y`` and WTA *is* the
  local max-pool gradient — the same rule as DeepLIFT's Rescale (Eq. 7 with Rescale at ReLU).

A :class:`Rule` names one choice per kind of layer.  The functions here build the replacement
output of one layer call: the same values, with the rule's matrix in the backward pass.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .paths import gauss_kronrod, riemann_points, right_riemann
from .top import stabilize

try:                                   # torchvision's own layers, where it is installed
    from torchvision.models.convnext import LayerNorm2d as _LayerNorm2d
    from torchvision.ops.misc import Permute as _Permute
    from torchvision.ops.stochastic_depth import StochasticDepth as _StochasticDepth
except ImportError:                    # pragma: no cover
    _Permute = _StochasticDepth = _LayerNorm2d = None


class _EmptySequential:
    """Stands for an empty ``nn.Sequential()`` (an identity, e.g. ShuffleNetV2's stride-1 branch)."""


@dataclass(frozen=True)
class Family:
    """One kind of layer, and the single place that says how lidlib treats it.

    ``kind``: ``"linear"`` (the Jacobian is a constant ``W^l``; every rule passes it on),
    ``"piecewise"`` (element-wise, piecewise linear: closed-form ``D̄``, Eq. 21), ``"smooth"``
    (any other element-wise σ: ``D̄`` from σ' at the samples, the secant slope exactly),
    ``"maxpool"``, ``"norm"`` (a layer-local path average of the layer's Jacobian: samples, or a
    Gauss–Kronrod quadrature whose error is measured), ``"attention"`` (the same for a
    self-attention call, :class:`SelfAttention`) or ``"refused"`` (with ``hint``).
    ``modules``: layer types; ``functions``: names of the torch functions that compute the same
    thing in a model's forward code; ``as_module(args, kwargs) -> (layer, input)`` builds the layer
    of such a call (default: ``modules[0]()``)."""
    name: str
    kind: str
    modules: tuple = ()
    functions: tuple = ()
    as_module: Optional[Callable] = None
    hint: str = ""


class _Call(nn.Module):
    """A forward-code call ``f(x, *args, **kwargs)`` of an element-wise function, as a layer."""

    def __init__(self, f, args=(), kwargs=None):
        super().__init__()
        self.f, self.args, self.kwargs = f, tuple(args), dict(kwargs or {})

    def forward(self, x):
        return self.f(x, *self.args, **self.kwargs)


def _no_inplace(kwargs):
    return {k: v for k, v in (kwargs or {}).items() if k != "inplace"}


def _positional(names):
    """``as_module`` for a layer type whose constructor takes the call's arguments after ``x``."""
    def build(cls):
        def as_module(args, kwargs):
            kw = dict(zip(names, args[1:]), **_no_inplace(kwargs))
            return cls(**{k: v for k, v in kw.items() if k in names}), args[0]
        return as_module
    return build


#: every kind of layer lidlib knows, in one table: the supported-layer list, the error hint, the
#: rule dispatch (:func:`apply_rule`, the engine's forward-code guard) and the tests all read it.
#: Supporting a new element-wise activation is one entry (or :func:`register_elementwise`).
FAMILIES = [
    Family("affine", "linear", (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d,
                                nn.BatchNorm3d)),
    Family("average pooling", "linear", (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                                         nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
           ("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
            "adaptive_avg_pool3d", "mean", "sum")),
    Family("reshaping and identity", "linear",
           tuple(t for t in (nn.Flatten, nn.Unflatten, nn.Identity, _EmptySequential, _Permute) if t is not None),
           ("flatten", "view", "reshape", "view_as", "reshape_as", "transpose", "permute", "contiguous",
            "squeeze", "unsqueeze", "chunk", "split", "unbind", "cat", "concat", "concatenate", "stack",
            "__getitem__", "narrow", "expand", "expand_as", "clone", "to", "type_as", "flip")),
    Family("dropout and stochastic depth (eval)", "linear",
           tuple(t for t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, _StochasticDepth)
                 if t is not None), ("dropout", "dropout1d", "dropout2d", "dropout3d", "stochastic_depth")),
    Family("zero/constant padding", "linear", (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d,
                                               nn.ConstantPad2d, nn.ConstantPad3d)),
    Family("sums", "linear", (), ("add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "neg", "__neg__")),
    Family("division by a constant", "linear", (), ("div", "__truediv__", "true_divide")),
    Family("constants shaped like an activation", "linear", (),
           ("zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full", "new_empty")),
    Family("ReLU", "piecewise", (nn.ReLU,), ("relu", "relu_"), lambda a, k: (nn.ReLU(), a[0])),
    Family("ReLU6", "piecewise", (nn.ReLU6,), ("relu6",), lambda a, k: (nn.ReLU6(), a[0])),
    Family("LeakyReLU", "piecewise", (nn.LeakyReLU,), ("leaky_relu", "leaky_relu_"),
           _positional(("negative_slope",))(nn.LeakyReLU)),
    Family("Hardtanh", "piecewise", (nn.Hardtanh,), ("hardtanh", "hardtanh_"),
           _positional(("min_val", "max_val"))(nn.Hardtanh)),
    Family("smooth activations", "smooth",
           (nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.CELU, nn.SELU,
            nn.Softplus, nn.Mish, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid),
           ("silu", "gelu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "elu", "elu_", "celu", "selu",
            "softplus", "mish", "softsign", "logsigmoid")),
    Family("max-pooling", "maxpool", (nn.MaxPool2d,), ("max_pool2d", "max_pool2d_with_indices"),
           _positional(("kernel_size", "stride", "padding", "dilation", "ceil_mode"))(nn.MaxPool2d)),
    Family("products of two tensors", "product", (), ("mul", "__mul__", "__rmul__", "multiply")),
    Family("normalisation", "norm", (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
           + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())),
    Family("self-attention", "attention", (nn.MultiheadAttention,)),
    Family("transformer and recurrent layers", "refused",
           (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer, nn.RNNBase),
           hint="their fused inference path skips their sub-layers, and a recurrence has no path-averaged rule "
                "in lidlib; write the block from nn.MultiheadAttention (self-attention), LayerNorm and Linear "
                "layers, as torchvision's Vision Transformer does"),
    Family("output softmax", "refused", (nn.Softmax, nn.LogSoftmax, nn.Softmin),
           hint="the model must return logits: drop the final Softmax (the SG/ST/SIG tops apply it)"),
]


def call_layer(fam: Family, func, args, kwargs):
    """``(layer, input)`` for a forward-code call ``func(*args, **kwargs)`` of a non-linear family:
    the layer the call computes (a smooth function is itself, applied element-wise)."""
    if fam.as_module is not None:
        return fam.as_module(args, kwargs)
    return _Call(func, args[1:], _no_inplace(kwargs)), args[0]


def register_elementwise(module_type: type, name: Optional[str] = None, kinks=()) -> Family:
    """Support a new element-wise activation: its forward is σ, autograd gives σ' (Sec. 2.2, Eq. 21).
    ``kinks``: the points where σ' or σ'' jumps, if any (the exact ``D̄`` of a short path across one
    is taken piece by piece: :func:`smooth_path_slope`)."""
    try:
        kinks = tuple(float(k) for k in kinks)
    except (TypeError, ValueError):
        kinks = None
    if kinks is None or not all(math.isfinite(k) for k in kinks):
        raise ValueError("register_elementwise: kinks must be finite numbers (the points where σ' or σ'' jumps), "
                         "e.g. kinks=(-3.0, 3.0)")
    fam = Family(name or module_type.__name__, "smooth", (module_type,))
    FAMILIES.insert(0, fam)
    if kinks:
        _KINKS[module_type] = lambda m, ks=kinks: ks
    return fam


#: lookups by layer type and by function name, valid while :data:`FAMILIES` holds the same entries
_LOOKUP: dict = {}


def _lookup(key, find):
    families = tuple(map(id, FAMILIES))
    if families != _LOOKUP.get("ids"):
        _LOOKUP.clear()
        _LOOKUP["ids"] = families
    value = _LOOKUP.get(key, _LOOKUP)                # (the dict itself: not looked up yet)
    if value is _LOOKUP:
        value = _LOOKUP[key] = find()
    return value


def family(module: nn.Module) -> Optional[Family]:
    """The :class:`Family` of a layer (an empty ``nn.Sequential`` is an identity), or None."""
    probe = _EmptySequential if type(module) is nn.Sequential and len(module) == 0 else type(module)
    return _lookup(probe, lambda: next((f for f in FAMILIES if issubclass(probe, f.modules)), None))


def function_family(name: str) -> Optional[Family]:
    """The :class:`Family` of a torch function called by name in a model's forward code, or None."""
    return _lookup(("function", name), lambda: next((f for f in FAMILIES if name in f.functions), None))


def supported_layers() -> str:
    """The supported layers, by family, for error messages and the docs."""
    return "; ".join(f"{f.name}: " + ", ".join("empty Sequential" if t is _EmptySequential else t.__name__
                                               for t in f.modules)
                     for f in FAMILIES if f.kind != "refused" and f.modules)


def _types(*kinds):
    return tuple(t for f in FAMILIES if f.kind in kinds for t in f.modules if t is not _EmptySequential)


#: element-wise piecewise-linear activations the path rules know in closed form
ELEMENTWISE = _types("piecewise")
#: non-element-wise non-linear layers
MAXPOOL = _types("maxpool")
#: affine layers: their Jacobian is the constant W^l (Sec. 2: D^l = W^l)
LINEAR = _types("linear")
#: linear layers the z⁺ rule (Eq. 9) applies to
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: linear layers the ε rule (Eq. 5 with a stabilised denominator) applies to
MIXING = WEIGHTED + (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.AvgPool1d, nn.AvgPool2d,
                     nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


@dataclass(frozen=True)
class Rule:
    """A middle rule: one choice of Jacobian per kind of layer (Table 1 and Table 3).

    ``elementwise``: ``"D"`` (local Jacobian), ``"D̄"`` (path average with the explanation's
    ``n_steps``) or ``"D̄exact"`` (the closed-form path average whatever ``n_steps``).
    ``maxpool``: the same, or ``"ε"`` (winner-take-all with the LRP-ε denominator ``z + ε·sign z``).
    ``linear``: ``"W"`` (the layer's own Jacobian), ``"z+"`` (Eq. 9) or ``"ε"`` (LRP-ε, Eq. 5 with
    ``Y_j + ε·sign Y_j``).  ``eps``: the ε of those denominators and of the SG top's division by
    ``ΔZ`` (:func:`lidlib.top.top_relevance`).  ``cutoff``: send no message where ``|z| ≤ ε`` (the
    first author's code does; :func:`lrp_epsilon`).
    """
    name: str
    elementwise: str = "D"
    maxpool: str = "D"
    linear: str = "W"
    eps: float = 1e-9
    cutoff: bool = False

    def __post_init__(self):
        for field, ok in (("elementwise", ("D", "D̄", "D̄exact")), ("maxpool", ("D", "D̄", "D̄exact", "ε")),
                          ("linear", ("W", "z+", "ε"))):
            if getattr(self, field) not in ok:
                raise ValueError(f"Rule.{field} must be one of {ok}, got {getattr(self, field)!r}")
        if not isinstance(self.eps, (int, float)) or isinstance(self.eps, bool) or not self.eps >= 0:
            raise ValueError(f"Rule.eps must be a number >= 0, got {self.eps!r}")


#: LID-Taylor's rule: the local Jacobian D^l everywhere (Eq. 12–15)
TAYLOR = Rule("Taylor")
#: LID-IG's rule: the path-averaged Jacobian D̄^l at every non-linear layer (Eq. 19–23)
IG = Rule("IG", elementwise="D̄", maxpool="D̄")
#: exact LRP-0 (Eq. 5, the ε → 0 limit): W at conv/linear, pass at activations, winner-take-all at
#: max-pool — gradient × input exactly.  The book's derivations use it; the paper's runs use
#: :data:`LRP0_PAPER`.  DeepLIFT (Eq. 7) is the same rule with an increment: Rescale = the exact secant slope.
LRP0 = Rule("LRP-0", elementwise="D̄exact", maxpool="D")
LRP0_EXACT = LRP0
RESCALE = Rule("Rescale", elementwise="D̄exact", maxpool="D")
#: the z⁺ rule of DTD / LRP-ZP at conv/linear layers (Eq. 9), pass and WTA elsewhere
ZPLUS = Rule("z+", elementwise="D̄exact", maxpool="D", linear="z+")

#: the ε of the paper's experiments (the first author's public code): 1e-9
PAPER_EPS = 1e-9


def epsilon(eps: float) -> Rule:
    """LRP-ε: Eq. (5) with the denominator ``Y_j + ε·sign(Y_j)`` at conv/linear layers."""
    return Rule(f"ε={eps:g}", elementwise="D̄exact", maxpool="D", linear="ε", eps=eps)


def lrp_epsilon(eps: float = PAPER_EPS, base: Rule = LRP0) -> Rule:
    """The LRP family as the paper ran it: ``base`` (:data:`LRP0` or :data:`ZPLUS`) with the
    denominators ``z + ε·sign z`` at conv, linear (and BatchNorm / average-pool) and max-pool layers,
    and no message where ``|z| ≤ ε`` (z⁺ rule: where ``z⁺ ≤ ε``).  ``eps = 0`` gives ``base`` itself
    (exact LRP-0 = gradient × input)."""
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    if eps == 0:
        return base
    linear = "z+" if base.linear == "z+" else "ε"
    return Rule(f"{base.name} (ε={eps:g})", elementwise=base.elementwise, maxpool="ε", linear=linear,
                eps=float(eps), cutoff=True)


#: LRP-0 fused with LRP-ε as in the paper's experiments (ε = 1e-9, Sec. 4)
LRP0_PAPER = lrp_epsilon(PAPER_EPS)
#: LRP-ZP as in the paper's experiments (z⁺ with ε = 1e-9)
ZPLUS_PAPER = lrp_epsilon(PAPER_EPS, ZPLUS)


def eps_ratio(z: torch.Tensor, eps: float, cutoff: bool) -> torch.Tensor:
    """``z / (z + ε·sign z)`` (sign 0 = +1), and 0 where ``|z| ≤ ε`` when ``cutoff``: the factor the
    LRP-ε denominator puts on a backward signal (Eq. 5)."""
    r = z / stabilize(z, eps)
    return torch.where(z.abs() > eps, r, torch.zeros_like(r)) if cutoff else r


class _Substitute(torch.autograd.Function):
    """Return ``y`` in the forward pass; in the backward pass map the output gradient by
    ``vjp(g, *saved)``.  ``saved`` are held as autograd's saved tensors: released as soon as this
    node has run (and checked against in-place changes, as autograd's own)."""

    @staticmethod
    def forward(ctx, x, y, vjp, *saved):
        ctx.vjp = vjp
        ctx.save_for_backward(*saved)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        return (ctx.vjp(grad, *ctx.saved_tensors), None, None) + (None,) * len(ctx.saved_tensors)


def substitute(x: torch.Tensor, y: torch.Tensor, vjp: Callable[..., torch.Tensor], *saved) -> torch.Tensor:
    """A tensor equal to ``y`` whose backward pass sends ``vjp(g, *saved)`` to ``x`` (``vjp`` should
    hold no tensors itself: ``saved`` are freed once it has run)."""
    return _Substitute.apply(x, y.detach(), vjp, *saved)


# --------------------------------------------------------------------------- element-wise layers
def _breakpoints(module: nn.Module):
    """``(slope_left, [(b, jump, strict)])``: σ'(p) = slope_left + Σ jump·[p > b] (or ``p ≥ b``
    where ``strict`` is False), matching PyTorch's derivative at the breakpoints."""
    if isinstance(module, nn.ReLU):
        return 0.0, [(0.0, 1.0, True)]
    if isinstance(module, nn.LeakyReLU):
        return module.negative_slope, [(0.0, 1.0 - module.negative_slope, True)]
    if isinstance(module, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6); derivative 0 at both ends
        return 0.0, [(module.min_val, 1.0, True), (module.max_val, -1.0, False)]
    raise TypeError(f"no piecewise-linear description for {type(module).__name__}")


def local_slope(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """σ'(x): the diagonal of the local Jacobian D of an element-wise layer."""
    left, kinks = _breakpoints(module)
    d = torch.full_like(x, left)
    for b, jump, strict in kinks:
        d = d + jump * ((x > b) if strict else (x >= b)).to(x.dtype)
    return d


def _count_above(gap: torch.Tensor, dx: torch.Tensor, n_steps: Optional[int]) -> torch.Tensor:
    """How much of the path ``x̂ → x`` lies beyond one breakpoint ``b`` (one term of Eq. 21).

    ``gap ≥ 0``: how far the path's end beyond ``b`` lies past it; ``q = gap/Δx`` carries the sign
    of ``Δx``, i.e. which end that is (a mirrored breakpoint passes ``gap ≤ 0``).  Exact: the share
    ``min(|q|, 1)``.  Samples ``x̂ + (k/n)Δx``, k = 1..n: the count ``⌈n|q|⌉`` of those beyond ``b``
    where the far end is ``x`` (q > 0), one fewer where it is ``x̂`` (q < 0: t = 0 is not sampled),
    a sample on ``b`` not being beyond — both cases are ``⌈|nq + ½| − ½⌉``.  ``Δx = 0`` gives ±inf
    (all or nothing), ``gap = Δx = 0`` NaN → 0.  Float arithmetic only, in place on ``gap``.
    """
    q = gap.div_(dx)            # exactly ±1 where x or x̂ lies on b
    if n_steps is None:
        return q.abs_().clamp_(max=1).nan_to_num_(0.0)
    n = n_steps
    half = torch.tensor(0.5, dtype=q.dtype, device=q.device)
    count = torch.add(half, q, alpha=n, out=q).abs_().sub_(0.5).ceil_()           # nq + ½ first
    return count.clamp_(max=n).nan_to_num_(0.0)


def _slope_counts(module: nn.Module, x, x_ref, y, y_ref, n_steps: Optional[int]):
    """``(s, scale)`` with ``D̄ = scale·s``: sample counts and ``1/n`` for ``n_steps = n``, else the
    exact shares and 1 — see :func:`path_slope`.  Two buffers, a few in-place passes."""
    left, kinks = _breakpoints(module)
    n = 1 if n_steps is None else n_steps
    dx = torch.sub(x, x_ref)
    d = None
    for b, jump, strict in kinks:
        if strict and type(module) is nn.ReLU:                           # max(x, x̂, 0) = max(y, x̂)
            gap = torch.maximum(y, x_ref)
        elif strict:    # σ' gains `jump` above b: gap = how far the upper end lies above b
            gap = torch.maximum(x, x_ref).clamp_(min=b)
        else:           # σ' loses `jump` below b: gap = −(how far the lower end lies below b)
            gap = torch.minimum(x, x_ref).clamp_(max=b)
            left, jump = left + jump, -jump
        share = _count_above(gap.sub_(b) if b else gap, dx, n_steps)
        if d is None:
            d = share if jump == 1 else share.mul_(jump)
        else:
            d.add_(share, alpha=jump)
    return (d.add_(left * n) if left else d), 1.0 / n


def path_slope(module: nn.Module, x: torch.Tensor, x_ref: torch.Tensor, y: torch.Tensor,
               y_ref: torch.Tensor, n_steps: Optional[int]) -> torch.Tensor:
    """Diagonal of ``D̄`` for an element-wise layer on the path ``x̂ → x`` (Eq. 21).

    σ' is a step function, ``σ'(p) = left + Σ_b jump_b·[p > b]`` (``[p ≥ b] = 1 − [p < b]`` at a
    non-strict breakpoint), so its path average is ``left + Σ_b jump_b·share_b``, one closed-form
    share per breakpoint (:func:`_count_above`): for ``n_steps = n`` the share of the samples
    ``x̂ + (k/n)Δx``, k = 1..n; for ``n_steps = None`` the exact share, which makes ``D̄`` the
    secant slope ``Δy/Δx`` (σ'(x) where ``Δx = 0``).
    """
    d, _ = _slope_counts(module, x, x_ref, y, y_ref, n_steps)
    return d if n_steps is None else d.div_(n_steps)


def _integer_counts(module: nn.Module) -> bool:
    """Whether ``n·D̄`` is a whole number of samples (σ' is 0 or 1 everywhere: ReLU, ReLU6)."""
    left, kinks = _breakpoints(module)
    return left == 0 and all(abs(jump) == 1 for _, jump, _ in kinks)


def elementwise_substitute(module, x, x_ref, y, y_ref, n_steps) -> torch.Tensor:
    """Replacement output of an element-wise layer whose backward multiplies by ``D̄`` (Eq. 21).

    ``D̄`` is computed here, from the values of this forward pass, and kept until the backward pass
    instead of ``x``: as sample counts, one byte per element, for ReLU and ReLU6 with n ≤ 127 (int8:
    the CPU casts float to int8 about 4× faster than to uint8)."""
    with torch.no_grad():
        d, scale = _slope_counts(module, x.detach(), x_ref, y.detach(), y_ref, n_steps)
        if scale != 1 and n_steps <= 127 and _integer_counts(module):
            d = d.to(torch.int8)
    return substitute(x, y, _times_slope(scale), d)


def _times_slope(scale: float):
    """``vjp(g, d) = g ⊙ d · scale``, ``d`` a slope or sample counts (byte counts are widened first: a
    mixed-type product is ~6× slower)."""
    if scale == 1:
        return lambda g, d: torch.mul(g, d)
    return lambda g, d: (d.to(g.dtype).mul_(g) if d.dtype == torch.int8 else torch.mul(g, d)).mul_(scale)


# --------------------------------------------------------------------------- max-pool
def _geometry(module: nn.MaxPool2d):
    """``(kernel, stride, padding, dilation)`` as pairs."""
    k = _pair(module.kernel_size)
    return k, _pair(module.stride or module.kernel_size), _pair(module.padding), _pair(module.dilation)


def _window_positions(module: nn.MaxPool2d, hw, out_hw) -> torch.Tensor:
    """Flat input position (``H·W`` for padding) of element ``(a, b)`` of window ``(i, j)``, as a
    (Ho, kh, Wo, kw) tensor: read in this order it is the window image of :func:`_windows`."""
    (kh, kw), s, p, d = _geometry(module)
    (H, W), (Ho, Wo) = hw, out_hw
    rows = (torch.arange(Ho)[:, None] * s[0] - p[0] + torch.arange(kh) * d[0]).reshape(-1, 1)
    cols = (torch.arange(Wo)[:, None] * s[1] - p[1] + torch.arange(kw) * d[1]).reshape(1, -1)
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    return torch.where(inside, rows * W + cols, H * W).view(Ho, kh, Wo, kw)


def _window_map(module: nn.MaxPool2d, hw, out_hw) -> Optional[torch.Tensor]:
    """:func:`_window_positions` flat, or None where the window image is the input itself: kernel =
    stride, no padding or dilation, and windows that tile the input exactly (VGG's 2×2/2)."""
    (kh, kw), s, p, d = _geometry(module)
    (H, W), (Ho, Wo) = hw, out_hw
    if (kh, kw) == s and p == (0, 0) and d == (1, 1) and (H, W) == (Ho * kh, Wo * kw):
        return None
    return _window_positions(module, hw, out_hw).reshape(-1)


def _offsets(index: torch.Tensor, kernel, out_hw) -> torch.Tensor:
    """Pooling indices (B, L, C) into the window image's planes as offsets inside their windows,
    ``a·kw + b`` for element ``(a, b)``, one byte each (kh·kw ≤ 127): the index minus its window's
    corner, through a table (no integer division)."""
    (kh, kw), (Ho, Wo) = kernel, out_hw
    wide = Wo * kw                                          # the window image's width
    corner = (torch.arange(Ho)[:, None] * (kh * wide) + torch.arange(Wo) * kw).view(-1, 1).to(index.device)
    table = torch.zeros((kh - 1) * wide + kw, dtype=torch.int8, device=index.device)
    table[(torch.arange(kh)[:, None] * wide + torch.arange(kw)).view(-1).to(index.device)] = torch.arange(
        kh * kw, dtype=torch.int8, device=index.device)
    return table.take(index - corner)


def _transpose(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[b] = t[b]ᵀ`` for (B, M, N) → (B, N, M): one 2-D copy per sample for floating point (the
    fast kernel there), one batched copy for indices (2× faster than per sample for int64)."""
    if not t.is_floating_point():
        return out.copy_(t.transpose(1, 2))
    for i in range(t.shape[0]):
        out[i].copy_(t[i].t())
    return out


def _windows(t: torch.Tensor, wmap: Optional[torch.Tensor], image_hw, fill: float) -> torch.Tensor:
    """The pooling windows of ``t`` (B, C, H, W) as a *window image* (B, Ho·kh, Wo·kw, C), channels
    last: window (i, j) is tile (i, j), its elements in PyTorch's scan order, padding = ``fill``
    (``wmap`` from :func:`_window_map`).  A kernel = stride pooling of the image (fast: channels
    last) is the layer's own pooling."""
    B, C, H, W = t.shape
    rows = t.new_empty(B, H * W + (wmap is not None), C)
    rows[:, :H * W].copy_(t.reshape(B, C, H * W).transpose(1, 2))      # (this direction: one batched copy)
    if wmap is None:
        return rows.view(B, H, W, C)
    rows[:, -1] = fill
    return rows[:, wmap].view(B, *image_hw, C)


def _at(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``image[b, index[b, l, c], c]`` for a window image (B or 1, H, W, C) and pooling indices (B, L, C)
    into its planes: ``gather`` along dim 1, by one flat ``index_select`` (2.5× faster here)."""
    b, hw, c = image.shape[0], image.shape[1] * image.shape[2], image.shape[3]
    flat = index * c + torch.arange(c, device=index.device)
    if b > 1:
        flat += torch.arange(b, device=index.device).view(-1, 1, 1) * (hw * c)
    return image.reshape(-1).index_select(0, flat.view(-1)).view(index.shape)


def tiled_pool(module: nn.MaxPool2d, x: torch.Tensor) -> Optional[dict]:
    """The layer's output computed through its channels-last window image, for a max-pool whose
    windows tile the input (kernel = stride, no padding or dilation, sizes divisible: VGG's 2×2/2);
    None for any other layer or input.

    Returns ``dict(y=…, image=…)``: ``y`` equals the layer's own output (a max is exact) and is
    contiguous; ``image`` is what :func:`maxpool_path_weights` would otherwise compute again.
    (PyTorch's channels-first CPU max-pool is ~10× slower than pooling the channels-last image.)"""
    if x.dim() != 4 or module.return_indices:
        return None
    (kh, kw), s, p, d = _geometry(module)
    B, C, H, W = x.shape
    if (kh, kw) != s or p != (0, 0) or d != (1, 1) or H % kh or W % kw:
        return None
    with torch.no_grad():
        image = _windows(x, None, (H, W), 0.0)
        m = F.max_pool2d(image.permute(0, 3, 1, 2), (kh, kw))
        Ho, Wo = H // kh, W // kw
        y = _transpose(m.permute(0, 2, 3, 1).reshape(B, Ho * Wo, C), m.new_empty(B, C, Ho * Wo))
    return dict(y=y.view(B, C, Ho, Wo), image=image)


def maxpool_path_weights(module: nn.MaxPool2d, x: torch.Tensor, x_ref: torch.Tensor, out_hw,
                         n_steps: Optional[int], pooled: Optional[dict] = None,
                         pooled_ref: Optional[dict] = None):
    """``D̄`` of a max-pool layer (Eq. 21): per window, the share of the path ``x̂ → x`` on which
    each input is the window's maximum (first index on ties, as PyTorch), at the samples ``t = k/n``
    (``n_steps = n``) or exactly (``None``).

    Along the path each input is a line ``a + t·b`` (``a = x̂``, ``b = x − x̂``).  Let ``w0``, ``w1``
    win at ``t = 0`` and ``t = 1``.  Where ``w0 = w1`` that line wins throughout; otherwise the two
    lines cross at ``t* = (a_w0 − a_w1)/(b_w1 − b_w0)`` and, unless a third line reaches their upper
    envelope at ``t*``, ``w0`` wins on ``[0, t*)`` and ``w1`` on ``(t*, 1]`` (a sample on ``t*``
    goes to the lower index).  The few windows where a third line does are solved by
    :func:`path_shares`.  All windows are handled at once as channels-last *window images*
    (:func:`_windows`), whose PyTorch max-pooling gives the winners at t = 0, 1 and t*.

    Returns a dict: ``k0``, ``k1`` (B, C, L), the offsets of ``w0``, ``w1`` in their windows
    (:func:`_offsets`); ``s0``, the share of ``w0`` (``w1`` has the rest; both 0 in the general
    windows), as a count of the n samples where n ≤ 127; and ``rows`` = (flat window index, flat input
    positions (N, K), shares (N, K)) of the general windows, or None.  ``pooled``, ``pooled_ref``: what
    :func:`tiled_pool` returned for ``x`` and ``x̂`` in the forward passes (used up here), if any.
    """
    squeeze = x.dim() == 3
    if squeeze:
        x, x_ref = x[None], (x_ref[None] if x_ref is not None and x_ref.dim() == 3 else x_ref)
    B, C, H, W = x.shape
    (kh, kw), _, _, _ = _geometry(module)
    Ho, Wo = out_hw
    wmap = _window_map(module, (H, W), out_hw)
    wmap = None if wmap is None else wmap.to(x.device)
    low = torch.finfo(x.dtype).min                          # padding: below every input, and a − a = 0
    image = (Ho * kh, Wo * kw)
    pool = lambda img: F.max_pool2d(img.permute(0, 3, 1, 2), (kh, kw), return_indices=True)
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, C)     # (B, L, C) views
    if pooled_ref is not None and pooled_ref["image"].shape[0] in (1, B):
        a = pooled_ref["image"]                            # (read, never written)
    else:
        a = _windows(x_ref.expand_as(x), wmap, image, low)
    m0, i0 = pool(a)                                       # winners at t = 0 (a batch-1 reference: pooled once)
    e = pooled["image"] if pooled is not None else _windows(x, wmap, image, low)
    e.sub_(a).add_(a)                                      # the lines at t = 1 as sampled: a + 1·(x − a)
    m1, i1 = pool(e)                                       # winners at t = 1
    m0, i0, m1, i1 = flat(m0), flat(i0).expand(B, -1, -1), flat(m1), flat(i1)
    a1, c0 = _at(a, i1), _at(e, i0)
    db = m1.sub_(a1).sub_(c0.sub_(m0))                    # b_w1 − b_w0
    t = torch.sub(m0, a1, out=a1).div_(db).nan_to_num_(0.0).clamp_(0, 1)   # t*; 0 where w0 = w1
    # a third line above the two-line envelope at t*: the pooled winner at t* is neither w0 nor w1
    e6 = e.view(B, Ho, kh, Wo, kw, C)
    torch.lerp(a.view(a.shape[0], Ho, kh, Wo, kw, C), e6, t.view(B, Ho, 1, Wo, 1, C), out=e6)
    im = flat(pool(e)[1])
    general = (im != i0).logical_and_(im != i1).nonzero()  # (batch, window, channel) rows
    del e, im
    s0 = t                      # w0's share of the path; (n samples) as a count where n ≤ 127
    if n_steps is not None:     # w0 takes the samples k ≥ 1 with k ≤ n·t*, but k < n·t* if w1 < w0
        n = n_steps             # (a tie at t* goes to the lower index)
        u = t.mul_(n)
        s0 = torch.where(i1 < i0, u.ceil().sub_(1).clamp_(min=0), u.floor_())
        s0 = s0.to(torch.int8) if n <= 127 else s0.div_(n)
    # to (B, C, L), the winners as offsets in their windows: one byte each instead of eight
    L = Ho * Wo
    k0, k1 = (_transpose(_offsets(i, (kh, kw), out_hw), torch.empty(B, C, L, dtype=torch.int8, device=x.device))
              for i in (i0, i1))
    s0 = _transpose(s0, s0.new_empty(B, C, L))
    rows = None
    if general.numel():         # windows where a third line matters: every line, by path_shares
        bi, li, ci = general.unbind(1)
        plane = bi * C + ci
        offsets = torch.arange(kh, device=x.device)[:, None] * (Wo * kw) + torch.arange(kw, device=x.device)
        pos = ((li // Wo) * (kh * Wo * kw) + (li % Wo) * kw)[:, None] + offsets.reshape(-1)   # in the image
        if wmap is not None:
            pos = wmap[pos]                                  # input positions; H·W = padding
        pad = pos == H * W
        pos = pos.clamp_(max=H * W - 1)

        def at(t):                                           # t[b, c] at the positions, (N, K)
            if t.dim() == 4 and t.shape[1:] == x.shape[1:] and t.is_contiguous():
                idx = pos + (((bi if t.shape[0] > 1 else 0) * C + ci) * (H * W))[:, None]
                return t.reshape(-1).index_select(0, idx.view(-1)).view(idx.shape)
            return t.expand(B, C, H, W)[bi[:, None], ci[:, None], pos // W, pos % W]
        if x_ref is None:                                    # X̂ read off its window image (wmap is None)
            img = a.view(a.shape[0], H * W, C)
            la = img[(bi if img.shape[0] > 1 else torch.zeros_like(bi))[:, None], pos, ci[:, None]]
        else:
            la = at(x_ref)
        del a
        lb = at(x) - la
        pos = pos.add_(plane[:, None] * (H * W))             # flat in x
        if pad.any():                                        # a flat line below every real one
            la = la.masked_fill(pad, float(torch.minimum(la, la + lb)[~pad].min()) - 1.0)
            lb = lb.masked_fill(pad, 0.0)
        window = plane * L + li                              # flat in (B, C, L)
        s0.view(-1).index_fill_(0, window, 0.0)
        rows = (window, pos, path_shares(la, lb, n_steps))
    return dict(k0=k0, s0=s0, k1=k1, rows=rows, squeeze=squeeze)


def path_shares(a: torch.Tensor, b: torch.Tensor, n_steps: Optional[int]) -> torch.Tensor:
    """For rows of lines ``a_i + t b_i`` (N, K): the share of t ∈ [0, 1] on which each line is
    the row's maximum — at the samples ``t = k/n`` (``n_steps = n``), or exactly (None), where
    line ``i`` wins on the interval ``[max_j lower_ij, min_j upper_ij]`` of its pairwise wins."""
    if n_steps is not None:
        t = riemann_points(n_steps, a.dtype, a.device)
        win = torch.argmax(a[:, None, :] + t[:, None] * b[:, None, :], dim=2)      # (N, n), first index
        return torch.zeros_like(a).scatter_add_(1, win, torch.full_like(win, 1, dtype=a.dtype)).div_(n_steps)
    K = a.shape[1]
    da = a[:, :, None] - a[:, None, :]                  # line_i − line_j = da + t·db
    db = b[:, :, None] - b[:, None, :]
    inf = torch.tensor(float("inf"), dtype=a.dtype, device=a.device)
    i_first = torch.ones(K, K, dtype=torch.bool, device=a.device).triu(1)
    eye = torch.eye(K, dtype=torch.bool, device=a.device)
    safe = torch.where(db == 0, torch.ones_like(db), db)
    cross = -da / safe
    wins_flat = (da > 0) | ((da == 0) & i_first) | eye
    lower = torch.where(db > 0, cross, torch.where(db < 0, -inf, torch.where(wins_flat, -inf, inf)))
    upper = torch.where(db < 0, cross, inf)
    lo = lower.amax(dim=2).clamp(0, 1)
    hi = upper.amin(dim=2).clamp(0, 1)
    return (hi - lo).clamp(min=0)


#: elements per block of a max-pool's backward pass (its int64 window positions are made per block)
POOL_BLOCK = 1 << 20


def maxpool_substitute(module, x, x_ref, y, y_ref, n_steps, pooled=None, pooled_ref=None) -> torch.Tensor:
    """Replacement output of a max-pool layer whose backward applies ``D̄`` (Eq. 21): the output
    gradient goes to ``w0`` and ``w1`` of each window with their shares (and to every input of a
    window solved in general, with its :func:`path_shares`)."""
    p = maxpool_path_weights(module, x.detach(), x_ref, y.shape[-2:], n_steps, pooled, pooled_ref)
    hw, out_hw = x.shape[-2:], y.shape[-2:]
    squeeze = p["squeeze"]

    def vjp(g, k0, s0, k1, window=None, pos=None, w=None):
        gg = g[None] if squeeze else g
        B, C = gg.shape[:2]
        gf = gg.reshape(B * C, -1)
        L = gf.shape[1]
        where = _window_positions(module, hw, out_hw).to(g.device).permute(0, 2, 1, 3).reshape(1, L, -1)
        k0, s0, k1 = k0.view(B * C, L), s0.view(B * C, L), k1.view(B * C, L)
        out = gf.new_zeros(B * C, hw[0] * hw[1])
        step = max(1, POOL_BLOCK // L)          # planes at a time: the int64 positions of a block, not of all
        for p0 in range(0, B * C, step):
            p1 = min(p0 + step, B * C)
            i0, i1 = (where.expand(p1 - p0, -1, -1).gather(2, k[p0:p1].long()[..., None])[..., 0] for k in (k0, k1))
            a0 = s0[p0:p1].to(g.dtype).div_(n_steps) if s0.dtype == torch.int8 else s0[p0:p1]
            a1 = torch.sub(1, a0)
            if window is not None:              # the general windows: w1 has no share there
                inside = window[(window >= p0 * L) & (window < p1 * L)]
                a1.view(-1).index_fill_(0, inside - p0 * L, 0.0)
            gb = gf[p0:p1]
            out[p0:p1].scatter_add_(1, i0, gb * a0).scatter_add_(1, i1, gb * a1)
        if window is not None:
            out.view(-1).index_add_(0, pos.view(-1), (gf.reshape(-1).index_select(0, window)[:, None] * w).view(-1))
        out = out.view(B, C, *hw)
        return out[0] if squeeze else out

    return substitute(x, y, vjp, p["k0"], p["s0"], p["k1"], *(p["rows"] or ()))


# --------------------------------------------------------------------------- conv / linear
def _positive_part(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``W⁺ x`` without bias (the denominator of the z⁺ rule, Eq. 9)."""
    w = module.weight.clamp(min=0)
    if isinstance(module, nn.Linear):
        return F.linear(x, w)
    return module._conv_forward(x, w, None)


def linear_substitute(rule: Rule, module, x, x_ref, y, y_ref) -> torch.Tensor:
    """Replacement output of a conv/linear layer under the z⁺ (Eq. 9) or ε rule (Eq. 5)."""
    dy = (y - y_ref).detach()
    if rule.linear == "z+":
        zp = _positive_part(module, x - x_ref)
        zd = zp.detach()
        scale = dy / stabilize(zd, rule.eps)
        if rule.cutoff:
            scale = torch.where(zd.abs() > rule.eps, scale, torch.zeros_like(scale))
        return y.detach() + scale * (zp - zp.detach())
    scale = eps_ratio(dy, rule.eps, rule.cutoff)     # ε rule: g_in = Wᵀ(g ⊙ Δy / (Δy + ε))
    return y.detach() + scale * (y - y.detach())


def maxpool_epsilon_substitute(rule: Rule, module, x, y, y_ref) -> torch.Tensor:
    """Replacement output of a max-pool under LRP-ε: winner-take-all (the gradient of the layer's own
    max-pool of ``x``) with the signal scaled by ``z / (z + ε·sign z)``, ``z = Δy`` the window's
    maximum (0 where ``|z| ≤ ε``)."""
    own = type(module).forward(module, x)
    scale = eps_ratio((y - y_ref).detach(), rule.eps, rule.cutoff)
    return y.detach() + scale * (own - own.detach())


def layer_kind(module: nn.Module) -> Optional[str]:
    """The family kind of a supported leaf (``"linear"``, ``"elementwise"`` for piecewise-linear,
    ``"smooth"``, ``"maxpool"``, ``"norm"``, ``"attention"``), else None."""
    if isinstance(module, _Call):                 # a forward-code call of a smooth function
        return "smooth"
    if isinstance(module, SelfAttention):         # one call of a self-attention layer
        return "attention"
    fam = family(module)
    if fam is None or fam.kind == "refused":
        return None
    return "elementwise" if fam.kind == "piecewise" else fam.kind


def _steps(choice: str, n_steps):
    """The samples of a path-averaged rule: ``n`` or None (exact, also for ``"D̄exact"``)."""
    return None if choice == "D̄exact" else n_steps


def _replacement(rule: Rule, module: nn.Module) -> Optional[str]:
    """Which replacement ``rule`` makes of this layer (a key of :data:`_READS`), or None (the plain
    gradient).  Smooth activations, normalisation and self-attention layers follow ``rule.elementwise``."""
    kind = layer_kind(module)
    if kind in ("elementwise", "smooth", "norm", "attention"):
        return kind if rule.elementwise != "D" else None
    if kind == "maxpool":
        return {"D": None, "ε": "maxpool ε"}.get(rule.maxpool, "maxpool")
    if kind == "linear" and rule.linear != "W" and isinstance(module, WEIGHTED if rule.linear == "z+" else MIXING):
        return "linear " + rule.linear
    return None


#: which of the layer's reference input X̂ and output Ŷ each replacement reads (the smooth secant
#: reads σ(x̂) = ŷ; a max-pool reads X̂ or its window image)
_READS = {"elementwise": (True, False), "smooth": (True, True), "norm": (True, False), "attention": (True, False),
          "maxpool": (True, False),
          "maxpool ε": (False, True), "linear z+": (True, True), "linear ε": (False, True)}


def apply_rule(rule: Rule, module: nn.Module, x, x_ref, y, y_ref, n_steps, pooled=None,
               pooled_ref=None) -> Optional[torch.Tensor]:
    """The replacement output of one layer call under ``rule``, or None for the plain gradient
    (``pooled``, ``pooled_ref``: :func:`tiled_pool` of a max-pool's input and reference)."""
    how = _replacement(rule, module)
    if how is None:
        return None
    if how == "elementwise":
        return elementwise_substitute(module, x, x_ref, y, y_ref, _steps(rule.elementwise, n_steps))
    if how == "smooth":
        return smooth_substitute(module, x, x_ref, y, y_ref, _steps(rule.elementwise, n_steps))
    if how in ("norm", "attention"):                # (attention: ``module`` is the SelfAttention call)
        return norm_substitute(module, x, x_ref, y, _steps(rule.elementwise, n_steps))
    if how == "maxpool ε":
        return maxpool_epsilon_substitute(rule, module, x, y, y_ref)
    if how == "maxpool":
        return maxpool_substitute(module, x, x_ref, y, y_ref, _steps(rule.maxpool, n_steps), pooled, pooled_ref)
    return linear_substitute(rule, module, x, x_ref, y, y_ref)


def derived_reference(rule: Rule, module: nn.Module) -> bool:
    """Whether the actual pass recomputes this layer's reference output ``Ŷ = σ(X̂)`` from the ``X̂`` its
    replacement reads, instead of the reference pass keeping it: a piecewise-linear σ (a max, a min or
    a product by a constant, so the same numbers) costs one cheap pass, against one tensor the size of
    the layer's output held from the reference pass to the actual one (or cached by an Explainer)."""
    return _replacement(rule, module) == "elementwise"


def reference_needs(rule: Rule, module: nn.Module) -> Tuple[bool, bool]:
    """Which of the layer's reference input ``X̂`` and output ``Ŷ`` its replacement under ``rule``
    reads (:func:`apply_rule`): the reference pass keeps only these (and the kept layers' ``Ŷ``)."""
    how = _replacement(rule, module)
    return (False, False) if how is None else _READS[how]


def product_rule(rule: Rule, a, b, a_ref, b_ref, n_steps) -> Optional[torch.Tensor]:
    """The replacement of ``a * b`` (two tensors) under ``rule``, or None for the plain gradient."""
    if rule.elementwise == "D":
        return None
    return product_substitute(a, b, a_ref, b_ref, _steps(rule.elementwise, n_steps))


# --------------------------------------------------------------------------- smooth element-wise layers
def _plain(layer):
    """The layer's own forward, without the hooks an explanation has registered on it."""
    return (lambda t: type(layer).forward(layer, t)) if isinstance(layer, nn.Module) else layer


def _derivative(sigma, p: torch.Tensor) -> torch.Tensor:
    """σ'(p) of an element-wise σ, by autograd (the diagonal of its Jacobian)."""
    sigma = _plain(sigma)
    with torch.enable_grad():
        p = p.detach().requires_grad_(True)
        (d,) = torch.autograd.grad(sigma(p), p, torch.ones_like(p))
    return d


def _ones(p: torch.Tensor) -> torch.Tensor:
    return torch.ones((), dtype=p.dtype, device=p.device).expand_as(p)


_aten = torch.ops.aten


def _fused(op, out_name=None, **options):
    """``σ'(p)`` by the backward kernel ``op`` (gradient 1), into ``out`` where the kernel has an out
    form named ``out_name``; ``options``: the kernel's keyword arguments, each read off the module."""
    into = getattr(op, out_name) if out_name is not None else None

    def kernel(m, p, out=None):
        kw = {k: read(m) for k, read in options.items()}
        if out is not None and into is not None:
            return into(_ones(p), p, **kw, **{out_name: out})
        return op(_ones(p), p, **kw)
    return kernel


#: σ' in one fused kernel (the one autograd itself runs) for the built-in smooth activations
_DERIVATIVES = {
    nn.SiLU: _fused(_aten.silu_backward, "grad_input"),
    nn.Hardswish: _fused(_aten.hardswish_backward),             # (its out form copies: 2× slower)
    nn.Hardsigmoid: _fused(_aten.hardsigmoid_backward, "grad_input"),
    nn.Mish: _fused(_aten.mish_backward),
    nn.GELU: _fused(_aten.gelu_backward, "grad_input", approximate=lambda m: m.approximate),
    nn.Sigmoid: lambda m, p, out=None: _aten.sigmoid_backward(_ones(p), torch.sigmoid(p)),
    nn.Tanh: lambda m, p, out=None: _aten.tanh_backward(_ones(p), torch.tanh(p)),
}
#: the layer type a forward-code call ``f(x, *args)`` computes, by the function's name (its kernel
#: above, its kinks below); the arguments after ``x`` are the layer's constructor arguments
_FUNCTION_LAYERS = {"silu": nn.SiLU, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid, "mish": nn.Mish,
                    "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU, "elu_": nn.ELU, "celu": nn.CELU,
                    "selu": nn.SELU, "softsign": nn.Softsign, "softplus": nn.Softplus}


def _layer_type(sigma):
    """The layer type ``sigma`` is (a forward-code call: the one it computes, :data:`_FUNCTION_LAYERS`)."""
    return _FUNCTION_LAYERS.get(getattr(sigma.f, "__name__", "")) if isinstance(sigma, _Call) else type(sigma)


def _kernel(sigma):
    """``kernel(p, out=None)`` computing σ'(p) in one pass for ``sigma``, or None (autograd then)."""
    kind = _layer_type(sigma)
    if kind not in _DERIVATIVES or (isinstance(sigma, _Call) and (sigma.args or sigma.kwargs)):
        return None
    module = None if isinstance(sigma, _Call) else sigma
    return lambda p, out=None: _DERIVATIVES[kind](module, p, out)


def _softplus_kink(beta=1.0, threshold=20.0):
    return (threshold / beta,)                  # softplus is x itself where β·x > threshold


#: where σ' or σ'' of a smooth activation jumps: a short path across such a point is not one smooth
#: piece, and its exact ``D̄`` is taken piece by piece (:func:`_across_kink`)
_KINKS = {nn.Hardswish: lambda m: (-3.0, 3.0), nn.Hardsigmoid: lambda m: (-3.0, 3.0),
          nn.ELU: lambda m: (0.0,), nn.CELU: lambda m: (0.0,), nn.SELU: lambda m: (0.0,),
          nn.Softsign: lambda m: (0.0,), nn.Softplus: lambda m: _softplus_kink(m.beta, m.threshold)}


def _kinks(sigma) -> tuple:
    """The points where σ' or σ'' of ``sigma`` jumps (:data:`_KINKS`; a forward-code call: those of
    the layer it computes, :data:`_FUNCTION_LAYERS`); () for a smooth one."""
    if isinstance(sigma, _Call):
        kind = _layer_type(sigma)
        return () if kind not in _KINKS else _KINKS[kind](kind(*sigma.args, **sigma.kwargs))
    return next((_KINKS[t](sigma) for t in type(sigma).__mro__ if t in _KINKS), ())


def _across_kink(derivative, x, x_ref, k) -> torch.Tensor:
    """Exact ``D̄`` of short paths ``x̂ → x`` across the kinks ``k``: each side's share of the path
    times σ' at that side's own midpoint (exact where σ' is linear on a side, else off by at most
    ``|σ'''|·Δx²/24``, as one short smooth piece is).  One midpoint for the whole path would
    average σ' across the jump (Hardswish just across 3: 1.5 or 1 instead of 1.25), and the secant
    loses digits there."""
    lo, hi = torch.minimum(x, x_ref), torch.maximum(x, x_ref)
    share = torch.sub(k, lo).div_(hi - lo).clamp_(0, 1)               # of the path below k
    return torch.lerp(derivative((k + hi) / 2), derivative((lo + k) / 2), share)


def _position_dependent(sigma) -> bool:
    """Whether σ has parameters or buffers (it may then differ from element to element)."""
    return isinstance(sigma, nn.Module) and any(True for _ in itertools.chain(sigma.parameters(), sigma.buffers()))


def smooth_path_slope(sigma, x, x_ref, y, y_ref, n_steps: Optional[int]) -> torch.Tensor:
    """Diagonal of ``D̄`` (Eq. 21) for any element-wise σ on the path ``x̂ → x``.

    ``n_steps = n``: the mean of σ' at ``x̂ + (k/n)Δx``, k = 1..n.  ``None``: exactly, the secant
    slope ``(σ(x) − σ(x̂)) / (x − x̂)``; where ``|Δx| ≤ ε^(1/3)·(|x + x̂| + 1)`` (the secant would
    lose digits) σ' at the midpoint, whose error ``|σ'''|·Δx^2/24`` is then no larger than the
    secant's rounding ``ε·|σ|/|Δx|`` (both about ε^(2/3)) — or, where such a short path crosses a
    kink of σ' or σ'' (:data:`_KINKS`), σ' at each side's midpoint weighted by that side's share of
    the path (:func:`_across_kink`)."""
    x_ref = x_ref.expand_as(x)
    kernel = _kernel(sigma)                                 # (a built-in activation: the same σ everywhere)
    if n_steps is not None and kernel is not None:
        return _sampled_mean(kernel, x, x_ref, n_steps)
    dx = torch.sub(x, x_ref)
    if n_steps is not None:                                 # all n samples in one autograd call
        t = riemann_points(n_steps, x.dtype, x.device)
        points = torch.addcmul(x_ref[None], t.view(-1, *([1] * x.dim())), dx[None])
        return _derivative(sigma, points).mean(0)
    secant = torch.sub(y, y_ref.expand_as(y)).div_(dx)
    twice_mid, c = torch.add(x, x_ref), torch.finfo(x.dtype).eps ** (1 / 3)
    abs_mid = twice_mid.abs()
    tiny = torch.le(dx.abs_().sub_(abs_mid, alpha=c), c)
    crossings = [(i, kink) for i, kink in (_short_crossings(x, x_ref, abs_mid, twice_mid, tiny, t, c)
                                          for t in _kink_tests(_kinks(sigma))) if i is not None]
    derivative = kernel or functools.partial(_derivative, sigma)
    if kernel is not None:                                  # σ' everywhere: two cheap passes
        torch.where(tiny, kernel(twice_mid.mul_(0.5)), secant, out=secant)
    elif _position_dependent(sigma):                        # σ' by autograd, on the whole tensor
        d = torch.where(tiny, derivative(twice_mid.mul_(0.5)), secant) if tiny.any() else secant
        for i, kink in crossings:                           # (σ' at each side's midpoint, everywhere)
            across, at = torch.zeros_like(tiny), torch.zeros_like(x)
            torch.atleast_1d(across)[i], torch.atleast_1d(at)[i] = True, kink
            d = torch.where(across, _across_kink(derivative, x, x_ref, at), d)
        return d
    else:                                                   # σ' by autograd, where it is needed
        where = torch.atleast_1d(tiny).nonzero(as_tuple=True)
        if where[0].numel():
            torch.atleast_1d(secant)[where] = derivative(torch.atleast_1d(twice_mid)[where].mul_(0.5))
    for i, kink in crossings:
        torch.atleast_1d(secant)[i] = _across_kink(derivative, *(torch.atleast_1d(t)[i] for t in (x, x_ref)), kink)
    return secant


def _kink_tests(kinks) -> list:
    """The kinks as crossing tests ``(k, symmetric)``: a pair ±k (and 0) is one test on ``|x + x̂|``."""
    ks = set(kinks)
    return [(k, k == 0 or -k in ks) for k in sorted(ks) if not (k < 0 and -k in ks)]


def _short_crossings(x, x_ref, abs_mid, twice_mid, tiny, test, c):
    """``(index, kink)`` of the short paths (``tiny``) that cross the kink of ``test``, ``|x + x̂ − 2k| <
    |Δx|`` (a symmetric pair ±k: on ``|x + x̂|``, the two ends of a short path having one sign), or
    ``(None, None)``; ``kink``: each one's kink, ``±k``.  Only the elements with ``|x + x̂ − 2k|`` below
    twice its largest value on a short crossing path, ``c·(|x + x̂| + 1)``, are tested."""
    k, symmetric = test
    base, band = abs_mid if symmetric else twice_mid, 2 * c * ((2 * abs(k) + c) / (1 - c) + 1)
    if base.numel() == 0:
        return None, None
    low, high = torch.aminmax(base)
    if float(high) <= 2 * k - band or float(low) >= 2 * k + band:
        return None, None                                   # (one pass: no midpoint near the kink)
    near = torch.atleast_1d(torch.lt(torch.sub(base, 2 * k).abs_(), band)).logical_and_(torch.atleast_1d(tiny))
    if not near.any():
        return None, None
    i = near.nonzero(as_tuple=True)
    xs, rs = torch.atleast_1d(x)[i], torch.atleast_1d(x_ref)[i]
    kink = torch.where(xs + rs < 0, -k, k).to(xs.dtype) if symmetric and k else torch.full_like(xs, k)
    cross = torch.lt((xs + rs - 2 * kink).abs_(), (xs - rs).abs_())
    if not cross.any():
        return None, None
    return tuple(t[cross] for t in i), kink[cross]


#: elements per block of :func:`_sampled_mean` on the CPU (1 MiB of float32 per buffer: a block's samples
#: stay in cache; measured 2× faster than whole-tensor passes on a 1.2 M-element SiLU input, n = 10)
SAMPLE_BLOCK = 1 << 18


def _sampled_mean(kernel, x, x_ref, n: int) -> torch.Tensor:
    """``(1/n) Σ_k σ'(x̂ + (k/n)Δx)``, k = 1..n, by the fused kernel, one sample at a time in three
    buffers — block by block on the CPU, so that a block's n samples are computed in cache rather
    than in n passes over memory (the same operations on every element: the same numbers, the block
    being a multiple of the SIMD width).  A tensor whose n samples fit in one block (a squeeze-excitation
    gate's) takes them as one ``(n, numel)`` tensor: four operations instead of 3n + 1, whose fixed
    cost is most of the time there (MobileNetV3-Large at 32 px, n = 10: 32.0 ms instead of 35.5)."""
    xf, rf = x.reshape(-1), x_ref.expand_as(x).reshape(-1)
    numel = xf.numel()
    if 0 < numel * n <= SAMPLE_BLOCK:           # a small tensor: its n samples as one (n, numel) block,
        t = riemann_points(n, x.dtype, x.device).view(n, 1)      # four operations instead of 3n + 1
        p = torch.addcmul(rf, t, torch.sub(xf, rf))
        return torch.sum(kernel(p, torch.empty_like(p)), 0).div_(n).view(x.shape)
    total = torch.empty_like(xf)
    size = max(1, min(SAMPLE_BLOCK if x.device.type == "cpu" else numel, numel))
    p, d, dx = (torch.empty(size, dtype=x.dtype, device=x.device) for _ in range(3))
    ts = riemann_points(n, torch.float64).tolist()
    for start in range(0, numel, size):
        stop = min(start + size, numel)
        r, out, pb, db, dxb = rf[start:stop], total[start:stop], p[:stop - start], d[:stop - start], dx[:stop - start]
        torch.sub(xf[start:stop], r, out=dxb)
        for i, t in enumerate(ts):
            torch.add(r, dxb, alpha=t, out=pb)
            if i == 0:
                out.copy_(kernel(pb, db))
            else:
                out.add_(kernel(pb, db))
    return total.div_(n).view(x.shape)


def smooth_substitute(sigma, x, x_ref, y, y_ref, n_steps) -> torch.Tensor:
    """Replacement output of a smooth element-wise layer whose backward multiplies by ``D̄``
    (computed here, in the forward pass, and kept instead of ``x``)."""
    xd, yd = x.detach(), y.detach()
    with torch.no_grad():
        if not (isinstance(x_ref, torch.Tensor) and x_ref.dim()):
            x_ref = torch.zeros_like(xd)
            y_ref = _plain(sigma)(x_ref)
        d = smooth_path_slope(sigma, xd, x_ref, yd, y_ref, n_steps)
    return substitute(x, y, _times_slope(1), d)


# --------------------------------------------------------------------------- products a ⊙ b
def product_substitute(a, b, a_ref, b_ref, n_steps) -> torch.Tensor:
    """``a ⊙ b`` whose backward sends ``g ⊙ b̄`` to ``a`` and ``g ⊙ ā`` to ``b``.

    Along the straight path each factor is linear in t, so ``∂(ab)/∂a = b`` averaged over the
    samples ``t = k/n`` is ``b̂ + (n+1)/(2n)·Δb``, and exactly ``(b + b̂)/2`` (then
    ``ā Δb + b̄ Δa = Δ(ab)``: the product conserves).  The gradient of a broadcast factor (a gate
    per channel) is summed over the broadcast dimensions (:class:`_Product`)."""
    w = 0.5 if n_steps is None else (n_steps + 1) / (2 * n_steps)
    return _Product.apply(a, b, a_ref if isinstance(a_ref, torch.Tensor) else None,
                          b_ref if isinstance(b_ref, torch.Tensor) else None, w)


def _path_mean(t: torch.Tensor, t_ref: Optional[torch.Tensor], w: float) -> torch.Tensor:
    """``t̂ + w·(t − t̂)``: a factor's mean over the path samples (``t̂ = 0`` without a reference)."""
    return t * w if t_ref is None else torch.lerp(t_ref.to(t.dtype).expand_as(t), t, w)


class _Product(torch.autograd.Function):
    """``a ⊙ b`` forward; backward ``g ⊙ b̄`` to ``a`` and ``g ⊙ ā`` to ``b`` (summed over broadcast
    dimensions), the path means computed only then.  Autograd checks that none of the saved tensors
    was modified in place in between."""

    @staticmethod
    def forward(ctx, a, b, a_ref, b_ref, w):
        ctx.save_for_backward(a, b, a_ref, b_ref)
        ctx.w = w
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b, a_ref, b_ref = ctx.saved_tensors
        ga = (g * _path_mean(b, b_ref, ctx.w)).sum_to_size(a.shape) if ctx.needs_input_grad[0] else None
        gb = (g * _path_mean(a, a_ref, ctx.w)).sum_to_size(b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None, None


# --------------------------------------------------------------------------- normalisation
def _norm_layout(layer, x):
    """How a normalisation layer groups ``x``: ``(group, ungroup, dims, γ, ε)`` with ``group(t)`` a
    view of ``t`` whose dimensions ``dims`` hold one normalised group each (no copy: LayerNorm2d over
    dimension 1, LayerNorm over its last ones, GroupNorm's ``(N, G, C/G·…)``), ``ungroup`` back to
    ``x``'s shape and ``γ`` (None: no scale) broadcastable to ``x``; None for a layer whose grouping is
    not known here (LocalResponseNorm, RMSNorm, subclasses)."""
    same = lambda t: t                                          # noqa: E731
    forward = getattr(type(layer), "forward", None)             # (None: a SelfAttention call)
    if type(layer) is _LayerNorm2d:                              # torchvision's LayerNorm over channels
        if x.dim() != 4 or tuple(layer.normalized_shape) != (x.shape[1],):
            return None
        c = x.shape[1]
        return same, same, (1,), None if layer.weight is None else layer.weight.detach().view(1, c, 1, 1), layer.eps
    if forward is nn.LayerNorm.forward:
        shape = tuple(layer.normalized_shape)
        if tuple(x.shape[x.dim() - len(shape):]) != shape:
            return None
        dims = tuple(range(x.dim() - len(shape), x.dim()))
        return same, same, dims, None if layer.weight is None else layer.weight.detach(), layer.eps
    if forward is nn.GroupNorm.forward and x.dim() >= 2:
        n, c = x.shape[:2]
        gamma = layer.weight.detach().view(1, c, *([1] * (x.dim() - 2))) if layer.affine else None
        return (lambda t: t.reshape(n, layer.num_groups, -1)), (lambda v: v.reshape(x.shape)), (2,), gamma, layer.eps
    return None


def _norm_path_sum(layout, x, x_ref, g):
    """``(ts, ws) -> Σ_k w_k J(x̂ + t_k Δx)ᵀ g`` of a LayerNorm/GroupNorm in closed form per group
    (``ws``: one row of weights per rule, or one vector; see :func:`_path_sum`).

    On the path each group's centred input is linear, ``u(t) = û + tΔu``, and its scale
    ``s(t) = (|u(t)|²/K + ε)^½``; ``J(t)ᵀg = (P h − u (uᵀh)/(K s²)) / s`` with ``h = γ ⊙ g`` and
    ``P`` the centring.  So the sum over the nodes needs only four numbers per group,
    ``S = Σ w/s`` and ``T_j = Σ w t^j/s³`` (j = 0, 1, 2): the passes over the layer are made once,
    whatever the nodes."""
    group, ungroup, dims, gamma, eps = layout
    mean = lambda t: t.mean(dims, keepdim=True)                 # noqa: E731
    u_ref = group(x_ref.expand_as(x))
    du = group(x) - u_ref
    u_ref = u_ref - mean(u_ref)
    du.sub_(mean(du))
    h = group(g) if gamma is None else group(g * gamma)
    h = h - mean(h)
    scratch = torch.empty_like(u_ref)                           # (one buffer for the five products)
    dot = lambda s, t: torch.mul(s, t, out=scratch).sum(dims, keepdim=True)     # noqa: E731
    k = math.prod(u_ref.shape[d] for d in dims)
    a, b, c, uh, dh = dot(u_ref, u_ref), dot(u_ref, du), dot(du, du), dot(u_ref, h), dot(du, h)

    def one(t, w, s):
        S, T0, T1, T2 = ((w / s).sum(0), (w / s ** 3).sum(0), (w * t / s ** 3).sum(0), (w * t * t / s ** 3).sum(0))
        v = torch.mul(h, S).addcmul_(u_ref, (uh * T0 + dh * T1) / k, value=-1)
        return ungroup(v.addcmul_(du, (uh * T1 + dh * T2) / k, value=-1))

    def total(ts, ws):
        shape = (-1,) + (1,) * u_ref.dim()
        t = ts.to(x.dtype).view(shape)
        s = ((a + 2 * t * b + t * t * c) / k + eps).sqrt()                # (nodes, *group shape)
        if ws.dim() == 1:
            return one(t, ws.to(x.dtype).view(shape), s)
        return torch.stack([one(t, w.to(x.dtype).view(shape), s) for w in ws])
    return total


def _path_sum(layer, x, x_ref, g):
    """``(ts, ws) -> Σ_k w_k J(x̂ + t_k Δx)ᵀ g``: in closed form per row for LayerNorm and GroupNorm
    (:func:`_norm_path_sum`), else the layer evaluated at the path points (:func:`_layer_path_vjp`).
    ``ws`` is one vector of weights, or an ``(r, nodes)`` matrix of them: then ``r`` sums over the
    same evaluations, stacked (a Gauss rule and its Kronrod extension)."""
    layout = _norm_layout(layer, x)
    if layout is not None:
        return _norm_path_sum(layout, x, x_ref, g)
    return lambda ts, ws: _layer_path_vjp(layer, x, x_ref, g, ts, ws)


def _layer_path_vjp(layer, x, x_ref, g, ts, ws):
    """``Σ_k w_k J(x̂ + t_k Δx)ᵀ g`` by autograd: the layer evaluated at the path points, as one
    batch (``ws``: a vector, or a matrix of them as in :func:`_path_sum`)."""
    x_ref = x_ref.expand_as(x)
    m = len(ts)
    shape = (m,) + (1,) * x.dim()
    with torch.enable_grad():
        p = (x_ref[None] + ts.view(shape) * (x - x_ref)[None]).reshape(m * x.shape[0], *x.shape[1:])
        p.requires_grad_(True)
        out = _plain(layer)(p)
        if ws.dim() == 1:
            (v,) = torch.autograd.grad(out, p, (ws.view(shape) * g[None]).reshape(out.shape))
            return v.view(m, *x.shape).sum(0)
        (v,) = torch.autograd.grad(out, p, g[None].expand(m, *g.shape).reshape(out.shape))
    return (ws.to(v.dtype) @ v.reshape(m, -1)).view(len(ws), *x.shape)        # (each node's J_kᵀg, weighted)


#: the orders n tried by the exact path average of a normalisation layer: an n-node Gauss–Legendre rule
#: and its (2n+1)-node Kronrod extension on the same evaluations (:func:`lidlib.paths.gauss_kronrod`)
QUADRATURE_ORDERS = (8, 16, 32, 64)


def norm_path_vjp(layer, x, x_ref, g, n_steps: Optional[int]):
    """``D̄ᵀg`` of a normalisation (or self-attention) layer on its own input path ``x̂ → x`` (Eq. 21, layer-local).

    ``n_steps = n``: the layer's Jacobian at ``t = k/n``, k = 1..n.  ``None``: the Gauss–Kronrod
    rule with 17, 33, 65, … nodes, until the Kronrod sum and its embedded 8-, 16-, 32-, … node Gauss
    sum agree to ``64·ε`` (relative, max-norm) — the Gauss rule's error, which bounds the Kronrod
    one's.  Returns ``(D̄ᵀg, nodes, measured error)`` (error None for samples) and warns if the
    last rule tried does not reach the tolerance."""
    total = _path_sum(layer, x, x_ref, g)
    if n_steps is not None:
        return total(*right_riemann(n_steps, x.dtype, x.device)), n_steps, None
    tol, tiny = 64 * torch.finfo(x.dtype).eps, torch.finfo(x.dtype).tiny
    for n in QUADRATURE_ORDERS:
        t, w_kronrod, w_gauss = gauss_kronrod(n, x.dtype, x.device)
        v, gauss = total(t, torch.stack([w_kronrod, w_gauss]))
        big = torch.linalg.vector_norm(v, float("inf")).clamp(min=tiny)
        err = float(torch.linalg.vector_norm(gauss.sub_(v), float("inf")) / big)
        if err <= tol:
            return v, len(t), err
    warnings.warn(f"lidlib: the exact path average of {type(layer).__name__} reached a relative error of "
                  f"{err:.1e} with {len(t)} Gauss–Kronrod nodes (wanted {tol:.0e}); the relevance below it is "
                  "approximate to that order — or use n_steps=n for the sampled rule", RuntimeWarning, stacklevel=2)
    return v, len(t), err


def norm_substitute(layer, x, x_ref, y, n_steps) -> torch.Tensor:
    """Replacement output of a normalisation (or self-attention) layer whose backward applies its
    layer-local ``D̄`` (the layer evaluated on its own input path — not the whole network)."""
    xd = x.detach()
    x_ref = x_ref.to(xd.dtype) if isinstance(x_ref, torch.Tensor) and x_ref.dim() else torch.zeros_like(xd)
    return substitute(x, y, lambda g, xd, x_ref: norm_path_vjp(layer, xd, x_ref, g, n_steps)[0], xd, x_ref)


# --------------------------------------------------------------------------- self-attention
class SelfAttention:
    """One call ``mha(x, x, x, **masks)`` of an ``nn.MultiheadAttention`` as a layer of ``x`` alone,
    whose ``D̄`` is layer-local as a normalisation layer's (Eq. 21: :func:`norm_path_vjp`).

    Called on ``m`` copies of ``x`` stacked along dimension 0 (the path points of
    :func:`_layer_path_vjp`), it attends within each copy: a sequence-first ``(L, N, E)`` input is
    regrouped so that the copies extend the batch, and the masks are repeated for them."""

    def __init__(self, module: nn.MultiheadAttention, x: torch.Tensor, masks: dict):
        self.module, self.shape, self.masks = module, tuple(x.shape), masks

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        m = p.shape[0] // self.shape[0]
        sequence_first = len(self.shape) == 3 and not self.module.batch_first
        b = p.view(m, *self.shape)
        b = b.transpose(1, 2) if sequence_first else b           # (m, N, L, E), or (m, L, E) unbatched
        q = b.reshape(-1, *b.shape[-2:])                          # the copies as one batch (m·N, L, E)
        q = q if self.module.batch_first else q.transpose(0, 1)
        masks = dict(self.masks)
        if masks.get("key_padding_mask") is not None:
            masks["key_padding_mask"] = masks["key_padding_mask"].reshape(-1, masks["key_padding_mask"].shape[-1]) \
                .repeat(m, 1)
        if masks.get("attn_mask") is not None and masks["attn_mask"].dim() == 3:
            masks["attn_mask"] = masks["attn_mask"].repeat(m, 1, 1)
        y = type(self.module).forward(self.module, q, q, q, need_weights=False, **masks)[0]
        y = (y if self.module.batch_first else y.transpose(0, 1)).reshape(b.shape)
        return (y.transpose(1, 2) if sequence_first else y).reshape(p.shape)


_ATTENTION_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def self_attention(module: nn.MultiheadAttention, args, kwargs) -> Optional[Tuple[SelfAttention, torch.Tensor]]:
    """``(layer, x)`` of a call ``module(*args, **kwargs)`` that attends ``x`` to itself (query,
    key and value the same tensor), else None (cross-attention)."""
    bound = _ATTENTION_SIGNATURE.bind(module, *args, **kwargs).arguments
    x = bound["query"]
    if bound["key"] is not x or bound["value"] is not x:
        return None
    masks = {k: bound[k] for k in ("key_padding_mask", "attn_mask", "is_causal") if k in bound}
    return SelfAttention(module, x, masks), x


class _Unexplained(torch.autograd.Function):
    """``t`` itself, whose backward pass refuses with ``message``: an output without a rule that
    the logits must not depend on (it is only reached if they do)."""

    @staticmethod
    def forward(ctx, t, message):
        ctx.message = message
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        raise TypeError(ctx.message)


def unexplained(t: torch.Tensor, message: str) -> torch.Tensor:
    """See :class:`_Unexplained`."""
    return _Unexplained.apply(t, message)
