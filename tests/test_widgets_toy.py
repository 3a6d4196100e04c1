"""lidlib.widgets.messages and .contrast: the plain functions behind the toy-chapter widgets (Part I of the book).

Exceptions inside ipywidgets callbacks do not fail a book build, so every callback's work is a plain
function tested here: the data against lidlib.explain / lidlib.explicit / autograd, the figures for
their structure, and the widgets by moving their controls (outside a kernel the callbacks run
synchronously and raise).
"""
import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import lidlib  # noqa: E402
from lidlib import explicit, rules, toy  # noqa: E402
from lidlib.widgets import (
    contrast,  # noqa: E402
    gallery,  # noqa: E402
    messages,  # noqa: E402
)
from lidlib.widgets.gallery import PNG_SIGNATURE  # noqa: E402

X = torch.tensor([[0.7, 2.3, -0.5, -0.8]], dtype=torch.float64)
X_REF = torch.full_like(X, 0.5)


@pytest.fixture
def model():
    return toy.mlp((4, 6, 5, 3), seed=5)


def test_message_data_matches_explicit_and_explain(model):
    for method in ("LRP-0", "DeepLIFT", "LID-Taylor", "LID-IG"):
        e = lidlib.explain(model, X, 1, method, baseline=X_REF, n_steps=None)
        steps = explicit.decompose(model, X[0], 1, method, X_REF[0], None)
        for k in range(len(model)):
            st = messages.message_data(model, X, 1, method, k, baseline=X_REF)     # (1, D) input accepted
            ref = next(s for s in steps if s.name == str(k))
            assert torch.equal(st.messages, ref.messages)
            assert torch.allclose(st.R_out, e.relevance[str(k)][0], atol=1e-12)
            assert torch.allclose(st.messages.sum(0), st.R_in, atol=1e-12)


def test_message_data_rejects_bad_layer_and_batch(model):
    with pytest.raises(ValueError, match="module index"):
        messages.message_data(model, X, 1, "LRP-0", 7)
    with pytest.raises(ValueError, match="one sample"):
        messages.message_data(model, X.repeat(2, 1), 1, "LRP-0", 0)


def test_draw_messages_structure_and_checks():
    M = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)
    fig = messages.draw_messages(M, M.sum(1), M.sum(0), title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 5            # 4 panels + colourbar
    assert not fig.axes[3].patches                                   # rows distribute: no outline
    fig = messages.draw_messages(M, M.sum(1) + torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert len(fig.axes[3].patches) == 1                             # one row breaks Eq. (2)
    with pytest.raises(ValueError, match="column sums"):
        messages.draw_messages(M, M.sum(1), M.sum(0) + 1)
    assert gallery.png(fig).startswith(PNG_SIGNATURE)


def test_message_figure_every_method_and_layer(model):
    for method in ("LRP-0", "DeepLIFT", "LID-IG", "SG-LRP-ZP"):
        for k in range(len(model)):
            fig = messages.message_figure(model, X, 1, method, k, baseline=X_REF)
            assert isinstance(fig, Figure) and method in fig._suptitle.get_text()


def test_epsilon_messages_against_lidlib(model):
    e0 = lidlib.explain(model, X, 1, "LRP-0")
    steps = messages.epsilon_messages(model, X, 1, 0.0)
    for st in steps:
        assert torch.allclose(st.R_out, e0.relevance[st.name][0], atol=1e-12)
    assert torch.allclose(steps[-1].R_in, e0.relevance["input"][0], atol=1e-12)
    for eps in (1e-4, 0.1, 2.0):
        e = lidlib.explain(model, X, 1, lidlib.Method("LRP-ε", "logit", rules.epsilon(eps), False))
        steps = messages.epsilon_messages(model, X[0], 1, eps)
        for st in steps:
            assert torch.allclose(st.R_out, e.relevance[st.name][0], rtol=1e-10, atol=1e-12)
        assert torch.allclose(steps[-1].R_in, e.relevance["input"][0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="eps"):
        messages.epsilon_messages(model, X, 1, -1.0)


def test_epsilon_figure(model):
    for eps in (0.0, 1e-3, 1.0):
        fig = messages.epsilon_figure(model, X, 1, eps, layer=0)
        assert isinstance(fig, Figure) and len(fig.axes) == 6
        assert gallery.png(fig).startswith(PNG_SIGNATURE)


def test_shift_logits(model):
    shifted = contrast.shift_logits(model, -2.5)
    with torch.no_grad():
        z, zs = model(X), shifted(X)
    assert torch.allclose(zs, z - 2.5, atol=1e-12)
    assert torch.allclose(torch.softmax(zs, 1), torch.softmax(z, 1), atol=1e-15)
    assert torch.equal(model(X), z)                                  # the original is untouched
    with pytest.raises(TypeError):
        contrast.shift_logits(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), 1.0)


def test_logit_shift_data_invariances(model):
    a = contrast.logit_shift_data(model, X, 1, 0.0, X_REF)
    b = contrast.logit_shift_data(model, X, 1, -3.0, X_REF)
    assert abs(a["P_c"] - b["P_c"]) < 1e-12 and abs(a["Z_c"] - 3.0 - b["Z_c"]) < 1e-12
    ratio = b["Z_c"] / a["Z_c"]
    assert np.allclose(b["relevance"]["LRP-ZP"], ratio * a["relevance"]["LRP-ZP"], rtol=1e-8)
    assert np.allclose(b["relevance"]["DeepLIFT"], a["relevance"]["DeepLIFT"], atol=1e-12)
    assert np.allclose(b["relevance"]["LRP-0"], a["relevance"]["LRP-0"], atol=1e-12)
    assert abs(b["total"]["LRP-0"] - b["Z_c"]) < 1e-12
    fig = contrast.logit_shift_figure(model, X, 1, 1.5, X_REF, ylim=3.0)
    assert isinstance(fig, Figure) and fig.axes[0].get_ylim() == (-3.0, 3.0)


def test_softmax_scale_data_against_autograd():
    z = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64)
    for s in (0.1, 1.0, 7.5):
        d = contrast.softmax_scale_data(z, 2, s)
        jac = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, 0), s * z)
        assert np.allclose(d["grad"], jac[2].numpy(), atol=1e-15)
        assert np.allclose(d["P"], torch.softmax(s * z, 0).numpy())
        assert abs(d["grad_l1"] - 2 * d["P"][2] * (1 - d["P"][2])) < 1e-15
    assert contrast.softmax_scale_data(z, 2, 10.0)["grad_l1"] < contrast.softmax_scale_data(z, 2, 1.0)["grad_l1"]
    fig = contrast.softmax_scale_figure(z, 2, 3.0)
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_widgets_build_and_update(model, capsys):
    """Outside a kernel the callbacks run synchronously: moving a control must not raise."""
    w = messages.message_widget(model, X, 1, baseline=X_REF)
    method, layer = w.children[0].children
    assert isinstance(w.children[1], widgets.Output)
    for m in method.options:
        method.value = m
    for _, k in layer.options:
        layer.value = k
    w = messages.epsilon_widget(model, X, 1, layer=2)
    w.children[0].value = 0.01
    w = contrast.logit_shift_widget(model, X, 1, X_REF, span=2.0)
    w.children[0].value = -1.7
    w = contrast.softmax_scale_widget(torch.tensor([0.3, -1.2, 2.0]), 0)
    w.children[0].value = 5.0
    capsys.readouterr()
