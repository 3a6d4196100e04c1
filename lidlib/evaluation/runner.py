"""The runner: :func:`run` computes the metrics of every (image, method) not yet in the CSV and appends
them (resuming after an interruption); :func:`verify_sample` recomputes a seeded sample of a committed CSV."""
from __future__ import annotations

import json
import math
import numbers
import os
from collections import defaultdict
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from . import metrics as M
from .config import (
    METRICS,
    _check_config,
    _check_methods,
    _Config,
    _expected_groups,
    _model_name,
    _seed_for,
    _settings,
    _stage_list,
    _write_config,
    read_config,
)
from .figures import _save_figures
from .results import COLUMNS, Results, _fmt_param, _read_rows, _rewrite, _write_rows, check_writable, read_results
from .samples import EVAL_SET, Sample, _resolve_source, _validate_samples


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


def _compute(model, sample: Sample, target: int, method: str, groups, cfg: _Config,
             explainers: Optional[dict] = None) -> List[dict]:
    """Rows of the missing groups of one (image, method): one explanation shared by the metrics that need it.
    ``explainers``: method -> :class:`lidlib.Explainer`, kept across images by the caller so that the
    reference pass is computed once per method (the results are the same bit for bit)."""
    from ..explainer import Explainer
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
    :func:`lidlib.evaluation.metrics.probability_change` and :func:`~lidlib.evaluation.metrics.minimal_patch`;
    ``n_copies``, ``max_shift``, ``scale``: :func:`~lidlib.evaluation.metrics.robustness`.  ``figure``: True for
    ``out_csv`` with ``.png``
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
        from ..models import imagenet
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
                             "none: use the default source (composites) or lidlib.evaluation.composite_samples")
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


def _other_arithmetic(model, smp: Sample, target: int, method: str, groups, cfg: _Config, explainers):
    """The rows of one (image, method) recomputed with another thread count, and what that says of float
    rounding: ``(values, cuts, rounding)``, ``values`` keyed like the CSV's rows, ``cuts`` the (stages, param)
    of probability changes at cuts :func:`~lidlib.evaluation.metrics.undecided_cuts` finds undecided, and
    ``rounding`` per stages the heatmaps' largest difference over their largest ``|h|``."""
    import torch
    stages = sorted({g[2] for g in groups if not g[0] == "robustness"})
    e = explainers[method](smp.x, target) if stages else None
    h = {st: M.heatmaps(e, st)[0] for st in stages}
    n = torch.get_num_threads()
    torch.set_num_threads(2 if n == 1 else 1)
    try:
        other = {}
        values = {(r["metric"], r["stages"], r["param"]): float(r["value"])
                  for r in _compute(model, smp, target, method, groups, cfg, other)}
        e2 = other[method](smp.x, target) if stages else None
        h2 = {st: M.heatmaps(e2, st)[0] for st in stages}
    finally:
        torch.set_num_threads(n)
    pc = {g[2] for g in groups if g[1] == "probability-change"}
    cuts = {(st, _fmt_param(r)) for st in pc
            for r, u in zip(cfg.ratios, M.undecided_cuts(h[st], h2[st], cfg.ratios)) if u}
    rounding = {st: float((h[st] - h2[st]).abs().max() / h[st].abs().max().clamp(min=1e-300)) for st in stages}
    return values, cuts, rounding


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
    :func:`eval_samples` returned), checked against the configuration's checksum all the same.
    A row that differs by more is recomputed with another thread count, to measure what float rounding does
    to it. It is counted as *undecided* instead of compared where rounding explains the difference: a
    probability change at a cut :func:`~lidlib.evaluation.metrics.undecided_cuts` finds undecided (there
    other arithmetic removes other pixels), or any value within ``metrics.ROUNDING_FACTOR`` times the larger
    of what the other thread count moves it and the heatmap's rounding relative to its maximum (large for a
    heatmap that its own rounding moves, as LRP-0's at ε ≈ 0; about 10⁻⁶ for most methods).
    Returns ``{"images", "methods", "rows", "max_abs_diff", "undecided", "undecided_max_abs_diff"}``
    (``rows``: the rows compared)."""
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
        undecided, undecided_worst = 0, 0.0
        for smp, t in zip(samples_, targets):
            for m in methods:
                old = {(r["metric"], r["stages"], r["param"]): r["value"] for r in res.select(image=smp.name, method=m)}
                if not old:
                    continue
                groups = [g for g in cfg.groups if any((g[1], g[2]) == k[:2] for k in old)]
                alt = None
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
                        if alt is None:
                            alt = _other_arithmetic(model, smp, t, m, groups, cfg, explainers)
                        values, cuts, rounding = alt
                        moved = max(abs(b - values.get(key, b)), rounding.get(key[1], 0.0))
                        if ((key[0] == "probability-change" and key[1:] in cuts)
                                or d <= atol + rtol * abs(a) + M.ROUNDING_FACTOR * moved):
                            undecided += 1
                            undecided_worst = max(undecided_worst, d)
                            continue
                        raise SampleMismatch(f"{path}: {smp.name} / {m} / {key[0]} {key[1]} {key[2]}: the file says "
                                             f"{a!r}, a recomputation gives {b!r}; the committed results are stale or "
                                             "altered: rerun the evaluation (make eval)")
                    worst = max(worst, d)
                    checked += 1
        if checked == 0:
            raise SampleMismatch(f"{path}: no row could be recomputed (no matching images or methods)")
        return {"images": picked, "methods": methods, "rows": checked, "max_abs_diff": worst,
                "undecided": undecided, "undecided_max_abs_diff": undecided_worst}
    finally:
        if old_size is not None:
            model.input_size = old_size
