import pytest
import torch

from core.config import DiffusionSamplerConfig
from core.errors import CheckpointError
from core.models.loading import load_diffusion
from core.training.generators import train_diffusion
from core.training.loop import LatentModelTrainConfig
from core.transport.ddim import epsilon_loss, sample_diffusion
from tests.transport.test_path import SMALL, small_model, toy_latents


def test_epsilon_loss_decreases_and_model_round_trips(tmp_path):
    data = toy_latents(shape=(1, 4, 4))  # 16-d: the small test network can represent the ε map
    config = LatentModelTrainConfig(steps=300, batch_size=96, lr=3e-3, warmup=10, checkpoint_every=1000, **SMALL)
    y = torch.from_numpy(data.labels)
    untrained = small_model(shape=(1, 4, 4))
    before = epsilon_loss(untrained, data.latents, y, torch.Generator().manual_seed(1), 0.0).item()
    model = train_diffusion(config, data, tmp_path / "diff", log=lambda m: None)
    after = epsilon_loss(model, data.latents, y, torch.Generator().manual_seed(1), 0.0).item()
    assert after < 0.8 * before
    assert (tmp_path / "diff" / "scheduler_config.json").is_file()
    loaded = load_diffusion(tmp_path / "diff", latent_shape=(1, 4, 4), num_classes=3)
    x, t, lab = torch.randn(2, 1, 4, 4), torch.rand(2), torch.tensor([0, 2])
    # weights are stored in float16: equal to that precision
    torch.testing.assert_close(loaded(x, t, lab), model(x, t, lab), rtol=2e-2, atol=2e-3)
    with pytest.raises(CheckpointError, match="3 classes, the data has 10"):
        load_diffusion(tmp_path / "diff", num_classes=10)


def test_modes_nfe_and_prototype_pull():
    model = small_model()
    labels = torch.tensor([0, 1, 2])
    protos = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = sample_diffusion(model, labels, None, DiffusionSamplerConfig(steps=10, seed=1))
    assert plain.latents.shape == (3, 4, 8, 8) and plain.nfe == 10 and plain.landing_error is None
    again = sample_diffusion(model, labels, None, DiffusionSamplerConfig(steps=10, seed=1))
    assert torch.equal(plain.latents, again.latents)
    d4m = sample_diffusion(model, labels, protos, DiffusionSamplerConfig(mode="d4m", steps=10, strength=0.3))
    assert d4m.nfe == 3
    d4m_full = sample_diffusion(model, labels, protos, DiffusionSamplerConfig(mode="d4m", steps=10, strength=1.0))
    assert d4m.landing_error.mean() < d4m_full.landing_error.mean()  # less noise, closer to the prototype
    mg = sample_diffusion(model, labels, protos, DiffusionSamplerConfig(mode="mg", steps=10, guidance=1.0, stop=1.0))
    assert mg.landing_error.max() < 1e-4  # λ = 1 on every step: x̂_0 is the prototype throughout


def test_bad_diffusion_inputs():
    model = small_model()
    for bad, message in ((dict(mode="ddpm"), "mode must be one of"), (dict(steps=0), "steps must be"),
                         (dict(strength=1.5), "strength must lie"), (dict(guidance=float("nan")), "guidance must lie"),
                         (dict(mode="d4m", strength=0.0), "strength must be > 0")):
        with pytest.raises(ValueError, match=message):
            DiffusionSamplerConfig(**bad)
    with pytest.raises(ValueError, match="needs prototypes"):
        sample_diffusion(model, torch.tensor([0]), None, DiffusionSamplerConfig(mode="mg"))
