"""Image galleries that keep working in the static book, with no kernel.

An ``interact`` widget needs a running kernel: in the built HTML its controls move but nothing
changes.  A gallery precomputes every image and puts them in a :class:`ipywidgets.Stack`; the control
(a dropdown, toggle buttons or a slider) is ``jslink``-ed to the stack's ``selected_index``, so the
browser switches images by itself from the widget state saved in the page::

    from lidlib.widgets.gallery import gallery
    gallery({"input": fig_x, "LRP-0": fig_lrp, "SIG-LID-IG": fig_lid}, description="Method:")

:func:`gallery_grid` does the same for two axes (say method × layer): a Stack of Stacks, the first
control linked to the outer stack and the second to every inner stack.

Images may be matplotlib figures (rendered to PNG and closed, so the notebook does not show them a
second time), PNG bytes, or NumPy arrays (``uint8`` or floats in [0, 1], shape (H, W), (H, W, 3) or
(H, W, 4); a 2-D array is drawn with ``cmap``, scaled from its min to its max).

A *live* widget (``interact``, a slider whose callback recomputes) needs a kernel.  :func:`live`
shows it wherever a kernel runs the notebook (Jupyter, Colab, Binder) and, while
``scripts/build_book.sh`` builds the static book (environment variable :data:`STATIC_ENV` set),
shows only a one-line pointer to it instead, so that the page carries no dead controls::

    live(epsilon_widget, model, x, c)     # the widget in a kernel; one line in the built page
"""
from __future__ import annotations

import html
import io
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import ipywidgets as widgets
import numpy as np
import traitlets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Gallery", "gallery", "gallery_grid", "to_png", "live", "static_build", "LivePointer", "CONTROLS",
           "GALLERY_CLASS", "STATIC_ENV"]

#: Control kinds: each has an ``index`` trait that the front end can link.
CONTROLS = {
    "dropdown": widgets.Dropdown,
    "toggle": widgets.ToggleButtons,
    "slider": widgets.SelectionSlider,
}
#: CSS class on every gallery box; ``scripts/check_book.py`` finds galleries by it.
GALLERY_CLASS = "lid-gallery"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Set (to anything but "" or "0") by ``scripts/build_book.sh``: the notebook runs for the static book.
STATIC_ENV = "LIDBOOK_STATIC"
#: CSS class of the pointer line that :func:`live` shows in the static book.
POINTER_CLASS = "lid-live-pointer"


def static_build() -> bool:
    """Whether this kernel runs for the static book build (:data:`STATIC_ENV` is set)."""
    return os.environ.get(STATIC_ENV, "").strip() not in ("", "0")


class LivePointer:
    """The one line that stands in for a live widget in the static book (HTML, Markdown or text)."""

    def __init__(self, what: str = "this figure"):
        self.what = what
        self.text = (f"Live version of {what}: open this page as a notebook (launch button at the top: Colab, "
                     "Binder, or the .ipynb download) and run this cell.")

    def _repr_html_(self) -> str:
        return f'<p class="{POINTER_CLASS}">&#9654; {html.escape(self.text)}</p>'

    def __repr__(self) -> str:
        return self.text


def live(make, *args, what: str = "this figure", **kwargs):
    """``make(*args, **kwargs)`` -- a live widget -- when a kernel runs the notebook; in the static book
    build (:func:`static_build`) a :class:`LivePointer` instead, and ``make`` is not called at all.

    Tag the cell ``remove-input`` so that the static page shows only the pointer line; the shipped
    notebook keeps the code, and running the cell in Jupyter, Colab or Binder gives the widget.
    """
    if not callable(make):
        raise TypeError(f"live() takes the function that builds the widget (e.g. live(epsilon_widget, model, x, c)), "
                        f"not {type(make).__name__}: pass the function and its arguments, do not call it")
    if static_build():
        return LivePointer(what)
    return make(*args, **kwargs)


