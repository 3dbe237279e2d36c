"""Velocity models loaded by reference (core.models.velocity, core.models.sit), mapped to DESIGN.md section 2.

Every model here is tiny, random or trained for a few seconds, and saved in tmp_path the way a real one is
(a raw SiT state dict with torch.save / safetensors, a diffusers folder with save_pretrained), then loaded
through ``load_velocity_model``: the same code path as SiT-XL-2-256x256.pt or a diffusers folder.
"""
from __future__ import annotations

import argparse
import json
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import save_file

from core.errors import CheckpointError
from core.models.latent_mlp import LatentMLP, LatentMLPConfig
from core.models.loading import load_velocity_model, save_flow
from core.models.sit import SIT_PRESETS, SiT, SiTConfig, infer_sit_config, sincos_2d_pos_embed, sit_config
from core.models.velocity import CONVENTION_FILE, CONVENTIONS, VelocityAdapter, VelocityConvention, resolve_convention
from core.transport.path import cfg_velocity, sample_flow
from core.transport.solvers import integrate, time_grid

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=2, num_heads=3, num_classes=3)


def random_sit(seed: int = 0, **overrides) -> SiT:
    """A tiny SiT with all weights random (SiT's own init zeroes the output, which would hide errors)."""
    torch.manual_seed(seed)
    model = SiT(SiTConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def tiny_dit(seed: int = 0, learned_sigma: bool = False, **overrides):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    params = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2, sample_size=8,
                  patch_size=2, num_embeds_ada_norm=3, out_channels=8 if learned_sigma else 4)
    params.update(overrides)
    return DiTTransformer2DModel(**params)


