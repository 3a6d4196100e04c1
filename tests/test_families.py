"""Every torchvision classifier family, exactly: smooth activations, products, normalisation,
forward-code functions and in-place residuals (the layer families of ``lidlib.rules.FAMILIES``)."""
import copy
import re
import types
import warnings

import numpy as np
import pytest
import reference
import torch
import torch.nn.functional as F
from reference import Gate
from test_reliability import _assert_same, _state
from torch import nn
from torchvision import models as tvm
from torchvision.models.convnext import CNBlockConfig, LayerNorm2d

import lidlib
from lidlib import rules
from lidlib.methods import METHODS


def _init(model, seed=0, size=16, bias_std=0.3, channels=3):
    """float64, fan-in scaled random weights, non-zero biases, random affine norms, and BatchNorm
    statistics of random inputs (torchvision's own initialisation leaves some families degenerate)."""
    g = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64)
                               * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is None:
                    m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=torch.float64))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * bias_std)
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
            if hasattr(m, "layer_scale"):
                m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=g) + 0.5)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model.train()
            model(torch.randn(4, channels, size, size, generator=g, dtype=torch.float64))
    return model.eval()


# ----------------------------------------------------------------------------- every new rule vs the reference
REF_MODELS = {
    "smooth": lambda: nn.Sequential(nn.Linear(5, 7), nn.SiLU(), nn.Linear(7, 6), nn.GELU(), nn.Linear(6, 6),
                                    nn.Hardswish(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 5), nn.Hardsigmoid(),
                                    nn.Linear(5, 5), nn.ELU(), nn.Linear(5, 5), nn.Mish(), nn.Linear(5, 4)),
    "norm": lambda: nn.Sequential(nn.Conv2d(2, 4, 2), nn.GroupNorm(2, 4), nn.Sigmoid(),
                                  nn.Conv2d(4, 3, 2), LayerNorm2d(3), nn.Softplus(), nn.Flatten(),
                                  nn.Linear(3, 6), nn.LayerNorm(6), nn.GELU(approximate="tanh"), nn.Linear(6, 4)),
    "gate": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.SiLU(),
                                  Gate(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 1),
                                       nn.Sigmoid()),
                                  nn.Conv2d(4, 3, 3), nn.ReLU(), Gate(nn.Conv2d(3, 3, 1), nn.Tanh()), nn.Flatten(),
                                  nn.Linear(12, 4)),
}


def _ref_data(name):
    g = torch.Generator().manual_seed(10)
    shape = {"smooth": (1, 5), "norm": (1, 2, 3, 3)}.get(name, (1, 2, 4, 4))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0
    baseline = torch.randn(shape[1:], generator=g, dtype=torch.float64) * 0.5
    return x, baseline


CASES = [("LID-IG", 3), ("LID-IG", None), ("SIG-LID-IG", 3), ("SIG-LID-IG", None), ("LID-Taylor", None),
         ("DeepLIFT", None), ("LRP-0", None), ("SG-LRP-ZP", None)]


@pytest.mark.parametrize("model_name,method,n_steps",
                         [(m, *c) for m in REF_MODELS for c in CASES
                          if not (m == "norm" and METHODS[c[0]].increment is False and c[1] is None)]
                         )
def test_new_rules_match_the_slow_reference_at_every_layer(model_name, method, n_steps):
    model = REF_MODELS[model_name]()
    torch.manual_seed(1)
    model = _init(model, seed=3, bias_std=0.5)
    x, baseline = _ref_data(model_name)
    e = lidlib.explain(model, x, 2, method, baseline=baseline, n_steps=n_steps)
    ref = reference.relevances(model, METHODS[method], x[0], 2, baseline, n_steps)
    assert set(ref) <= set(e.relevance)
    tol = 1e-6 if method == "SG-LRP-ZP" else 1e-7      # the z⁺ rule adds ε = 1e-9 to its denominators
    for layer, r in ref.items():
        fast = e.relevance[layer][0]
        scale = float(r.abs().max().clamp_min(1e-12))
        assert torch.allclose(fast, r, rtol=tol, atol=tol * scale), (layer, float((fast - r).abs().max()))


def test_reference_sees_the_product_rule():
    """The comparison can fail: exact LID-IG differs from LID-Taylor and from n = 3 at the gates."""
    model = _init(REF_MODELS["gate"](), seed=3, bias_std=0.5)
    x, baseline = _ref_data("gate")
    exact = lidlib.explain(model, x, 2, "LID-IG", baseline=baseline, n_steps=None).relevance["2.branch.4"]
    for other in (dict(method="LID-IG", n_steps=3), dict(method="LID-Taylor")):
        r = lidlib.explain(model, x, 2, baseline=baseline, **other).relevance["2.branch.4"]
        assert (r - exact).abs().max() > 1e-4 * exact.abs().max()


