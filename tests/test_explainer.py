"""lidlib.Explainer equals lidlib.explain bit for bit, reuses the reference pass, and notices every
change that invalidates it."""
import pytest
import torch
from test_reliability import _assert_same, _state
from torch import nn

import lidlib
from lidlib import toy
from lidlib.methods import METHODS, Method

CAMS = ("GradCAM", "LayerCAM", "ScoreCAM", "IG")
G = torch.Generator().manual_seed(11)
X = torch.randn(3, 2, 8, 8, generator=G, dtype=torch.float64)
T = torch.tensor([0, 3, 1])


def _model():
    model = toy.residual_cnn(in_channels=2, size=8, classes=4, seed=2)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    return model


def _same(a, b):
    assert list(a.relevance) == list(b.relevance)
    for k in a.relevance:
        assert torch.equal(a.relevance[k], b.relevance[k]), k
    for name in ("logits", "reference_logits", "top", "total", "target"):
        u, v = getattr(a, name), getattr(b, name)
        assert (u is None and v is None) or torch.equal(u, v) or torch.isnan(u).all() and torch.isnan(v).all(), name


BASELINES = {
    "zeros": None,
    "number": 0.25,
    "one tensor": torch.randn(1, 2, 8, 8, generator=G, dtype=torch.float64),
    "per sample": torch.randn(3, 2, 8, 8, generator=G, dtype=torch.float64),
    "broadcast": torch.randn(8, 8, generator=G, dtype=torch.float64),
}


@pytest.mark.parametrize("base", list(BASELINES))
@pytest.mark.parametrize("method", list(METHODS))
def test_explainer_equals_explain_bit_for_bit(method, base):
    model = _model()
    layers = ["0", "3"] if method in CAMS else None
    kw = dict(baseline=BASELINES[base], n_steps=3, layers=layers)
    explainer = lidlib.Explainer(model, method, **kw)
    before = _state(model)
    for _ in range(3):
        _same(explainer(X, T), lidlib.explain(model, X, T, method, **kw))
        _assert_same(before, _state(model))             # also between calls: no hooks left
    increment = isinstance(METHODS[method], Method) and METHODS[method].increment
    assert explainer.reference_passes == (1 if increment else 0)


@pytest.mark.parametrize("n_steps", [10, None])
def test_explainer_serves_batches_of_any_size_with_one_reference(n_steps):
    model = _model()
    explainer = lidlib.Explainer(model, "SIG-LID-IG", n_steps=n_steps)
    for b in (1, 3, 2):
        _same(explainer(X[:b], T[:b]), lidlib.explain(model, X[:b], T[:b], "SIG-LID-IG", n_steps=n_steps))
    assert explainer.reference_passes == 1
    explainer.layers = ["2"]                               # n_steps and layers keep the reference
    explainer.n_steps = 4
    _same(explainer(X, T), lidlib.explain(model, X, T, "SIG-LID-IG", n_steps=4, layers=["2"]))
    assert explainer.reference_passes == 1


@pytest.mark.parametrize("n_steps", [3, None])
def test_the_reference_keeps_only_what_the_kept_layers_and_the_rules_read(n_steps):
    """layers=[]: the cached reference holds no layer outputs under the IG rule — the ReLUs read their
    X̂, the 2×2 max-pool its window image, the overlapping one its X̂; a layer outside those it
    recorded computes it again, a subset reuses it, and a change of the method's rule computes it again."""
    model = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    explainer = lidlib.Explainer(model, "SIG-LID-IG", n_steps=n_steps, layers=[])
    _same(explainer(X, T), lidlib.explain(model, X, T, "SIG-LID-IG", n_steps=n_steps, layers=[]))
    ref = explainer._reference.pass_
    assert not ref.outputs and list(ref.pooled) == ["2"] and sorted(ref.inputs) == ["1", "4", "5", "8"]
    for layers, passes in ((["3"], 2), (["3"], 2), (None, 3), (["3", "0"], 3), ([], 3)):
        explainer.layers = layers
        _same(explainer(X, T), lidlib.explain(model, X, T, "SIG-LID-IG", n_steps=n_steps, layers=layers))
        assert explainer.reference_passes == passes, layers
    for method, passes in (("LID-IG", 3), ("LID-Taylor", 4), ("SIG-LID-IG", 5)):
        explainer.method = method
        _same(explainer(X, T), lidlib.explain(model, X, T, method, n_steps=n_steps, layers=[]))
        assert explainer.reference_passes == passes, method


