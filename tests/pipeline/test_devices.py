"""Every tensor a command hands a model is on the model's device: checked without a GPU by putting probe models
on torch's "meta" device. A probe checks the device of every input, then stops the run (``Reached``); an input
left on the CPU fails the check (or the first mixed-device operation) instead."""
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from core.config import (
    DEFAULT_PGFM_GUIDANCE,
    DiffusionSamplerConfig,
    DistillConfig,
    GuidanceConfig,
    SamplerConfig,
)
from core.pipeline.distill import DistillEngine, LocalExecutor, distill
from core.pipeline.distributed import DistContext, ShardedExecutor

META = torch.device("meta")
SHAPE = (4, 8, 8)


class Reached(Exception):
    """A probe got inputs on its device: the run is stopped there (meta tensors hold no values)."""


class ProbeModel(torch.nn.Module):
    """A velocity / epsilon model on the meta device with the config the samplers read; its ``calls``-th forward
    raises Reached, earlier ones return meta zeros (so that several steps, guidance included, run)."""

    def __init__(self, calls: int = 3, num_classes: int = 3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device=META))
        self.config = SimpleNamespace(latent_shape=SHAPE, num_classes=num_classes)
        self.null_class = num_classes
        self.calls, self.seen = calls, []

    def forward(self, x, t, y):
        for name, value in (("x", x), ("t", t), ("y", y)):
            assert value.device == META, f"{name} is on {value.device}, the model on {META}"
        self.seen.append((tuple(x.shape), x.dtype))
        if len(self.seen) >= self.calls:
            raise Reached
        return torch.zeros_like(x)


def probe_vae(autoencoder):
    """A copy of ``autoencoder`` (a diffusers AutoencoderKL) as a LatentAutoencoder on the meta device, its
    encoder and decoder replaced by checks."""
    import copy

    from core.models.vae import LatentAutoencoder

    meta = LatentAutoencoder(copy.deepcopy(autoencoder), "probe", META)

    def check(x, *args, **kwargs):
        assert x.device == META, f"the VAE got a tensor on {x.device}, it is on {META}"
        raise Reached

    meta.vae.encode = check
    meta.vae.decode = check
    return meta


@pytest.fixture
def meta_engine(engine):
    """The tiny engine with its flow, diffusion model and VAE on the meta device (the data stays on the CPU)."""
    return DistillEngine(engine.dataset, engine.latents, probe_vae(engine.vae.vae), ProbeModel(), ProbeModel())


def _labels(n: int = 6) -> torch.Tensor:
    return torch.arange(n) % 3


def test_samplers_move_their_inputs_to_the_model_device():
    from core.transport.ddim import sample_diffusion
    from core.transport.path import sample_flow
    from core.transport.sampler import sample

    protos = torch.randn(6, *SHAPE)
    guided = SamplerConfig(steps=4, cfg_scale=2.0, guidance=DEFAULT_PGFM_GUIDANCE, batch_size=4)
    for config in (guided, replace(guided, t0=0.5), replace(guided, solver="heun", cfg_scale=1.0)):
        model = ProbeModel()
        with pytest.raises(Reached):
            sample(model, _labels(), protos, config)  # (record=True copies states to the CPU)
        assert len(model.seen) == 3
    for mode in ("plain", "d4m", "mg"):
        model = ProbeModel()
        with pytest.raises(Reached):
            sample_diffusion(model, _labels(), protos, DiffusionSamplerConfig(mode=mode, steps=5, batch_size=4))
    with pytest.raises(Reached):
        sample_flow(ProbeModel(), _labels(), steps=4)


def test_losses_and_cfg_keep_the_model_device():
    from core.transport.ddim import epsilon_loss
    from core.transport.path import cfg_velocity, flow_matching_loss

    x, y = torch.zeros(4, *SHAPE, device=META), torch.zeros(4, dtype=torch.long, device=META)
    g = torch.Generator().manual_seed(0)
    for call in (lambda m: flow_matching_loss(m, x, y, g), lambda m: epsilon_loss(m, x, y, g),
                 lambda m: cfg_velocity(m, x, 0.5, y, 2.0), lambda m: cfg_velocity(m, x, torch.tensor(0.5), y, 1.0)):
        with pytest.raises(Reached):
            call(ProbeModel(calls=1))


def test_bench_engine_and_bench_speed_inputs_are_on_the_model_device(meta_engine, monkeypatch):
    """The bug of ``bench-engine --device cuda``: the solver-order reference was built on the CPU."""
    import torchdiffeq

    from core.evaluation.reports import (
        landing_report,
        solver_order_report,
        throughput_report,
    )

    def odeint(f, y0, t, **kwargs):  # dopri5 reads values (its step size), which meta tensors do not have
        assert y0.device == t.device == META, (y0.device, t.device)
        return f(torch.zeros((), dtype=t.dtype), y0)  # t itself is a meta tensor, without a value

    monkeypatch.setattr(torchdiffeq, "odeint", odeint)
    flow = ProbeModel(calls=1)
    with pytest.raises(Reached):
        solver_order_report(flow, n=4, steps=(2,))
    assert next(flow.parameters()).dtype == torch.float32 and flow.seen[0][1] == torch.float64
    with pytest.raises(Reached):
        landing_report(meta_engine, [0.5], ipc=2)
    with pytest.raises(Reached):
        throughput_report(None, ProbeModel(calls=2), 32, batch_size=4, steps=2, repeats=1)
    with pytest.raises(Reached):
        throughput_report(meta_engine.vae, None, 32, batch_size=4, repeats=1)


@pytest.mark.parametrize("method", ["pgfm", "ddoq", "fm", "d4m", "diffusion-mg", "diffusion-d4m"])
@pytest.mark.parametrize("sharded", [False, True])
def test_distill_hands_every_model_tensors_on_its_device(meta_engine, method, sharded):
    config = DistillConfig(method=method, ipc=2, seed=1, sampler=SamplerConfig(steps=3, guidance=GuidanceConfig(0.5)),
                           diffusion=DiffusionSamplerConfig(steps=4))
    executor = ShardedExecutor(DistContext(), 2) if sharded else LocalExecutor(2, "uint8")
    with pytest.raises(Reached):
        distill(meta_engine, config, executor)
