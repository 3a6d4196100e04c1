"""The engine: one reference pass, one forward pass with the middle rule, one backward pass.

This is the two-step algorithm of Sec. 2.3 and Algorithm 1: the backward signal is propagated
layer by layer (Eq. 17, 22), and every layer's relevance is read off as the signal times the
increment (Eq. 15, 23, 24) — ``R(Y^l) = g^{l+1} ⊙ ΔY^l``, or ``g ⊙ Y^l`` without increment (Eq. 18).
Path averages are per layer (Eq. 21), so they cost element-wise work, not extra network passes.
"""
from __future__ import annotations

import dis
import sys
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .checks import _check_eval, walk, walking
from .explanation import Explanation
from .methods import Method
from .rules import (
    FAMILIES,
    apply_rule,
    call_layer,
    derived_reference,
    family,
    function_family,
    layer_kind,
    product_rule,
    reference_needs,
    self_attention,
    supported_layers,
    tiled_pool,
    unexplained,
)
from .top import top_relevance


def check_model(model: nn.Module) -> None:
    """Raise a clear error for a model in training mode or with a layer lidlib cannot explain
    (the layer families of :data:`lidlib.rules.FAMILIES` say which)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_eval(model)
    for name, m in walk(model):
        fam = family(m)
        if fam is not None and fam.kind == "refused":
            raise TypeError(f"lidlib cannot explain layer {name or '<model>'!r} ({type(m).__name__}): {fam.hint}.")
        if next(m.children(), None) is None and fam is None:
            raise TypeError(f"lidlib cannot explain layer {name or '<model>'!r} ({type(m).__name__}). Supported "
                            f"layers — {supported_layers()}. A new element-wise activation is one call: "
                            "lidlib.rules.register_elementwise(YourActivation).")
        if isinstance(m, nn.MaxPool2d) and m.return_indices:
            raise TypeError(f"lidlib cannot explain layer {name!r}: a max-pool with return_indices=True returns a "
                            "tuple; use return_indices=False (take indices from a separate call if needed)")


#: names of the non-linear functions that forward code may call outside layer modules: each gets
#: its family's rule (derived from :data:`lidlib.rules.FAMILIES`); any other function of an
#: activation that is not linear is refused, naming the module whose forward calls it
NONLINEAR_FUNCTIONS = frozenset(n for f in FAMILIES if f.kind not in ("linear", "refused") for n in f.functions)


def _function_name(func) -> str:
    """``relu``, ``add_``, ``__mul__``, … — the name a forward-code call is looked up by."""
    if func in (F.max_pool2d, F.max_pool1d, F.max_pool3d):          # boolean_dispatch wrappers
        return {F.max_pool2d: "max_pool2d", F.max_pool1d: "max_pool1d", F.max_pool3d: "max_pool3d"}[func]
    name = getattr(func, "__name__", "")
    if name == "__get__":                                            # a property (x.shape, x.T, …)
        name = getattr(getattr(func, "__self__", None), "__name__", "") or "__get__"
    return name


def _is_activation(t) -> bool:
    """A tensor that carries the explained input (in the pass with gradients), not a parameter."""
    return isinstance(t, torch.Tensor) and t.requires_grad and not isinstance(t, nn.Parameter)


def _has_tensor(v) -> bool:
    return isinstance(v, torch.Tensor) or (isinstance(v, (tuple, list)) and any(_has_tensor(u) for u in v))


class _FunctionalGuard(TorchFunctionMode):
    """Functions called by a model's own forward code, outside layer modules: the pass applies
    their family's rule (:meth:`_Pass.function`), keeps in-place ones from overwriting recorded
    tensors, and refuses the ones without a rule, naming the module whose forward calls them."""

    def __init__(self):
        super().__init__()
        self.depth, self.stack, self.pass_, self.suspended = 0, [], None, False

    def start(self, pass_: _Pass) -> None:
        self.depth, self.stack, self.pass_, self.suspended = 0, [], pass_, False

    def enter(self, module, args):
        self.stack.append(module)
        if module in self.pass_.leaves:
            self.depth += 1
            if self.depth == 1 and _top_mode() is self:      # inside a layer: off the stack, no dispatch cost
                torch._C._pop_torch_function_stack()
                self.suspended = True

    def leave(self, module, args, output):
        self.stack.pop()
        if module in self.pass_.leaves:
            self.depth -= 1
            if self.depth == 0 and self.suspended:
                torch._C._push_on_torch_function_stack(self)
                self.suspended = False

    def __exit__(self, *exc):
        if self.suspended:                                   # a layer raised: the guard is off the stack
            self.suspended = False
            return None
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth or self.pass_ is None:
            return func(*args, **(kwargs or {}))
        caller = self.stack[-1] if self.stack else None
        name = _function_name(func)
        augmented = name.endswith("_") and not name.startswith("__") and _augmented_assignment(sys._getframe(1))
        return self.pass_.function(func, name, args, kwargs or {}, caller, augmented)


def _top_mode():
    """The innermost torch-function mode of this thread, or None."""
    n = torch._C._len_torch_function_stack()
    return torch._C._get_function_stack_at(n - 1) if n else None


_AUGMENTED = {}


def _augmented_assignment(frame) -> bool:
    """Whether the forward code's current instruction is ``a += b`` (``*=``, …), not a call."""
    where = (frame.f_code, frame.f_lasti)
    if where not in _AUGMENTED:
        ins = next((i for i in dis.get_instructions(frame.f_code) if i.offset == frame.f_lasti), None)
        _AUGMENTED[where] = ins is not None and (ins.opname.startswith("INPLACE_") or (
            ins.opname == "BINARY_OP" and ins.argrepr.endswith("=")))
    return _AUGMENTED[where]


