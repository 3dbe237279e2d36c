import pytest
import torch

from core.errors import CheckpointError
from core.models.vae import LatentAutoencoder, psnr_db
from tests.conftest import make_tiny_vae


def test_encode_applies_scaling_to_posterior_mean(tiny_vae, tiny_images):
    x = tiny_images.batch(slice(0, 8))
    mean = tiny_vae.vae.encode(x).latent_dist.mean
    z = tiny_vae.encode(x, batch_size=3)
    assert z.shape == (8, 4, 8, 8)
    torch.testing.assert_close(z, (mean - 0.1) * 0.5)


def test_latent_scaling_round_trip(tiny_vae, tiny_images):
    """decode(z) must undo the scaling: it equals the raw decoder applied to z / s + shift."""
    z = tiny_vae.encode(tiny_images.batch(slice(0, 4)))
    raw = tiny_vae.vae.decode(z / 0.5 + 0.1).sample.clamp(-1, 1)
    torch.testing.assert_close(tiny_vae.decode(z), raw)
    # with the identity convention (s = 1, shift = 0) the two paths agree too, so the difference is the scaling
    plain = make_tiny_vae(scaling_factor=1.0, shift_factor=0.0)
    torch.testing.assert_close(plain.encode(tiny_images.batch(slice(0, 4))) * 0.5 - 0.05, z)


def test_save_and_load_local_folder(tmp_path, tiny_vae, tiny_images):
    tiny_vae.vae.save_pretrained(tmp_path / "vae")
    loaded = LatentAutoencoder.from_pretrained(tmp_path / "vae", device="cpu")
    assert loaded.scaling_factor == 0.5 and loaded.shift_factor == pytest.approx(0.1)
    assert loaded.fingerprint == tiny_vae.fingerprint
    x = tiny_images.batch(slice(0, 4))
    torch.testing.assert_close(loaded.encode(x), tiny_vae.encode(x))


def test_bad_inputs_and_checkpoints(tmp_path, tiny_vae):
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        tiny_vae.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        tiny_vae.decode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(CheckpointError, match="no VAE here"):
        LatentAutoencoder.from_pretrained(tmp_path / "missing")
    tiny_vae.vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="could not load"):
        LatentAutoencoder.from_pretrained(tmp_path / "vae")


def test_psnr():
    a = torch.zeros(1, 1, 4, 4)
    assert psnr_db(a, a + 0.2) == pytest.approx(10 * torch.log10(torch.tensor(1 / 0.01)).item(), rel=1e-5)
