"""The CLI at real scale, in miniature: an SD-VAE-shaped AutoencoderKL (3x256x256 -> 4x32x32, scaling 0.18215),
an ImageFolder of 256-px-ish JPEG/PNG files in WordNet-id class folders, a SiT saved as a raw ``.pt`` (and a
diffusers DiT folder), all tiny and random, driven through ``encode --store`` -> ``distill --latent-store``
exactly as with stabilityai/sd-vae-ft-mse, ImageNette and SiT-XL-2-256x256.pt (README: "Real-scale models
and data"); a 2-process ``torchrun`` distillation equal to one process; every new option's bad input.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from scale_fixtures import NAMES, PER_CLASS, REPO, WNIDS, _tiny_sd_vae

from core.cli.main import main


@pytest.fixture
def cli(capsys):
    """Run ``python -m core ARGS`` in-process; returns (returncode, stdout, stderr)."""
    def run(*args: str) -> SimpleNamespace:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)
    return run


@pytest.fixture
def no_teacher(monkeypatch):
    """A teacher is only for metrics: loading one during a distillation fails the test."""
    from core.models.teacher import Teacher

    def refuse(*args, **kwargs):
        raise AssertionError("distill loaded a teacher")
    monkeypatch.setattr(Teacher, "load", refuse)


def _check_export(out: Path, method: str, n_classes: int = 3, ipc: int = 2) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["num_images"] == n_classes * ipc
    assert manifest["class_names"] == list(NAMES)
    pngs = sorted(out.glob("*/*.png"))
    assert len(pngs) == n_classes * ipc
    for png in pngs:
        with Image.open(png) as im:
            assert im.size == (256, 256) and im.mode == "RGB"
    tensors = load_file(str(out / "latents.safetensors"))
    assert tuple(tensors["latents"].shape) == (n_classes * ipc, 4, 32, 32)
    assert torch.isfinite(tensors["latents"]).all()
    return manifest


# ---------------------------------------------------------------------------------------------
# encode --store -> distill --latent-store
# ---------------------------------------------------------------------------------------------

def test_encode_store_writes_a_sharded_store_of_sd_shaped_latents(scale, cli):
    from core.data.latent_store import LatentStore

    store = LatentStore(scale.store)
    assert len(store) == 3 * PER_CLASS and store.latent_shape == (4, 32, 32) and len(store.shards) == 3
    assert store.class_ids == WNIDS and store.class_names == NAMES
    # re-running the same command resumes: a complete store is kept as it is
    before = {p.name: p.stat().st_mtime_ns for p in scale.store.glob("shard-*")}
    r = cli("encode", "--dataset", "imagefolder", "--data-dir", scale.data, "--classes", ",".join(WNIDS),
            "--resolution", "256", "--vae", scale.vae, "--store", scale.store, "--shard-size", "5")
    assert r.returncode == 0, r.stderr
    assert "12 latents of shape (4, 32, 32) in 3 shards" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in scale.store.glob("shard-*")} == before


def test_distill_pgfm_from_a_store_with_a_sit_checkpoint(scale, cli, tmp_path, no_teacher):
    """The issue's "done when": SD-shaped VAE + ImageFolder store + SiT .pt, no teacher, no embedded model."""
    out = tmp_path / "pgfm"
    r = cli("distill", "--method", "pgfm", "--latent-store", scale.store, "--flow", scale.sit, "--flow-convention",
            "sit", "--flow-num-heads", "2", "--vae", scale.vae, "--ipc", "2", "--steps", "4", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "pgfm: 6 images (2 per class, 3 classes)" in r.stdout and str(out) in r.stdout
    manifest = _check_export(out, "pgfm")
    models = manifest["models"]
    assert models["flow_model"]["kind"] == "sit" and models["flow_model"]["source"] == str(scale.sit)
    assert models["flow_model"]["convention"] == {"time_scale": 1.0, "time_reversed": False, "velocity_sign": 1.0}
    assert models["flow_model"]["latent_shape"] == [4, 32, 32] and models["flow_model"]["num_classes"] == 3
    assert models["latent_store"] == str(scale.store) and models["diffusion"] is None
    from core.data.latent_store import LatentStore

    assert models["dataset_fingerprint"] == LatentStore(scale.store).dataset_fingerprint
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "00-tench", "01-English_springer", "02-cassette_player"]
    assert all(im["landing_error"] is not None for im in manifest["images"])