class _Shown:
    """:func:`_public_name` of ``func``, computed only when an error message needs it."""

    def __init__(self, func):
        self.func = func

    def __str__(self):
        return _public_name(self.func)


def _public_name(func) -> str:
    """The public spelling of a torch function: ``torch.softmax``, ``F.relu``, ``Tensor.clamp``."""
    name = getattr(func, "__name__", str(func))
    module = getattr(func, "__module__", None)
    if module == "torch.nn.functional":
        return f"F.{name}"
    if module == "torch" or module is None and getattr(torch, name, None) is func:
        return f"torch.{name}"
    return f"Tensor.{name}" if "Tensor" in getattr(func, "__qualname__", "") else name


# ------------------------------------------------------------------------------ one model, one explanation
class _ModelState:
    """What lidlib keeps per model object: its lock, and whether lidlib's hooks are on it now."""

    def __init__(self):
        self.lock = threading.RLock()
        self.hooked = False


_STATES: "weakref.WeakKeyDictionary[nn.Module, _ModelState]" = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()

REENTRY = ("lidlib: this model is already being explained by this thread — an explanation was started from "
           "inside the model's own forward or backward pass (e.g. from a hook) while lidlib's hooks were on it. "
           "Nested explanations of one model would see each other's hooks; explain it after that pass, or "
           "explain a copy (copy.deepcopy(model)) inside the hook.")


def _model_state(model: nn.Module) -> _ModelState:
    with _STATES_LOCK:
        state = _STATES.get(model)
        if state is None:
            state = _STATES[model] = _ModelState()
        return state


@contextmanager
def exclusive(model: nn.Module):
    """Hold ``model``'s lock for one explanation (every public entry point does).

    Concurrency: lidlib's hooks and in-place switches live on the shared modules, so explanations of
    the SAME model object are serialised — a second thread waits until the first is done — while
    different models run in parallel.  The lock is re-entrant, so lidlib's own entry points can call
    each other; but an explanation that this thread starts while lidlib's hooks are on the model (from
    a user's hook inside the model's forward or backward pass) raises :data:`REENTRY` instead of
    silently mixing two explanations.  lidlib's hooks and rerouted forwards act only in the thread of
    the explanation, so a plain ``model(x)`` of the user's in another thread meanwhile runs the model
    as it is (with its in-place flags off: the same values); a layer shared by two models explained at
    the same time keeps its in-place flag off until both are done (:func:`inplace_off`)."""
    state = _model_state(model)
    with state.lock:
        if state.hooked:
            raise RuntimeError(REENTRY)
        with walking(model):
            yield state


@contextmanager
def hooked(model: nn.Module):
    """:func:`exclusive`, and mark the model as carrying lidlib's hooks (nested explanations refused)."""
    with exclusive(model) as state:
        state.hooked = True
        try:
            yield
        finally:
            state.hooked = False


#: the layers whose in-place flag explanations have switched off: module -> [how many explanations use
#: it now, whether the flag was an instance attribute, its value] (a layer may be shared by two models)
_SWITCHED: dict = {}
_SWITCHED_LOCK = threading.Lock()


