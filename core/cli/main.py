"""Command line: ``python -m core COMMAND ...``. Every command takes --seed and prints where outputs went."""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.config import (
    ASSETS,
    BENCH_METHODS,
    DEFAULT_PGFM_GUIDANCE,
    DIFFUSION_DIR,
    FLOW_DIR,
    METHODS,
    SCHEDULES,
    SOLVERS,
    TEACHER_DIR,
    VAE_DIR,
    DiffusionSamplerConfig,
)
from core.data.latent_cache import encode_dataset
from core.errors import DistillError, OutputError
from core.evaluation.students import EvalConfig, evaluate_set
from core.models.loading import ModelSpec
from core.pipeline.distill import distill
from core.pipeline.distributed import init_from_env


def _cmd_train_vae(args: argparse.Namespace) -> None:
    from core.models.vae import TinyVAEConfig
    from core.training.vae import is_vae_folder, train_tiny_vae

    out = Path(args.out)
    if out.exists() and not is_vae_folder(out):
        raise OutputError(f"--out {out} exists and is not a VAE folder that train-vae wrote (config.json, weights and "
                          "training.json, nothing else); train-vae replaces its output folder whole, so give a new "
                          "folder or one it wrote before")
    config = TinyVAEConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           threads=args.threads)
    train_tiny_vae(config, args.out, args.data_dir)


def _cmd_train_teacher(args: argparse.Namespace) -> None:
    from core.training.teacher import TeacherTrainConfig, train_teacher

    config = TeacherTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                threads=args.threads)
    train_teacher(config, args.out, args.data_dir)


def _encode(args: argparse.Namespace, split: str):
    from core.data.datasets import load_dataset
    from core.models.loading import load_vae

    dataset = load_dataset(args.dataset, split, args.data_dir, args.resolution, args.channels)
    vae = load_vae(ModelSpec(vae=args.vae, device=args.device))
    latents = encode_dataset(dataset, vae, args.cache_dir)
    return dataset, vae, latents


STORE_ONLY = {"classes": None, "shard_size": None, "skip_bad": False, "max_per_class": None, "workers": None,
              "overwrite": False}


def _cmd_encode(args: argparse.Namespace) -> None:
    if args.store:
        return _encode_store(args)
    given = [f"--{k.replace('_', '-')}" for k, v in STORE_ONLY.items() if getattr(args, k) != v]
    if given:
        raise ValueError(f"{', '.join(given)} only apply with --store DIR (a sharded latent store of an ImageFolder)")
    from core.data.datasets import load_dataset
    from core.models.loading import load_vae

    vae = load_vae(ModelSpec(vae=args.vae, device=args.device))
    for split in args.splits or ["train", "test"]:
        t0 = time.perf_counter()
        dataset = load_dataset(args.dataset, split, args.data_dir, args.resolution, args.channels)
        latents = encode_dataset(dataset, vae, args.cache_dir, batch_size=args.batch_size or 256)
        print(f"{dataset.name}: {len(latents)} latents of shape {latents.latent_shape} -> {latents.path} "
              f"({time.perf_counter() - t0:.1f} s)")


def _encode_store(args: argparse.Namespace) -> None:
    """``encode --store DIR``: a streamed ImageFolder into a sharded, resumable latent store."""
    from core.data.imagefolder import open_image_folder
    from core.data.latent_store import encode_to_store
    from core.models.loading import load_vae

    if args.dataset != "imagefolder":
        raise ValueError("--store writes a sharded latent store of an ImageFolder: add --dataset imagefolder "
                         "--data-dir ROOT (the embedded Fashion-MNIST goes to the latent cache, without --store)")
    if not args.data_dir:
        raise ValueError("--store needs the ImageFolder's root: --data-dir ROOT (one sub-folder of images per class, "
                         "or ROOT/train/<class>/...)")
    if args.channels != 3:
        raise ValueError("--store reads ImageFolders as RGB (3 channels); drop --channels")
    splits = args.splits or ["train"]
    if len(splits) != 1:
        raise ValueError(f"--store encodes one split into one store, got --splits {' '.join(splits)}; run once per split")
    t0 = time.perf_counter()
    dataset = open_image_folder(Path(args.data_dir).resolve(), args.classes, args.resolution, split=splits[0],
                                skip_bad=args.skip_bad, max_per_class=args.max_per_class, workers=args.workers)
    vae = load_vae(ModelSpec(vae=args.vae, device=args.device))
    print(f"{dataset!r}: encoding with {args.vae} into {args.store}", flush=True)
    store = encode_to_store(dataset, vae, args.store, shard_size=args.shard_size or 4096,
                            batch_size=args.batch_size or 64, overwrite=args.overwrite)
    skipped = store.index.get("skipped_files", [])
    print(f"{dataset.name}: {len(store)} latents of shape {store.latent_shape} in {len(store.shards)} shards, "
          f"{store.num_classes} classes -> {store.path} ({time.perf_counter() - t0:.1f} s)"
          + (f"; {len(skipped)} unreadable images skipped (listed in {store.path / 'index.json'})" if skipped else ""))


def _portable(path: str) -> str:
    """A path inside the repository as a relative path (for records that ship), anything else unchanged."""
    try:
        return str(Path(path).resolve().relative_to(ASSETS.parent))
    except ValueError:
        return str(path)


