"""Classifier networks: the ConvNet-D of the dataset-distillation literature (teacher and students).

ConvNet-3 (DESIGN.md section 4): 3 x [conv3x3(width) -> instance norm -> ReLU -> avg-pool 2], then a
linear classifier. ``features`` returns the flattened output of the last block (the penultimate layer),
the feature space of every metric.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn


@dataclass
class ConvNetConfig:
    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 32
    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"  # instancenorm | batchnorm | none
    pooling: str = "avgpool"     # avgpool | maxpool


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)  # instance norm with affine, as in DC/DSA code
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose instancenorm, batchnorm or none")


class ConvNet(nn.Module):
    def __init__(self, config: ConvNetConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels, size = config.in_channels, config.image_size
        pool = {"avgpool": nn.AvgPool2d, "maxpool": nn.MaxPool2d}.get(config.pooling)
        if pool is None:
            raise ValueError(f"unknown pooling {config.pooling!r}; choose avgpool or maxpool")
        for _ in range(config.depth):
            layers += [nn.Conv2d(channels, config.width, 3, padding=1), _norm(config.norm, config.width),
                       nn.ReLU(inplace=True), pool(2, 2)]
            channels, size = config.width, size // 2
        self.body = nn.Sequential(*layers)
        self.feature_dim = channels * size * size
        self.classifier = nn.Linear(self.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> penultimate features (B, feature_dim)."""
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def config_dict(self) -> dict:
        return asdict(self.config)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-10-style student (four stages of one basic block, widths w, 2w, 4w, 8w) for checking
    cross-architecture generalisation; ``features`` returns the globally average-pooled last stage."""

    def __init__(self, config: ConvNetConfig):
        super().__init__()
        self.config = config
        w = max(8, config.width // 8)
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, w, 3, 1, 1, bias=False), _norm(config.norm, w),
                                  nn.ReLU(inplace=True))
        widths = (w, 2 * w, 4 * w, 8 * w)
        blocks, cin = [], w
        for i, cout in enumerate(widths):
            blocks.append(_BasicBlock(cin, cout, 1 if i == 0 else 2, config.norm))
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.feature_dim = cin
        self.classifier = nn.Linear(cin, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """The MLP student of the DC/DSA cross-architecture tables: flatten -> two hidden layers of ``width``
    ReLU units -> linear; ``features`` returns the second hidden layer."""

    def __init__(self, config: ConvNetConfig):
        super().__init__()
        self.config = config
        pixels = config.in_channels * config.image_size * config.image_size
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(pixels, config.width), nn.ReLU(inplace=True),
                                  nn.Linear(config.width, config.width), nn.ReLU(inplace=True))
        self.feature_dim = config.width
        self.classifier = nn.Linear(config.width, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# Student architectures by name. ``resnet``: SmallResNet with the config's norm (instance norm by default);
# ``resnet-bn``: the same with batch norm, as the cross-architecture tables of the field use.
ARCHITECTURES = {
    "convnet": ConvNet,
    "resnet": SmallResNet,
    "resnet-bn": lambda config: SmallResNet(replace(config, norm="batchnorm")),
    "mlp": MLP,
}


def build_classifier(architecture: str, config: ConvNetConfig) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    return ARCHITECTURES[architecture](config)