@contextmanager
def inplace_off(model: nn.Module):
    """Switch off every truthy ``inplace`` flag (``True``, ``1``, …) for the duration and restore each
    exactly: an instance attribute gets its old value back, a flag that was a class attribute leaves
    no instance attribute behind.  A layer shared by models explained at the same time (in several
    threads) is switched off by the first explanation and restored by the last."""
    mine = []
    try:
        with _SWITCHED_LOCK:
            for _, m in walk(model):
                entry = _SWITCHED.get(m)
                if entry is None:
                    v = vars(m).get("inplace", getattr(type(m), "inplace", None))   # (not Module.__getattr__: slow)
                    if v is None or isinstance(v, torch.Tensor) or not bool(v):
                        continue
                    entry = _SWITCHED[m] = [0, "inplace" in vars(m), v]
                    m.inplace = False
                entry[0] += 1
                mine.append(m)
        yield
    finally:
        with _SWITCHED_LOCK:
            for m in reversed(mine):
                entry = _SWITCHED[m]
                entry[0] -= 1
                if entry[0] == 0:
                    del _SWITCHED[m]
                    if entry[1]:
                        m.inplace = entry[2]
                    else:
                        vars(m).pop("inplace", None)


@contextmanager
def patched(model: nn.Module, forwards=None):
    """Hold the model (:func:`hooked`), switch off in-place flags (:func:`inplace_off`) and route the
    layers in ``forwards`` (module -> function) through those functions for the duration; restore
    all of it and remove all hooks afterwards."""
    with hooked(model), inplace_off(model):
        forwards = {m: f for m, f in (forwards or {}).items() if "forward" not in vars(m)}
        handles = []
        try:
            owner = threading.get_ident()
            for m, f in forwards.items():
                m.forward = _in_thread(owner, f, type(m).forward.__get__(m))
            yield handles
        finally:
            for h in handles:
                h.remove()
            for m in forwards:
                vars(m).pop("forward", None)


def _in_thread(owner: int, f, otherwise=lambda *args, **kwargs: None):
    """``f`` in the thread ``owner`` (the explanation's), ``otherwise`` in any other (for a hook: nothing,
    so another thread running the model meanwhile is left alone)."""
    return lambda *args, **kwargs: (f if threading.get_ident() == owner else otherwise)(*args, **kwargs)


_CHECKED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _shape_check(names, x_shape):
    """A forward pre-hook body that names the layer when its input does not fit it (missing batch
    dimension, wrong channels or features), instead of a raw convolution or matmul error."""
    given = f"; x has shape {tuple(x_shape)}" if x_shape is not None else ""

    def check(module, args):
        a = args[0] if args else None
        if not isinstance(a, torch.Tensor):
            return
        name = f"layer {names.get(module, '<model>')!r} ({type(module).__name__})"
        if isinstance(module, nn.Linear) and a.dim() >= 1 and a.shape[-1] != module.in_features:
            raise ValueError(f"{name} expects {module.in_features} input features but receives "
                             f"{a.shape[-1]}{given}: the input size does not fit the model")
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            want = module.weight.dim()
            if a.dim() != want:
                raise ValueError(f"{name} expects a {want}-D input (batch, {module.in_channels}, ...) but receives "
                                 f"{a.dim()}-D{given}: add the batch dimension (x[None]) or reshape x")
            if a.shape[1] != module.in_channels:
                raise ValueError(f"{name} expects {module.in_channels} input channels but receives "
                                 f"{a.shape[1]}{given}")
    return check


def shape_hooks(model: nn.Module, x_shape=None):
    """Forward pre-hooks that name the layer when its input does not fit it (:func:`_shape_check`)."""
    return _install(model, _shape_check({m: n for n, m in walk(model)}, x_shape))


