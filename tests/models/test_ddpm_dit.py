"""DDPM noise-prediction DiTs (diffusers folders, old and new class names; raw DiT state dicts) converted to
velocity models in DESIGN.md's convention, and the velocity-folder presence check agreeing with the loader.

The conversion is proven against an analytic check: for Gaussian classes N(μ_y, S² I) the exact DDPM
prediction (ε, v or x_0) at x_τ = a_τ x + b_τ ε is known in closed form, and so is the exact flow-matching
velocity E[x_1 - x_0 | x_t] on x_t = t x_1 + (1 - t) x_0. Wrapped in the adapter, the first must equal the
second at every t of the schedule's range, and the ODE of the converted field must carry N(0, I) onto the classes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.errors import CheckpointError
from core.models.latent_mlp import LatentMLP, LatentMLPConfig
from core.models.loading import (
    NOT_A_VELOCITY_FOLDER,
    flow_record,
    inspect_velocity_folder,
    load_velocity_model,
    model_present,
    save_flow,
)
from core.models.sit import SiT, SiTConfig
from core.models.velocity import (
    CONVENTION_FILE,
    CONVENTIONS,
    NOISE_PRESETS,
    NoiseConvention,
    VelocityAdapter,
    convention_from_scheduler,
    resolve_convention,
    vp_time,
)
from core.transport.path import sample_flow

POINTS = 1.5 * torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))  # class means μ_y
S = 0.25  # class standard deviation
# facebook/DiT-XL-2-256's scheduler/scheduler_config.json (no prediction_type: diffusers' default, epsilon)
DIT_SCHEDULER = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.12.0.dev0", "beta_end": 0.02,
                 "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": False, "num_train_timesteps": 1000,
                 "set_alpha_to_one": True, "steps_offset": 0, "trained_betas": None}


def reference_abar(conv: NoiseConvention) -> np.ndarray:
    """ᾱ_τ from diffusers' own DDPMScheduler (float32), an independent implementation of the schedules."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=conv.num_train_timesteps, beta_start=conv.beta_start,
                          beta_end=conv.beta_end, beta_schedule=conv.beta_schedule)
    return sched.alphas_cumprod.double().numpy()


class ExactVPBackbone(torch.nn.Module):
    """The exact DDPM prediction for class data N(μ_y, S² I) at a real-valued timestep τ, ᾱ(τ) interpolated
    linearly in log-SNR between the integer steps of the table: E[ε | x_τ] = b (x_τ - a μ) / (a² S² + b²),
    E[x | x_τ] = (x_τ - b E[ε | x_τ]) / a, v = a ε - b x. Outputs 2·C channels (learned sigma: the second
    half is noise the adapter must drop)."""

    def __init__(self, conv: NoiseConvention):
        super().__init__()
        abar = reference_abar(conv)
        self.lam = np.log(abar) - np.log1p(-abar)
        self.prediction = conv.prediction_type
        self.register_buffer("points", POINTS.clone())
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, tau, y):
        lam = np.interp(tau.double().cpu().numpy(), np.arange(len(self.lam)), self.lam)
        abar = torch.from_numpy(1 / (1 + np.exp(-lam))).float().view(-1, 1, 1, 1)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        mu = self.points[y]
        eps = b * (x - a * mu) / (a * a * S * S + b * b)
        x0 = (x - b * eps) / a
        out = {"epsilon": eps, "v_prediction": a * eps - b * x0, "sample": x0}[self.prediction]
        return torch.cat([out, 100 * torch.ones_like(out)], dim=1) + 0 * self.dummy


def exact_flow_velocity(x, t, y):
    """E[x_1 - x_0 | x_t] for x_1 ~ N(μ_y, S² I), x_0 ~ N(0, I): μ + (t S² - (1 - t)) / (t² S² + (1 - t)²) (x - t μ)."""
    t = t.view(-1, 1, 1, 1)
    mu = POINTS[y]
    return mu + (t * S * S - (1 - t)) / (t * t * S * S + (1 - t) ** 2) * (x - t * mu)


def gaussian_w2(model, per_class: int = 200, steps: int = 20) -> float:
    labels = torch.arange(3).repeat(per_class)
    samples = sample_flow(model, labels, steps=steps, cfg_scale=1.0, solver="euler", seed=0)
    worst = 0.0
    for k in range(3):
        r = samples[labels == k] - POINTS[k]
        worst = max(worst, float((r.mean(0).pow(2).mean() + (r.std() - S) ** 2).sqrt()))
    return worst


