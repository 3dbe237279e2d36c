import json

import numpy as np
import pytest
import torch

from core.data.latent_cache import LatentSet
from core.errors import CheckpointError
from core.models.latent_mlp import LatentMLP, LatentMLPConfig
from core.models.loading import load_flow, save_flow
from core.training.generators import train_flow
from core.training.loop import LatentModelTrainConfig
from core.transport.path import cfg_velocity, flow_matching_loss, sample_flow

SMALL = dict(width=64, hidden=128, depth=2)


def small_model(num_classes=3, shape=(4, 8, 8)) -> LatentMLP:
    torch.manual_seed(0)
    return LatentMLP(LatentMLPConfig(shape, num_classes, emb_dim=32, **SMALL))


def toy_latents(n=96, num_classes=3, shape=(4, 8, 8)) -> LatentSet:
    """Class c's latents cluster around the constant c - 1: an easy conditional distribution."""
    g = torch.Generator().manual_seed(0)
    labels = np.arange(n) % num_classes
    centres = torch.from_numpy(labels).float().sub(1).view(-1, 1, 1, 1)
    latents = centres + 0.1 * torch.randn(n, *shape, generator=g)
    return LatentSet(latents, labels, tuple("abc"[:num_classes]), "toy", "none")


def test_loss_is_the_flow_matching_objective():
    """With a model that outputs the exact target the loss is zero; label dropout uses the null id."""
    x1 = torch.randn(8, 4, 8, 8)
    seen = {}

    class Oracle(torch.nn.Module):
        null_class = 3

        def forward(self, xt, t, y):
            seen["y"] = y
            tb = t.view(-1, 1, 1, 1)
            x0 = (xt - tb * x1) / (1 - tb)  # recover the noise from x_t = (1 - t) x0 + t x1
            return x1 - x0

    g = torch.Generator().manual_seed(0)
    loss = flow_matching_loss(Oracle(), x1, torch.zeros(8, dtype=torch.long), g, label_dropout=1.0)
    assert loss.item() < 1e-8
    assert (seen["y"] == 3).all()


def test_loss_decreases_on_a_small_batch():
    model = small_model()
    data = toy_latents()
    y = torch.from_numpy(data.labels)

    def held_out_loss() -> float:  # same noise and times before and after training
        with torch.no_grad():
            return flow_matching_loss(model, data.latents, y, torch.Generator().manual_seed(123), 0.0).item()

    before = held_out_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = flow_matching_loss(model, data.latents, y, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out_loss() < 0.5 * before


def test_cfg_scale_one_is_the_conditional_velocity_and_scale_mixes_linearly():
    model = small_model()
    x, y = torch.randn(5, 4, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    t = torch.full((5,), 0.3)
    v_cond = model(x, t, y)
    v_null = model(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(cfg_velocity(model, x, 0.3, y, 1.0), v_cond)
    torch.testing.assert_close(cfg_velocity(model, x, 0.3, y, 2.5), v_null + 2.5 * (v_cond - v_null))


def test_save_load_and_mismatch_errors(tmp_path):
    model = small_model()
    save_flow(model, tmp_path / "flow")
    loaded = load_flow(tmp_path / "flow", latent_shape=(4, 8, 8), num_classes=3)
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 1])
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y))
    with pytest.raises(CheckpointError, match=r"shape \(4, 8, 8\), the data.s are \(4, 32, 32\)"):
        load_flow(tmp_path / "flow", latent_shape=(4, 32, 32))
    with pytest.raises(CheckpointError, match="3 classes, the data has 10"):
        load_flow(tmp_path / "flow", num_classes=10)
    meta = json.loads((tmp_path / "flow" / "config.json").read_text())
    meta["kind"] = "something-else"
    (tmp_path / "flow" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'something-else' model"):
        load_flow(tmp_path / "flow")
    meta["kind"] = "distill-studio/flow-mlp"
    meta["config"]["width"] = 32  # config no longer matches the weights
    (tmp_path / "flow" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_flow(tmp_path / "flow")
    (tmp_path / "flow" / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable"):
        load_flow(tmp_path / "flow")


def test_training_resumes_exactly(tmp_path, monkeypatch):
    data = toy_latents()
    config = LatentModelTrainConfig(steps=12, batch_size=16, warmup=2, checkpoint_every=6, seed=3, **SMALL)
    straight = train_flow(config, data, tmp_path / "a", log=lambda m: None)

    import core.training.generators

    real_loss, calls = core.training.generators.flow_matching_loss, []

    def crash_at_step_8(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt("simulated interruption")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(core.training.generators, "flow_matching_loss", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train_flow(config, data, tmp_path / "b", log=lambda m: None)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 6
    assert not (tmp_path / "b" / "model.safetensors").exists()
    monkeypatch.setattr(core.training.generators, "flow_matching_loss", real_loss)
    messages = []
    resumed = train_flow(config, data, tmp_path / "b", log=messages.append)
    assert "resuming" in messages[0] and "step 6" in messages[0]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    samples = sample_flow(resumed, torch.tensor([0, 1, 2]), steps=4, seed=1)
    assert samples.shape == (3, 4, 8, 8) and torch.isfinite(samples).all()


def test_corrupt_checkpoint_is_reported(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"junk")
    config = LatentModelTrainConfig(steps=2, batch_size=4, **SMALL)
    with pytest.raises(CheckpointError, match="checkpoint.pt: cannot resume"):
        train_flow(config, toy_latents(), tmp_path, log=lambda m: None)
