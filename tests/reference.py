"""Slow, obvious reference implementations of the paper's formulas, for nn.Sequential models.

Everything is float64, one sample at a time, with dense matrices and explicit loops:

* the top relevance from the softmax written out element by element (Eq. 10, Sec. 3.1, 3.3);
* each layer's matrix ``A``: ``W`` (the Jacobian of an affine layer), ``W⁺``, the local Jacobian
  ``D`` from autograd, or the path average ``D̄`` (Eq. 21) — autograd Jacobians at ``k/n`` for
  finite n; for the exact limit, the Jacobian integrated piece by piece between the path's
  breakpoints (element-wise) or by the upper envelope of each max-pool window's lines;
* the messages ``R_{j→i} = R_j A_ji u_i / v_j`` and their column sums (Eq. 3, 5, 7, 9, 13, 20).

* smooth element-wise layers: σ' integrated along the path by adaptive quadrature (``scipy.integrate.quad``,
  split at Hardswish's and Hardsigmoid's kinks); normalisation layers: the dense Jacobian integrated along
  the layer's own input path (``scipy.integrate.quad_vec``);
* a :class:`Gate` ``x ⊙ branch(x)`` (squeeze-excitation): each factor gets the other's path average,
  the mean of its values at the samples, and the branch is walked through recursively.

Nothing here is imported from lidlib except the method table (names → axes) and the table of layer
families (which formula a layer gets: :func:`lidlib.rules.family`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.functional import jacobian


def _kind(layer):
    from lidlib.rules import family
    fam = family(layer)
    return fam.kind if fam is not None else None


class Gate(nn.Module):
    """``x ⊙ branch(x)``: a squeeze-excitation-like product of two tensors (for the tests)."""

    def __init__(self, *branch):
        super().__init__()
        self.branch = nn.Sequential(*branch)

    def forward(self, x):
        return x * self.branch(x)


def softmax_row(z, c):
    """``∂P_c/∂Z_i``, element by element (Eq. 10)."""
    e = [math.exp(float(v) - float(z.max())) for v in z]
    s = sum(e)
    p = [v / s for v in e]
    return torch.tensor([(1 - p[c]) * p[i] if i == c else -p[c] * p[i] for i in range(len(z))], dtype=torch.float64)


def top(kind, z, z_ref, c, n):
    """``(R(Y^L), g^L)`` for one sample, from the definitions in Table 2."""
    dz = z - z_ref
    if kind == "logit":
        g = torch.zeros_like(z)
        g[c] = 1.0
    elif kind == "ST":
        g = softmax_row(z, c)
    elif kind == "SIG":
        if n is None:      # composite Simpson, 4000 panels: far below the tolerances used
            m = 4000
            ts = [i / m for i in range(m + 1)]
            ws = [(1 if i in (0, m) else (4 if i % 2 else 2)) / (3 * m) for i in range(m + 1)]
        else:
            ts, ws = [k / n for k in range(1, n + 1)], [1 / n] * n
        g = sum(w * softmax_row(z_ref + t * dz, c) for t, w in zip(ts, ws))
    elif kind == "SG":
        return softmax_row(z, c), None
    else:
        raise ValueError(kind)
    return g * dz, g


def _flat(layer, shape):
    return lambda t: layer(t.reshape(shape)[None])[0].reshape(-1)


def _slope(layer, p):
    """σ'(p) by autograd (PyTorch's own convention at the breakpoints)."""
    p = p.clone().requires_grad_(True)
    layer(p).sum().backward()
    return p.grad


def _breaks(layer):
    if isinstance(layer, nn.Hardtanh):          # ReLU6 = Hardtanh(0, 6)
        return [float(layer.min_val), float(layer.max_val)]
    if isinstance(layer, (nn.Hardswish, nn.Hardsigmoid)):
        return [-3.0, 3.0]
    if isinstance(layer, (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.Softsign)):
        return [0.0]                            # (ELU, CELU, SELU, Softsign: σ' or σ'' jumps at 0)
    if isinstance(layer, nn.Softplus):
        return [layer.threshold / layer.beta]   # x itself beyond β·x > threshold
    return list(getattr(layer, "kinks", ()))


def smooth_exact(layer, x, x_ref):
    """``D̄_jj = ∫₀¹ σ'(x̂_j + tΔx_j) dt`` by adaptive quadrature, element by element."""
    from scipy.integrate import quad
    out = torch.zeros_like(x)
    for j in range(len(x)):
        a, b = float(x_ref[j]), float(x[j] - x_ref[j])
        d = lambda t: float(_slope(layer, torch.tensor([a + t * b], dtype=torch.float64))[0])
        if b == 0:
            out[j] = d(0.0)
            continue
        kinks = sorted((k - a) / b for k in _breaks(layer) if 0 < (k - a) / b < 1)
        out[j] = quad(d, 0.0, 1.0, points=kinks or None, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
    return torch.diag(out)


def norm_exact(f, x, x_ref):
    """``D̄ = ∫₀¹ J(x̂ + tΔx) dt`` of a normalisation layer, the dense Jacobian by adaptive quadrature."""
    from scipy.integrate import quad_vec
    J = lambda t: jacobian(f, x_ref + t * (x - x_ref)).numpy()
    return torch.tensor(quad_vec(J, 0.0, 1.0, epsabs=1e-14, epsrel=1e-13)[0])


def elementwise_exact(layer, x, x_ref):
    """``D̄_jj`` exactly: σ' integrated over the pieces of [0, 1] between the breakpoints."""
    out = torch.zeros_like(x)
    for j in range(len(x)):
        a, b = float(x_ref[j]), float(x[j] - x_ref[j])
        if b == 0:
            out[j] = _slope(layer, x[j:j + 1])[0]
            continue
        ts = sorted({0.0, 1.0} | {(k - a) / b for k in _breaks(layer) if 0 < (k - a) / b < 1})
        for t0, t1 in zip(ts[:-1], ts[1:]):
            mid = torch.tensor([a + (t0 + t1) / 2 * b], dtype=torch.float64)
            out[j] += (t1 - t0) * _slope(layer, mid)[0]
    return torch.diag(out)


def maxpool_matrix(pool: nn.MaxPool2d, shape, x, x_ref, n):
    """``D̄`` of a max-pool layer by explicit loops over windows: the share of the path on which
    each input is its window's maximum (first index on ties), sampled (``n``) or exact (None)."""
    C, H, W = shape
    k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * 2
    s = pool.stride if isinstance(pool.stride, tuple) else (pool.stride or pool.kernel_size,) * 2
    p = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,) * 2
    d = pool.dilation if isinstance(pool.dilation, tuple) else (pool.dilation,) * 2
    Ho, Wo = pool(x.reshape(shape)[None]).shape[-2:]
    A = torch.zeros(C * Ho * Wo, C * H * W, dtype=torch.float64)
    a, b = x_ref.reshape(shape), (x - x_ref).reshape(shape)
    for c in range(C):
        for oh in range(Ho):
            for ow in range(Wo):
                idx = [(c, oh * s[0] - p[0] + d[0] * i, ow * s[1] - p[1] + d[1] * j)
                       for i in range(k[0]) for j in range(k[1])]
                idx = [(c_, ih, iw) for c_, ih, iw in idx if 0 <= ih < H and 0 <= iw < W]
                lines = [(float(a[i]), float(b[i])) for i in idx]

                def winner(t):
                    vals = [u + t * v for u, v in lines]
                    return vals.index(max(vals))
                if n is not None:
                    pieces = [(k_ / n, 1 / n) for k_ in range(1, n + 1)]
                else:
                    ts = {0.0, 1.0}
                    for i1, (u1, v1) in enumerate(lines):
                        for u2, v2 in lines[i1 + 1:]:
                            if v1 != v2 and 0 < (u2 - u1) / (v1 - v2) < 1:
                                ts.add((u2 - u1) / (v1 - v2))
                    ts = sorted(ts)
                    pieces = [((t0 + t1) / 2, t1 - t0) for t0, t1 in zip(ts[:-1], ts[1:])]
                row = (c * Ho + oh) * Wo + ow
                for t, w in pieces:
                    ci, ih, iw = idx[winner(t)]
                    A[row, (ci * H + ih) * W + iw] += w
    return A


