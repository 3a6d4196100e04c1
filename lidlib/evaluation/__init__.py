"""The evaluation (Sec. 4.2–4.4): the paper's metrics, run for chosen methods over an image source.

The package, by job: :mod:`~lidlib.evaluation.metrics` (the metrics themselves, bootstrap intervals and
verdicts), :mod:`~lidlib.evaluation.samples` (image sources), :mod:`~lidlib.evaluation.config` (the settings
of a run and its ``<csv>.json``), :mod:`~lidlib.evaluation.results` (the results CSV), :mod:`~lidlib.evaluation.runner`
(:func:`run`, :func:`verify_sample`), :mod:`~lidlib.evaluation.figures` and :mod:`~lidlib.evaluation.cli`
(``python -m lidlib.experiment``).

Python::

    from lidlib import evaluation
    res = evaluation.run("probability-change", ["SIG-LID-IG", "LayerCAM"], out_csv="results.csv")
    res.mean("probability-change")           # {method: (ratios, mean ΔP_c over images)}

Command line (the same, with a progress bar)::

    python -m lidlib.experiment probability-change --methods SIG-LID-IG LayerCAM --images DIR --out results.csv

Metrics: ``probability-change`` (Fig. 8, Table 4), ``multiscale`` (the same for the heatmaps s5 … s54321,
Fig. 9), ``minimal-patch`` (Fig. 11), ``robustness`` (Fig. 14, quantitative) and ``class-discrimination``
(two-object composites with known regions; beyond the paper).  Several metrics in one run share each
(image, method) explanation.

Source: the evaluation set of Ch. 12 (``source=EVAL_SET``, command line ``--eval-set``: :func:`eval_samples`,
210 two-object composites with known regions), or the bundled photos (:data:`lidlib.images.PHOTOS`) and
two-object composites (:func:`composites`) by default, with :func:`lidlib.models.imagenet` as the model; a folder of
images (:func:`lidlib.images.load_folder` conventions); a preprocessed batch; or a list of :class:`Sample`.  The
target of an image is the model's top-1 class, except for the composites of ``class-discrimination``,
which are explained once for each object's class (that object's top-1 class when shown alone).

Output: a tidy CSV, one row per image × method × metric × heatmap × parameter, with the columns
:data:`COLUMNS`; and a PNG figure of the mean curves (or bars) beside it.

Configuration: every setting that changes a value (model, input size, fill, n_steps, seed, baseline, each
method's ε, ratios, radii, a checksum of the image set) goes to ``<csv>.json`` (:func:`config_path`);
resuming a CSV with other settings, or one without its configuration, raises ``ValueError``.
:func:`verify_sample` recomputes a seeded random sample of a committed CSV and raises
:class:`SampleMismatch` on any difference that float rounding does not explain (the book runs it at every
build; Ch. 12 shows why a probability change can move by far more than its rounding).

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

from . import metrics
from .cli import main
from .config import METRICS, read_config
from .figures import plot_metric
from .results import COLUMNS, Results, check_writable, config_path, read_results
from .runner import SampleMismatch, run, verify_sample
from .samples import (
                      EVAL_LAYOUTS,
                      EVAL_SET,
                      LAYOUTS,
                      PAIRS,
                      Composite,
                      Sample,
                      composite_samples,
                      composites,
                      default_source,
                      eval_samples,
                      folder_samples,
                      photo_samples,
)

__all__ = ["COLUMNS", "METRICS", "Sample", "Composite", "Results", "run", "read_results", "composites",
           "photo_samples", "composite_samples", "default_source", "folder_samples", "plot_metric", "main",
           "LAYOUTS", "PAIRS", "EVAL_LAYOUTS", "EVAL_SET", "eval_samples", "config_path", "read_config",
           "check_writable", "verify_sample", "SampleMismatch", "metrics"]
