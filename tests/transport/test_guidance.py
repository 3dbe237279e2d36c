import math

import pytest
import torch

from core.config import SOLVERS, GuidanceConfig, SamplerConfig, guidance_weight
from core.models.latent_mlp import LatentMLP, LatentMLPConfig
from core.transport.guidance import guided_velocity, trust_region
from core.transport.path import cfg_velocity
from core.transport.sampler import initial_noise, sample
from core.transport.solvers import integrate, time_grid

FULL = GuidanceConfig(strength=1.0, schedule="constant", t_start=0.0, t_stop=1.0)


@pytest.fixture(scope="module")
def model() -> LatentMLP:
    torch.manual_seed(0)
    m = LatentMLP(LatentMLPConfig((4, 8, 8), 3, width=64, hidden=128, depth=2, emb_dim=32))
    for p in m.parameters():  # zero-initialised output layers would make v constant; give it some shape
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


@pytest.fixture
def batch():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    prototypes = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    return labels, prototypes


def test_zero_strength_is_unguided_bit_for_bit(model, batch):
    labels, prototypes = batch
    for solver in SOLVERS:
        config = SamplerConfig(solver=solver, steps=5, guidance=GuidanceConfig(strength=0.0, t_stop=1.0))
        guided = sample(model, labels, prototypes, config)
        plain = sample(model, labels, None, config)
        assert torch.equal(guided.latents, plain.latents)


@pytest.mark.parametrize("solver", SOLVERS)
def test_full_strength_lands_on_the_prototype(model, batch, solver):
    labels, prototypes = batch
    result = sample(model, labels, prototypes, SamplerConfig(solver=solver, steps=6, guidance=FULL))
    assert result.landing_error.max().item() < 1e-4


def test_trust_region_caps_the_correction(model, batch):
    labels, prototypes = batch
    x, t, r = torch.randn(6, 4, 8, 8), 0.3, 0.05
    v = cfg_velocity(model, x, t, labels, 2.0)
    config = GuidanceConfig(strength=1.0, t_stop=1.0, trust_radius=r)
    v_guided, _ = guided_velocity(v, x, t, prototypes, config)
    correction = (v_guided - v) * (1 - t)
    norms = correction.flatten(1).norm(dim=1)
    assert (norms <= r * math.sqrt(256) * (1 + 1e-5)).all()
    assert torch.allclose(norms, torch.full_like(norms, r * math.sqrt(256)), rtol=1e-4)  # all capped here
    small = torch.full((2, 4), 1e-3)
    assert torch.equal(trust_region(small, 1.0), small)  # below the cap: untouched
    # guided sampling with a small trust region lands farther from the prototype than without
    free = sample(model, labels, prototypes, SamplerConfig(steps=6, guidance=FULL)).landing_error
    capped = sample(model, labels, prototypes, SamplerConfig(steps=6, guidance=config)).landing_error
    assert (capped > free).all()


def test_warm_start_equals_the_unguided_ode_from_the_same_point(model, batch):
    labels, prototypes = batch
    t0, steps = 0.6, 4
    result = sample(model, labels, prototypes, SamplerConfig(steps=steps, t0=t0, seed=3, cfg_scale=1.5))
    start = (1 - t0) * initial_noise(6, (4, 8, 8), 3) + t0 * prototypes
    with torch.inference_mode():
        reference, nfe = integrate(lambda x, t: cfg_velocity(model, x, t, labels, 1.5), start,
                                   time_grid(steps, t0), "euler")
    torch.testing.assert_close(result.latents, reference, rtol=0, atol=1e-6)
    assert result.nfe == nfe == steps


def test_schedules_and_window():
    lin = GuidanceConfig(strength=0.8, schedule="linear", t_start=0.2, t_stop=0.6)
    cos = GuidanceConfig(strength=0.8, schedule="cosine", t_start=0.2, t_stop=0.6)
    assert guidance_weight(0.1, lin) == 0 and guidance_weight(0.7, lin) == 0
    assert guidance_weight(0.2, lin) == pytest.approx(0.8) and guidance_weight(0.4, lin) == pytest.approx(0.4)
    assert guidance_weight(0.6, lin) == pytest.approx(0.0)
    assert guidance_weight(0.4, cos) == pytest.approx(0.4) and guidance_weight(0.3, cos) > 0.4


def test_determinism_trajectories_and_nfe(model, batch):
    labels, prototypes = batch
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    config = SamplerConfig(solver="heun", steps=3, seed=7, guidance=GuidanceConfig(strength=0.5, t_stop=0.7))
    a = sample(model, labels, prototypes, config, record=True)
    hook.remove()
    assert len(calls) == a.nfe == 6
    b = sample(model, labels, prototypes, config)
    assert torch.equal(a.latents, b.latents)
    c = sample(model, labels, prototypes, SamplerConfig(**{**config.__dict__, "seed": 8}))
    assert not torch.equal(a.latents, c.latents)
    tr = a.trajectories
    assert tr.states.shape == (4, 6, 4, 8, 8) and tr.endpoints.shape == (3, 6, 4, 8, 8)
    assert tr.endpoint_distance.shape == (3, 6) and torch.equal(tr.states[-1], a.latents)
    assert torch.allclose(tr.times, time_grid(3).float())


def test_lower_precision_runs_close_to_float32(model, batch):
    labels, prototypes = batch
    base = SamplerConfig(steps=4, guidance=GuidanceConfig(strength=0.5))
    full = sample(model, labels, prototypes, base).latents
    half = sample(model, labels, prototypes, SamplerConfig(**{**base.__dict__, "dtype": "bfloat16"})).latents
    assert half.dtype == torch.float32 and (half - full).abs().max() < 0.1


@pytest.mark.parametrize("bad, message", [
    (dict(strength=-0.1), "λ must be >= 0"),
    (dict(strength=float("nan")), "λ must be a finite"),
    (dict(trust_radius=-1.0), "trust radius r must be > 0"),
    (dict(trust_radius=float("nan")), "trust radius r must be a finite"),
    (dict(t_start=0.7, t_stop=0.3), "t_start <= t_stop"),
    (dict(schedule="exp"), "schedule must be one of"),
])
def test_bad_guidance_config(bad, message):
    with pytest.raises(ValueError, match=message):
        GuidanceConfig(**bad)


def test_bad_sampler_inputs(model, batch):
    labels, prototypes = batch
    for bad, message in ((dict(steps=0), "steps must be"), (dict(t0=1.0), r"t0 must lie in \[0, 1\)"),
                         (dict(t0=-0.1), "t0 must lie"), (dict(solver="rk45"), "solver must be one of"),
                         (dict(cfg_scale=float("nan")), "cfg_scale must be a finite")):
        with pytest.raises(ValueError, match=message):
            SamplerConfig(**bad)
    with pytest.raises(ValueError, match=r"prototypes must have shape \(6, 4, 8, 8\)"):
        sample(model, labels, prototypes[:, :2], SamplerConfig())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        sample(model, labels + 5, prototypes, SamplerConfig())
    with pytest.raises(ValueError, match="needs prototypes"):
        sample(model, labels, None, SamplerConfig(t0=0.5))