class Gallery(widgets.VBox):
    """Controls above a Stack of images, switched in the browser by ``jslink``.

    Attributes: ``controls`` (the selection widgets, in order), ``stack`` (the outer
    :class:`ipywidgets.Stack`), ``links`` (the front-end ``jslink`` widgets) and ``labels`` (one tuple
    of option labels per control).  The same links are mirrored in Python with ``traitlets.dlink``, so
    code running in a kernel sees ``stack.selected_index`` follow the control too.
    """

    def __init__(self, controls: Sequence[widgets.Widget], stack: widgets.Stack,
                 links: Sequence[widgets.Widget], labels: Sequence[Tuple[str, ...]], **kwargs):
        row = controls[0] if len(controls) == 1 else widgets.HBox(list(controls))
        super().__init__(children=[row, stack], **kwargs)
        self.controls = tuple(controls)
        self.stack = stack
        self.links = tuple(links)
        self.labels = tuple(tuple(x) for x in labels)
        self._py_links: List[Any] = []
        self.add_class(GALLERY_CLASS)

    def _mirror(self, source: Tuple[widgets.Widget, str], target: Tuple[widgets.Widget, str]) -> None:
        self._py_links.append(traitlets.dlink(source, target))


def to_png(image: Any, *, cmap: str = "gray", close: bool = True, name: str = "image", tight: bool = True,
           dpi: Optional[float] = None) -> bytes:
    """PNG bytes of a matplotlib figure, PNG bytes, or a NumPy image array (see the module doc): the one
    place where a figure becomes PNG (:func:`png` and :func:`small_png` are its variants).

    ``close``: close a figure after rendering it (pyplot would otherwise show it again at the end of
    the cell).  ``tight``: crop to the drawn area (``bbox_inches="tight"``, a second layout pass);
    ``dpi``: the resolution (None: matplotlib's ``savefig.dpi``).  ``name`` only labels error messages.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data.startswith(PNG_SIGNATURE):
            raise ValueError(f"{name}: bytes are not PNG data (they must start with the PNG signature "
                             f"{PNG_SIGNATURE!r}); convert other formats to PNG first")
        return data
    if hasattr(image, "savefig") and hasattr(image, "canvas"):  # a matplotlib Figure
        buf = io.BytesIO()
        if tight:
            image.savefig(buf, format="png", bbox_inches="tight", dpi=dpi)
        else:
            image.savefig(buf, format="png", dpi=dpi)
        if close:
            import matplotlib.pyplot as plt
            plt.close(image)
        return buf.getvalue()
    if isinstance(image, np.ndarray):
        return _array_to_png(image, cmap=cmap, name=name)
    raise TypeError(f"{name}: expected a matplotlib Figure, PNG bytes or a NumPy array, "
                    f"got {type(image).__module__}.{type(image).__qualname__}")


def _array_to_png(a: np.ndarray, *, cmap: str, name: str) -> bytes:
    import matplotlib.image

    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise ValueError(f"{name}: an image array must have shape (H, W), (H, W, 3) or (H, W, 4) "
                         f"with H, W > 0; got {a.shape}")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: an image array must be uint8 or floating point, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.integer) and a.dtype != np.uint8:
        raise ValueError(f"{name}: integer image arrays must be uint8 (0..255), got {a.dtype}; "
                         "convert with a.astype(np.uint8) or scale to floats in [0, 1]")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: the image array contains NaN or infinite values")
        if a.ndim == 3 and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"{name}: float colour images must lie in [0, 1]; got values in "
                             f"[{float(a.min()):.3g}, {float(a.max()):.3g}]")
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, a, format="png", cmap=cmap if a.ndim == 2 else None)
    return buf.getvalue()


def _check_control(control: str) -> type:
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {sorted(CONTROLS)}, got {control!r}")
    return CONTROLS[control]


def _make_control(kind: str, labels: Sequence[str], description: str) -> widgets.Widget:
    cls = _check_control(kind)
    kwargs: Dict[str, Any] = dict(options=list(labels), index=0, description=description,
                                  style={"description_width": "initial"})
    if cls is widgets.SelectionSlider:
        kwargs["layout"] = widgets.Layout(width="min(100%, 40em)")
    elif cls is widgets.ToggleButtons:
        kwargs["style"] = {"description_width": "initial", "button_width": "auto"}
    return cls(**kwargs)


def _image(png: bytes, width: Optional[str]) -> widgets.Image:
    layout = widgets.Layout(width=width) if width else widgets.Layout()
    return widgets.Image(value=png, format="png", layout=layout)


def _check_mapping(images: Any) -> None:
    if not isinstance(images, Mapping):
        raise TypeError(f"images must be a mapping (e.g. a dict) of label -> image, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("images is empty: a gallery needs at least one image")


def gallery(images: Mapping[str, Any], description: str = "Image:", *, control: str = "dropdown",
            width: Optional[str] = None, cmap: str = "gray", close: bool = True) -> Gallery:
    """One control switching between precomputed images, with no kernel needed.

    ``images``: label -> matplotlib Figure, PNG bytes or NumPy array, in display order.
    ``control``: ``"dropdown"``, ``"toggle"`` (ToggleButtons) or ``"slider"`` (SelectionSlider).
    ``width``: optional CSS width of every image (e.g. ``"480px"``); by default the image's own size,
    shrunk to the page width.  Figures are closed after rendering unless ``close=False``.
    """
    _check_mapping(images)
    _check_control(control)
    labels = list(images)
    for k in labels:
        if not isinstance(k, str):
            raise TypeError(f"gallery labels must be str, got {k!r} ({type(k).__name__}); "
                            "for two axes use gallery_grid with (row, column) keys")
    pngs = [to_png(images[k], cmap=cmap, close=close, name=f"image {k!r}") for k in labels]
    stack = widgets.Stack([_image(p, width) for p in pngs], selected_index=0)
    ctrl = _make_control(control, labels, description)
    link = widgets.jslink((ctrl, "index"), (stack, "selected_index"))
    g = Gallery([ctrl], stack, [link], [tuple(labels)])
    g._mirror((ctrl, "index"), (stack, "selected_index"))
    return g


def gallery_grid(images: Mapping[Tuple[str, str], Any], descriptions: Sequence[str] = ("Method:", "Stage:"), *,
                 controls: Sequence[str] = ("dropdown", "toggle"), width: Optional[str] = None,
                 cmap: str = "gray", close: bool = True) -> Gallery:
    """Two controls (rows × columns, e.g. method × layer) switching precomputed images, no kernel needed.

    ``images``: ``(row, column)`` -> image; every pair of a row label and a column label that appears
    must be present.  Labels keep their first-appearance order.  The structure is a Stack (one child
    per row) of Stacks (one child per column): control 0 is jslinked to the outer stack, control 1 to
    every inner stack, so changing either one in the browser shows the image at both selections.
    """
    _check_mapping(images)
    if len(descriptions) != 2 or len(controls) != 2:
        raise ValueError("gallery_grid needs exactly two descriptions and two controls")
    for kind in controls:
        _check_control(kind)
    rows: List[str] = []
    cols: List[str] = []
    for key in images:
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(s, str) for s in key)):
            raise TypeError(f"gallery_grid keys must be (row, column) tuples of str, got {key!r}")
        if key[0] not in rows:
            rows.append(key[0])
        if key[1] not in cols:
            cols.append(key[1])
    missing = [(r, c) for r in rows for c in cols if (r, c) not in images]
    if missing:
        raise ValueError(f"gallery_grid needs an image for every (row, column) pair; missing {missing}")
    inner = [widgets.Stack([_image(to_png(images[(r, c)], cmap=cmap, close=close, name=f"image {(r, c)!r}"), width)
                            for c in cols], selected_index=0) for r in rows]
    outer = widgets.Stack(inner, selected_index=0)
    c_row = _make_control(controls[0], rows, descriptions[0])
    c_col = _make_control(controls[1], cols, descriptions[1])
    links = [widgets.jslink((c_row, "index"), (outer, "selected_index"))]
    links += [widgets.jslink((c_col, "index"), (s, "selected_index")) for s in inner]
    g = Gallery([c_row, c_col], outer, links, [tuple(rows), tuple(cols)])
    g._mirror((c_row, "index"), (outer, "selected_index"))
    for s in inner:
        g._mirror((c_col, "index"), (s, "selected_index"))
    return g


# --------------------------------------------------------------------------- figures as PNG
def png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure made without pyplot (:mod:`lidlib.widgets.messages`,
    :mod:`lidlib.widgets.contrast`): its layout leaves room for the labels, so no ``bbox_inches="tight"``
    pass (it doubles the cost), and there is nothing for pyplot to close."""
    return to_png(fig, close=False, tight=False, dpi=dpi)


