"""An explanation leaves the model exactly as it was; bad input gets a clear error; results are repeatable."""
import copy

import pytest
import torch
from torch import nn

import lidlib
from lidlib import rules, toy
from lidlib.methods import METHODS, Method

PANORAMA = [name for name, m in METHODS.items() if isinstance(m, Method)]


def _inplace_cnn():
    """A toy CNN whose ReLUs are in-place (as torchvision's VGG), some parameters frozen."""
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=5)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    model[0].weight.requires_grad_(False)
    return model


def _state(model):
    return {
        "modes": [m.training for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.state_dict().values()],
        "grads": [p.grad for p in model.parameters()],
        "forward": [vars(m).get("forward") for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()],
    }


def _assert_same(a, b):
    for key in a:
        if key == "params":
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key
        else:
            assert a[key] == b[key], key


X = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("method", list(METHODS))
def test_model_unchanged_after_explanation(method):
    model = _inplace_cnn()
    before = _state(model)
    layers = ["2", "5"] if method in ("GradCAM", "LayerCAM", "ScoreCAM", "IG") else None
    lidlib.explain(model, X, torch.tensor([0, 3]), method, layers=layers)
    _assert_same(before, _state(model))


def test_model_unchanged_when_explanation_fails_half_way(monkeypatch):
    model = _inplace_cnn()
    before = _state(model)

    def boom(*args, **kwargs):
        raise RuntimeError("failure inside a forward hook")
    monkeypatch.setattr(rules, "maxpool_substitute", boom)
    with pytest.raises(RuntimeError, match="failure inside"):
        lidlib.explain(model, X, 1, "LID-IG")
    _assert_same(before, _state(model))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="out of range"):          # detected after the forward pass
        lidlib.explain(model, X, 9, "SIG-LID-IG")
    _assert_same(before, _state(model))


def test_explanation_works_under_no_grad_and_matches():
    model = toy.mlp(seed=3)
    x = torch.randn(2, 4, dtype=torch.float64)
    a = lidlib.explain(model, x, 1, "SIG-LID-IG").relevance["input"]
    with torch.no_grad():
        b = lidlib.explain(model, x, 1, "SIG-LID-IG").relevance["input"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", PANORAMA + ["IG"])
def test_deterministic(method):
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=6)
    e1 = lidlib.explain(model, X, torch.tensor([1, 2]), method)
    e2 = lidlib.explain(model, X, torch.tensor([1, 2]), method)
    assert list(e1.relevance) == list(e2.relevance)
    assert all(torch.equal(e1.relevance[k], e2.relevance[k]) for k in e1.relevance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_model(dtype):
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=7, dtype=dtype)
    e = lidlib.explain(model, X.double(), 1, "SIG-LID-IG", n_steps=None)
    assert all(r.dtype == dtype for r in e.relevance.values())
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert e.conservation().max_rel_gap() < tol


def test_batch_of_targets_equals_separate_calls():
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=8)
    x = X[:1].repeat(2, 1, 1, 1)
    both = lidlib.explain(model, x, torch.tensor([0, 3]), "SIG-LID-IG", n_steps=None)
    for i, c in enumerate([0, 3]):
        one = lidlib.explain(model, X[:1], c, "SIG-LID-IG", n_steps=None)
        assert torch.allclose(both.relevance["input"][i], one.relevance["input"][0], atol=1e-12)


def test_batch_of_references():
    model = toy.mlp(seed=9)
    x = torch.randn(3, 4, dtype=torch.float64)
    refs = torch.randn(3, 4, dtype=torch.float64)
    e = lidlib.explain(model, x, 0, "LID-IG", baseline=refs, n_steps=None)
    for i in range(3):
        one = lidlib.explain(model, x[i:i + 1], 0, "LID-IG", baseline=refs[i], n_steps=None)
        assert torch.allclose(e.relevance["input"][i], one.relevance["input"][0], atol=1e-12)


