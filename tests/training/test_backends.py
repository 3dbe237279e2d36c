"""Real-scale backends on CPU, in miniature (issue #6): train-flow with model presets (LatentMLP sizes and SiT
sized for the latents), mixed precision, gradient checkpointing, exact resume, the SiT folder format loaded by
``load_velocity_model``; device / precision / compile helpers; bench-speed throughput.

Everything runs on tiny random latents; the CUDA paths (bf16/fp16 autocast on a GPU, TF32, compile with
inductor + triton) share this code but cannot run here (no GPU on this machine or in CI).
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import MLP_PRESETS, SamplerConfig
from core.data.latent_cache import LatentSet
from core.device import (
    autocast,
    compile_unavailable_reason,
    cpu_bf16_supported,
    grad_scaler,
    maybe_compile,
    resolve_device,
    resolve_precision,
)
from core.errors import CheckpointError
from core.models.kinds import SIT_FLOW_KIND as SIT_KIND
from core.models.latent_mlp import LatentMLP, LatentMLPConfig
from core.models.loading import load_flow, load_velocity_model
from core.models.sit import SiT, SiTConfig
from core.models.velocity import VelocityAdapter
from core.training.generators import train_flow
from core.training.loop import LatentModelTrainConfig, build_model
from core.transport.path import flow_matching_loss
from core.transport.sampler import sample

TINY_SIT = dict(depth=1, hidden_size=32, num_heads=2)
SHAPE = (4, 8, 8)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models train several times faster on one thread while the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_latents(n: int = 48, num_classes: int = 3, shape=SHAPE) -> LatentSet:
    g = torch.Generator().manual_seed(0)
    labels = np.arange(n) % num_classes
    centres = torch.from_numpy(labels).float().sub(1).view(-1, 1, 1, 1)
    return LatentSet(centres + 0.3 * torch.randn(n, *shape, generator=g), labels, tuple("abcdefgh"[:num_classes]),
                     "toy", "none")


def sit_config(**kw) -> LatentModelTrainConfig:
    params = dict(steps=6, batch_size=8, warmup=2, checkpoint_every=3, seed=1, model="sit-s/2",
                  sit_overrides=TINY_SIT)
    params.update(kw)
    return LatentModelTrainConfig(**params)


def quiet(_: str) -> None:
    pass


# -- presets and training ------------------------------------------------------------------------------------

def test_mlp_s_preset_trains_and_reloads(tmp_path):
    config = LatentModelTrainConfig(steps=3, batch_size=8, warmup=1, **MLP_PRESETS["mlp-s"])
    model = train_flow(config, toy_latents(), tmp_path / "mlp", log=quiet)
    assert (model.config.width, model.config.hidden, model.config.depth) == (256, 512, 4)
    loaded = load_velocity_model(tmp_path / "mlp", SHAPE, 3)
    assert isinstance(loaded, LatentMLP)
    out = sample(loaded, torch.tensor([0, 1, 2]), None, SamplerConfig(steps=2, cfg_scale=2.0))
    assert out.latents.shape == (3, *SHAPE) and torch.isfinite(out.latents).all()
    record = json.loads((tmp_path / "mlp" / "training.json").read_text())
    assert record["precision"] == "fp32" and record["device"] == "cpu" and record["config"]["model"] == "mlp"


def test_sit_preset_is_sized_for_the_data():
    model = build_model(LatentModelTrainConfig(model="sit-b/2"), (4, 32, 32), 10)
    c = model.config
    assert (c.depth, c.hidden_size, c.num_heads, c.patch_size) == (12, 768, 12, 2)
    assert (c.input_size, c.in_channels, c.num_classes, c.learn_sigma) == (32, 4, 10, False)
    assert model.y_embedder.embedding_table.num_embeddings == 11  # + the null class of CFG
    with pytest.raises(ValueError, match="square latents"):
        build_model(LatentModelTrainConfig(model="sit-s/2"), (4, 8, 16), 3)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        build_model(LatentModelTrainConfig(model="sit-s/2"), (4, 7, 7), 3)
    with pytest.raises(ValueError, match="model must be"):
        LatentModelTrainConfig(model="unet")
    with pytest.raises(ValueError, match="unknown fields"):
        LatentModelTrainConfig(model="sit-s/2", sit_overrides={"input_size": 8})


def test_tiny_sit_trains_saves_and_samples_through_load_velocity_model(tmp_path):
    ema = train_flow(sit_config(steps=4), toy_latents(), tmp_path / "sit", log=quiet)
    assert isinstance(ema, SiT)
    meta = json.loads((tmp_path / "sit" / "config.json").read_text())
    assert meta["kind"] == SIT_KIND and meta["config"]["learn_sigma"] is False
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "sit" / "model.safetensors"))
    assert "pos_embed" not in weights and all(v.dtype == torch.float16 for v in weights.values())
    for loaded in (load_velocity_model(tmp_path / "sit", SHAPE, 3), load_flow(tmp_path / "sit", "cpu", SHAPE, 3)):
        assert isinstance(loaded, VelocityAdapter) and loaded.config.kind == SIT_KIND
        assert loaded.config.num_classes == 3 and loaded.null_class == 3 and not loaded.training
        g = torch.Generator().manual_seed(5)
        x, t, y = torch.randn(4, *SHAPE, generator=g), torch.rand(4, generator=g), torch.tensor([0, 1, 2, 3])
        with torch.no_grad():
            expected = ema.eval()(x, t, y)
        torch.testing.assert_close(loaded(x, t, y), expected, atol=2e-3, rtol=1e-2)  # float16 storage
        out = sample(loaded, torch.tensor([0, 1, 2, 0]), None, SamplerConfig(steps=3, cfg_scale=2.0))
        assert out.latents.shape == (4, *SHAPE) and torch.isfinite(out.latents).all() and out.nfe == 3
    with pytest.raises(CheckpointError, match="3 classes, the data has 5"):
        load_velocity_model(tmp_path / "sit", SHAPE, 5)
    with pytest.raises(CheckpointError, match="foreign models only"):
        load_velocity_model(tmp_path / "sit", SHAPE, 3, class_map=[0, 1, 2])
    meta["config"]["depth"] = 2  # config.json no longer matches the weights
    (tmp_path / "sit" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing keys|config.json says"):
        load_velocity_model(tmp_path / "sit", SHAPE, 3)


@pytest.mark.parametrize("kind", ["mlp", "sit"])
def test_resume_continues_exactly(tmp_path, monkeypatch, kind):
    """Interrupted after the step-3 checkpoint and resumed: the same weights as an uninterrupted run."""
    config = (sit_config() if kind == "sit"
              else LatentModelTrainConfig(steps=6, batch_size=8, warmup=2, checkpoint_every=3, seed=1,
                                          width=32, hidden=64, depth=2))
    data = toy_latents()
    straight = train_flow(config, data, tmp_path / "a", log=quiet)

    import core.training.generators

    real, calls = core.training.generators.flow_matching_loss, []

    def crash_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(core.training.generators, "flow_matching_loss", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_flow(config, data, tmp_path / "b", log=quiet)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(core.training.generators, "flow_matching_loss", real)
    messages: list[str] = []
    resumed = train_flow(config, data, tmp_path / "b", log=messages.append)
    assert "resuming" in messages[0] and "step 3" in messages[0]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    data = toy_latents()
    train_flow(LatentModelTrainConfig(steps=2, batch_size=8, warmup=1, width=32, hidden=64, depth=1), data, tmp_path,
               log=quiet)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="another model"):
        train_flow(sit_config(steps=4), data, tmp_path, log=quiet)


def _one_step_grads(model: torch.nn.Module, data: LatentSet):
    x, y = data.latents[:8], torch.from_numpy(data.labels[:8])
    model.zero_grad()
    loss = flow_matching_loss(model, x, y, torch.Generator().manual_seed(3), 0.1)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["mlp", "sit"])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(kind):
    torch.manual_seed(0)
    if kind == "sit":
        plain = SiT(SiTConfig(input_size=8, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=3,
                              learn_sigma=False))
    else:
        plain = LatentMLP(LatentMLPConfig(SHAPE, 3, 32, 64, 2, emb_dim=32))
    with torch.no_grad():  # adaLN-Zero starts with zero gates and outputs; random weights exercise every path
        for p in plain.parameters():
            p.normal_(0, 0.1)
    checkpointed = copy.deepcopy(plain).set_grad_checkpointing(True)
    calls = []

    def counted(forward):
        def run(*args):
            calls.append(1)
            return forward(*args)
        return run

    for block in checkpointed.blocks:  # (forward hooks do not fire in the recomputation)
        block.forward = counted(block.forward)
    data = toy_latents()
    loss_a, grads_a = _one_step_grads(plain.train(), data)
    loss_b, grads_b = _one_step_grads(checkpointed.train(), data)
    assert len(calls) == 2 * len(checkpointed.blocks)  # each block ran again in the backward pass
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(plain.parameters()))
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5, msg=name)
    with torch.no_grad():  # inference never checkpoints
        calls.clear()
        checkpointed(data.latents[:2], torch.rand(2), torch.tensor([0, 1]))
        assert len(calls) == len(checkpointed.blocks)


def test_training_with_grad_checkpointing_matches(tmp_path):
    data = toy_latents()
    a = train_flow(sit_config(steps=3), data, tmp_path / "a", log=quiet)
    b = train_flow(sit_config(steps=3, grad_checkpointing=True), data, tmp_path / "b", log=quiet)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=name)


def test_fp16_trains_with_a_loss_scaler_and_resumes_it(tmp_path):
    data = toy_latents()
    config = LatentModelTrainConfig(steps=3, batch_size=8, warmup=1, checkpoint_every=3, width=32, hidden=64, depth=1,
                                    precision="fp16")
    train_flow(config, data, tmp_path, log=quiet)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["precision"] == "fp16" and state["scaler"]["scale"] > 0
    messages: list[str] = []
    model = train_flow(LatentModelTrainConfig(**{**config.__dict__, "steps": 5}), data, tmp_path, log=messages.append)
    assert "step 3" in messages[0]
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    assert json.loads((tmp_path / "training.json").read_text())["precision"] == "fp16"


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bf16")
def test_bf16_autocast_training_on_cpu(tmp_path):
    model = train_flow(sit_config(steps=3, precision="bf16"), toy_latents(), tmp_path, log=quiet)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["precision"] == "bf16" and "scaler" not in state


# -- device, precision, compile ------------------------------------------------------------------------------

def test_device_and_precision_helpers():
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_precision("auto", resolve_device("cuda"))
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu")
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu and resolve_precision("auto", cpu) is None
    assert resolve_precision("fp32", cpu) is None and resolve_precision("float16", cpu) == torch.float16
    if cpu_bf16_supported():
        assert resolve_precision("bf16", cpu) == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="no native bf16"):
            resolve_precision("bf16", cpu)
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", cpu)
    assert not grad_scaler(cpu, None).is_enabled() and not grad_scaler(cpu, torch.bfloat16).is_enabled()
    assert grad_scaler(cpu, torch.float16).is_enabled()
    x = torch.randn(2, 4)
    layer = torch.nn.Linear(4, 4)
    with autocast(cpu, None):
        assert layer(x).dtype == torch.float32
    with autocast(cpu, torch.float16):
        assert layer(x).dtype == torch.float16


def test_compile_is_a_warned_no_op_where_unavailable_and_keeps_the_module(monkeypatch):
    model = LatentMLP(LatentMLPConfig(SHAPE, 3, 32, 64, 1, emb_dim=32)).eval()
    x, t, y = torch.randn(2, *SHAPE), torch.rand(2), torch.tensor([0, 3])
    with torch.no_grad():
        expected = model(x, t, y)
    import core.device

    monkeypatch.setattr(core.device.shutil, "which", lambda name: None)
    assert "C++ compiler" in compile_unavailable_reason("cpu")
    with pytest.warns(RuntimeWarning, match="--compile ignored"):
        assert maybe_compile(model, "cpu") is False
    keys = list(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert maybe_compile(model, "cpu", backend="eager") is True  # dynamo traces; no code generation
        with torch.no_grad():
            out = model(x, t, y)
    torch.testing.assert_close(out, expected)
    assert list(model.state_dict()) == keys and model.config.num_classes == 3  # in place: keys, attributes kept


def test_cfg_is_one_batched_forward_with_the_sit_adapter():
    """sample() with CFG calls the SiT once per Euler step on 2·B rows (conditional + null), with the adapter's
    class map applied to both halves (null -> the backbone's null row)."""
    torch.manual_seed(0)
    backbone = SiT(SiTConfig(input_size=8, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=6,
                             learn_sigma=True)).eval()
    with torch.no_grad():
        for p in backbone.parameters():
            p.normal_(0, 0.1)
    adapter = VelocityAdapter(backbone, SHAPE, 6, "sit", learned_sigma=True, class_map=[5, 2, 0])
    seen = []
    backbone.register_forward_hook(lambda mod, args, out: seen.append(args[2].clone()))
    labels = torch.tensor([0, 1, 2, 0])
    out = sample(adapter, labels, None, SamplerConfig(steps=3, cfg_scale=2.5))
    assert len(seen) == 3 and all(len(y) == 8 for y in seen)
    assert seen[0].tolist() == [5, 2, 0, 5, 6, 6, 6, 6]
    # the same Euler steps written out with separate conditional and null passes
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i in range(3):
            t = torch.full((4,), i / 3)
            v_c, v_n = adapter(x, t, labels), adapter(x, t, torch.full_like(labels, 3))
            x = x + (v_n + 2.5 * (v_c - v_n)) / 3
    torch.testing.assert_close(out.latents, x, atol=1e-4, rtol=1e-4)


# -- the command line ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store_and_vae(tmp_path_factory):
    """A tiny RGB VAE saved with save_pretrained (16 px -> 4x4x4 latents) and a latent store encoded with it."""
    from PIL import Image

    from core.data.imagefolder import StreamingImageFolder
    from core.data.store_encoding import encode_to_store
    from core.models.vae import LatentAutoencoder, TinyVAEConfig, build_tiny_vae

    root = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(0)
    for wnid in ("n00000001", "n00000002", "n00000003"):
        (root / "data" / wnid).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(root / "data" / wnid / f"{i}.png")
    torch.manual_seed(0)
    vae = build_tiny_vae(TinyVAEConfig(block_out_channels=(8, 8, 8), norm_num_groups=4), in_channels=3, sample_size=16)
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    ae = LatentAutoencoder.from_pretrained(root / "vae", device="cpu")
    encode_to_store(StreamingImageFolder(root / "data", None, 16, workers=1), ae, root / "store", shard_size=8,
                    batch_size=6, progress=lambda f, m: None)
    return root / "store", root / "vae"


def test_cli_train_flow_sit_from_a_latent_store_resumes_and_loads(tmp_path, store_and_vae, capsys):
    from core.cli.main import main

    store, vae = store_and_vae
    out = tmp_path / "sit"
    args = ["train-flow", "--latent-store", str(store), "--vae", str(vae), "--model", "SiT-S/2", "--depth", "1",
            "--width", "32", "--heads", "2", "--batch-size", "6", "--checkpoint-every", "2", "--warmup", "1",
            "--out", str(out), "--precision", "auto", "--device", "auto", "--grad-checkpointing"]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "4"]) == 0
    printed = capsys.readouterr()
    assert "resuming" in printed.out + printed.err and "at step 2" in printed.out + printed.err
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["model"] == "sit-s/2" and record["config"]["lr"] == 1e-4
    assert record["config"]["sit_overrides"] == {"depth": 1, "hidden_size": 32, "num_heads": 2}
    assert record["config"]["grad_checkpointing"] is True
    assert record["provenance"]["latent_store"] and record["provenance"]["vae_fingerprint"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    flow = load_velocity_model(out, (4, 4, 4), 3)
    assert flow.config.kind == SIT_KIND
    assert torch.isfinite(sample(flow, torch.tensor([0, 1, 2]), None, SamplerConfig(steps=2)).latents).all()
    # the trained SiT folder is a --flow for distill (docs/imagenette-sd-sit.md, "train your own flow")
    distilled = tmp_path / "distilled"
    assert main(["distill", "--method", "pgfm", "--ipc", "2", "--steps", "2", "--latent-store", str(store),
                 "--vae", str(vae), "--flow", str(out), "--out", str(distilled)]) == 0
    manifest = json.loads((distilled / "manifest.json").read_text())
    assert len(manifest["images"]) == 6 and "flow-sit" in json.dumps(manifest)
    # bad combinations are refused before any work
    assert main(["train-flow", "--latent-store", str(store), "--model", "sit-s/2", "--hidden", "64",
                 "--out", str(tmp_path / "x")]) == 2
    for bad in (["--model", "sit-s/2"], ["--heads", "2"]):  # the diffusion counterpart is the MLP only
        with pytest.raises(SystemExit):
            main(["train-diffusion", "--latent-store", str(store), "--out", str(tmp_path / "x"), *bad])


def test_cli_bench_speed_throughput_for_any_vae_and_flow(tmp_path, store_and_vae, monkeypatch, capsys):
    from core.cli.main import main

    store, vae = store_and_vae
    flow = tmp_path / "mlp"
    assert main(["train-flow", "--latent-store", str(store), "--model", "mlp-s", "--width", "32", "--hidden", "64",
                 "--depth", "1", "--steps", "1", "--batch-size", "4", "--out", str(flow)]) == 0
    monkeypatch.setenv("DISTILL_STUDIO_COMPILE_BACKEND", "eager")  # the --compile path without code generation
    report = tmp_path / "speed.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["bench-speed", "--throughput-only", "--vae", str(vae), "--flow", str(flow), "--resolution", "16",
                     "--batch-size", "4", "--repeats", "1", "--steps", "2", "--dtype", "bfloat16", "--compile",
                     "--json", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "encode" in printed and "images·NFE/s" in printed and "decode" in printed
    t = json.loads(report.read_text())["throughput"]
    assert t["compiled"] is True and t["dtype"] == "bfloat16" and t["latent_shape"] == [4, 4, 4]
    assert t["sample_nfe"] == 2 and t["sample_image_nfe_per_s"] == pytest.approx(2 * t["sample_images_per_s"], rel=1e-3)
    for key in ("encode_images_per_s", "sample_images_per_s", "decode_images_per_s"):
        assert t[key] > 0
    # a flow that does not fit the VAE's latents at this resolution is refused
    assert main(["bench-speed", "--throughput-only", "--vae", str(vae), "--flow", str(flow), "--resolution", "32",
                 "--repeats", "1"]) == 2


def test_cli_bench_speed_keeps_the_engine_figures(monkeypatch, engine, tmp_path, capsys):
    """The printed quantize / sample / decode lines and benchmarks/speed.json's keys stay; throughput is added."""
    import core.cli.main
    from core.data.datasets import LabelledImages
    from core.data.latent_cache import encode_dataset
    from core.pipeline.distill import DistillEngine

    rng = np.random.default_rng(1)  # IPC 50 needs 50 images per class
    data = LabelledImages(rng.integers(0, 256, size=(150, 1, 32, 32), dtype=np.uint8), np.repeat(np.arange(3), 50),
                          ("a", "b", "c"), "tiny-150")
    latents = encode_dataset(data, engine.vae, use_cache=False, progress=lambda f, m: None)
    monkeypatch.setattr("core.cli.speed.engine_from_args", lambda args: DistillEngine(data, latents, engine.vae, engine.flow))
    report = tmp_path / "speed.json"
    assert core.cli.main.main(["bench-speed", "--repeats", "1", "--batch-size", "4", "--steps", "1",
                          "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    for line in ("quantize 10 classes x IPC 50", "sample 10 classes x IPC 10", "decode those 100 latents",
                 "throughput on cpu"):
        assert line in printed
    r = json.loads(report.read_text())
    for key in ("quantize_10_classes_ipc50_s", "quantize_10_classes_ipc50_with_w2_s",
                "sample_100_guided_8_euler_cfg_trajectories_s", "decode_100_s", "threads", "repeats", "statistic"):
        assert key in r
    assert r["device"] == "cpu" and r["throughput"]["resolution"] == 32


def test_evaluate_imagefolder_script_tests_students_on_a_real_split(tmp_path, capsys):
    """scripts/evaluate_imagefolder.py (the docs' ImageNette evaluation) on a 3-class toy val split."""
    import importlib.util

    from PIL import Image

    from core.pipeline.export import class_folder_name

    rng = np.random.default_rng(0)
    names = ("alpha", "beta", "gamma")
    (tmp_path / "classes.txt").write_text("".join(f"n0000000{i + 1} {n}\n" for i, n in enumerate(names)))
    for i, name in enumerate(names):
        (tmp_path / "val" / f"n0000000{i + 1}").mkdir(parents=True)
        (tmp_path / "set" / class_folder_name(i, name)).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "val" / f"n0000000{i + 1}" / f"{k}.png")
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "set" / class_folder_name(i, name) / f"{k}.png")
    spec = importlib.util.spec_from_file_location("evaluate_imagefolder",
                                                  Path(__file__).resolve().parents[2] / "scripts" / "evaluate_imagefolder.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = tmp_path / "eval.json"
    assert script.main([str(tmp_path / "set"), "--val-dir", str(tmp_path / "val"), "--classes",
                        str(tmp_path / "classes.txt"), "--resolution", "16", "--epochs", "2", "--seeds", "1",
                        "--json", str(report)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["resolution"] == 16 and 0.0 <= result["accuracy_mean"] <= 1.0 and result["num_images"] == 9