def test_smooth_exact_is_the_secant_and_sampled_is_the_mean_derivative():
    g = torch.Generator().manual_seed(0)
    x_ref = torch.randn(400, generator=g, dtype=torch.float64) * 4
    x = torch.randn(400, generator=g, dtype=torch.float64) * 4
    x[:30] = x_ref[:30]                               # Δx = 0: σ'(x)
    x[30:60] = x_ref[30:60] + 1e-9                    # tiny Δx: no cancellation
    for act in (nn.SiLU(), nn.GELU(), nn.Hardswish(), nn.Sigmoid(), nn.ELU(), nn.Softplus()):
        exact = rules.smooth_path_slope(act, x, x_ref, act(x), act(x_ref), None)
        slow = torch.diagonal(reference.smooth_exact(act, x[:70], x_ref[:70]))
        assert torch.allclose(exact[:70], slow, rtol=1e-9, atol=1e-12), type(act).__name__
        assert torch.allclose(exact * (x - x_ref), act(x) - act(x_ref), rtol=0, atol=1e-14)   # conserves
        n3 = rules.smooth_path_slope(act, x, x_ref, act(x), act(x_ref), 3)
        mean = torch.stack([reference._slope(act, x_ref + k / 3 * (x - x_ref)) for k in (1, 2, 3)]).mean(0)
        assert torch.allclose(n3, mean, rtol=1e-12, atol=1e-14)


def test_lrp_family_through_a_normalisation_layer_warns_with_the_measured_error():
    """From the zero reference (LRP) the path starts where LayerNorm's variance is 0: its Jacobian
    peaks sharply at t = 0 and the quadrature says how far it got instead of pretending."""
    model = _init(REF_MODELS["norm"](), seed=3, bias_std=0.5)
    x, _ = _ref_data("norm")
    with pytest.warns(RuntimeWarning, match=r"relative error of .* Gauss–Kronrod nodes"):
        lidlib.explain(model, x, 2, "LRP-0", n_steps=None)


def test_norm_quadrature_reports_its_error_and_warns_when_it_cannot_reach_it(monkeypatch):
    g = torch.Generator().manual_seed(0)
    layer = nn.LayerNorm(6).double()
    x, x_ref = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    grad = torch.randn(3, 6, generator=g, dtype=torch.float64)
    v, nodes, err = rules.norm_path_vjp(layer, x, x_ref, grad, None)
    assert err <= 64 * torch.finfo(torch.float64).eps and nodes in [2 * n + 1 for n in rules.QUADRATURE_ORDERS]
    slow = torch.stack([grad[b] @ reference.norm_exact(lambda t: layer(t), x[b], x_ref[b]) for b in range(3)])
    assert torch.allclose(v, slow, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(rules, "QUADRATURE_ORDERS", (1, 2))
    with pytest.warns(RuntimeWarning, match="Gauss–Kronrod"):
        _, _, err = rules.norm_path_vjp(layer, x, x_ref, grad, None)
    assert err > 64 * torch.finfo(torch.float64).eps


#: QUADPACK's 15-point Gauss–Kronrod rule on [-1, 1] (Piessens et al. 1983, qk15), the non-negative half:
#: its nodes, Kronrod weights and the 7-point Gauss weights of the nodes 0.949…, 0.741…, 0.405…, 0
QK15_NODES = (0.9914553711208126, 0.9491079123427585, 0.8648644233597691, 0.7415311855993944,
              0.5860872354676911, 0.4058451513773972, 0.2077849550078985, 0.0)
QK15_KRONROD = (0.02293532201052922, 0.06309209262997855, 0.1047900103222502, 0.1406532597155259,
                0.1690047266392679, 0.1903505780647854, 0.2044329400752989, 0.2094821410847278)
QK15_GAUSS = (0.1294849661688697, 0.2797053914892767, 0.3818300505051189, 0.4179591836734694)


def test_gauss_kronrod_rules_are_quadpacks_and_exact_to_their_degree():
    """paths.gauss_kronrod: the 15-point rule is QUADPACK's table (mapped to [0, 1]); for every order
    the nodes lie inside, the weights are positive, the embedded rule is Gauss–Legendre's, and the
    Kronrod sum integrates degree 3n + 1 exactly (and not the next even degree: a symmetric rule
    integrates every odd one)."""
    from numpy.polynomial import legendre

    from lidlib.paths import gauss_kronrod
    t, wk, wg = (v.numpy() for v in gauss_kronrod(7))
    half = t >= 0.5                                              # (0 on [-1, 1] is 1/2 on [0, 1])
    np.testing.assert_allclose(np.sort(2 * t[half] - 1)[::-1], QK15_NODES, rtol=0, atol=1e-15)
    np.testing.assert_allclose((2 * wk[half])[::-1], QK15_KRONROD, rtol=0, atol=1e-15)
    np.testing.assert_allclose((2 * wg[half])[::-1][1::2], QK15_GAUSS, rtol=0, atol=1e-15)
    assert not (2 * wg[half])[::-1][0::2].any()
    rng = np.random.default_rng(1)
    for n in (1, 2, 8, 16, 32, 64):
        t, wk, wg = (v.numpy() for v in gauss_kronrod(n))
        assert len(t) == 2 * n + 1 and (np.diff(t) > 0).all() and 0 < t[0] and t[-1] < 1 and (wk > 0).all()
        gauss_t, gauss_w = legendre.leggauss(n)
        np.testing.assert_allclose(t[wg > 0], (gauss_t + 1) / 2, rtol=0, atol=1e-15)
        np.testing.assert_allclose(wg[wg > 0], gauss_w / 2, rtol=0, atol=1e-15)
        for degree, w, exact in ((3 * n + 1, wk, True), (2 * n - 1, wg, True), (3 * n + 2 + n % 2, wk, False)):
            c = rng.standard_normal(degree + 1)                  # ∫₀¹ Σ c_j P_j(2t − 1) dt = c_0
            gap = abs(w @ legendre.legval(2 * t - 1, c) - c[0])
            assert (gap < 1e-12) if exact else (gap > 1e-6), (n, degree, gap)


# ----------------------------------------------------------------------------- torchvision's families
def _resnext(**kw):
    from torchvision.models.resnet import Bottleneck, ResNet
    return ResNet(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8, **kw)


def _densenet(**kw):
    return tvm.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2, **kw)


