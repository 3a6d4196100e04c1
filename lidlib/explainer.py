"""``Explainer``: :func:`lidlib.explain` for repeated calls, with the reference pass computed once.

Every LID explanation forwards the reference ``X̂`` through the network (Algorithm 1, step 1) before
the actual pass; for one model and one reference that pass gives the same tensors every time.  An
:class:`Explainer` keeps them (a :class:`lidlib.engine.Reference`) and reuses them while nothing they
depend on has changed, so each call costs one forward and one backward pass::

    explainer = lidlib.Explainer(model, "SIG-LID-IG", n_steps=10)
    e = explainer(x, target)                  # == lidlib.explain(model, x, target, "SIG-LID-IG", n_steps=10)
    r = explainer.attribute(x, target=3)      # Captum's spelling: the input relevance R(X)
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .api import _check_method, explain, prepare
from .checks import _check_eval, state_tensors, walk
from .comparison import Comparison
from .engine import Reference, exclusive, propagate, reference_pass
from .explanation import Explanation
from .methods import Method, get_method


class Explainer:
    """A method bound to a model: ``explainer(x, target)`` equals, bit for bit,
    ``lidlib.explain(model, x, target, method, baseline=..., n_steps=..., layers=...)``.

    The reference pass (the layers' ``X̂^l``, ``Ŷ^l`` and the reference logits ``Ẑ``) is computed at
    the first call and reused while all of these are unchanged: the model's modules (identity,
    ``training`` flag, forward hooks), its parameters and buffers (identity, storage and
    ``_version``, which every in-place change such as ``p.add_(1)``, ``optimizer.step()``,
    ``load_state_dict`` or a batch-norm update bumps), the baseline (identity and ``_version`` of
    the tensor, or the number), the reference's shape, dtype and device, and the method's middle rule
    (which decides what the reference records).  Any change computes it again.  Not seen: changes made through
    ``tensor.data`` (they bypass the version counter) and plain attributes such as a LeakyReLU's
    ``negative_slope``: call :meth:`reset` after such changes.

    The reference keeps only what the rules read and the outputs ``Ŷ^l`` of the layers kept
    (``layers``) — not those of ReLU-like layers, which each call recomputes from the ``X̂^l`` their
    rule reads (:func:`lidlib.rules.derived_reference`).  ``method``, ``baseline``, ``n_steps`` and
    ``layers`` are plain attributes and may be reassigned between calls: ``n_steps`` never
    invalidates the reference, nor do ``layers`` among those it recorded (``layers=None`` records
    every layer).  The LRP family (no reference) and the comparison methods (IG, CAMs) are passed on
    to :func:`lidlib.explain` unchanged.
    No hooks stay on the model between calls and the model is left unchanged; calls hold the model's
    lock (:func:`lidlib.engine.exclusive`), so one explainer may be used from several threads.  The
    cached reference keeps those tensors of one reference forward pass alive (batch 1 for a single
    reference; with ``layers=[]`` on VGG-16: the ReLUs' inputs and the max-pools' window images,
    ``scripts/memory.py`` measures it); :meth:`reset` releases them.
    """

    def __init__(self, model: nn.Module, method: Union[str, Method] = "SIG-LID-IG", *,
                 baseline: Optional[torch.Tensor] = None, n_steps: Optional[int] = 10,
                 layers: Optional[Sequence[str]] = None):
        _check_eval(model)
        _check_method(get_method(method))
        self.model, self.method = model, method
        self.baseline, self.n_steps, self.layers = baseline, n_steps, layers
        self.reference_passes = 0          # how many reference passes were run (for tests and benchmarks)
        self.reset()

    def reset(self) -> None:
        """Forget the cached reference pass (the next call computes it again)."""
        self._reference: Optional[Reference] = None
        self._key = self._alive = None

    def __call__(self, x: torch.Tensor, target) -> Explanation:
        """The explanation of class ``target`` at the batch ``x`` (see :func:`lidlib.explain`)."""
        return self._explain(x, target, self.baseline)

    def attribute(self, inputs: torch.Tensor, target=None, baselines=None) -> torch.Tensor:
        """Captum's spelling: the relevance of the input ``R(X)``, shaped like ``inputs``.

        ``baselines``: the reference for this call (``None``: the explainer's own ``baseline``,
        itself zeros by default, as Captum's).  ``target`` is required (class indices)."""
        if target is None:
            raise TypeError("attribute needs target=... (a class index or a (B,) tensor of them)")
        return self._explain(inputs, target, self.baseline if baselines is None else baselines).input

    def _explain(self, x, target, baseline) -> Explanation:
        m = _check_method(get_method(self.method))
        _check_eval(self.model)
        with exclusive(self.model):
            if isinstance(m, Comparison) or not m.needs_reference:
                return explain(self.model, x, target, m, baseline=baseline, n_steps=self.n_steps, layers=self.layers)
            call = prepare(self.model, x, target, m, baseline, self.n_steps, self.layers)
            return propagate(self.model, call.x, call.target, m, call.baseline, call.n_steps, call.keep,
                             self._cached(m, call, baseline))

    def _cached(self, m: Method, call, baseline) -> Reference:
        alive, key = self._fingerprint(m, call.baseline, baseline)
        kept = self._reference.keep if self._reference is not None else None
        covered = kept is None or (call.keep is not None and call.keep <= kept)
        if self._reference is None or key != self._key or not covered:
            self.reset()                   # release the old reference before computing the new one
            self._reference = reference_pass(self.model, call.baseline, m, shared=True, x_shape=call.x.shape,
                                             keep=call.keep)
            self._key, self._alive = key, alive
            self.reference_passes += 1
        return self._reference

    def _fingerprint(self, m: Method, ref: torch.Tensor, baseline):
        """Everything the reference pass depends on; ``alive`` keeps the objects whose ids it holds."""
        model = self.model
        modules = [m for _, m in walk(model)]
        tensors = state_tensors(model)
        given = (id(baseline), baseline._version) if isinstance(baseline, torch.Tensor) else ("value", baseline)
        key = (tuple((id(t), t.data_ptr(), t._version) for t in tensors),
               tuple((id(mod), mod.training, tuple(mod._forward_hooks), tuple(mod._forward_pre_hooks))
                     for mod in modules),
               given, tuple(ref.shape), ref.dtype, ref.device, m.rule)
        return tensors + modules + [baseline], key

    def __repr__(self):
        name = getattr(self.method, "name", self.method)
        return (f"Explainer({type(self.model).__name__}, {name!r}, n_steps={self.n_steps}, "
                f"reference cached={self._reference is not None})")