def _cmd_train_latent_model(args: argparse.Namespace) -> None:
    """train-flow and train-diffusion: the same networks, data and loop; only the objective differs.

    --model picks the network (mlp-s / mlp-m: the project's LatentMLP; sit-*: core/models/sit.py presets sized for
    the latents, train-flow only); --width / --hidden / --depth / --heads override the preset's sizes."""

    from core.device import resolve_device
    from core.io import read_json, write_json
    from core.training.loop import LatentModelTrainConfig, is_sit_model, mlp_preset

    if args.command == "train-flow":
        from core.training.generators import train_flow as train
    else:
        from core.training.generators import train_diffusion as train
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model.strip().lower()
    sit = is_sit_model(model)
    if sit and args.hidden is not None:
        raise ValueError("--hidden is the MLP's hidden width; a SiT's MLP is 4 × --width (its hidden size)")
    if not sit and getattr(args, "heads", None) is not None:
        raise ValueError("--heads applies to SiT models (--model sit-*)")
    device = str(resolve_device(args.device))
    if sit:
        overrides = {k: v for k, v in (("depth", args.depth), ("hidden_size", args.width),
                                        ("num_heads", getattr(args, "heads", None))) if v is not None}
        sizes = {}
    else:
        overrides = {}
        sizes = mlp_preset(model)
        sizes.update({k: getattr(args, k) for k in ("width", "hidden", "depth") if getattr(args, k) is not None})
    config = LatentModelTrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr if args.lr is not None else (1e-4 if sit else 1e-3),
        ema_decay=args.ema_decay if args.ema_decay is not None else (0.9999 if sit else 0.999), warmup=args.warmup,
        checkpoint_every=args.checkpoint_every, seed=args.seed, threads=args.threads,
        model=model if sit else "mlp", sit_overrides=overrides, precision=args.precision,
        grad_checkpointing=args.grad_checkpointing, device=device, **sizes)
    if args.latent_store:
        from core.data.latent_store import LatentStore

        store = LatentStore(args.latent_store)
        if args.vae != str(VAE_DIR):  # a VAE named explicitly must be the store's
            from core.models.loading import load_vae

            store.check(load_vae(ModelSpec(vae=args.vae, device=device)))
        latents = store.as_latent_set(max_bytes=int(args.store_max_gib * 2**30))
        provenance = {"vae": str(store.index.get("vae", "")), "vae_fingerprint": store.vae_fingerprint,
                      "dataset": str(store.index.get("dataset", "")), "dataset_fingerprint": store.dataset_fingerprint,
                      "latent_store": _portable(args.latent_store)}
    else:
        _, vae, latents = _encode(args, "train")
        provenance = {"vae": _portable(args.vae), "vae_fingerprint": vae.fingerprint, "dataset": args.dataset,
                      "dataset_fingerprint": latents.dataset_fingerprint}
    provenance["model_preset"] = model
    print(f"{args.command}: {model} on {len(latents)} latents of shape {latents.latent_shape}, {latents.num_classes} "
          f"classes; {device}, precision {config.precision}{', gradient checkpointing' if config.grad_checkpointing else ''}",
          flush=True)
    train(config, latents, args.out, resume=not args.no_resume, provenance=provenance)
    record = read_json(Path(args.out) / "training.json")
    record["command"] = (f"python -m core {args.command} --out {args.out} --model {model} --steps {args.steps} "
                         f"--seed {args.seed}")
    write_json(Path(args.out) / "training.json", record)
    print(f"{args.command}: model written to {args.out}")


def _cmd_eval_models(args: argparse.Namespace) -> None:
    """Print (and record) the figures of the shipped models that the foundation issue asks for."""
    import json

    from core.data.datasets import load_fashion_mnist
    from core.evaluation.quality import flow_quality, generator_quality
    from core.io import is_model_folder, write_json
    from core.models.loading import load_diffusion, load_flow_for, load_teacher, load_vae
    from core.models.vae import measure_vae
    from core.transport.ddim import sample_diffusion

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = _model_spec(args, diffusion=False)
    spec.teacher = args.teacher
    test = load_fashion_mnist("test", args.data_dir)
    vae, teacher = load_vae(spec), load_teacher(spec)
    report = {"vae": measure_vae(vae, test), "teacher": {"test_accuracy": round(teacher.accuracy(test), 4)}}
    print(f"VAE     test PSNR {report['vae']['test_psnr_db']:.2f} dB (target >= 24) | encode "
          f"{report['vae']['encode_images_per_s']:.0f} img/s (target >= 1000) | decode "
          f"{report['vae']['decode_images_per_s']:.0f} img/s | {torch.get_num_threads()} threads on {vae.device}")
    print(f"teacher test accuracy {report['teacher']['test_accuracy']:.2%} (target >= 92%)")
    flow = load_flow_for(spec, vae.latent_shape(32), test.num_classes)
    if args.cfg_sweep:
        report["flow_cfg_sweep"] = {str(w): flow_quality(flow, vae, teacher, test, per_class=100, steps=args.steps,
                                                         cfg_scale=w, seed=args.seed)["conditional_accuracy"]
                                    for w in args.cfg_sweep}
        print(f"flow    conditional accuracy by CFG scale ({args.steps} Euler steps, 100 per class): "
              f"{json.dumps(report['flow_cfg_sweep'])}")
    q = report["flow"] = flow_quality(flow, vae, teacher, test, per_class=args.per_class, steps=args.steps,
                                      cfg_scale=args.cfg_scale, seed=args.seed)
    print(f"flow    conditional accuracy {q['conditional_accuracy']:.2%} (target >= 90%; {args.steps} Euler steps, "
          f"CFG {args.cfg_scale}, {q['samples']} samples) | FID(teacher features) generated vs test "
          f"{q['fid_teacher_generated_vs_test']:.2f}, test half vs half {q['fid_teacher_test_half_vs_half']:.2f} "
          f"({q['feature_samples_per_set']} per set)")
    if is_model_folder(args.diffusion):
        diffusion = load_diffusion(args.diffusion, args.device, vae.latent_shape(32), test.num_classes)
        report["diffusion"] = {}
        for steps in args.diffusion_steps:
            config = DiffusionSamplerConfig(steps=steps, cfg_scale=args.cfg_scale, seed=args.seed)
            d = generator_quality(lambda y: sample_diffusion(diffusion, y, None, config).latents, vae, teacher, test,
                                  per_class=args.per_class, seed=args.seed)
            report["diffusion"][str(steps)] = d
            print(f"diffusion conditional accuracy {d['conditional_accuracy']:.2%} ({steps} DDIM steps, CFG "
                  f"{args.cfg_scale}) | FID(teacher features) generated vs test {d['fid_teacher_generated_vs_test']:.2f}")
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")


