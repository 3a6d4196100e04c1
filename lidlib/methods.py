"""The panorama (Fig. 3): every named method is one choice on each of three independent axes.

* increment axis — LRP (``R = g ⊙ Y``, no reference) or LID (``R = g ⊙ ΔY``, reference ``X̂``), Sec. 2.4;
* contrast axis — the top relevance: ``logit``, ``SG``, ``ST`` or ``SIG`` (:mod:`lidlib.top`, Table 2);
* non-linearity axis — the middle rule: Taylor, IG, LRP-0/Rescale or z⁺ (:mod:`lidlib.rules`, Table 3).

``Method(name, top, rule, increment)`` builds any cell, not only the named ones::

    Method("SIG-LRP-IG", top="SIG", rule=rules.IG, increment=False)

The named LRP-family methods run as in the paper's experiments: LRP-0 (or z⁺) fused with LRP-ε,
ε = 1e-9 at conv/linear/max-pool, no message where ``|z| ≤ ε`` (:func:`lidlib.rules.lrp_epsilon`).
``METHODS["SG-LRP-0"].with_eps(0.01)`` (also by name: ``"SG-LRP-0 (ε=0.01)"``) gives another ε;
:data:`LRP0_EXACT` (ε = 0) is exact LRP-0, gradient × input.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import rules
from .comparison import COMPARISONS, Comparison
from .rules import Rule
from .top import TOPS


@dataclass(frozen=True)
class Method:
    """One cell of the panorama: a top relevance, a middle rule, and whether relevance is of increments."""
    name: str
    top: str
    rule: Rule
    increment: bool

    def __post_init__(self):
        if self.top not in TOPS:
            raise ValueError(f"Method.top must be one of {TOPS}, got {self.top!r}")
        if not isinstance(self.rule, Rule):
            raise TypeError(f"Method.rule must be a lidlib.rules.Rule, got {type(self.rule).__name__}")

    @property
    def needs_reference(self) -> bool:
        """Whether the method uses the reference input ``X̂``: the increment family (Sec. 2.4)."""
        return self.increment

    @property
    def uses_steps(self) -> bool:
        """Whether ``n_steps`` changes the method: the SIG top (Sec. 3.3) or a path-averaged rule (Eq. 21)."""
        return self.top == "SIG" or "D̄" in (self.rule.elementwise, self.rule.maxpool)

    def with_eps(self, eps: float) -> "Method":
        """The same method of the LRP family with ε = ``eps`` (:func:`lidlib.rules.lrp_epsilon`), named
        ``"<name> (ε=<eps>)"``; ``eps = 0`` is the exact rule (LRP-0 = gradient × input)."""
        if self.increment or self.rule.elementwise != "D̄exact" or self.rule.maxpool not in ("D", "ε"):
            raise ValueError(f"{self.name} is not of the LRP family; ε applies to LRP-0 / LRP-ZP methods")
        base = rules.ZPLUS if self.rule.linear == "z+" else rules.LRP0
        return Method(f"{self.name} (ε={eps:g})", self.top, rules.lrp_epsilon(eps, base), self.increment)


_PANORAMA = [
    # LRP family (no reference: ΔY = Y)
    # (as the paper ran them: LRP-0 fused with LRP-ε, ε = 1e-9 at conv/linear/max-pool; .with_eps(0): exact)
    Method("LRP-0", "logit", rules.LRP0_PAPER, increment=False),            # Eq. 4–5, 18
    Method("SG-LRP-0", "SG", rules.LRP0_PAPER, increment=False),            # Eq. 10 + LRP-0
    Method("SG-LRP-ZP", "SG", rules.ZPLUS_PAPER, increment=False),          # Eq. 10 + z⁺ (Eq. 9)
    Method("ST-LRP-0", "ST", rules.LRP0_PAPER, increment=False),            # Sec. 3.1, ΔZ = Z
    Method("SIG-LRP-0", "SIG", rules.LRP0_PAPER, increment=False),          # Sec. 3.3, path 0 → Z
    # increment family (reference X̂)
    Method("DeepLIFT", "logit", rules.RESCALE, increment=True),       # Eq. 6–7, Rescale
    Method("LID-Taylor", "logit", rules.TAYLOR, increment=True),      # Eq. 12–17
    Method("ST-LID-Taylor", "ST", rules.TAYLOR, increment=True),      # Sec. 3.1
    Method("SIG-LID-Taylor", "SIG", rules.TAYLOR, increment=True),    # Sec. 3.3
    Method("LID-IG", "logit", rules.IG, increment=True),              # Eq. 19–23
    Method("SIG-LID-IG", "SIG", rules.IG, increment=True),            # Eq. 24, Algorithm 1
]


#: the paper's named methods, by the paper's names: the panorama, then the comparison methods (Sec. 4)
METHODS: dict = {m.name: m for m in _PANORAMA + list(COMPARISONS)}
#: exact LRP-0 (ε = 0, gradient × input), the limit the book's derivations use
LRP0_EXACT = Method("LRP-0 (ε=0)", "logit", rules.LRP0, increment=False)


def get_method(method):
    """A :class:`Method` (or :class:`~lidlib.comparison.Comparison`) from a name of :data:`METHODS` or
    a method itself."""
    if isinstance(method, (Method, Comparison)):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]
    if isinstance(method, str) and method.endswith(")") and " (ε=" in method:   # e.g. "SG-LRP-0 (ε=0.01)"
        base, _, eps = method[:-1].rpartition(" (ε=")
        if base in METHODS:
            try:
                return METHODS[base].with_eps(float(eps))
            except ValueError as e:
                raise ValueError(f"unknown method {method!r}: {e}") from None
    raise ValueError(f"unknown method {method!r}; valid methods are: {', '.join(METHODS)} "
                     "(or build one with lidlib.Method(name, top, rule, increment))")


def last_stage_only(method) -> bool:
    """Whether a method (a name or a method object) is computed at the model's last stage only (ScoreCAM:
    :attr:`Comparison.stages <lidlib.comparison.Comparison>` is ``"last"``)."""
    return getattr(get_method(method), "stages", "all") == "last"
