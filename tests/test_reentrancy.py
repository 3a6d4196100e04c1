"""An explanation started inside another explanation's forward pass: on the same model it raises a
clear RuntimeError (never a silently wrong result); on a different model it works and is correct."""
import pytest
import torch
from test_reliability import _assert_same, _inplace_cnn, _state

import lidlib
from lidlib import comparison as baselines
from lidlib import toy

X = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
T = torch.tensor([1, 2])
METHODS = ["LRP-0", "SIG-LID-IG", "DeepLIFT", "IG", "GradCAM", "ScoreCAM"]
LAYERS = {"IG": ["2"], "GradCAM": ["2", "5"], "ScoreCAM": ["5"]}


def _explain(model, method, x=X):
    if method == "Explainer":
        return lidlib.Explainer(model, "SIG-LID-IG")(x, T)
    return lidlib.explain(model, x, T, method, layers=LAYERS.get(method), n_steps=3)


def _same(a, b):
    assert list(a.relevance) == list(b.relevance)
    assert all(torch.equal(a.relevance[k], b.relevance[k]) for k in a.relevance)


def _nested(outer_model, inner_model, outer, inner, where="3", pre=False):
    """Run ``outer`` on ``outer_model`` while a hook of the user's on module ``where`` of it runs
    ``inner`` on ``inner_model`` (the hook catches what the inner call raises; it does not nest
    itself: calls made while it runs pass through)."""
    seen, running = [], []

    def hook(*args):
        if running:
            return
        running.append(True)
        try:
            seen.append(_explain(inner_model, inner, X.flip(0)))
        except RuntimeError as e:
            seen.append(e)
        finally:
            running.clear()
    module = outer_model.get_submodule(where)
    h = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    try:
        result = _explain(outer_model, outer)
    finally:
        h.remove()
    return result, seen


@pytest.mark.parametrize("inner", METHODS + ["Explainer"])
@pytest.mark.parametrize("outer", METHODS + ["Explainer"])
def test_nested_explanation_of_the_same_model_is_refused_or_correct(outer, inner):
    model = _inplace_cnn()
    before = _state(model)
    want_outer = _explain(model, outer)
    want_inner = _explain(model, inner, X.flip(0))
    got, seen = _nested(model, model, outer, inner)
    assert seen, "the hook did not run"
    _same(got, want_outer)                      # the outer explanation is not disturbed
    for s in seen:
        if isinstance(s, RuntimeError):
            assert "already being explained" in str(s) and "copy.deepcopy" in str(s)
        else:                                   # allowed only where it is exactly right
            _same(s, want_inner)
    assert any(isinstance(s, RuntimeError) for s in seen)   # at least the hooked pass refuses it
    _assert_same(before, _state(model))
    _same(_explain(model, outer), want_outer)  # and the model works normally afterwards


@pytest.mark.parametrize("pre", [False, True])
def test_uncaught_nested_error_propagates_and_leaves_the_model_unchanged(pre):
    model = _inplace_cnn()
    before = _state(model)

    def hook(*args):
        if not hook.running:
            hook.running = True
            try:
                lidlib.explain(model, X, T, "LRP-0")
            finally:
                hook.running = False
    hook.running = False
    root = model.register_forward_pre_hook(hook) if pre else model[4].register_forward_hook(hook)
    with pytest.raises(RuntimeError, match="already being explained"):
        lidlib.explain(model, X, T, "SIG-LID-IG")
    root.remove()
    _assert_same(before, _state(model))
    lidlib.explain(model, X, T, "SIG-LID-IG")


@pytest.mark.parametrize("outer,inner", [("LRP-0", "SIG-LID-IG"), ("SIG-LID-IG", "LRP-0"),
                                         ("GradCAM", "Explainer"), ("Explainer", "IG")])
def test_nested_explanation_of_another_model_works_both_ways(outer, inner):
    a, b = _inplace_cnn(), toy.cnn(in_channels=2, size=8, classes=4, seed=9)
    for first, second in ((a, b), (b, a)):       # both orders: a inside b, b inside a
        want_outer, want_inner = _explain(first, outer), _explain(second, inner, X.flip(0))
        got, seen = _nested(first, second, outer, inner)
        _same(got, want_outer)
        assert seen and all(not isinstance(s, Exception) for s in seen)
        for s in seen:
            _same(s, want_inner)


def test_nested_baseline_function_is_refused():
    model = _inplace_cnn()
    errors = []

    def hook(*args):
        if hook.running:
            return
        hook.running = True
        try:
            baselines.gradcam(model, X, T, "2")
        except RuntimeError as e:
            errors.append(e)
        finally:
            hook.running = False
    hook.running = False
    h = model[3].register_forward_hook(hook)
    try:
        lidlib.explain(model, X, T, "LID-IG")
        baselines.integrated_gradients(model, X, T, n_steps=2)
    finally:
        h.remove()
    assert len(errors) >= 2 and all("already being explained" in str(e) for e in errors)