def _convnext(**kw):
    return tvm.ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 1)], stochastic_depth_prob=0.1, **kw)


def _efficientnet_v2(**kw):
    from torchvision.models.efficientnet import FusedMBConvConfig, MBConvConfig
    setting = [FusedMBConvConfig(1, 3, 1, 8, 8, 1), FusedMBConvConfig(4, 3, 2, 8, 16, 1),
               MBConvConfig(4, 3, 2, 16, 24, 2)]
    return tvm.EfficientNet(setting, dropout=0.2, last_channel=64, **kw)


def _vit(**kw):
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, **kw)


#: (builder, input size, names (re.fullmatch) of the modules whose outputs cut the network)
FAMILY_MODELS = {
    "resnet18": (tvm.resnet18, 32, r"layer\d\.\d|maxpool"),
    "resnext": (_resnext, 32, r"layer\d\.\d"),
    "densenet": (_densenet, 32, r"features\.(denseblock|transition)\d"),
    "googlenet": (lambda **kw: tvm.googlenet(aux_logits=False, init_weights=True, **kw), 32, r"inception\d\w|maxpool\d"),
    "squeezenet": (tvm.squeezenet1_1, 32, r"features\.\d+"),
    "mobilenet_v2": (lambda **kw: tvm.mobilenet_v2(width_mult=0.35, **kw), 32, r"features\.\d+"),
    "mobilenet_v3": (tvm.mobilenet_v3_small, 32, r"features\.\d+"),
    "efficientnet_b0": (tvm.efficientnet_b0, 32, r"features\.\d(\.\d)?"),
    "efficientnet_v2": (_efficientnet_v2, 32, r"features\.\d(\.\d)?"),
    "regnet_y": (tvm.regnet_y_400mf, 32, r"stem|trunk_output\.block\d(\.block\d-\d)?"),
    "regnet_x": (tvm.regnet_x_400mf, 32, r"stem|trunk_output\.block\d(\.block\d-\d)?"),
    "shufflenet_v2": (tvm.shufflenet_v2_x0_5, 32, r"maxpool|stage\d(\.\d)?"),
    "mnasnet": (tvm.mnasnet0_5, 32, r"layers\.\d+"),
    "convnext": (_convnext, 32, r"features\.\d(\.\d)?"),
    "vit": (_vit, 16, r"conv_proj|encoder\.layers\.encoder_layer_\d"),
}


def _family(name):
    build, size, cuts = FAMILY_MODELS[name]
    torch.manual_seed(0)
    model = _init(build(num_classes=10), size=size)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, size, size, generator=g, dtype=torch.float64)
    base = torch.randn(1, 3, size, size, generator=g, dtype=torch.float64) * 0.3
    with torch.no_grad():                               # logits spread over a few units, not hundreds
        last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        spread = float((model(x) - model(base)).abs().max())
        last.weight.mul_(4.0 / spread)
        last.bias.mul_(4.0 / spread)
        last.bias.sub_(model(base)[0] - model(base)[0].mean())     # no class saturates the softmax at X̂
        # the class whose probability moves most
        target = int((model(x).softmax(1) - model(base).softmax(1)).abs()[0].argmax())
    return model, x, base, target, cuts


@pytest.mark.parametrize("name", list(FAMILY_MODELS))
def test_every_family_conserves_exactly_at_the_input_and_at_block_outputs(name):
    model, x, base, target, cuts = _family(name)
    before = _state(model)
    for method in ("LID-IG", "SIG-LID-IG"):
        e = lidlib.explain(model, x, target, method, baseline=base, n_steps=None)
        table = e.conservation()
        cut_names = [n for n, _ in model.named_modules() if re.fullmatch(cuts, n)]
        assert len(cut_names) >= 2, cut_names
        gaps = {r[0]: r[3] for r in table.as_rows()}
        assert gaps["input"] <= 1e-9, (method, gaps["input"])
        worst = table.max_rel_gap(cut_names)
        assert worst <= 1e-9, (method, worst)
        assert abs(float(e.total[0])) > 1e-6                          # not a degenerate model
    _assert_same(before, _state(model))


def test_block_outputs_are_where_conservation_is_checked():
    """The check above can fail: a branch of a residual block alone does not conserve."""
    model, x, base, target, _ = _family("resnet18")
    e = lidlib.explain(model, x, target, "LID-IG", baseline=base, n_steps=None)
    assert e.conservation().max_rel_gap(["layer1.0.bn2"]) > 1e-3


