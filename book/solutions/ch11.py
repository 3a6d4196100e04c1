"""Solutions of the exercises of chapter 11 (stage heatmaps on real photos, Sec. 4.1)."""
import torch
import torch.nn.functional as F

import lidlib
from lidlib import images, models, toy

_CACHE = {}


def _two_object_case():
    """The offline ImageNet model, the two-object image as model input, and its classes A and B."""
    if "case" not in _CACHE:
        model = models.imagenet()
        two = images.two_object()
        _CACHE["case"] = (model, images.to_model_input(two.image, model), two.classes)
    return _CACHE["case"]


def exercise_1():
    """The s4 heatmap and the multi-scale map by hand, against ``e.heatmap``."""
    model, x, (a, b) = _two_object_case()
    e = lidlib.explain(model, x, a, "SIG-LID-IG", n_steps=10)

    def by_hand(stage):
        r = e.layer(model.stages[f"s{stage}"])                       # (1, C, h, w)
        return F.interpolate(r.sum(dim=1, keepdim=True), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]              # (1, 224, 224)

    h4 = by_hand(4)
    assert torch.allclose(h4, e.heatmap(4), rtol=0, atol=1e-7)
    multi = sum(h / h.abs().amax(dim=(1, 2), keepdim=True) for h in map(by_hand, (5, 4, 3, 2, 1)))
    assert torch.allclose(multi, e.heatmap("s54321"), rtol=0, atol=1e-6)
    return {"s4 max |diff|": float((h4 - e.heatmap(4)).abs().max()),
            "s54321 max |diff|": float((multi - e.heatmap("s54321")).abs().max())}


def exercise_2():
    """Forward passes of SIG-LID-IG (2: reference and input) and of the six heatmaps (0)."""
    model, x, (a, b) = _two_object_case()
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    try:
        e = lidlib.explain(model, x, a, "SIG-LID-IG", n_steps=10)
        during_explain = len(calls)
        maps = {s: e.heatmap(s) for s in ("s5", "s4", "s3", "s2", "s1", "s54321")}
        during_heatmaps = len(calls) - during_explain
    finally:
        handle.remove()
    assert during_explain == 2 and during_heatmaps == 0
    assert all(m.shape == (1, 224, 224) for m in maps.values())
    return {"forwards in explain": during_explain, "forwards for six heatmaps": during_heatmaps}


def exercise_3():
    """With a non-linear layer after s5, SIG-LID-Taylor-s5 and SIG-LID-IG-s5 differ; only the exact
    SIG-LID-IG sums to ΔP_c there."""
    model = toy.cnn()
    model.stages = {"s5": "5"}                                        # second max-pool; then Linear-ReLU-Linear
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64, generator=g)
    x_ref = 0.5 * torch.randn(1, 2, 12, 12, dtype=torch.float64, generator=g)
    with torch.no_grad():
        z, z_ref = model(x), model(x_ref)
    c = int(z.argmax())
    dP = float(torch.softmax(z, 1)[0, c] - torch.softmax(z_ref, 1)[0, c])
    taylor = lidlib.explain(model, x, c, "SIG-LID-Taylor", baseline=x_ref, n_steps=None)
    ig = lidlib.explain(model, x, c, "SIG-LID-IG", baseline=x_ref, n_steps=None)
    r_t, r_i = taylor.layer("5"), ig.layer("5")
    diff = float((r_t - r_i).abs().max())
    assert diff > 1e-6 * float(r_i.abs().max())                       # the middle rule matters after s5
    assert abs(float(ig.total) - dP) < 1e-10 and abs(float(taylor.total) - dP) < 1e-10  # same SIG top
    assert abs(float(r_i.sum()) - dP) < 1e-10                         # SIG-LID-IG conserves at s5
    return {"ΔP_c": dP, "sum SIG-LID-IG s5": float(r_i.sum()), "sum SIG-LID-Taylor s5": float(r_t.sum()),
            "max |difference| at s5": diff}
