"""The command line: ``python -m lidlib.experiment METRIC ... --methods ... --out results.csv``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from ..methods import last_stage_only
from . import metrics as M
from .config import METRICS, _check_methods, _stage_list
from .results import check_writable
from .runner import run
from .samples import EVAL_SET


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
    p.add_argument("--figure", default=None, metavar="PNG",
                   help="figure path (default: next to the CSV); 'none' for none")
    p.add_argument("--weights", metavar="PTH", help="VGG-16 ImageNet state dict (default: lidlib.models.imagenet())")
    p.add_argument("--stages", nargs="+", metavar="S",
                   help="heatmaps, e.g. s5 s4 s54321 (default s5; multiscale: s5..s54321)")
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
        methods = [m for m in lidlib.METHODS if not last_stage_only(m)]
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
        from ..models import imagenet
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
