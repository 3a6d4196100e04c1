"""Peak resident memory of one explanation against one plain forward + backward (not a test).

    python scripts/memory.py                                   # VGG-16 and EfficientNet-Lite0, batch 1 and 8
    python scripts/memory.py --models vgg16 --batches 1 --method LID-Taylor

Every figure comes from a fresh Python process: it builds the model and the input, then resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``, Linux) and runs ONE call; the figure is the
peak resident memory during that call minus the resident memory just before it (model and input
loaded).  ``explainer``: TWO calls of one :class:`lidlib.Explainer`, the first computing and caching
the reference pass, the second reusing it, so its figure includes the cached reference (whose exact
size, the bytes of its tensors, is printed separately).  ``g⊙Y`` (every layer only): a plain
gradient that returns ``g ⊙ Y^l`` for every layer (:func:`benchmark.every_layer_product`), every
layer's attribution in the simplest plain PyTorch, no rule and no reference — a point of comparison,
not a strict floor (lidlib writes each relevance into the increment it holds; this makes new tensors).

The processes run with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``): every
tensor then gets its own mapping, returned to the system when it is freed, so the peak is that of
what is alive.  With glibc's default the threshold grows as large blocks are freed, later tensors
come from the heap and stay resident after they are freed, and the peak depends on the order of
earlier allocations (VGG-16's plain gradient read 99–155 MB from run to run; with the fixed
threshold 95.3–95.5 MB).  ``--glibc-default`` measures with the default.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def one(model_name: str, batch: int, what: str, method: str, n_steps, layers=None) -> dict:
    import torch
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.dirname(HERE))
    from benchmark import every_layer_product, plain_gradient, vgg16_with_biases

    import lidlib
    from lidlib import models
    torch.set_num_threads(2)
    model = vgg16_with_biases() if model_name == "vgg16" else models.efficientnet_lite0()
    torch.manual_seed(1)
    x = torch.randn(batch, 3, 224, 224)
    explainer = lidlib.Explainer(model, method, n_steps=n_steps, layers=layers)
    if what == "plain":
        fn = lambda: plain_gradient(model, x, 3)
    elif what == "g⊙Y":
        fn = lambda: every_layer_product(model, x, 3)
    elif what == "explain":
        fn = lambda: lidlib.explain(model, x, 3, method, n_steps=n_steps, layers=layers)
    else:
        def fn():
            explainer(x, 3)                          # caches the reference; its result is dropped
            return explainer(x, 3)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                 # reset VmHWM (peak RSS) to the current RSS
    before = _rss_kb("VmRSS")
    out = fn()
    peak = _rss_kb("VmHWM")
    del out
    ref = explainer._reference
    tensors = [] if ref is None else (list(ref.pass_.outputs.values()) + list(ref.pass_.inputs.values())
                                      + [t for p in ref.pass_.pooled.values() for t in p.values()])
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return dict(model=model_name, batch=batch, what=what, peak_mb=(peak - before) / 1024,
                cache_mb=sum(storages.values()) / 2 ** 20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vgg16", "efficientnet"], choices=["vgg16", "efficientnet"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--method", default="SIG-LID-IG")
    ap.add_argument("--n-steps", default="10", help="an integer, or 'exact'")
    ap.add_argument("--input-only", action="store_true",
                    help="keep only the input's relevance (layers=[]), the output a plain gradient gives")
    ap.add_argument("--glibc-default", action="store_true",
                    help="glibc's own (dynamic) mmap threshold: figures that depend on allocation history")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "BATCH", "WHAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    n_steps = None if args.n_steps == "exact" else int(args.n_steps)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.one[2], args.method, n_steps,
                             [] if args.input_only else None)))
        return
    env = dict(os.environ)
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    layers = ", input only" if args.input_only else ", every layer"
    print(f"{args.method} (n={args.n_steps}){layers}: peak RSS of one call minus RSS before it, fresh process each"
          + ("" if args.glibc_default else ", mmap threshold 128 KiB"))
    whats = ("plain", "explain", "explainer") + (() if args.input_only else ("g⊙Y",))
    print(f"{'model':<14}{'batch':>6}{'plain MB':>10}{'explain MB':>12}{'×':>6}{'explainer MB':>14}{'×':>6}"
          f"{'cache MB':>10}" + ("" if args.input_only else f"{'g⊙Y MB':>10}{'×':>6}"))
    for name in args.models:
        for b in args.batches:
            row = {}
            for what in whats:
                out = subprocess.run([sys.executable, __file__, "--one", name, str(b), what, "--method", args.method,
                                      "--n-steps", args.n_steps] + (["--input-only"] if args.input_only else []),
                                     capture_output=True, text=True, check=True, env=env)
                row[what] = json.loads(out.stdout.strip().splitlines()[-1])
            p, e, r = (row[w]["peak_mb"] for w in ("plain", "explain", "explainer"))
            gy = row.get("g⊙Y", {}).get("peak_mb")
            print(f"{name:<14}{b:>6}{p:>10.0f}{e:>12.0f}{e / p:>6.2f}{r:>14.0f}{r / p:>6.2f}"
                  f"{row['explainer']['cache_mb']:>10.0f}" + ("" if gy is None else f"{gy:>10.0f}{gy / p:>6.2f}"))


if __name__ == "__main__":
    main()
