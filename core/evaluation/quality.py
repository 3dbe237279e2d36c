"""Quality of a class-conditional generator, judged by the teacher.

- conditional accuracy: share of samples the teacher classifies as the class they were drawn for;
- FID-style distance: Fréchet distance in teacher-feature space between decoded samples and one half of
  the real test set, beside the same distance between the two halves of the test set (the floor a
  perfect generator would reach at this sample size).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from core.data.datasets import LabelledImages
from core.evaluation.metrics import frechet_distance
from core.models.teacher import Teacher
from core.models.vae import LatentAutoencoder
from core.transport.path import sample_flow


def flow_quality(flow: torch.nn.Module, vae: LatentAutoencoder, teacher: Teacher, test: LabelledImages,
                 per_class: int = 500, steps: int = 10, cfg_scale: float = 2.0, solver: str = "euler",
                 seed: int = 0) -> dict:
    """``generator_quality`` of unguided flow samples (``steps`` fixed steps of ``solver`` with CFG)."""
    report = generator_quality(lambda y: sample_flow(flow, y, steps=steps, cfg_scale=cfg_scale, solver=solver,
                                                     seed=seed), vae, teacher, test, per_class, seed)
    return {**report, "steps": steps, "solver": solver, "cfg_scale": cfg_scale}


def generator_quality(generate: Callable[[torch.Tensor], torch.Tensor], vae: LatentAutoencoder, teacher: Teacher,
                      test: LabelledImages, per_class: int = 500, seed: int = 0) -> dict:
    """Draw ``per_class`` latents per class with ``generate(labels)``, decode, and score them with
    ``teacher`` against ``test``."""
    labels = torch.arange(test.num_classes).repeat_interleave(per_class)
    t0 = time.perf_counter()
    latents = generate(labels)
    images = vae.decode(latents)
    seconds = time.perf_counter() - t0
    logits = teacher.logits(images)
    correct = (logits.argmax(1) == labels).numpy()
    per_class_acc = [float(correct[labels.numpy() == c].mean()) for c in range(test.num_classes)]

    order = np.random.default_rng(seed).permutation(len(test))
    half = min(len(test) // 2, len(labels))
    real_a = teacher.features(test.batch(np.sort(order[:half])))
    real_b = teacher.features(test.batch(np.sort(order[half:2 * half])))
    generated = teacher.features(images[torch.from_numpy(np.random.default_rng(seed + 1).permutation(len(images))[:half])])
    return {
        "conditional_accuracy": round(float(correct.mean()), 4),
        "per_class_accuracy": [round(a, 4) for a in per_class_acc],
        "fid_teacher_generated_vs_test": round(frechet_distance(generated, real_a), 3),
        "fid_teacher_test_half_vs_half": round(frechet_distance(real_b, real_a), 3),
        "samples": len(labels), "feature_samples_per_set": half, "seed": seed,
        "sample_and_decode_seconds": round(seconds, 2),
    }