@contextmanager
def one_thread():
    """Training tiny models is ~10x faster on one thread when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def inputs(shape=(4, 8, 8), n=5, num_classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    t = torch.rand(n, generator=g)
    y = torch.randint(0, num_classes + 1, (n,), generator=g)  # includes the null class
    return x, t, y


# -------------------------------------------------------------------------------------------------
# Architecture and config inference
# -------------------------------------------------------------------------------------------------

def test_presets_match_sit_sizes():
    xl = sit_config("SiT-XL/2", input_size=32, num_classes=1000, learn_sigma=True)
    assert (xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size) == (28, 1152, 16, 2)
    assert sit_config("SiT-B/4").patch_size == 4 and sit_config("DiT-S/2").hidden_size == 384
    assert set(SIT_PRESETS) == {"SiT-XL/2", "SiT-L/2", "SiT-B/2", "SiT-S/2"}
    with torch.device("meta"):  # no memory, no init cost
        n = sum(p.numel() for p in SiT(xl).parameters())
    assert 674e6 < n < 676e6  # SiT-XL/2: 675M parameters
    with pytest.raises(ValueError, match="unknown SiT preset"):
        sit_config("SiT-XXL/2")


def test_pos_embed_matches_mae_formula():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ref = get_2d_sincos_pos_embed(48, 4, base_size=4, output_type="pt").float()
    assert torch.allclose(sincos_2d_pos_embed(48, 4), ref, atol=1e-6)


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_infer_config_from_state_dict(learn_sigma):
    model = random_sit(learn_sigma=learn_sigma)
    state = model.state_dict()
    assert infer_sit_config(state, num_heads=3) == model.config
    del state["pos_embed"]
    with pytest.raises(CheckpointError, match="latent size is unknown"):
        infer_sit_config(state, num_heads=3)
    assert infer_sit_config(state, input_size=8, num_heads=3) == model.config
    with pytest.raises(CheckpointError, match="pass num_heads"):  # width 48 is no preset
        infer_sit_config(state, input_size=8)
    preset = SiT(sit_config("SiT-S/2", input_size=4, num_classes=2, depth=1, learn_sigma=learn_sigma))
    assert infer_sit_config(preset.state_dict()) == preset.config  # heads from the preset width


def test_sit_equals_diffusers_dit_with_the_same_weights():
    """Our SiT == diffusers' DiTTransformer2DModel on SiT weights renamed as diffusers' convert_dit script
    does. At t = 0 both sinusoidal time embeddings are [1…1, 0…0] (diffusers' frequencies differ
    slightly: downscale_freq_shift=1), so this checks patching, position embedding, attention,
    adaLN-Zero, the final layer and unpatchify exactly."""
    model = random_sit(learn_sigma=True)
    sd = model.state_dict()
    new = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"], "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"], "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(TINY["depth"]):
        b, s = f"transformer_blocks.{i}.", f"blocks.{i}."
        for j, k in ((1, 0), (2, 2)):
            new[f"{b}norm1.emb.timestep_embedder.linear_{j}.weight"] = sd[f"t_embedder.mlp.{k}.weight"]
            new[f"{b}norm1.emb.timestep_embedder.linear_{j}.bias"] = sd[f"t_embedder.mlp.{k}.bias"]
        new[f"{b}norm1.emb.class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"]
        new[f"{b}norm1.linear.weight"] = sd[f"{s}adaLN_modulation.1.weight"]
        new[f"{b}norm1.linear.bias"] = sd[f"{s}adaLN_modulation.1.bias"]
        for name, w, bias in zip(("to_q", "to_k", "to_v"), sd[f"{s}attn.qkv.weight"].chunk(3),
                                 sd[f"{s}attn.qkv.bias"].chunk(3)):
            new[f"{b}attn1.{name}.weight"], new[f"{b}attn1.{name}.bias"] = w, bias
        for theirs, ours in (("attn1.to_out.0", "attn.proj"), ("ff.net.0.proj", "mlp.fc1"), ("ff.net.2", "mlp.fc2")):
            for param in ("weight", "bias"):
                new[f"{b}{theirs}.{param}"] = sd[f"{s}{ours}.{param}"]
    dit = tiny_dit(learned_sigma=True, num_attention_heads=3, attention_head_dim=16, norm_eps=1e-6)
    dit.load_state_dict(new, strict=True)
    dit.eval()
    x, _, y = inputs()
    with torch.no_grad():
        t = torch.zeros(len(x))
        ours, theirs = model(x, t, y), dit(x, timestep=t, class_labels=y, return_dict=False)[0]
        assert ours.shape == (5, 8, 8, 8) and ours.abs().mean() > 0.1
        assert torch.allclose(ours, theirs, atol=1e-5)


# -------------------------------------------------------------------------------------------------
# Round trips through files
# -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_sit_file_round_trip(tmp_path, fmt, learn_sigma):
    model = random_sit(learn_sigma=learn_sigma)
    path = tmp_path / f"tiny-sit.{fmt}"
    if fmt == "pt":
        torch.save(model.state_dict(), path)
        kwargs = {"num_heads": 3}
    else:  # heads travel in the safetensors metadata
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"num_heads": "3"})
        kwargs = {}
    loaded = load_velocity_model(path, latent_shape=(4, 8, 8), num_classes=3, **kwargs)
    assert isinstance(loaded, VelocityAdapter) and loaded.config.kind == "sit"
    assert loaded.config.latent_shape == (4, 8, 8) and loaded.config.num_classes == 3 and loaded.null_class == 3
    assert loaded.learned_sigma == learn_sigma and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x, t, y = inputs()
    with torch.no_grad():
        expected = model(x, t, y)[:, :4]
    out = loaded(x, t, y)
    assert out.shape == x.shape
    assert torch.allclose(out, expected, atol=1e-6)
    # the engine's call: CFG batches conditional and null passes
    v = cfg_velocity(loaded, x, 0.3, y.clamp(max=2), cfg_scale=2.0)
    with torch.no_grad():
        tt = torch.full((5,), 0.3)
        v_c, v_n = model(x, tt, y.clamp(max=2))[:, :4], model(x, tt, torch.full_like(y, 3))[:, :4]
    assert torch.allclose(v, v_n + 2.0 * (v_c - v_n), atol=1e-4)  # batch-size float noise


def test_sit_checkpoint_variants(tmp_path):
    """{"ema": ...} / {"model": ...} wrappers, DDP's "module." prefix, no pos_embed (latent shape given)."""
    model = random_sit()
    x, t, y = inputs()
    with torch.no_grad():
        expected = model(x, t, y)[:, :4]
    state = model.state_dict()
    torch.save({"ema": state, "model": {k: torch.zeros_like(v) for k, v in state.items()}}, tmp_path / "train.pt")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.pth")
    torch.save({k: v for k, v in state.items() if k != "pos_embed"}, tmp_path / "nopos.pt")
    for name in ("train.pt", "ddp.pth", "nopos.pt"):
        loaded = load_velocity_model(tmp_path / name, (4, 8, 8), 3, num_heads=3)
        assert torch.allclose(loaded(x, t, y), expected, atol=1e-6), name
    with pytest.raises(CheckpointError, match="latent size is unknown"):
        load_velocity_model(tmp_path / "nopos.pt", num_heads=3)


