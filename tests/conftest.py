"""Fixtures for the whole suite, and its isolation: the suite writes nothing into the checkout.

At start-up every cache, registry and export the code under test (and the app server of tests/e2e, which
inherits the environment) could write goes to one temporary folder (kept only when the suite failed, for its
logs and screenshots); at the end the suite fails if the checkout's ``.cache/``, ``out/`` or ``exports/``
changed. ``DISTILL_STUDIO_TEST_CACHE`` reuses a cache folder of your choice across runs (encoding the
embedded dataset once takes about a minute here).
"""
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from checkout import CHECKOUT_OUTPUTS, checkout_listing

from core.data.datasets import LabelledImages
from core.data.latent_cache import encode_dataset
from core.models.latent_mlp import LatentMLP, LatentMLPConfig
from core.models.vae import LatentAutoencoder, TinyVAEConfig, build_tiny_vae
from core.pipeline.distill import DistillEngine


def pytest_configure(config):
    scratch = Path(tempfile.mkdtemp(prefix="distill-studio-tests-"))
    config._distill_scratch, config._distill_checkout = scratch, checkout_listing()
    os.environ.update({"DISTILL_CACHE": os.environ.get("DISTILL_STUDIO_TEST_CACHE") or str(scratch / "cache"),
                       "DISTILL_REGISTRY": str(scratch / "registry.sqlite"),
                       "DISTILL_STUDIO_EXPORT_ROOT": str(scratch / "exports"),
                       "DISTILL_STUDIO_TEST_TMP": str(scratch)})


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    before, after = config._distill_checkout, checkout_listing()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print(f"\nFAILED: the suite changed the checkout's {', '.join(CHECKOUT_OUTPUTS)} (it must write only into "
              f"temporary folders; was the app running beside it?): {', '.join(changed[:10])}")
        session.exitstatus = 1
    if session.exitstatus == 0:
        shutil.rmtree(config._distill_scratch, ignore_errors=True)
    else:
        print(f"\nthe suite's temporary folder (logs, screenshots) is kept: {config._distill_scratch}")


pytest_plugins = ["scale_fixtures",    # the `scale` fixture: tiny SD-VAE, ImageFolder, SiT, latent store
                  "shapes_fixtures"]   # `shapes_models`: a drawn ImageFolder and its `prepare` model folder


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _own_registry(tmp_path, monkeypatch):
    """Commands run by a test record their runs in the test's own registry, not the checkout's."""
    monkeypatch.setenv("DISTILL_REGISTRY", str(tmp_path / "registry.sqlite"))


@pytest.fixture
def tiny_images() -> LabelledImages:
    """120 random 1x32x32 images in 3 classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(120, 1, 32, 32), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 40)
    return LabelledImages(images, labels, ("a", "b", "c"), "tiny")


def make_tiny_vae(seed: int = 0, scaling_factor: float = 0.5, shift_factor: float = 0.1) -> LatentAutoencoder:
    torch.manual_seed(seed)
    vae = build_tiny_vae(TinyVAEConfig(block_out_channels=(8, 8, 8), norm_num_groups=4))
    vae.register_to_config(scaling_factor=scaling_factor, shift_factor=shift_factor)
    return LatentAutoencoder(vae, source=f"tiny-{seed}")


@pytest.fixture
def tiny_vae() -> LatentAutoencoder:
    return make_tiny_vae()


@pytest.fixture(scope="module")
def engine() -> DistillEngine:
    """A distillation engine on 90 random images in 3 classes with tiny random models."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(90, 1, 32, 32), dtype=np.uint8)
    data = LabelledImages(images, np.repeat(np.arange(3), 30), ("T-shirt/top", "Bag", "Coat"), "tiny")
    vae = make_tiny_vae()
    latents = encode_dataset(data, vae, use_cache=False, progress=lambda f, m: None)
    torch.manual_seed(0)
    config = LatentMLPConfig((4, 8, 8), 3, width=64, hidden=128, depth=2, emb_dim=32)
    flow, diffusion = LatentMLP(config).eval(), LatentMLP(config).eval()
    return DistillEngine(data, latents, vae, flow, diffusion)
