"""lidlib.widgets: the heatmap renderer behind the live explorer, its cache, ScoreCAM, explorer and gallery.

ipywidgets swallows exceptions inside callbacks, so the plain functions (``render``, the renderer's
methods) are driven here directly.  Most tests use EfficientNet-Lite0 (real weights, offline) at a
64-pixel input, so that every method, ScoreCAM included, runs in seconds.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

import lidlib
from lidlib import images, models, toy
from lidlib.widgets import heatmaps as W

SMALL = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """64-pixel inputs gain nothing from a second thread, and on a shared, loaded machine OpenMP's
    spin-waiting makes two threads many times slower than one; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lite0():
    return models.efficientnet_lite0()


@pytest.fixture(scope="module")
def two():
    return images.two_object()


def _images(two):
    return {W.COMPOSITE: (two.image, two.classes), "chelsea": images.photo("chelsea")}


@pytest.fixture(scope="module")
def small(lite0, two):
    """A renderer at 64 px shared by the tests that only need correct, finite output."""
    return W.HeatmapRenderer(lite0, _images(two), size=SMALL)


@pytest.fixture
def counted(monkeypatch):
    """Count the explanations computed, by ``lidlib.explain`` or a :class:`lidlib.Explainer` (the
    renderer's), with their ``n_steps``."""
    calls = []
    real, real_call = lidlib.explain, lidlib.Explainer.__call__

    def counting(*args, **kwargs):
        calls.append(kwargs.get("n_steps"))
        return real(*args, **kwargs)

    def counting_call(self, *args, **kwargs):
        calls.append(self.n_steps)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(lidlib, "explain", counting)
    monkeypatch.setattr(lidlib.Explainer, "__call__", counting_call)
    return calls


def test_render_every_method(small):
    for method in lidlib.METHODS:
        for image, target in ((W.COMPOSITE, "A"), ("chelsea", "top-1")):
            stage = "s5" if method == "ScoreCAM" else ("s54321" if image == W.COMPOSITE else "s3")
            state = dict(image=image, method=method, target=target, stage=stage)
            fig = W.render(state, small)
            assert isinstance(fig, plt.Figure)
            plt.close(fig)
            h = small.heatmap(state)
            assert h.shape == (SMALL, SMALL) and torch.isfinite(h).all(), (method, image)
            assert h.abs().max() > 0, (method, image)


def test_render_matches_library_at_224(lite0, two):
    r = W.HeatmapRenderer(lite0, _images(two))
    state = W.State()                                   # composite, SIG-LID-IG, class A, s54321, n = 10, zeros
    h = r.heatmap(state)
    x = images.to_model_input(two.image, lite0)
    e = lidlib.explain(lite0, x, two.classes[0], "SIG-LID-IG", n_steps=10)
    assert torch.allclose(h, e.heatmap("s54321")[0], atol=1e-5)
    assert "SIG-LID-IG-s54321" in r.title(state) and "Egyptian cat" in r.title(state)
    # positive on the target object, negative on the other (the paper's Fig. 4 reading)
    assert h[two.masks[0]].mean() > 0 > h[two.masks[1]].mean()


def test_stage_change_reuses_the_explanation(lite0, two, counted):
    r = W.HeatmapRenderer(lite0, _images(two), size=SMALL)
    base = dict(image=W.COMPOSITE, method="SIG-LID-IG", target="A")
    for stage in W.STAGES:
        plt.close(W.render({**base, "stage": stage}, r))
    assert len(counted) == 1 and r.explanations_computed == 1
    plt.close(W.render({**base, "stage": "s2", "n_steps": 5}, r))                 # n changes SIG-LID-IG
    assert len(counted) == 2 and counted[-1] == 5
    plt.close(W.render({**base, "stage": "s2", "exact": True}, r))                # the limit n -> oo
    assert len(counted) == 3 and counted[-1] is None
    plt.close(W.render({**base, "stage": "s1", "target": "B"}, r))                # another class
    assert len(counted) == 4
    lrp = dict(image=W.COMPOSITE, method="LRP-0", target="A", stage="s5")
    plt.close(W.render(lrp, r))
    for change in ({"n_steps": 3}, {"reference": "blur"}, {"exact": True}, {"stage": "s54321"}):
        plt.close(W.render({**lrp, **change}, r))                               # LRP-0 has neither n nor X̂
    assert len(counted) == 5
    plt.close(W.render({**base, "reference": "mean"}, r))                        # the reference does matter
    assert len(counted) == 6