def test_own_flow_folder_is_delegated(tmp_path):
    torch.manual_seed(0)
    mlp = LatentMLP(LatentMLPConfig(latent_shape=(4, 8, 8), num_classes=3, width=16, hidden=16, depth=1, emb_dim=16))
    save_flow(mlp, tmp_path / "flow")
    loaded = load_velocity_model(tmp_path / "flow", (4, 8, 8), 3)
    assert isinstance(loaded, LatentMLP) and loaded.null_class == 3
    with pytest.raises(CheckpointError, match="data has 5"):
        load_velocity_model(tmp_path / "flow", (4, 8, 8), 5)
    with pytest.raises(CheckpointError, match="leave convention unset"):
        load_velocity_model(tmp_path / "flow", convention="diffusers-flow")


def test_diffusers_dit_folder_loads_through_the_adapter(tmp_path):
    dit = tiny_dit(learned_sigma=True).eval()
    dit.save_pretrained(tmp_path / "dit")
    with pytest.raises(CheckpointError, match="Declare it"):
        load_velocity_model(tmp_path / "dit", (4, 8, 8), 3)
    loaded = load_velocity_model(tmp_path / "dit", (4, 8, 8), 3, convention="diffusers-flow")
    assert loaded.config.kind == "diffusers-dit" and loaded.learned_sigma and loaded.null_class == 3
    x, t, y = inputs()
    with torch.no_grad():  # v(x, t, y) = -backbone(x, 1000 (1 - t), y)[:, :C]
        expected = -dit(x, timestep=1000 * (1 - t), class_labels=y, return_dict=False)[0][:, :4]
    assert torch.allclose(loaded(x, t, y), expected, atol=1e-5)
    # declared in the folder instead; a pipeline folder with transformer/ also works
    pipe = tmp_path / "pipe"
    dit.save_pretrained(pipe / "transformer")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    (pipe / CONVENTION_FILE).write_text(json.dumps({"preset": "diffusers-flow"}))
    assert torch.allclose(load_velocity_model(pipe, (4, 8, 8), 3)(x, t, y), expected, atol=1e-5)
    assert sample_flow(load_velocity_model(pipe), torch.tensor([0, 1, 2]), steps=2).shape == (3, 4, 8, 8)


def test_class_map_selects_backbone_classes(tmp_path):
    model = random_sit(num_classes=5)
    torch.save(model.state_dict(), tmp_path / "sit.pt")
    with pytest.raises(CheckpointError, match="model has 5 classes, the data has 2; pass class_map"):
        load_velocity_model(tmp_path / "sit.pt", (4, 8, 8), 2, num_heads=3)
    loaded = load_velocity_model(tmp_path / "sit.pt", (4, 8, 8), 2, num_heads=3, class_map=[4, 1])
    assert loaded.config.num_classes == 2 and loaded.null_class == 2
    x, t, _ = inputs(n=3)
    with torch.no_grad():
        expected = model(x, t, torch.tensor([4, 1, 5]))[:, :4]
    assert torch.allclose(loaded(x, t, torch.tensor([0, 1, 2])), expected, atol=1e-6)
    with pytest.raises(CheckpointError, match="class_map ids \\[7\\]"):
        load_velocity_model(tmp_path / "sit.pt", (4, 8, 8), 2, num_heads=3, class_map=[7, 1])


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------

