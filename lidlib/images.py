"""Images for the book, offline: real photos, a two-object composite, and loading of any image file.

Images are float RGB tensors ``(3, H, W)`` in [0, 1]; model inputs are ``(B, 3, S, S)`` tensors after the
model's own ``preprocess`` (``S = model.input_size``, see :mod:`lidlib.models`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Tuple, Union

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError

__all__ = ["PHOTOS", "photo", "fit", "composite", "TwoObject", "two_object", "TWO_OBJECT_CLASSES",
           "to_model_input", "check_input", "load_image", "load_folder", "IMAGE_SUFFIXES", "EVAL_PHOTOS", "to_tensor"]

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "grace_hopper")
#: the photos of the evaluation set (Ch. 12): the offline photos of scikit-image and matplotlib whose top-1
#: class on EfficientNet-Lite0 is a sensible ImageNet class for what they show (Egyptian cat, espresso,
#: missile, military uniform, tripod (the cameraman's), moped).  Left out: astronaut (bobsled), horse (a
#: silhouette: Great Dane), clock (bubble), hubble_deep_field (bubble), coins (golf ball), the backpack
#: (can opener).  scikit-learn's china.jpg (palace) and flower.jpg (daisy) would do too but need
#: scikit-learn, which the book does not require; ``photo("china")`` loads them where it is installed.
EVAL_PHOTOS = ("chelsea", "coffee", "rocket", "grace_hopper", "camera", "stereo_motorcycle")
_SKLEARN = {"china": "china.jpg", "flower": "flower.jpg"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# ImageNet classes of the bundled two-object image: Egyptian cat (right half), espresso (left half)
TWO_OBJECT_CLASSES = (285, 967)


def _to_tensor(img) -> torch.Tensor:
    """PIL image, NumPy array (H,W[,C]) or tensor ((C,)H,W) -> float RGB (3,H,W) in [0, 1].

    Grayscale is repeated to RGB, alpha is composited onto white, palettes are expanded.  Integers are
    scaled by their range (uint8: 255, uint16: 65535); floats are taken as [0, 1] ([0, 255] if above 1).
    """
    if isinstance(img, Image.Image):
        if img.mode in ("I", "F") or img.mode.startswith("I;16"):  # 16/32-bit grayscale: keep the depth
            return _to_tensor(np.asarray(img))
        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
            img = img.convert("RGBA")
        elif img.mode != "RGB":
            img = img.convert("RGB")
        return _to_tensor(np.asarray(img))
    if isinstance(img, np.ndarray):
        if img.ndim == 3 and img.shape[-1] in (1, 2, 3, 4):
            a = np.moveaxis(img, -1, 0)
        elif img.ndim == 2:
            a = img
        else:
            raise ValueError(f"a NumPy image must be (H,W) or (H,W,C) with C in 1..4, got shape {img.shape}")
        x = torch.from_numpy(np.array(a, dtype=np.float32))
        if a.dtype == np.uint16:
            x = x / 65535
        elif a.dtype != np.bool_ and (not np.issubdtype(a.dtype, np.floating) or x.max() > 1):
            x = x / (255 if x.max() <= 255 else 65535)
        return _to_tensor(x)
    if isinstance(img, torch.Tensor):
        x = img.detach().float().cpu()
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or x.shape[0] not in (1, 2, 3, 4):
            raise ValueError(f"an image tensor must be (H,W) or (C,H,W) with C in 1..4 (channels first), "
                             f"got shape {tuple(img.shape)}")
        if x.shape[0] in (2, 4):  # gray+alpha / RGBA: composite onto white
            alpha = x[-1:].clamp(0, 1)
            x = x[:-1] * alpha + (1 - alpha)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return x.clamp(0, 1).contiguous()
    raise TypeError(f"expected a path, PIL image, NumPy array or torch tensor, got {type(img).__name__}")


def photo(name: str) -> torch.Tensor:
    """A real photo bundled with scikit-image, matplotlib or scikit-learn, as (3,H,W) in [0, 1]; ``name`` in
    :data:`PHOTOS` or :data:`EVAL_PHOTOS`."""
    if name == "grace_hopper":
        import matplotlib
        return _to_tensor(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    known = tuple(dict.fromkeys(PHOTOS + EVAL_PHOTOS + tuple(_SKLEARN)))
    if name not in known:
        raise ValueError(f"unknown photo {name!r}; choose one of {known}")
    if name in _SKLEARN:
        from sklearn.datasets import load_sample_image
        return _to_tensor(load_sample_image(_SKLEARN[name]))
    import skimage.data
    img = getattr(skimage.data, name)()
    return _to_tensor(img[0] if isinstance(img, tuple) else img)     # stereo_motorcycle: (left, right, disparity)


def fit(img: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased bilinear), then center-crop to ``size × size``."""
    img = _to_tensor(img)
    if min(img.shape[-2:]) != size:
        img = TF.resize(img, size, antialias=True)
    return TF.center_crop(img, [size, size]).clamp(0, 1)


