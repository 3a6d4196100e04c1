"""Solutions of chapter 6 (LID-Taylor, Eq. 12-14)."""
import numpy as np
import torch
from torch.autograd.functional import jacobian

import lidlib
from lidlib import toy


def exercise_1():
    """2-2-1 network, X = (1, 2), X̂ = (1, -1): every quantity by hand, checked against lidlib."""
    model = toy.two_two_one()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    x_ref = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    # by hand
    dY1 = np.array([-3.0, 3.0])                 # W1 (0, 3)
    dY2 = np.array([-2.5, 3.0])                 # relu(-0.5, 3) - relu(2.5, 0)
    D2 = np.diag([0.0, 1.0])                    # ReLU on/off at the actual input
    eps = dY2 - D2 @ dY1                        # (-2.5, 0)
    dZ = -8.5
    R3 = np.array([dZ])
    R2 = np.array([-2.5, -6.0])
    R1 = np.array([0.0, -6.0])
    R0 = np.array([0.0, -6.0])
    lost_relu = float(np.sum(R2 * eps / dY2))   # -2.5
    # check with lidlib
    e = lidlib.explain(model, x, 0, "LID-Taylor", baseline=x_ref)
    for name, R in (("2", R3), ("1", R2), ("0", R1), ("input", R0)):
        assert np.allclose(e.relevance[name][0].numpy(), R, atol=1e-12), name
    assert abs(float(e.total[0]) - dZ) < 1e-12
    assert np.allclose(eps, [-2.5, 0.0]) and abs(lost_relu - (R2.sum() - R1.sum())) < 1e-12
    gap = float(e.input.sum() - e.total[0])
    assert abs(gap - 2.5) < 1e-12
    return {"dY1": dY1.tolist(), "dY2": dY2.tolist(), "eps": eps.tolist(), "R(X)": R0.tolist(),
            "R(Y1)": R1.tolist(), "R(Y2)": R2.tolist(), "gap at input": gap}


def exercise_2(seed: int = 3):
    """Eq. (13)/(14) in plain NumPy for a LeakyReLU MLP, against lidlib's gradient form."""
    model = toy.mlp((5, 7, 6, 4), activation="leaky_relu", seed=seed)
    g = np.random.default_rng(seed)
    x = g.normal(size=5)
    x_ref = 0.7 * g.normal(size=5)
    layers = list(model)
    slope = layers[1].negative_slope

    def forward(v):
        out = [v]
        for layer in layers:
            if isinstance(layer, torch.nn.Linear):
                v = layer.weight.detach().numpy() @ v + layer.bias.detach().numpy()
            else:
                v = np.where(v > 0, v, slope * v)
            out.append(v)
        return out

    ys, refs = forward(x), forward(x_ref)
    dY = [a - b for a, b in zip(ys, refs)]
    c = int(np.argmax(ys[-1]))
    R = np.zeros_like(dY[-1])
    R[c] = dY[-1][c]                                                  # e_c ⊙ ΔZ
    losses = []
    for l in range(len(layers), 0, -1):
        layer = layers[l - 1]
        if isinstance(layer, torch.nn.Linear):
            D = layer.weight.detach().numpy()                          # D = W
        else:
            D = np.diag(np.where(ys[l - 1] > 0, 1.0, slope))           # local slope at Y^{l-1}
        msgs = R[:, None] * D * dY[l - 1][None, :] / dY[l][:, None]    # Eq. (13)
        R_in = msgs.sum(axis=0)                                        # absorption, Eq. (3) = Eq. (14)
        eps = dY[l] - D @ dY[l - 1]                                    # Eq. (12)
        assert abs((R.sum() - R_in.sum()) - np.sum(R * eps / dY[l])) < 1e-12
        losses.append(float(R.sum() - R_in.sum()))
        R = R_in
    e = lidlib.explain(model, torch.tensor(x)[None], c, "LID-Taylor", baseline=torch.tensor(x_ref)[None])
    assert np.allclose(e.input[0].numpy(), R, rtol=0, atol=1e-12)
    return {"R(X)": R.tolist(), "loss per module (top first)": losses}


def exercise_3():
    """Max-pool: D selects the winner at the actual input; ε = Ŷ_{i*} − max Ŷ."""
    pool = torch.nn.MaxPool2d(2)
    y = torch.tensor([[[[1.0, 3.0], [0.5, 2.0]]]], dtype=torch.float64)       # winner: position 1
    y_ref = torch.tensor([[[[2.5, 0.5], [1.0, 0.0]]]], dtype=torch.float64)   # winner: position 0
    D = jacobian(lambda t: pool(t.view(1, 1, 2, 2)).flatten(), y.flatten())   # (1, 4)
    assert torch.equal(D, torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))
    dY_out = (pool(y) - pool(y_ref)).flatten()                                  # 3 - 2.5
    dY_in = (y - y_ref).flatten()
    eps = dY_out - D @ dY_in
    assert torch.allclose(eps, y_ref.flatten()[1] - y_ref.max(), atol=1e-15)      # 0.5 - 2.5 = -2
    R_out = dY_out.clone()                                                      # say R(Y^l) = ΔY^l
    R_in = (R_out / dY_out)[:, None] * D * dY_in[None, :]                       # Eq. (13)
    # same winner at both ends: no remainder
    y_ref2 = torch.tensor([[[[0.0, 1.0], [0.2, 0.1]]]], dtype=torch.float64)
    eps2 = (pool(y) - pool(y_ref2)).flatten() - D @ (y - y_ref2).flatten()
    assert float(eps2.abs().max()) == 0.0
    return {"D": D.tolist(), "eps": float(eps), "R_in": R_in.sum(0).tolist(), "eps (same winner)": float(eps2)}
