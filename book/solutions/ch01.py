"""Solutions of chapter 1 (Relevance and conservation)."""
import torch

import lidlib
from lidlib import explicit, toy


def exercise_1():
    """LID-IG (exact) messages of toy.two_two_one() at X = (1, 2), X̂ = (0, 0), by hand."""
    model = toy.two_two_one()
    x, x_ref = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    W1, B1 = torch.tensor([[1.0, -1.0], [2.0, 1.0]]).double(), torch.tensor([0.5, -1.0]).double()
    W3, B3 = torch.tensor([[1.0, -2.0]]).double(), torch.tensor([0.25]).double()
    # forward passes of X and X̂
    y1, y1_ref = W1 @ x + B1, W1 @ x_ref + B1                   # (-0.5, 3) and (0.5, -1)
    y2, y2_ref = y1.clamp(min=0), y1_ref.clamp(min=0)            # (0, 3) and (0.5, 0)
    z, z_ref = W3 @ y2 + B3, W3 @ y2_ref + B3                    # -5.75 and 0.75
    assert torch.allclose(y1, torch.tensor([-0.5, 3.0]).double())
    assert torch.allclose(z, torch.tensor([-5.75]).double()) and torch.allclose(z_ref, torch.tensor([0.75]).double())
    # top: R(Z) = ΔZ = -6.5; module 2 (Linear): R_{j→i} = R_j W_ji ΔY_i / ΔY_j
    R3 = z - z_ref
    M2 = R3[:, None] * W3 * (y2 - y2_ref)[None, :] / (z - z_ref)[:, None]   # [[-0.5, -6]]
    R2 = M2.sum(dim=0)
    # module 1 (ReLU): the exact path average is the secant slope, and the message is R_j itself
    M1 = torch.diag(R2)
    R1 = M1.sum(dim=0)
    # module 0 (Linear)
    M0 = R1[:, None] * W1 * (x - x_ref)[None, :] / (y1 - y1_ref)[:, None]
    R0 = M0.sum(dim=0)
    assert torch.allclose(M2, torch.tensor([[-0.5, -6.0]]).double())
    assert torch.allclose(M0, torch.tensor([[0.5, -1.0], [-3.0, -3.0]]).double())
    for M, R_out in ((M2, R3), (M1, R2), (M0, R1)):
        assert torch.allclose(M.sum(dim=1), R_out)                 # Eq. (2): rows distribute R_out
    assert torch.allclose(R0.sum(), z - z_ref)                     # hence Eq. (1) with Δf = ΔZ
    steps = explicit.decompose(model, x, 0, "LID-IG", baseline=x_ref, n_steps=None)
    for st, M in zip(steps, (M2, M1, M0)):
        assert torch.allclose(st.messages, M, atol=1e-12)
        assert torch.allclose(st.messages.sum(dim=0), st.R_in, atol=1e-12)   # Eq. (3)
    return {"messages": {"2": M2, "1": M1, "0": M0}, "input relevance": R0}


def exercise_2():
    """Zero biases: LRP-0 conserves and equals LID-IG (exact) with the zero reference."""
    model = toy.mlp((4, 6, 5, 3), seed=5)
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Linear):
                m.bias.zero_()
    x = torch.tensor([[0.7, 2.3, -0.5, -0.8]], dtype=torch.float64)
    c = int(model(x).argmax())
    e_lrp = lidlib.explain(model, x, c, lidlib.methods.LRP0_EXACT)       # ε = 0: exact LRP-0
    e_ig = lidlib.explain(model, x, c, "LID-IG", baseline=torch.zeros_like(x), n_steps=None)
    gap = e_lrp.conservation().max_rel_gap()
    assert gap < 1e-12
    for name in e_lrp.relevance:
        assert torch.allclose(e_lrp.relevance[name], e_ig.relevance[name], rtol=0, atol=1e-12)
    # with the biases back, a non-zero reference separates the two again
    e_ref = lidlib.explain(toy.mlp((4, 6, 5, 3), seed=5), x, c, "LID-IG", baseline=torch.full_like(x, 0.5),
                           n_steps=None)
    assert not torch.allclose(e_ref.relevance["input"], e_lrp.relevance["input"])
    return gap