# ----------------------------------------------------------------------------- errors
MODEL = toy.mlp(seed=0)
XM = torch.randn(2, 4, dtype=torch.float64)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(method="LID-Tailor"), ValueError, "valid methods are: LRP-0"),
    (dict(target=3), ValueError, r"out of range.*0\.\.2"),
    (dict(target=-1), ValueError, "out of range"),
    (dict(target=torch.tensor([0, 1, 2])), ValueError, "batch"),
    (dict(target=1.5), TypeError, "target"),
    (dict(baseline=torch.zeros(3)), ValueError, "broadcast"),
    (dict(baseline=torch.full((4,), float("nan"))), ValueError, "NaN"),
    (dict(x=torch.tensor([[0.0, float("inf"), 0.0, 0.0]])), ValueError, "NaN or infinite"),
    (dict(x=torch.zeros(4)), ValueError, "batch"),
    (dict(n_steps=0), ValueError, "n_steps"),
    (dict(n_steps=2.5), ValueError, "n_steps"),
])
def test_clear_errors(kwargs, exc, match):
    args = dict(model=MODEL, x=XM, target=0, method="LID-IG")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        lidlib.explain(args.pop("model"), args.pop("x"), args.pop("target"), args.pop("method"), **args)


def test_training_mode_is_refused():
    model = copy.deepcopy(MODEL).train()
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        lidlib.explain(model, XM, 0)


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Linear(4, 3), nn.PReLU(), nn.Linear(3, 2)).double().eval()
    with pytest.raises(TypeError, match=r"'1' \(PReLU\)"):
        lidlib.explain(model, XM, 0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)).double().eval()
    with pytest.raises(TypeError, match="logits"):
        lidlib.explain(model, XM, 0)


def test_stage_errors():
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    e = lidlib.explain(model, X, 0, "LID-IG")
    with pytest.raises(ValueError, match="not a stage"):
        e.heatmap(5)
    with pytest.raises(ValueError, match="needs layers"):
        lidlib.explain(model, X, 0, "GradCAM")


class _FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.exp(torch.relu(self.fc1(x))))     # relu gets its rule, exp has none


def test_functional_nonlinearity_in_forward_code_is_refused():
    model = _FunctionalReLU().double().eval()
    before = _state(model)
    with pytest.raises(TypeError, match=r"exp\(\.\.\.\) in the forward code of module '<model>'"):
        lidlib.explain(model, XM, 0, "LID-IG")
    _assert_same(before, _state(model))


class _Aliasing(nn.Module):
    """Layers whose outputs share memory: Identity and eval Dropout return their input, Flatten a
    view, and a module that returns a parameter-free constant path at the reference."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.pad = nn.Identity()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.flat = nn.Flatten()
        self.same = nn.Identity()
        self.fc = nn.Linear(3 * 16, 4)
        for p in self.parameters():
            nn.init.normal_(p, 0, 0.5)

    def forward(self, x):
        return self.fc(self.same(self.flat(self.drop(self.relu(self.conv(self.pad(x)))))))


def _same_object():
    """An Identity hands on the very tensor the ReLU returned: two layers, one tensor."""
    torch.manual_seed(4)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 6), nn.ReLU(), nn.Identity(), nn.Linear(6, 4))


@pytest.mark.parametrize("build", [_Aliasing, _same_object])
@pytest.mark.parametrize("method", ["LID-Taylor", "LRP-0"])
def test_relevance_is_recorded_correctly_when_layer_outputs_share_memory(method, build):
    """R(Y^l) = g ⊙ ΔY^l (or g ⊙ Y^l) at every layer, computed here by plain autograd, even though
    the engine writes relevances into the increments it took: layers sharing memory must not corrupt
    each other, and the caller's baseline and the reference logits stay intact."""
    model = build().eval().double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    base = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    base_copy = base.clone()
    meth = lidlib.methods.LRP0_EXACT if method == "LRP-0" else method    # ε = 0: exactly g ⊙ Y
    e = lidlib.explain(model, x, torch.tensor([1, 2]), meth, baseline=base)
    assert torch.equal(base, base_copy)

    def outputs(inp):
        out = {}
        hooks = [m.register_forward_hook(lambda m, a, o, n=n: out.setdefault(n, o))
                 for n, m in model.named_children()]
        z = model(inp)
        for h in hooks:
            h.remove()
        return z, out

    with torch.no_grad():
        z_ref, ref = outputs(base)
    inp = x.clone().requires_grad_(True)
    z, act = outputs(inp)
    increment = method == "LID-Taylor"
    top = torch.zeros_like(z).scatter_(1, torch.tensor([[1], [2]]), 1.0)
    grads = torch.autograd.grad(z, [inp] + list(act.values()), grad_outputs=top)
    expected = {"input": grads[0] * (x - base if increment else x)}
    for (name, y), g in zip(act.items(), grads[1:]):
        expected[name] = g * (y.detach() - ref[name] if increment else y.detach())
    for name, r in expected.items():
        torch.testing.assert_close(e.layer(name), r, rtol=1e-12, atol=1e-12)
    if increment:
        torch.testing.assert_close(e.reference_logits, z_ref)


