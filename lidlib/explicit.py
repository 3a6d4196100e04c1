"""The explicit form, for teaching: relevance messages ``R_{j→i}`` of a toy MLP as matrices.

Every middle rule of Table 3 is one formula, the division form of Eq. (5), (7), (9), (13)/(14), (20):

    R_{j→i} = R(Y_j) · A_ji · u_i / v_j

with ``A`` the layer's matrix (``W``, ``W⁺``, ``D`` or ``D̄``), ``u`` the input (``Y^{l-1}``, or the
increment ``ΔY^{l-1}``) and ``v`` the output (``Y^l``, ``ΔY^l``, or ``A u`` for z⁺).  Each row of
the message matrix is distributed by neuron ``j`` (Eq. 2), each column absorbed by neuron ``i``
(Eq. 3).  This module is deliberately plain — loops and dense matrices, one sample at a time — and
supports ``nn.Sequential`` MLPs of Linear layers and element-wise activations (ReLU, ReLU6,
LeakyReLU), plus Flatten / Identity / Dropout.  :func:`lidlib.explain` is the fast form.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from .methods import Method, get_method
from .paths import riemann_points
from .rules import ELEMENTWISE, local_slope
from .top import stabilize, top_relevance


@dataclass
class LayerMessages:
    """One layer's step: ``messages[j, i] = R_{j→i}``; ``R_out`` = R(Y^l), ``R_in`` = R(Y^{l-1})."""
    name: str
    A: torch.Tensor
    messages: torch.Tensor
    R_out: torch.Tensor
    R_in: torch.Tensor

    @property
    def distributed(self) -> torch.Tensor:
        """Row sums ``Σ_i R_{j→i}``: equal to ``R(Y_j)`` where the rule conserves (Eq. 2)."""
        return self.messages.sum(dim=1)


def messages(R_out: torch.Tensor, A: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``R_{j→i} = R_j A_ji u_i / v_j`` (0 where ``v_j = 0``): Eq. (5), (7), (9), (13), (20)."""
    M = torch.zeros_like(A)
    for j in range(A.shape[0]):
        if v[j] != 0:
            for i in range(A.shape[1]):
                M[j, i] = R_out[j] * A[j, i] * u[i] / v[j]
    return M


def absorb(M: torch.Tensor) -> torch.Tensor:
    """``R(Y_i^{l-1}) = Σ_j R_{j→i}``: the absorption rule, Eq. (3)."""
    return M.sum(dim=0)


def mean_slope(layer: nn.Module, x: torch.Tensor, x_ref: torch.Tensor, n_steps: Optional[int]) -> torch.Tensor:
    """``D̄_jj``: σ' averaged at ``x̂ + (k/n)Δx``, k = 1..n (Eq. 21); the secant slope if ``n_steps`` is None."""
    dx = x - x_ref
    if n_steps is None:
        out = local_slope(layer, x).clone()
        for j in range(len(x)):
            if dx[j] != 0:
                out[j] = (layer(x[j:j + 1]) - layer(x_ref[j:j + 1]))[0] / dx[j]
        return out
    return sum(local_slope(layer, x_ref + t * dx) for t in riemann_points(n_steps).tolist()) / n_steps


def layer_matrix(layer: nn.Module, method: Method, x, x_ref, y, y_ref, n_steps):
    """``(A, u, v)`` of one layer under ``method`` — the three ingredients of the division form."""
    u, v = x - x_ref, y - y_ref
    if isinstance(layer, nn.Linear):
        A = layer.weight.detach().clone()
        if method.rule.linear == "z+":
            A = A.clamp(min=0)
            v = A @ u
        elif method.rule.linear == "ε":                     # LRP-ε: Eq. 5 with v_j + ε·sign(v_j)
            v = stabilize(v, method.rule.eps)
        return A, u, v
    if isinstance(layer, ELEMENTWISE):
        mode = method.rule.elementwise
        if mode == "D":
            d = local_slope(layer, x)                                            # Eq. 13: D at Y^{l-1}
        else:
            d = mean_slope(layer, x, x_ref, None if mode == "D̄exact" else n_steps)  # Eq. 20–21
        return torch.diag(d), u, v
    if isinstance(layer, (nn.Flatten, nn.Identity, nn.Dropout)):
        return torch.eye(len(x), dtype=x.dtype), u, v
    raise TypeError(f"the explicit form handles Linear layers and element-wise activations, not {type(layer).__name__}")


def decompose(model: nn.Sequential, x: torch.Tensor, target: int, method="LID-IG",
              baseline: Optional[torch.Tensor] = None, n_steps: Optional[int] = 10) -> List[LayerMessages]:
    """All layers' message matrices for one sample ``x`` (1-D), from the top down.

    The result's first entry is the last layer.  ``steps[-1].R_in`` is the input relevance.
    """
    m = get_method(method)
    with torch.no_grad():
        ys = [x]
        for layer in model:
            ys.append(layer(ys[-1][None])[0])
        if m.increment:
            ref = torch.zeros_like(x) if baseline is None else baseline
            refs = [ref]
            for layer in model:
                refs.append(layer(refs[-1][None])[0])
        else:
            refs = [torch.zeros_like(t) for t in ys]
        _, R = top_relevance(m.top, ys[-1][None], refs[-1][None], torch.tensor([target]), n_steps, m.rule.eps)
        R = R[0]
        steps = []
        for idx in reversed(range(len(model))):
            A, u, v = layer_matrix(model[idx], m, ys[idx], refs[idx], ys[idx + 1], refs[idx + 1], n_steps)
            M = messages(R, A, u, v)
            R_in = absorb(M)
            steps.append(LayerMessages(str(idx), A, M, R, R_in))
            R = R_in
    return steps
