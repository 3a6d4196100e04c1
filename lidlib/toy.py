"""Seeded toy networks with non-zero biases, for the first chapters and the tests.

A zero-bias ReLU network with a zero reference makes LID-Taylor, LID-IG and DeepLIFT coincide, so
every builder here draws its biases from N(0, ``bias_std``²) and returns an eval-mode model.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "leaky_relu": lambda: nn.LeakyReLU(0.1)}


def _init(model: nn.Module, seed: int, dtype, weight_gain: float, bias_std: float) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * weight_gain / fan_in ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * bias_std)
    return model.to(dtype).eval()


def mlp(sizes: Sequence[int] = (4, 8, 8, 3), activation: str = "relu", seed: int = 0,
        dtype=torch.float64, bias_std: float = 0.5) -> nn.Sequential:
    """Linear → activation → … → Linear (logits), e.g. ``mlp((2, 3, 2))``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return _init(nn.Sequential(*layers), seed, dtype, 1.5, bias_std)


def cnn(in_channels: int = 2, size: int = 12, classes: int = 5, seed: int = 0, dtype=torch.float64,
        bias_std: float = 0.3) -> nn.Sequential:
    """Two conv–ReLU–max-pool blocks (the second pool overlapping), then Linear–ReLU–Linear."""
    s = (size // 2 - 3) // 2 + 1
    model = nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),
        nn.Flatten(), nn.Linear(6 * s * s, 10), nn.ReLU(), nn.Linear(10, classes))
    return _init(model, seed, dtype, 1.5, bias_std)


class _Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU6()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x):
        return x + self.conv2(self.act(self.bn(self.conv1(x))))


def residual_cnn(in_channels: int = 2, size: int = 8, classes: int = 4, seed: int = 0,
                 dtype=torch.float64, bias_std: float = 0.3) -> nn.Module:
    """A small network with a residual addition, BatchNorm, ReLU6 and a depthwise conv (the tests'
    non-sequential model: tests/test_explainer.py, tests/test_fuzz.py)."""
    model = nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), _Residual(4), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, classes))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        bn = model[2].bn
        bn.running_mean.copy_(torch.randn(4, generator=g) * 0.2)
        bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        bn.weight.copy_(torch.rand(4, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(4, generator=g) * 0.2)
    return _init(model, seed, dtype, 1.5, bias_std)


def two_two_one(dtype=torch.float64) -> nn.Sequential:
    """The hand-computable 2-2-1 network of the exercises: small integer weights, non-zero biases."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([0.5, -1.0]))
        model[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
        model[2].bias.copy_(torch.tensor([0.25]))
    return model.to(dtype).eval()


def running_example(seed: int = 1):
    """The running example of Chapters 5–8: ``(model, x, x_ref, c)`` with ``model = mlp((4, 8, 8, 3))``
    (seeded float64 ReLU MLP with non-zero biases), ``X ~ N(0, I)``, ``X̂ ~ N(0, 0.25 I)``, class 0."""
    model = mlp((4, 8, 8, 3))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, dtype=torch.float64, generator=g)
    x_ref = 0.5 * torch.randn(1, 4, dtype=torch.float64, generator=g)
    return model, x, x_ref, 0


def forward_with_gradients(model: nn.Sequential, x: torch.Tensor, c: Optional[int]):
    """``(ys, grads)``: ``ys[0] = x`` and ``ys[l+1]`` the output of module ``l`` (detached), and
    ``grads[l] = ∂Z_c/∂ys[l]`` by autograd (``grads = None`` when ``c`` is None)."""
    h = x.detach().clone().requires_grad_(c is not None)
    ys = [h]
    with torch.enable_grad() if c is not None else torch.no_grad():
        for layer in model:
            h = layer(h)
            ys.append(h)
        grads = list(torch.autograd.grad(h[0, c], ys)) if c is not None else None
    return [y.detach() for y in ys], grads
