"""Solutions of chapter 7 (the essence of LID-Taylor, Eq. 15-18)."""
import numpy as np
import torch

import lidlib
from lidlib import toy
from lidlib.widgets import conservation


def exercise_1():
    """2-2-1 network, X = (1, 2), X̂ = (1, -1): G^{l+1}, Eq. (15), Eq. (18) and their difference by hand."""
    net = toy.two_two_one()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    x_ref = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    W1 = np.array([[1.0, -1.0], [2.0, 1.0]])
    eG3 = np.array([1.0, -2.0])                 # e_c D^3
    eG2 = eG3 @ np.diag([0.0, 1.0])             # ReLU at Y^1 = (-0.5, 3)
    eG1 = eG2 @ W1                              # (-4, -2)
    Y = {"input": np.array([1.0, 2.0]), "0": np.array([-0.5, 3.0]), "1": np.array([0.0, 3.0])}
    Yr = {"input": np.array([1.0, -1.0]), "0": np.array([2.5, 0.0]), "1": np.array([2.5, 0.0])}
    rows = {"input": eG1, "0": eG2, "1": eG3}
    lid = lidlib.explain(net, x, 0, "LID-Taylor", baseline=x_ref)
    lrp = lidlib.explain(net, x, 0, conservation.LRP_TAYLOR)
    out = {}
    for name, g in rows.items():
        R_lid, R_lrp, absorbed = g * (Y[name] - Yr[name]), g * Y[name], g * Yr[name]
        assert np.allclose(lid.relevance[name][0].numpy(), R_lid, atol=1e-12)
        assert np.allclose(lrp.relevance[name][0].numpy(), R_lrp, atol=1e-12)
        assert np.allclose(R_lrp - R_lid, absorbed, atol=1e-12)
        out[name] = {"e_c G": g.tolist(), "LID": R_lid.tolist(), "LRP": R_lrp.tolist(), "absorbed": absorbed.tolist()}
    assert abs(float(lrp.total[0] - lid.total[0]) - 2.75) < 1e-12          # Ẑ_c
    return out


def _jacobian(layer, y):
    """Local Jacobian of ``layer`` at one input ``y`` (no batch dim), all rows in one backward pass."""
    with torch.no_grad():
        n_out = layer(y[None]).numel()
    V = y.expand(n_out, *y.shape).clone().requires_grad_(True)
    J, = torch.autograd.grad(layer(V).reshape(n_out, n_out), V, torch.eye(n_out, dtype=y.dtype))
    return J.reshape(n_out, -1)


def exercise_2():
    """Eq. (15) with explicit Jacobian matrices on toy.cnn(), against lidlib."""
    cnn = toy.cnn()
    x = torch.rand(1, 2, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_ref = torch.full_like(x, 0.5)
    c = 2
    with torch.no_grad():
        Y, Yr = [x[0]], [x_ref[0]]
        for layer in cnn:
            Y.append(layer(Y[-1][None])[0])
            Yr.append(layer(Yr[-1][None])[0])
    D = [_jacobian(layer, Y[l]) for l, layer in enumerate(cnn)]              # D[l]: Y^l -> Y^{l+1}
    shapes = {type(layer).__name__ + f" ({l})": tuple(d.shape) for l, (layer, d) in enumerate(zip(cnn, D))}
    row = torch.zeros(Y[-1].numel(), dtype=torch.float64)
    row[c] = 1.0                                                            # e_c
    rows = [None] * (len(cnn) + 1)
    rows[-1] = row
    for l in range(len(cnn) - 1, -1, -1):
        rows[l] = rows[l + 1] @ D[l]                                        # e_c G^{l+1} -> e_c G^l
    e = lidlib.explain(cnn, x, c, "LID-Taylor", baseline=x_ref)
    names = list(e.relevance)
    for l, name in enumerate(names):
        if name == "input" or isinstance(cnn[int(name)], torch.nn.MaxPool2d):
            R = rows[l] * (Y[l] - Yr[l]).flatten()                          # Eq. (15)
            assert torch.allclose(R, e.relevance[name][0].flatten(), rtol=0, atol=1e-12), name
    return shapes


def exercise_3():
    """toy.cnn(): LRP-0 = gradient x activation; bias-free and X̂ = 0: LID-Taylor = both."""
    cnn = toy.cnn()
    x = torch.rand(3, 2, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    c = torch.tensor([0, 1, 4])
    lrp0 = lidlib.explain(cnn, x, c, lidlib.methods.LRP0_EXACT)         # ε = 0: exact LRP-0
    xg = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(cnn(xg).gather(1, c[:, None]).sum(), xg)
    assert torch.allclose(lrp0.input, grad * x, rtol=0, atol=1e-12)
    lrpt = lidlib.explain(cnn, x, c, conservation.LRP_TAYLOR)
    for name in lrp0.relevance:
        assert torch.allclose(lrp0.relevance[name], lrpt.relevance[name], rtol=0, atol=1e-12)
    nobias = conservation.scaled_biases(cnn, 0.0)
    a = lidlib.explain(nobias, x, c, lidlib.methods.LRP0_EXACT)
    b = lidlib.explain(nobias, x, c, "LID-Taylor", baseline=torch.zeros_like(x[:1]))
    for name in a.relevance:
        assert torch.allclose(a.relevance[name], b.relevance[name], rtol=0, atol=1e-12)
    with_bias = lidlib.explain(cnn, x, c, "LID-Taylor", baseline=torch.zeros_like(x[:1]))
    gap = max(float((lrp0.relevance[n] - with_bias.relevance[n]).abs().max()) for n in lrp0.relevance)
    assert gap > 1e-3          # with biases the reference outputs are not zero, and the two differ
    return {"max |LRP-0 - LID-Taylor| over layers, with biases": gap, "without biases": 0.0}
