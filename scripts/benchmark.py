"""Speed benchmark (not a test): median time per method as a ratio to one plain input gradient.

    python scripts/benchmark.py                       # VGG-16 (random weights, non-zero biases)
    python scripts/benchmark.py --models vgg16 efficientnet --all --oracles
    python scripts/benchmark.py --explainer --batches 1 8   # lidlib.Explainer vs lidlib.explain
    python scripts/benchmark.py --models resnet50 mobilenet_v3_large efficientnet_b0 convnext_tiny --oracles

The torchvision families (issue 11) have random weights with non-zero biases and the BatchNorm
statistics of random inputs (``--bn-stats init``: torchvision's initial ones, under which MobileNetV3's
and EfficientNet's activations vanish with depth; see :func:`torchvision_with_biases`).

Rows marked "input" keep only the input's relevance (``layers=[]``), the output a plain gradient
gives; the others keep the relevance of every layer.  Two rows put the methods beside plain PyTorch
measured in the same run.  ``--explainer``: "plain g ⊙ Y at every layer", a plain gradient that holds
every layer's output and writes ``g ⊙ Y^l`` per layer (Gradient × Input per layer, no rule, no
reference: :func:`every_layer_product`) — what returning every layer's attribution costs in the
simplest code (not a strict floor: its tensor hooks and fresh products cost more than lidlib's
recorder, which writes into the increment).  On a network with smooth activations:
"floor: gradient + 10 σ' samples", a plain gradient plus the 10 samples of σ' per activation element
that SIG-LID-IG (n = 10) takes, by lidlib's own sampling (:func:`sampling_floor`); no n = 10
explanation can take less with that routine.

Every figure is a median over ``--repeats`` runs after a warm-up, batch 1, 224×224, CPU, and the
baseline (forward + backward of the logit) is measured in the same run, interleaved with the
methods in a new order each round (:func:`measure_all`), so the ratios are comparable on a noisy machine.

``--malloc keep`` runs with glibc told to keep freed memory for reuse (``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` at 1 GiB), as jemalloc or tcmalloc do, which PyTorch's CPU performance
guide recommends.  By default glibc gives large freed blocks back to the system, and every new large
tensor then costs page faults: on a machine where they are slow (here: a fresh 12.8 MB tensor of
zeros takes 7.5 ms, 0.2 ms in reused memory), that charges each extra tensor an explanation allocates
far more than its arithmetic.  The two settings separate the two costs.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import torch

import lidlib
from lidlib import models, rules

CORE = [("LID-Taylor", 10), ("SIG-LID-IG", 10), ("SIG-LID-IG", None)]
#: the same with only the input's relevance kept (layers=[]), the output a plain gradient gives
INPUT_ONLY = [("LID-Taylor", 10), ("SIG-LID-IG", 10), ("SIG-LID-IG", None)]


def vgg16_with_biases(seed=0):
    torch.manual_seed(seed)
    m = models.vgg16(weights=None)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mod.bias.normal_(0, 0.05)
    return m.eval()


#: torchvision classifiers beyond VGG (random weights, eval mode)
TORCHVISION = ("resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "vit_b_16")


def torchvision_with_biases(name, seed=0, bn_stats="random"):
    """torchvision's ``name`` with random weights, non-zero biases and (``bn_stats="random"``) the
    BatchNorm statistics of 8 random 224×224 inputs.  With torchvision's initial statistics (mean 0,
    variance 1: ``bn_stats="init"``) the activations of MobileNetV3 and EfficientNet vanish with depth
    and the logits hardly depend on the input (EfficientNet-B0: ΔZ = 0 exactly between x and x̂ = 0),
    so that 73–78% of their activations' paths are short enough for σ' at one point."""
    import torchvision
    torch.manual_seed(seed)
    m = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and mod.bias is not None:
                mod.bias.normal_(0, 0.05)
            if isinstance(mod, torch.nn.Linear) and not mod.weight.any():     # (ViT's head starts at 0)
                mod.weight.normal_(0, mod.in_features ** -0.5)
        norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
        if bn_stats == "random" and norms:
            for mod in norms:
                mod.reset_running_stats()
                mod.momentum = None                       # (the plain average over the batch)
            m.train()(torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(seed)))
    return m.eval()


def plain_gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    z = model(x)
    (g,) = torch.autograd.grad(z[:, target].sum(), x)
    return g


def gradient_with_hooks(model, x, target, hooks: dict):
    """:func:`plain_gradient` with the forward hooks ``{module: hook}`` on for the call."""
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    try:
        return plain_gradient(model, x, target)
    finally:
        for h in handles:
            h.remove()


def every_layer_product(model, x, target):
    """Every layer's attribution in the simplest plain PyTorch: a plain gradient that also holds each
    layer's output ``Y^l`` until the backward pass reaches it and writes ``g ⊙ Y^l`` there (Gradient ×
    Input per layer, one new tensor per layer, no rule, no reference), returned as a list."""
    out = []

    def hold(module, args, y):
        if isinstance(y, torch.Tensor) and y.requires_grad:
            y.register_hook(lambda g, y=y: out.append(g * y))
    gradient_with_hooks(model, x, target, {m: hold for m in model.modules() if next(m.children(), None) is None})
    return out


def smooth_kernels(model) -> dict:
    """``{layer: σ' kernel}`` of the model's smooth activations with a fused kernel (:func:`lidlib.rules._kernel`)."""
    return {m: k for m in model.modules() if (k := rules._kernel(m)) is not None}


def sampling_floor(model, x, target, kernels: dict, references: dict, n_steps=10):
    """A floor for SIG-LID-IG with ``n_steps`` samples on a network of smooth activations: a plain
    gradient, plus the n-sample mean of σ' (Eq. 21) over every smooth activation's input on the path
    from 0, by the fused kernel autograd itself runs, block by block in cache
    (:func:`lidlib.rules._sampled_mean`, what an explanation computes there) — nothing else: no rule,
    reference pass, record or substitute.  ``kernels``: :func:`smooth_kernels`, looked up once;
    ``references``: the zero reference inputs, made on the first call and kept, as an Explainer keeps
    its reference.  Where this alone exceeds a target, no rule meets it."""
    def sample(module, args, y):
        with torch.no_grad():
            xs = args[0].detach()
            ref = references.get(module)
            if ref is None or ref.shape != xs.shape:
                ref = references[module] = torch.zeros_like(xs)
            rules._sampled_mean(kernels[module], xs, ref, n_steps)
    return gradient_with_hooks(model, x, target, {m: sample for m in kernels})


def measure_all(fns: dict, repeats: int):
    """Seconds of every round per named callable, interleaved, after a warm-up; a callable whose
    warm-up raises is reported as not running here and left out.  Each round runs the callables in
    a new (seeded) order: a call's time depends on what the call before it left to the allocator
    (VGG-16, batch 1: the Explainer's SIG-LID-IG took 1.58× a gradient right after the gradient and
    1.82–1.95× right after the every-layer g ⊙ Y), so a fixed order would favour some rows."""
    failed = []
    for k, fn in list(fns.items()):
        try:
            fn()                                  # warm-up
        except Exception as err:                  # e.g. Captum DeepLift on a network that reuses a ReLU
            print(f"{k}: does not run here ({type(err).__name__}: {str(err)[:90]})")
            failed.append(k)
    fns = {k: fn for k, fn in fns.items() if k not in failed}
    times = {k: [] for k in fns}
    order, shuffle = list(fns), random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for k in order:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return times


def oracles(model, x, target, baseline):
    out = {}
    try:
        from captum.attr import DeepLift, IntegratedGradients
        ig = IntegratedGradients(model)
        out["Captum IG (n=10)"] = lambda: ig.attribute(x, baselines=baseline, target=target, n_steps=10,
                                                       method="riemann_right")
        out["Captum DeepLift"] = lambda: DeepLift(model).attribute(x, baselines=baseline, target=target)
    except ImportError:
        pass
    try:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlus

        def zennit_eps_plus():
            with Gradient(model=model, composite=EpsilonPlus()) as attributor:
                attributor(x, torch.eye(1000)[[target]])
        out["Zennit EpsilonPlus"] = zennit_eps_plus
    except ImportError:
        pass
    return out


def explainer_rows(model, name, batches, repeats, threads):
    """SIG-LID-IG through :class:`lidlib.Explainer` (reference pass cached) and through
    :func:`lidlib.explain`, as ratios to one plain gradient of the same batch, measured interleaved."""
    for b in batches:
        torch.manual_seed(1)
        x = torch.randn(b, 3, 224, 224)
        target = 3
        fns = {"plain gradient": lambda: plain_gradient(model, x, target),
               "plain g ⊙ Y at every layer": lambda: every_layer_product(model, x, target)}
        for n in (10, None):
            label = "exact" if n is None else n
            explainer = lidlib.Explainer(model, "SIG-LID-IG", n_steps=n)
            fns[f"Explainer SIG-LID-IG (n={label})"] = lambda e=explainer: e(x, target)
            fns[f"explain SIG-LID-IG (n={label})"] = lambda n=n: lidlib.explain(model, x, target, "SIG-LID-IG",
                                                                                n_steps=n)
            only = lidlib.Explainer(model, "SIG-LID-IG", n_steps=n, layers=[])
            fns[f"Explainer SIG-LID-IG (n={label}) input"] = lambda e=only: e(x, target)
        times = measure_all(fns, repeats)
        base = statistics.median(times["plain gradient"])
        print(f"\n{name}: Explainer, batch {b}, 224x224, {threads} threads, {repeats} runs")
        print(f"{'method':<42}{'median ms':>10}{'× gradient':>12}{'min–max ×':>14}")
        for k, v in times.items():
            ratios = [t / g for t, g in zip(v, times["plain gradient"])]     # per round, same round's gradient
            print(f"{k:<42}{statistics.median(v) * 1e3:>10.1f}{statistics.median(v) / base:>12.2f}"
                  f"{min(ratios):>7.2f}–{max(ratios):<6.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vgg16"], choices=["vgg16", "efficientnet", *TORCHVISION])
    ap.add_argument("--all", action="store_true", help="every method of lidlib.METHODS")
    ap.add_argument("--oracles", action="store_true", help="also Captum and Zennit where they apply")
    ap.add_argument("--scorecam", action="store_true", help="with --all: include ScoreCAM (one forward per channel)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--explainer", action="store_true", help="only the lidlib.Explainer rows (SIG-LID-IG)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch sizes of the --explainer rows")
    ap.add_argument("--bn-stats", choices=["random", "init"], default="random",
                    help="BatchNorm statistics of the torchvision families: of random inputs, or as initialised")
    ap.add_argument("--malloc", choices=["glibc", "keep"], default="glibc",
                    help="keep: glibc keeps freed memory for reuse (no page faults for new tensors); see above")
    args = ap.parse_args()
    keep = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    if args.malloc == "keep" and any(os.environ.get(k) != v for k, v in keep.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **keep})   # (read at start-up)
    stats = "of random inputs" if args.bn_stats == "random" else "as initialised"
    print(f"allocator: glibc{', freed memory kept for reuse' if args.malloc == 'keep' else ' (default)'}; "
          f"BatchNorm statistics of the torchvision families: {stats}")
    torch.set_num_threads(args.threads)
    for name in args.models:
        model = (vgg16_with_biases() if name == "vgg16" else models.efficientnet_lite0() if name == "efficientnet"
                 else torchvision_with_biases(name, bn_stats=args.bn_stats))
        if args.explainer:
            explainer_rows(model, name, args.batches, args.repeats, args.threads)
            continue
        torch.manual_seed(1)
        x = torch.randn(1, 3, 224, 224)
        baseline = torch.zeros_like(x)
        target = 3
        fns = {"plain gradient": lambda: plain_gradient(model, x, target)}
        kernels = smooth_kernels(model)
        if kernels:
            zero_refs = {}
            fns["floor: gradient + 10 σ' samples"] = lambda: sampling_floor(model, x, target, kernels, zero_refs)
        runs = ([(m, 10) for m in lidlib.METHODS if m != "ScoreCAM" or args.scorecam]
                + [("LID-IG", None), ("SIG-LID-IG", None)]) if args.all else CORE
        for m, n in runs:
            fns[f"{m} (n={'exact' if n is None else n})"] = (lambda m=m, n=n: lidlib.explain(model, x, target, m,
                                                                                             n_steps=n))
        if not args.all:
            for m, n in INPUT_ONLY:
                fns[f"{m} (n={'exact' if n is None else n}) input"] = (
                    lambda m=m, n=n: lidlib.explain(model, x, target, m, n_steps=n, layers=[]))
        if args.oracles:
            fns.update(oracles(model, x, target, baseline))
        times = measure_all(fns, args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["plain gradient"]
        taylor = med.get("LID-Taylor (n=10)")
        print(f"\n{model.display_name if hasattr(model, 'display_name') else name}: batch 1, 224x224, "
              f"{args.threads} threads, median of {args.repeats}")
        print(f"{'method':<34}{'median ms':>10}{'× gradient':>12}{'min–max ×':>14}{'× LID-Taylor':>14}")
        for k, v in med.items():
            ratios = [t / g for t, g in zip(times[k], times["plain gradient"])]   # per round, same round's gradient
            rel = f"{v / taylor:>14.2f}" if taylor else ""
            print(f"{k:<34}{v * 1e3:>10.1f}{v / base:>12.2f}{min(ratios):>7.2f}–{max(ratios):<6.2f}{rel}")


if __name__ == "__main__":
    main()
