"""lidlib against the libraries people already trust: Captum and Zennit, where they compute the same quantity."""
import torch
from torch import nn

import lidlib
from lidlib import toy


def _vgg16_with_biases(seed=0):
    from lidlib import models
    torch.manual_seed(seed)
    m = models.vgg16(weights=None)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.bias.uniform_(-0.1, 0.1)
    return m.eval()


def _mlp_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64) * 2
    baseline = torch.randn(1, 5, generator=g, dtype=torch.float64) * 0.5
    return x, baseline, torch.tensor([0, 2, 3])


def test_deeplift_matches_captum_rescale_on_relu_mlp():
    from captum.attr import DeepLift
    model = toy.mlp((5, 7, 6, 4), "relu", seed=1)
    x, baseline, target = _mlp_data()
    ours = lidlib.explain(model, x, target, "DeepLIFT", baseline=baseline).relevance["input"]
    theirs = DeepLift(model).attribute(x, baselines=baseline.expand_as(x), target=target)
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    # and LID-IG in the exact limit is DeepLIFT's Rescale on a ReLU network without pooling
    exact = lidlib.explain(model, x, target, "LID-IG", baseline=baseline, n_steps=None).relevance["input"]
    assert torch.allclose(exact, theirs, rtol=1e-9, atol=1e-12)


def test_lrp0_matches_captum_lrp_on_vgg16():
    from captum.attr import LRP
    model = _vgg16_with_biases()
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 64)
    ours = lidlib.explain(model, x, 7, "LRP-0").relevance["input"]
    ref = _no_inplace_copy(model)
    theirs = LRP(ref).attribute(x, target=7)          # ε = 1e-9 at every layer with a rule
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= 1e-4 * scale


def test_lrp0_matches_zennit_epsilon_on_toy_cnn():
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Pass
    from zennit.types import Activation, Convolution, Linear
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    target = torch.tensor([1, 2])
    ours = lidlib.explain(model, x, target, lidlib.methods.LRP0_EXACT).relevance["input"]   # ε = 0
    composite = LayerMapComposite([(Activation, Pass()), (Convolution, Epsilon(1e-12)), (Linear, Epsilon(1e-12))])
    with Gradient(model=model, composite=composite) as attributor:
        out, rel = attributor(x, lambda z: torch.eye(4, dtype=z.dtype)[target] * z)   # R(Y^L) = e_c ⊙ Z
    assert torch.allclose(ours, rel, rtol=1e-8, atol=1e-10)


def test_sg_lrp_zp_matches_zennit_zplus_on_positive_inputs():
    """Zennit's ZPlus splits inputs by sign (x⁺W⁺ + x⁻W⁻); on non-negative inputs it is Eq. (9)."""
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Pass, ZPlus
    from zennit.types import Activation, Linear
    model = toy.mlp((5, 7, 6, 4), "relu", seed=2)
    x, _, target = _mlp_data(1)
    x = x.abs()
    ours = lidlib.explain(model, x, target, "SG-LRP-ZP").relevance["input"]
    composite = LayerMapComposite([(Activation, Pass()), (Linear, ZPlus(stabilizer=1e-12))])
    with Gradient(model=model, composite=composite) as attributor:
        out, rel = attributor(x, lambda z: lidlib.top.softmax_gradient(z.detach(), target))   # R(Y^L) = P'_c (Eq. 10)
    assert torch.allclose(ours, rel, rtol=1e-7, atol=1e-10)


def _no_inplace_copy(model):
    import copy
    m = copy.deepcopy(model)
    for mod in m.modules():
        if hasattr(mod, "inplace"):
            mod.inplace = False
    return m