def _model_spec(args: argparse.Namespace, flow: bool = True, diffusion: bool = True,
                device: str | None = None) -> ModelSpec:
    """The ModelSpec of the model options (checks the flow options); generators not wanted are left out."""
    return ModelSpec(vae=args.vae, flow=args.flow if flow else None,
                     diffusion=getattr(args, "diffusion", None) if diffusion else None, device=device or args.device,
                     flow_convention=getattr(args, "flow_convention", None),
                     flow_num_heads=getattr(args, "flow_num_heads", None),
                     flow_class_map=getattr(args, "flow_class_map", None))


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _engine(args: argparse.Namespace, spec: ModelSpec | None = None, ctx=None):
    """The engine of the engine options: a latent store (--latent-store) or the dataset (encoded once and
    cached; split across ranks when ``ctx`` is distributed), the VAE and the generators of ``spec``."""
    from core.pipeline.distill import load_engine

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    spec = spec or _model_spec(args)
    store = getattr(args, "latent_store", None)
    if store:
        max_bytes = int(args.store_max_gib * 2**30)
        # distill (the command with --stream) streams a store above the limit, or any with --stream; others refuse it
        stream = (True if args.stream else None) if hasattr(args, "stream") else False
        return load_engine(spec, data_dir=args.data_dir, latent_store=store, max_store_bytes=max_bytes,
                           stream=stream, stream_init_size=getattr(args, "stream_init_size", None))
    if ctx is not None and ctx.is_distributed:
        from core.pipeline.distributed import load_engine_distributed

        return load_engine_distributed(ctx, spec, args.dataset, args.data_dir, args.cache_dir, args.resolution,
                                       args.channels)
    return load_engine(spec, args.dataset, args.data_dir, args.cache_dir, args.resolution, args.channels)


def distill_config_from_args(args: argparse.Namespace, method: str = "", ipc: int = 0):
    """The DistillConfig that the distill options describe (``core.config.distill_config``, as the app's
    sidebar); ``method`` and ``ipc`` replace the options of the same name (the benchmark sets them per cell)."""
    from core.config import distill_config

    options = dict(vars(args))
    options.update({k: v for k, v in (("method", method), ("ipc", ipc)) if v})
    return distill_config(options)


def _cmd_distill(args: argparse.Namespace) -> None:
    if _world_size() > 1:  # launched by torchrun / accelerate: every rank runs run_distill with its context
        from core.cli.main import main_distill

        return main_distill(args)
    run_distill(args)


def _distill_spec(args: argparse.Namespace, method: str, device: str | None = None) -> ModelSpec:
    """The models a distillation needs: the VAE, and the flow or the diffusion model only when ``method``
    uses it (so that a foreign VAE needs neither the embedded generators nor a teacher)."""
    from core.config import DIFFUSION_METHODS, FLOW_METHODS
    from core.pipeline.distill import _generator_present

    spec = _model_spec(args, flow=method in FLOW_METHODS, diffusion=method in DIFFUSION_METHODS, device=device)
    for needed, option, ref, what in ((FLOW_METHODS, "--flow", spec.flow, "a flow model: this project's flow folder, "
                                       "a diffusers DiT folder or a SiT/DiT .pt / .safetensors"),
                                      (DIFFUSION_METHODS, "--diffusion", spec.diffusion, "a diffusion model folder")):
        if method in needed and not _generator_present(ref):
            raise ValueError(f"method {method!r} needs {what}; {option} {ref} is not there")
    return spec


def _store_classes(classes, engine):
    """--classes with a latent store may also name class folders (WordNet ids): they become class ids."""
    from core.pipeline.distill import StoreImages

    if classes is None or not isinstance(engine.dataset, StoreImages) or not isinstance(classes, str):
        return classes
    folders = list(engine.dataset.store.class_ids)
    items = [c.strip() for c in classes.split(",")]
    return ",".join(str(folders.index(c)) if c in folders else c for c in items)


def _models_record(args: argparse.Namespace, engine) -> dict:
    """The ``models`` entry of a distill manifest: what was used, with fingerprints and the flow's provenance."""
    from core.models.loading import flow_record
    from core.quantize.streaming import StreamingLatents

    store = getattr(args, "latent_store", None)
    models = {"vae": _portable(args.vae), "vae_fingerprint": engine.vae.fingerprint,
              "flow": _portable(args.flow) if engine.flow is not None else None,
              "flow_model": flow_record(engine.flow, args.flow),
              "diffusion": _portable(args.diffusion) if engine.diffusion is not None else None,
              "dataset": engine.dataset.name if store else args.dataset,
              "dataset_fingerprint": engine.dataset.fingerprint}
    if models["flow_model"] is not None:
        models["flow_model"]["source"] = _portable(models["flow_model"]["source"])
    if store:
        models["latent_store"] = _portable(store)
    if isinstance(engine.latents, StreamingLatents):
        models["latent_store_streaming"] = engine.latents.record()
    return models


