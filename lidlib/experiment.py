"""Run the paper's evaluations (Sec. 4.2–4.4, :mod:`lidlib.metrics`) for chosen methods over an image source.

Python::

    from lidlib import experiment
    res = experiment.run("probability-change", ["SIG-LID-IG", "LayerCAM"], out_csv="results.csv")
    res.mean("probability-change")           # {method: (ratios, mean ΔP_c over images)}

Command line (the same, with a progress bar)::

    python -m lidlib.experiment probability-change --methods SIG-LID-IG LayerCAM --images DIR --out results.csv

Metrics: ``probability-change`` (Fig. 8, Table 4), ``multiscale`` (the same for the heatmaps s5 … s54321,
Fig. 9), ``minimal-patch`` (Fig. 11), ``robustness`` (Fig. 14, quantitative) and ``class-discrimination``
(two-object composites with known regions; beyond the paper).  Several metrics in one run share each
(image, method) explanation.

Source: the evaluation set of Ch. 12 (``source=EVAL_SET``, command line ``--eval-set``: :func:`eval_samples`,
210 two-object composites with known regions), or the bundled photos (:data:`lidlib.images.PHOTOS`) and
two-object composites (:func:`composites`) by default, with :func:`lidlib.models.imagenet` as the model; a folder of images
(:func:`lidlib.images.load_folder` conventions); a preprocessed batch; or a list of :class:`Sample`.  The
target of an image is the model's top-1 class, except for the composites of ``class-discrimination``,
which are explained once for each object's class (that object's top-1 class when shown alone).

Output: a tidy CSV, one row per image × method × metric × heatmap × parameter, with the columns
:data:`COLUMNS`; and a PNG figure of the mean curves (or bars) beside it.

Configuration: every setting that changes a value (model, input size, fill, n_steps, seed, baseline, each
method's ε, ratios, radii, a checksum of the image set) goes to ``<csv>.json`` (:func:`config_path`);
resuming a CSV with other settings, or one without its configuration, raises ``ValueError``.
:func:`verify_sample` recomputes a seeded random sample of a committed CSV and raises
:class:`SampleMismatch` on any difference (the book runs it at every build).

Resuming: every (image, method) is computed and written in one piece (one ``write``, flushed and synced),
after all earlier pairs.  A rerun with the same ``out_csv`` reads what is there, keeps the complete
groups of rows, drops incomplete ones (a run killed mid-write) and computes only what is missing, so the
rows are never duplicated.  Everything random (tie-breaking in the removal order, the jitter of
``robustness``) is seeded from ``seed`` and the image's name, so a resumed run gives the rows an
uninterrupted run would have given.  Bad input — an unknown metric or method, an empty or unreadable
folder, an image the model cannot take, a CSV from another model or set-up — raises a ``ValueError``
before any file is written.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import numbers
import os
import sys
import zlib
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import metrics as M
from .methods import get_method

__all__ = ["COLUMNS", "METRICS", "Sample", "Composite", "Results", "run", "read_results", "composites",
           "photo_samples", "composite_samples", "default_source", "folder_samples", "plot_metric", "main",
           "LAYOUTS", "PAIRS", "EVAL_LAYOUTS", "EVAL_SET", "eval_samples", "config_path", "read_config",
           "check_writable", "verify_sample", "SampleMismatch"]

#: the CSV's columns, in order
COLUMNS = ("image", "target", "model", "method", "metric", "stages", "param", "value")

#: metric name → what it writes (``metric`` column values)
METRICS = OrderedDict([
    ("probability-change", ("probability-change",)),
    ("multiscale", ("probability-change",)),
    ("minimal-patch", ("minimal-patch",)),
    ("robustness", ("robustness-pearson", "robustness-sign-flip")),
    ("class-discrimination", ("pos-in-target", "other-mean", "neg-in-other")),
])

#: photo pairs of the default composites (left object, right object)
PAIRS = (("coffee", "chelsea"), ("rocket", "grace_hopper"))
#: composite layouts: where object A and object B go
LAYOUTS = ("halves", "swapped", "stacked", "small")
#: layouts of the evaluation set (:func:`eval_samples`); A is the target, B the other object
EVAL_LAYOUTS = ("halves", "stacked", "small", "small-target", "stacked-small", "stacked-small-target", "inset")
#: the name of the evaluation set as a ``source`` of :func:`run` (command line: ``--eval-set``)
EVAL_SET = "eval-set"


# ---------------------------------------------------------------------------------------------------------------------
# Image sources
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One image to evaluate: ``x`` the preprocessed (1, 3, S, S) input; ``target`` (None: the model's top-1);
    ``image`` (3, S, S) in [0, 1] for display; ``region`` / ``other`` (S, S) bool object masks for
    ``class-discrimination`` (the target's object, the other object)."""
    name: str
    x: torch.Tensor
    target: Optional[int] = None
    image: Optional[torch.Tensor] = None
    region: Optional[torch.Tensor] = None
    other: Optional[torch.Tensor] = None


@dataclass
class Composite:
    """A two-object image: ``classes`` (A, B) are each object's top-1 class when shown alone; ``masks`` (A, B)."""
    name: str
    image: torch.Tensor
    classes: Tuple[int, int]
    masks: Tuple[torch.Tensor, torch.Tensor]
    objects: Tuple[str, str] = ("", "")


def _top1(model, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x).argmax(dim=1)[0])