def layer_matrix(layer, rule, shape, x, x_ref, n):
    """The matrix ``A`` of one layer under a middle rule (Table 3)."""
    f = _flat(layer, shape)
    kind = _kind(layer)
    if kind in ("piecewise", "smooth", "norm"):
        mode = rule.elementwise
        xs = x.reshape(-1)
        if mode == "D":
            return jacobian(f, xs)
        if mode == "D̄exact" or n is None:
            exact = {"piecewise": elementwise_exact, "smooth": smooth_exact}.get(kind)
            return exact(layer, xs, x_ref.reshape(-1)) if exact else norm_exact(f, xs, x_ref.reshape(-1))
        return sum(jacobian(f, x_ref.reshape(-1) + (k / n) * (xs - x_ref.reshape(-1))) for k in range(1, n + 1)) / n
    if isinstance(layer, nn.MaxPool2d):
        if rule.maxpool == "D":
            return jacobian(f, x.reshape(-1))
        return maxpool_matrix(layer, shape, x.reshape(-1), x_ref.reshape(-1), None if rule.maxpool == "D̄exact" else n)
    if rule.linear == "z+" and isinstance(layer, (nn.Linear, nn.Conv2d)):
        pos = _positive_copy(layer)
        return jacobian(_flat(pos, shape), x.reshape(-1))
    return jacobian(f, x.reshape(-1))   # affine: the constant Jacobian W