def run_distill(args: argparse.Namespace, ctx=None) -> None:
    """``distill`` in this process, or as one rank of ``ctx`` (core.cli.main.main_distill): every rank
    loads the engine and distils its share of each stage; the main rank checks the output folder, exports
    and prints."""

    from core.pipeline.distill import StoreImages, resolve_classes
    from core.pipeline.export import check_export_target, export_imagefolder, export_zip

    main = ctx is None or ctx.is_main
    config = distill_config_from_args(args)  # checks every knob before loading anything
    init_size = getattr(args, "stream_init_size", None)
    if init_size is not None and init_size < 1:
        raise ValueError(f"--stream-init-size must be an integer >= 1, got {init_size}")
    device = args.device
    if ctx is not None:
        from core.pipeline.distributed import broadcast_object, rank_device

        device = rank_device(ctx, args.device)
    spec = _distill_spec(args, config.method, device)
    problem = None
    if main:  # the output is checked before any model is loaded (it is checked again when written)
        try:
            out = check_export_target(args.out, args.overwrite)
        except DistillError as exc:
            problem = str(exc)
    if ctx is not None and ctx.is_distributed:
        problem = broadcast_object(ctx, problem)
    if problem:
        raise OutputError(problem)
    as_zip = main and out.suffix.lower() == ".zip"
    engine = _engine(args, spec, ctx)
    if config.method == "random" and isinstance(engine.dataset, StoreImages):
        engine.dataset.folder()  # the real images must be there before any work
    config = replace(config, classes=resolve_classes(_store_classes(config.classes, engine), engine.latents.class_names))
    if ctx is not None:
        from core.pipeline.distributed import distill_distributed

        dset = distill_distributed(engine, config, ctx)
    else:
        dset = distill(engine, config)
    if main:
        extra = {"models": _models_record(args, engine)}
        if as_zip:  # the same archive the app's Export page offers
            export_zip(dset, out, extra=extra, overwrite=args.overwrite)
        else:
            export_imagefolder(dset, out, overwrite=args.overwrite, extra=extra)
        landing = dset.landing_error[np.isfinite(dset.landing_error)] if len(dset) else []
        where = f" on {ctx.world_size} processes" if ctx is not None and ctx.is_distributed else ""
        print(f"{config.method}: {len(dset)} images ({config.ipc} per class, {len(set(dset.labels.tolist()))} classes), "
              f"NFE {dset.nfe}/image, {dset.timings['total_s']:.2f} s{where}"
              + (f", landing error mean {np.mean(landing):.4f}" if len(landing) else ""))
        print(f"written to {out} (ImageFolder PNGs, manifest.json, latents.safetensors{', zipped' if as_zip else ''})")
    if ctx is not None:
        ctx.barrier()


def _cmd_bench_speed(args: argparse.Namespace) -> None:
    """The engine's speed figures (quantize / guided sample / decode on the dataset, as in benchmarks/speed.json)
    and the throughput of encode, sample and decode in images/s on the device (synthetic inputs, any VAE / flow)."""
    import warnings

    from core.device import compile_unavailable_reason, maybe_compile, resolve_device
    from core.evaluation.reports import speed_report, throughput_report
    from core.io import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.repeats < 1 or args.steps < 1:
        raise ValueError("--batch-size, --repeats and --steps must be >= 1")
    device = resolve_device(args.device)
    args.device = str(device)
    report: dict = {}
    if args.throughput_only:
        from core.models.loading import load_flow_for, load_vae
        from core.pipeline.distill import _generator_present

        spec = _model_spec(args, diffusion=False)
        vae = load_vae(spec)
        resolution = args.resolution
        flow = None
        if _generator_present(spec.flow):
            classes = len(spec.flow_class_map) if spec.flow_class_map else None
            flow = load_flow_for(spec, vae.latent_shape(resolution), classes)
        engine = None
    else:
        engine = _engine(args)
        vae, flow, resolution = engine.vae, engine.flow, int(engine.dataset.image_shape[-1])
    compiled = False
    if args.compile:
        reason = compile_unavailable_reason(device)
        if reason is not None:
            warnings.warn(f"--compile ignored: {reason}; running uncompiled", RuntimeWarning, stacklevel=1)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                modules = [m for m in (flow, vae.vae.encoder, vae.vae.decoder) if m is not None]
                compiled = all([maybe_compile(m, device) for m in modules])
            print(f"torch.compile: {len(modules)} modules compiled in place; the warm-up run of each figure "
                  f"includes code generation", flush=True)
    if engine is not None:
        r = speed_report(engine, repeats=args.repeats, seed=args.seed)
        report.update(r)
        print(f"quantize 10 classes x IPC 50 (k-means, cell masses):  {r['quantize_10_classes_ipc50_s']:.3f} s "
              f"(target <= 2 s); with exact W2 weighted + uniform: {r['quantize_10_classes_ipc50_with_w2_s']:.3f} s")
        print(f"sample 10 classes x IPC 10, 8 Euler steps + CFG, guided, with trajectories: "
              f"{r['sample_100_guided_8_euler_cfg_trajectories_s']:.3f} s (target <= 0.5 s)")
        print(f"decode those 100 latents: {r['decode_100_s']:.4f} s (target <= 0.2 s)")
        print(f"(median of {r['repeats']} runs after a warm-up; {r['threads']} torch threads)")
    t = throughput_report(vae, flow, resolution, args.batch_size, args.steps, args.cfg_scale, args.dtype,
                          args.repeats, args.seed, compiled)
    report.update(device=str(device), throughput=t)
    where = (f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
             + f", {t['threads']} torch threads")
    print(f"throughput on {where}: batch {t['batch_size']}, {args.dtype}"
          f"{' autocast' if args.dtype != 'float32' else ''}{', compiled' if compiled else ''}, {resolution} px -> "
          f"latents {tuple(t['latent_shape'])}; median of {args.repeats} after a warm-up")
    print(f"  encode {t['encode_images_per_s']:10.1f} images/s")
    if "sample_images_per_s" in t:
        cfg = f" + CFG {args.cfg_scale:g} (both passes in one forward of 2·B rows)" if args.cfg_scale != 1 else ""
        print(f"  sample {t['sample_images_per_s']:10.1f} images/s at {args.steps} Euler steps{cfg}, NFE {t['sample_nfe']}; "
              f"{t['sample_image_nfe_per_s']:.1f} images·NFE/s")
    else:
        print("  sample (no flow model: --flow is not there)")
    print(f"  decode {t['decode_images_per_s']:10.1f} images/s")
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")