# -------------------------------------------------------------------------------------------------
# The conversion, against the analytic check
# -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedules_match_diffusers_and_vp_time_inverts_the_snr(schedule):
    conv = NoiseConvention(beta_schedule=schedule, beta_start=0.00085 if schedule == "scaled_linear" else 1e-4,
                           beta_end=0.012 if schedule == "scaled_linear" else 0.02)
    abar = conv.alphas_cumprod()
    assert np.allclose(abar.numpy(), reference_abar(conv), rtol=1e-4, atol=1e-7)
    taus = torch.tensor([0, 1, 17, 500, 998, 999], dtype=torch.float64)
    a, b = abar[taus.long()].sqrt(), (1 - abar[taus.long()]).sqrt()
    t = a / (a + b)   # the DESIGN time of equal SNR: t / (1 - t) = a / b
    tau, t_c = vp_time(t, abar)
    assert torch.allclose(tau, taus, atol=1e-6) and torch.allclose(t_c, t, atol=1e-9)
    t_min, t_max = conv.time_range()
    assert t_min == pytest.approx(float(t[-1])) and t_max == pytest.approx(float(t[0]))
    tau, t_c = vp_time(torch.tensor([0.0, t_min / 2, 1.0]), abar)   # outside the range: clamped
    assert tau.tolist() == pytest.approx([999, 999, 0]) and t_c.tolist() == pytest.approx([t_min, t_min, t_max])
    grid = torch.linspace(0, 1, 101)
    assert bool((vp_time(grid, abar)[0].diff() <= 0).all())   # DESIGN time forward = DDPM time backward


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_exact_ddpm_prediction_becomes_the_exact_flow_velocity(prediction):
    conv = NoiseConvention(prediction_type=prediction)
    model = VelocityAdapter(ExactVPBackbone(conv), (2, 4, 4), 3, conv, learned_sigma=True)
    t_min, t_max = conv.time_range()
    g = torch.Generator().manual_seed(3)
    y = torch.arange(3).repeat(4)
    x = 1.3 * torch.randn(len(y), 2, 4, 4, generator=g)
    for t in torch.linspace(t_min, t_max, 9).tolist():
        tt = torch.full((len(y),), t)
        # the division by a (or b) near the ends amplifies float32 rounding: compare relative to |v|
        v, exact = model(x, tt, y), exact_flow_velocity(x, tt, y)
        assert (v - exact).abs().max() <= 2e-4 * (1 + exact.abs().max()), t
    # outside [t_min, t_max] the field is the one at the nearest end
    assert torch.allclose(model(x, torch.zeros(len(y)), y), model(x, torch.full((len(y),), t_min), y))
    assert torch.allclose(model(x, torch.ones(len(y)), y), model(x, torch.full((len(y),), t_max), y))
    # the converted ODE carries N(0, I) onto the classes (W2 at the level of 600 samples' noise) ...
    assert gaussian_w2(model) < 0.06
    if prediction == "epsilon":  # ... and reading the noise predictor as a velocity model does not
        for wrong in ("sit", "diffusers-flow"):
            assert gaussian_w2(VelocityAdapter(ExactVPBackbone(conv), (2, 4, 4), 3, wrong, learned_sigma=True)) > 0.2


# -------------------------------------------------------------------------------------------------
# Files: diffusers folders (both class names), raw DiT state dicts
# -------------------------------------------------------------------------------------------------