@pytest.mark.parametrize("method", PANORAMA)
def test_two_layers_sharing_one_tensor_match_the_reference(method):
    """Identity returns the ReLU's own tensor: both layers' relevances equal the slow reference."""
    import reference
    model = _same_object().eval().double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    base = torch.randn(2, 4, 4, dtype=torch.float64)
    e = lidlib.explain(model, x, torch.tensor([1, 2]), method, baseline=base[None], n_steps=3)
    for b, c in enumerate((1, 2)):
        ref = reference.relevances(model, METHODS[method], x[b], c, base, 3)
        for layer, r in ref.items():
            torch.testing.assert_close(e.relevance[layer][b], r, rtol=1e-7, atol=1e-7 * float(r.abs().max()))


# ----------------------------------------------------------------------------- issue 12, items 3-6
class _ClassFlagReLU(nn.ReLU):
    """A ReLU whose ``inplace`` is a class attribute (no instance attribute)."""
    inplace = True

    def __init__(self):
        super().__init__()
        del self.inplace


def _truthy_inplace_model(kind):
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=5)
    for i, m in enumerate(model):
        if isinstance(m, nn.ReLU):
            if kind == "int":
                m.inplace = 1
            else:
                model[i] = _ClassFlagReLU()
    return model.eval()


@pytest.mark.parametrize("kind", ["int", "class attribute"])
@pytest.mark.parametrize("method", ["DeepLIFT", "LID-IG", "LRP-0", "IG", "GradCAM"])
def test_truthy_and_class_attribute_inplace_flags(method, kind):
    """inplace=1 is switched off like True (DeepLIFT conserves, LID-IG differs from LID-Taylor) and
    every flag comes back exactly as it was: 1 stays 1, a class attribute leaves no instance attribute."""
    model = _truthy_inplace_model(kind)
    plain = toy.cnn(in_channels=2, size=8, classes=4, seed=5)           # same weights, no in-place
    before = _state(model)
    layers = ["2", "5"] if method in ("IG", "GradCAM") else None
    e = lidlib.explain(model, X, torch.tensor([0, 3]), method, layers=layers, baseline=0.3)
    want = lidlib.explain(plain, X, torch.tensor([0, 3]), method, layers=layers, baseline=0.3)
    assert all(torch.equal(e.relevance[k], want.relevance[k]) for k in want.relevance)
    _assert_same(before, _state(model))
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if kind == "int":
        assert all(vars(m)["inplace"] == 1 and type(vars(m)["inplace"]) is int for m in relus)
    else:
        assert all("inplace" not in vars(m) and m.inplace is True for m in relus)


def test_truthy_inplace_flag_keeps_deeplift_conservative():
    model = toy.mlp(seed=2)
    for m in model:
        if isinstance(m, nn.ReLU):
            m.inplace = 1
    e = lidlib.explain(model, XM, 1, "DeepLIFT", baseline=0.7)
    assert e.conservation().max_rel_gap() < 1e-12
    assert not torch.equal(e.input, lidlib.explain(model, XM, 1, "LID-Taylor", baseline=0.7).input)


def test_a_layers_string_is_refused_with_the_list_spelling():
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    for method in ("LID-IG", "GradCAM", "IG"):
        with pytest.raises(TypeError, match=r"layers=\['5'\]"):
            lidlib.explain(model, X, 0, method, layers="5")
    with pytest.raises(TypeError, match="list of module names"):
        lidlib.explain(model, X, 0, "LID-IG", layers=5)


