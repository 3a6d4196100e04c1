"""Profile the path-average rules (Eq. 21) in isolation on VGG-16's real layer inputs (not a test).

    python scripts/profile_rules.py                         # lidlib/rules.py
    python scripts/profile_rules.py --rules old.py lidlib/rules.py   # versions side by side, interleaved
    python scripts/profile_rules.py --profiler              # also torch.profiler "Self CPU time total"
    python scripts/profile_rules.py --threads 1 --clock cpu # CPU time: steadier on a busy machine
    python scripts/profile_rules.py --pipeline --threads 1 --clock cpu   # whole explain() calls instead

The inputs of every ReLU and MaxPool2d of ``benchmark.vgg16_with_biases()`` are collected with
forward hooks for x = randn (seed 1) and x̂ = 0; each rule is then timed per layer and summed:
building the substitute (forward hook) and running its backward (``vjp``) on a gradient of ones.
Figures are the minimum and median over ``--repeats`` interleaved rounds (the machine is shared and
noisy), next to one plain input gradient of the whole network measured in the same rounds.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import CORE, plain_gradient, vgg16_with_biases  # noqa: E402


def load_rules(path, i=0):
    """``lidlib.rules`` itself, or the rules module in ``path`` loaded inside the lidlib package."""
    if path is None:
        from lidlib import rules
        return rules
    import lidlib  # noqa: F401  (the package its relative imports need)
    spec = importlib.util.spec_from_file_location(f"lidlib._rules_under_test_{i}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def collect(model, x, x_ref):
    """``[(module, x, x̂, y, ŷ)]`` for every ReLU / MaxPool2d call."""
    kinds = (nn.ReLU, nn.MaxPool2d)
    inplace = [m for m in model.modules() if getattr(m, "inplace", False)]
    for m in inplace:
        m.inplace = False
    rec = {}

    def hook(mod, args, out):
        rec.setdefault(mod, []).append((args[0].detach().clone(), out.detach().clone()))
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(x_ref)
        ref = {m: list(v) for m, v in rec.items()}
        rec.clear()
        model(x)
    for h in hs:
        h.remove()
    for m in inplace:
        m.inplace = True
    return [(m, xa, xr, ya, yr) for m in rec for (xa, ya), (xr, yr) in zip(rec[m], ref[m])]


def run_rule(rules, kind, layers, n):
    """Build every substitute of ``kind`` and run its backward once."""
    for m, x, xr, y, yr in layers:
        if (kind == "relu") != isinstance(m, nn.ReLU):
            continue
        xg = x.detach().requires_grad_(True)     # an alias: no copy
        f = rules.elementwise_substitute if kind == "relu" else rules.maxpool_substitute
        out = f(m, xg, xr, y, yr, n)
        torch.autograd.grad(out, xg, torch.ones_like(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", nargs="+", default=[None], metavar="PATH",
                    help="rules.py files to profile side by side (default: lidlib's own)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profiler", action="store_true")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, steadier on a shared machine (use with --threads 1)")
    ap.add_argument("--pipeline", action="store_true",
                    help="time whole lidlib.explain calls (as benchmark.py, lidlib's own rules) instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = vgg16_with_biases()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224)
    layers = [] if args.pipeline else collect(model, x, torch.zeros_like(x))
    jobs = {"plain gradient": lambda: plain_gradient(model, x, 3)}
    if args.pipeline:
        import lidlib
        for m, n in CORE:
            jobs[f"{m} (n={'exact' if n is None else n})"] = lambda m=m, n=n: lidlib.explain(model, x, 3, m, n_steps=n)
        args.rules = []
    for i, path in enumerate(args.rules):
        rules = load_rules(path, i)
        tag = f"[{i}] " if len(args.rules) > 1 else ""
        for kind in ("relu", "maxpool"):
            for n in (10, None):
                jobs[f"{tag}{kind} n={'exact' if n is None else n}"] = (
                    lambda rules=rules, kind=kind, n=n: run_rule(rules, kind, layers, n))
    for fn in jobs.values():
        fn()
    times = {k: [] for k in jobs}
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    for _ in range(args.repeats):                 # interleaved: every round runs every job
        for k, fn in jobs.items():
            t = clock()
            fn()
            times[k].append(clock() - t)
    for i, path in enumerate(args.rules):
        print(f"[{i}] {path or 'lidlib/rules.py'}")
    print(f"{args.threads} threads, {args.clock} time, min / median of {args.repeats} rounds (ms)"
          + ("" if args.pipeline else "; each rule: all VGG-16 layers of its kind, substitute + backward"))
    base, taylor = min(times["plain gradient"]), min(times.get("LID-Taylor (n=10)", [0]))
    for k, v in times.items():
        v = sorted(v)
        ratios = f"{v[0] / base:>8.2f} × gradient{v[0] / taylor:>8.2f} × LID-Taylor" if args.pipeline else ""
        print(f"  {k:<24}{v[0] * 1e3:>9.1f}{v[len(v) // 2] * 1e3:>9.1f}{ratios}")
    if args.profiler:
        from torch.profiler import ProfilerActivity, profile
        for k, fn in jobs.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            total = sum(e.self_cpu_time_total for e in prof.key_averages())
            print(f"  profiler {k:<24} self CPU total {total / 1e3:9.1f} ms")
            if os.environ.get("PROFILE_TABLE"):
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