def tiny_transformer(old_class: bool, seed: int = 0):
    """A tiny DiT with learned sigma, as diffusers saves it: ``Transformer2DModel`` (diffusers < 0.28, the
    facebook/DiT-XL-2-* folders) or ``DiTTransformer2DModel``; random weights (the output layer too)."""
    from diffusers import DiTTransformer2DModel, Transformer2DModel

    torch.manual_seed(seed)
    params = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                  sample_size=8, patch_size=2, num_embeds_ada_norm=3)
    model = (Transformer2DModel(**params, norm_type="ada_norm_zero", norm_elementwise_affine=False,
                                activation_fn="gelu-approximate", attention_bias=True)
             if old_class else DiTTransformer2DModel(**params))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def dit_pipeline(root, old_class: bool = True, scheduler: dict | None = DIT_SCHEDULER):
    dit = tiny_transformer(old_class)
    dit.save_pretrained(root / "transformer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    if scheduler is not None:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return dit


def by_hand(dit, x, t, y, call):
    """v = (x_t - ε̂) / t with ε̂ = DiT(x_t / sqrt(t² + (1 - t)²), τ, y)[:, :C], τ the DDPM step of SNR t / (1 - t)
    (linear interpolation of log SNR in τ over DiT's table; t inside the table's range)."""
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    lam = np.log(abar / (1 - abar))
    tau = np.interp(-2 * np.log(t.numpy() / (1 - t.numpy())), -lam, np.arange(1000))
    tb = t.view(-1, 1, 1, 1)
    with torch.no_grad():
        eps = call(dit, x / (tb ** 2 + (1 - tb) ** 2).sqrt(), torch.from_numpy(tau).float(), y)[:, :4]
    return (x - eps) / tb


def diffusers_call(dit, x, tau, y):
    return dit(x, timestep=tau, class_labels=y, return_dict=False)[0]


@pytest.mark.parametrize("old_class", [True, False])
def test_diffusers_dit_pipeline_is_converted_from_its_scheduler(tmp_path, old_class):
    dit = dit_pipeline(tmp_path / "pipe", old_class)
    for ref in (tmp_path / "pipe", tmp_path / "pipe" / "transformer"):   # pipeline root or its transformer/
        model = load_velocity_model(ref, (4, 8, 8), 3)
        assert isinstance(model.convention, NoiseConvention) and model.convention == NOISE_PRESETS["ddpm-eps"]
        assert model.learned_sigma and model.config.kind == "diffusers-dit" and model.null_class == 3
        g = torch.Generator().manual_seed(0)
        x, t, y = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([0.02, 0.3, 0.7, 0.95]), torch.tensor([0, 1, 2, 3])
        assert torch.allclose(model(x, t, y), by_hand(dit, x, t, y, diffusers_call), rtol=1e-4, atol=1e-4)
    record = flow_record(model)
    assert record["convention"]["preset"] == "ddpm-eps" and record["convention"]["prediction_type"] == "epsilon"
    assert resolve_convention(record["convention"]) == model.convention   # the manifest's record reads back
    assert sample_flow(model, torch.tensor([0, 1, 2]), steps=2).shape == (3, 4, 8, 8)


def test_scheduler_and_declaration_must_agree(tmp_path):
    pipe = tmp_path / "pipe"
    dit_pipeline(pipe)
    with pytest.raises(CheckpointError, match=r"declared convention 'sit' contradicts .*scheduler_config.json.*"
                                              r"DDPM epsilon-prediction"):
        load_velocity_model(pipe, convention="sit")
    scaled = {**DIT_SCHEDULER, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
              "prediction_type": "v_prediction"}
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(scaled))
    # a bare "ddpm-eps" takes the scheduler's schedule; explicit fields that differ are refused
    assert load_velocity_model(pipe, convention="ddpm-eps").convention == convention_from_scheduler(scaled)
    with pytest.raises(CheckpointError, match="contradicts"):
        load_velocity_model(pipe, convention={"preset": "ddpm-eps", "beta_end": 0.03})
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps({**DIT_SCHEDULER, "trained_betas": [0.1] * 3}))
    with pytest.raises(CheckpointError, match="trained_betas .* not supported"):
        load_velocity_model(pipe)
    (pipe / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}))
    assert load_velocity_model(pipe).convention == CONVENTIONS["diffusers-flow"]
    # without a scheduler config: declared, or refused with the options named
    bare = tmp_path / "bare"
    tiny_transformer(True).save_pretrained(bare)
    with pytest.raises(CheckpointError, match=r"Declare it: convention='ddpm-eps' \(DDPM ε-prediction"):
        load_velocity_model(bare)
    (bare / CONVENTION_FILE).write_text(json.dumps({"preset": "ddpm-eps"}))
    assert load_velocity_model(bare).convention == NOISE_PRESETS["ddpm-eps"]


def test_raw_dit_state_dict_with_ddpm_convention(tmp_path):
    """The DiT authors' ``DiT-XL-2-*.pt`` (same keys as SiT's; t_embedder fed DDPM steps 0..999) loads with
    convention "ddpm-eps"; the default "sit" would read it as a velocity model."""
    torch.manual_seed(0)
    dit = SiT(SiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=1, num_heads=3,
                        num_classes=3, learn_sigma=True))
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.2)
    torch.save(dit.state_dict(), tmp_path / "DiT-tiny.pt")
    model = load_velocity_model(tmp_path / "DiT-tiny.pt", (4, 8, 8), 3, convention="ddpm-eps", num_heads=3)
    assert isinstance(model.convention, NoiseConvention)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0, 2, 3])
    assert torch.allclose(model(x, t, y), by_hand(dit, x, t, y, lambda m, x, s, y: m(x, s, y)), rtol=1e-4, atol=1e-4)