def test_batched_explanation_fills_both_classes(lite0, two, counted):
    r = W.HeatmapRenderer(lite0, _images(two), size=SMALL)
    e = r.explain(W.COMPOSITE, "LID-IG", ("A", "B"))
    assert len(counted) == 1 and e.target.tolist() == list(two.classes)
    assert r.explain(W.COMPOSITE, "LID-IG", ("A", "B")) is e                   # cached as a whole
    hA = r.heatmap(dict(method="LID-IG", target="A", stage="s4"))
    hB = r.heatmap(dict(method="LID-IG", target="B", stage="s4"))
    assert len(counted) == 1
    single = W.HeatmapRenderer(lite0, _images(two), size=SMALL)
    assert torch.allclose(single.heatmap(dict(method="LID-IG", target="B", stage="s4")), hB, atol=1e-5)
    assert not torch.allclose(hA, hB)


def test_references_and_targets(small, two):
    assert small.reference(W.COMPOSITE, "zeros") is None
    blur, mean = small.reference(W.COMPOSITE, "blur"), small.reference(W.COMPOSITE, "mean")
    assert blur.shape == mean.shape == (1, 3, SMALL, SMALL)
    assert torch.allclose(mean, mean[..., :1, :1].expand_as(mean))             # one colour
    assert small.class_index(W.COMPOSITE, "A") == two.classes[0]
    assert small.class_index(W.COMPOSITE, "B") == two.classes[1]
    p = small.probabilities("chelsea")
    assert small.class_index("chelsea", "top-1") == int(p.argmax())
    labels = [label for label, _ in small.target_options(W.COMPOSITE)]
    assert labels[0].startswith("A: Egyptian cat") and labels[1].startswith("B: espresso")
    h = {ref: small.heatmap(dict(method="SIG-LID-IG", stage="s3", reference=ref)) for ref in W.REFERENCES}
    assert not torch.allclose(h["zeros"], h["blur"]) and not torch.allclose(h["zeros"], h["mean"])


@pytest.mark.parametrize("state, message", [
    (dict(image="nope"), "unknown image"),
    (dict(method="LRP-42"), "unknown method"),
    (dict(stage="s6"), "unknown stage"),
    (dict(reference="noise"), "unknown reference"),
    (dict(target="top-1"), "not available"),
    (dict(image="chelsea", target="A"), "not available"),
    (dict(method="ScoreCAM", stage="s4"), "s5 only"),
    (dict(method="IG", exact=True), "closed-form"),
    (dict(n_steps=0), "n_steps"),
    (dict(n_steps=2.5), "n_steps"),
    (dict(colour="red"), "unknown state field"),
])
def test_bad_states_raise(small, state, message):
    with pytest.raises(ValueError, match=message):
        W.render(state, small)


def test_state_must_be_a_state_or_mapping(small):
    with pytest.raises(TypeError, match="State or a dict"):
        W.render(["SIG-LID-IG"], small)


def test_scorecam_matches_lidlib_on_a_toy_cnn():
    model = toy.cnn(in_channels=3, size=12)
    model.stages = {"s5": "5"}                                                  # the second max-pool
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[..., :4] = 0                                                              # some constant channels
    targets = [0, 3, 4]
    fast = W.scorecam_explanation(model, x, targets, batch_size=2)
    ref = lidlib.explain(model, x.expand(3, -1, -1, -1), torch.tensor(targets), "ScoreCAM")
    assert torch.allclose(fast.layer("5"), ref.layer("5"), atol=1e-12, rtol=0)
    assert torch.allclose(fast.heatmap(5), ref.heatmap(5), atol=1e-12, rtol=0)
    with torch.no_grad():
        acts = model[:6](x)
    live = int((acts.flatten(2).amax(-1) > acts.flatten(2).amin(-1)).sum())
    assert fast.scorecam_forwards == live + 1