def _cmd_bench_engine(args: argparse.Namespace) -> None:
    from core.evaluation.reports import landing_report, solver_order_report, w2_report
    from core.io import write_json

    engine = _engine(args)
    report = {"w2": w2_report(engine, args.ipc, args.seed)}
    for ipc, rows in report["w2"].items():
        print(f"IPC {ipc}: W2 weighted (DDOQ) vs uniform (D4M), latent units")
        for r in rows:
            print(f"  {r['class']:<12} {r['w2_weighted']:.4f} vs {r['w2_uniform']:.4f}  ({r['reduction_pct']:+.2f}% lower)")
        lower = sum(r["w2_weighted"] < r["w2_uniform"] for r in rows)
        mean = np.mean([r["reduction_pct"] for r in rows])
        print(f"  weighted < uniform on {lower}/{len(rows)} classes; mean reduction {mean:.2f}%")
    report["landing"] = landing_report(engine, args.lambdas, seed=args.seed)
    print("PGFM landing error (latent RMS units; 10 classes x IPC 10, 8 Euler steps, CFG 2, constant λ):")
    for key, r in report["landing"].items():
        print(f"  {key:<26} mean {r['mean']:.5f}  max {r['max']:.5f}")
    report["solver_orders"] = solver_order_report(engine.flow, seed=args.seed)
    print("solver error vs torchdiffeq dopri5 (shipped flow model, unguided, float64):")
    for solver, r in report["solver_orders"].items():
        print(f"  {solver:<8} nominal {r['nominal_order']}  steps {r['steps']}  error {r['rms_error']}  "
              f"observed order {r['observed_order']}")
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    """Train students on a distilled folder; under torchrun (WORLD_SIZE > 1) the seeds are split across the
    processes (core.evaluation.students.evaluate_set_distributed) and rank 0 alone shows progress and writes."""
    ctx = None
    if _world_size() > 1:
        from core.pipeline.distributed import init_from_env

        ctx = init_from_env()
    try:
        _evaluate(args, ctx)
    finally:
        if ctx is not None:
            ctx.shutdown()