@pytest.mark.parametrize("n_steps", [3, None])
@pytest.mark.parametrize("base", ["number", "one tensor", "per sample"])
def test_a_piecewise_linear_layers_reference_output_is_recomputed_not_held(base, n_steps, monkeypatch):
    """Every layer kept: the reference holds no Ŷ of the ReLU, LeakyReLU, Hardtanh and ReLU6 layers (their
    rule reads X̂, and the actual pass recomputes Ŷ = σ(X̂) from it: rules.derived_reference), and the
    relevance of every layer is the same, bit for bit, as with every Ŷ held — through explain (batch 3 with
    a batch-1 reference, or one per sample) and through an Explainer, whose cache is that much smaller."""
    from lidlib import engine
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 3, padding=1),
                          nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Hardtanh(-0.5, 0.7), nn.Flatten(),
                          nn.Linear(48, 6), nn.ReLU6(), nn.Linear(6, 4)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    kw = dict(baseline=BASELINES[base], n_steps=n_steps)
    explainer = lidlib.Explainer(model, "SIG-LID-IG", **kw)
    derived = [explainer(X, T), lidlib.explain(model, X, T, "SIG-LID-IG", **kw)]
    ref = explainer._reference.pass_
    assert ref.derived == {"1", "3", "5", "8"} and not ref.derived & set(ref.outputs)
    assert "4" in ref.pooled and {"0", "2", "7"} <= set(ref.outputs)
    cache = lambda p: sum(t.numel() for t in p.outputs.values())
    monkeypatch.setattr(engine, "derived_reference", lambda rule, module: False)
    held = lidlib.Explainer(model, "SIG-LID-IG", **kw)
    for a, b in zip(derived, [held(X, T), lidlib.explain(model, X, T, "SIG-LID-IG", **kw)]):
        _same(a, b)
    assert not held._reference.pass_.derived and cache(held._reference.pass_) > cache(ref)


@pytest.mark.parametrize("method", ["SIG-LID-IG", "LID-Taylor", "LID-IG"])
def test_kept_containers_and_leaves_give_the_relevance_of_every_layer(method):
    """A kept container whose output is its last child's (an alias), a kept leaf inside it, and a
    subset of the layers each equal the relevance computed with every layer kept — through explain
    (whose reference gives its tensors up as they are read) and through an Explainer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
                          nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 4)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    full = lidlib.explain(model, X, T, method, n_steps=3, baseline=0.2)
    for layers in (["0"], ["1"], ["1", "1.0"], ["0.1", "1", "4"], ["1.2", "0"]):
        for e in (lidlib.explain(model, X, T, method, n_steps=3, baseline=0.2, layers=layers),
                  lidlib.Explainer(model, method, n_steps=3, baseline=0.2, layers=layers)(X, T)):
            for name in layers:
                assert torch.equal(e.layer(name), full.layer(name)), (layers, name)
            torch.testing.assert_close(e.input, full.input, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["batch 1", "per-sample reference", "batch 3, one reference", "Explainer"])
def test_what_the_backward_pass_finds_held_of_a_kept_layer(case):
    """Where a reference used once has Ŷ^l the size of Y^l (batch 1, or one reference per sample), the
    recorder holds only ΔY^l = Y^l − Ŷ^l, taken in the forward pass: when the backward pass starts, a
    conv's output (which no rule saves: the ReLU after it keeps byte counts) and its reference output
    are gone.  A batch-1 reference for a batch of 3, and an Explainer's cache, keep (Y^l, Ŷ^l): a ΔY^l
    would be a batch-sized tensor more where autograd often holds Y^l anyway.  The relevance is the same."""
    import weakref
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(192, 4)).double().eval()
    x, t = (X[:1], T[:1]) if case == "batch 1" else (X, T)
    base = torch.randn_like(X) if case == "per-sample reference" else 0.2
    seen, alive = [], []

    def remember(module, args, out):         # (the user's hook runs before lidlib's: the plain output)
        seen.append(weakref.ref(out.untyped_storage()))   # (alive while any tensor uses the memory)

    def look(g):                             # the first step of the backward pass
        alive.extend(r() is not None for r in seen)

    def at_backward(module, args, out):
        if out.requires_grad:
            out.register_hook(look)

    explainer = lidlib.Explainer(model, "SIG-LID-IG", n_steps=3, baseline=base)
    handles = [model[0].register_forward_hook(remember), model[3].register_forward_hook(at_backward)]
    try:
        if case == "Explainer":
            explainer(x, t)
            seen.clear(), alive.clear()      # (the second call runs no reference pass)
        e = explainer(x, t) if case == "Explainer" else lidlib.explain(model, x, t, "SIG-LID-IG", n_steps=3,
                                                                      baseline=base)
    finally:
        for h in handles:
            h.remove()
    held = {"batch 1": [False, False], "per-sample reference": [False, False],          # (Ŷ, Y)
            "batch 3, one reference": [True, True], "Explainer": [True]}[case]         # (Ŷ, Y) / (Y)
    assert alive == held
    _same(e, lidlib.explain(model, x, t, "SIG-LID-IG", n_steps=3, baseline=base))

def _check_invalidated(model, explainer, change, **kw):
    explainer(X, T)
    n = explainer.reference_passes
    change()
    e = explainer(X, T)
    assert explainer.reference_passes == n + 1
    _same(e, lidlib.explain(model, X, T, explainer.method, baseline=explainer.baseline, **kw))
    explainer(X, T)
    assert explainer.reference_passes == n + 1             # and reused again afterwards


def test_a_parameter_changed_in_place_invalidates():
    model = _model()
    explainer = lidlib.Explainer(model, "LID-IG", baseline=BASELINES["one tensor"])

    def change():
        with torch.no_grad():
            model[0].bias.add_(1)
    _check_invalidated(model, explainer, change)


def test_a_buffer_changed_invalidates():
    model = _model()
    explainer = lidlib.Explainer(model, "SIG-LID-IG", baseline=0.1)
    _check_invalidated(model, explainer, lambda: model[2].bn.running_mean.add_(0.5))


def test_a_replaced_parameter_and_a_replaced_module_invalidate():
    model = _model()
    explainer = lidlib.Explainer(model, "DeepLIFT", baseline=0.1)

    def new_param():
        model[6].weight = nn.Parameter(model[6].weight.detach() * 2)
    _check_invalidated(model, explainer, new_param)

    def new_module():
        model[1] = nn.LeakyReLU(0.2).eval()
    _check_invalidated(model, explainer, new_module)

    def load():
        state = {k: v + 0.01 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
    _check_invalidated(model, explainer, load)


def test_mode_changes():
    """train() is refused as by explain(); after a training forward (batch-norm statistics move)
    and eval(), the reference is recomputed; a bare train()/eval() round trip changes nothing the
    reference depends on, and the reused reference still gives explain()'s result."""
    model = _model()
    explainer = lidlib.Explainer(model, "LID-Taylor", baseline=0.1)
    explainer(X, T)
    model.train()
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        explainer(X, T)
    model.eval()
    _same(explainer(X, T), lidlib.explain(model, X, T, "LID-Taylor", baseline=0.1))
    assert explainer.reference_passes == 1

    def trained_forward():
        model.train()
        with torch.no_grad():
            model(X)
        model.eval()
    _check_invalidated(model, explainer, trained_forward)

    def one_module():
        model[2].bn.train()
        model[2].bn.eval()
        model[2].bn.momentum = 0.1
        model[2].bn.running_var.mul_(1.5)
    _check_invalidated(model, explainer, one_module)


