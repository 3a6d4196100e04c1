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

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .top import stabilize

#: element-wise piecewise-linear activations the path rules know in closed form
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)
#: non-element-wise non-linear layers
MAXPOOL = (nn.MaxPool2d,)
#: affine layers: their Jacobian is the constant W^l (Sec. 2: D^l = W^l)
LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
          nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d,
          nn.Dropout2d, nn.Dropout3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d,
          nn.ConstantPad2d, nn.ConstantPad3d)
#: linear layers the z⁺ rule (Eq. 9) applies to
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: linear layers the ε rule (Eq. 5 with a stabilised denominator) applies to
MIXING = WEIGHTED + (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.AvgPool1d, nn.AvgPool2d,
                     nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


@dataclass(frozen=True)
class Rule:
    """A middle rule: one choice of Jacobian per kind of layer (Table 1 and Table 3).

    ``elementwise`` and ``maxpool``: ``"D"`` (local Jacobian), ``"D̄"`` (path average with the
    explanation's ``n_steps``) or ``"D̄exact"`` (the closed-form path average whatever ``n_steps``).
    ``linear``: ``"W"`` (the layer's own Jacobian), ``"z+"`` (Eq. 9) or ``"ε"`` (LRP-ε with ``eps``).
    """
    name: str
    elementwise: str = "D"
    maxpool: str = "D"
    linear: str = "W"
    eps: float = 1e-9

    def __post_init__(self):
        for field, ok in (("elementwise", ("D", "D̄", "D̄exact")), ("maxpool", ("D", "D̄", "D̄exact")),
                          ("linear", ("W", "z+", "ε"))):
            if getattr(self, field) not in ok:
                raise ValueError(f"Rule.{field} must be one of {ok}, got {getattr(self, field)!r}")


#: LID-Taylor's rule: the local Jacobian D^l everywhere (Eq. 12–15)
TAYLOR = Rule("Taylor")
#: LID-IG's rule: the path-averaged Jacobian D̄^l at every non-linear layer (Eq. 19–23)
IG = Rule("IG", elementwise="D̄", maxpool="D̄")
#: LRP-0 (Eq. 5): W at conv/linear, pass at activations, winner-take-all at max-pool.
#: DeepLIFT (Eq. 7) is the same rule with an increment: Rescale = the exact secant slope.
LRP0 = Rule("LRP-0", elementwise="D̄exact", maxpool="D")
RESCALE = Rule("Rescale", elementwise="D̄exact", maxpool="D")
#: the z⁺ rule of DTD / LRP-ZP at conv/linear layers (Eq. 9), pass and WTA elsewhere
ZPLUS = Rule("z+", elementwise="D̄exact", maxpool="D", linear="z+")


def epsilon(eps: float) -> Rule:
    """LRP-ε: Eq. (5) with the denominator ``Y_j + ε·sign(Y_j)`` at conv/linear layers."""
    return Rule(f"ε={eps:g}", elementwise="D̄exact", maxpool="D", linear="ε", eps=eps)


class _Substitute(torch.autograd.Function):
    """Return ``y`` in the forward pass; in the backward pass map the output gradient by ``vjp``."""

    @staticmethod
    def forward(ctx, x, y, vjp):
        ctx.vjp = vjp
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        return ctx.vjp(grad), None, None


def substitute(x: torch.Tensor, y: torch.Tensor, vjp: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A tensor equal to ``y`` whose backward pass sends ``vjp(g)`` to ``x``."""
    return _Substitute.apply(x, y.detach(), vjp)


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


def _count_above(x_ref, dx, b, n, strict):
    """#{k ∈ 1..n : x̂ + (k/n)Δ > b} (``≥ b`` if not strict), in closed form."""
    safe = torch.where(dx == 0, torch.ones_like(dx), dx)
    r = (b - x_ref) * n / safe
    if strict:
        up = n - torch.clamp(torch.floor(r), 0, n)          # Δ > 0: k > r
        down = torch.clamp(torch.ceil(r) - 1, 0, n)         # Δ < 0: k < r
        flat = n * (x_ref > b).to(x_ref.dtype)
    else:
        up = n - torch.clamp(torch.ceil(r) - 1, 0, n)       # Δ > 0: k ≥ r
        down = torch.clamp(torch.floor(r), 0, n)            # Δ < 0: k ≤ r
        flat = n * (x_ref >= b).to(x_ref.dtype)
    return torch.where(dx > 0, up, torch.where(dx < 0, down, flat))


def path_slope(module: nn.Module, x: torch.Tensor, x_ref: torch.Tensor, y: torch.Tensor,
               y_ref: torch.Tensor, n_steps: Optional[int]) -> torch.Tensor:
    """Diagonal of ``D̄`` for an element-wise layer on the path ``x̂ → x`` (Eq. 21).

    ``n_steps = n``: the mean of σ' at ``x̂ + (k/n)Δx``, k = 1..n, counted in closed form.
    ``n_steps = None``: the exact average, the secant slope ``Δy/Δx`` (σ'(x) where ``Δx = 0``).
    """
    dx = x - x_ref
    if n_steps is None:
        dy = y - y_ref
        safe = torch.where(dx == 0, torch.ones_like(dx), dx)
        return torch.where(dx == 0, local_slope(module, x), dy / safe)
    left, kinks = _breakpoints(module)
    d = torch.full_like(dx, left * n_steps)
    for b, jump, strict in kinks:
        d = d + jump * _count_above(x_ref, dx, b, n_steps, strict)
    return d / n_steps


def elementwise_substitute(module, x, x_ref, y, y_ref, n_steps) -> torch.Tensor:
    """Replacement output of an element-wise layer whose backward multiplies by ``D̄``."""
    m = path_slope(module, x.detach(), x_ref, y.detach(), y_ref, n_steps)
    return substitute(x, y, lambda g: g * m)


# --------------------------------------------------------------------------- max-pool
def _windows(module: nn.MaxPool2d, t: torch.Tensor, out_hw, fill: float):
    """Unfold ``t`` (B, C, H, W) into pooling windows (B, C, K, L), padding with ``fill``."""
    k, s = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
    p, d = _pair(module.padding), _pair(module.dilation)
    squeeze = t.dim() == 3
    if squeeze:
        t = t[None]
    B, C, H, W = t.shape
    spans = [d[i] * (k[i] - 1) + 1 for i in range(2)]
    size = [max((H, W)[i] + 2 * p[i], (out_hw[i] - 1) * s[i] + spans[i]) for i in range(2)]
    tp = F.pad(t, (p[1], size[1] - W - p[1], p[0], size[0] - H - p[0]), value=fill)
    u = F.unfold(tp, k, dilation=d, stride=s).view(B, C, k[0] * k[1], -1)
    geometry = dict(kernel_size=k, dilation=d, stride=s, size=size, pad=p, hw=(H, W), squeeze=squeeze)
    return u, geometry


def _fold(u: torch.Tensor, geometry) -> torch.Tensor:
    """Adjoint of :func:`_windows`: scatter-add windows (B, C, K, L) back to (B, C, H, W)."""
    B, C, K, L = u.shape
    out = F.fold(u.reshape(B, C * K, L), geometry["size"], geometry["kernel_size"],
                 dilation=geometry["dilation"], stride=geometry["stride"])
    (p0, p1), (H, W) = geometry["pad"], geometry["hw"]
    out = out[..., p0:p0 + H, p1:p1 + W]
    return out[0] if geometry["squeeze"] else out


def maxpool_path_weights(module: nn.MaxPool2d, x: torch.Tensor, x_ref: torch.Tensor, out_hw,
                         n_steps: Optional[int]):
    """``D̄`` of a max-pool layer as per-window weights (B, C, K, L) (Eq. 21).

    Weight ``i`` of a window is the share of the path ``x̂ → x`` on which input ``i`` is the
    window's maximum (first index on ties, as PyTorch): sampled at ``k/n`` for ``n_steps = n``, or
    exactly for ``n_steps = None`` — along the path each input is a line ``x̂_i + tΔ_i`` and the
    window's maximum is their upper envelope, so input ``i`` wins on one interval of ``t``.
    """
    fill = float(torch.minimum(x.min(), x_ref.min())) - 1.0 if x.numel() else 0.0
    a, geo = _windows(module, x_ref.expand_as(x), out_hw, fill)
    b, _ = _windows(module, x - x_ref, out_hw, 0.0)
    if n_steps is not None:
        w = torch.zeros_like(b)
        for k in range(1, n_steps + 1):
            idx = torch.argmax(a + (k / n_steps) * b, dim=2, keepdim=True)
            w.scatter_add_(2, idx, torch.full_like(idx, 1.0 / n_steps, dtype=b.dtype))
        return w, geo
    K = a.shape[2]
    da = a[:, :, :, None, :] - a[:, :, None, :, :]      # line_i − line_j = da + t·db
    db = b[:, :, :, None, :] - b[:, :, None, :, :]
    inf = torch.tensor(float("inf"), dtype=a.dtype, device=a.device)
    i_first = torch.ones(K, K, dtype=torch.bool, device=a.device).triu(1)[None, None, :, :, None]
    eye = torch.eye(K, dtype=torch.bool, device=a.device)[None, None, :, :, None]
    safe = torch.where(db == 0, torch.ones_like(db), db)
    cross = -da / safe
    wins_flat = (da > 0) | ((da == 0) & i_first) | eye
    lower = torch.where(db > 0, cross, torch.where(db < 0, -inf, torch.where(wins_flat, -inf, inf)))
    upper = torch.where(db < 0, cross, inf)
    lo = lower.amax(dim=3).clamp(0, 1)
    hi = upper.amin(dim=3).clamp(0, 1)
    return (hi - lo).clamp(min=0), geo


def maxpool_substitute(module, x, x_ref, y, y_ref, n_steps) -> torch.Tensor:
    """Replacement output of a max-pool layer whose backward applies ``D̄`` (Eq. 21)."""
    w, geo = maxpool_path_weights(module, x.detach(), x_ref, y.shape[-2:], n_steps)

    def vjp(g):
        gg = g[None] if geo["squeeze"] else g
        return _fold(w * gg.reshape(gg.shape[0], gg.shape[1], 1, -1), geo)

    return substitute(x, y, vjp)


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
        scale = dy / stabilize(zp.detach(), rule.eps)
        return y.detach() + scale * (zp - zp.detach())
    scale = dy / stabilize(dy, rule.eps)            # ε rule: g_in = Wᵀ(g ⊙ Δy / (Δy + ε))
    return y.detach() + scale * (y - y.detach())


def layer_kind(module: nn.Module) -> Optional[str]:
    """``"elementwise"``, ``"maxpool"``, ``"linear"`` for supported leaves, else None."""
    if isinstance(module, ELEMENTWISE):
        return "elementwise"
    if isinstance(module, MAXPOOL):
        return "maxpool"
    if isinstance(module, LINEAR):
        return "linear"
    return None


def apply_rule(rule: Rule, module: nn.Module, x, x_ref, y, y_ref, n_steps) -> Optional[torch.Tensor]:
    """The replacement output of one layer call under ``rule``, or None for the plain gradient."""
    kind = layer_kind(module)
    if kind == "elementwise" and rule.elementwise != "D":
        return elementwise_substitute(module, x, x_ref, y, y_ref, None if rule.elementwise == "D̄exact" else n_steps)
    if kind == "maxpool" and rule.maxpool != "D":
        return maxpool_substitute(module, x, x_ref, y, y_ref, None if rule.maxpool == "D̄exact" else n_steps)
    if kind == "linear" and rule.linear != "W" and isinstance(module, WEIGHTED if rule.linear == "z+" else MIXING):
        return linear_substitute(rule, module, x, x_ref, y, y_ref)
    return None