def show(fig: Figure, dpi: int = 100):
    """An IPython image of a figure drawn here, to show it in a notebook cell (it does not depend on
    the state of matplotlib's inline backend, which a figure made without pyplot would need)."""
    from IPython.display import Image

    return Image(data=png(fig, dpi))


def small_png(fig, colors: int = 96, *, close: bool = True, tight: bool = True) -> bytes:
    """PNG bytes of a figure with at most ``colors`` palette colours (several times smaller than RGBA);
    the figure is closed unless ``close=False``; ``tight=False`` keeps the figure's own size."""
    from PIL import Image
    if tight:
        rgb = Image.open(io.BytesIO(to_png(fig, close=close))).convert("RGB")
    else:                                       # the canvas's pixels as drawn: one draw, no PNG in between
        fig.canvas.draw()
        rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        if close:
            import matplotlib.pyplot as plt
            plt.close(fig)
    im = rgb.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- a control above a figure (needs a kernel)
def control_image(control: widgets.Widget, render: Callable[[object], "Figure"], width: str = "640px") -> widgets.VBox:
    """A control above an image: every change of ``control.value`` redraws ``render(value)``.

    The returned box has ``.image`` (the :class:`ipywidgets.Image`) and ``.update()`` (the callback,
    callable directly).  The first image is drawn now, so the built page shows it.
    """
    image = widgets.Image(format="png", layout=widgets.Layout(width=f"min(100%, {width})"))

    def update(change=None):
        image.value = to_png(render(control.value))

    control.observe(update, names="value")
    update()
    box = widgets.VBox([control, image])
    box.image, box.update = image, update
    return box