# ----------------------------------------------------------------------------- in-place residuals
def _out_of_place_basic_block(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
        identity = self.downsample(x)
    out = out + identity
    return self.relu(out)


@pytest.mark.parametrize("method,n", [("LID-IG", None), ("SIG-LID-IG", 10), ("LRP-0", None), ("LID-Taylor", None)])
def test_resnet_in_place_residual_keeps_each_layers_own_relevance(method, n):
    from torchvision.models.resnet import BasicBlock
    model, x, base, target, _ = _family("resnet18")
    copy_ = copy.deepcopy(model)
    for m in copy_.modules():
        if isinstance(m, BasicBlock):
            m.forward = types.MethodType(_out_of_place_basic_block, m)
    a = lidlib.explain(model, x, target, method, baseline=base, n_steps=n)
    b = lidlib.explain(copy_, x, target, method, baseline=base, n_steps=n)
    assert set(a.relevance) == set(b.relevance)
    for k in b.relevance:
        torch.testing.assert_close(a.relevance[k], b.relevance[k], rtol=1e-12, atol=1e-15)
    if method != "LRP-0":   # BatchNorm is affine per channel: bn2's relevance is conv2's, element by element
        torch.testing.assert_close(a.relevance["layer1.0.bn2"], a.relevance["layer1.0.conv2"], rtol=1e-9, atol=1e-15)


class _StatementAdd(nn.Module):
    """``out.add_(x)`` as a statement (not ``+=``): done in place, recorded tensors copied first."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu, self.fc = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Linear(32, 3)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out.add_(x)
        return self.fc(self.relu(out).flatten(1))


def test_in_place_statement_does_not_corrupt_the_recorded_relevance():
    model = _init(_StatementAdd(), size=4, channels=2)
    g = torch.Generator().manual_seed(0)
    x, base = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)
    e = lidlib.explain(model, x, 1, "LID-IG", baseline=base, n_steps=None)
    torch.testing.assert_close(e.relevance["bn"], e.relevance["conv"], rtol=1e-9, atol=1e-15)
    assert e.conservation().as_rows()[0][3] <= 1e-12


# ----------------------------------------------------------------------------- functional calls
class _FunctionalNet(nn.Module):
    def __init__(self, functional=True):
        super().__init__()
        self.functional = functional
        self.c1, self.c2, self.fc = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1), nn.Linear(64, 3)
        self.r, self.s, self.p = nn.ReLU(), nn.SiLU(), nn.MaxPool2d(2)

    def forward(self, x):
        if self.functional:
            h = F.max_pool2d(F.relu(self.c1(x), inplace=True), 2)
            return self.fc(torch.flatten(F.silu(self.c2(h)), 1))
        return self.fc(torch.flatten(self.s(self.c2(self.p(self.r(self.c1(x))))), 1))


@pytest.mark.parametrize("method,n", [("LID-IG", None), ("LID-IG", 3), ("SIG-LID-IG", None), ("DeepLIFT", None),
                                      ("LRP-0", None)])
def test_functional_relu_silu_maxpool_get_their_layers_rule(method, n):
    """DenseNet's and GoogLeNet's F.relu: a forward-code call gets the rule of the layer it is."""
    f = _init(_FunctionalNet(True), size=8)
    m = _init(_FunctionalNet(False), size=8)
    m.load_state_dict(f.state_dict())
    g = torch.Generator().manual_seed(0)
    x, base = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64), torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)
    a = lidlib.explain(f, x, 1, method, baseline=base, n_steps=n)
    b = lidlib.explain(m, x, 1, method, baseline=base, n_steps=n)
    for k in ("input", "c1", "c2"):
        torch.testing.assert_close(a.relevance[k], b.relevance[k], rtol=1e-12, atol=1e-14)


def test_shufflenet_empty_sequential_is_an_identity():
    assert rules.family(nn.Sequential()).kind == "linear"
    assert rules.family(nn.Sequential(nn.ReLU())) is None            # a container, not a layer
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    e = lidlib.explain(model, torch.randn(1, 3, dtype=torch.float64), 1, "LID-IG", n_steps=None)
    torch.testing.assert_close(e.relevance["1"], e.relevance["0"])


# ----------------------------------------------------------------------------- refusals
class _Attend(nn.Module):
    """Linear → tokens → self-attention (sequence-first, batch-first or one unbatched sequence,
    with masks) → Linear: the signal at the attention's output is the head's weight row."""
    L, E = 3, 4

    def __init__(self, layout, masks):
        super().__init__()
        self.layout, self.masks = layout, masks
        self.inp, self.out = nn.Linear(5, self.L * self.E), nn.Linear(self.L * self.E, 3)
        self.mha = nn.MultiheadAttention(self.E, 2, batch_first=layout == "batch first")

    def forward(self, x):
        h = self.inp(x).view(-1, self.L, self.E)
        h = h[0] if self.layout == "unbatched" else h.transpose(0, 1) if self.layout == "sequence first" else h
        y = self.mha(h, h, h, need_weights=False, **self.masks)[0]
        y = y.transpose(0, 1) if self.layout == "sequence first" else y
        return self.out(y.reshape(len(x), -1))

    def sample(self, h, i):
        """The attention of sample ``i`` alone, as a function of its flat tokens (the slow reference's layer)."""
        masks = {k: (v[i:i + 1] if k == "key_padding_mask" and self.layout != "unbatched" else v)
                 for k, v in self.masks.items()}
        h = h.view(1, self.L, self.E) if self.mha.batch_first else h.view(self.L, 1, self.E)
        y = self.mha(h, h, h, need_weights=False, **masks)[0]
        return y.reshape(-1) if self.mha.batch_first else y.transpose(0, 1).reshape(-1)


@pytest.mark.parametrize("layout,batch", [("sequence first", 2), ("batch first", 2), ("unbatched", 1)])
@pytest.mark.parametrize("masks", [False, True], ids=["no masks", "masks"])
@pytest.mark.parametrize("n", [None, 3])
def test_self_attention_matches_the_slow_reference(layout, batch, masks, n):
    """The layer-local D̄ of self-attention (the dense Jacobian on the layer's own input path, by
    adaptive quadrature or the mean of n Jacobians) against ``tests/reference.py``, per sample with
    its own reference, masks repeated for the path points."""
    torch.manual_seed(0)
    kw = {}
    if masks:
        kw = dict(attn_mask=torch.tensor([[0.0, -0.5, 0.3], [0.2, 0.0, -1.0], [0.0, 0.4, 0.0]], dtype=torch.float64))
        if layout != "unbatched":
            kw["key_padding_mask"] = torch.tensor([[0.0, 0.0, 0.0], [0.0, -2.0, 0.0]], dtype=torch.float64)
    model = _init(_Attend(layout, kw))
    with torch.no_grad():
        for p in model.mha.parameters():
            p.normal_(0, 0.6)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 5, generator=g, dtype=torch.float64)
    base = torch.randn(batch, 5, generator=g, dtype=torch.float64) * 0.5
    target = 1
    e = lidlib.explain(model, x, target, "LID-IG", baseline=base, n_steps=n)
    with torch.no_grad():
        h, h_ref = model.inp(x), model.inp(base)
    w = model.out.weight[target].detach()
    for i in range(batch):
        f = lambda t, i=i: model.sample(t, i)      # noqa: E731
        if n is None:
            d = reference.norm_exact(f, h[i], h_ref[i])
        else:
            d = sum(reference.jacobian(f, h_ref[i] + (k / n) * (h[i] - h_ref[i])) for k in range(1, n + 1)) / n
        torch.testing.assert_close(e.relevance["inp"][i], (d.T @ w) * (h[i] - h_ref[i]), rtol=1e-9, atol=1e-12)
    if n is None:                                   # and the layer conserves, which ties the two together
        torch.testing.assert_close(e.relevance["inp"].sum(), e.relevance["mha"].sum(), rtol=1e-10, atol=1e-12)
    if layout == "batch first":                     # per sample: each row sums its own sample
        row = next(r for r in e.conservation() if r.layer == "mha")
        torch.testing.assert_close(row.relevance_sum, e.relevance["mha"].flatten(1).sum(1))
    else:                                           # a sequence-first or unbatched output: a clear error
        with pytest.raises(ValueError, match=r"layer 'mha' has shape .* not the batch .*batch_first=True"):
            e.conservation()


class _Cross(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how, self.inp, self.out = how, nn.Linear(4, 6), nn.Linear(6, 2)
        self.mha = nn.MultiheadAttention(2, 1, batch_first=True)

    def forward(self, x):
        h = self.inp(x).view(-1, 3, 2)
        if self.how == "cross":
            y, _ = self.mha(h, h * 2, h, need_weights=False)
        else:
            y, w = self.mha(h, h, h)                  # need_weights=True: the weights come back
            if self.how == "weights used":
                y = y + w.sum()
        return self.out(y.reshape(len(x), -1))


def test_cross_attention_and_used_attention_weights_are_refused_by_name():
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match=r"layer 'mha' \(MultiheadAttention\).*cross-attention"):
        lidlib.explain(_Cross("cross").eval(), x, 0, "LID-IG")
    with pytest.raises(TypeError, match=r"attention weights of layer 'mha' reach the logits.*need_weights=False"):
        lidlib.explain(_Cross("weights used").eval(), x, 0, "LID-IG")
    hidden = _Cross("weights unused").eval()
    hidden.mha.forward = types.MethodType(nn.MultiheadAttention.forward, hidden.mha)
    with pytest.raises(TypeError, match=r"layer 'mha' \(MultiheadAttention\).*instance attribute"):
        lidlib.explain(hidden, x, 0, "LID-IG")
    model = _Cross("weights unused").eval()
    before = _state(model)
    e = lidlib.explain(model, x, 0, "LID-IG", n_steps=None)            # unused weights: explained
    assert float(e.conservation().max_rel_gap(["mha"])) <= 1e-5
    _assert_same(before, _state(model))


def test_transformer_layers_are_refused_by_name():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(24, 2)).eval()
    with pytest.raises(TypeError, match=r"layer '0' \(TransformerEncoderLayer\).*nn\.MultiheadAttention"):
        lidlib.explain(model, torch.randn(1, 3, 8), 0, "LID-IG")


