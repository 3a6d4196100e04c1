"""The fast path against the slow reference, at every layer, for every method of the panorama."""
import pytest
import torch

import lidlib
from lidlib import toy
from lidlib.methods import METHODS, Method

PANORAMA = [name for name, m in METHODS.items() if isinstance(m, Method)]

import reference

MODELS = {
    "mlp-relu": lambda: toy.mlp((5, 7, 6, 4), "relu", seed=1),
    "mlp-leaky": lambda: toy.mlp((5, 7, 6, 4), "leaky_relu", seed=2),
    "mlp-relu6": lambda: toy.mlp((5, 7, 6, 4), "relu6", seed=3, bias_std=2.0),
    "cnn": lambda: toy.cnn(in_channels=2, size=8, classes=4, seed=4),
}


def _data(name, model):
    g = torch.Generator().manual_seed(10)
    shape = (2, 5) if name.startswith("mlp") else (2, 2, 8, 8)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0
    if name == "mlp-relu6":
        x = x * 4          # reach both kinks of ReLU6
    baseline = torch.randn(shape[1:], generator=g, dtype=torch.float64) * 0.5   # non-zero reference
    target = torch.tensor([1, 3])
    return x, baseline, target


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method", PANORAMA)
@pytest.mark.parametrize("n_steps", [3, None])
def test_fast_path_matches_reference_at_every_layer(model_name, method, n_steps):
    model = MODELS[model_name]()
    x, baseline, target = _data(model_name, model)
    e = lidlib.explain(model, x, target, method, baseline=baseline, n_steps=n_steps)
    m = METHODS[method]
    for b in range(x.shape[0]):
        ref = reference.relevances(model, m, x[b], int(target[b]), baseline, n_steps)
        assert set(ref) == set(e.relevance)
        for layer, r in ref.items():
            fast = e.relevance[layer][b]
            scale = r.abs().max().clamp_min(1e-12)
            assert torch.allclose(fast, r, rtol=1e-7, atol=1e-7 * float(scale)), (layer, (fast - r).abs().max())


@pytest.mark.parametrize("model_name", [k for k in MODELS if k.startswith("mlp")])
@pytest.mark.parametrize("method", PANORAMA)
def test_explicit_form_matches_fast_path(model_name, method):
    from lidlib import explicit
    model = MODELS[model_name]()
    x, baseline, target = _data(model_name, model)
    e = lidlib.explain(model, x[:1], int(target[0]), method, baseline=baseline[None], n_steps=4)
    steps = explicit.decompose(model, x[0], int(target[0]), method, baseline=baseline, n_steps=4)
    keys = list(e.relevance)               # input, 0, 1, ..., L-1
    for step, key in zip(steps, reversed(keys[:-1])):
        assert torch.allclose(step.R_in, e.relevance[key][0], rtol=1e-7, atol=1e-9), (method, key)
        assert torch.allclose(step.R_out, e.relevance[str(step.name)][0], rtol=1e-7, atol=1e-9)


def test_reference_is_sensitive_to_the_rule():
    """The comparison above can fail: LID-Taylor and LID-IG differ on a model with biases."""
    model = MODELS["cnn"]()
    x, baseline, target = _data("cnn", model)
    a = lidlib.explain(model, x, target, "LID-Taylor", baseline=baseline).relevance["input"]
    b = lidlib.explain(model, x, target, "LID-IG", baseline=baseline).relevance["input"]
    c = lidlib.explain(model, x, target, "DeepLIFT", baseline=baseline).relevance["input"]
    assert (a - b).abs().max() > 1e-3 and (b - c).abs().max() > 1e-3


@pytest.mark.parametrize("eps", [1e-3, 0.3])
def test_epsilon_rule_explicit_and_fast_agree(eps):
    from lidlib import explicit, rules
    model = MODELS["mlp-relu"]()
    x, _, target = _data("mlp-relu", model)
    method = lidlib.Method("LRP-ε", "logit", rules.epsilon(eps), increment=False)
    e = lidlib.explain(model, x[:1], int(target[0]), method)
    steps = explicit.decompose(model, x[0], int(target[0]), method)
    assert torch.allclose(steps[-1].R_in, e.relevance["input"][0], rtol=1e-9, atol=1e-12)
    plain = lidlib.explain(model, x[:1], int(target[0]), "LRP-0").relevance["input"]
    assert not torch.allclose(plain, e.relevance["input"], rtol=1e-6)     # ε changes the result