def test_mismatches_and_bad_files_give_clear_errors(tmp_path):
    model = random_sit()
    state = model.state_dict()
    good = tmp_path / "sit.pt"
    torch.save(state, good)
    cases = {
        "shape": (lambda: load_velocity_model(good, (4, 16, 16), 3, num_heads=3), "16x16"),
        "channels": (lambda: load_velocity_model(good, (3, 8, 8), 3, num_heads=3), r"\(4, 8, 8\).*\(3, 8, 8\)"),
        "classes": (lambda: load_velocity_model(good, (4, 8, 8), 10, num_heads=3), "3 classes, the data has 10"),
        "nonsquare": (lambda: load_velocity_model(good, (4, 8, 4), 3, num_heads=3), "square"),
    }
    missing = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    cases["missing"] = (lambda: load_velocity_model(tmp_path / "missing.pt", num_heads=3),
                        r"missing keys \['blocks.1.mlp.fc2.weight'\]")
    torch.save({**state, "blocks.0.attn.q_norm.weight": torch.ones(16)}, tmp_path / "unexpected.pt")
    cases["unexpected"] = (lambda: load_velocity_model(tmp_path / "unexpected.pt", num_heads=3), "unexpected keys")
    torch.save({**state, "blocks.1.mlp.fc1.weight": torch.zeros(7, 48)}, tmp_path / "misshaped.pt")
    cases["misshaped"] = (lambda: load_velocity_model(tmp_path / "misshaped.pt", num_heads=3), "mis-shaped")
    torch.save({"ema": state, "args": argparse.Namespace(model="SiT-XL/2")}, tmp_path / "0400000.pt")
    cases["pickled"] = (lambda: load_velocity_model(tmp_path / "0400000.pt", num_heads=3),
                        r"never unpickled.*\['ema'\]")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    cases["foreign"] = (lambda: load_velocity_model(tmp_path / "other.pt"), "not a SiT/DiT state dict")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    cases["corrupt"] = (lambda: load_velocity_model(tmp_path / "broken.pt"), "not a readable torch checkpoint")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 12)
    cases["corrupt-st"] = (lambda: load_velocity_model(tmp_path / "broken.safetensors"), "not a readable safetensors")
    (tmp_path / "model.onnx").write_bytes(b"")
    cases["suffix"] = (lambda: load_velocity_model(tmp_path / "model.onnx"), "unknown checkpoint type")
    cases["absent"] = (lambda: load_velocity_model(tmp_path / "nope.pt"), "no such file")
    (tmp_path / "empty").mkdir()
    cases["folder"] = (lambda: load_velocity_model(tmp_path / "empty"), "not a velocity model folder")
    cases["convention"] = (lambda: load_velocity_model(good, convention="ddpm"), "unknown convention")
    for case, (call, pattern) in cases.items():
        with pytest.raises(CheckpointError, match=pattern) as info:
            call()
        if case not in ("absent", "folder"):
            assert tmp_path.name in str(info.value), case  # the message names the file


def test_diffusers_folder_errors(tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "dit"
    tiny_dit().save_pretrained(folder)
    with pytest.raises(CheckpointError, match=r"\(4, 8, 8\), the data's are \(4, 4, 4\)"):
        load_velocity_model(folder, (4, 4, 4), 3, convention="diffusers-flow")
    with pytest.raises(CheckpointError, match="3 classes, the data has 4"):
        load_velocity_model(folder, (4, 8, 8), 4, convention="diffusers-flow")
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("proj_out_2.weight")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"missing keys \['proj_out_2.weight'\]"):
        load_velocity_model(folder, convention="diffusers-flow")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, folder / "diffusion_pytorch_model.bin")  # pickled weights are not read
    with pytest.raises(CheckpointError, match="could not load"):
        load_velocity_model(folder, convention="diffusers-flow")


def test_convention_resolution():
    assert resolve_convention("sit") == VelocityConvention(1.0, False, 1.0)
    assert resolve_convention({"preset": "diffusers-flow", "velocity_sign": 1}) == VelocityConvention(1000.0, True, 1.0)
    assert resolve_convention({"time_scale": 1000}) == VelocityConvention(1000.0, False, 1.0)
    assert resolve_convention(None, default=CONVENTIONS["sit"]) == CONVENTIONS["sit"]
    with pytest.raises(ValueError, match="unknown convention 'ddpm'"):
        resolve_convention({"preset": "ddpm"})
    with pytest.raises(ValueError, match="unknown convention fields"):
        resolve_convention({"sign": -1})
    with pytest.raises(ValueError, match="velocity_sign"):
        VelocityConvention(velocity_sign=0.5)