class _Calls(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how, self.lin = how, nn.Linear(4, 3)

    def forward(self, x):
        h = self.lin(x)
        if self.how == "softmax":
            return torch.softmax(h, 1) * 3
        if self.how == "divide":
            return h / h.norm(dim=1, keepdim=True)
        if self.how == "layer_norm":
            return F.layer_norm(h, (3,))
        if self.how == "relu_":
            return h.relu_()
        if self.how == "substitute":
            r = torch.relu(h)
            r.add_(1.0)
            return r
        raise ValueError(self.how)


@pytest.mark.parametrize("how,what", [("softmax", "softmax"), ("divide", "norm"), ("layer_norm", "layer_norm"),
                                      ("relu_", "relu_"), ("substitute", "add_")])
def test_non_linear_forward_code_without_a_rule_is_refused_naming_the_module(how, what):
    model = nn.Sequential(nn.Linear(4, 4), _Calls(how)).double().eval()
    before = _state(model)
    with pytest.raises(TypeError, match=rf"{what}\(\.\.\.\) in the forward code of module '1' \(_Calls\)"):
        lidlib.explain(model, torch.randn(2, 4, dtype=torch.float64), 1, "LID-IG")
    _assert_same(before, _state(model))


def test_unknown_layer_error_lists_the_families_and_how_to_add_one():
    class Cube(nn.Module):
        def forward(self, x):
            return x ** 3
    model = nn.Sequential(nn.Linear(3, 4), Cube(), nn.Linear(4, 2)).double().eval()
    with pytest.raises(TypeError, match=r"'1' \(Cube\).*smooth activations: SiLU.*register_elementwise"):
        lidlib.explain(model, torch.randn(1, 3, dtype=torch.float64), 1, "LID-IG")
    fam = rules.register_elementwise(Cube)
    try:
        x = torch.randn(1, 3, dtype=torch.float64)
        e = lidlib.explain(model, x, 1, "LID-IG", baseline=torch.randn(1, 3, dtype=torch.float64), n_steps=None)
        assert e.conservation().as_rows()[0][3] <= 1e-12
    finally:
        rules.FAMILIES.remove(fam)


def test_one_table_drives_kinds_functions_and_messages():
    names = {n for f in rules.FAMILIES for n in f.functions}
    assert {"relu", "silu", "max_pool2d", "mul", "cat", "flatten"} <= names
    assert lidlib.engine.NONLINEAR_FUNCTIONS == {n for f in rules.FAMILIES if f.kind not in ("linear", "refused")
                                                for n in f.functions}
    for f in rules.FAMILIES:
        for t in f.modules:
            if f.kind != "refused" and t.__name__ in rules.supported_layers():
                continue
            assert f.kind == "refused" or t is rules._EmptySequential, t
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rules.layer_kind(nn.SiLU()) == "smooth" and rules.layer_kind(nn.GroupNorm(1, 2)) == "norm"


# ------------------------------------------------------------------ fast σ' kernels (issue 11, speed)
SMOOTH_BUILTINS = [nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.Mish(), nn.GELU(), nn.GELU("tanh"),
                   nn.Sigmoid(), nn.Tanh()]


@pytest.mark.parametrize("sigma", SMOOTH_BUILTINS + [rules._Call(F.silu), rules._Call(torch.sigmoid)],
                         ids=lambda s: getattr(getattr(s, "f", None), "__name__", type(s).__name__))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_derivative_is_autograds(sigma, dtype):
    """The one-kernel σ' equals autograd's derivative bit for bit (kinks included: ±3 for the hard
    functions), also written into a given buffer."""
    g = torch.Generator().manual_seed(5)
    p = torch.cat([torch.randn(200, generator=g, dtype=dtype) * 4, torch.tensor([-3.0, 3.0, 0.0], dtype=dtype)])
    kernel = rules._kernel(sigma)
    assert kernel is not None
    want = rules._derivative(sigma, p)
    assert torch.equal(kernel(p), want)
    assert torch.equal(kernel(p, torch.empty_like(p)), want)


@pytest.mark.parametrize("sigma", SMOOTH_BUILTINS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("n", [1, 3, 10])
def test_sampled_smooth_slope_one_point_at_a_time_is_the_batched_mean(sigma, n):
    """D̄ of a smooth layer sampled point by point (no n-fold buffer) equals the mean of σ' at all
    n points at once (the slow form), to float64 rounding."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) * 3
    x_ref = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = (torch.arange(1, n + 1, dtype=torch.float64) / n).view(-1, 1, 1, 1, 1)
    want = rules._derivative(sigma, x_ref[None] + t * (x - x_ref)[None]).mean(0)
    got = rules.smooth_path_slope(sigma, x, x_ref, sigma(x), sigma(x_ref), n)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("sigma", SMOOTH_BUILTINS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("block", [16, 96, 160, 10 ** 9])
def test_sampled_smooth_slope_in_blocks_gives_the_same_numbers(sigma, block, monkeypatch):
    """The sampled slope computed block by block (a block's samples in cache) is bit for bit the
    slope computed over the whole tensor, also for a broadcast reference and a partial last block
    (blocks a multiple of the SIMD width: vector and scalar kernels may differ in the last bit)."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64) * 3
    x_ref = torch.randn(1, 5, 4, 4, generator=g, dtype=torch.float64)
    monkeypatch.setattr(rules, "SAMPLE_BLOCK", 10 ** 9)
    whole = rules.smooth_path_slope(sigma, x, x_ref, sigma(x), sigma(x_ref), 10)
    monkeypatch.setattr(rules, "SAMPLE_BLOCK", block)
    assert torch.equal(rules.smooth_path_slope(sigma, x, x_ref, sigma(x), sigma(x_ref), 10), whole)


@pytest.mark.parametrize("sigma", SMOOTH_BUILTINS, ids=lambda s: type(s).__name__)
def test_exact_smooth_slope_is_the_secant_and_the_midpoint_derivative_where_tiny(sigma):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 50, generator=g, dtype=torch.float64) * 3
    x_ref = torch.randn(3, 50, generator=g, dtype=torch.float64)
    x_ref[0] = x[0] + 1e-7                     # |Δx| below ε^(1/3) of the scale: σ' at the midpoint
    got = rules.smooth_path_slope(sigma, x, x_ref, sigma(x), sigma(x_ref), None)
    torch.testing.assert_close(got[1:], (sigma(x[1:]) - sigma(x_ref[1:])) / (x[1:] - x_ref[1:]))
    torch.testing.assert_close(got[0], rules._derivative(sigma, (x[0] + x_ref[0]) / 2), rtol=0, atol=0)


@pytest.mark.parametrize("sigma", [nn.SiLU(), nn.Softplus()], ids=["fused kernel", "autograd"])
@pytest.mark.parametrize("layout", ["scalar", "channels_last", "transposed"])
def test_exact_smooth_slope_takes_the_midpoint_derivative_in_any_layout(layout, sigma):
    """Where σ' replaces the secant (by σ's fused kernel everywhere, or by autograd only there), whatever
    the strides."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    if layout == "scalar":
        x = x[0, 0, 0, 0]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = x.transpose(1, 3)
    x_ref = x + torch.where(torch.rand(x.shape, generator=g) < 0.5, 1e-9, 1.0).to(x.dtype)
    got = rules.smooth_path_slope(sigma, x, x_ref, sigma(x), sigma(x_ref), None)
    tiny = (x_ref - x).abs() < 1e-6
    assert got.shape == x.shape and bool(tiny.any())
    torch.testing.assert_close(got[tiny], rules._derivative(sigma, (x + x_ref) / 2)[tiny])
    torch.testing.assert_close(got[~tiny], ((sigma(x) - sigma(x_ref)) / (x - x_ref))[~tiny])


@pytest.mark.parametrize("layer,shape", [(nn.LayerNorm(6), (3, 4, 6)), (nn.LayerNorm((4, 6)), (2, 4, 6)),
                                         (LayerNorm2d(5), (2, 5, 3, 3)), (nn.GroupNorm(2, 6), (2, 6, 3, 3)),
                                         (nn.GroupNorm(3, 6, affine=False), (2, 6, 4)),
                                         (nn.LayerNorm(6, elementwise_affine=False), (3, 6))],
                         ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
@pytest.mark.parametrize("grid", ["riemann3", "riemann10", "legendre16", "kronrod8"])
@pytest.mark.parametrize("zero_reference", [False, True])
def test_closed_form_norm_path_sum_is_the_layer_evaluated_on_its_path(layer, shape, grid, zero_reference):
    """LayerNorm / LayerNorm2d / GroupNorm: the per-row closed form of Σ w_k J(t_k)ᵀ g equals the
    slow form (the layer evaluated at every node, autograd's VJP) to float64 rounding."""
    from lidlib.paths import gauss_kronrod, gauss_legendre, right_riemann
    g = torch.Generator().manual_seed(8)
    layer = copy.deepcopy(layer).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    x_ref = torch.zeros(shape, dtype=torch.float64) if zero_reference else torch.randn(shape, generator=g,
                                                                                         dtype=torch.float64) * 0.5
    up = torch.randn(shape, generator=g, dtype=torch.float64)
    nodes = {"riemann3": right_riemann(3, torch.float64), "riemann10": right_riemann(10, torch.float64),
             "legendre16": gauss_legendre(16, 1, torch.float64)}.get(grid)
    if grid == "kronrod8":                                      # two rules on one set of nodes: stacked
        t, w_kronrod, w_gauss = gauss_kronrod(8, torch.float64)
        nodes = t, torch.stack([w_kronrod, w_gauss])
    assert rules._norm_layout(layer, x) is not None
    fast = rules._path_sum(layer, x, x_ref, up)(*nodes)
    slow = rules._layer_path_vjp(layer, x, x_ref, up, *nodes)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-13)
    if grid == "kronrod8":                                      # each row is the sum with its own weights
        assert fast.shape == (2, *shape)
        for w, row in zip(nodes[1], slow):
            torch.testing.assert_close(row, rules._layer_path_vjp(layer, x, x_ref, up, t, w), rtol=1e-12, atol=1e-13)


class _ScaledSELU(nn.Module):
    """A position-dependent activation (a scale per element) whose σ' jumps at 0."""
    kinks = (0.0,)

    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, n, dtype=torch.float64))

    def forward(self, x):
        return self.scale * F.selu(x)


