"""The widgets of chapters 5–8 (lidlib/widgets/riemann.py, conservation.py, contrast.py; lidlib.toy.running_example).

ipywidgets swallows exceptions raised inside callbacks, so a book build says nothing about them:
these tests drive the plain functions the callbacks call, check their numbers against independent
computations, and fire every widget's callback once.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import lidlib  # noqa: E402
from lidlib import comparison as baselines  # noqa: E402
from lidlib import toy  # noqa: E402
from lidlib.widgets import (
    conservation,  # noqa: E402
    contrast,  # noqa: E402
    riemann,  # noqa: E402
)


@pytest.fixture(scope="module")
def example():
    return toy.running_example()


def test_running_example_has_biases_and_a_nonzero_reference(example):
    model, x, x_ref, c = example
    assert all(float(m.bias.detach().abs().min()) > 0 for m in model if isinstance(m, torch.nn.Linear))
    assert float(x_ref.abs().min()) > 0 and x.dtype == torch.float64


def test_forward_with_gradients_matches_autograd(example):
    model, x, _, c = example
    ys, grads = toy.forward_with_gradients(model, x, c)
    assert torch.equal(ys[0], x) and len(ys) == len(model) + 1
    xg = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(model(xg)[0, c], xg)
    assert torch.allclose(grads[0], g, atol=1e-14)
    ys2, none = toy.forward_with_gradients(model, x, None)
    assert none is None and torch.allclose(ys2[-1], model(x).detach())


@pytest.mark.parametrize("n", [1, 7, 64])
def test_ig_riemann_matches_lidlib(example, n):
    model, x, x_ref, c = example
    ours = riemann.ig_riemann(model, x, x_ref, c, n)
    assert torch.allclose(ours, baselines.integrated_gradients(model, x, c, x_ref, n_steps=n)[0], atol=1e-12)


def test_riemann_data(example):
    model, x, x_ref, c = example
    d = riemann.riemann_data(model, x, x_ref, c, 10)
    assert len(d["t_k"]) == 10 and d["t_k"][-1] == 1.0
    ig = baselines.integrated_gradients(model, x, c, x_ref, n_steps=10)
    assert abs(d["riemann"] - float(ig.sum())) < 1e-12
    with torch.no_grad():
        assert abs(d["delta"] - float(model(x)[0, c] - model(x_ref)[0, c])) < 1e-14
    assert riemann.riemann_data(model, x, x_ref, c, 1000)["rel_error"] < d["rel_error"] / 20
    with pytest.raises(ValueError):
        riemann.riemann_data(model, x, x_ref, c, 0)


def test_lid_gap_data(example):
    model, x, x_ref, c = example
    near = conservation.lid_gap_data(model, x, x_ref, c, 0.1)         # no ReLU switches: exact conservation
    assert sum(near["switched"]) == 0
    assert max(abs(s - near["total"]) for s in near["sums"]) < 1e-12
    d = conservation.lid_gap_data(model, x, x_ref, c, 1.0)
    assert sum(d["switched"]) > 0
    assert np.allclose(d["loss"], d["remainder"], atol=1e-12)
    assert abs((d["sums"][0] - d["total"]) + sum(d["loss"])) < 1e-12
    e = lidlib.explain(model, x, c, "LID-Taylor", baseline=x_ref)
    assert abs(d["sums"][0] - float(e.input.sum())) < 1e-14


def test_absorbed_data(example):
    model, x, _, c = example
    d = conservation.absorbed_data(model, x, c, 1.0)
    assert np.allclose(d["absorbed"], d["g_ref"], atol=1e-12)
    assert d["absorbed"][0] == 0.0                           # Ŷ^0 = X̂ = 0
    with torch.no_grad():
        assert abs(d["absorbed"][-1] - float(model(torch.zeros_like(x))[0, c])) < 1e-12   # Ẑ_c
    zero = conservation.absorbed_data(model, x, c, 0.0)
    assert zero["max_ref"] == 0.0 and np.allclose(zero["absorbed"], 0.0, atol=1e-12)
    assert np.allclose(zero["lrp"], zero["lid"], atol=1e-12)


def test_scaled_biases_leaves_the_model_alone(example):
    model, *_ = example
    before = [p.clone() for p in model.parameters()]
    copy = conservation.scaled_biases(model, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(float(m.bias.detach().abs().max()) == 0 for m in copy if isinstance(m, torch.nn.Linear))


def test_st_top_data_sign_rule_and_saturation():
    z_ref, direction, c = contrast.contrast_logits()
    d = contrast.st_top_data(z_ref, direction, c, 1.0)
    p = d["p"]
    assert np.allclose(d["st"][1:], -p[c] * p[1:] * d["dz"][1:], atol=1e-15)
    assert d["st"][1] < 0 < d["st"][2] and d["st"][3] == 0 and (d["sg"][1:] < 0).all()
    small = contrast.st_top_data(z_ref, direction, c, 1e-3)
    smaller = contrast.st_top_data(z_ref, direction, c, 1e-4)
    assert 80 < abs(small["gap"]) / abs(smaller["gap"]) < 120
    big = contrast.st_top_data(z_ref, direction, c, 12.0)
    assert big["st_sum"] < 0.05 * big["delta_p"]


def test_live_widgets_redraw_through_their_callbacks():
    for make in (riemann.ig_widget, conservation.lid_gap_widget, conservation.absorbed_widget, contrast.st_widget):
        box = make()
        control = box.children[0]
        first = bytes(box.image.value)
        assert first.startswith(b"\x89PNG")
        control.value = control.max                            # fires the callback
        second = bytes(box.image.value)
        assert second != first and second.startswith(b"\x89PNG")
    assert not plt.get_fignums()                               # every figure was closed


@pytest.mark.parametrize("figure,arg", [(riemann.riemann_figure, 3), (conservation.lid_gap_figure, 0.5),
                                        (conservation.absorbed_figure, 0.5), (contrast.st_top_figure, 2.0)])
def test_figures(figure, arg):
    fig = figure(arg)
    assert fig.axes
    plt.close(fig)


def test_functions_work_on_another_network():
    model = toy.mlp((3, 5, 2), activation="leaky_relu", seed=4)
    x = torch.ones(1, 3, dtype=torch.float64)
    x_ref = -0.5 * torch.ones(1, 3, dtype=torch.float64)
    d = conservation.lid_gap_data(model, x, x_ref, 1, 1.0)
    assert np.allclose(d["loss"], d["remainder"], atol=1e-12)
    r = riemann.riemann_data(model, x, x_ref, 1, 5)
    assert np.isfinite(r["riemann"])
