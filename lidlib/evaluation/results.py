"""The results file: a tidy CSV with the columns :data:`COLUMNS` (one row per image × method × metric ×
heatmap × parameter), written one (image, method) group at a time, read back as :class:`Results`; its
configuration file is ``<csv>.json`` (:func:`config_path`)."""
from __future__ import annotations

import csv
import io
import math
import numbers
import os
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

#: the CSV's columns, in order
COLUMNS = ("image", "target", "model", "method", "metric", "stages", "param", "value")


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
        mean PC over the nine ratios), NaNs left out.  The unit of :func:`lidlib.evaluation.metrics.bootstrap_mean`."""
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


def _fmt_param(p) -> str:
    if isinstance(p, str):
        return p
    if isinstance(p, numbers.Integral):
        return str(int(p))
    return f"{float(p):.6g}"


def _fmt_value(v: float) -> str:
    return repr(float(v))


def config_path(out_csv) -> Path:
    """Where the configuration of a results CSV is kept: ``<csv>.json`` beside it."""
    return Path(out_csv).with_suffix(".json")


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