def _place(canvas: torch.Tensor, img: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    """Paste ``img`` into the box (top, left, h, w): largest centred window of the box's aspect, resized."""
    import torchvision.transforms.functional as TF
    ih, iw = img.shape[-2:]
    ch, cw = (ih, round(ih * w / h)) if iw * h >= ih * w else (round(iw * h / w), iw)
    crop = TF.center_crop(img, [ch, cw])
    canvas[:, top:top + h, left:left + w] = TF.resize(crop, [h, w], antialias=True).clamp(0, 1)
    mask = torch.zeros(canvas.shape[-2:], dtype=torch.bool)
    mask[top:top + h, left:left + w] = True
    return mask


def _layout_image(a: torch.Tensor, b: torch.Tensor, layout: str, size: int, background: float = 0.5):
    """Image (3, S, S) and masks (A, B) of one layout on a neutral grey canvas."""
    canvas = torch.full((3, size, size), float(background))
    half, rest = size // 2, size - size // 2
    if layout == "halves":
        ma, mb = _place(canvas, a, 0, 0, size, half), _place(canvas, b, 0, half, size, rest)
    elif layout == "swapped":
        mb, ma = _place(canvas, b, 0, 0, size, half), _place(canvas, a, 0, half, size, rest)
    elif layout == "stacked":
        ma, mb = _place(canvas, a, 0, 0, half, size), _place(canvas, b, half, 0, rest, size)
    elif layout == "small":          # A keeps its half; B shrunk into a box (3/8 of the side) in the other half
        ma = _place(canvas, a, 0, 0, size, half)
        s = (3 * size) // 8
        mb = _place(canvas, b, (size - s) // 2, half + (rest - s) // 2, s, s)
    elif layout == "small-target":   # A shrunk into a box in the left half, B the right half
        s = (3 * size) // 8
        ma = _place(canvas, a, (size - s) // 2, (half - s) // 2, s, s)
        mb = _place(canvas, b, 0, half, size, rest)
    elif layout == "stacked-small":  # A the top half, B shrunk into a box in the bottom half
        s = (3 * size) // 8
        ma = _place(canvas, a, 0, 0, half, size)
        mb = _place(canvas, b, half + (rest - s) // 2, (size - s) // 2, s, s)
    elif layout == "stacked-small-target":
        s = (3 * size) // 8
        ma = _place(canvas, a, (half - s) // 2, (size - s) // 2, s, s)
        mb = _place(canvas, b, half, 0, rest, size)
    elif layout == "inset":          # A fills the canvas, B an inset (3/8 of the side) in the top-right corner
        s = (3 * size) // 8
        ma = _place(canvas, a, 0, 0, size, size)
        mb = _place(canvas, b, 0, size - s, s, s)
        ma = ma & ~mb
    else:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    return canvas, (ma, mb)


def composites(model, pairs: Sequence[Tuple[str, str]] = PAIRS, layouts: Sequence[str] = LAYOUTS,
               background: float = 0.5) -> List[Composite]:
    """Two-object images from the offline photos, at several positions and scales.

    For each pair ``(a, b)`` of :data:`lidlib.images.PHOTOS` names and each layout: ``"halves"`` (a left, b right,
    as :func:`lidlib.images.composite`), ``"swapped"`` (b left, a right), ``"stacked"`` (a top, b bottom) and
    ``"small"`` (a keeps the left half, b is shrunk into a box of 3/8 of the side, centred in the right half,
    on a neutral grey background).  ``classes`` are each photo's top-1 class on ``model`` when shown alone.
    """
    from . import images
    size = getattr(model, "input_size", 224)
    out = []
    for a_name, b_name in pairs:
        a, b = images.photo(a_name), images.photo(b_name)
        ca, cb = (_top1(model, images.to_model_input(p, model)) for p in (a, b))
        if ca == cb:
            raise ValueError(f"{a_name} and {b_name} have the same top-1 class ({ca}): choose two different objects")
        for layout in layouts:
            img, masks = _layout_image(a, b, layout, size, background)
            out.append(Composite(f"{a_name}+{b_name}/{layout}", img, (ca, cb), masks, (a_name, b_name)))
    return out


def eval_samples(model, photos: Sequence[str] = None, layouts: Sequence[str] = EVAL_LAYOUTS,
                 background: float = 0.5) -> List[Sample]:
    """The evaluation set of Ch. 12: for every ORDERED pair (a, b) of distinct photos of
    :data:`lidlib.images.EVAL_PHOTOS` and every layout of :data:`EVAL_LAYOUTS`, one composite whose target
    is a's class (a's top-1 when shown alone), ``region`` a's box and ``other`` b's box.  Every image is
    different (a|b and b|a are two images), and each has one target: 6 photos × 5 others × 7 layouts =
    210 images with known regions.  Ordered layout-major: the first 30 are every pair in ``"halves"``."""
    from . import images
    photos = tuple(photos or images.EVAL_PHOTOS)
    size = getattr(model, "input_size", 224)
    pics = {n: images.photo(n) for n in photos}
    cls = {n: _top1(model, images.to_model_input(p, model)) for n, p in pics.items()}
    dup = [(a, b) for a in photos for b in photos if a < b and cls[a] == cls[b]]
    if dup:
        raise ValueError(f"photos {dup[0]} have the same top-1 class ({cls[dup[0][0]]}): drop one")
    out = []
    for layout in layouts:
        for a in photos:
            for b in photos:
                if a == b:
                    continue
                img, (ma, mb) = _layout_image(pics[a], pics[b], layout, size, background)
                out.append(Sample(f"{a}+{b}/{layout}", model.preprocess(img)[None], int(cls[a]), img, ma, mb))
    return out


def photo_samples(model, names: Sequence[str] = None) -> List[Sample]:
    """The bundled photos (:data:`lidlib.images.PHOTOS`) as samples (target: top-1)."""
    from . import images
    out = []
    for n in (names or images.PHOTOS):
        img = images.fit(images.photo(n), getattr(model, "input_size", 224))
        out.append(Sample(n, model.preprocess(img)[None], None, img))
    return out


def composite_samples(model, comps: Sequence[Composite] = None, per_object: bool = False) -> List[Sample]:
    """Samples from composites: one per composite (target: top-1 of the composite), or, with ``per_object``,
    one per object (target: that object's class, ``region`` its box, ``other`` the other object's box)."""
    comps = composites(model) if comps is None else comps
    out = []
    for c in comps:
        x = model.preprocess(c.image)[None]
        if not per_object:
            out.append(Sample(c.name, x, None, c.image))
            continue
        for k in (0, 1):
            obj = c.objects[k] or "AB"[k]
            out.append(Sample(f"{c.name}:{obj}", x, int(c.classes[k]), c.image, c.masks[k], c.masks[1 - k]))
    return out


def default_source(model, per_object: bool = False) -> List[Sample]:
    """The photos and the composites (``per_object``: the composites only, once per object)."""
    comps = composites(model)
    if per_object:
        return composite_samples(model, comps, per_object=True)
    return photo_samples(model) + composite_samples(model, comps)


def folder_samples(folder, model) -> List[Sample]:
    """Every image file of ``folder`` (sorted; :data:`lidlib.images.IMAGE_SUFFIXES`), named by its file name."""
    from . import images
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ValueError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in images.IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files ({', '.join(images.IMAGE_SUFFIXES)}) in {folder}")
    out = []
    for p in files:
        try:
            out.append(Sample(p.name, images.load_image(p, model)))
        except Exception as e:  # noqa: BLE001 -- re-raised with the file's name
            raise ValueError(f"cannot read image {p}: {e}") from e
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------

def _param_key(p: str):
    try:
        return (0, float(p), p)
    except ValueError:
        return (1, 0.0, p)


class Results:
    """Rows of a results CSV (dicts with :data:`COLUMNS`; ``value`` a float), and summaries of them."""

    def __init__(self, rows: List[dict], path: Optional[Path] = None, figures: Sequence[Path] = ()):
        self.rows = rows
        self.path = path
        self.figures = list(figures)

    def __len__(self):
        return len(self.rows)

    def __repr__(self):
        return f"Results({len(self.rows)} rows, {len(self.images())} images, methods={self.methods()})"

    def select(self, metric=None, method=None, stages=None, image=None) -> List[dict]:
        def ok(v, want):
            return want is None or (v in want if isinstance(want, (list, tuple, set)) else v == want)
        return [r for r in self.rows if ok(r["metric"], metric) and ok(r["method"], method)
                and ok(r["stages"], stages) and ok(r["image"], image)]

    def methods(self) -> List[str]:
        return list(OrderedDict.fromkeys(r["method"] for r in self.rows))

    def images(self) -> List[str]:
        return list(OrderedDict.fromkeys(r["image"] for r in self.rows))

    def mean(self, metric: str = "probability-change", stages: str = "s5", methods: Sequence[str] = None,
             images: Sequence[str] = None) -> Dict[str, Tuple[List[str], List[float]]]:
        """``{method: (params, mean value over images [and copies]) }``, NaNs left out of the means."""
        out = OrderedDict()
        for m in (methods or self.methods()):
            acc = defaultdict(list)
            for r in self.select(metric, m, stages):
                if images is None or r["image"] in images:
                    acc[r["param"]].append(r["value"])
            if acc:
                params = sorted(acc, key=_param_key)
                out[m] = (params, [_nanmean(acc[p]) for p in params])
        return out

    def per_image(self, metric: str = "probability-change", stages: str = "s5", method: str = None,
                  params: Sequence[str] = None) -> Dict[str, float]:
        """``{image: value}`` of one method: the mean over ``params`` (default: all the image's rows, e.g. the
        mean PC over the nine ratios), NaNs left out.  The unit of :func:`lidlib.metrics.bootstrap_mean`."""
        acc = defaultdict(list)
        want = None if params is None else {str(p) for p in params}
        for r in self.select(metric, method, stages):
            if want is None or r["param"] in want:
                acc[r["image"]].append(r["value"])
        return OrderedDict((k, _nanmean(v)) for k, v in acc.items())

    def count(self, metric: str = "probability-change", stages: str = "s5", method: str = None) -> int:
        """Number of images with rows for ``metric``/``stages`` (and ``method``)."""
        return len({r["image"] for r in self.select(metric, method, stages)})


def _nanmean(v: Sequence[float]) -> float:
    v = [x for x in v if not math.isnan(x)]
    return sum(v) / len(v) if v else float("nan")


def read_results(path) -> Results:
    """Read a results CSV written by :func:`run` (a truncated last line is ignored)."""
    path = Path(path)
    return Results(_read_rows(path)[0], path)


def _read_rows(path: Path) -> Tuple[List[dict], bool]:
    """Rows of an existing CSV and whether its last line was cut off; ValueError for a foreign file."""
    text = path.read_text(encoding="utf-8")
    if not text:
        return [], False
    truncated = not text.endswith("\n")
    lines = text.splitlines(keepends=True)
    if truncated:
        lines = lines[:-1]
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return [], truncated
    if tuple(header) != COLUMNS:
        raise ValueError(f"{path} is not a lidlib results file: its header is {header}, expected {list(COLUMNS)}; "
                         "choose another output file")
    rows = []
    for k, rec in enumerate(reader, start=2):
        if len(rec) != len(COLUMNS):
            raise ValueError(f"{path}, line {k}: expected {len(COLUMNS)} fields, got {len(rec)}")
        r = dict(zip(COLUMNS, rec))
        try:
            r["value"] = float(r["value"])
        except ValueError as e:
            raise ValueError(f"{path}, line {k}: value {r['value']!r} is not a number") from e
        rows.append(r)
    return rows, truncated


# ---------------------------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------------------------

def _fmt_param(p) -> str:
    if isinstance(p, str):
        return p
    if isinstance(p, numbers.Integral):
        return str(int(p))
    return f"{float(p):.6g}"


def _fmt_value(v: float) -> str:
    return repr(float(v))


def _seed_for(seed: int, name: str) -> int:
    """A per-image seed: the run's seed and the image's name, independent of the order of the run."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2 ** 31 - 1)


def _stage_list(stages, default) -> List[str]:
    if stages is None:
        stages = default
    if isinstance(stages, (str, numbers.Integral)):
        stages = [stages]
    return [M.stage_key(s) for s in stages]


@dataclass
class _Config:
    metrics: List[str]
    methods: List[str]
    stages: Dict[str, List[str]]
    ratios: Tuple[float, ...]
    radii: Tuple[int, ...]
    fill: object
    n_copies: int
    max_shift: float
    scale: Tuple[float, float]
    n_steps: Optional[int]
    baseline: object
    seed: int
    groups: List[Tuple[str, str, str, Tuple[str, ...]]] = field(default_factory=list)  # (metric, name, stages, params)


def _expected_groups(cfg: _Config):
    """(run metric, metric column, stages column, params) of every group of rows one (image, method) gets."""
    groups = []
    for m in cfg.metrics:
        for s in cfg.stages[m]:
            if m in ("probability-change", "multiscale"):
                groups.append((m, "probability-change", s, tuple(_fmt_param(r) for r in cfg.ratios)))
            elif m == "minimal-patch":
                groups.append((m, "minimal-patch", s, tuple(_fmt_param(r) for r in cfg.radii)))
            elif m == "robustness":
                ps = tuple(str(k) for k in range(1, cfg.n_copies + 1))
                groups += [(m, "robustness-pearson", s, ps), (m, "robustness-sign-flip", s, ps)]
            elif m == "class-discrimination":
                groups += [(m, name, s, ("",)) for name in METRICS[m]]
    seen, out = set(), []
    for g in groups:               # multiscale and probability-change share their s5 rows
        if g[1:3] not in seen:
            seen.add(g[1:3])
            out.append(g)
    return out


def _check_methods(methods, metrics_, stages, model):
    import lidlib
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    if not methods:
        raise ValueError("give at least one method")
    names = []
    for m in methods:
        name = m if isinstance(m, str) else getattr(m, "name", None)
        try:
            get_method(name)
        except ValueError:
            raise ValueError(f"unknown method {m!r}; valid methods are: {', '.join(lidlib.METHODS)} "
                             "(LRP family with another ε: e.g. 'SG-LRP-0 (ε=0.01)')") from None
        names.append(name)
    if len(set(names)) != len(names):
        raise ValueError(f"methods listed twice: {names}")
    if model is None:
        return names
    model_stages = set(getattr(model, "stages", None) or {})
    for metric, specs in stages.items():
        for s in specs:
            if s == "input":
                cams = [n for n in names if n in ("GradCAM", "LayerCAM", "ScoreCAM")]
                if cams:
                    raise ValueError(f"{', '.join(cams)} have no input relevance: choose a stage, not 'input'")
                continue
            missing = [f"s{d}" for d in s[1:] if f"s{d}" not in model_stages]
            if missing:
                known = ", ".join(sorted(model_stages)) or "none (the model has no `stages`: use stages='input')"
                raise ValueError(f"heatmap {s!r} needs stage(s) {', '.join(missing)}; this model's stages: {known}")
            if s != "s5" and "ScoreCAM" in names:
                raise ValueError(f"ScoreCAM is computed at stage s5 only; it cannot give the heatmap {s!r} "
                                 f"({metric}): drop it or use stages s5")
    return names


def _resolve_source(source, model, per_object: bool) -> List[Sample]:
    if source is None:
        return default_source(model, per_object=per_object)
    if isinstance(source, str) and source == EVAL_SET:
        return eval_samples(model)
    if isinstance(source, (str, os.PathLike)):
        return folder_samples(source, model)
    if isinstance(source, torch.Tensor):
        if source.dim() != 4:
            raise ValueError(f"a tensor source must be a preprocessed batch (N, 3, S, S), got {tuple(source.shape)}")
        return [Sample(str(i), source[i:i + 1]) for i in range(source.shape[0])]
    samples = list(source)
    if not samples:
        raise ValueError("the image source is empty")
    for s in samples:
        if not isinstance(s, Sample):
            raise TypeError(f"a source list must hold lidlib.experiment.Sample objects, got {type(s).__name__}")
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        raise ValueError("sample names must be unique")
    return samples


def _validate_samples(samples: List[Sample], model) -> Tuple[List[Sample], List[int]]:
    """One forward pass per image: the model must take it and return finite logits (1, K).

    Returns the samples with inputs in the model's dtype and device (copies; the caller's are not changed)
    and the targets."""
    import dataclasses
    targets, out = [], []
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    for s in samples:
        if not isinstance(s.x, torch.Tensor) or s.x.dim() != 4 or s.x.shape[0] != 1:
            raise ValueError(f"image {s.name!r}: expected a preprocessed input (1, 3, S, S), got "
                             f"{tuple(s.x.shape) if isinstance(s.x, torch.Tensor) else type(s.x).__name__}")
        s = dataclasses.replace(s, x=s.x.detach().to(device=param.device, dtype=param.dtype)) if param is not None else s
        try:
            with torch.no_grad():
                z = model(s.x)
        except Exception as e:  # noqa: BLE001 -- re-raised with the image's name
            raise ValueError(f"the model cannot take image {s.name!r} of shape {tuple(s.x.shape)}: {e}") from e
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != 1:
            raise ValueError(f"image {s.name!r}: the model must return logits (1, K), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        if not torch.isfinite(z).all():
            raise ValueError(f"image {s.name!r}: the model's output is not finite")
        t = int(z.argmax(dim=1)[0]) if s.target is None else int(s.target)
        if not 0 <= t < z.shape[1]:
            raise ValueError(f"image {s.name!r}: target {t} out of range for {z.shape[1]} classes")
        targets.append(t)
        out.append(s)
    return out, targets


def _existing(path: Path, cfg: _Config, samples, targets, model_name):
    """Read the CSV (if any), check it fits this run, and sort its groups: complete / to drop."""
    if not path.exists():
        return [], set(), set(), False
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a .csv file name")
    rows, truncated = _read_rows(path)
    want = {(s.name, m): t for s, t in zip(samples, targets) for m in cfg.methods}
    by_group = defaultdict(list)
    for r in rows:
        by_group[(r["image"], r["method"], r["metric"], r["stages"])].append(r)
    expected = {(g[1], g[2]): g[3] for g in cfg.groups}
    complete, drop = set(), set()
    for key, rs in by_group.items():
        image, method, metric, stages = key
        if (image, method) not in want or (metric, stages) not in expected:
            continue                                  # another run's rows: left alone
        for r in rs:
            if r["model"] != model_name:
                raise ValueError(f"{path} holds results of model {r['model']!r} for image {image!r}; this run uses "
                                 f"{model_name!r}: write to another file")
            if int(r["target"]) != want[(image, method)]:
                raise ValueError(f"{path} holds results for image {image!r} with target {r['target']}, but this run's "
                                 f"target is {want[(image, method)]}: write to another file")
        params = [r["param"] for r in rs]
        exp = expected[(metric, stages)]
        if sorted(params) == sorted(exp):
            complete.add(key)
        elif set(params) <= set(exp):
            drop.add(key)                             # an interrupted write: recomputed
        else:
            raise ValueError(f"{path} holds {metric} ({stages}) rows for {image!r}/{method} with parameters "
                             f"{sorted(set(params) - set(exp))} that this run does not use: write to another file "
                             "or rerun with the same settings")
    return rows, complete, drop, truncated


def config_path(out_csv) -> Path:
    """Where the configuration of a results CSV is kept: ``<csv>.json`` beside it."""
    return Path(out_csv).with_suffix(".json")


def _describe(value):
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return {"tensor": list(t.shape), "crc32": zlib.crc32(t.numpy().tobytes())}
    return value


def _image_set(source, samples: Sequence[Sample]) -> dict:
    """What identifies the image set: its kind, its size and a checksum of every name, target and input."""
    crc = 0
    for s in samples:
        crc = zlib.crc32(f"{s.name}|{s.target}|".encode("utf-8"), crc)
        crc = zlib.crc32(s.x.detach().cpu().float().contiguous().numpy().tobytes(), crc)
    if isinstance(source, str) and source == EVAL_SET:
        kind = EVAL_SET
    elif isinstance(source, (str, os.PathLike)):
        kind = str(Path(source).expanduser().resolve())
    else:
        kind = "default" if source is None else type(source).__name__
    return {"source": kind, "n_images": len(samples), "crc32": crc}


def _settings(cfg: "_Config", model, source, samples, methods) -> dict:
    """Every setting that changes a value in the CSV (the configuration file's ``settings``)."""
    import lidlib
    rules = {}
    for m in methods:
        meth = get_method(m)
        rule = getattr(meth, "rule", None)
        rules[m] = (None if rule is None else {"top": meth.top, "rule": rule.name, "eps": rule.eps,
                                               "cutoff": rule.cutoff, "increment": meth.increment})
    return {"model": _model_name(model), "model_source": str(getattr(model, "source", "")),
            "input_size": int(getattr(model, "input_size", 0) or 0), "fill": _describe(cfg.fill),
            "n_steps": cfg.n_steps, "seed": cfg.seed, "baseline": "zeros" if cfg.baseline is None else
            _describe(cfg.baseline), "ratios": list(cfg.ratios), "radii": list(cfg.radii),
            "n_copies": cfg.n_copies, "max_shift": cfg.max_shift, "scale": list(cfg.scale),
            "image_set": _image_set(source, samples), "methods": rules}


def _check_config(path: Path, settings: dict) -> dict:
    """The configuration to write: ``settings`` if the CSV is new; refuse a CSV made with other settings."""
    import json
    cpath = config_path(path)
    if not path.exists() or path.stat().st_size == 0:
        return settings
    if not cpath.exists():
        raise ValueError(f"{path} exists but has no configuration file {cpath.name}: its settings are unknown, "
                         "so it cannot be resumed; write to another file (or delete it)")
    old = json.loads(cpath.read_text(encoding="utf-8")).get("settings", {})
    diff = []
    for k, v in settings.items():
        if k == "methods":
            diff += [f"method {m}: {old.get('methods', {}).get(m)} != {r}" for m, r in v.items()
                     if m in old.get("methods", {}) and old["methods"][m] != r]
        elif json.loads(json.dumps(v)) != old.get(k):
            diff.append(f"{k}: {old.get(k)!r} in the file, {v!r} now")
    if diff:
        raise ValueError(f"{path} was made with other settings; resuming would mix results ({'; '.join(diff)}). "
                         "Rerun with the same settings or write to another file")
    merged = dict(settings)
    merged["methods"] = {**old.get("methods", {}), **settings["methods"]}
    return merged


def _write_config(path: Path, settings: dict, cfg: "_Config", argv=None) -> None:
    import json
    import lidlib
    cpath = config_path(path)
    doc = {"settings": settings, "metrics": cfg.metrics, "stages": cfg.stages,
           "lidlib": getattr(lidlib, "__version__", ""), "torch": torch.__version__,
           "command": list(argv) if argv is not None else None}
    tmp = cpath.with_name(cpath.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, cpath)


def check_writable(out_csv) -> Path:
    """Refuse an output file that cannot be written (missing, read-only or unwritable folder) before any work."""
    out_csv = Path(out_csv).expanduser()
    if out_csv.is_dir():
        raise ValueError(f"{out_csv} is a folder; give a .csv file name")
    folder = out_csv.parent
    if not folder.is_dir():
        raise ValueError(f"the folder of {out_csv} does not exist: create it first")
    for f in (out_csv, config_path(out_csv)):
        if f.exists() and not os.access(f, os.W_OK):
            raise ValueError(f"{f} is read-only: make it writable or write to another file")
    probe = folder / f".lidlib-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to the folder {folder} ({e.strerror or e}): choose a writable output folder") \
            from None
    return out_csv


def _write_rows(path: Path, rows: List[dict], header: bool, mode: str = "a") -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r[c] if c != "value" else _fmt_value(r[c]) for c in COLUMNS])
    with open(path, mode, encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())                       # one write per (image, method)
        f.flush()
        os.fsync(f.fileno())


def _rewrite(path: Path, rows: List[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_rows(tmp, rows, header=True, mode="w")
    os.replace(tmp, path)


def _compute(model, sample: Sample, target: int, method: str, groups, cfg: _Config,
             explainers: Optional[dict] = None) -> List[dict]:
    """Rows of the missing groups of one (image, method): one explanation shared by the metrics that need it.
    ``explainers``: method -> :class:`lidlib.Explainer`, kept across images by the caller so that the
    reference pass is computed once per method (the results are the same bit for bit)."""
    from .explainer import Explainer
    explainers = {} if explainers is None else explainers
    seed = _seed_for(cfg.seed, sample.name)
    rows = []
    e = None
    done = set()
    for run_metric, name, stages, params in groups:
        if (run_metric, stages) in done:
            continue
        if run_metric == "robustness":
            res = M.robustness(model, sample.x, target, method, stages=stages, n_copies=cfg.n_copies,
                               max_shift=cfg.max_shift, scale=cfg.scale, seed=seed, n_steps=cfg.n_steps,
                               baseline=cfg.baseline)
            vals = {"robustness-pearson": res.pearson[0], "robustness-sign-flip": res.sign_flip[0]}
            done.add((run_metric, stages))
            for n, v in vals.items():
                if any(g[1] == n and g[2] == stages for g in groups):
                    rows += [(n, stages, str(k + 1), float(v[k])) for k in range(cfg.n_copies)]
            continue
        if e is None:
            if method not in explainers:
                explainers[method] = Explainer(model, method, n_steps=cfg.n_steps, baseline=cfg.baseline)
            e = explainers[method](sample.x, target)
        h = M.heatmaps(e, stages)
        if name == "probability-change":
            curve = M.probability_change(model, sample.x, target, h, cfg.ratios, fill=cfg.fill, seed=seed)
            rows += [(name, stages, _fmt_param(r), float(v)) for r, v in zip(cfg.ratios, curve.delta[0])]
        elif name == "minimal-patch":
            curve = M.minimal_patch(model, sample.x, target, h, cfg.radii, fill=cfg.fill, seed=seed)
            rows += [(name, stages, _fmt_param(r), float(v)) for r, v in zip(cfg.radii, curve.delta[0])]
        elif run_metric == "class-discrimination":
            d = M.class_discrimination(h, sample.region, sample.other)
            done.add((run_metric, stages))
            vals = {"pos-in-target": d.pos_in_target[0], "other-mean": d.other_mean[0],
                    "neg-in-other": d.neg_in_other[0]}
            rows += [(n, stages, "", float(v)) for n, v in vals.items()
                     if any(g[1] == n and g[2] == stages for g in groups)]
    model_name = _model_name(model)
    return [dict(zip(COLUMNS, (sample.name, str(target), model_name, method, n, s, p, v))) for n, s, p, v in rows]


def _model_name(model) -> str:
    return str(getattr(model, "display_name", type(model).__name__))


def run(metric, methods, source=None, out_csv="results.csv", seed: int = 0, model=None, *, n_steps: Optional[int] = 10,
        stages=None, ratios: Sequence[float] = M.RATIOS, radii: Sequence[int] = M.RADII, fill="reference",
        n_copies: int = 4, max_shift: float = 0.1, scale: Tuple[float, float] = (0.9, 1.1), baseline=None,
        figure: Union[bool, str, os.PathLike] = True, progress: bool = True, limit: Optional[int] = None,
        argv: Optional[Sequence[str]] = None) -> Results:
    """Run ``metric`` (a name of :data:`METRICS` or a list of them) for ``methods`` over ``source``; write ``out_csv``.

    ``source``: None (photos + composites, or the composites once per object for ``class-discrimination``), a
    folder, a preprocessed batch (N, 3, S, S) or a list of :class:`Sample`.  ``model``: None for
    :func:`lidlib.models.imagenet`.  ``stages``: the heatmaps to evaluate, a list of specs (``5``, ``"s5"``,
    ``"s54"``, ``"input"``; a tuple is a LIST of heatmaps, so write ``"s54"`` for the multi-scale map); default
    ``["s5"]``, and ``s5 … s54321`` for ``multiscale``.  ``ratios``/``radii``/``fill``: see
    :func:`lidlib.metrics.probability_change` and :func:`~lidlib.metrics.minimal_patch`; ``n_copies``,
    ``max_shift``, ``scale``: :func:`~lidlib.metrics.robustness`.  ``figure``: True for ``out_csv`` with ``.png``
    (one PNG per metric, ``<stem>-<metric>.png`` when there are several), a path, or False.  ``limit``: only
    the first ``limit`` images.  Returns the :class:`Results` of the whole CSV.

    The settings (model, input size, fill, n_steps, seed, baseline, each method's ε, ratios, radii, the
    image set's checksum, …) are written to ``<csv>.json`` (:func:`config_path`); resuming a CSV made with
    other settings raises ``ValueError``, as does an output folder that cannot be written (before any work).
    """
    metrics_ = [metric] if isinstance(metric, str) else list(metric)
    if not metrics_:
        raise ValueError("give at least one metric")
    for m in metrics_:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; valid metrics are: {', '.join(METRICS)}")
    if len(set(metrics_)) != len(metrics_):
        raise ValueError(f"metrics listed twice: {metrics_}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if isinstance(n_copies, bool) or not isinstance(n_copies, numbers.Integral) or n_copies < 1:
        raise ValueError(f"n_copies must be an integer >= 1, got {n_copies!r}")
    ratios = tuple(float(r) for r in ratios)
    for r in ratios:
        if not 0 <= r <= 1:
            raise ValueError(f"ratios must lie in [0, 1], got {r}")
    radii = tuple(radii)
    for r in radii:
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0:
            raise ValueError(f"radii must be integers >= 0, got {r!r}")
    if isinstance(fill, str) and fill not in ("reference", "mean"):
        raise ValueError(f"fill must be 'reference', 'mean', a number or a tensor, got {fill!r}")
    out_csv = check_writable(out_csv)
    _check_methods(methods, metrics_, {}, None)            # names only, before the model is loaded
    st = {m: _stage_list(stages, M.SCALES if m == "multiscale" else ["s5"]) for m in metrics_}
    if model is None:
        from .models import imagenet
        model = imagenet()
    if getattr(model, "training", False):
        raise ValueError("the model is in training mode; call model.eval() first")
    names = _check_methods(methods, metrics_, st, model)
    cfg = _Config(metrics_, names, st, ratios, radii, fill, int(n_copies), float(max_shift),
                  (float(scale[0]), float(scale[1])), n_steps, baseline, int(seed))
    cfg.groups = _expected_groups(cfg)
    per_object = "class-discrimination" in metrics_
    samples = _resolve_source(source, model, per_object)
    all_samples = samples
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
            raise ValueError(f"limit must be None or an integer >= 1, got {limit!r}")
        samples = samples[:int(limit)]
    if per_object:
        bad = [s.name for s in samples if s.region is None or s.other is None]
        if bad:
            raise ValueError(f"class-discrimination needs object regions (Sample.region, Sample.other); {bad[0]!r} has "
                             "none: use the default source (composites) or lidlib.experiment.composite_samples")
    samples, targets = _validate_samples(samples, model)
    model_name = _model_name(model)
    old_rows, complete, drop, truncated = _existing(out_csv, cfg, samples, targets, model_name)
    settings = _check_config(out_csv, _settings(cfg, model, source, all_samples, names))
    # ---- everything is checked: from here on files are written ----
    _write_config(out_csv, settings, cfg, argv)
    if drop or truncated:
        kept = [r for r in old_rows if (r["image"], r["method"], r["metric"], r["stages"]) not in drop]
        _rewrite(out_csv, kept)
    header = not out_csv.exists() or out_csv.stat().st_size == 0
    jobs = [(s, t, m) for s, t in zip(samples, targets) for m in names]
    from tqdm.auto import tqdm
    bar = tqdm(total=len(jobs), desc=f"{'+'.join(metrics_)}", unit="pair", disable=not progress)
    explainers = {}
    try:
        for s, t, m in jobs:
            missing = [g for g in cfg.groups if (s.name, m, g[1], g[2]) not in complete]
            if missing:
                bar.set_postfix_str(f"{s.name} · {m}", refresh=False)
                rows = _compute(model, s, t, m, missing, cfg, explainers)
                _write_rows(out_csv, rows, header)
                header = False
            bar.update(1)
    finally:
        bar.close()
    res = read_results(out_csv)
    if figure:
        res.figures = _save_figures(res, cfg, out_csv, figure, [s.name for s in samples])
    return res


def read_config(path) -> dict:
    """The configuration file of a results CSV (:func:`config_path`), as a dict."""
    import json
    cpath = config_path(path)
    if not cpath.exists():
        raise ValueError(f"{path} has no configuration file {cpath.name}")
    return json.loads(cpath.read_text(encoding="utf-8"))


class SampleMismatch(ValueError):
    """A committed result that a recomputation does not reproduce."""


def verify_sample(path, model, source=None, n_images: int = 2, methods: Sequence[str] = None, seed: int = 0,
                  atol: float = 1e-4, rtol: float = 1e-4, samples: Sequence[Sample] = None) -> dict:
    """Recompute a seeded random sample of the rows of a results CSV and raise :class:`SampleMismatch` if
    any value differs beyond ``atol + rtol·|value|``.

    ``n_images`` images are drawn (seeded by ``seed``) from those in the CSV; for each, every method of
    ``methods`` (default: all in the CSV) is recomputed with the settings of the CSV's configuration file
    (which must match ``model``, ``source`` and this lidlib: :func:`run`'s refusal rules apply).
    ``source``: the image source the CSV was made from (default: the one its configuration names, for the
    evaluation set and the default source); ``samples``: that source already built (e.g. the list
    :func:`eval_samples` returned), checked against the configuration's checksum all the same.  Returns ``{"images", "methods", "rows", "max_abs_diff"}``."""
    import random
    doc = read_config(path)
    st = doc["settings"]
    res = read_results(path)
    old_size = getattr(model, "input_size", None)
    try:
        if st.get("input_size"):
            model.input_size = int(st["input_size"])
        if source is None:
            kind = st["image_set"]["source"]
            if kind not in (EVAL_SET, "default"):
                raise ValueError(f"{path} was made from {kind!r}: pass that source to verify_sample")
            source = EVAL_SET if kind == EVAL_SET else None
        metrics_ = doc["metrics"]
        per_object = "class-discrimination" in metrics_
        samples = _resolve_source(source, model, per_object) if samples is None else list(samples)
        fill = st["fill"]
        if isinstance(fill, dict):
            raise ValueError("verify_sample cannot rebuild a tensor fill; use fill 'reference', 'mean' or a number")
        if st["baseline"] != "zeros":
            raise ValueError("verify_sample cannot rebuild a tensor baseline")
        cfg = _Config(metrics_, [], {m: list(v) for m, v in doc["stages"].items()}, tuple(st["ratios"]),
                      tuple(st["radii"]), fill, int(st["n_copies"]), float(st["max_shift"]), tuple(st["scale"]),
                      st["n_steps"], None, int(st["seed"]))
        cfg.groups = _expected_groups(cfg)
        settings = _settings(cfg, model, source, samples, [m for m in st["methods"]])
        for k in ("model", "input_size", "image_set"):
            if json.loads(json.dumps(settings[k])) != st[k]:
                raise SampleMismatch(f"{path}: {k} is {st[k]!r} in its configuration but {settings[k]!r} here")
        by_name = {s.name: s for s in samples}
        methods = list(methods or res.methods())
        with_rows = {r["image"] for r in res.rows if r["method"] in methods}      # images these methods reached
        in_csv = [n for n in res.images() if n in by_name and n in with_rows]
        picked = random.Random(seed).sample(in_csv, min(n_images, len(in_csv)))
        samples_, targets = _validate_samples([by_name[n] for n in picked], model)
        checked, worst, explainers = 0, 0.0, {}
        for smp, t in zip(samples_, targets):
            for m in methods:
                old = {(r["metric"], r["stages"], r["param"]): r["value"] for r in res.select(image=smp.name, method=m)}
                if not old:
                    continue
                groups = [g for g in cfg.groups if any((g[1], g[2]) == k[:2] for k in old)]
                for r in _compute(model, smp, t, m, groups, cfg, explainers):
                    key = (r["metric"], r["stages"], r["param"])
                    if key not in old:
                        continue
                    a, b = old[key], float(r["value"])
                    if math.isnan(a) and math.isnan(b):
                        checked += 1
                        continue
                    d = abs(a - b)
                    if not d <= atol + rtol * abs(a):
                        raise SampleMismatch(f"{path}: {smp.name} / {m} / {key[0]} {key[1]} {key[2]}: the file says "
                                             f"{a!r}, a recomputation gives {b!r}; the committed results are stale or "
                                             "altered: rerun the evaluation (make eval)")
                    worst = max(worst, d)
                    checked += 1
        if checked == 0:
            raise SampleMismatch(f"{path}: no row could be recomputed (no matching images or methods)")
        return {"images": picked, "methods": methods, "rows": checked, "max_abs_diff": worst}
    finally:
        if old_size is not None:
            model.input_size = old_size


# ---------------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------------

_LABELS = {"probability-change": ("ratio of pixels removed (least relevant first)", "ΔP_c"),
           "minimal-patch": ("patch radius r (side 2r + 1)", "ΔP_c"),
           "robustness": ("", "mean over copies and images"),
           "class-discrimination": ("", "mean over images")}


def plot_metric(ax, results: Results, metric: str = "probability-change", stages: str = "s5",
                methods: Sequence[str] = None, images: Sequence[str] = None, **kwargs):
    """Draw the mean curve of each method (probability change, minimal patch) on ``ax``."""
    import matplotlib
    colors = matplotlib.colormaps["tab20"].colors
    for k, (m, (params, vals)) in enumerate(results.mean(metric, stages, methods, images).items()):
        style = dict(marker="os^vD<>ph*"[k % 10], ms=3.5, color=colors[(2 * k) % 20 + (k // 10) % 2], label=m)
        style.update(kwargs)
        ax.plot([float(p) for p in params], vals, **style)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel(_LABELS.get(metric, ("", ""))[0])
    ax.set_ylabel(_LABELS.get(metric, ("", ""))[1])
    ax.grid(alpha=0.3)


def _save_figures(res: Results, cfg: _Config, out_csv: Path, figure, images: Sequence[str]) -> List[Path]:
    from matplotlib.figure import Figure
    paths = []
    for k, m in enumerate(cfg.metrics):
        if figure is True:
            path = out_csv.with_suffix(".png") if len(cfg.metrics) == 1 else \
                out_csv.with_name(f"{out_csv.stem}-{m}.png")
        else:
            path = Path(figure) if len(cfg.metrics) == 1 else Path(figure).with_name(f"{Path(figure).stem}-{m}.png")
        specs = cfg.stages[m]
        fig = Figure(figsize=(4.2 * len(specs) + 1.6 if m != "multiscale" else 4.2 * len(cfg.methods), 3.6),
                     layout="constrained")
        if m in ("probability-change", "minimal-patch"):
            name = "probability-change" if m == "probability-change" else "minimal-patch"
            axes = fig.subplots(1, len(specs), squeeze=False)[0]
            for ax, s in zip(axes, specs):
                plot_metric(ax, res, name, s, cfg.methods, images)
                ax.set_title(f"{m}, {s} ({len(images)} images)", fontsize=9)
            axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        elif m == "multiscale":
            axes = fig.subplots(1, len(cfg.methods), squeeze=False)[0]
            for ax, meth in zip(axes, cfg.methods):
                for s in specs:
                    for _, (params, vals) in res.mean("probability-change", s, [meth], images).items():
                        ax.plot([float(p) for p in params], vals, marker="o", ms=3, label=f"{meth}-{s}")
                ax.axhline(0, color="k", lw=0.6)
                ax.set_xlabel(_LABELS["probability-change"][0])
                ax.set_ylabel("ΔP_c")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        else:
            axes = fig.subplots(1, len(METRICS[m]), squeeze=False)[0]
            for ax, name in zip(axes, METRICS[m]):
                means = [_nanmean([r["value"] for r in res.select(name, meth, specs[0]) if r["image"] in images])
                         for meth in cfg.methods]
                ax.bar(range(len(means)), means)
                ax.set_xticks(range(len(means)), cfg.methods, rotation=45, ha="right", fontsize=7)
                ax.set_title(f"{name} ({specs[0]})", fontsize=9)
                ax.axhline(0, color="k", lw=0.6)
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    import lidlib
    p = argparse.ArgumentParser(
        prog="python -m lidlib.experiment",
        description="Run the paper's evaluations (Sec. 4.2-4.4) for chosen methods over an image folder "
                    "(default: the bundled photos and two-object composites) and write a tidy CSV and a PNG.",
        epilog="example: python -m lidlib.experiment probability-change --methods SIG-LID-IG LayerCAM "
               "--images DIR --out results.csv")
    p.add_argument("metric", nargs="+", choices=list(METRICS), metavar="METRIC",
                   help=f"one or more of: {', '.join(METRICS)}")
    p.add_argument("--methods", nargs="+", required=True, metavar="NAME",
                   help=f"method names, or 'all' (all but ScoreCAM): {', '.join(lidlib.METHODS)}")
    p.add_argument("--images", metavar="DIR", help="image folder (default: bundled photos and composites)")
    p.add_argument("--eval-set", action="store_true",
                   help="the evaluation set of Ch. 12 (210 two-object composites with known regions)")
    p.add_argument("--size", type=int, default=None, metavar="S",
                   help="input side in pixels (default: the model's, 224); images are resized to it")
    p.add_argument("--out", default="results.csv", metavar="CSV", help="output CSV (resumed if it exists)")
    p.add_argument("--figure", default=None, metavar="PNG", help="figure path (default: next to the CSV); 'none' for none")
    p.add_argument("--weights", metavar="PTH", help="VGG-16 ImageNet state dict (default: lidlib.models.imagenet())")
    p.add_argument("--stages", nargs="+", metavar="S", help="heatmaps, e.g. s5 s4 s54321 (default s5; multiscale: s5..s54321)")
    p.add_argument("--n-steps", type=int, default=10, help="path samples for IG rules and SIG (default 10)")
    p.add_argument("--ratios", nargs="+", type=float, default=list(M.RATIOS))
    p.add_argument("--radii", nargs="+", type=int, default=list(M.RADII))
    p.add_argument("--fill", default="reference", help="'reference' (0 after preprocessing), 'mean', or a number")
    p.add_argument("--copies", type=int, default=4, help="robustness: jittered copies per image")
    p.add_argument("--max-shift", type=float, default=0.1, help="robustness: largest shift, share of the side")
    p.add_argument("--scale", nargs=2, type=float, default=[0.9, 1.1], metavar=("LO", "HI"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 is often fastest on a busy machine)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import lidlib
    args = _parser().parse_args(argv)
    methods = args.methods
    if methods == ["all"]:
        methods = [m for m in lidlib.METHODS if m != "ScoreCAM"]
    fill = args.fill
    if fill not in ("reference", "mean"):
        try:
            fill = float(fill)
        except ValueError:
            print(f"error: --fill must be 'reference', 'mean' or a number, got {fill!r}", file=sys.stderr)
            return 2
    figure = True if args.figure is None else (False if args.figure.lower() == "none" else args.figure)
    # ---- everything that does not need the model is checked before it is loaded ----
    errors = []
    if args.n_steps < 1:
        errors.append(f"--n-steps must be >= 1, got {args.n_steps}")
    if args.size is not None and args.size < 32:
        errors.append(f"--size must be >= 32 pixels, got {args.size}")
    if args.images and args.eval_set:
        errors.append("give --images DIR or --eval-set, not both")
    try:
        _check_methods(methods, args.metric, {}, None)
        check_writable(args.out)
    except ValueError as e:
        errors.append(str(e))
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        from .models import imagenet
        model = imagenet(args.weights)
        if args.size is not None:
            model.input_size = int(args.size)          # our own model: every image is resized to it
        source = EVAL_SET if args.eval_set else args.images
        res = run(args.metric, methods, source, args.out, args.seed, model, n_steps=args.n_steps,
                  stages=args.stages, ratios=args.ratios, radii=args.radii, fill=fill, n_copies=args.copies,
                  max_shift=args.max_shift, scale=tuple(args.scale), figure=figure,
                  progress=not args.no_progress, limit=args.limit,
                  argv=["python", "-m", "lidlib.experiment"] + list(argv if argv is not None else sys.argv[1:]))
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(res)} rows in {res.path}" + (f"; figure: {', '.join(map(str, res.figures))}" if res.figures else ""))
    for m in args.metric:
        for name in METRICS[m]:
            for s in _stage_list(args.stages, M.SCALES if m == "multiscale" else ["s5"]):
                for meth, (params, vals) in res.mean(name, s, methods).items():
                    print(f"{name:>20} {s:>7} {meth:>15}: " + " ".join(f"{v:+.4f}" for v in vals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
