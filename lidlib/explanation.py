"""The result of an explanation: relevance per layer, what it decomposes, and measured conservation."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class ConservationRow:
    """Conservation at one layer: ``Σ R(Y^l)``, the total (Eq. 1, 6) and ``|gap| / Σ|R(Y^L)|``."""
    layer: str
    relevance_sum: torch.Tensor
    total: torch.Tensor
    rel_gap: torch.Tensor


class ConservationTable(list):
    """Rows of :class:`ConservationRow`, input first; prints as a table (first sample of the batch).
    ``aliases``: container name → the layer whose output it hands on (see :meth:`Explanation.layer`)."""

    def __init__(self, rows=(), aliases=None):
        super().__init__(rows)
        self.aliases = dict(aliases or {})

    def max_rel_gap(self, layers=None) -> float:
        """Worst relative gap over ``layers`` (module names; containers resolve to their last child)."""
        wanted = None if layers is None else {self.aliases.get(n, n) for n in layers}
        rows = [r for r in self if wanted is None or r.layer in wanted]
        return max(float(r.rel_gap.max()) for r in rows)

    def as_rows(self, sample: int = 0):
        """``[(layer, Σ R, total, relative gap)]`` as Python floats, for tables in the book."""
        return [(r.layer, float(r.relevance_sum[sample]), float(r.total[sample]), float(r.rel_gap[sample]))
                for r in self]

    def __repr__(self):
        lines = [f"{'layer':<16}{'sum R':>16}{'total':>16}{'rel. gap':>12}"]
        lines += [f"{n:<16}{s:>16.8g}{t:>16.8g}{g:>12.2e}" for n, s, t, g in self.as_rows()]
        return "\n".join(lines)

    def _repr_html_(self):
        td = '<td style="padding:2px 12px;text-align:right">'
        body = "".join(f'<tr><td style="padding:2px 12px"><code>{n}</code></td>{td}{s:.8g}</td>{td}{t:.8g}</td>'
                       f"{td}{g:.2e}</td></tr>" for n, s, t, g in self.as_rows())
        head = "".join(f'<th style="padding:2px 12px">{h}</th>' for h in ("layer", "Σ R", "total", "rel. gap"))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Explanation:
    """Relevance of every recorded layer for one batch.

    ``relevance``: ordered mapping layer name → relevance shaped like that layer's output, from
    ``"input"`` to the logits.  ``total``: (B,), the sum of the top relevance — what the method
    decomposes (``Z_c`` for LRP-0, ``ΔZ_c`` for LID-Taylor/LID-IG/DeepLIFT, ``≈ΔP_c`` for ST/SIG).
    """

    def __init__(self, relevance: "OrderedDict[str, torch.Tensor]", top: Optional[torch.Tensor], method,
                 target: torch.Tensor, logits: torch.Tensor, *, reference_logits: Optional[torch.Tensor] = None,
                 n_steps: Optional[int] = None, model=None, aliases=None, input_shape=None):
        """``top``: the top relevance (B, K), None for a class activation map (no decomposition);
        ``reference_logits``: ``Ẑ`` (None without a reference); ``model``: where ``stages`` are read."""
        self.relevance = relevance
        self.top = top
        self.total = (top.sum(dim=1) if top is not None
                      else torch.full((len(target),), float("nan"), device=logits.device))
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.method = method
        self.target = target
        self.logits = logits
        self.reference_logits = reference_logits
        self.n_steps = n_steps
        self.stages = dict(getattr(model, "stages", None) or {})
        self.aliases = dict(aliases or {})

    def layer(self, name: str) -> torch.Tensor:
        """Relevance of the output of module ``name``; a container whose output is its last
        child's tensor (e.g. ``"features"`` of VGG) resolves to that child."""
        key = self.aliases.get(name, name)
        if key not in self.relevance:
            raise KeyError(f"no relevance recorded for layer {name!r}; recorded layers: "
                           f"{', '.join(list(self.relevance)[:6])}, …")
        return self.relevance[key]

    @property
    def input(self) -> torch.Tensor:
        """Relevance of the input pixels ``R(Y^0)``."""
        return self.relevance["input"]

    def conservation(self) -> ConservationTable:
        """Per layer: ``Σ R(Y^l)``, the total, and ``|Σ R(Y^l) − total| / Σ|R(Y^L)|`` (Eq. 1, 6).

        The denominator is the L1 norm of the top relevance so that the gap stays meaningful for
        SG, whose total is 0.  Where the top relevance is exactly 0 (e.g. ``ΔZ_c = 0``: the input
        equals the reference) there is nothing to be relative to: the gap is then divided by the
        layer's own ``Σ|R(Y^l)|`` (and is 0 when that is 0 too).  Only layers that cut the network
        (all of a residual block's output, not one branch) are expected to conserve.
        """
        if self.top is None:
            raise ValueError(f"{self.method.name} is a class activation map, not a decomposition: "
                             "it has no conservation to measure")
        scale = self.top.abs().sum(dim=1)
        table = ConservationTable(aliases=self.aliases)
        for name, r in self.relevance.items():
            if r.dim() == 0 or r.shape[0] != self.total.shape[0]:
                raise ValueError(f"the relevance of layer {name!r} has shape {tuple(r.shape)}, whose first dimension "
                                 f"is not the batch ({self.total.shape[0]}): conservation is measured per sample of "
                                 "batch-first outputs; make the model batch-first (e.g. nn.MultiheadAttention("
                                 "..., batch_first=True)), or sum this layer's relevance over its own layout")
            s = r.flatten(1).sum(dim=1)
            own = torch.where(scale > 0, scale, r.flatten(1).abs().sum(dim=1))
            gap = (s - self.total).abs()
            rel_gap = torch.where(own > 0, gap / torch.where(own > 0, own, 1), gap)
            table.append(ConservationRow(name, s, self.total, rel_gap))
        return table

    def stage_map(self, stage) -> torch.Tensor:
        """Channel-summed relevance of one stage (``5`` or ``"s5"``), at the stage's resolution (B, h, w)."""
        key = f"s{stage}" if isinstance(stage, int) else str(stage)
        if key not in self.stages:
            known = ", ".join(sorted(self.stages)) or "none (the model has no `stages` attribute)"
            raise ValueError(f"stage {stage!r} is not a stage of this model; its stages are: {known}")
        r = self.layer(self.stages[key])
        return r.sum(dim=1) if r.dim() == 4 else r

    def heatmap(self, stages=5, size=None) -> torch.Tensor:
        """Stage heatmap (Sec. 4.1), stretched to the input size: (B, H, W).

        ``stages=5`` (or ``"s5"``): the channel-summed relevance of stage s5, upsampled bilinearly,
        in relevance units.  ``stages=(5, 4, 3, 2, 1)`` (or ``"s54321"``): the multi-scale map, the
        sum of the per-stage maps after each is divided by its largest absolute value (per image),
        so every stage weighs the same and the sign — red positive, blue negative — is kept.  All
        stages come from the same explanation: no extra backward pass.
        """
        from .comparison import upsample
        if isinstance(stages, str) and stages.startswith("s") and len(stages) > 2:
            stages = tuple(int(ch) for ch in stages[1:])
        single = not isinstance(stages, (tuple, list))
        size = size or (self.input_shape[-2:] if self.input_shape else None)
        if size is None:
            raise ValueError("heatmap needs size=(H, W): this explanation does not know its input size")
        maps = [upsample(self.stage_map(s), size) for s in ([stages] if single else stages)]
        if single:
            return maps[0]
        total = 0
        for m in maps:
            peak = m.abs().flatten(1).max(dim=1).values.clamp_min(torch.finfo(m.dtype).tiny)
            total = total + m / peak[:, None, None]
        return total

    def __repr__(self):
        name = getattr(self.method, "name", self.method)
        return (f"Explanation({name}, batch={len(self.total)}, layers={len(self.relevance)}, "
                f"n_steps={self.n_steps}, total={self.total.tolist()})")