def test_scorecam_results_file_is_used_only_after_a_sample_check(tmp_path):
    model = toy.cnn(in_channels=3, size=12)
    model.stages = {"s5": "5"}
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[..., :4] = 0                                                              # some constant channels
    targets = [0, 3]
    full = W.scorecam_explanation(model, x, targets, batch_size=2)
    assert full.scorecam_checked is None
    path = W.write_scorecam_cache(tmp_path / "sc.npz", model, x, [3, 0, 4], batch_size=2)   # a superset
    cached = W.scorecam_explanation(model, x, targets, batch_size=2, cache=path, check=2)
    assert torch.allclose(cached.layer("5"), full.layer("5"), atol=1e-6, rtol=0)
    assert cached.scorecam_checked == 3 and cached.scorecam_forwards == 3 < full.scorecam_forwards  # 2 live + 1 constant
    assert cached.scorecam_live == full.scorecam_live
    # a file for another image or class does not apply: every masked image is evaluated
    other = W.scorecam_explanation(model, x.flip(-1), targets, batch_size=2, cache=path)
    assert other.scorecam_checked is None
    assert W.scorecam_explanation(model, x, [1], batch_size=2, cache=path).scorecam_checked is None
    assert W.scorecam_explanation(model, x, targets, cache=tmp_path / "missing.npz").scorecam_checked is None
    # a stale file (scores that the model no longer computes) fails, whatever channels the sample picks
    import numpy as np
    with np.load(path) as f:
        data = dict(f)
    data["scores"] = data["scores"] + 1.0
    np.savez(path, **data)
    with pytest.raises(W.ScoreCAMCacheMismatch, match="stale"):
        W.scorecam_explanation(model, x, targets, batch_size=2, cache=path, check=1)


def test_scorecam_errors(lite0):
    x = torch.zeros(2, 3, SMALL, SMALL)
    with pytest.raises(ValueError, match="one image"):
        W.scorecam_explanation(lite0, x, [0])
    with pytest.raises(ValueError, match="unknown layer"):
        W.scorecam_explanation(lite0, x[:1], [0], layer="nope")
    with pytest.raises(ValueError, match="out of range"):
        W.scorecam_explanation(toy.cnn(in_channels=3, size=12), torch.zeros(1, 3, 12, 12, dtype=torch.float64),
                               [7], layer="5")


def test_uses_steps_and_reference():
    steps = {m for m in lidlib.METHODS if W.uses_steps(m)}
    assert steps == {"SIG-LRP-0", "SIG-LID-Taylor", "LID-IG", "SIG-LID-IG", "IG"}
    refs = {m for m in lidlib.METHODS if W.uses_reference(m)}
    assert refs == {"DeepLIFT", "LID-Taylor", "ST-LID-Taylor", "SIG-LID-Taylor", "LID-IG", "SIG-LID-IG", "IG"}
    assert W.stage_label((5, 4, 3, 2, 1)) == "s54321" and W.stage_label(3) == "s3"


def test_explorer_builds_and_reacts(small):
    ex = W.heatmap_explorer(renderer=small, state=dict(image=W.COMPOSITE, stage="s5"))
    assert ex.image.value[:8] == b"\x89PNG\r\n\x1a\n" and "explanation" in ex.status.value
    first = ex.image.value
    ex.controls["stage"].value = "s2"
    assert "cached explanation" in ex.status.value and ex.image.value != first
    ex.controls["image"].value = "chelsea"                                      # new class options
    assert [k for _, k in ex.controls["target"].options] == ["top-1", "top-2"]
    assert ex.state.target == "top-1" and "⚠" not in ex.status.value
    ex.controls["method"].value = "ScoreCAM"                                    # moved to s5 by itself
    assert ex.state.stage == "s5" and "⚠" not in ex.status.value
    ex.controls["method"].value = "LRP-0"
    assert ex.controls["reference"].disabled and ex.controls["n_steps"].disabled
    ex.controls["method"].value = "SIG-LID-IG"
    ex.controls["exact"].value = True
    assert ex.controls["n_steps"].disabled and "⚠" not in ex.status.value
    ex.controls["method"].value = "IG"                                          # IG: exact is switched off
    assert ex.state.exact is False and "⚠" not in ex.status.value


