"""Fuzz test: a seeded generator of malformed (and some well-formed) calls of lidlib.explain and
lidlib.Explainer.  Every call either returns finite relevances that pass the library's own checks,
or raises ValueError/TypeError with a message — never another exception type, never NaN — and the
model is left unchanged either way."""
import random

import numpy as np
import pytest
import torch
from test_reliability import _assert_same, _state
from torch import nn

import lidlib
from lidlib import rules, toy
from lidlib.comparison import Comparison as Baseline
from lidlib.methods import METHODS, Method

N_CALLS = 500


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _Dict(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"z": self.fc(x)}


def _models():
    """name -> (model, input shape without batch, classes, layer names)."""
    cnn = toy.cnn(in_channels=2, size=8, classes=4, seed=1)
    for m in cnn:
        if isinstance(m, nn.ReLU):
            m.inplace = True
    out = {
        "mlp": (toy.mlp(seed=0), (4,), 3, ["0", "1", "2"]),
        "cnn": (cnn, (2, 8, 8), 4, ["0", "2", "5"]),
        "cnn32": (toy.cnn(in_channels=2, size=8, classes=4, seed=2, dtype=torch.float32), (2, 8, 8), 4, ["2", "5"]),
        "residual": (toy.residual_cnn(in_channels=2, size=8, classes=4, seed=3), (2, 8, 8), 4, ["0", "3"]),
        "training": (toy.mlp(seed=1).train(), (4,), 3, ["0"]),
        "half": (toy.mlp(seed=1, dtype=torch.float16), (4,), 3, ["0"]),
        "softmax": (nn.Sequential(toy.mlp(seed=1), nn.Softmax(dim=1)).eval(), (4,), 3, ["0"]),
        "sigmoid": (nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)).double().eval(), (4,), 2, ["0"]),
        "functional": (_Functional().double().eval(), (4,), 3, ["fc1"]),
        "dict": (_Dict().double().eval(), (4,), 3, ["fc"]),
    }
    return out


def _x(rng, shape):
    b = rng.choice([1, 2, 3])
    kind = "ok" if rng.random() < 0.8 else rng.choice(["nobatch", "channels", "size", "empty", "int", "bool", "complex", "half",
                                     "f32", "nan", "inf", "list", "numpy", "scalar", "5d"])
    g = torch.Generator().manual_seed(rng.randrange(10 ** 6))
    x = torch.randn((b,) + shape, generator=g, dtype=torch.float64)
    if kind == "nobatch":
        return x[0]
    if kind == "channels":
        return torch.randn((b, shape[0] + 1) + shape[1:], generator=g, dtype=torch.float64)
    if kind == "size":
        return torch.randn((b,) + shape[:-1] + (shape[-1] + 3,), generator=g, dtype=torch.float64)
    if kind == "empty":
        return x[:0]
    if kind == "int":
        return (x * 3).round().long()
    if kind == "bool":
        return x > 0
    if kind == "complex":
        return x.to(torch.complex128)
    if kind == "half":
        return x.half()
    if kind == "f32":
        return x.float()
    if kind == "nan":
        return x.index_fill(0, torch.tensor([0]), float("nan"))
    if kind == "inf":
        return x.index_fill(0, torch.tensor([0]), float("inf"))
    if kind == "list":
        return x.tolist()
    if kind == "numpy":
        return x.numpy()
    if kind == "scalar":
        return torch.tensor(1.0)
    if kind == "5d":
        return x[None]
    return x


def _target(rng, classes):
    if rng.random() < 0.8:
        return rng.randrange(classes)
    return rng.choice([0, classes - 1, classes, -1, 1.5, True, None, "1", [0], [0, 1, 2], (1,),
                       torch.tensor(1), torch.tensor([0, 1]), torch.tensor([[0]]), torch.tensor([0.0]),
                       np.int64(1), np.array([1]), np.array([0, 1, 1]), np.float64(1.0), torch.tensor(True)])