def test_noise_convention_options():
    assert resolve_convention("ddpm-eps") == NoiseConvention()
    assert resolve_convention({"preset": "ddpm-eps", "beta_end": 0.012}).beta_end == 0.012
    assert resolve_convention({"prediction_type": "v_prediction"}) == NoiseConvention(prediction_type="v_prediction")
    for bad, match in (({"preset": "ddpm-eps", "time_scale": 1}, "unknown fields"),
                       ({"preset": "ddpm-eps", "beta_schedule": "sigmoid"}, "beta_schedule must be one of"),
                       ({"preset": "ddpm-eps", "prediction_type": "flow"}, "prediction_type must be one of"),
                       ("ddim", "ddpm-eps")):
        with pytest.raises(ValueError, match=match):
            resolve_convention(bad)
    from core.models.spec import parse_convention

    assert parse_convention('{"preset": "ddpm-eps"}') == {"preset": "ddpm-eps"}   # the --flow-convention option
    assert convention_from_scheduler({"_class_name": "UnknownScheduler"}) is None


# -------------------------------------------------------------------------------------------------
# The presence check and the loader agree
# -------------------------------------------------------------------------------------------------

def folder_variants(root):
    """Folders a user may pass as --flow: name -> path."""
    out = {}
    torch.manual_seed(0)
    mlp = LatentMLP(LatentMLPConfig(latent_shape=(4, 8, 8), num_classes=3, width=16, hidden=16, depth=1, emb_dim=16))
    out["own-mlp"] = save_flow(mlp, root / "own-mlp")
    for old in (True, False):
        out[f"dit-{'old' if old else 'new'}"] = root / f"dit-{old}"
        dit_pipeline(out[f"dit-{'old' if old else 'new'}"], old)
    out["dit-bare-undeclared"] = root / "bare"
    tiny_transformer(False).save_pretrained(out["dit-bare-undeclared"])

    def config_only(name, meta, sub=""):
        folder = root / name / sub
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
        out[name] = root / name

    config_only("pixart", {"_class_name": "Transformer2DModel", "norm_type": "ada_norm_single", "patch_size": 2,
                           "num_embeds_ada_norm": 1000}, "transformer")
    config_only("pixel-transformer", {"_class_name": "Transformer2DModel", "norm_type": "ada_norm_zero",
                                      "num_embeds_ada_norm": 10})
    config_only("unconditional-dit", {"_class_name": "DiTTransformer2DModel", "num_embeds_ada_norm": None})
    config_only("unet", {"_class_name": "UNet2DModel"})
    config_only("vae-kind", {"kind": "distill-studio/vae"})
    config_only("broken-json", "{not json")
    config_only("no-class", {"hidden_size": 3})
    (root / "empty").mkdir()
    out["empty"] = root / "empty"
    (root / "checkpoint-only").mkdir()
    (root / "checkpoint-only" / "checkpoint.pt").write_bytes(b"")
    out["checkpoint-only"] = root / "checkpoint-only"
    return out


def test_every_folder_the_presence_check_accepts_is_loaded_or_refused_with_its_message(tmp_path):
    loaded, refused = set(), {}
    for name, folder in folder_variants(tmp_path).items():
        try:
            inspect_velocity_folder(folder)
            reason = None
        except CheckpointError as exc:
            reason = str(exc)
        if not model_present(str(folder)):
            assert name in ("empty", "checkpoint-only"), name   # nothing to load: the run goes without a flow
            assert reason is not None and NOT_A_VELOCITY_FOLDER in reason
            continue
        try:
            load_velocity_model(folder, (4, 8, 8), 3)
            loaded.add(name)
        except CheckpointError as exc:
            refused[name] = str(exc)
            assert str(tmp_path) in str(exc), name       # every refusal names the folder or file
            if reason is not None:
                assert str(exc) == reason, name          # the loader's refusal is the inspection's
    assert loaded == {"own-mlp", "dit-old", "dit-new"}
    expected = {"dit-bare-undeclared": "Declare it", "pixart": "norm_type 'ada_norm_single' is not a DiT",
                "pixel-transformer": "without patch_size", "unconditional-dit": "not a class-conditional DiT",
                "unet": "holds a diffusers UNet2DModel, not a velocity model", "vae-kind": "not a velocity model",
                "broken-json": "not valid JSON", "no-class": "not a velocity model folder"}
    assert set(refused) == set(expected)
    for name, pattern in expected.items():
        assert pattern in refused[name], (name, refused[name])
