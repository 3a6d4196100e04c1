"""Figures of a results file: the mean curves (or bars) of each metric, by method."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from .config import METRICS, _Config
from .results import Results, _nanmean

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