def test_gallery(small):
    g = W.heatmap_gallery(small, W.COMPOSITE, ["SIG-LID-IG", "GradCAM"], stages=("s5", "s54321"))
    assert g.labels[1] == ("s5", "s54321")
    assert g.labels[0] == ("SIG-LID-IG · A: Egyptian cat", "SIG-LID-IG · B: espresso",
                           "GradCAM · A: Egyptian cat", "GradCAM · B: espresso")
    assert len(g.stack.children) == 4 and all(len(s.children) == 2 for s in g.stack.children)
    import io

    from PIL import Image
    sizes = {Image.open(io.BytesIO(img.value)).size for s in g.stack.children for img in s.children}
    assert len(sizes) == 1                                # one redrawn figure: every image the same size
    assert len({bytes(img.value) for s in g.stack.children for img in s.children}) == 8   # and all different
    with pytest.raises(ValueError, match="s5 only"):
        W.heatmap_gallery(small, W.COMPOSITE, ["ScoreCAM"], stages=("s5", "s4"))
    with pytest.raises(ValueError, match="unknown stage"):
        W.heatmap_gallery(small, W.COMPOSITE, ["LRP-0"], stages=("s9",))


def test_small_png(small):
    fig = small.render(W.State(stage="s5"))
    png = W.small_png(fig, colors=32)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    from PIL import Image
    assert Image.open(io.BytesIO(png)).mode == "P"


def test_stage_grid(small):
    fig = W.stage_grid(small, W.COMPOSITE, ["SIG-LID-Taylor", "SIG-LID-IG"], "B")
    assert len(fig.axes) == 10 + 1                      # 2 methods x 5 stages, one shared colour bar
    bar = fig.axes[-1]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["−max", "0", "+max"]
    plt.close(fig)


def test_gallery_and_render_images_carry_a_colour_bar(small):
    fig = small.render(W.State(stage="s5"))
    assert len(fig.axes) == 2                            # the map and its colour bar
    plt.close(fig)


def test_show_heatmap_colour_bar_is_symmetric_red_white_blue():
    from matplotlib.colors import to_rgba

    from lidlib.widgets.plot import CMAP, relevance_colorbar, show_heatmap
    h = torch.tensor([[-1.0, 0.5], [0.25, 3.0]])       # asymmetric values: the scale must still be ±3
    fig, ax = plt.subplots()
    im = show_heatmap(ax, h)
    assert im.get_clim() == (-3.0, 3.0) and im.get_cmap().name == CMAP
    cmap = im.get_cmap()
    assert cmap(0.5)[:3] == pytest.approx((1, 1, 1), abs=0.01)          # white at 0
    assert cmap(1.0)[:3] == pytest.approx(to_rgba("red")[:3], abs=0.01)  # red at +max
    assert cmap(0.0)[:3] == pytest.approx(to_rgba("blue")[:3], abs=0.01) # blue at -max
    (bar,) = [a for a in fig.axes if a is not ax]
    assert [float(t) for t in bar.get_yticks()] == [-3.0, 0.0, 3.0]
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, layout="constrained")
    for a in axes:
        show_heatmap(a, h, colorbar=False)
    assert len(fig.axes) == 2
    cb = relevance_colorbar(fig, axes)
    assert cb.mappable.get_clim() == (-1.0, 1.0) and len(fig.axes) == 3
    with pytest.raises(ValueError, match="axes"):
        relevance_colorbar(fig)
    plt.close(fig)


def test_update_heatmap_redraws_map_limits_and_bar():
    from lidlib.widgets.plot import show_heatmap, update_heatmap
    fig, ax = plt.subplots()
    im = show_heatmap(ax, torch.zeros(4, 5), image=torch.rand(3, 4, 5))
    h = torch.linspace(-2, 0.5, 20).reshape(4, 5)
    update_heatmap(im, h)
    assert im.get_clim() == (-2.0, 2.0) and float(abs(im.get_array() - h.numpy()).max()) == 0
    assert [float(t) for t in im.colorbar.ax.get_yticks()] == [-2.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="shape"):
        update_heatmap(im, torch.zeros(3, 3))
    plt.close(fig)
