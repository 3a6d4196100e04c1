"""Solutions of the exercises of Chapter 12 (Evaluation)."""
import math

import torch
from torch import nn

import lidlib
import lidlib.toy
from lidlib.evaluation import metrics


def _linear(weights: torch.Tensor, biases) -> nn.Module:
    """logit_k = <weights[k], x> + b_k for (B, 3, H, W) inputs, float64."""
    lin = nn.Linear(weights[0].numel(), weights.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(weights.reshape(weights.shape[0], -1))
        lin.bias.copy_(torch.as_tensor(biases, dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), lin).eval()


def exercise_1():
    """Probability change by hand on a 2×2 image seen by a linear two-class model.

    Class 0: ``z_0 = Σ_i w_i · (x_i summed over channels)`` with w = [[1, -2], [0.5, 3]], z_1 = 8.  With the
    image of all-ones channels (pixel sums 3), the exact relevance of pixel i is ``3 w_i`` =
    [[3, -6], [1.5, 9]].  Removing 1 pixel (ratio 0.25, least relevant first) removes the −6 pixel:
    z_0 goes from 7.5 to 13.5, so P_0 rises; removing 2 (ratio 0.5) also removes the 1.5 pixel: z_0 = 12.
    """
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    model = _linear(torch.stack([w.expand(3, 2, 2), torch.zeros(3, 2, 2, dtype=torch.float64)]), [0.0, 8.0])
    x = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    relevance = (3 * w)[None]
    e = lidlib.explain(model, x, 0, "LID-IG")
    assert torch.allclose(metrics.heatmaps(e, "input"), relevance)        # the exact relevance
    z0 = float(3 * w.sum())                                                 # 7.5
    by_hand = {}
    for ratio, removed in ((0.25, -6.0), (0.5, -6.0 + 1.5)):
        p_before = 1 / (1 + math.exp(8.0 - z0))
        p_after = 1 / (1 + math.exp(8.0 - (z0 - removed)))
        by_hand[ratio] = p_after - p_before
    curve = metrics.probability_change(model, x, 0, relevance, ratios=(0.25, 0.5))
    for j, ratio in enumerate((0.25, 0.5)):
        assert math.isclose(float(curve.delta[0, j]), by_hand[ratio], abs_tol=1e-12)
    assert by_hand[0.25] > by_hand[0.5] > 0          # removing negative relevance raised P_0
    return by_hand


def exercise_2():
    """The "kept" reading of Fig. 8's axis, on a real photo: keep the share r of MOST relevant pixels.

    Keeping 10 % of the pixels costs far more than Table 4's −0.01 at 0.1, so the table cannot mean
    "kept"; the "removed, least relevant first" reading gives numbers of Table 4's size.
    """
    from lidlib import images, models
    model = models.imagenet()
    x = images.to_model_input(images.photo("coffee"), model)
    with torch.no_grad():
        c = int(model(x).argmax())
    h = lidlib.explain(model, x, c, "LayerCAM").heatmap(5)          # any heatmap makes the point
    # keeping the share r of most relevant pixels = removing the share 1 - r of least relevant ones
    delta = metrics.probability_change(model, x, c, h, ratios=(0.1, 0.9)).delta[0]
    removed_10, kept_10 = float(delta[0]), float(delta[1])
    assert kept_10 < -0.1 < removed_10            # Table 4 at 0.1: about -0.01, not a large drop
    return {"keep 10 % (= remove 90 %)": kept_10, "remove 10 %": removed_10}


def exercise_3():
    """With fill = the reference X̂, removing every pixel gives P_c(X̂) − P_c(X) = −ΔP_c, the total that SIG
    decomposes: exactly the negative sum of SIG-LID-IG's input relevance in the limit n → ∞ (``n_steps=None``).
    Another fill (the image mean) ends the curve elsewhere.
    """
    model = lidlib.toy.cnn(3, 12, 5, seed=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 12, 12, generator=g, dtype=torch.float64)
    c = 2
    e = lidlib.explain(model, x, c, "SIG-LID-IG", n_steps=None)
    h = metrics.heatmaps(e, "input")
    end = float(metrics.probability_change(model, x, c, h, ratios=(1.0,)).delta[0, 0])
    assert math.isclose(end, -float(h.sum()), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(end, -float(e.total[0]), rel_tol=1e-9, abs_tol=1e-12)
    end_mean = float(metrics.probability_change(model, x, c, h, ratios=(1.0,), fill="mean").delta[0, 0])
    assert abs(end_mean - end) > 1e-6
    return {"reference fill": end, "-sum R(input)": -float(h.sum()), "mean fill": end_mean}
