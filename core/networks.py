"""Classifier networks: the ConvNet-D of the dataset-distillation literature (teacher and students).

ConvNet-3 (DESIGN.md section 4): 3 x [conv3x3(width) -> instance norm -> ReLU -> avg-pool 2], then a
linear classifier. ``features`` returns the flattened output of the last block (the penultimate layer),
the feature space of every metric.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

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