def _evaluate(args: argparse.Namespace, ctx=None) -> None:
    import sys as _sys

    from tqdm import tqdm

    from core.data.datasets import load_fashion_mnist
    from core.evaluation.students import read_distilled_folder
    from core.io import write_json

    main = ctx is None or ctx.is_main
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EvalConfig(architecture=args.architecture, labels=args.labels, temperature=args.temperature,
                        epochs=args.epochs, use_weights=not args.no_weights, augment=args.augment,
                        seeds=tuple(range(args.seed, args.seed + args.seeds)), precision=args.precision)
    test = load_fashion_mnist("test", args.data_dir)
    images, labels, weights, classes = read_distilled_folder(args.folder, test.class_names, test.image_shape)
    if len(classes) < test.num_classes:  # an export of some classes is tested on those classes' test images
        test = test.subset(np.flatnonzero(np.isin(test.labels, classes)))
        if main:
            print(f"{args.folder}: classes {', '.join(test.class_names[c] for c in classes)} (as its manifest "
                  f"records): tested on their {len(test)} test images")
    teacher = None
    if config.labels == "soft":
        from core.models.loading import load_teacher

        teacher = load_teacher(ModelSpec(teacher=args.teacher))
    bar = tqdm(total=1000, desc=f"evaluate {Path(args.folder).name}", file=_sys.stderr, mininterval=1) if main else None

    def progress(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message)

    if ctx is not None:
        from core.evaluation.students import evaluate_set_distributed

        result = evaluate_set_distributed(images, labels, test, config, ctx, weights, teacher,
                                          progress if main else None)
    else:
        result = evaluate_set(images, labels, test, config, weights, teacher, progress)
    if bar is not None:
        bar.close()
    if not main:
        return
    where = f" ({ctx.world_size} processes)" if ctx is not None and ctx.is_distributed else ""
    print(f"{args.folder}: {len(images)} images, {config.architecture}, {config.labels} labels, "
          f"{'weighted' if weights is not None and config.use_weights else 'unweighted'}: test accuracy "
          f"{100 * result.mean:.2f} ± {100 * result.std:.2f} % over {len(config.seeds)} seeds "
          f"({', '.join(f'{100 * a:.2f}' for a in result.accuracies)}); {sum(result.seconds):.1f} s{where}")
    if args.json:
        write_json(args.json, {"folder": str(args.folder), **result.to_dict()})
        print(f"result written to {args.json}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from core.data.datasets import load_fashion_mnist
    from core.evaluation.benchmark import Bench, BenchConfig, results_summary, run_benchmark
    from core.io import read_json
    from core.models.loading import load_teacher

    if args.report_only:
        results_file = Path(args.out) / "results.json"
        if not results_file.is_file():
            raise SystemExit(f"no {results_file} to report on; run `python -m core bench --out {args.out}` first")
        from core.evaluation.benchmark import write_report

        results = read_json(results_file)
        print(results_summary(results))
        print(f"table written to {write_report(results, Path(args.out))}")
        return
    config = BenchConfig(ipcs=tuple(args.ipc), seeds=args.seeds, methods=tuple(args.methods), labels=tuple(args.labels),
                         epochs=args.epochs, sweep=not args.no_sweep, efficiency=not args.no_efficiency,
                         seed=args.seed, distill=distill_config_from_args(args, "pgfm", 10))
    engine = _engine(args)
    teacher = load_teacher(ModelSpec(teacher=args.teacher))
    test = load_fashion_mnist("test", args.data_dir)
    metrics = ASSETS / "metrics.json"
    teacher_accuracy = read_json(metrics)["teacher"]["test_accuracy"] if metrics.is_file() else None
    t0 = time.perf_counter()
    results = run_benchmark(Bench(engine, teacher, test, Path(args.out), config), teacher_accuracy)
    print(results_summary(results))
    print(f"benchmark finished in {(time.perf_counter() - t0) / 60:.1f} min; results in {Path(args.out) / 'results.json'}, "
          f"table in {Path(args.out) / 'RESULTS.md'}")


def _set_option(p: argparse.ArgumentParser, dest: str, **changes) -> None:
    """Change an option's default / help after a shared helper added it (e.g. --device auto for GPU commands)."""
    for action in p._actions:
        if action.dest == dest:
            for key, value in changes.items():
                setattr(action, key, value)
            if "default" in changes:
                p.set_defaults(**{dest: changes["default"]})
            return
    raise KeyError(dest)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line ``error: ...`` (exit 2) for bad options, like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="Distill Studio engine (headless).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func, data: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--threads", type=_non_negative_int, default=0, help="torch CPU threads (0: default)")
        p.add_argument("--data-dir", default=None, help="dataset folder (Fashion-MNIST IDX files: default "
                       "$FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist; imagefolder: its root)")
        p.set_defaults(func=func)
        return p

    def add_models(p: argparse.ArgumentParser, flow: bool = False, teacher: bool = False) -> None:
        p.add_argument("--vae", default=str(VAE_DIR), help="VAE folder or diffusers hub id (default: embedded)")
        if flow:
            p.add_argument("--flow", default=str(FLOW_DIR),
                           help="flow (velocity) model: this project's flow folder, a diffusers DiTTransformer2DModel "
                                "folder (needs --flow-convention or a velocity_convention.json), or a raw SiT/DiT "
                                "state dict .pt/.pth/.safetensors such as SiT-XL-2-256x256.pt (default: embedded)")
            p.add_argument("--flow-convention", default=None, metavar="PRESET|JSON",
                           help="time/sign convention of a foreign flow: 'sit' (t=0 noise, t=1 data, predicts data - "
                                "noise; the default for .pt/.safetensors files), 'diffusers-flow' (timestep 1000·σ, "
                                "σ = 1 - t, predicts noise - data), or a JSON object with time_scale / time_reversed / "
                                "velocity_sign (and optionally preset); leave unset for this project's flow folders")
            p.add_argument("--flow-num-heads", type=int, default=None, metavar="N",
                           help="attention heads of a SiT .pt whose width is no preset's (SiT-S/B/L/XL are inferred)")
            p.add_argument("--flow-class-map", default=None, metavar="IDS",
                           help="comma-separated class ids of the flow model, one per data class in the data's class "
                                "order (e.g. the 10 ImageNet ids of ImageNette for an ImageNet SiT); default: the "
                                "flow's classes are the data's")
        if teacher:
            p.add_argument("--teacher", default=str(TEACHER_DIR), help="teacher folder (default: embedded)")
        p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")

    def add_dataset(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "imagefolder"])
        p.add_argument("--resolution", type=int, default=32,
                       help="imagefolder: image size (default 32; 256 for Stable-Diffusion-sized latents)")
        p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="imagefolder: 1 or 3")
        p.add_argument("--cache-dir", default=None, help="latent cache root (default $DISTILL_CACHE or .cache/)")

    p = add("train-vae", "Train the embedded tiny VAE (1x32x32 -> 4x8x8) on Fashion-MNIST.", _cmd_train_vae)
    p.add_argument("--out", default=str(VAE_DIR), help="output folder (default assets/vae)")
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)

    p = add("train-teacher", "Train the ConvNet-3 teacher (metric features, soft labels) on Fashion-MNIST.",
            _cmd_train_teacher)
    p.add_argument("--out", default=str(TEACHER_DIR), help="output folder (default assets/teacher)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)

    p = add("encode", "Encode a dataset with the VAE into the latent cache (reused when present), or with --store "
            "a large ImageFolder (e.g. ImageNet subsets at 256 px) into a sharded, resumable latent store.", _cmd_encode)
    add_models(p)
    add_dataset(p)
    p.add_argument("--splits", nargs="+", default=None,
                   help="splits to encode (default: train test; with --store: train). A split is the sub-folder "
                        "ROOT/<split> of an ImageFolder when it exists, else ROOT itself")
    p.add_argument("--batch-size", type=int, default=None, help="images per VAE call (default 256; --store: 64)")
    g = p.add_argument_group("latent store (--dataset imagefolder only)")
    g.add_argument("--store", default=None, metavar="DIR",
                   help="write a sharded latent store to DIR instead of the cache: streamed, one shard at a time, "
                        "resumable (re-run the same command after an interruption); `distill --latent-store DIR` "
                        "distils from it")
    g.add_argument("--classes", default=None,
                   help="classes of the ImageFolder to encode: comma-separated WordNet ids (n01440764), folder or "
                        "class names (tench), or a class list: 'imagenette', 'imagewoof' (shipped) or a text file "
                        "with one '<wnid> [name]' a line (default: every class folder)")
    g.add_argument("--shard-size", type=int, default=None, help="images per shard file (default 4096)")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images with a warning (recorded in the store's index.json) instead of stopping")
    g.add_argument("--max-per-class", type=int, default=None, metavar="K",
                   help="keep the first K files (by name) of each class (default: all)")
    g.add_argument("--workers", type=int, default=None, help="threads decoding images (default: min(8, CPUs))")
    g.add_argument("--overwrite", action="store_true",
                   help="delete a store already in DIR (shards and index) and encode anew; without it a store of "
                        "the same dataset and VAE is resumed, another one is refused")

    from core.training.loop import MLP_PRESETS, MODEL_PRESETS

    for name, what, default_out in (("train-flow", "a class-conditional flow-matching model", FLOW_DIR),
                                    ("train-diffusion", "the ε-prediction diffusion counterpart", DIFFUSION_DIR)):
        flow_cmd = name == "train-flow"
        p = add(name, f"Train {what} on the VAE latents (resumable; EMA weights).", _cmd_train_latent_model)
        add_models(p)
        _set_option(p, "device", default="auto",
                    help="auto (cuda, then mps, then cpu), cpu, cuda or cuda:N (default auto); also encodes there")
        add_dataset(p)
        p.add_argument("--out", default=str(default_out), help=f"output folder (default {default_out.relative_to(ASSETS.parent)})")
        p.add_argument("--steps", type=int, default=8000)
        p.add_argument("--batch-size", type=int, default=256)
        g = p.add_argument_group("model")
        g.add_argument("--model", default="mlp-m", choices=list(MODEL_PRESETS if flow_cmd else MLP_PRESETS),
                       type=str.lower,
                       help="network: mlp-s (width 256, hidden 512, depth 4) or mlp-m (512, 1024, 4: the shipped "
                            "flow), the project's adaLN MLP on the flattened latent" + (
                                "; or a SiT transformer preset (patch 2) sized for the latents: sit-s/2 (hidden 384, "
                                "depth 12, 6 heads), sit-b/2 (768, 12, 12), sit-l/2 (1024, 24, 16), sit-xl/2 (1152, "
                                "28, 16), with the data's classes + a null class for CFG and no learned sigma"
                                if flow_cmd else "") + " (default mlp-m)")
        g.add_argument("--width", type=int, default=None,
                       help="MLP width" + (" / SiT hidden size" if flow_cmd else "") + " (default: the preset's)")
        g.add_argument("--hidden", type=int, default=None, help="MLP hidden width (default: the preset's)")
        g.add_argument("--depth", type=int, default=None,
                       help="MLP blocks" + (" / SiT transformer blocks" if flow_cmd else "") + " (default: the preset's)")
        if flow_cmd:
            g.add_argument("--heads", type=int, default=None, help="SiT attention heads (default: the preset's)")
        g = p.add_argument_group("optimisation")
        g.add_argument("--lr", type=float, default=None, help="AdamW peak learning rate (default 1e-3 MLP, 1e-4 SiT)")
        g.add_argument("--warmup", type=int, default=200, help="linear warm-up steps before the cosine decay")
        g.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the saved weights (default 0.999 "
                       "MLP, 0.9999 SiT; the EMA copies the weights until the warm-up ends)")
        g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                       help="mixed precision (autocast; weights, optimiser and EMA stay float32): auto = bf16 on a "
                            "CUDA GPU that has it, else fp16 on CUDA, fp32 on CPU; bf16 on a CPU only where it has "
                            "native bf16; fp16 adds loss scaling (GradScaler)")
        g.add_argument("--grad-checkpointing", action="store_true",
                       help="recompute block activations in the backward pass (less memory, ~1 extra forward)")
        g.add_argument("--checkpoint-every", type=int, default=500, help="steps between OUT/checkpoint.pt writes")
        g.add_argument("--no-resume", action="store_true", help="ignore OUT/checkpoint.pt and start afresh")
        g = p.add_argument_group("data")
        g.add_argument("--latent-store", default=None, metavar="DIR",
                       help="train on a latent store written by `encode --store DIR` instead of encoding --dataset "
                            "(its VAE is recorded in it; a --vae given explicitly is checked against it)")
        g.add_argument("--store-max-gib", type=float, default=4.0,
                       help="--latent-store: largest store (float32 GiB) to hold in memory (default 4)")

    def add_engine(p: argparse.ArgumentParser) -> None:
        add_models(p, flow=True)
        p.add_argument("--diffusion", default=str(DIFFUSION_DIR), help="diffusion model folder (default: embedded)")
        add_dataset(p)

    def add_distill_options(p: argparse.ArgumentParser, single: bool = True) -> None:
        add_engine(p)
        if single:
            p.add_argument("--method", default="pgfm", choices=list(METHODS))
            p.add_argument("--ipc", type=int, default=10, help="images per class")
            p.add_argument("--classes", default="all",
                           help="'all' or a comma-separated list of class ids or names of the data's classes (with "
                                "--latent-store also its class folders, e.g. WordNet ids; the store's own classes are "
                                "chosen when encoding it: encode --classes)")
        g = p.add_argument_group("flow sampler (ddoq, fm, pgfm)")
        g.add_argument("--solver", default="euler", choices=list(SOLVERS))
        g.add_argument("--steps", type=int, default=8)
        g.add_argument("--time-shift", type=float, default=1.0)
        g.add_argument("--cfg-scale", type=float, default=2.0)
        g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        g.add_argument("--guidance", type=float, default=DEFAULT_PGFM_GUIDANCE.strength, help="PGFM λ (>= 0)")
        g.add_argument("--schedule", default=DEFAULT_PGFM_GUIDANCE.schedule, choices=list(SCHEDULES))
        g.add_argument("--t-start", type=float, default=DEFAULT_PGFM_GUIDANCE.t_start)
        g.add_argument("--t-stop", type=float, default=DEFAULT_PGFM_GUIDANCE.t_stop)
        g.add_argument("--trust-radius", type=float, default=None, help="r in latent RMS units (default: none)")
        g.add_argument("--t0", type=float, default=0.0, help="PGFM warm start in [0, 1)")
        g.add_argument("--ddoq-t0", type=float, default=0.5, help="ddoq: warm start of the decode-through-flow ODE")
        g.add_argument("--medoid", action="store_true", help="use the real latent nearest each centroid")
        g.add_argument("--pgfm-weights", action="store_true", help="pgfm: keep DDOQ cell masses as image weights")
        g.add_argument("--sample-batch-size", type=int, default=None, metavar="B",
                       help="rows per sampler batch, flow and diffusion (default 1024; lower it for large models on "
                            "small GPUs); under torchrun also the unit split across processes")
        g = p.add_argument_group("diffusion counterpart (diffusion-d4m, diffusion-mg)")
        g.add_argument("--diffusion-steps", type=int, default=25)
        g.add_argument("--strength", type=float, default=0.7, help="diffusion-d4m: fraction of the schedule run")
        g.add_argument("--mg-guidance", type=float, default=0.5, help="diffusion-mg: pull of x̂_0 toward the prototype")
        g.add_argument("--mg-stop", type=float, default=0.6, help="diffusion-mg: fraction of steps guided")

    p = add("distill", "Distil a dataset: quantize, sample, decode, export an ImageFolder + manifest + latents.",
            _cmd_distill)
    add_distill_options(p)
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite), "
                   "or a path ending in .zip for the same export as one zip file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is a previous export of this tool (its manifest.json says so); "
                        "anything else is refused. The old export is swapped out atomically and removed last")
    p.add_argument("--latent-store", default=None, metavar="DIR",
                   help="distil from a latent store written by `encode --store DIR` instead of --dataset (checked "
                        "against --vae; held in memory up to --store-max-gib, streamed class by class above it). "
                        "Method random reads its real images from --data-dir, by default the folder the store was "
                        "encoded from")
    p.add_argument("--store-max-gib", type=float, default=4.0,
                   help="--latent-store: largest store (float32 GiB) to hold in memory (default 4); a larger one is "
                        "streamed: quantized class by class with at most this much of its latents in memory")
    p.add_argument("--stream", action="store_true",
                   help="--latent-store: stream the store even when it fits in memory: a class up to --store-max-gib "
                        "/ quantize workers is loaded alone (the in-memory result), a larger one streamed in chunks "
                        "(mini-batch k-means refined by Lloyd passes)")
    p.add_argument("--stream-init-size", type=int, default=None, metavar="ROWS",
                   help="streamed classes: rows of the seeded sample that initialises their k-means (default "
                        "max(20 x IPC, 4096)); a streamed class of at most ROWS latents gets the in-memory result")

    p = add("bench", "Benchmark every method: distil, score (coverage, PRDC, W2, NFE, time), train students "
            "(hard and soft labels), sweep PGFM, compare NFE with diffusion; resumable.", _cmd_bench)
    add_distill_options(p, single=False)
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50], help="IPC values (default 1 10 50)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--methods", nargs="+", default=list(BENCH_METHODS), choices=list(BENCH_METHODS))
    p.add_argument("--labels", nargs="+", default=["hard", "soft"], choices=["hard", "soft"])
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--no-efficiency", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite RESULTS.md and the plots from the results.json in --out (e.g. of a partial run)")
    p.add_argument("--teacher", default=str(TEACHER_DIR))
    p.add_argument("--out", default="benchmarks", help="output folder (default benchmarks/)")

    p = add("bench-speed", "Print the engine's speed figures (quantize, guided sampling, decode) and the "
            "throughput of encode, sample and decode in images/s on the device, for any VAE / flow.", _cmd_bench_speed)
    add_engine(p)
    _set_option(p, "device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    g = p.add_argument_group("throughput (synthetic images / latents / labels; any --vae, --flow, --resolution)")
    g.add_argument("--batch-size", type=int, default=64, help="images per encode / sample / decode call (default 64)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="autocast precision of the flow and the VAE (default float32)")
    g.add_argument("--steps", type=int, default=8, help="Euler steps of the sampling figure (default 8, as distill)")
    g.add_argument("--cfg-scale", type=float, default=2.0, help="CFG scale of the sampling figure (default 2)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the flow and the VAE's encoder / decoder (in place); ignored with a warning "
                        "where compile is unavailable")
    g.add_argument("--throughput-only", action="store_true",
                   help="skip the engine figures, which need the dataset: only --vae (at --resolution) and --flow "
                        "are loaded, e.g. an SD-VAE at 256 px and SiT-XL-2-256x256.pt")

    p = add("bench-engine", "Print per-class W2 (weighted vs uniform), PGFM landing errors and solver orders.",
            _cmd_bench_engine)
    add_engine(p)
    p.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--json", default=None)

    p = add("evaluate", "Train students only on a distilled ImageFolder and test them on the real test split.",
            _cmd_evaluate)
    p.add_argument("folder", help="an exported set (manifest weights are used) or any ImageFolder of the classes")
    p.add_argument("--labels", default="hard", choices=["hard", "soft"])
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (seed, seed+1, ...)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--architecture", default="convnet", choices=["convnet", "resnet"])
    p.add_argument("--augment", default="none", choices=["none", "dsa"])
    p.add_argument("--temperature", type=float, default=4.0, help="soft labels: teacher temperature")
    p.add_argument("--no-weights", action="store_true", help="ignore the manifest's per-image weights")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="student training precision (auto: bf16 mixed precision where supported)")
    p.add_argument("--teacher", default=str(TEACHER_DIR))
    p.add_argument("--json", default=None, help="also write the result to this JSON file")

    p = add("eval-models", "Measure the shipped models: VAE PSNR and speed, teacher accuracy, flow sample "
            "quality (teacher accuracy of samples, FID-style distance).", _cmd_eval_models)
    add_models(p, flow=True, teacher=True)
    p.add_argument("--per-class", type=int, default=500, help="flow samples per class (default 500)")
    p.add_argument("--steps", type=int, default=10, help="Euler steps (default 10)")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--diffusion", default=str(DIFFUSION_DIR), help="diffusion counterpart folder (skipped if absent)")
    p.add_argument("--diffusion-steps", type=int, nargs="*", default=[10, 25], help="DDIM steps to evaluate")
    p.add_argument("--cfg-sweep", type=float, nargs="*", default=[1.0, 1.5, 2.0, 3.0, 4.0],
                   help="CFG scales for a quick conditional-accuracy sweep (100 samples per class)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """Every command's --out folder and --json file can be written, checked before any work (distill checks
    its export target itself: core.pipeline.export.check_export_target)."""
    from core.io import check_writable_target

    if args.command == "distill":
        return
    for option in ("out", "json"):
        value = getattr(args, option, None)
        if value:
            target = check_writable_target(value, f"--{option}", replaces=False)
            if option == "json" and target.is_dir():
                raise OutputError(f"--json {target} is a folder; give a file path, e.g. {target / 'result.json'}")
            if option == "out" and target.exists() and not target.is_dir():
                raise OutputError(f"--out {target} is a file, not a folder")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_outputs(args)
        args.func(args)
    except (DistillError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused something while working (disk full, permissions, ...)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main_distill(args) -> None:
    """``python -m core distill`` under torchrun / accelerate: every rank loads the engine (encoding split,
    cache written by rank 0; or the latent store, read by every rank) and distils its share; rank 0 checks
    the output folder, exports and prints (``core.cli.main.run_distill`` with this process's context)."""
    from core.cli.main import run_distill

    ctx = init_from_env()
    try:
        run_distill(args, ctx)
    finally:
        ctx.shutdown()