KINKED = [nn.Hardswish(), nn.Hardsigmoid(), nn.SELU(), nn.ELU(alpha=0.5), nn.CELU(alpha=2.0), nn.Softsign(),
          nn.Softplus(beta=2.0, threshold=3.0), rules._Call(F.hardswish), rules._Call(F.selu),
          rules._Call(F.softplus, (2.0, 3.0)), _ScaledSELU(8)]


def _kink_paths(kink, n=8):
    """Paths of length about 1e-6 (below ε^(1/3) of float64: 'short') across ``kink``, both ways,
    and two that end on it: the midpoint of each lies within 1e-6 of the kink."""
    x = kink + torch.tensor([1e-6, -3e-6, 2e-7, -5e-7, 4e-6, 0.0, 1e-6, -2e-6], dtype=torch.float64)[:n]
    x_ref = kink + torch.tensor([-1e-6, 1e-6, -3e-6, 2e-6, -1e-7, 1e-6, 0.0, 2e-7], dtype=torch.float64)[:n]
    return x, x_ref


@pytest.mark.parametrize("sigma", KINKED, ids=lambda s: getattr(getattr(s, "f", None), "__name__", type(s).__name__))
def test_exact_smooth_slope_of_a_short_path_across_a_kink_is_taken_piece_by_piece(sigma):
    """A path short enough for σ' at its midpoint (the secant would lose digits) that crosses a jump of
    σ' (Hardswish, Hardsigmoid at ±3; SELU, ELU at 0; Softplus at threshold/β) or of σ'' (CELU,
    Softsign at 0): exact D̄ is the quadrature of σ' with the kink as a break point (tests/reference.py),
    not σ' at the one midpoint (Hardswish across 3 gave 1.5 or 1 instead of 1.25)."""
    layer, scale = sigma, 1.0                 # (the reference evaluates σ one element at a time)
    if isinstance(sigma, rules._Call):
        layer = {"hardswish": nn.Hardswish(), "selu": nn.SELU(), "softplus": nn.Softplus(2.0, 3.0)}[sigma.f.__name__]
    if isinstance(sigma, _ScaledSELU):        # position-dependent: σ' by autograd on the whole tensor
        layer, scale = nn.SELU(), sigma.scale.detach()
        rules.register_elementwise(_ScaledSELU, kinks=_ScaledSELU.kinks)
    try:
        for kink in reference._breaks(layer):
            x, x_ref = _kink_paths(kink)
            with torch.no_grad():
                got = rules.smooth_path_slope(sigma, x, x_ref, sigma(x), sigma(x_ref), None)
            want = scale * torch.diag(reference.smooth_exact(layer, x, x_ref))
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    finally:
        rules.FAMILIES[:] = [f for f in rules.FAMILIES if _ScaledSELU not in f.modules]
        rules._KINKS.pop(_ScaledSELU, None)