def test_a_new_baseline_tensor_invalidates():
    model = _model()
    explainer = lidlib.Explainer(model, "SIG-LID-IG", baseline=BASELINES["one tensor"].clone())

    def same_values_new_tensor():
        explainer.baseline = explainer.baseline.clone()
    _check_invalidated(model, explainer, same_values_new_tensor)

    def new_values():
        explainer.baseline = BASELINES["broadcast"]
    _check_invalidated(model, explainer, new_values)

    def a_number():
        explainer.baseline = -0.5
    _check_invalidated(model, explainer, a_number)


def test_the_same_baseline_modified_in_place_invalidates():
    model = _model()
    base = BASELINES["per sample"].clone()
    explainer = lidlib.Explainer(model, "LID-IG", baseline=base)
    _check_invalidated(model, explainer, lambda: base.mul_(-1))


def test_a_hook_added_by_the_user_invalidates():
    model = _model()
    explainer = lidlib.Explainer(model, "SIG-LID-IG")
    handles = []
    _check_invalidated(model, explainer,
                       lambda: handles.append(model[3].register_forward_hook(lambda m, a, o: o * 2)))
    handles[0].remove()


def test_a_different_input_size_and_dtype_get_their_own_reference():
    model = toy.cnn(in_channels=2, size=12, classes=4, seed=3)
    explainer = lidlib.Explainer(model, "SIG-LID-IG")
    x = torch.randn(2, 2, 12, 12, generator=G, dtype=torch.float64)
    explainer(x, 1)
    _same(explainer(x.float(), 1), lidlib.explain(model, x.float(), 1))      # cast to the model's dtype
    assert explainer.reference_passes == 1
    model.float()
    _same(explainer(x, 1), lidlib.explain(model, x, 1))
    assert explainer.reference_passes == 2


def test_reset_and_repr():
    explainer = lidlib.Explainer(_model(), "LID-IG")
    explainer(X, T)
    assert "cached=True" in repr(explainer)
    explainer.reset()
    assert "cached=False" in repr(explainer)
    explainer(X, T)
    assert explainer.reference_passes == 2


def test_captum_spelling():
    model = _model()
    explainer = lidlib.Explainer(model, "SIG-LID-IG", baseline=0.1)
    r = explainer.attribute(X, target=T)
    assert torch.equal(r, lidlib.explain(model, X, T, baseline=0.1).input)
    b = BASELINES["per sample"]
    assert torch.equal(explainer.attribute(X, target=T, baselines=b), lidlib.explain(model, X, T, baseline=b).input)
    assert explainer.baseline == 0.1
    with pytest.raises(TypeError, match="target"):
        explainer.attribute(X)


def test_explainer_inputs_are_checked_like_explain():
    model = _model()
    with pytest.raises(ValueError, match="valid methods"):
        lidlib.Explainer(model, "LID-Tailor")
    with pytest.raises(TypeError, match="nn.Module"):
        lidlib.Explainer(lambda x: x, "LID-IG")
    explainer = lidlib.Explainer(model, "LID-IG")
    with pytest.raises(ValueError, match="out of range"):
        explainer(X, 7)
    with pytest.raises(ValueError, match="broadcast"):
        explainer.attribute(X, target=0, baselines=torch.zeros(5))
