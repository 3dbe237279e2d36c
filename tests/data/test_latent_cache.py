import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.data.latent_cache import cache_path, encode_dataset
from core.errors import CacheMismatchError
from tests.conftest import make_tiny_vae


def test_cache_is_written_then_reused(tmp_path, tiny_vae, tiny_images, monkeypatch):
    first = encode_dataset(tiny_images, tiny_vae, tmp_path, batch_size=50, progress=lambda f, m: None)
    assert first.path.is_file() and first.latents.shape == (120, 4, 8, 8)
    np.testing.assert_array_equal(first.labels, tiny_images.labels)
    torch.testing.assert_close(first.latents, tiny_vae.encode(tiny_images.batch(slice(None))).half().float())

    def fail(*args, **kwargs):
        raise AssertionError("a cached dataset was encoded again")

    monkeypatch.setattr(tiny_vae, "encode", fail)
    second = encode_dataset(tiny_images, tiny_vae, tmp_path)
    torch.testing.assert_close(second.latents, first.latents)


def test_cache_invalidated_when_vae_or_dataset_changes(tmp_path, tiny_vae, tiny_images):
    calls = []
    first = encode_dataset(tiny_images, tiny_vae, tmp_path, progress=lambda f, m: calls.append(f))
    other_vae = make_tiny_vae(seed=1)
    assert other_vae.fingerprint != tiny_vae.fingerprint
    second = encode_dataset(tiny_images, other_vae, tmp_path, progress=lambda f, m: calls.append(f))
    assert second.path != first.path and second.path.is_file()
    assert not torch.equal(second.latents, first.latents)
    changed = tiny_images.subset(np.arange(60))
    third = encode_dataset(changed, tiny_vae, tmp_path, progress=lambda f, m: calls.append(f))
    assert third.path not in (first.path, second.path) and len(third) == 60
    assert calls.count(1.0) == 3  # each of the three was encoded exactly once


def test_mismatched_or_corrupt_entry_is_never_reused(tmp_path, tiny_vae, tiny_images):
    path = cache_path(tiny_images, tiny_vae, tmp_path)
    path.parent.mkdir(parents=True)
    save_file({"latents": torch.zeros(120, 4, 8, 8), "labels": torch.from_numpy(tiny_images.labels)}, str(path),
              metadata={"dataset_fingerprint": tiny_images.fingerprint, "vae_fingerprint": "another-vae"})
    with pytest.raises(CacheMismatchError, match=f"{path.name}.*another dataset or VAE.*delete"):
        encode_dataset(tiny_images, tiny_vae, tmp_path)
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(CacheMismatchError, match="corrupt"):
        encode_dataset(tiny_images, tiny_vae, tmp_path)


def test_channel_mismatch_is_reported(tmp_path, tiny_vae, tiny_images):
    rgb = type(tiny_images)(np.repeat(tiny_images.images, 3, axis=1), tiny_images.labels, tiny_images.class_names, "rgb")
    with pytest.raises(ValueError, match="1-channel"):
        encode_dataset(rgb, tiny_vae, tmp_path)
