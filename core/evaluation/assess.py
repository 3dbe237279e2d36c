"""Assess a distilled set against the real data (DESIGN.md section 4), for the benchmark and the app.

``RealReference`` holds what is computed once per dataset + teacher: teacher features of a per-class
subsample of the real training images, their PRDC radii, the per-class modes for mode coverage, and
the real latents of each class for W2. ``assess`` then scores a DistilledSet in well under a second.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from core.evaluation.metrics import (
    ClassModes,
    CoverageResult,
    PreparedReal,
    diversity,
    fit_modes,
    mode_coverage,
    prdc,
    prepare_real,
    real_radii,
)
from core.io import save_tensors
from core.pipeline.distill import DistilledSet, DistillEngine
from core.quantize.w2 import wasserstein2
from core.reads import tensors_fingerprint


@dataclass
class RealReference:
    features: np.ndarray          # (R, D) teacher features of the real subsample
    labels: np.ndarray            # (R,)
    radii: np.ndarray             # (R,) PRDC k-NN radii
    modes: ClassModes
    latents_by_class: dict[int, np.ndarray]   # class -> (N_c, d) real latents (flattened)
    k: int = 5
    _prepared: dict = field(default_factory=dict, repr=False, compare=False)

    def real_of(self, classes: tuple[int, ...]) -> PreparedReal:
        """The PRDC real side (``core.evaluation.metrics.PreparedReal``) of the real images of ``classes``
        only: a set of some classes is compared with those classes' real images (radii recomputed within
        them). Prepared once per class subset and remembered: every later score costs one matrix product."""
        classes = tuple(sorted(set(classes)))
        if set(classes) >= set(np.unique(self.labels).tolist()):
            classes = ()   # every class: the whole reference and its cached radii
        if classes not in self._prepared:
            while len(self._prepared) >= 8:   # a centred copy of the features each: keep the latest few
                self._prepared.pop(next(iter(self._prepared)))
            if classes:
                own = self.features[np.isin(self.labels, classes)]
                self._prepared[classes] = prepare_real(own, self.k, real_radii(own, self.k))
            else:
                self._prepared[classes] = prepare_real(self.features, self.k, self.radii)
        return self._prepared[classes]


def build_reference(engine: DistillEngine, teacher, per_class: int = 1000, num_modes: int = 10, k: int = 5,
                    seed: int = 0) -> RealReference:
    """Teacher features of ``per_class`` real training images per class (seeded), radii and modes."""
    rng = np.random.default_rng(seed)
    labels = engine.dataset.labels
    index = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())),
                                               replace=False) for c in range(engine.dataset.num_classes)]))
    features = np.concatenate([teacher.features(engine.dataset.batch(index[i:i + 1000])).numpy()
                               for i in range(0, len(index), 1000)])
    return RealReference(features, labels[index], real_radii(features, k), fit_modes(features, labels[index], num_modes, seed),
                         class_latents(engine), k)


def class_latents(engine: DistillEngine) -> dict[int, np.ndarray]:
    """class -> (N_c, d) flattened real latents (views into the engine's latents)."""
    latents = engine.latents.latents.flatten(1).numpy()
    return {c: latents[engine.latents.labels == c] for c in range(engine.latents.num_classes)}


def _reference_tensors(ref: RealReference) -> dict[str, torch.Tensor]:
    tensors = {"features": torch.from_numpy(ref.features), "labels": torch.from_numpy(ref.labels),
               "radii": torch.from_numpy(ref.radii)}
    for c in ref.modes.classes:
        tensors[f"mode_centres_{c}"] = torch.from_numpy(ref.modes.centres[c])
        tensors[f"mode_radii_{c}"] = torch.from_numpy(ref.modes.radii[c])
    return tensors


def reference_cache_file(engine: DistillEngine) -> Path:
    """Where the reference of ``engine``'s dataset is cached (the key inside the file decides reuse)."""
    from core.config import cache_dir

    return cache_dir() / "reference" / f"{engine.dataset.fingerprint[:16]}.safetensors"


def load_or_build_reference(engine: DistillEngine, teacher, cache_file: Path | None, per_class: int = 1000,
                            num_modes: int = 10, k: int = 5, seed: int = 0) -> RealReference:
    """``build_reference``, stored in / read from the safetensors file ``cache_file`` (keyed by the data,
    the teacher's weights and the parameters; a stale or unreadable file is rebuilt and replaced)."""
    key = json.dumps({"data": engine.dataset.fingerprint, "teacher": tensors_fingerprint(teacher.net.state_dict()),
                      "per_class": per_class, "num_modes": num_modes, "k": k, "seed": seed}, sort_keys=True)
    by_class = class_latents(engine)
    if cache_file is not None and cache_file.is_file():
        try:
            with safe_open(str(cache_file), "np") as f:
                if (f.metadata() or {}).get("key") == key:
                    t = {name: f.get_tensor(name) for name in f.keys()}
                    classes = sorted(int(n.rsplit("_", 1)[1]) for n in t if n.startswith("mode_centres_"))
                    modes = ClassModes({c: t[f"mode_centres_{c}"] for c in classes},
                                       {c: t[f"mode_radii_{c}"] for c in classes}, t["features"].shape[1])
                    return RealReference(t["features"], t["labels"], t["radii"], modes, by_class, k)
        except (OSError, ValueError, KeyError, SafetensorError):
            pass  # rebuilt below
    reference = build_reference(engine, teacher, per_class, num_modes, k, seed)
    if cache_file is not None:
        save_tensors(cache_file, _reference_tensors(reference), metadata={"key": key})
    return reference


def assess(reference: RealReference, teacher, dset: DistilledSet, w2: bool = True,
           features: np.ndarray | None = None, coverage: CoverageResult | None = None) -> dict:
    """Mode coverage and PRDC (teacher features) plus ``latent_scores``, each against the real images of the
    set's own classes. ``features`` / ``coverage`` of ``dset`` may be passed when the caller has them."""
    features = teacher.features(dset.images).numpy() if features is None else features
    coverage = mode_coverage(reference.modes, features, dset.labels) if coverage is None else coverage
    return {**coverage_metrics(coverage), **prdc_metrics(reference, dset, features),
            **latent_scores(reference.latents_by_class, dset, w2)}


def prdc_metrics(reference: RealReference, dset: DistilledSet, features: np.ndarray) -> dict:
    """Precision, recall, density and coverage of the set's teacher ``features`` against the real images of its
    own classes (none for a set of at most k images: its k-NN radii are undefined)."""
    if len(dset) <= reference.k:
        return {}
    real = reference.real_of(tuple(int(c) for c in np.unique(dset.labels)))
    return {key: round(value, 4) for key, value in prdc(real, features).items()}


def coverage_metrics(coverage: CoverageResult) -> dict:
    """The metrics entries of a mode coverage: overall and per class (fractions of modes covered)."""
    return {"mode_coverage": round(coverage.overall, 4),
            "mode_coverage_per_class": {int(c): round(v, 4) for c, v in coverage.per_class.items()}}


def latent_scores(latents_by_class: dict[int, np.ndarray], dset: DistilledSet, w2: bool = True) -> dict:
    """What needs no teacher: NFE and time per image, mean per-class W2 to the real latents (exact OT),
    diversity and landing error (latent RMS units)."""
    out = {"nfe_per_image": dset.nfe, "seconds_per_image": round(dset.timings["total_s"] / max(1, len(dset)), 5)}
    latents = dset.latents.flatten(1).numpy().astype(np.float64)
    classes = sorted(set(dset.labels.tolist()))
    if w2:
        out["w2_latent_mean"] = w2_latent_mean(latents_by_class, dset)
    per_class_div = [diversity(latents[dset.labels == c]) for c in classes if (dset.labels == c).sum() > 1]
    if per_class_div:
        out["diversity_latent"] = round(float(np.mean(per_class_div)), 4)
    finite = dset.landing_error[np.isfinite(dset.landing_error)]
    if len(finite):
        out["landing_error_mean"] = round(float(finite.mean()), 5)
    return out


def w2_latent_mean(latents_by_class: dict[int, np.ndarray], dset: DistilledSet) -> float:
    """Mean over the set's classes of the exact W2 between the class's real latents and its weighted samples
    (the slowest score: POT's network simplex, ~0.05-0.1 s a class here)."""
    latents = dset.latents.flatten(1).numpy().astype(np.float64)
    classes = sorted(set(dset.labels.tolist()))

    def class_w2(c: int) -> float:
        mask = dset.labels == c
        return wasserstein2(latents_by_class[c], latents[mask], dset.weights[mask])

    # POT's exact solver releases the GIL: classes run in parallel threads.
    with ThreadPoolExecutor(max_workers=min(len(classes), os.cpu_count() or 1)) as pool:
        per_class = list(pool.map(class_w2, classes))
    return round(float(np.mean(per_class)), 4)


def teacher_accuracy_of(teacher, dset: DistilledSet) -> float:
    """Share of the set's images the teacher assigns to their intended class."""
    with torch.inference_mode():
        return float((teacher.logits(dset.images).argmax(1).numpy() == dset.labels).mean())