def test_an_unknown_baseline_object_and_a_non_bool_increment_are_refused():
    from lidlib.comparison import Comparison as Baseline
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    with pytest.raises(ValueError, match="unknown baseline method.*GradCAM"):
        lidlib.explain(model, X, 0, Baseline("EigenCAM", False), layers=["5"])
    with pytest.raises(TypeError, match="increment must be True or False"):
        lidlib.explain(model, X, 0, Method("mine", "logit", rules.TAYLOR, increment="no"))


@pytest.mark.parametrize("method", ["LID-IG", "LRP-0", "IG", "GradCAM"])
def test_input_dtypes(method):
    """Integer inputs are converted exactly (documented); bool and complex ones are refused."""
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    layers = ["5"] if method in ("IG", "GradCAM") else None
    xi = (X * 3).round().to(torch.int64)
    e = lidlib.explain(model, xi, 0, method, layers=layers)
    want = lidlib.explain(model, xi.double(), 0, method, layers=layers)
    assert all(torch.equal(e.relevance[k], want.relevance[k]) for k in want.relevance)
    for bad in (X > 0, X.to(torch.complex128)):
        with pytest.raises(TypeError, match="real numbers"):
            lidlib.explain(model, bad, 0, method, layers=layers)
    with pytest.raises(TypeError, match="real numbers"):
        lidlib.explain(model, X, 0, "LID-IG", baseline=torch.zeros(2, 8, 8, dtype=torch.complex128))


def test_numpy_targets():
    import numpy as np
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    want = lidlib.explain(model, X, torch.tensor([1, 3]), "LID-IG").input
    assert torch.equal(lidlib.explain(model, X, np.array([1, 3]), "LID-IG").input, want)
    assert torch.equal(lidlib.explain(model, X, np.int64(1), "LID-IG").input,
                       lidlib.explain(model, X, 1, "LID-IG").input)
    with pytest.raises(TypeError, match="integer class indices"):
        lidlib.explain(model, X, np.array([1.0, 3.0]), "LID-IG")
    with pytest.raises(TypeError, match="integer class index"):
        lidlib.explain(model, X, np.float64(1), "LID-IG")


class _PoolWithIndices(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(2, 3, 3), nn.MaxPool2d(2, return_indices=True), nn.Linear(27, 4)

    def forward(self, x):
        y, _ = self.pool(self.conv(x))
        return self.fc(y.flatten(1))


def test_maxpool_with_indices_is_refused():
    model = _PoolWithIndices().double().eval()
    with pytest.raises(TypeError, match="return_indices=False"):
        lidlib.explain(model, X, 0, "LID-IG")


@pytest.mark.parametrize("method", ["LID-IG", "LRP-0", "IG", "GradCAM"])
def test_missing_batch_dimension_and_size_mismatch_name_the_layer(method):
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    layers = ["5"] if method in ("IG", "GradCAM") else None
    nobatch = r"layer '0' \(Conv2d\) expects a 4-D input.*x\[None\]" if layers is None else "batch dimension"
    with pytest.raises(ValueError, match=nobatch):
        lidlib.explain(model, X[0], 0, method, layers=layers)
    with pytest.raises(ValueError, match=r"layer '7' \(Linear\) expects 6 input features but receives 24"):
        lidlib.explain(model, torch.randn(3, 2, 12, 12, dtype=torch.float64), 0, method, layers=layers)
    with pytest.raises(ValueError, match="expects 2 input channels but receives 3"):
        lidlib.explain(model, torch.randn(3, 3, 8, 8, dtype=torch.float64), 0, method, layers=layers)
    if method == "GradCAM":
        return                                    # a CAM needs a feature map: no MLP
    given = r".*x has shape \(3, 5\)" if layers is None else ""
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) expects 4 input features but receives 5" + given):
        lidlib.explain(toy.mlp(seed=0), torch.randn(3, 5, dtype=torch.float64), 0, method, layers=layers and ["1"])


def test_baseline_shape_error_names_the_input_shape():
    with pytest.raises(ValueError, match=r"baseline of shape \(3,\) cannot be broadcast to the input shape \(3, 4\)"):
        lidlib.explain(MODEL, torch.randn(3, 4, dtype=torch.float64), 0, "LID-IG", baseline=torch.zeros(3))


class _DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.flat, self.fc = nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(108, 3)

    def forward(self, x):
        return {"logits": self.fc(self.flat(self.conv(x)))}