def _positive_copy(layer):
    import copy
    pos = copy.deepcopy(layer)
    with torch.no_grad():
        pos.weight.clamp_(min=0)
        pos.bias.zero_()
    return pos


def _forward(layers, x):
    ys = [x]
    with torch.no_grad():
        for layer in layers:
            ys.append(layer(ys[-1][None])[0])
    return ys


def _mean_factor(rule, n, v, v_ref):
    """A factor's path average: its mean at the samples (``D``: its value at the input)."""
    if rule.elementwise == "D":
        return v
    w = 0.5 if rule.elementwise == "D̄exact" or n is None else (n + 1) / (2 * n)
    return v_ref + w * (v - v_ref)


def _backward(layers, ys, refs, R, method, n, prefix, out):
    """Division forms from the last layer of ``layers`` down; records ``out[prefix + i]``, returns R(input)."""
    for idx in reversed(range(len(layers))):
        layer = layers[idx]
        if isinstance(layer, Gate):      # y = a ⊙ b, a = x, b = branch(x)
            a, a_ref = ys[idx], refs[idx]
            bys = _forward(layer.branch, a)
            brefs = _forward(layer.branch, a_ref) if method.increment else [torch.zeros_like(t) for t in bys]
            b, b_ref = bys[-1].expand_as(a), brefs[-1].expand_as(a)
            a_bar, b_bar = _mean_factor(method.rule, n, a, a_ref), _mean_factor(method.rule, n, b, b_ref)
            dy = ys[idx + 1] - refs[idx + 1]
            R_a, R_b = torch.zeros_like(a), torch.zeros_like(a)
            for i in range(a.numel()):   # R_{y→a} = R_y b̄ Δa / Δy, R_{y→b} = R_y ā Δb / Δy
                if dy.reshape(-1)[i] != 0:
                    Ri, dyi = R.reshape(-1)[i], dy.reshape(-1)[i]
                    R_a.view(-1)[i] = Ri * b_bar.reshape(-1)[i] * (a - a_ref).reshape(-1)[i] / dyi
                    R_b.view(-1)[i] = Ri * a_bar.reshape(-1)[i] * (b - b_ref).reshape(-1)[i] / dyi
            R_b = R_b.sum_to_size(bys[-1].shape)     # a broadcast gate collects its messages
            out[f"{prefix}{idx}.branch.{len(layer.branch) - 1}"] = R_b
            R = R_a + _backward(layer.branch, bys, brefs, R_b, method, n, f"{prefix}{idx}.branch.", out)
        else:
            A = layer_matrix(layer, method.rule, ys[idx].shape, ys[idx], refs[idx], n)
            u = (ys[idx] - refs[idx]).reshape(-1)
            v = (ys[idx + 1] - refs[idx + 1]).reshape(-1)
            if method.rule.linear == "z+" and isinstance(layer, (nn.Linear, nn.Conv2d)):
                v = A @ u
            Rf = R.reshape(-1)
            R_in = torch.zeros_like(u)
            for j in range(A.shape[0]):          # R_{j→i} = R_j A_ji u_i / v_j, absorbed over j (Eq. 3)
                if v[j] != 0 and Rf[j] != 0:
                    R_in += Rf[j] * A[j] * u / v[j]
            R = R_in.reshape(ys[idx].shape)
        if idx > 0:
            out[f"{prefix}{idx - 1}"] = R
    return R


def relevances(model: nn.Sequential, method, x, c, baseline, n):
    """Relevance of every layer of one sample ``x`` (no batch dim) by the division forms."""
    ys = _forward(model, x)
    refs = _forward(model, baseline) if method.increment else [torch.zeros_like(t) for t in ys]
    R, _ = top(method.top, ys[-1], refs[-1], c, n)
    out = {str(len(model) - 1): R}
    out["input"] = _backward(model, ys, refs, R, method, n, "", out)
    return out
