"""Image sources of the evaluation: the bundled photos, two-object composites (with object masks), the
evaluation set of Ch. 12 (:func:`eval_samples`), a folder of images, or a list of :class:`Sample`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

#: photo pairs of the default composites (left object, right object)
PAIRS = (("coffee", "chelsea"), ("rocket", "grace_hopper"))


#: composite layouts: where object A and object B go
LAYOUTS = ("halves", "swapped", "stacked", "small")


#: layouts of the evaluation set (:func:`eval_samples`); A is the target, B the other object
EVAL_LAYOUTS = ("halves", "stacked", "small", "small-target", "stacked-small", "stacked-small-target", "inset")


#: the name of the evaluation set as a ``source`` of :func:`run` (command line: ``--eval-set``)
EVAL_SET = "eval-set"


@dataclass
class Sample:
    """One image to evaluate: ``x`` the preprocessed (1, 3, S, S) input; ``target`` (None: the model's top-1);
    ``image`` (3, S, S) in [0, 1] for display; ``region`` / ``other`` (S, S) bool object masks for
    ``class-discrimination`` (the target's object, the other object)."""
    name: str
    x: torch.Tensor
    target: Optional[int] = None
    image: Optional[torch.Tensor] = None
    region: Optional[torch.Tensor] = None
    other: Optional[torch.Tensor] = None


@dataclass
class Composite:
    """A two-object image: ``classes`` (A, B) are each object's top-1 class when shown alone; ``masks`` (A, B)."""
    name: str
    image: torch.Tensor
    classes: Tuple[int, int]
    masks: Tuple[torch.Tensor, torch.Tensor]
    objects: Tuple[str, str] = ("", "")


def _top1(model, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x).argmax(dim=1)[0])


def _place(canvas: torch.Tensor, img: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    """Paste ``img`` into the box (top, left, h, w): largest centred window of the box's aspect, resized."""
    import torchvision.transforms.functional as TF
    ih, iw = img.shape[-2:]
    ch, cw = (ih, round(ih * w / h)) if iw * h >= ih * w else (round(iw * h / w), iw)
    crop = TF.center_crop(img, [ch, cw])
    canvas[:, top:top + h, left:left + w] = TF.resize(crop, [h, w], antialias=True).clamp(0, 1)
    mask = torch.zeros(canvas.shape[-2:], dtype=torch.bool)
    mask[top:top + h, left:left + w] = True
    return mask


def _layout_image(a: torch.Tensor, b: torch.Tensor, layout: str, size: int, background: float = 0.5):
    """Image (3, S, S) and masks (A, B) of one layout on a neutral grey canvas."""
    canvas = torch.full((3, size, size), float(background))
    half, rest = size // 2, size - size // 2
    if layout == "halves":
        ma, mb = _place(canvas, a, 0, 0, size, half), _place(canvas, b, 0, half, size, rest)
    elif layout == "swapped":
        mb, ma = _place(canvas, b, 0, 0, size, half), _place(canvas, a, 0, half, size, rest)
    elif layout == "stacked":
        ma, mb = _place(canvas, a, 0, 0, half, size), _place(canvas, b, half, 0, rest, size)
    elif layout == "small":          # A keeps its half; B shrunk into a box (3/8 of the side) in the other half
        ma = _place(canvas, a, 0, 0, size, half)
        s = (3 * size) // 8
        mb = _place(canvas, b, (size - s) // 2, half + (rest - s) // 2, s, s)
    elif layout == "small-target":   # A shrunk into a box in the left half, B the right half
        s = (3 * size) // 8
        ma = _place(canvas, a, (size - s) // 2, (half - s) // 2, s, s)
        mb = _place(canvas, b, 0, half, size, rest)
    elif layout == "stacked-small":  # A the top half, B shrunk into a box in the bottom half
        s = (3 * size) // 8
        ma = _place(canvas, a, 0, 0, half, size)
        mb = _place(canvas, b, half + (rest - s) // 2, (size - s) // 2, s, s)
    elif layout == "stacked-small-target":
        s = (3 * size) // 8
        ma = _place(canvas, a, (half - s) // 2, (size - s) // 2, s, s)
        mb = _place(canvas, b, half, 0, rest, size)
    elif layout == "inset":          # A fills the canvas, B an inset (3/8 of the side) in the top-right corner
        s = (3 * size) // 8
        ma = _place(canvas, a, 0, 0, size, size)
        mb = _place(canvas, b, 0, size - s, s, s)
        ma = ma & ~mb
    else:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    return canvas, (ma, mb)


def composites(model, pairs: Sequence[Tuple[str, str]] = PAIRS, layouts: Sequence[str] = LAYOUTS,
               background: float = 0.5) -> List[Composite]:
    """Two-object images from the offline photos, at several positions and scales.

    For each pair ``(a, b)`` of :data:`lidlib.images.PHOTOS` names and each layout: ``"halves"`` (a left, b right,
    as :func:`lidlib.images.composite`), ``"swapped"`` (b left, a right), ``"stacked"`` (a top, b bottom) and
    ``"small"`` (a keeps the left half, b is shrunk into a box of 3/8 of the side, centred in the right half,
    on a neutral grey background).  ``classes`` are each photo's top-1 class on ``model`` when shown alone.
    """
    from .. import images
    size = getattr(model, "input_size", 224)
    out = []
    for a_name, b_name in pairs:
        a, b = images.photo(a_name), images.photo(b_name)
        ca, cb = (_top1(model, images.to_model_input(p, model)) for p in (a, b))
        if ca == cb:
            raise ValueError(f"{a_name} and {b_name} have the same top-1 class ({ca}): choose two different objects")
        for layout in layouts:
            img, masks = _layout_image(a, b, layout, size, background)
            out.append(Composite(f"{a_name}+{b_name}/{layout}", img, (ca, cb), masks, (a_name, b_name)))
    return out


def eval_samples(model, photos: Sequence[str] = None, layouts: Sequence[str] = EVAL_LAYOUTS,
                 background: float = 0.5) -> List[Sample]:
    """The evaluation set of Ch. 12: for every ORDERED pair (a, b) of distinct photos of
    :data:`lidlib.images.EVAL_PHOTOS` and every layout of :data:`EVAL_LAYOUTS`, one composite whose target
    is a's class (a's top-1 when shown alone), ``region`` a's box and ``other`` b's box.  Every image is
    different (a|b and b|a are two images), and each has one target: 6 photos × 5 others × 7 layouts =
    210 images with known regions.  Ordered layout-major: the first 30 are every pair in ``"halves"``."""
    from .. import images
    photos = tuple(photos or images.EVAL_PHOTOS)
    size = getattr(model, "input_size", 224)
    pics = {n: images.photo(n) for n in photos}
    cls = {n: _top1(model, images.to_model_input(p, model)) for n, p in pics.items()}
    dup = [(a, b) for a in photos for b in photos if a < b and cls[a] == cls[b]]
    if dup:
        raise ValueError(f"photos {dup[0]} have the same top-1 class ({cls[dup[0][0]]}): drop one")
    out = []
    for layout in layouts:
        for a in photos:
            for b in photos:
                if a == b:
                    continue
                img, (ma, mb) = _layout_image(pics[a], pics[b], layout, size, background)
                out.append(Sample(f"{a}+{b}/{layout}", model.preprocess(img)[None], int(cls[a]), img, ma, mb))
    return out


def photo_samples(model, names: Sequence[str] = None) -> List[Sample]:
    """The bundled photos (:data:`lidlib.images.PHOTOS`) as samples (target: top-1)."""
    from .. import images
    out = []
    for n in (names or images.PHOTOS):
        img = images.fit(images.photo(n), getattr(model, "input_size", 224))
        out.append(Sample(n, model.preprocess(img)[None], None, img))
    return out


def composite_samples(model, comps: Sequence[Composite] = None, per_object: bool = False) -> List[Sample]:
    """Samples from composites: one per composite (target: top-1 of the composite), or, with ``per_object``,
    one per object (target: that object's class, ``region`` its box, ``other`` the other object's box)."""
    comps = composites(model) if comps is None else comps
    out = []
    for c in comps:
        x = model.preprocess(c.image)[None]
        if not per_object:
            out.append(Sample(c.name, x, None, c.image))
            continue
        for k in (0, 1):
            obj = c.objects[k] or "AB"[k]
            out.append(Sample(f"{c.name}:{obj}", x, int(c.classes[k]), c.image, c.masks[k], c.masks[1 - k]))
    return out


def default_source(model, per_object: bool = False) -> List[Sample]:
    """The photos and the composites (``per_object``: the composites only, once per object)."""
    comps = composites(model)
    if per_object:
        return composite_samples(model, comps, per_object=True)
    return photo_samples(model) + composite_samples(model, comps)


def folder_samples(folder, model) -> List[Sample]:
    """Every image file of ``folder`` (sorted; :data:`lidlib.images.IMAGE_SUFFIXES`), named by its file name."""
    from .. import images
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ValueError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in images.IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files ({', '.join(images.IMAGE_SUFFIXES)}) in {folder}")
    out = []
    for p in files:
        try:
            out.append(Sample(p.name, images.load_image(p, model)))
        except Exception as e:  # noqa: BLE001 -- re-raised with the file's name
            raise ValueError(f"cannot read image {p}: {e}") from e
    return out


def _resolve_source(source, model, per_object: bool) -> List[Sample]:
    if source is None:
        return default_source(model, per_object=per_object)
    if isinstance(source, str) and source == EVAL_SET:
        return eval_samples(model)
    if isinstance(source, (str, os.PathLike)):
        return folder_samples(source, model)
    if isinstance(source, torch.Tensor):
        if source.dim() != 4:
            raise ValueError(f"a tensor source must be a preprocessed batch (N, 3, S, S), got {tuple(source.shape)}")
        return [Sample(str(i), source[i:i + 1]) for i in range(source.shape[0])]
    samples = list(source)
    if not samples:
        raise ValueError("the image source is empty")
    for s in samples:
        if not isinstance(s, Sample):
            raise TypeError(f"a source list must hold lidlib.evaluation.Sample objects, got {type(s).__name__}")
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        raise ValueError("sample names must be unique")
    return samples


def _validate_samples(samples: List[Sample], model) -> Tuple[List[Sample], List[int]]:
    """One forward pass per image: the model must take it and return finite logits (1, K).

    Returns the samples with inputs in the model's dtype and device (copies; the caller's are not changed)
    and the targets."""
    import dataclasses
    targets, out = [], []
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    for s in samples:
        if not isinstance(s.x, torch.Tensor) or s.x.dim() != 4 or s.x.shape[0] != 1:
            raise ValueError(f"image {s.name!r}: expected a preprocessed input (1, 3, S, S), got "
                             f"{tuple(s.x.shape) if isinstance(s.x, torch.Tensor) else type(s.x).__name__}")
        if param is not None:
            s = dataclasses.replace(s, x=s.x.detach().to(device=param.device, dtype=param.dtype))
        try:
            with torch.no_grad():
                z = model(s.x)
        except Exception as e:  # noqa: BLE001 -- re-raised with the image's name
            raise ValueError(f"the model cannot take image {s.name!r} of shape {tuple(s.x.shape)}: {e}") from e
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != 1:
            raise ValueError(f"image {s.name!r}: the model must return logits (1, K), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        if not torch.isfinite(z).all():
            raise ValueError(f"image {s.name!r}: the model's output is not finite")
        t = int(z.argmax(dim=1)[0]) if s.target is None else int(s.target)
        if not 0 <= t < z.shape[1]:
            raise ValueError(f"image {s.name!r}: target {t} out of range for {z.shape[1]} classes")
        targets.append(t)
        out.append(s)
    return out, targets