@pytest.mark.parametrize("method", ["LID-IG", "LRP-0", "IG", "GradCAM", "LayerCAM", "ScoreCAM"])
def test_non_module_and_dict_returning_models(method):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        lidlib.explain(lambda x: x, X, 0, method, layers=["conv"])
    from lidlib import comparison as baselines
    for fn in (baselines.gradcam, baselines.layercam, baselines.scorecam):
        with pytest.raises(TypeError, match="torch.nn.Module"):
            fn(lambda x: x, X, 0, "conv")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        baselines.integrated_gradients(lambda x: x, X, 0)
    with pytest.raises(ValueError, match="logits"):
        lidlib.explain(_DictModel().double().eval(), X, 0, method, layers=["conv"])


class _TorchSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.softmax(self.fc(x), 1)


def test_softmax_is_refused_by_every_method_and_named_publicly():
    with pytest.raises(TypeError, match=r"torch\.softmax\(\.\.\.\) in the forward code.*must return logits"):
        lidlib.explain(_TorchSoftmax().double().eval(), XM, 0, "LID-IG")
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    with_softmax = nn.Sequential(*model, nn.Softmax(dim=1)).eval()
    for method in ("LID-IG", "IG", "GradCAM", "LayerCAM", "ScoreCAM"):
        with pytest.raises(TypeError, match="must return logits"):
            lidlib.explain(with_softmax, X, 0, method, layers=["5"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["SIG-LID-IG", "LRP-0", "IG", "GradCAM"])
def test_half_precision_is_refused(method, dtype):
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1, dtype=dtype)
    with pytest.raises(TypeError, match=r"float32 and float64.*\.float\(\)"):
        lidlib.explain(model, X, 0, method, layers=["5"] if method in ("IG", "GradCAM") else None)
    with pytest.raises(TypeError, match="float32 and float64"):
        lidlib.Explainer(model)(X, 0)


@pytest.mark.parametrize("method", ["LID-IG", "DeepLIFT", "SIG-LID-IG", "IG"])
def test_conservation_when_the_total_is_zero(method):
    """x equal to the reference: ΔZ_c = 0 and every relevance is 0; the gaps are 0, not 1e29."""
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    e = lidlib.explain(model, X, 0, method, baseline=X, layers=["5"] if method == "IG" else None)
    assert float(e.total.abs().max()) == 0.0
    assert e.conservation().max_rel_gap() == 0.0


def test_n_steps_is_ignored_by_methods_that_sample_no_path():
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    for method in ("LRP-0", "DeepLIFT", "LID-Taylor", "ST-LID-Taylor", "GradCAM"):
        layers = ["5"] if method == "GradCAM" else None
        e = lidlib.explain(model, X, 0, method, n_steps=0, layers=layers)
        want = lidlib.explain(model, X, 0, method, layers=layers)
        assert all(torch.equal(e.relevance[k], want.relevance[k]) for k in want.relevance)
    for method in ("LID-IG", "SIG-LID-Taylor", "SIG-LRP-0", "IG"):
        with pytest.raises(ValueError, match="n_steps"):
            lidlib.explain(model, X, 0, method, n_steps=0, layers=["5"] if method == "IG" else None)


class _Branching(nn.Module):
    """A forward that takes a layer on every second call only, as an input-dependent branch would take
    it for the input and not for the baseline (the reference pass runs first)."""

    def __init__(self):
        super().__init__()
        self.first, self.extra, self.last = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.first(x)
        if self.calls % 2 == 0:
            h = self.extra(h)
        return self.last(h)


@pytest.mark.parametrize("through", ["explain", "Explainer"])
def test_a_layer_run_on_the_input_but_not_on_the_reference_is_named(through):
    model = _Branching().double().eval()
    before = _state(model)
    x = torch.ones(1, 4, dtype=torch.float64)
    run = (lidlib.Explainer(model, "LID-IG", baseline=0.0) if through == "Explainer"
           else lambda x, t: lidlib.explain(model, x, t, "LID-IG", baseline=0.0))
    with pytest.raises(ValueError, match="layer 'extra' ran on X but not on the reference"):
        run(x, 0)
    _assert_same(before, _state(model))
