"""lidlib.widgets.gallery: image galleries switched in the browser by jslink (no kernel needed).

jslink runs in the front end, so these tests check the structure the front end receives (the Link
model and its source/target, also in the embedded widget state a static page carries), the Python
mirror of the link, the image conversion, and that bad input fails with a clear message.  That the
links really switch images in a browser is checked by scripts/check_book.py on the built book.
"""
import io

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ipywidgets.embed import embed_data  # noqa: E402

from lidlib.widgets.gallery import GALLERY_CLASS, PNG_SIGNATURE, Gallery, gallery, gallery_grid, to_png  # noqa: E402


def _figs(n=3):
    out = {}
    for i in range(n):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [0, i])
        out[f"fig {i}"] = fig
    return out


def _png_shape(png):
    return matplotlib.image.imread(io.BytesIO(png), format="png").shape


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_gallery_structure_and_jslink():
    g = gallery(_figs(), description="Pick:")
    assert isinstance(g, Gallery) and isinstance(g, widgets.VBox)
    assert GALLERY_CLASS in g._dom_classes
    (ctrl,) = g.controls
    assert isinstance(ctrl, widgets.Dropdown)
    assert ctrl.description == "Pick:"
    assert list(ctrl.options) == ["fig 0", "fig 1", "fig 2"] and g.labels == (("fig 0", "fig 1", "fig 2"),)
    assert g.children == (ctrl, g.stack)
    assert isinstance(g.stack, widgets.Stack) and g.stack.selected_index == 0
    assert len(g.stack.children) == 3
    for img in g.stack.children:
        assert isinstance(img, widgets.Image) and img.format == "png"
        assert bytes(img.value).startswith(PNG_SIGNATURE)
    (link,) = g.links
    assert isinstance(link, widgets.widgets.widget_link.Link) and link._model_name == "LinkModel"
    assert link.source == (ctrl, "index")
    assert link.target == (g.stack, "selected_index")


def test_python_mirror_follows_the_control():
    g = gallery(_figs())
    ctrl = g.controls[0]
    ctrl.index = 2
    assert g.stack.selected_index == 2
    ctrl.value = "fig 1"
    assert g.stack.selected_index == 1


def test_embedded_state_carries_the_link():
    """The static page renders from this state: the Link model must join control.index to the stack."""
    g = gallery(_figs(2))
    state = embed_data(views=[g])["manager_state"]["state"]
    links = [m["state"] for m in state.values() if m["model_name"] == "LinkModel"]
    want = {"source": [f"IPY_MODEL_{g.controls[0].model_id}", "index"],
            "target": [f"IPY_MODEL_{g.stack.model_id}", "selected_index"]}
    assert any(ln["source"] == want["source"] and ln["target"] == want["target"] for ln in links)
    assert list(state[g.model_id]["state"]["_dom_classes"]) == [GALLERY_CLASS]


@pytest.mark.parametrize("kind, cls", [("dropdown", widgets.Dropdown), ("toggle", widgets.ToggleButtons),
                                       ("slider", widgets.SelectionSlider)])
def test_control_kinds(kind, cls):
    g = gallery({"a": np.zeros((4, 4)), "b": np.ones((4, 4))}, control=kind)
    ctrl = g.controls[0]
    assert isinstance(ctrl, cls)
    assert g.links[0].source == (ctrl, "index")
    ctrl.index = 1
    assert g.stack.selected_index == 1


def test_figures_are_closed_unless_asked():
    figs = _figs(2)
    gallery(figs)
    assert plt.get_fignums() == []
    figs = _figs(2)
    gallery(figs, close=False)
    assert len(plt.get_fignums()) == 2


