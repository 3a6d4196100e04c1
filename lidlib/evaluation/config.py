"""The configuration of a run: the metrics, stages and parameters, the rows each (image, method) gets, and
every setting that changes a value, kept in ``<csv>.json`` and checked when a CSV is resumed."""
from __future__ import annotations

import numbers
import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..methods import get_method, last_stage_only
from . import metrics as M
from .results import _fmt_param, config_path
from .samples import EVAL_SET, Sample

#: metric name → what it writes (``metric`` column values)
METRICS = OrderedDict([
    ("probability-change", ("probability-change",)),
    ("multiscale", ("probability-change",)),
    ("minimal-patch", ("minimal-patch",)),
    ("robustness", ("robustness-pearson", "robustness-sign-flip")),
    ("class-discrimination", ("pos-in-target", "other-mean", "neg-in-other")),
])


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
                cams = [n for n in names if getattr(get_method(n), "stage_maps", False)]
                if cams:
                    raise ValueError(f"{', '.join(cams)} have no input relevance: choose a stage, not 'input'")
                continue
            missing = [f"s{d}" for d in s[1:] if f"s{d}" not in model_stages]
            if missing:
                known = ", ".join(sorted(model_stages)) or "none (the model has no `stages`: use stages='input')"
                raise ValueError(f"heatmap {s!r} needs stage(s) {', '.join(missing)}; this model's stages: {known}")
            last = [n for n in names if last_stage_only(n)]
            if s != "s5" and last:
                raise ValueError(f"{', '.join(last)} is computed at stage s5 only; it cannot give the heatmap {s!r} "
                                 f"({metric}): drop it or use stages s5")
    return names


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


def read_config(path) -> dict:
    """The configuration file of a results CSV (:func:`config_path`), as a dict."""
    import json
    cpath = config_path(path)
    if not cpath.exists():
        raise ValueError(f"{path} has no configuration file {cpath.name}")
    return json.loads(cpath.read_text(encoding="utf-8"))


def _model_name(model) -> str:
    return str(getattr(model, "display_name", type(model).__name__))
