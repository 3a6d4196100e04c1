"""Every method on real networks: EfficientNet-Lite0 (real ImageNet weights) and VGG-16 (random, with biases)."""
import pytest
import torch

import lidlib
from lidlib import images, models


@pytest.fixture(scope="module")
def lite0():
    return models.efficientnet_lite0()


@pytest.fixture(scope="module")
def composite(lite0):
    two = images.two_object()
    x = images.to_model_input(two.image, lite0).repeat(2, 1, 1, 1)
    return x, torch.tensor(two.classes)


def test_sig_lid_ig_conserves_on_efficientnet(lite0, composite):
    x, classes = composite
    e = lidlib.explain(lite0, x, classes, "SIG-LID-IG", n_steps=None)
    cuts = ["input"] + [e.aliases.get(n, n) for n in lite0.stages.values()]
    assert e.conservation().max_rel_gap(cuts) < 1e-4
    p = torch.softmax(e.logits.double(), 1).gather(1, classes[:, None])[:, 0]
    p_ref = torch.softmax(e.reference_logits.double(), 1).gather(1, classes[:, None])[:, 0]
    assert torch.allclose(e.total.double(), p - p_ref, atol=1e-5)          # Σ R = ΔP_c


@pytest.mark.parametrize("method", [m for m in lidlib.METHODS if m != "ScoreCAM"])
def test_every_method_gives_all_stage_maps(lite0, composite, method):
    x, classes = composite
    e = lidlib.explain(lite0, x[:1], classes[:1], method)
    for s in range(1, 6):
        assert e.heatmap(s).shape == (1, 224, 224)
    multi = e.heatmap((5, 4, 3, 2, 1))
    assert multi.shape == (1, 224, 224) and torch.isfinite(multi).all()
    assert torch.equal(multi, e.heatmap("s54321"))


def test_multiscale_needs_one_backward_pass(lite0, composite, monkeypatch):
    x, classes = composite
    calls = []
    original = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or original(*a, **k))
    e = lidlib.explain(lite0, x, classes, "SIG-LID-IG")
    e.heatmap((5, 4, 3, 2, 1))
    assert len(calls) == 1


def test_class_a_and_b_differ_in_sign_on_the_other_object(lite0, composite):
    """On the two-object composite, SIG-LID-IG's s5 map for class A is larger on A's region than on B's."""
    x, classes = composite
    masks = images.two_object().masks
    hm = lidlib.explain(lite0, x, classes, "SIG-LID-IG").heatmap(5)
    for i in range(2):
        own, other = hm[i][masks[i]].mean(), hm[i][masks[1 - i]].mean()
        assert own > other


def test_vgg16_runs_every_panorama_method():
    torch.manual_seed(0)
    vgg = models.vgg16(weights=None)
    with torch.no_grad():
        for m in vgg.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.bias.uniform_(-0.1, 0.1)
    vgg.eval()
    x = torch.rand(1, 3, 64, 64)
    e = lidlib.explain(vgg, x, 3, "SIG-LID-IG", n_steps=None)
    assert e.conservation().max_rel_gap() < 1e-3
    assert e.heatmap((5, 4, 3, 2, 1)).shape == (1, 64, 64)
    assert all(m.inplace for m in vgg.modules() if isinstance(m, torch.nn.ReLU))   # restored
