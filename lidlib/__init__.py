"""lidlib: layer-wise increment decomposition (LID) and the LRP family.

After Chen, Li, Shao and Sun, "Layer-wise increment decomposition-based neuron relevance
explanation for deep networks", Acta Automatica Sinica 50(10), 2024.  One call explains a batch::

    import lidlib
    e = lidlib.explain(model, x, target, method="SIG-LID-IG")
    e.relevance["input"], e.total, e.conservation()

For repeated calls with one model and reference, ``lidlib.Explainer(model, "SIG-LID-IG")(x, target)``
gives the same result and computes the reference pass only once.

The package mirrors the paper's panorama (Fig. 3): :mod:`lidlib.top` is the contrast axis,
:mod:`lidlib.rules` the non-linearity axis, :class:`lidlib.Method` joins them with the increment
axis, :mod:`lidlib.engine` runs the two-step algorithm (Eq. 15, 17, 22–24), and
:mod:`lidlib.explicit` is the plain message-matrix form (Eq. 2, 3, 5, 7, 13, 14, 20).
:mod:`lidlib.paths` owns the path grids, :mod:`lidlib.comparison` the methods the paper compares
against (IG and the CAMs).  Beside the core: the data (:mod:`lidlib.toy`, :mod:`lidlib.models`,
:mod:`lidlib.images`), the evaluation (:mod:`lidlib.evaluation`) and the book's teaching widgets
(:mod:`lidlib.widgets`), which nothing in the core imports.

Names: the reference input ``X̂`` is the argument ``baseline`` of every function (Captum's spelling;
``Explainer.attribute`` takes Captum's ``baselines``); inside the engine and the rules ``x_ref`` and
``y_ref`` are a layer's own references ``X̂^l``, ``Ŷ^l``.  Whether a method uses a reference is
``needs_reference`` on both kinds of method (:class:`Method`, where it is the increment axis, and
:class:`Comparison`).
"""
from __future__ import annotations

from . import rules, top
from .api import explain
from .comparison import Comparison
from .explainer import Explainer
from .explanation import ConservationTable, Explanation
from .methods import METHODS, Method
from .rules import Rule

__all__ = ["explain", "Explainer", "METHODS", "Method", "Comparison", "Rule", "Explanation", "ConservationTable",
           "rules", "top"]