@pytest.mark.parametrize("method", ["ddoq", "d4m", "random"])
def test_other_methods_from_the_same_store(scale, cli, tmp_path, no_teacher, method):
    out = tmp_path / method
    flow = ["--flow", scale.sit5, "--flow-class-map", "4,0,2"] if method == "ddoq" else []  # 5-class SiT, mapped
    r = cli("distill", "--method", method, "--latent-store", scale.store, "--vae", scale.vae, "--ipc", "2",
            "--steps", "2", "--classes", f"{WNIDS[0]},English springer,2", *flow, "--out", out)
    assert r.returncode == 0, r.stderr
    manifest = _check_export(out, method)
    assert manifest["config"]["classes"] == [0, 1, 2]
    if method == "ddoq":
        assert manifest["models"]["flow_model"]["class_map"] == [4, 0, 2]
        assert manifest["models"]["flow_model"]["kind"] == "sit"
        assert sum(im["weight"] for im in manifest["images"]) == pytest.approx(6.0)
    else:
        assert manifest["models"]["flow"] is None and manifest["models"]["flow_model"] is None
    if method == "random":  # real images, read back from the ImageFolder the store was encoded from
        from core.data.imagefolder import open_image_folder

        folder = open_image_folder(scale.data, list(WNIDS), 256, split="train")
        real = folder.load(range(len(folder)))
        for png in sorted(out.glob("*/*.png")):
            pixels = torch.from_numpy(np.asarray(Image.open(png)).transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
            error = (real.images - pixels).abs().flatten(1).max(1).values
            match = int(error.argmin())
            assert error[match] < 1e-5 and NAMES[real.labels[match]] in png.parent.name.replace("_", " ")


# ---------------------------------------------------------------------------------------------
# a store larger than --store-max-gib (or --stream): quantized class by class, never loaded whole
# ---------------------------------------------------------------------------------------------

def _refuse_whole_store(monkeypatch) -> list:
    """From now on loading the whole store fails the test; returns the list of classes loaded alone."""
    from core.data.latent_store import LatentStore

    def refuse(*args, **kwargs):
        raise AssertionError("the whole latent store was loaded")
    loaded, load_class = [], LatentStore.load_class

    def spy(self, label, *args, **kwargs):
        loaded.append(label)
        return load_class(self, label, *args, **kwargs)
    monkeypatch.setattr(LatentStore, "as_latent_set", refuse)
    monkeypatch.setattr(LatentStore, "load_class", spy)
    return loaded


def _streaming_args(method: str, scale) -> list:
    flow = (["--flow", scale.sit, "--flow-convention", "sit", "--flow-num-heads", "2"]
            if method in ("pgfm", "ddoq") else [])
    return ["distill", "--method", method, "--latent-store", scale.store, "--vae", scale.vae, "--ipc", "2",
            "--steps", "2", *flow]


@pytest.mark.parametrize("method", ["pgfm", "d4m", "ddoq", "random"])
def test_store_above_the_limit_is_streamed_with_the_in_memory_result(scale, cli, tmp_path, no_teacher, monkeypatch,
                                                                     method):
    """--store-max-gib below the store: classes are quantized one by one from the store, none loaded whole
    (each is under the sample size, 4 latents, so the streaming k-means is the in-memory one): same export."""
    r = cli(*_streaming_args(method, scale), "--out", tmp_path / "memory")
    assert r.returncode == 0, r.stderr
    loaded = _refuse_whole_store(monkeypatch)
    r = cli(*_streaming_args(method, scale), "--store-max-gib", "1e-6", "--out", tmp_path / "streamed")
    assert r.returncode == 0, r.stderr
    assert loaded == []  # 1e-6 GiB: not even one class is loaded whole; all are streamed
    streamed = _check_export(tmp_path / "streamed", method)
    memory = json.loads((tmp_path / "memory" / "manifest.json").read_text())
    assert streamed["models"]["latent_store_streaming"]["max_bytes"] == int(1e-6 * 2**30)
    assert "latent_store_streaming" not in memory["models"]
    assert streamed["images"] == memory["images"] and streamed["config"] == memory["config"]
    a = load_file(str(tmp_path / "memory" / "latents.safetensors"))
    b = load_file(str(tmp_path / "streamed" / "latents.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    pngs = sorted(p.relative_to(tmp_path / "memory") for p in (tmp_path / "memory").glob("*/*.png"))
    for png in pngs:
        assert (tmp_path / "memory" / png).read_bytes() == (tmp_path / "streamed" / png).read_bytes()


def test_stream_with_classes_larger_than_the_sample(scale, cli, tmp_path, no_teacher, monkeypatch):
    """--stream with a 3-row sample for 4-latent classes: the mini-batch + Lloyd k-means over the stream."""
    from core.config import DistillConfig
    from core.data.latent_store import LatentStore
    from core.pipeline.distill import distill, load_engine
    from core.quantize.ddoq import QuantizeConfig, quantize
    from core.quantize.streaming import StreamingLatents

    store = LatentStore(scale.store)
    # random picks the same rows (the class seed's permutation) whether the class is streamed or in memory
    config = QuantizeConfig(method="random", ipc=2, compute_w2=False)
    for a, b in zip(quantize(store.as_latent_set(), [0, 1, 2], config),
                    StreamingLatents(store, 0, init_size=1).quantize([0, 1, 2], config)):
        np.testing.assert_array_equal(a.source_indices, b.source_indices)
        torch.testing.assert_close(a.prototypes, b.prototypes, atol=0, rtol=0)

    loaded = _refuse_whole_store(monkeypatch)
    out = tmp_path / "ddoq"
    r = cli(*_streaming_args("ddoq", scale), "--stream", "--store-max-gib", "1e-6", "--stream-init-size", "3",
            "--out", out)
    assert r.returncode == 0, r.stderr
    manifest = _check_export(out, "ddoq")
    assert manifest["models"]["latent_store_streaming"]["init_size"] == 3 and loaded == []
    for c in range(3):  # ddoq weights are K x cell mass: mean 1 within each class
        assert sum(im["weight"] for im in manifest["images"] if im["class_id"] == c) == pytest.approx(2.0)

    from core.models.spec import ModelSpec

    spec = ModelSpec(vae=str(scale.vae), flow=None, diffusion=None, teacher=None)
    engine = load_engine(spec, latent_store=str(scale.store), stream=True, stream_init_size=3,
                         max_store_bytes=0)
    assert isinstance(engine.latents, StreamingLatents) and not hasattr(engine.latents, "latents")
    dset = distill(engine, DistillConfig(method="d4m", ipc=2, classes=(0, 2)))
    assert len(dset) == 4 and torch.isfinite(dset.prototypes).all() and dset.images.shape == (4, 3, 256, 256)
    for q in dset.quantization:
        x = torch.cat(list(store.iter_class(q.label))).reshape(int(store.counts[q.label]), -1)
        d = torch.cdist(x, q.prototypes.reshape(2, -1))
        np.testing.assert_array_equal(q.assignments, d.argmin(1).numpy())
        np.testing.assert_allclose(q.masses, np.bincount(q.assignments, minlength=2) / len(x))
        assert q.weights.sum() == pytest.approx(1.0) and q.prototypes.shape == (2, 4, 32, 32)
    # a caller that did not ask for streaming is refused, with a pointer to it
    with pytest.raises(ValueError, match=r"too large for in-memory distillation.*streams a store above"):
        load_engine(spec, latent_store=str(scale.store), max_store_bytes=0)


def test_distill_fm_with_a_diffusers_dit_folder(scale, cli, tmp_path, no_teacher):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                          sample_size=32, patch_size=4, num_embeds_ada_norm=3).save_pretrained(tmp_path / "dit")
    args = ["distill", "--method", "fm", "--latent-store", scale.store, "--vae", scale.vae, "--ipc", "2",
            "--steps", "2", "--flow", tmp_path / "dit"]
    r = cli(*args, "--out", tmp_path / "no")
    assert r.returncode == 2 and "Declare it" in r.stderr and not (tmp_path / "no").exists()
    r = cli(*args, "--flow-convention", '{"preset": "diffusers-flow"}', "--out", tmp_path / "fm")
    assert r.returncode == 0, r.stderr
    flow = _check_export(tmp_path / "fm", "fm")["models"]["flow_model"]
    assert flow["kind"] == "diffusers-dit"
    assert flow["convention"] == {"time_scale": 1000.0, "time_reversed": True, "velocity_sign": -1.0}


def test_engine_loads_every_flow_kind_and_leaves_a_missing_default_out(scale, tmp_path):
    from core.models.latent_mlp import LatentMLP
    from core.models.spec import ModelSpec
    from core.models.velocity import VelocityAdapter
    from core.pipeline.distill import StoreImages, load_engine

    spec = ModelSpec(vae=str(scale.vae), flow=str(scale.sit), diffusion=str(tmp_path / "none"), flow_num_heads=2)
    engine = load_engine(spec, latent_store=str(scale.store))
    assert isinstance(engine.flow, VelocityAdapter) and engine.diffusion is None
    assert isinstance(engine.dataset, StoreImages) and len(engine.dataset) == len(engine.latents) == 12
    assert engine.latents.latent_shape == (4, 32, 32)
    spec = ModelSpec(vae=str(scale.vae), flow=str(tmp_path / "missing-flow"), diffusion=None)
    assert load_engine(spec, latent_store=str(scale.store)).flow is None
    # the embedded default: the project's own flow folder still loads as the LatentMLP it is
    from core.config import FLOW_DIR
    from core.models.loading import load_flow_for

    if (FLOW_DIR / "config.json").is_file():
        assert isinstance(load_flow_for(ModelSpec(), (4, 8, 8), 10), LatentMLP)


# ---------------------------------------------------------------------------------------------
# many processes
# ---------------------------------------------------------------------------------------------

def _run(cmd: list[str], **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("source", ["store-pgfm", "imagefolder-ddoq"])
def test_torchrun_distill_equals_one_process(scale, tmp_path, source):
    """``torchrun --nproc_per_node 2 -m core distill`` (gloo on CPU): quantization split by class, sampling by
    batches of --sample-batch-size (and, from an ImageFolder, encoding by batches); the export equals one
    process's."""
    if source == "store-pgfm":
        data = ["--method", "pgfm", "--latent-store", str(scale.store), "--flow", str(scale.sit), "--flow-num-heads", "2"]
    else:  # the in-memory ImageFolder, encoded across ranks into the latent cache (rank 0 writes it)
        data = ["--method", "ddoq", "--dataset", "imagefolder", "--data-dir", str(scale.data), "--resolution", "256",
                "--flow", str(scale.sit5), "--flow-class-map", "1,2,3"]
    args = ["distill", *data, "--vae", str(scale.vae), "--ipc", "2", "--steps", "3", "--sample-batch-size", "2",
            "--threads", "1", "--seed", "5"]
    if source != "store-pgfm":  # each run encodes anew into its own cache
        args_one = [*args, "--cache-dir", str(tmp_path / "cache-one")]
        args = [*args, "--cache-dir", str(tmp_path / "cache-two")]
    else:
        args_one = args
    t0 = time.perf_counter()
    one = _run([sys.executable, "-m", "core", *args_one, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "core", *args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 processes" in two.stdout and two.stdout.count("written to") == 1  # rank 0 alone prints
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(tmp_path / "one") == files(tmp_path / "two")
    a, b = load_file(str(tmp_path / "one" / "latents.safetensors")), load_file(str(tmp_path / "two" / "latents.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for png in (tmp_path / "one").glob("*/*.png"):
        assert png.read_bytes() == (tmp_path / "two" / png.relative_to(tmp_path / "one")).read_bytes()
    ma, mb = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert ma["images"] == mb["images"] and ma["config"] == mb["config"]
    assert time.perf_counter() - t0 < 120
    if source != "store-pgfm":
        assert len(list((tmp_path / "cache-two" / "latents").glob("*.safetensors"))) == 1


def test_evaluate_splits_seeds_across_ranks_and_only_rank_0_reports(monkeypatch, tmp_path, capsys):
    """``evaluate`` under WORLD_SIZE > 1 calls evaluate_set_distributed; rank 0 alone prints and writes."""
    import core.pipeline.distributed as distributed
    from core.data.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
    from core.evaluation.students import EvalResult
    from core.pipeline.export import class_folder_name

    try:
        load_fashion_mnist("test")
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST not installed")
    for i, name in enumerate(FASHION_MNIST_CLASSES):
        (tmp_path / "set" / class_folder_name(i, name)).mkdir(parents=True)
        Image.fromarray(np.full((32, 32), 20 * i, np.uint8)).save(tmp_path / "set" / class_folder_name(i, name) / "a.png")
    calls = []

    def fake_evaluate(images, labels, test, config, ctx, weights=None, teacher=None, progress=None, should_stop=None):
        calls.append((ctx.rank, config.seeds, progress is not None))
        return EvalResult([0.5, 0.25], [1.0, 1.0], config, len(images))

    monkeypatch.setattr("core.evaluation.students.evaluate_set_distributed", fake_evaluate)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (1, 0):
        monkeypatch.setattr(distributed, "init_from_env", lambda rank=rank, **_: distributed.DistContext(rank, 2))
        report = tmp_path / f"rank{rank}.json"
        assert main(["evaluate", str(tmp_path / "set"), "--seeds", "2", "--json", str(report)]) == 0
        out = capsys.readouterr().out
        assert ("test accuracy 37.50" in out and "(2 processes)" in out and report.is_file()) == (rank == 0)
        assert (out == "") == (rank == 1)
    assert calls == [(1, (0, 1), False), (0, (0, 1), True)]


# ---------------------------------------------------------------------------------------------
# bad input: a clear error (exit 2, no traceback) before anything is written
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--flow-convention", "rectified"], "unknown convention 'rectified'; choose one of sit"),
    (["--flow-convention", "{time_scale: 1000"], "flow convention: not valid JSON"),
    (["--flow-convention", '{"time_scale": 1000, "speed": 2}'], "unknown convention fields ['speed']"),
    (["--flow-class-map", "0,1"], "class_map lists 2 classes, the data has 3"),
    (["--flow-class-map", "0,x,2"], "expected comma-separated model class ids"),
    (["--flow-class-map", "0,1,9"], "class_map ids [9] are not classes of the model"),
    (["--flow-num-heads", "0"], "flow_num_heads must be an integer >= 1"),
    (["--flow-num-heads", "3"], "hidden_size 32 is not a multiple of num_heads 3"),
    (["--sample-batch-size", "0"], "--sample-batch-size must be an integer >= 1"),
])
def test_bad_flow_options(scale, cli, tmp_path, extra, message):
    r = cli("distill", "--method", "pgfm", "--latent-store", scale.store, "--flow", scale.sit, "--vae", scale.vae,
            "--ipc", "2", "--steps", "2", "--out", tmp_path / "o", *(["--flow-num-heads", "2"]
                                                                   if "--flow-num-heads" not in extra else []), *extra)
    assert r.returncode == 2, r.stdout
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_bad_store_and_data_input(scale, cli, tmp_path):
    other_vae = _tiny_sd_vae(tmp_path / "other-vae", seed=1)
    base = ["distill", "--latent-store", scale.store, "--ipc", "2", "--out", tmp_path / "o"]
    cases = [
        ([*base, "--method", "d4m", "--vae", other_vae], "latent store was encoded with another VAE"),
        ([*base, "--method", "d4m", "--vae", scale.vae, "--latent-store", tmp_path / "nothing"], "no latent store here"),
        ([*base, "--method", "pgfm", "--vae", scale.vae, "--flow", tmp_path / "nope.pt"],
         "method 'pgfm' needs a flow model"),
        ([*base, "--method", "random", "--vae", scale.vae, "--data-dir", tmp_path / "elsewhere"],
         "the real images of this latent store are needed"),
        ([*base, "--method", "d4m", "--vae", scale.vae, "--stream", "--stream-init-size", "0"],
         "--stream-init-size must be an integer >= 1"),
        ([*base, "--method", "d4m", "--vae", scale.vae, "--classes", "n09999999"], "unknown classes ['n09999999']"),
        (["encode", "--store", tmp_path / "s", "--vae", scale.vae], "--store writes a sharded latent store of an ImageFolder"),
        (["encode", "--dataset", "imagefolder", "--store", tmp_path / "s", "--vae", scale.vae], "--store needs the ImageFolder's root"),
        (["encode", "--dataset", "imagefolder", "--data-dir", scale.data, "--store", tmp_path / "s", "--vae", scale.vae,
          "--classes", "imagewoof"], "unknown classes"),
        (["encode", "--dataset", "imagefolder", "--data-dir", scale.data, "--store", tmp_path / "s", "--vae", scale.vae,
          "--splits", "train", "val"], "--store encodes one split"),
        (["encode", "--dataset", "imagefolder", "--data-dir", scale.data, "--classes", "imagenette", "--vae", scale.vae],
         "--classes only apply with --store DIR"),
        # the store of this data with another VAE, into the same folder: refused, never mixed
        (["encode", "--dataset", "imagefolder", "--data-dir", scale.data, "--classes", ",".join(WNIDS), "--resolution",
          "256", "--vae", other_vae, "--store", scale.store, "--shard-size", "5"], "encoded with another VAE"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_new_options_have_help_and_keep_the_embedded_default():
    from core.cli.main import build_parser
    from core.config import DIFFUSION_DIR, FLOW_DIR, VAE_DIR

    commands = build_parser()._subparsers._group_actions[0].choices
    new = {"encode": ["--store", "--classes", "--shard-size", "--batch-size", "--skip-bad", "--max-per-class",
                      "--workers", "--overwrite", "--splits"],
           "distill": ["--flow", "--flow-convention", "--flow-num-heads", "--flow-class-map", "--latent-store",
                       "--store-max-gib", "--stream", "--stream-init-size", "--sample-batch-size", "--overwrite"]}
    for command, options in new.items():
        actions = {o: a for a in commands[command]._actions for o in a.option_strings}
        for option in options:
            assert actions[option].help and len(actions[option].help) > 10, (command, option)
    for command in ("bench", "bench-speed", "bench-engine", "eval-models"):
        assert "--flow-convention" in commands[command].format_help(), command
    args = commands["distill"].parse_args(["--out", "x"])
    assert (args.vae, args.flow, args.diffusion, args.dataset) == (str(VAE_DIR), str(FLOW_DIR), str(DIFFUSION_DIR),
                                                                   "fashion-mnist")
    assert args.latent_store is None and args.flow_convention is None and args.flow_class_map is None