def test_array_and_bytes_inputs():
    rgb = np.zeros((5, 7, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    gray = np.linspace(-3, 3, 35).reshape(5, 7)
    rgba = np.full((5, 7, 4), 0.5)
    png = to_png(rgb)
    g = gallery({"rgb": rgb, "gray": gray, "rgba": rgba, "png": png}, width="100px")
    for img in g.stack.children:
        assert _png_shape(img.value)[:2] == (5, 7)
        assert img.layout.width == "100px"
    assert bytes(g.stack.children[3].value) == png  # PNG bytes pass through unchanged
    assert to_png(bytearray(png)) == png


@pytest.mark.parametrize("images, exc, match", [
    ({}, ValueError, "empty"),
    ([np.zeros((2, 2))], TypeError, "mapping"),
    ({1: np.zeros((2, 2))}, TypeError, "labels must be str"),
    ({"x": b"GIF89a..."}, ValueError, "not PNG"),
    ({"x": "picture.png"}, TypeError, r"image 'x'.*Figure, PNG bytes or a NumPy array"),
    ({"x": np.zeros((2, 2, 5))}, ValueError, r"shape \(H, W\)"),
    ({"x": np.zeros((0, 3))}, ValueError, "H, W > 0"),
    ({"x": np.full((2, 2), np.nan)}, ValueError, "NaN"),
    ({"x": np.full((2, 2, 3), 2.0)}, ValueError, r"\[0, 1\]"),
    ({"x": np.zeros((2, 2), dtype=np.int16)}, ValueError, "uint8"),
    ({"x": np.zeros((2, 2), dtype=bool)}, ValueError, "dtype bool"),
])
def test_bad_input_is_explained(images, exc, match):
    with pytest.raises(exc, match=match):
        gallery(images)


def test_unknown_control():
    with pytest.raises(ValueError, match="control must be one of"):
        gallery({"a": np.zeros((2, 2))}, control="radio")


def test_grid_is_a_stack_of_stacks_linked_to_two_controls():
    rows, cols = ("LRP", "LID"), ("s1", "s2", "s3")
    images = {(r, c): np.full((3, 3), i + j / 10) for i, r in enumerate(rows) for j, c in enumerate(cols)}
    g = gallery_grid(images, descriptions=("Method:", "Stage:"), controls=("dropdown", "slider"))
    c_row, c_col = g.controls
    assert isinstance(c_row, widgets.Dropdown) and isinstance(c_col, widgets.SelectionSlider)
    assert g.labels == (rows, cols)
    assert isinstance(g.children[0], widgets.HBox) and g.children[0].children == (c_row, c_col)
    assert len(g.stack.children) == 2
    assert all(isinstance(s, widgets.Stack) and len(s.children) == 3 for s in g.stack.children)
    assert len(g.links) == 1 + len(rows)
    assert g.links[0].source == (c_row, "index") and g.links[0].target == (g.stack, "selected_index")
    for link, inner in zip(g.links[1:], g.stack.children):
        assert link.source == (c_col, "index") and link.target == (inner, "selected_index")
    c_row.index, c_col.index = 1, 2
    assert g.stack.selected_index == 1
    assert [s.selected_index for s in g.stack.children] == [2, 2]


def test_grid_bad_input():
    with pytest.raises(ValueError, match=r"missing \[\('b', 'y'\)\]"):
        gallery_grid({("a", "x"): np.zeros((2, 2)), ("a", "y"): np.zeros((2, 2)), ("b", "x"): np.zeros((2, 2))})
    with pytest.raises(TypeError, match=r"\(row, column\) tuples"):
        gallery_grid({"a": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="exactly two"):
        gallery_grid({("a", "x"): np.zeros((2, 2))}, descriptions=("one",))
    with pytest.raises(ValueError, match="control must be one of"):
        gallery_grid({("a", "x"): np.zeros((2, 2))}, controls=("dropdown", "radio"))


# --- live(): the live widget in a kernel, one pointer line in the static book build ----------------

def test_live_builds_the_widget_in_a_kernel(monkeypatch):
    from lidlib.widgets.gallery import STATIC_ENV, live
    monkeypatch.delenv(STATIC_ENV, raising=False)
    calls = []

    def make(a, b=0):
        calls.append((a, b))
        return widgets.IntSlider(value=a + b)

    w = live(make, 2, b=3, what="the slider")
    assert isinstance(w, widgets.IntSlider) and w.value == 5 and calls == [(2, 3)]
    monkeypatch.setenv(STATIC_ENV, "0")            # "0" means: not the static build
    assert isinstance(live(make, 1), widgets.IntSlider) and len(calls) == 2


def test_live_in_the_static_build_shows_a_pointer_and_builds_nothing(monkeypatch):
    from lidlib.widgets.gallery import POINTER_CLASS, STATIC_ENV, LivePointer, live, static_build
    monkeypatch.setenv(STATIC_ENV, "1")
    assert static_build()

    def make():
        raise AssertionError("the widget must not be built for the static page")

    p = live(make, what="Fig. 2 for any method")
    assert isinstance(p, LivePointer)
    html = p._repr_html_()
    assert POINTER_CLASS in html and "Fig. 2 for any method" in html and "notebook" in html
    assert "\n" not in p.text and "Fig. 2 for any method" in repr(p)
    assert not isinstance(p, widgets.Widget)       # no widget state, no dead control in the page


def test_live_rejects_a_widget_instead_of_its_factory(monkeypatch):
    from lidlib.widgets.gallery import STATIC_ENV, live
    monkeypatch.setenv(STATIC_ENV, "1")
    with pytest.raises(TypeError, match="pass the function"):
        live(widgets.IntSlider())


def test_every_chapter_shows_live_widgets_only_through_live():
    """A live widget cell in a chapter must go through live() and be tagged remove-input (static page:
    the pointer only); the build sets LIDBOOK_STATIC."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    live_makers = re.compile(r"\b(\w+_widget|heatmap_explorer|interact(?:ive)?)\(")
    for md in sorted((root / "book").glob("[0-9][0-9]_*.md")):
        text = md.read_text(encoding="utf8")
        for cell in re.findall(r"```\{code-cell\}[^\n]*\n(.*?)\n```", text, re.S):
            if ":tags:" in cell and "solution" in cell.split("\n", 1)[0]:
                continue
            for line in cell.splitlines():
                if line.lstrip().startswith(("def ", "#", "from ", "import ")):
                    continue
                if live_makers.search(line):
                    assert "live(" in cell, f"{md.name}: a live widget shown without lidlib.widgets.gallery.live: {line}"
            if "live(" in cell:
                assert cell.startswith(":tags: [remove-input]"), f"{md.name}: tag the live() cell remove-input"
    build = (root / "scripts" / "build_book.sh").read_text(encoding="utf8")
    assert re.search(r"^export LIDBOOK_STATIC=1", build, re.M), "scripts/build_book.sh must export LIDBOOK_STATIC=1"
