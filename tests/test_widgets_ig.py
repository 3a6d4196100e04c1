"""lidlib.widgets.conservation and .contrast: the live widgets of the LID-IG and SIG-LID-IG chapters.

Exceptions inside widget callbacks are swallowed by the front end, so these tests call the plain
functions behind each callback directly, check their numbers against the paper's identities
(Eq. 21, 24), and drive the widgets' controls in Python to run the callbacks themselves.
"""
import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lidlib import toy  # noqa: E402
from lidlib.widgets.conservation import GAP_FLOOR, N_CHOICES, gap_figure, layer_gaps, lid_ig_gap_view, lid_ig_gap_widget  # noqa: E402
from lidlib.widgets.contrast import (  # noqa: E402
    SCALE_CHOICES,
    scaled_logits,
    sig_contrast_figure,
    sig_contrast_rows,
    sig_contrast_widget,
)
from lidlib.widgets.gallery import PNG_SIGNATURE  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def case():
    model = toy.cnn()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 12, 12, generator=g, dtype=torch.float64)
    x_ref = 0.5 * torch.randn(1, 2, 12, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        c = int(model(x).argmax())
    return model, x, x_ref, c


# --------------------------------------------------------------------------- LID-IG gap widget
def test_layer_gaps_exact_conserves_and_sampled_does_not(case):
    model, x, x_ref, c = case
    exact = layer_gaps(model, x, c, "LID-IG", x_ref, None)
    names = [name for name, _ in exact]
    assert names[0] == "input" and names[-1] == str(len(model) - 1) and len(names) == len(model) + 1
    assert all(isinstance(g, float) for _, g in exact)
    assert max(g for _, g in exact) < 1e-10                        # exact mode: every layer
    sampled = dict(layer_gaps(model, x, c, "LID-IG", x_ref, 10))
    assert sampled["input"] > 1e-3                                  # n = 10: a visible gap
    assert sampled[str(len(model) - 1)] == 0.0                      # the top relevance itself


def test_layer_gaps_shrink_with_n(case):
    model, x, x_ref, c = case
    worst = [max(g for _, g in layer_gaps(model, x, c, "LID-IG", x_ref, n)) for n in (1, 1000)]
    assert worst[1] < worst[0] / 50


def test_layer_gaps_n1_is_lid_taylor(case):
    model, x, x_ref, c = case
    ig = dict(layer_gaps(model, x, c, "LID-IG", x_ref, 1))
    taylor = dict(layer_gaps(model, x, c, "LID-Taylor", x_ref, 10))
    assert ig.keys() == taylor.keys()
    assert all(abs(ig[k] - taylor[k]) <= 1e-12 * max(1.0, taylor[k]) for k in ig)


def test_gap_figure_draws_every_layer_and_floors_zeros():
    gaps = {"A": [("input", 0.1), ("0", 0.0)], "B": [("input", 1e-3), ("0", 1e-20)]}
    fig = gap_figure(gaps, title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["input", "0"]
    heights = sorted(p.get_height() for p in ax.patches)
    assert len(heights) == 4 and heights[0] == GAP_FLOOR and heights[-1] == 0.1
    assert ax.get_yscale() == "log" and ax.get_title() == "t"
    with pytest.raises(ValueError):
        gap_figure({})


def test_lid_ig_gap_view_titles(case):
    model, x, x_ref, c = case
    fig = lid_ig_gap_view(model, x, c, x_ref, 10, exact=False)
    assert fig.axes[0].get_title().startswith("n = 10")
    assert len(fig.axes[0].patches) == 2 * (len(model) + 1)
    fig = lid_ig_gap_view(model, x, c, x_ref, 10, exact=True)
    assert fig.axes[0].get_title().startswith("exact")


def test_lid_ig_gap_widget_callbacks_run(case):
    model, x, x_ref, c = case
    box = lid_ig_gap_widget(model, x, c, x_ref)
    assert isinstance(box, widgets.VBox)
    assert list(box.n.options) == list(N_CHOICES) and box.n.value == 10
    first = bytes(box.image.value)
    assert first.startswith(PNG_SIGNATURE) and box.setting == (10, False)   # drawn at creation
    box.n.value = 100                                                # runs the callback
    assert box.setting == (100, False) and bytes(box.image.value) != first
    box.exact.value = True
    assert box.n.disabled and box.setting == (100, True)


# --------------------------------------------------------------------------- SIG contrast widget
def test_scaled_logits_scales_only_the_logits(case):
    model, x, _, _ = case
    m2 = scaled_logits(model, 3.0)
    with torch.no_grad():
        assert torch.allclose(m2(x), 3.0 * model(x), atol=1e-12)
    assert model[-1].weight.data_ptr() != m2[-1].weight.data_ptr()   # a copy: the original is untouched
    with pytest.raises(TypeError):
        scaled_logits(torch.nn.Sequential(torch.nn.ReLU()), 2.0)


@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_sig_contrast_rows_identities(case, scale):
    model, x, x_ref, c = case
    rows = sig_contrast_rows(model, x, c, x_ref, scale, 10)
    assert abs(rows["SIG_exact"] - rows["dP"]) < 1e-12                # P̄'_c · ΔZ = ΔP_c
    assert abs(rows["dP"] - (rows["P"] - rows["P_ref"])) < 1e-15
    assert rows["gap_exact"] < 1e-10                                 # Eq. (24), every layer
    assert rows["gap_n"] > rows["gap_exact"]
    assert abs(rows["ST"] - rows["dP"]) > abs(rows["SIG_exact"] - rows["dP"])


def test_sig_contrast_rows_sig_converges(case):
    model, x, x_ref, c = case
    rows = [sig_contrast_rows(model, x, c, x_ref, 1.0, n) for n in (10, 1000)]
    err = [abs(r["SIG_n"] - r["dP"]) for r in rows]
    assert err[1] < err[0] / 10


def test_sig_contrast_figure_and_widget(case):
    model, x, x_ref, c = case
    fig = sig_contrast_figure(model, x, c, x_ref, 2.0, 5)
    assert len(fig.axes) == 2 and "2" in fig._suptitle.get_text()
    assert len(fig.axes[1].patches) == 4
    box = sig_contrast_widget(model, x, c, x_ref)
    assert list(box.scale.options) == list(SCALE_CHOICES) and box.scale.value == 1.0
    first = bytes(box.image.value)
    assert first.startswith(PNG_SIGNATURE) and box.setting == (1.0, 10)
    box.scale.value = 8.0
    box.n.value = 3
    assert box.setting == (8.0, 3) and bytes(box.image.value) != first