def _install(model: nn.Module, check=None, pass_: Optional["_Pass"] = None, guard=None):
    """Hook ``model`` for one pass (the guard pointed at it): before every module, ``check``
    (conv/linear layers) and the guard's ``enter``; after every module but the root (the pass's
    ``names``), the pass's ``hook`` then the guard's ``leave``.

    Two global module hooks (:func:`torch.nn.modules.module.register_module_forward_hook`) that act
    only on this model's modules, instead of hundreds of per-module hooks whose registration alone
    costs more than a small network's forward pass.  A module that carries hooks of its own gets
    lidlib's as per-module hooks, registered after the user's and so run after them, as before.
    All of them act only in this thread: another thread running the model meanwhile is left alone."""
    checked = {m for _, m in walk(model) if isinstance(m, _CHECKED)} if check is not None else set()
    hooked_ = set(pass_.names) if pass_ is not None else set()
    if guard is not None:
        guard.start(pass_)
    own = {m for m in checked | hooked_ if m._forward_hooks or m._forward_pre_hooks}

    def pre(module, args):
        if guard is not None and module in hooked_:
            guard.enter(module, args)     # (first: inside a layer, the check's tensor calls pass straight)
        if module in checked:
            check(module, args)

    def post(module, args, output):
        if module in hooked_:
            out = pass_.hook(module, args, output)
            guard.leave(module, args, output)
            return out

    owner = threading.get_ident()
    pre, post = _in_thread(owner, pre), _in_thread(owner, post)

    def pre_global(module, args):
        if module not in own:
            pre(module, args)

    def post_global(module, args, output):
        if module not in own:
            return post(module, args, output)

    handles = []
    try:
        if checked or hooked_:
            handles.append(torch.nn.modules.module.register_module_forward_pre_hook(pre_global))
        if hooked_:
            handles.append(torch.nn.modules.module.register_module_forward_hook(post_global))
        for m in own:
            handles.append(m.register_forward_pre_hook(pre))
            if m in hooked_:
                handles.append(m.register_forward_hook(post))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


