"""Where one explanation's time goes (not a test): the phases of ``lidlib.explain`` beside a plain
gradient and a no-grad forward of the same model, measured in the same run.

    python scripts/phases.py                                    # MobileNetV3-Large, 224 and 32 px, exact
    python scripts/phases.py --models efficientnet_b0 vgg16 --sizes 224 --n-steps 10

At 32×32 the arithmetic is negligible, and what is left is the fixed cost per module: PyTorch's
own, and lidlib's hooks and rules.  The phases are timed by wrapping ``lidlib.engine.reference_pass``,
``lidlib.engine.top_relevance`` and ``torch.autograd.grad`` for the duration of the script; the
"actual forward" is the time between the reference pass and the top.  Medians over ``--repeats``
calls after two warm-ups, batch 1; the two baselines interleaved (:func:`benchmark.measure_all`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

import torch

import lidlib
from lidlib import api, engine

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import TORCHVISION, measure_all, plain_gradient, torchvision_with_biases, vgg16_with_biases  # noqa: E402

PHASES = [("checks (prepare)", "prepare start", "prepare end"), ("reference pass", "ref start", "ref end"),
          ("actual forward", "ref end", "top start"), ("top", "top start", "backward start"),
          ("backward", "backward start", "backward end"), ("relevance, result", "backward end", "propagate end")]


def stamp(events: dict, obj, name: str, label: str) -> None:
    """Wrap ``obj.name`` so that each call writes its start and end times into ``events``."""
    inner = getattr(obj, name)

    def timed(*args, **kwargs):
        events[f"{label} start"] = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            events[f"{label} end"] = time.perf_counter()
    setattr(obj, name, timed)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilenet_v3_large"], choices=["vgg16", *TORCHVISION])
    ap.add_argument("--sizes", nargs="+", type=int, default=[224, 32])
    ap.add_argument("--method", default="SIG-LID-IG")
    ap.add_argument("--n-steps", default="exact", help="a number of path samples, or exact")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    n = None if args.n_steps == "exact" else int(args.n_steps)
    torch.set_num_threads(args.threads)
    events: dict = {}
    stamp(events, api, "prepare", "prepare")
    stamp(events, api, "propagate", "propagate")
    stamp(events, engine, "reference_pass", "ref")
    stamp(events, engine, "top_relevance", "top")
    stamp(events, torch.autograd, "grad", "backward")
    for name in args.models:
        model = vgg16_with_biases() if name == "vgg16" else torchvision_with_biases(name)
        for size in args.sizes:
            torch.manual_seed(1)
            x = torch.randn(1, 3, size, size)
            phases, total = defaultdict(list), []
            explain = lambda: lidlib.explain(model, x, 3, args.method, n_steps=n)   # noqa: E731
            for i in range(args.repeats + 2):
                events.clear()
                t = time.perf_counter()
                explain()
                if i >= 2:
                    total.append(time.perf_counter() - t)
                    for label, start, end in PHASES:
                        if start in events and end in events:
                            phases[label].append(events[end] - events[start])
            base = measure_all({"plain gradient": lambda: plain_gradient(model, x, 3),
                                "no-grad forward": lambda: torch.no_grad()(model)(x)}, args.repeats)
            gradient, forward = (statistics.median(base[k]) * 1e3 for k in ("plain gradient", "no-grad forward"))
            print(f"\n{name}, {size}x{size}, {args.method} (n={args.n_steps}), {args.threads} threads, "
                  f"median of {args.repeats}")
            print(f"{'':<22}{'ms':>9}{'× gradient':>12}")
            rows = [("plain gradient", gradient), ("no-grad forward", forward),
                    ("explain, total", statistics.median(total) * 1e3)]
            rows += [(label, statistics.median(v) * 1e3) for label, v in phases.items()]
            for label, ms in rows:
                print(f"{label:<22}{ms:>9.1f}{ms / gradient:>12.2f}")


if __name__ == "__main__":
    main()
