"""Distribution-matching refinement of a distilled set (DM, Zhao & Bilen, WACV 2023), the task-aware option of PGFM.

Every iteration draws a freshly initialised ConvNet-3 (instance norm, ``width``) as the embedding φ and one DSA
policy (``core.data.augment``), then for every class c matches the mean embedding of ``real_batch`` real images of c
to that of the set's images of c, each batch augmented with that policy:

    loss = Σ_c || mean φ(A(real_c)) − mean φ(A(set_c)) ||²              (objective ``mean``, DM)

Embedding ``teacher`` replaces the random networks by the frozen teacher's penultimate features (the same
network every iteration; the DSA policy is still drawn anew): the set then matches the real images where the
teacher that relabels ``soft-online`` batches looks (SRe2L-style use of the teacher, here as feature matching).

Objective ``mmd`` adds to each class's term a Gaussian-kernel MMD² between the two batches of embeddings
(M3D, Zhang et al., AAAI 2024: matching the whole embedding distribution, not only its mean, keeps the set
spread out). Its bandwidths are {1/4, 1, 4} x the median squared real-to-set distance m (detached), and the
MMD² is multiplied by m, so that it has the units (squared embedding distance) of the mean term.

``boundary`` β > 0 adds to each class's term β times the mean negative entropy Σ_k p_k log p_k of the teacher's
softmax at temperature ``SOFT_TEMPERATURE`` on the augmented set images: the set moves toward where the teacher
is unsure, near the class boundaries, where its soft labels carry most (Heo et al., AAAI 2019, on KD with
boundary-supporting samples), while the matching term keeps it on the class's real distribution.

``space`` says what is optimised:
- ``latent`` (GLaD / LD3M style): the latents, with Adam at ``lr``, through the frozen VAE decoder, so every image
  stays one the decoder can draw;
- ``pixel`` (DM's own): the decoded images, with SGD (momentum 0.5) at ``lr``, clamped to [-1, 1]; it can also undo
  what the VAE blurs.

Images are (N, C, H, W) in [-1, 1], latents the VAE's scaled latents; every random draw (networks, real rows,
augmentation) follows ``seed``. Written by hand: DM's reference code is a research script, not a library.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from core.config import SOFT_TEMPERATURE, RefineConfig
from core.data.augment import POLICIES, dsa_augment
from core.models.convnet import ConvNet, ConvNetConfig


@dataclass(frozen=True)
class RefineResult:
    latents: torch.Tensor          # (N, *latent_shape): refined (space latent) or the input (space pixel)
    images: torch.Tensor | None    # space pixel: the refined (N, C, H, W) in [-1, 1]; latent: None (decode the latents)
    losses: np.ndarray             # the matching loss of every iteration


MMD_BANDWIDTHS = (0.25, 1.0, 4.0)   # x the median squared distance


def gaussian_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased MMD² (the V-statistic, diagonals included: never negative) between rows of ``x`` (n, d) and ``y``
    (m, d; the fixed target) under Gaussian kernels at ``MMD_BANDWIDTHS`` times the median squared x-to-y
    distance s (detached), multiplied by s: squared-distance units, so scaling both sets by c scales it by c²."""
    def sq_dist(a, b):
        return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)

    d_xx, d_xy, d_yy = sq_dist(x, x), sq_dist(x, y), sq_dist(y, y)
    scale = d_xy.detach().median().clamp_min(1e-12)
    mmd2 = sum((-d_xx / (b * scale)).exp().mean() + (-d_yy / (b * scale)).exp().mean()
               - 2 * (-d_xy / (b * scale)).exp().mean() for b in MMD_BANDWIDTHS)
    return scale * mmd2


