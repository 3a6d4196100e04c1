"""Baselines (lidlib.baselines) against Captum, pytorch-grad-cam and slow references.

Conventions checked here:
* IG at the input = Captum ``IntegratedGradients(method="riemann_right")`` exactly.
* IG at a layer (conductance, gradient at the RIGHT end of each step, path from the baseline) =
  ``−LayerConductance.attribute(baseline, baselines=x, method="riemann_trapezoid")`` exactly; Captum's
  own ``riemann_right`` conductance is another sum (left-end gradient on the grid j/(n+1), j = 1..n+1),
  checked against a slow reference below.
* CAMs: pytorch-grad-cam's raw map (``get_cam_image``, before its ReLU) = ours with ``relu=False``; its
  final output = ``minmax(upsample(minmax(cam, 1e-7), size), 1e-7)`` of ours (cv2 bilinear resize ==
  ``align_corners=False``).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from lidlib import comparison as bl

captum_attr = pytest.importorskip("captum.attr")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

def _no_inplace(model):
    for m in model.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    return model


@pytest.fixture(scope="module")
def vgg():
    """VGG-16 with NON-ZERO biases (torchvision's random init has zero biases) and logits of O(1)."""
    torch.manual_seed(0)
    m = torchvision.models.vgg16(weights=None)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.bias.uniform_(-0.1, 0.1)
        m.classifier[0].weight.mul_(3)
        m.classifier[3].weight.mul_(3)
        m.classifier[6].weight.mul_(5)
    return m.eval()


@pytest.fixture(scope="module")
def vgg_ref(vgg):
    """The same network without in-place ReLUs, for Captum's layer hooks and pytorch-grad-cam (whose
    stored activations would otherwise be overwritten by the next in-place ReLU).  Its parameters are
    frozen so that pytorch-grad-cam's ``loss.backward()`` skips the 138 M weight gradients."""
    ref = _no_inplace(copy.deepcopy(vgg)).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def make_cnn(dtype=torch.float32, seed=1):
    torch.manual_seed(seed)
    m = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("relu1", nn.ReLU(inplace=True)),
        ("conv2", nn.Conv2d(8, 12, 3, padding=1)), ("relu2", nn.ReLU(inplace=True)),
        ("pool", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(12, 16, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
        ("gap", nn.AdaptiveAvgPool2d(2)), ("flat", nn.Flatten()),
        ("fc", nn.Linear(64, 10)),
    ]))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.mul_(2.0)
                mod.bias.uniform_(-0.2, 0.2)
    return m.to(dtype).eval()


def make_mlp(dtype=torch.float32, seed=2):
    torch.manual_seed(seed)
    m = nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(12, 16)), ("relu1", nn.ReLU(inplace=True)),
        ("fc2", nn.Linear(16, 16)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(16, 5)),
    ]))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                mod.bias.uniform_(-0.5, 0.5)
    return m.to(dtype).eval()


class Counting(nn.Module):
    """Counts forward calls and the batch sizes it saw."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.net(x)


def close(a, b, rtol, atol_rel=None):
    """``assert_close`` with an absolute floor relative to the reference's scale."""
    b = torch.as_tensor(b).detach().to(a.dtype)
    atol = 0.0 if atol_rel is None else atol_rel * float(b.abs().max())
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------
# Integrated gradients, Eq. (11)
# ----------------------------------------------------------------------------------------------