def composite(left, right, size: int = 224) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Two photos side by side in one ``size × size`` image, and the boolean masks of their halves.

    Each photo (name in :data:`PHOTOS` or an image) is center-cropped to a portrait 2:1 strip and resized to
    ``size × size/2``, so nothing is squeezed.  Returns ``(image (3,S,S), (left_mask, right_mask))``,
    masks ``(S,S)`` bool, True on the columns of that photo.
    """
    widths = (size // 2, size - size // 2)
    strips = []
    for img, width in zip((left, right), widths):
        img = photo(img) if isinstance(img, str) else _to_tensor(img)
        h, w = img.shape[-2:]
        ch, cw = (h, round(h * width / size)) if w * size >= h * width else (round(w * size / width), w)
        img = TF.center_crop(img, [ch, cw])  # largest centered window of the strip's aspect
        strips.append(TF.resize(img, [size, width], antialias=True).clamp(0, 1))
    image = torch.cat(strips, dim=-1)
    left_mask = torch.zeros(size, size, dtype=torch.bool)
    left_mask[:, :widths[0]] = True
    return image, (left_mask, ~left_mask)


class TwoObject(NamedTuple):
    image: torch.Tensor                               # (3, S, S) in [0, 1]
    classes: Tuple[int, int]                          # ImageNet indices of class A and class B
    masks: Tuple[torch.Tensor, torch.Tensor]          # (S, S) bool regions of A and B (same order)


def two_object(size: int = 224) -> TwoObject:
    """The book's two-object image (like the paper's bull mastiff + tiger cat): coffee (left) | cat (right).

    ``classes = (285 Egyptian cat, 967 espresso)``, ``masks = (right half, left half)`` in the same order.
    At 224, EfficientNet-Lite0's top-5 is Egyptian cat 0.67, espresso 0.07, tabby, tiger cat, coffee mug (tested).
    Usage: ``img, (a, b), (mask_a, mask_b) = two_object()``.
    """
    image, (left, right) = composite("coffee", "chelsea", size)
    return TwoObject(image, TWO_OBJECT_CLASSES, (right, left))


def check_input(x, model) -> torch.Tensor:
    """Return ``x`` if it is a model input ``(B, 3, S, S)`` float tensor, else raise saying how to get one."""
    s = getattr(model, "input_size", 224)
    hint = ("load a file or array with lidlib.images.load_image(path_or_array, model), or turn a (3,H,W) "
            "[0, 1] tensor into one with lidlib.images.to_model_input(img, model)")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (B, 3, {s}, {s}), got {type(x).__name__}; {hint}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float tensor (B, 3, {s}, {s}), got {x.dtype}; {hint}")
    if x.dim() == 3:
        raise ValueError(f"expected a batch (B, 3, {s}, {s}), got {tuple(x.shape)}; add the batch axis with "
                         f"x[None] (and preprocess it), or {hint}")
    if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (s, s):
        raise ValueError(f"expected shape (B, 3, {s}, {s}) (RGB, channels first, {s}×{s}), got "
                         f"{tuple(x.shape)}; {hint}")
    return x


def to_model_input(img, model) -> torch.Tensor:
    """(3,H,W) image in [0, 1] (or any image :func:`load_image` takes) -> preprocessed ``(1, 3, S, S)``."""
    return model.preprocess(fit(img, model.input_size))[None]


def _read(path: Union[str, os.PathLike]) -> Image.Image:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; use load_folder(folder, model)")
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read {path} as an image ({e})") from e


def load_image(path_or_array, model) -> torch.Tensor:
    """Any image (path, PIL, NumPy (H,W[,C]), tensor ((C,)H,W)), any size and mode -> model input (1,3,S,S).

    Grayscale, RGBA (onto white) and palette images become RGB; the shorter side is resized to
    ``model.input_size`` and the center cropped; then ``model.preprocess`` is applied.
    """
    img = _read(path_or_array) if isinstance(path_or_array, (str, os.PathLike)) else path_or_array
    return to_model_input(img, model)


def load_folder(folder: Union[str, os.PathLike], model) -> torch.Tensor:
    """All images of ``folder`` (sorted by name, suffixes in :data:`IMAGE_SUFFIXES`) -> model input (N,3,S,S)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return torch.cat([load_image(p, model) for p in files])


#: any image (PIL, NumPy, tensor) as a float RGB (3, H, W) tensor in [0, 1]
to_tensor = _to_tensor