def class_match_loss(embed: ConvNet, real: torch.Tensor, synthetic: torch.Tensor, policy: str,
                     generator: torch.Generator, objective: str = "mean", boundary: float = 0.0) -> torch.Tensor:
    """One class's matching loss between its augmented real and synthetic images: the squared distance of the
    mean embeddings, plus (``objective`` mmd) the scaled Gaussian MMD² of the embeddings, plus (``boundary`` > 0)
    that weight times the mean negative entropy of ``embed``'s tempered softmax on the synthetic images."""
    with torch.no_grad():
        target = embed.features(dsa_augment(real, generator, policy))
    features = embed.features(dsa_augment(synthetic, generator, policy))
    loss = (features.mean(0) - target.mean(0)).pow(2).sum()
    if objective == "mmd":
        loss = loss + gaussian_mmd2(features, target)
    if boundary:
        log_p = torch.log_softmax(embed.classifier(features) / SOFT_TEMPERATURE, dim=1)
        loss = loss + boundary * (log_p.exp() * log_p).sum(1).mean()
    return loss


def refine_set(latents: torch.Tensor, labels: np.ndarray, decode: Callable[[torch.Tensor], torch.Tensor],
               real_images: Callable[[int, int, np.random.Generator], torch.Tensor], config: RefineConfig,
               seed: int = 0, progress: Callable[[float, str], None] | None = None,
               teacher: ConvNet | None = None) -> RefineResult:
    """Refine the set (``latents`` (N, ...) with class ``labels`` (N,)) by distribution matching.

    ``decode(latents)``: differentiable images in [-1, 1]; ``real_images(c, n, rng)``: n real images of class c;
    ``config``: the settings (its ``iterations`` steps are all run); ``teacher``: the frozen network of
    ``config.embedding`` teacher (its ``features``)."""
    if config.embedding == "teacher" and teacher is None:
        raise ValueError("refine embedding 'teacher' needs a teacher network")
    classes = np.unique(labels)
    members = [torch.from_numpy(np.flatnonzero(labels == c)) for c in classes]
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    if config.space == "latent":
        param = latents.detach().clone().requires_grad_(True)
        optimizer: torch.optim.Optimizer = torch.optim.Adam([param], lr=config.lr)
    else:
        with torch.no_grad():   # decoded one class at a time (as the loop below works), back in the set's order
            images = torch.cat([decode(latents[rows]) for rows in members])[torch.argsort(torch.cat(members))]
        param = images.detach().clone().requires_grad_(True)
        optimizer = torch.optim.SGD([param], lr=config.lr, momentum=0.5)
    images_of = decode if config.space == "latent" else (lambda p: p)
    with torch.no_grad():
        probe = images_of(param[:1])
    image_shape, device = tuple(probe.shape[1:]), probe.device
    if config.embedding == "teacher":   # a frozen copy where the images are: the caller's network is left alone
        teacher = copy.deepcopy(teacher).to(device).eval().requires_grad_(False)
    losses = []
    for step in range(config.iterations):
        if config.embedding == "teacher":
            embed = teacher
        else:
            with torch.random.fork_rng(devices=[]):   # the network's initialisation, from the seed's stream
                torch.manual_seed(int(rng.integers(2**62)))
                embed = ConvNet(ConvNetConfig(image_shape[0], len(classes), image_shape[1], config.width))
            embed = embed.to(device).train().requires_grad_(False)
        policy = POLICIES[int(torch.randint(len(POLICIES), (1,), generator=generator))]
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for c, rows in zip(classes, members):   # one class at a time: memory for one class's images and graph
            real = real_images(int(c), config.real_batch, rng).to(device)
            class_loss = class_match_loss(embed, real, images_of(param[rows]), policy, generator, config.objective,
                                          config.boundary)
            class_loss.backward()
            loss += float(class_loss.detach())
        optimizer.step()
        if config.space == "pixel":
            with torch.no_grad():
                param.clamp_(-1, 1)
        losses.append(loss)
        if progress is not None and (step % 10 == 9 or step == config.iterations - 1):
            progress((step + 1) / config.iterations, f"refine: iteration {step + 1}/{config.iterations}, "
                     f"matching loss {losses[-1]:.3f}")
    if config.space == "latent":   # the caller decodes the latents its own way (batched, at its precision)
        return RefineResult(param.detach(), None, np.asarray(losses))
    return RefineResult(latents, param.detach().clone(), np.asarray(losses))