class _Pass:
    """Forward hooks for one network pass: record outputs, and (actual pass) substitute outputs.

    ``method``: the actual pass's method; None for the reference pass, which records for ``rule``
    only what the actual pass reads (:func:`rules.reference_needs`).  ``keep``: the keys whose
    output the recorder needs (None: every key); the outputs of the others are not held."""

    def __init__(self, names, reference: Optional["_Pass"] = None, method: Optional[Method] = None,
                 n_steps=None, keep=None, rule=None):
        self.names, self.reference, self.method, self.n_steps = names, reference, method, n_steps
        self.keep, self.shared = keep, False      # shared: a reference kept for reuse (set by Reference)
        self.leaves = {m for m in names if next(m.children(), None) is None or family(m) is not None}
        self.attention = {m for m in self.leaves if layer_kind(m) == "attention"}   # (their forward: attention_forward)
        rule = method.rule if method is not None else rule
        self.needs = {m: reference_needs(rule, m) for m in self.leaves} if rule is not None else {}
        self.derives = ({m for m, (reads_x, _) in self.needs.items() if reads_x and derived_reference(rule, m)}
                        if method is None else set())     # (read by the reference pass; their rule reads X̂)
        self.derived = set()              # kept keys whose Ŷ is not held: the actual pass recomputes it from X̂
        self.calls = {}
        self.input = None                 # the actual pass's input tensor (set by propagate)
        self.outputs = OrderedDict()      # key -> Ŷ (reference) or _record's triple (actual), in order of completion
        self.from_input = set()           # kept keys whose output is the input tensor itself
        self.held = set()                 # the keys of outputs the recorder reads (kept, or a kept container's)
        self._first = {}                  # id(output tensor) -> (first key that produced it, weakref, version)
        self.inputs = {}                  # key -> input tensor X̂ a rule reads (reference pass)
        self.aliases = {}                 # container key -> key of the same output tensor
        self.pooled = {}                  # key -> rules.tiled_pool of a max-pool call
        self._pooled_now = None
        self._attention_now = None        # (rules.SelfAttention, x) of the attention call running
        self.nodes = {}                   # key -> (autograd node, output index) that produced the output
        self.functional = {}              # forward-code call key -> (input(s), output) (reference pass)

    def pool_forward(self, module: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
        """A max-pool layer's forward through :func:`rules.tiled_pool` (same values), keeping the
        window image for the layer's path average; the layer's own forward where that does not apply."""
        self._pooled_now = tiled_pool(module, x)
        return type(module).forward(module, x) if self._pooled_now is None else self._pooled_now["y"]

    def attention_forward(self, module: nn.MultiheadAttention, *args, **kwargs):
        """An attention layer's forward (the same values), keeping the call as a layer of its input
        (:func:`rules.self_attention`) for the layer's path average; cross-attention is refused."""
        call = self_attention(module, args, kwargs)
        if call is None:
            raise TypeError(f"lidlib cannot explain layer {self.names[module]!r} (MultiheadAttention): it is called "
                            "with a different query, key or value (cross-attention); lidlib's rule is for "
                            "self-attention, mha(x, x, x), the layer of one input")
        self._attention_now = call
        return type(module).forward(module, *args, **kwargs)

    def _kept(self, key) -> bool:
        return self.keep is None or key in self.keep

    def _same(self, output):
        """The key that first produced this very tensor, unchanged since (else None)."""
        first = self._first.get(id(output))
        if first is None or first[1]() is not output or first[2] != output._version:
            return None
        return first[0]

    def hook(self, module, args, output):
        layer, rest = module, None
        if self._attention_now is not None and self._attention_now[0].module is module:
            (layer, x), self._attention_now = self._attention_now, None      # (output: (y, weights or None))
            args, output, rest = (x,), output[0], output[1]
        elif module in self.attention:
            raise TypeError(f"lidlib cannot explain layer {self.names[module]!r} (MultiheadAttention): its forward "
                            "is replaced by an instance attribute, so lidlib cannot see the call; remove it")
        if not isinstance(output, torch.Tensor):
            return None
        name = self.names[module]
        k = self.calls[name] = self.calls.get(name, 0) + 1
        key = name if k == 1 else f"{name}#{k}"
        leaf = module in self.leaves
        if not leaf:
            same = self._same(output)
            if same is not None:          # a container handing on its last child's tensor
                self.aliases[key] = same
                if self._kept(key):
                    if same not in self.outputs and same not in self.derived:
                        self._record(same, output)
                    self.held.add(same)
                return None
        pooled, self._pooled_now = self._pooled_now, None
        needs_x, needs_y = self.needs.get(module, (False, False))
        x_ref = None
        if self.method is None:           # the reference pass
            if pooled is not None:        # (a max-pool's X̂ is read off its window image)
                self.pooled[key] = dict(image=pooled["image"])     # (not Ŷ: pooling the image again is cheap)
            elif needs_x:
                self.inputs[key] = args[0]
        elif leaf:
            x = args[0]
            if self.reference is None:    # no increment: every layer's reference is 0
                x_ref, y_ref = (torch.zeros((), dtype=x.dtype, device=x.device) for _ in range(2))
                pooled_ref = None
            else:                         # (a reference used once gives its X̂ up here)
                ref = self.reference
                x_ref = ref.inputs.get(key) if ref.shared else ref.inputs.pop(key, None)
                y_ref = ref.outputs.get(key) if ref.shared or key in ref.held else ref.outputs.pop(key, None)
                pooled_ref = ref.pooled.get(key) if ref.shared else ref.pooled.pop(key, None)
            new = apply_rule(self.method.rule, layer, x, x_ref, output, y_ref, self.n_steps, pooled, pooled_ref)
            if new is not None:
                output = new
            if rest is not None:          # attention weights: the logits must not depend on them
                rest = unexplained(rest, f"the attention weights of layer {name!r} reach the logits, and lidlib has "
                                         "no rule for them; call the layer with need_weights=False")
        if self._kept(key):
            self._record(key, output, module, x_ref)
        elif self.method is None and needs_y:
            self.outputs[key] = output
        if id(output) not in self._first or self._same(output) is None:
            self._first[id(output)] = (key, weakref.ref(output), output._version)
        if output.grad_fn is not None:
            self.nodes[key] = (output.grad_fn, output.output_nr)
        return output if layer is module else (output, rest)

    def _record(self, key, output, module=None, x_ref=None) -> None:
        """Keep what is read of a kept layer's output: Ŷ^l in the reference pass (not where
        :func:`rules.derived_reference`: ``σ(X̂^l)`` is recomputed then, from the ``X̂^l`` its rule
        reads), and in the actual pass what the recorder multiplies by g, and whether it may write
        into it: ``(Y^l, None, False)`` without increment; the increment ``(ΔY^l, None, True)``,
        taken now, where a reference used once has a Ŷ^l the size of Y^l (it is given up, and Y^l
        is left to autograd: one tensor held instead of two) or Ŷ^l is recomputed; else ``(Y^l,
        Ŷ^l, False)`` (a batch-1 Ŷ^l is smaller than ΔY^l, and autograd often holds Y^l anyway)."""
        self.held.add(key)
        if output is self.input:
            self.from_input.add(key)
        ref = self.reference
        if self.method is None:
            if module in self.derives and key in self.inputs:
                self.derived.add(key)
            else:
                self.outputs[key] = output
            return
        if ref is None:
            self.outputs[key] = (output, None, False)
            return
        y_ref = ref.outputs.get(key) if ref.shared else ref.outputs.pop(key, None)
        own = y_ref is None and key in ref.derived and x_ref is not None
        if own:
            with torch._C.DisableTorchFunction():  # (lidlib's arithmetic, not the model's forward code)
                y_ref = type(module).forward(module, x_ref)
        if y_ref is None:
            raise ValueError(f"layer {key!r} ran on X but not on the reference X̂: the model's forward code takes a "
                             "different path for the input than for the baseline; lidlib needs the same computation "
                             "for both (remove the input-dependent branch, or explain the layers both paths share)")
        if (ref.shared and not own) or y_ref.shape != output.shape:
            self.outputs[key] = (output, y_ref, False)
            return
        with torch._C.DisableTorchFunction():
            self.outputs[key] = (torch.sub(output.detach(), y_ref, out=y_ref if own else None), None, True)

    # ----------------------------------------------------------------- forward code outside layers
    def _caller_name(self, caller) -> str:
        return "<model>" if caller is None else self.names.get(caller, "<model>")

    def _refuse(self, name, caller, why):
        """``name``: the function's public spelling (:func:`_public_name`), e.g. ``torch.softmax``."""
        who = self._caller_name(caller)
        kind = "" if caller is None else f" ({type(caller).__name__})"
        raise TypeError(f"lidlib cannot explain the call {name}(...) in the forward code of module {who!r}{kind}: "
                        f"{why}")

    def protect(self, t) -> None:
        """Before an in-place operation on ``t``: recorded tensors sharing its memory keep their own
        values (copies), so a relevance is never read off a tensor overwritten later (``out += x``)."""
        if not isinstance(t, torch.Tensor):
            return
        storage = t.untyped_storage().data_ptr()
        for table in (self.outputs, self.inputs, self.functional):
            for k, v in table.items():
                if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == storage:
                    table[k] = v.detach().clone()
                elif isinstance(v, tuple):
                    table[k] = tuple(u.detach().clone() if isinstance(u, torch.Tensor)
                                     and u.untyped_storage().data_ptr() == storage else u for u in v)

    def _key(self, caller, name) -> str:
        key = f"{self._caller_name(caller)}:{name}"
        k = self.calls[key] = self.calls.get(key, 0) + 1
        return f"{key}#{k}"

    def _reference_of(self, key, name, caller):
        if self.reference is None:
            return None
        if key not in self.reference.functional:
            self._refuse(name, caller, "the reference pass did not make the same call (the forward code depends "
                                       "on the input); lidlib needs the same computation for X and X̂")
        return self.reference.functional[key]

    def function(self, func, name, args, kwargs, caller, augmented=False):
        """One function called by forward code outside layer modules (the guard's depth 0).
        ``augmented``: the call is an augmented assignment (``out += x``), which rebinds its name:
        it is computed out of place, so the tensor it would overwrite keeps its value."""
        inplace = name.endswith("_") and not name.startswith("__")
        shown = _Shown(func)
        base = name.rstrip("_") if inplace else name
        if inplace and augmented and hasattr(torch.Tensor, base):
            return self.function(getattr(torch.Tensor, base), base, args, kwargs, caller)
        if inplace and args and isinstance(args[0], torch.Tensor):
            if type(args[0].grad_fn).__name__.startswith("_SubstituteBackward"):
                self._refuse(shown, caller, "it overwrites the output of a layer whose rule needs it; use the "
                                           "out-of-place form (`x = x + y`)")
            self.protect(args[0])
        fam = function_family(base) or function_family(name)
        if fam is None or fam.kind == "refused":
            out = func(*args, **kwargs)
            if _has_tensor(out) and any(_is_activation(a) for a in list(args) + list(kwargs.values())):
                hint = (" (if it is the model's output: the model must return logits, the SG/ST/SIG tops apply "
                        "the softmax)" if "softmax" in base else "")
                self._refuse(shown, caller, "it is not linear and lidlib has no rule for it; write it as a layer "
                                            f"module of a supported family ({supported_layers()}) or register "
                                            f"one{hint}")
            return out
        if fam.kind == "linear":
            if base in ("div", "__truediv__", "true_divide") and len(args) > 1 and _is_activation(args[1]):
                self._refuse(shown, caller, "a division by an activation is not linear and has no rule")
            return func(*args, **kwargs)
        if fam.kind == "product":
            a, b = (list(args) + [kwargs.get("other")])[:2]
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
                return func(*args, **kwargs)                 # times a number: linear
            if inplace:
                self._refuse(shown, caller, "an in-place product of two tensors; write `a = a * b`")
            key = self._key(caller, base)
            y = torch.mul(a, b)
            if self.method is None:
                self.functional[key] = (a, b)
                return y
            ref = self._reference_of(key, shown, caller)
            a_ref, b_ref = ref if ref is not None else (None, None)
            new = product_rule(self.method.rule, a, b, a_ref, b_ref, self.n_steps)
            return y if new is None else new
        if inplace or kwargs.get("return_indices") or (base.startswith("max_pool") and len(args) > 6 and args[6]):
            self._refuse(shown, caller, "an in-place or index-returning non-linear call; use the result of the "
                                       "out-of-place function (e.g. `x = F.relu(x)`)")
        layer, x = call_layer(fam, func, args, kwargs)
        y = layer(x)
        key = self._key(caller, base)
        if self.method is None:
            self.functional[key] = (x, y)
            return y
        ref = self._reference_of(key, shown, caller)
        if ref is None:
            x_ref, y_ref = (torch.zeros((), dtype=x.dtype, device=x.device) for _ in range(2))
        else:
            x_ref, y_ref = ref
        new = apply_rule(self.method.rule, layer, x, x_ref, y, y_ref, self.n_steps)
        return y if new is None else new



class Reference:
    """The reference pass of a method: the reference inputs ``X̂^l`` its rules read (max-pool window
    images), the outputs ``Ŷ^l`` they read and those of the layers in ``keep`` (None: every layer),
    and the reference logits ``Ẑ``, for a baseline already checked
    by :func:`lidlib.explain` (batch 1: one reference for every sample; or one per sample).

    ``shared=False``: used by one call only, which gives up each tensor once read.  ``shared=True``:
    kept for reuse (:class:`lidlib.Explainer`) — only read, never written or emptied."""

    def __init__(self, pass_: "_Pass", z_ref: torch.Tensor, baseline: torch.Tensor, shared: bool):
        self.pass_, self.z_ref, self.baseline, self.shared = pass_, z_ref, baseline, shared
        self.keep = pass_.keep
        pass_.shared = shared


def _layers(model: nn.Module):
    """Every module but the root, by object: its name."""
    return {m: name for name, m in walk(model) if name}


def _forwards(pass_: "_Pass", method: Method):
    """A path-averaged max-pool pools through its window image in both passes (rules.tiled_pool);
    an attention layer keeps its call as a layer of its input (:meth:`_Pass.attention_forward`)."""
    pools = [m for m in pass_.leaves if type(m).forward is nn.MaxPool2d.forward and method.rule.maxpool != "D"]
    forwards = {m: (lambda x, m=m: pass_.pool_forward(m, x)) for m in pools}
    forwards.update({m: (lambda *a, m=m, **k: pass_.attention_forward(m, *a, **k)) for m in pass_.attention})
    return forwards


def reference_pass(model: nn.Module, baseline: torch.Tensor, method: Method, shared: bool = False,
                   x_shape=None, keep=None) -> Reference:
    """Forward the reference ``X̂`` once, recording what the actual pass's rules need (Eq. 21) and
    the outputs ``Ŷ^l`` of the layers in ``keep`` (None: every layer)."""
    names = _layers(model)
    guard = _FunctionalGuard()
    reference = _Pass(names, keep=keep, rule=method.rule)
    with patched(model, _forwards(reference, method)) as handles:
        handles += _install(model, _shape_check(names, x_shape), reference, guard)
        with torch.no_grad(), guard:
            z_ref = model(baseline)
    return Reference(reference, z_ref, baseline, shared)


def propagate(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: Method,
              baseline: Optional[torch.Tensor], n_steps: Optional[int], keep=None,
              reference: Optional[Reference] = None) -> Explanation:
    """Run ``method`` on an eval-mode model (inputs already validated by :func:`lidlib.explain`).

    ``keep``: names of the layers whose relevance to return (None: all); the input is always kept.
    ``reference``: a :class:`Reference` of ``baseline`` computed before (:class:`lidlib.Explainer`);
    None computes it here (increment methods only).  The result does not depend on which.
    """
    if method.increment and reference is None:
        reference = reference_pass(model, baseline, method, x_shape=x.shape, keep=keep)
    if reference is not None and not (reference.keep is None or (keep is not None and keep <= reference.keep)):
        raise ValueError("the reference pass did not record every layer to keep")
    names = _layers(model)
    guard = _FunctionalGuard()
    ref = reference.pass_ if reference is not None else None
    z_ref = reference.z_ref if reference is not None else torch.zeros((), dtype=x.dtype, device=x.device)
    actual = _Pass(names, ref, method, n_steps, keep=keep)
    with patched(model, _forwards(actual, method)) as handles:
        handles += _install(model, _shape_check(names, x.shape), actual, guard)
        with torch.enable_grad():
            x_in = actual.input = x.detach().clone().requires_grad_(True)
            with guard:
                z = model(x_in)
            _check_logits(z, target, x)
            g_top, r_top = top_relevance(method.top, z.detach(), z_ref, target, n_steps, method.rule.eps)
            keys = list(actual.outputs)
            recorder = _Recorder()
            for k in keys:
                recorder.watch(k, *actual.outputs[k], k in actual.from_input, actual.nodes.get(k))
            aliases = actual.aliases
            actual = _release(actual)                    # what the backward pass needs is held by autograd
            if reference is not None and not reference.shared:
                reference = ref = _release(ref)          # and by the recorder
            (g_in,) = torch.autograd.grad(z, x_in, grad_outputs=g_top, allow_unused=True)
    relevance = OrderedDict(input=_product(x_in.detach(), g_in, baseline))
    for k in keys:
        relevance[k] = recorder.result(k, relevance["input"])
    return Explanation(relevance, r_top, method, target, z.detach(),
                       reference_logits=z_ref.expand_as(z).clone() if method.increment else None,
                       n_steps=n_steps, model=model, aliases=aliases, input_shape=x.shape)


class _Recorder:
    """``R(Y^l) = g ⊙ ΔY^l`` (Eq. 15, 23, 24), or ``g ⊙ Y^l`` without increment (Eq. 18), read off
    the backward pass.

    Right after the autograd node that produced ``Y^l`` has run, the signal ``g`` at ``Y^l`` is
    final: the product is taken then and ``g`` released, as in a plain gradient, so recording every
    layer keeps no gradients alive.  An increment ``ΔY^l`` taken in the forward pass
    (:meth:`_Pass._record`) is the recorder's own, and the product is written into it."""

    def __init__(self):
        self.relevance = {}
        self.pending = {}                                # key -> (ΔY^l or Y^l, Ŷ^l or None, is the input)

    def watch(self, key: str, t: torch.Tensor, ref: Optional[torch.Tensor], own: bool, is_input: bool = False,
              node=None) -> None:
        """Compute ``key``'s relevance when the backward pass reaches ``node``, the ``(autograd node,
        output index)`` that produced the layer's output (None: it does not depend on the input);
        until then the recorder holds ``t`` and ``ref``: ``(Y^l, Ŷ^l)``, the increment
        ``(ΔY^l, None)`` (``own``: the product is written into it), or ``(Y^l, None)`` without increment."""
        self.pending[key] = (t.detach(), ref, is_input)
        if node is None:
            return
        node, nr = node

        def post(grad_inputs, grad_outputs):
            g = grad_outputs[nr]
            if g is not None and key in self.pending:
                td, r, _ = self.pending.pop(key)
                self.relevance[key] = td.mul_(g) if own else _product(td, g, r)
        node.register_hook(post)

    def result(self, key: str, input_relevance: torch.Tensor) -> torch.Tensor:
        """``key``'s relevance after the backward pass (0 where the layer does not reach the logits)."""
        if key in self.relevance:
            return self.relevance[key]
        t, ref, is_input = self.pending.pop(key)
        return input_relevance if is_input else _product(t, None, ref)   # e.g. an Identity first layer


def _product(t: torch.Tensor, g: Optional[torch.Tensor], ref: Optional[torch.Tensor]) -> torch.Tensor:
    """A relevance ``g ⊙ (Y − Ŷ)`` (``g ⊙ Y`` without a reference; 0 without a signal)."""
    if g is None:
        return torch.zeros_like(t if ref is None else t - ref)
    return g * t if ref is None else torch.sub(t, ref).mul_(g)


def _release(p: "_Pass") -> None:
    """Drop a pass's references to its tensors (the caller drops the pass)."""
    p.outputs.clear()
    p.inputs.clear()
    p.pooled.clear()
    p.functional.clear()
    return None


def _check_logits(z, target, x):
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != x.shape[0]:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"the model must return logits of shape (batch, classes); it returned {shape}")
    bad = (target < 0) | (target >= z.shape[1])
    if bad.any():
        raise ValueError(f"target {target[bad][0].item()} is out of range: the model has {z.shape[1]} "
                         f"classes, so targets must lie in 0..{z.shape[1] - 1}")