@pytest.mark.parametrize("sigma", [nn.Hardswish(), nn.Hardsigmoid()], ids=lambda s: type(s).__name__)
def test_exact_smooth_slope_across_a_kink_in_float32(sigma):
    """The same in float32 (short: |Δx| ≤ 4.9e-3·(|x + x̂| + 1)) through the fused kernel, the crossing
    paths among others, against the float64 quadrature."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, generator=g, dtype=torch.float64) * 3
    x_ref = x + torch.randn(300, generator=g, dtype=torch.float64) * 0.5
    across = torch.arange(0, 300, 7)
    x[across] = (3.0 * torch.randn(len(across), generator=g).sign()
                 + torch.randn(len(across), generator=g) * 1e-3).double()
    x_ref[across] = x[across] + torch.randn(len(across), generator=g, dtype=torch.float64) * 2e-3
    x32, r32 = x.float(), x_ref.float()
    got = rules.smooth_path_slope(sigma, x32, r32, sigma(x32), sigma(r32), None)
    want = torch.diag(reference.smooth_exact(sigma, x32.double(), r32.double()))
    crossing = ((x32 - 3).sign() != (r32 - 3).sign()) | ((x32 + 3).sign() != (r32 + 3).sign())
    assert int(crossing[across].sum()) > 10
    torch.testing.assert_close(got.double()[across], want[across], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["LID-IG", "SIG-LID-IG"])
def test_exact_relevance_of_short_paths_across_kinks_matches_the_slow_reference(method):
    """A reference input 1e-7 from x (every path short), the first layer's pre-activations crossing
    ±3 (Hardswish) and the second's crossing 0 (SELU): exact relevance at every layer equals the
    division forms of tests/reference.py (its D̄ a quadrature with the kinks as break points).  With
    σ' at one midpoint, the second layer's relevance was off by 25% of its largest value."""
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 6), nn.Hardswish(), nn.Linear(6, 4), nn.SELU(), nn.Linear(4, 3)).double().eval()
    x = torch.randn(1, 3, generator=g, dtype=torch.float64)
    baseline = x[0] + 1e-7 * torch.randn(3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for lin in (model[0], model[2], model[4]):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=torch.float64))
        w = model[0].weight
        model[0].bias.copy_(torch.tensor([3.0, 3.0, 3.0, -3.0, -3.0, 1.0], dtype=torch.float64)
                            - w @ (x[0] + baseline) / 2)      # the path's midpoint on the kink
        a, a_ref = model[1](model[0](x[0])), model[1](model[0](baseline))
        model[2].bias.copy_(-model[2].weight @ (a + a_ref) / 2)
        model[4].bias.normal_(0, 0.3, generator=g)
        h, h_ref = model[0](x[0]), model[0](baseline)
        assert ((h[:5].abs() - 3).sign() != (h_ref[:5].abs() - 3).sign()).all()
        s, s_ref = model[2](a), model[2](a_ref)
        assert (s.sign() != s_ref.sign()).all()
    e = lidlib.explain(model, x, 1, method, baseline=baseline, n_steps=None)
    ref = reference.relevances(model, METHODS[method], x[0], 1, baseline, None)
    for layer, r in ref.items():
        scale = float(r.abs().max())
        torch.testing.assert_close(e.relevance[layer][0], r, rtol=1e-6, atol=1e-6 * scale,
                                   msg=lambda m, layer=layer: f"layer {layer}: {m}")


@pytest.mark.parametrize("kinks", [(float("nan"),), ("three",), 3.0, (0.0, float("inf"))])
def test_register_elementwise_refuses_kinks_that_are_not_finite_numbers(kinks):
    class Odd(nn.Module):
        def forward(self, x):
            return x.abs()
    before = list(rules.FAMILIES)
    with pytest.raises(ValueError, match="kinks must be finite numbers"):
        rules.register_elementwise(Odd, kinks=kinks)
    assert rules.FAMILIES == before and Odd not in rules._KINKS


@pytest.mark.parametrize("n", [None, 3])
def test_vision_transformer_through_an_explainer_is_explain_bit_for_bit(n):
    model, x, base, target, _ = _family("vit")
    xs = torch.cat([x, base * 2])
    ex = lidlib.Explainer(model, "SIG-LID-IG", baseline=base, n_steps=n)
    a, b = ex(xs, target), lidlib.explain(model, xs, target, "SIG-LID-IG", baseline=base, n_steps=n)
    assert list(a.relevance) == list(b.relevance)
    for k in a.relevance:
        assert torch.equal(a.relevance[k], b.relevance[k]), k
    assert torch.equal(ex(xs, target).relevance["input"], a.relevance["input"])      # the cached reference again