def test_ig_input_matches_captum_vgg(vgg):
    """Real VGG-16, compared in float64: in float32 a path point whose ReLU or max-pool input lies within
    rounding of a kink may switch sides between two correct implementations (different batch layouts give
    different conv algorithms), which moves single pixels by ~1 % (seen on some CPUs)."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 64)
    base = 0.3 * torch.randn(1, 3, 64, 64)            # non-zero, broadcast over the batch
    t = torch.tensor([3, 7])
    ours32 = bl.integrated_gradients(vgg, x, t, baseline=base, n_steps=10)
    assert ours32.shape == x.shape and ours32.dtype == torch.float32
    v64, x, base = copy.deepcopy(vgg).double(), x.double(), base.double()
    ours = bl.integrated_gradients(v64, x, t, baseline=base, n_steps=10)
    ref = captum_attr.IntegratedGradients(v64).attribute(
        x, baselines=base.expand_as(x), target=t, n_steps=10, method="riemann_right")
    assert ours.dtype == torch.float64
    close(ours, ref, rtol=1e-6, atol_rel=1e-7)   # measured: ~1.5e-8 relative apart in float64


@pytest.mark.parametrize("maker,shape,target", [
    (make_cnn, (2, 3, 12, 10), [4, 9]),
    (make_mlp, (3, 12), 2),
])
def test_ig_input_matches_captum_float64(maker, shape, target):
    model = maker(torch.float64)
    torch.manual_seed(4)
    x = torch.randn(*shape, dtype=torch.float64)
    base = 0.5 * torch.randn(*shape, dtype=torch.float64)
    ours = bl.integrated_gradients(model, x, target, baseline=base, n_steps=8)
    ref = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=base, target=target, n_steps=8, method="riemann_right")
    assert ours.dtype == torch.float64
    close(ours, ref, rtol=1e-10, atol_rel=1e-12)


def _slow_ig(model, x, c, base, n, layer=None):
    """One sample, one path point at a time: (x−x̂)·(1/n)Σ g(x_k), or Σ g_h(x_k)(h(x_k) − h(x_{k−1}))."""
    model = _no_inplace(copy.deepcopy(model))
    out = []
    for i in range(x.shape[0]):
        total, prev = 0.0, None
        for k in range(0 if layer else 1, n + 1):
            p = (base[i:i + 1] + k / n * (x[i:i + 1] - base[i:i + 1])).requires_grad_(True)
            if layer is None:
                g, = torch.autograd.grad(model(p)[0, c[i]], p)
                total = total + g / n
            else:
                hs = []
                hd = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, o: hs.append(o))
                z = model(p)[0, c[i]]
                hd.remove()
                g, = torch.autograd.grad(z, hs[0])
                if prev is not None:
                    total = total + g * (hs[0] - prev)
                prev = hs[0].detach()
        out.append(total * (x[i:i + 1] - base[i:i + 1]) if layer is None else total)
    return torch.cat(out).detach()


@pytest.mark.parametrize("layer", [None, "relu2", "pool", "conv3"])
def test_ig_matches_slow_reference(layer):
    model = make_cnn(torch.float64)
    torch.manual_seed(5)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    base = 0.4 * torch.randn(2, 3, 8, 8, dtype=torch.float64)
    c = torch.tensor([1, 6])
    ours = bl.integrated_gradients(model, x, c, baseline=base, n_steps=5, layer=layer)
    close(ours, _slow_ig(model, x, c, base, 5, layer), rtol=1e-10, atol_rel=1e-12)


def test_conductance_vs_captum_vgg_float32(vgg, vgg_ref):
    """Ours = −Captum LayerConductance run from x back to the baseline with the trapezoid grid."""
    torch.manual_seed(6)
    x = torch.randn(1, 3, 64, 64)
    base = 0.2 * torch.randn(1, 3, 64, 64)
    ours = bl.integrated_gradients(vgg, x, 11, baseline=base, n_steps=10, layer="features.28")
    lc = captum_attr.LayerConductance(vgg_ref, vgg_ref.features[28])
    ref = -lc.attribute(base, baselines=x, target=11, n_steps=10, method="riemann_trapezoid")
    assert ours.shape == (1, 512, 4, 4)
    close(ours, ref, rtol=1e-5, atol_rel=1e-5)


@pytest.mark.parametrize("layer", ["relu1", "pool", "conv3"])
def test_conductance_vs_captum_float64(layer):
    model = make_cnn(torch.float64)
    torch.manual_seed(7)
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    base = 0.5 * torch.randn(2, 3, 10, 12, dtype=torch.float64)
    t = torch.tensor([0, 5])
    ours = bl.integrated_gradients(model, x, t, baseline=base, n_steps=8, layer=layer)
    ref_model = _no_inplace(copy.deepcopy(model))
    lc = captum_attr.LayerConductance(ref_model, dict(ref_model.named_modules())[layer])
    ref = -lc.attribute(base, baselines=x, target=t, n_steps=8, method="riemann_trapezoid")
    close(ours, ref, rtol=1e-10, atol_rel=1e-12)
    # Captum's public riemann_right is another sum: left-end gradients on α_j = j/(n+1), j = 1..n+1
    # (the first step [0, 1/(n+1)] is skipped).  Check that statement with a slow reference, on
    # Captum's own grid (float32 linspace values, hence not exactly j/9 in float64).
    right = lc.attribute(x, baselines=base, target=t, n_steps=8, method="riemann_right")
    mods = dict(ref_model.named_modules())
    n = 8
    slow = []
    for i in range(2):
        hs, gs = [], []
        for alpha in torch.linspace(1 / (n + 1), 1, n + 1).tolist():
            p = (base[i:i + 1] + alpha * (x[i:i + 1] - base[i:i + 1])).requires_grad_(True)
            cap = []
            hd = mods[layer].register_forward_hook(lambda m, a, o: cap.append(o))
            z = ref_model(p)[0, t[i]]
            hd.remove()
            gs.append(torch.autograd.grad(z, cap[0])[0])
            hs.append(cap[0].detach())
        slow.append(sum(gs[j] * (hs[j + 1] - hs[j]) for j in range(n)))
    close(right, torch.cat(slow), rtol=1e-9, atol_rel=1e-11)
    assert not torch.allclose(right, ours, rtol=1e-3)


def _err(model, x, c, base, n, layer):
    r = bl.integrated_gradients(model, x, c, baseline=base, n_steps=n, layer=layer)
    with torch.no_grad():
        dz = model(x)[:, c] - model(base)[:, c]
    return abs(float(r.sum() - dz.sum())), abs(float(dz.sum()))


@pytest.mark.parametrize("maker,shape,layer", [
    (make_mlp, (1, 12), None), (make_mlp, (1, 12), "relu1"),
    (make_cnn, (1, 3, 8, 8), None), (make_cnn, (1, 3, 8, 8), "pool"),
])
def test_ig_completeness_error_shrinks(maker, shape, layer):
    """Σ R ≈ Z_c(x) − Z_c(x̂), the right-Riemann error shrinking as n grows (about like 1/n)."""
    model = maker(torch.float64)
    torch.manual_seed(8)
    x = 2 * torch.randn(*shape, dtype=torch.float64)
    base = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        c = int((model(x) - model(base)).abs().argmax())
    errs = []
    for n in (2, 16, 128, 2048):
        e, scale = _err(model, x, c, base, n, layer)
        errs.append(e)
    assert errs[-1] < 0.02 * errs[0], errs
    assert errs[-1] < 2e-3 * scale, (errs, scale)


def test_ig_linear_model_exact():
    """On an affine map, IG and conductance are exact for any n (no bias leaks into the sum)."""
    torch.manual_seed(9)
    lin = nn.Sequential(nn.Linear(6, 4)).double().eval()
    x, base = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    r = bl.integrated_gradients(lin, x, 1, baseline=base, n_steps=1)
    close(r, lin[0].weight[1].detach() * (x - base), rtol=1e-12, atol_rel=1e-14)
    r = bl.integrated_gradients(lin, x, 1, baseline=base, n_steps=3, layer="0")
    close(r.sum(1), (lin(x) - lin(base))[:, 1].detach(), rtol=1e-12)


def test_ig_batched_in_one_pass_and_chunks():
    net = make_cnn()
    model = Counting(net).eval()
    torch.manual_seed(10)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([2, 3])
    for layer in (None, "net.conv2"):
        model.calls.clear()
        full = bl.integrated_gradients(model, x, t, n_steps=7, layer=layer, baseline=0.1)
        m = 7 if layer is None else 8
        assert model.calls == [2 * m]
        model.calls.clear()
        chunked = bl.integrated_gradients(model, x, t, n_steps=7, layer=layer, baseline=0.1,
                                          internal_batch_size=5)
        assert model.calls == [5] * (2 * m // 5) + ([2 * m % 5] if 2 * m % 5 else [])
        close(chunked, full, rtol=1e-5, atol_rel=1e-6)


def test_dtype_follows_model():
    model = make_cnn(torch.float64)
    x = torch.randn(1, 3, 8, 8)                       # float32 input, float64 model
    assert bl.integrated_gradients(model, x, 0).dtype == torch.float64
    assert bl.gradcam(model, x, 0, "conv3").dtype == torch.float64
    assert bl.scorecam(model, x, 0, "conv3").dtype == torch.float64


# ----------------------------------------------------------------------------------------------
# CAMs against pytorch-grad-cam
# ----------------------------------------------------------------------------------------------

def _pgc_post(cam, size):
    """pytorch-grad-cam's post-processing of one layer's map, written with our helpers."""
    return bl.minmax(bl.upsample(bl.minmax(cam, eps=1e-7), size), eps=1e-7)


@pytest.mark.parametrize("name,layers", [("gradcam", ("features.28", "features.30")),
                                         ("layercam", ("features.22", "features.28"))])
def test_cams_match_pytorch_grad_cam_vgg(vgg, vgg_ref, name, layers):
    torch.manual_seed(11)
    x = torch.randn(2, 3, 64, 80)                     # non-square: catches (H, W) swaps
    t = [5, 17]
    cls = {"gradcam": pgc.GradCAM, "layercam": pgc.LayerCAM}[name]
    fn = getattr(bl, name)
    for layer in layers:
        mod = dict(vgg_ref.named_modules())[layer]
        with cls(model=vgg_ref, target_layers=[mod]) as cam_obj:
            cam_obj.compute_input_gradient = True     # the graph starts at x (frozen parameters)
            targets = [ClassifierOutputTarget(c) for c in t]
            final = cam_obj(input_tensor=x, targets=targets)
            acts = cam_obj.activations_and_grads.activations[0].numpy()
            grads = cam_obj.activations_and_grads.gradients[0].numpy()
            raw = cam_obj.get_cam_image(x, mod, targets, acts, grads, False)
        signed = fn(vgg, x, torch.tensor(t), layer, relu=False)    # vgg keeps its in-place ReLUs
        close(signed, raw, rtol=1e-4, atol_rel=1e-5)
        cam = fn(vgg, x, torch.tensor(t), layer)
        close(cam, signed.clamp_min(0), rtol=0, atol_rel=0)
        close(_pgc_post(cam, x.shape[-2:]), final, rtol=0, atol_rel=2e-5)


def test_scorecam_matches_pytorch_grad_cam_cnn():
    model = make_cnn()
    torch.manual_seed(12)
    x = torch.randn(2, 3, 12, 16)
    t = [3, 8]
    ours = bl.scorecam(model, x, torch.tensor(t), "conv3", batch_size=5, relu=False)
    ref_model = _no_inplace(copy.deepcopy(model))
    with pgc.ScoreCAM(model=ref_model, target_layers=[ref_model.conv3]) as cam_obj:
        cam_obj.batch_size = 5
        targets = [ClassifierOutputTarget(c) for c in t]
        cam_obj.activations_and_grads(x)             # forward only: stores the activations
        acts = cam_obj.activations_and_grads.activations[0].numpy()
        raw = cam_obj.get_cam_image(x, ref_model.conv3, targets, acts, None, False)
    close(ours, raw, rtol=1e-5, atol_rel=1e-6)
    ref_final = scale_cam_image(scale_cam_image(np.maximum(raw, 0), (16, 12)))
    close(_pgc_post(ours.clamp_min(0), (12, 16)), ref_final, rtol=0, atol_rel=2e-5)
    # batching does not change the result: per image, its C = 16 masked inputs in passes of ≤ 5
    counted = Counting(model).eval()
    again = bl.scorecam(counted, x, torch.tensor(t), "net.conv3", batch_size=5, relu=False)
    assert counted.calls == [2] + [5, 5, 5, 1] * 2     # one pass for A, then each image's masked batches
    close(again, ours, rtol=1e-6, atol_rel=1e-7)


def test_scorecam_shares_masked_forwards_between_copies_and_constant_channels():
    """Copies of one image (classes A and B) share their masked forwards, and all constant channels
    (mask 0 exactly) share one forward of 0·X: the same maps as separate calls, with fewer passes."""
    model = make_cnn()
    with torch.no_grad():
        model.conv1.bias[:3] = -100.0                  # relu1 channels 0..2 are 0 everywhere: constant
    torch.manual_seed(16)
    x = torch.randn(1, 3, 12, 16)
    with torch.no_grad():
        acts = torch.relu(model.conv1(x))
    masks, live = bl.scorecam_masks(acts, x.shape[-2:])
    assert live.sum() == 5 and not live[0, :3].any() and torch.equal(masks[0, :3], torch.zeros_like(masks[0, :3]))
    counted = Counting(model).eval()
    both = bl.scorecam(counted, x.expand(2, -1, -1, -1), torch.tensor([1, 6]), "net.relu1", batch_size=4)
    assert counted.calls == [2, 1, 4, 1]               # A; then 0·X once, the 5 live masks once, not twice
    for b, c in enumerate((1, 6)):
        close(both[b], bl.scorecam(model, x, c, "relu1", batch_size=4)[0], rtol=1e-6, atol_rel=1e-7)
        # the same as masking with every channel (as pytorch-grad-cam does)
        with torch.no_grad():
            z = model(x * masks[0][:, None])[:, c]
        close(both[b], (torch.softmax(z, 0)[:, None, None] * acts[0]).sum(0).clamp_min(0), rtol=1e-6, atol_rel=1e-7)


def test_scorecam_matches_pytorch_grad_cam_vgg(vgg, vgg_ref):
    torch.manual_seed(13)
    x = torch.randn(1, 3, 32, 32)
    ours = bl.scorecam(vgg, x, 9, "features.4", batch_size=32)
    with pgc.ScoreCAM(model=vgg_ref, target_layers=[vgg_ref.features[4]]) as cam_obj:
        cam_obj.batch_size = 32
        cam_obj.activations_and_grads(x)
        acts = cam_obj.activations_and_grads.activations[0].numpy()
        raw = cam_obj.get_cam_image(x, vgg_ref.features[4], [ClassifierOutputTarget(9)], acts, None, False)
    close(ours, np.maximum(raw, 0), rtol=1e-4, atol_rel=1e-5)


def test_layercam_multiscale_one_pass():
    net = make_cnn()
    model = Counting(net).eval()
    torch.manual_seed(14)
    x, t = torch.randn(2, 3, 12, 16), torch.tensor([1, 2])
    layers = ["net.relu1", "net.pool", "net.conv3"]
    model.calls.clear()
    ms = bl.layercam_multiscale(model, x, t, layers, (24, 32))
    assert model.calls == [2] and ms.shape == (2, 24, 32)
    ref = sum(bl.minmax(bl.upsample(bl.layercam(model, x, t, l), (24, 32))) for l in layers)
    close(ms, ref, rtol=1e-6, atol_rel=1e-7)
    assert float(ms.max()) <= len(layers) + 1e-6 and float(ms.min()) >= 0
    assert bl.layercam_multiscale(model, x, t, layers, None).shape == (2, 12, 16)


def test_signed_maps_and_helpers():
    model = make_cnn()
    torch.manual_seed(15)
    x = torch.randn(2, 3, 8, 8)
    s = bl.gradcam(model, x, 4, "conv2", relu=False)
    assert s.shape == (2, 8, 8) and float(s.min()) < 0 < float(s.max())
    close(bl.gradcam(model, x, 4, "conv2"), s.clamp_min(0), rtol=0, atol_rel=0)
    cv2 = pytest.importorskip("cv2")
    cam = torch.rand(1, 5, 7)
    up = bl.upsample(cam, (11, 13))
    close(up[0], cv2.resize(cam[0].numpy(), (13, 11)), rtol=0, atol_rel=1e-6)
    assert bl.upsample(cam, 9).shape == (1, 9, 9)
    mm = bl.minmax(torch.stack([cam[0] * 3 - 1, torch.ones(5, 7)]))
    assert float(mm[0].min()) == 0 and float(mm[0].max()) == 1 and float(mm[1].abs().max()) == 0


# ----------------------------------------------------------------------------------------------
# The model is left as it was, also after an error
# ----------------------------------------------------------------------------------------------

def _snapshot(model):
    mods = {n: (m.training, getattr(m, "inplace", None)) for n, m in model.named_modules()}
    params = {n: (p.requires_grad, p.detach().clone(), p.grad) for n, p in model.named_parameters()}
    return mods, params


def _assert_same(model, snap):
    mods, params = snap
    assert {n: (m.training, getattr(m, "inplace", None)) for n, m in model.named_modules()} == mods
    for n, m in model.named_modules():
        for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                  "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks"):
            assert len(getattr(m, d, {})) == 0, (n, d)
    for n, p in model.named_parameters():
        rg, val, grad = params[n]
        assert p.requires_grad == rg and p.grad is grad and torch.equal(p.detach(), val), n


CALLS = {
    "ig": lambda m, x, t: bl.integrated_gradients(m, x, t, baseline=0.2, n_steps=3),
    "cond": lambda m, x, t: bl.integrated_gradients(m, x, t, baseline=0.2, n_steps=3, layer="conv2"),
    "gradcam": lambda m, x, t: bl.gradcam(m, x, t, "conv2"),
    "layercam": lambda m, x, t: bl.layercam(m, x, t, "relu1"),
    "scorecam": lambda m, x, t: bl.scorecam(m, x, t, "conv3", batch_size=7),
    "multiscale": lambda m, x, t: bl.layercam_multiscale(m, x, t, ["conv1", "conv3"], 8),
}


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize("target", [3, 10, torch.tensor([1, -1])], ids=["ok", "out_of_range", "negative"])
def test_model_state_restored(method, target):
    model = make_cnn()
    model.conv1.weight.requires_grad_(False)          # a partly frozen model stays partly frozen
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    snap = _snapshot(model)
    if isinstance(target, int) and target < 10:
        CALLS[method](model, x, target)
    else:
        with pytest.raises(ValueError, match="out of range"):
            CALLS[method](model, x, target)
    _assert_same(model, snap)
    assert x.grad is None


def test_state_restored_after_exception_inside_forward(vgg):
    class Boom(nn.Module):
        def forward(self, h):
            raise RuntimeError("boom")

    model = make_cnn()
    model.gap = Boom().eval()
    snap = _snapshot(model)
    for method in sorted(CALLS):
        with pytest.raises(RuntimeError, match="boom"):
            CALLS[method](model, torch.randn(1, 3, 8, 8), 0)
        _assert_same(model, snap)
    snap = _snapshot(vgg)
    bl.gradcam(vgg, torch.randn(1, 3, 32, 32), 1, "features.28")
    with pytest.raises(ValueError):
        bl.layercam(vgg, torch.randn(1, 3, 32, 32), 1000, "features.28")
    _assert_same(vgg, snap)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_errors():
    model = make_cnn()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'.*'conv\d'"):
        bl.gradcam(model, x, 0, "conv9")
    with pytest.raises(ValueError, match="unknown layer"):
        bl.integrated_gradients(model, x, 0, layer="features.30")
    with pytest.raises(ValueError, match="batch size 2"):
        bl.layercam(model, x, torch.tensor([1, 2, 3]), "conv1")
    with pytest.raises(ValueError, match="out of range"):
        bl.integrated_gradients(model, x, 10)
    with pytest.raises(TypeError, match="integer"):
        bl.gradcam(model, x, torch.tensor([1.0, 2.0]), "conv1")
    with pytest.raises(ValueError, match="baseline of shape"):
        bl.integrated_gradients(model, x, 0, baseline=torch.zeros(3, 3, 8, 8))
    with pytest.raises(ValueError, match="baseline of shape"):
        bl.integrated_gradients(model, x, 0, baseline=torch.zeros(2, 3, 8, 1, 1))
    for n in (0, -2, 2.5):
        with pytest.raises(ValueError, match="n_steps"):
            bl.integrated_gradients(model, x, 0, n_steps=n)
    with pytest.raises(ValueError, match="batch_size"):
        bl.scorecam(model, x, 0, "conv3", batch_size=0)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        bl.gradcam(model, x, 0, "fc")
    close(bl.gradcam(model, x, 0, model.conv3), bl.gradcam(model, x, 0, "conv3"), rtol=0, atol_rel=0)
    with pytest.raises(ValueError, match="not a submodule"):
        bl.gradcam(model, x, 0, nn.Conv2d(3, 3, 1))
    relu = nn.ReLU()
    shared = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu, nn.Flatten(),
                           nn.LazyLinear(3)).eval()
    shared(x)
    with pytest.raises(RuntimeError, match="called 2 times"):
        bl.layercam(shared, x, 0, "1")
    model.train()
    with pytest.raises(RuntimeError, match=r"\.eval\(\)"):
        bl.integrated_gradients(model, x, 0)
    with pytest.raises(RuntimeError, match=r"\.eval\(\)"):
        bl.scorecam(model, x, 0, "conv3")
    assert model.training and model.conv1.training
    mlp = make_mlp()
    with pytest.raises(ValueError, match="logits"):
        bl.integrated_gradients(nn.Sequential(OrderedDict(m=mlp, u=nn.Unflatten(1, (5, 1)))).eval(),
                                torch.randn(1, 12), 0)


@pytest.mark.parametrize("method", ["GradCAM", "LayerCAM"])
def test_explain_cams_take_their_logits_from_the_one_pass(method):
    """explain(…, "GradCAM"/"LayerCAM") reads the logits off the pass that gives the maps: one forward."""
    import lidlib
    net = make_cnn()
    model = Counting(net).eval()
    torch.manual_seed(15)
    x, t = torch.randn(2, 3, 12, 16), torch.tensor([1, 2])
    model.calls.clear()
    e = lidlib.explain(model, x, t, method, layers=["net.relu1", "net.conv3"])
    assert model.calls == [2]
    with torch.no_grad():
        torch.testing.assert_close(e.logits, net(x))