# -------------------------------------------------------------------------------------------------
# Direction: each convention mapping lands samples on the data, a wrong one does not
# -------------------------------------------------------------------------------------------------

POINTS = 1.5 * torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))  # one latent per class


def landing_error(model: torch.nn.Module, steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler from noise at t = 0 to t = 1 (the project's solver); RMS distance to each label's point and
    whether each sample's nearest point is its own class's."""
    labels = torch.arange(3).repeat(8)
    samples = sample_flow(model, labels, steps=steps, cfg_scale=1.0, solver="euler", seed=0)
    rms = (samples - POINTS[labels]).flatten(1).norm(dim=1) / POINTS[0].numel() ** 0.5
    nearest = torch.cdist(samples.flatten(1), POINTS.flatten(1)).argmin(1)
    return rms, nearest == labels


DATA_STD = 0.25


class GaussianFieldBackbone(torch.nn.Module):
    """The exact velocity of class data N(point_y, DATA_STD² I), written in convention ``c``: at DESIGN time t
    (t = s / scale, or 1 - s / scale when time-reversed), E[x_1 - x_0 | x_t] =
    μ + (t S² - (1 - t)) / (t² S² + (1 - t)²) · (x_t - t μ), times ``c.velocity_sign``. Its ODE carries
    N(0, I) exactly onto N(μ, S² I); unlike one point per class (where any field pointing at the point lands
    on it), the class's spread depends on the time direction."""

    def __init__(self, c: VelocityConvention):
        super().__init__()
        self.c = c
        self.register_buffer("points", POINTS.clone())
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # the engine reads the device off the parameters

    def forward(self, x, s, y):
        u = s / self.c.time_scale
        t = (1 - u if self.c.time_reversed else u).view(-1, 1, 1, 1)
        mu, var = self.points[y], t * t * DATA_STD ** 2 + (1 - t) ** 2
        return self.c.velocity_sign * (mu + (t * DATA_STD ** 2 - (1 - t)) / var * (x - t * mu)) + 0 * self.dummy


def gaussian_w2(model: torch.nn.Module, per_class: int = 200, steps: int = 20) -> float:
    """Largest over classes of the W2 (per dimension, isotropic fit) between the samples and N(μ, S² I)."""
    labels = torch.arange(3).repeat(per_class)
    samples = sample_flow(model, labels, steps=steps, cfg_scale=1.0, solver="euler", seed=0)
    worst = 0.0
    for k in range(3):
        r = samples[labels == k] - POINTS[k]
        mean_err = r.mean(0).pow(2).mean().sqrt()
        worst = max(worst, float((mean_err ** 2 + (r.std() - DATA_STD) ** 2).sqrt()))
    return worst


@pytest.mark.parametrize("true_name", ["sit", "diffusers-flow"])
def test_each_mapping_is_proven_by_an_exact_field(true_name):
    """Wrapped in its own convention, the exact field of Gaussian classes samples them (W2 at the level of
    600 samples' noise); getting any one of time scale, time direction or sign wrong does not."""
    true = CONVENTIONS[true_name]
    backbone = GaussianFieldBackbone(true)
    assert gaussian_w2(VelocityAdapter(backbone, (2, 4, 4), 3, true)) < 0.06
    wrong = {"sign": VelocityConvention(true.time_scale, true.time_reversed, -true.velocity_sign),
             "direction": VelocityConvention(true.time_scale, not true.time_reversed, true.velocity_sign),
             "scale": VelocityConvention(1000.0 if true.time_scale == 1 else 1.0, true.time_reversed,
                                         true.velocity_sign)}
    for what, convention in wrong.items():
        assert gaussian_w2(VelocityAdapter(backbone, (2, 4, 4), 3, convention)) > 0.2, what


def _train(model, loss_fn, steps: int = 300, batch: int = 64) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        y = torch.randint(0, 3, (batch,), generator=g)
        x1 = POINTS[y]
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(batch, generator=g)
        y = torch.where(torch.rand(batch, generator=g) < 0.1, torch.full_like(y, 3), y)  # label dropout
        loss = loss_fn(model, x0, x1, t, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def test_trained_sit_checkpoint_samples_its_classes(tmp_path):
    """A tiny SiT trained with SiT's own loss (x_t = t x_1 + (1 - t) x_0, target x_1 - x_0, learned-sigma
    output), saved as a raw .pt, loaded by reference: its samples land on their class's point."""
    def sit_loss(m, x0, x1, t, y):
        tb = t.view(-1, 1, 1, 1)
        return (m(tb * x1 + (1 - tb) * x0, t, y)[:, :2] - (x1 - x0)).pow(2).mean()

    torch.manual_seed(0)
    model = SiT(SiTConfig(input_size=4, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=2,
                          num_classes=3, learn_sigma=True))
    with one_thread():
        _train(model, sit_loss, steps=400)
        torch.save(model.state_dict(), tmp_path / "SiT-tiny.pt")
        loaded = load_velocity_model(tmp_path / "SiT-tiny.pt", (2, 4, 4), 3, num_heads=2)
        rms, right = landing_error(loaded)
        assert right.all() and rms.mean() < 0.4, rms  # class points are ~2 apart (RMS)
        flipped = load_velocity_model(tmp_path / "SiT-tiny.pt", (2, 4, 4), 3, num_heads=2,
                                      convention={"velocity_sign": -1})
        rms, right = landing_error(flipped)
        assert not right.any() and rms.min() > 1.0
        # the diffusers convention on a SiT is wrong too
        rms, _ = landing_error(load_velocity_model(tmp_path / "SiT-tiny.pt", (2, 4, 4), 3, num_heads=2,
                                                   convention="diffusers-flow"))
        assert rms.mean() > 1.0


def test_trained_diffusers_dit_in_flow_convention(tmp_path):
    """A tiny DiTTransformer2DModel trained as diffusers' flow matching trains (σ = 1 - t,
    x_σ = (1 - σ) x_data + σ ε, timestep 1000 σ, target ε - x_data), saved with save_pretrained and declared
    "diffusers-flow": its samples land on their class's point; declared "sit" (or with the sign flipped) not."""
    def diffusers_flow_loss(m, x0, x1, t, y):
        sigma = 1 - t
        sb = sigma.view(-1, 1, 1, 1)
        out = m((1 - sb) * x1 + sb * x0, timestep=1000 * sigma, class_labels=y, return_dict=False)[0]
        return (out - (x0 - x1)).pow(2).mean()

    dit = tiny_dit(in_channels=2, out_channels=2, sample_size=4, num_attention_heads=2, attention_head_dim=16)
    with one_thread():
        _train(dit, diffusers_flow_loss)
        dit.save_pretrained(tmp_path / "dit")
        (tmp_path / "dit" / CONVENTION_FILE).write_text(json.dumps({"preset": "diffusers-flow"}))
        rms, right = landing_error(load_velocity_model(tmp_path / "dit", (2, 4, 4), 3))
        assert right.all() and rms.mean() < 0.4, rms  # class points are ~2 apart (RMS)
        for wrong in ("sit", {"preset": "diffusers-flow", "velocity_sign": 1}):
            rms, right = landing_error(load_velocity_model(tmp_path / "dit", (2, 4, 4), 3, convention=wrong))
            assert not right.all() and rms.mean() > 1.0, wrong


def test_adapter_passes_mapped_time_and_labels():
    """The backbone sees s = scale·(1 - t) (or scale·t) and backbone class ids; the output sign is applied."""
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, s, y):
            seen["s"], seen["y"] = s, y
            return torch.cat([x, 5 * x], dim=1) * self.w  # 2C channels: the second half must be dropped

    adapter = VelocityAdapter(Spy(), (2, 4, 4), 10, CONVENTIONS["diffusers-flow"], learned_sigma=True,
                              class_map=[7, 3])
    x = torch.randn(3, 2, 4, 4)
    v = adapter(x, torch.tensor([0.0, 0.25, 1.0]), torch.tensor([0, 1, 2]))
    assert torch.allclose(seen["s"], torch.tensor([1000.0, 750.0, 0.0]))
    assert seen["y"].tolist() == [7, 3, 10]
    assert torch.equal(v, -x)
    # scalar t (as the solvers pass) and time integration through the project's solver
    out, nfe = integrate(lambda z, t: adapter(z, t, torch.tensor([0, 1, 2])), x, time_grid(4))
    assert nfe == 4 and out.shape == x.shape