def _baseline(rng, shape):
    g = torch.Generator().manual_seed(rng.randrange(10 ** 6))
    if rng.random() < 0.8:
        return rng.choice([None, 0.5, torch.randn((1,) + shape, generator=g, dtype=torch.float64)])
    return rng.choice([None, None, 0.5, -1, float("nan"), True, "zeros", [0.0],
                       torch.randn(shape, generator=g, dtype=torch.float64),
                       torch.randn((1,) + shape, generator=g, dtype=torch.float64),
                       torch.randn((3,) + shape, generator=g, dtype=torch.float64),
                       torch.zeros(7), torch.zeros(shape, dtype=torch.complex128),
                       torch.full(shape, float("inf"), dtype=torch.float64)])


def _layers(rng, names):
    if rng.random() < 0.8:
        return rng.choice([None, names])
    return rng.choice([None, None, [], names[:1], names, names[0], ["bogus"], [5], 5, [names[0], names[0]]])


def _method(rng):
    if rng.random() < 0.85:
        return rng.choice(list(METHODS))
    return rng.choice(list(METHODS) * 3 + ["LID-Tailor", "", None, 3, Baseline("EigenCAM", False),
                                           Method("mine", "SIG", rules.IG, increment="no"),
                                           Method("SIG-LRP-IG", "SIG", rules.IG, increment=False)])


def _steps(rng):
    if rng.random() < 0.8:
        return rng.choice([3, None])
    return rng.choice([10, 3, 1, None, None, 0, -2, 2.5, "3", True])


def _check_result(e, model, method):
    assert isinstance(e, lidlib.Explanation)
    assert e.relevance, "no relevance returned"
    for k, r in e.relevance.items():
        assert isinstance(r, torch.Tensor) and torch.isfinite(r).all(), k
    if e.top is not None:                               # a decomposition: the library's own check
        table = e.conservation()
        gaps = torch.stack([row.rel_gap for row in table])
        assert torch.isfinite(gaps).all()
        exact = isinstance(method, Method) and method.increment and method.rule == rules.IG and e.n_steps is None
        if exact or (isinstance(method, Method) and method.name == "DeepLIFT" and len(model) == 5):
            tol = 1e-8 if e.input.dtype == torch.float64 else 1e-3
            assert float(table[0].rel_gap.max()) < tol     # exact path: the input conserves


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzz(seed):
    rng = random.Random(seed)
    models = _models()
    names = list(models)
    outcomes = {"ok": 0, "ValueError": 0, "TypeError": 0}
    for i in range(N_CALLS // 2):
        name = rng.choice(names[:4]) if rng.random() < 0.8 else rng.choice(names[4:])
        model, shape, classes, layers = models[name]
        method = _method(rng)
        kw = dict(baseline=_baseline(rng, shape), n_steps=_steps(rng), layers=_layers(rng, layers))
        x, target = _x(rng, shape), _target(rng, classes)
        before = _state(model) if isinstance(model, nn.Module) else None
        use_explainer = rng.random() < 0.3
        short = {k: (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        call = (f"call {i}: model={name} method={method!r} x={getattr(x, 'shape', type(x))} "
                f"{getattr(x, 'dtype', '')} target={target!r} {short} explainer={use_explainer}")
        try:
            if use_explainer:
                e = lidlib.Explainer(model, method, **kw)(x, target)
            else:
                e = lidlib.explain(model, x, target, method, **kw)
        except (ValueError, TypeError) as err:
            assert str(err).strip(), f"{call}: empty message"
            outcomes[type(err).__name__ if type(err) in (ValueError, TypeError) else
                     ("ValueError" if isinstance(err, ValueError) else "TypeError")] += 1
        except Exception as err:                      # noqa: BLE001
            pytest.fail(f"{call}: {type(err).__name__}: {err}")
        else:
            _check_result(e, model, lidlib.methods.get_method(method))
            outcomes["ok"] += 1
        if before is not None:
            _assert_same(before, _state(model))
    assert min(outcomes.values()) > 10, outcomes       # the generator reaches every outcome
