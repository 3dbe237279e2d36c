"""The teacher: a ConvNet-3 trained on the whole training set.

Its penultimate layer is the feature space of the metrics; its temperature-softened outputs are the
soft labels of student training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from core.config import SOFT_TEMPERATURE
from core.data.datasets import LabelledImages
from core.models.convnet import ConvNet, ConvNetConfig
from core.reads import MODEL_CONFIG, config_from_json, load_state_checked, read_model_folder

KIND = "distill-studio/teacher-convnet"
FIX = "re-create it with `python -m core train-teacher --out DIR`"


class Teacher:
    """A frozen classifier with batched logits, features and soft labels (inputs in [-1, 1])."""

    def __init__(self, net: ConvNet, device: str | torch.device = "cpu"):
        self.net = net.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Teacher":
        config, state = read_model_folder(path, KIND, FIX)
        net = ConvNet(config_from_json(ConvNetConfig, config, Path(path) / MODEL_CONFIG, FIX))
        load_state_checked(net, state, path, FIX)
        return cls(net, device)

    def fits(self, image_shape: tuple[int, ...], num_classes: int) -> bool:
        """True when images of ``image_shape`` (C, H, W) in ``num_classes`` classes are this teacher's kind."""
        c = self.net.config
        return tuple(image_shape) == (c.in_channels, c.image_size, c.image_size) and self.num_classes == num_classes

    @property
    def num_classes(self) -> int:
        return self.net.config.num_classes

    @torch.inference_mode()
    def _batched(self, fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
        c, s = self.net.config.in_channels, self.net.config.image_size
        if images.ndim != 4 or images.shape[1:] != (c, s, s):
            raise ValueError(f"teacher expects images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")
        return torch.cat([fn(images[i:i + batch_size].to(self.device)).float().cpu()
                          for i in range(0, len(images), batch_size)]) if len(images) else torch.empty(0)

    def logits(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return self._batched(self.net, images, batch_size)

    def features(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Penultimate-layer features, shape (B, feature_dim)."""
        return self._batched(self.net.features, images, batch_size)

    def soft_labels(self, images: torch.Tensor, temperature: float = SOFT_TEMPERATURE) -> torch.Tensor:
        return F.softmax(self.logits(images) / temperature, dim=1)

    def accuracy(self, data: LabelledImages, batch_size: int = 500) -> float:
        correct = 0
        for i in range(0, len(data), batch_size):
            pred = self.logits(data.batch(slice(i, i + batch_size))).argmax(1).numpy()
            correct += int((pred == data.labels[i:i + batch_size]).sum())
        return correct / len(data)