def controls_image(controls: Mapping[str, widgets.Widget], render: Callable[..., "Figure"], *,
                   before: Optional[Callable[..., None]] = None) -> widgets.VBox:
    """Controls in a row above an image: every change of a control redraws ``render(*values)`` (after
    ``before(*values)``, which may enable or disable controls).  The box has the controls as attributes
    (by their keys), ``image``, ``update`` (the callback) and ``setting`` (the values last drawn)."""
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
    box = widgets.VBox([widgets.HBox(list(controls.values())), image])

    def update(_=None):
        values = tuple(c.value for c in controls.values())
        if before is not None:
            before(*values)
        image.value = to_png(render(*values))
        box.setting = values

    for c in controls.values():
        c.observe(update, "value")
    for key, c in controls.items():
        setattr(box, key, c)
    box.image, box.update = image, update
    update()
    return box


def control_output(controls: Sequence[widgets.Widget], render: Callable[[], Figure]) -> widgets.VBox:
    """Controls above an Output that shows ``render()`` now and after every change."""
    from IPython.display import clear_output, display

    out = widgets.Output()

    def update(change=None):
        with out:
            clear_output(wait=True)
            display(show(render()))

    for c in controls:
        c.observe(update, names="value")
    update()
    row = controls[0] if len(controls) == 1 else widgets.HBox(list(controls))
    return widgets.VBox([row, out])


# --------------------------------------------------------------------------- tables
class Table:
    """A small HTML table for the book (``_repr_html_``; plain text otherwise): ``Table(header, rows)``."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[object]]):
        self.header = [str(h) for h in header]
        self.rows = [[str(v) for v in r] for r in rows]

    def _repr_html_(self) -> str:
        import html
        th = "".join(f"<th style='padding:2px 10px'>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td style='padding:2px 10px'>{html.escape(v)}</td>" for v in r) + "</tr>"
                       for r in self.rows)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        return "\n".join(" | ".join(r) for r in [self.header] + self.rows)
