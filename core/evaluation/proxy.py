"""Accuracy proxies: a predicted student accuracy of a distilled set in well under a second, read off the
validation split only (never the test split).

A student takes minutes; a kernel "student" takes milliseconds. Each proxy here is kernel ridge regression
(KRR) from the set's images to their targets in the feature space of a frozen network, scored by its accuracy
on the validation images: KIP (Nguyen et al., ICLR 2021, "Dataset Meta-Learning from Kernel Ridge-Regression")
measures a set the same way with the neural tangent kernel of an infinitely wide ConvNet; here the kernel is an
inner product of finite features, computed on the CPU in one solve:

    f(x) = k(x, X_s) (K_ss + r * mean(diag K_ss) * I)^-1 Y_s,     proxy = mean_v [argmax f(x_v) == y_v]

Targets ``Y_s``: one-hot labels for the hard-label protocols (``hard``, ``hard-dsa``); the teacher's
temperature-softened outputs for the soft ones (``soft``, ``soft-online``), optionally on augmented copies
of the set (what soft-online's student sees). Embeddings: the teacher's penultimate features, or the
concatenated features of a few randomly initialised ConvNets (the random networks of distribution matching,
Zhao & Bilen, WACV 2023). Features are L2-normalised, so the linear kernel is a cosine kernel.

Shapes: images (N, C, H, W) in [-1, 1]; labels (N,) int class ids of the full dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.config import SOFT_TEMPERATURE

EMBEDDINGS = ("teacher", "random-convnet")
KERNELS = ("linear", "rbf")
FAMILIES = {"hard": "hard", "hard-dsa": "hard", "soft": "soft", "soft-online": "soft"}   # protocol -> targets


@dataclass(frozen=True)
class ProxyConfig:
    """``ridge``: the regulariser relative to the kernel's mean diagonal; ``augmentations``: augmented copies of
    the set added to the support (flips and 2-px shifts, seeded; the students train on augmented images too);
    ``networks`` / ``width``:
    the random ConvNets of the ``random-convnet`` embedding."""

    embedding: str = "teacher"
    kernel: str = "linear"
    ridge: float = 0.1
    augmentations: int = 0
    networks: int = 4
    width: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"proxy embedding must be one of {', '.join(EMBEDDINGS)}, got {self.embedding!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"proxy kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if not (isinstance(self.ridge, (int, float)) and 0 < self.ridge < 1e6):
            raise ValueError(f"proxy ridge must be a number in (0, 1e6), got {self.ridge!r}")
        for name, value, high in (("augmentations", self.augmentations, 64), ("networks", self.networks, 64),
                                  ("width", self.width, 1024)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                raise ValueError(f"proxy {name} must be a whole number from 0 to {high}, got {value!r}")


def _random_convnets(config: ProxyConfig, channels: int, num_classes: int) -> list[torch.nn.Module]:
    from core.models.convnet import ConvNet, ConvNetConfig

    nets = []
    for k in range(max(1, config.networks)):
        torch.manual_seed(config.seed + k)
        nets.append(ConvNet(ConvNetConfig(in_channels=channels, num_classes=num_classes, width=config.width)).eval())
    return nets


def _shifted_flips(images: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    """``copies`` augmented versions of ``images`` (random horizontal flip, shift by up to 2 px), stacked."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        flip = torch.rand(len(images), generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], images.flip(-1), images)
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
        out.append(torch.roll(x, shifts=(dy, dx), dims=(-2, -1)))
    return torch.cat(out)


# The proxy the app shows and the search maximises: the random-network embedding ranked the calibration sets best
# so far (benchmarks/proxy/CALIBRATION.md; students' validation accuracy, never test).
DEFAULT_PROXY = ProxyConfig(embedding="random-convnet")


class KernelProxy:
    """KRR accuracy proxy fitted to one validation split: its features are computed once here, so a score costs
    the set's features, one (N x N) solve and one (V x N) product. ``teacher`` (core.models.teacher.Teacher)
    gives the ``teacher`` embedding and the soft targets."""

    def __init__(self, validation, teacher=None, config: ProxyConfig = DEFAULT_PROXY):
        if config.embedding == "teacher" and teacher is None:
            raise ValueError("the teacher embedding needs a teacher")
        self.config, self.teacher = config, teacher
        images = validation.batch(slice(None))   # (V, C, H, W) in [-1, 1]
        self._nets = (_random_convnets(config, images.shape[1], int(validation.labels.max()) + 1)
                      if config.embedding == "random-convnet" else [])
        self.val_features = self.features(images)
        self.val_labels = torch.as_tensor(np.asarray(validation.labels), dtype=torch.long)
        self.num_classes = int(self.val_labels.max()) + 1

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised features of images in [-1, 1]."""
        images = images.float()
        if self.config.embedding == "teacher":
            raw = self.teacher.features(images)
        else:
            raw = torch.cat([net.features(images) for net in self._nets], dim=1)
        return torch.nn.functional.normalize(raw.float(), dim=1)

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dot = a @ b.T
        if self.config.kernel == "linear":
            return dot
        return torch.exp(-(2 - 2 * dot).clamp_min(0))   # unit vectors: |a - b|^2 = 2 - 2 a.b; bandwidth 1

    @torch.no_grad()
    def targets(self, images: torch.Tensor, labels: np.ndarray, protocol: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(support images, their targets (N', classes)) of a set under ``protocol``'s labels."""
        family = FAMILIES.get(protocol)
        if family is None:
            raise ValueError(f"protocol must be one of {', '.join(FAMILIES)}, got {protocol!r}")
        if family == "soft" and self.teacher is None:
            raise ValueError(f"{protocol} targets are the teacher's soft labels, and there is no teacher")
        images, copies = images.float(), 1 + self.config.augmentations
        if self.config.augmentations:
            images = torch.cat([images, _shifted_flips(images, self.config.augmentations, self.config.seed)])
        if family == "hard":
            labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).repeat(copies)
            return images, torch.nn.functional.one_hot(labels, self.num_classes).float()
        return images, self.teacher.soft_labels(images, SOFT_TEMPERATURE).float()

    @torch.no_grad()
    def score(self, images: torch.Tensor, labels: np.ndarray, protocol: str = "hard-dsa") -> float:
        """The proxy accuracy (a fraction) of the set (images, labels) under ``protocol``'s targets."""
        support, targets = self.targets(torch.as_tensor(images), labels, protocol)
        phi = self.features(support)
        gram = self._kernel(phi, phi).double()
        gram += self.config.ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
        alpha = torch.linalg.solve(gram, targets.double())
        predicted = (self._kernel(self.val_features, phi).double() @ alpha).argmax(dim=1)
        return float((predicted == self.val_labels).float().mean())
