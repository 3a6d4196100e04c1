"""The book's teaching widgets: figures of the toy networks and of ImageNet models, live in a kernel
and as static galleries in the built book.  Nothing in the explanation methods imports this package.

One module per kind of widget (the chapter that uses each function says so in its docstring):

* :mod:`~lidlib.widgets.gallery` — static galleries (no kernel), the live-widget pointer of the
  static book, figures as PNG, a control above a figure, small HTML tables;
* :mod:`~lidlib.widgets.plot` — heatmaps over images with a shared colour scale;
* :mod:`~lidlib.widgets.messages` — message matrices ``R_{j→i}`` of the explicit form (Fig. 2, LRP-ε);
* :mod:`~lidlib.widgets.contrast` — the top of the network: softmax saturation, logit shifts, the SG,
  ST and SIG top relevances (the contrast axis);
* :mod:`~lidlib.widgets.riemann` — integrated gradients along the path ``X̂ → X`` (Riemann sums);
* :mod:`~lidlib.widgets.conservation` — ``Σ R(Y^l)`` layer by layer: gaps, Taylor remainders,
  what the reference absorbs;
* :mod:`~lidlib.widgets.heatmaps` — the stage-heatmap explorer of a real network (Sec. 4.1).
"""
