"""`distill`: quantize, sample, decode and export a distilled set, in one process or as every rank of a
torchrun job."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.models.spec import ModelSpec

from core.cli.options import (
    add_batch_options,
    add_distill_options,
    add_registry,
    bounded,
    distill_config_from_args,
    engine_from_args,
    model_spec,
    open_registry,
    portable,
    set_option,
    world_size,
)
from core.config import DEFAULT_TF32, TEACHER_DIR, TRAIN_MINUS_VAL, check_int
from core.errors import DistillError, OutputError


def add_parsers(add) -> None:
    p = add("distill", "Distil a dataset: quantize, sample, decode, export an ImageFolder + manifest + latents.",
            _cmd_distill)
    add_distill_options(p)
    set_option(p, "dtype", default="auto",
               help="model precision of sampling and decoding (default auto: bfloat16 on a CUDA GPU with native "
                    "bf16, float32 elsewhere; float16 is refused for a Stable Diffusion VAE, which overflows it)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=DEFAULT_TF32,
                   help="TF32 float32 matmuls and convolutions on CUDA (Ampere and later; default on; no effect "
                        "elsewhere); recorded in the manifest")
    add_batch_options(p)
    add_registry(p)
    p.add_argument("--teacher", default=str(TEACHER_DIR),
                   help="teacher folder: the embedding of --refine-embedding teacher (default: embedded)")
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite), "
                   "or a path ending in .zip for the same export as one zip file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is a previous export of this tool (its manifest.json says so); "
                        "anything else is refused. The old export is swapped out atomically and removed last")
    p.add_argument("--pool", default=TRAIN_MINUS_VAL, choices=[TRAIN_MINUS_VAL, "train"],
                   help="training images the methods draw from: train-minus-val (default: the validation split "
                        "held out, so `evaluate --split val` may score the set) or train (all of them, e.g. all 60k "
                        "of Fashion-MNIST); an ImageFolder's validation split: see --test-dir; a latent store: all")
    p.add_argument("--latent-store", default=None, metavar="DIR",
                   help="distil from a latent store written by `encode --store DIR` instead of --dataset (checked "
                        "against --vae; held in memory up to --store-max-gib, streamed class by class above it). "
                        "Method random reads its real images from --data-dir, by default the folder the store was "
                        "encoded from")
    p.add_argument("--store-max-gib", type=bounded("GiB", float), default=4.0,
                   help="--latent-store: largest store (float32 GiB) to hold in memory (default 4); a larger one is "
                        "streamed: quantized class by class with at most this much of its latents in memory")
    p.add_argument("--stream", action="store_true",
                   help="--latent-store: stream the store even when it fits in memory: a class up to --store-max-gib "
                        "/ quantize workers is loaded alone (the in-memory result), a larger one streamed in chunks "
                        "(mini-batch k-means refined by Lloyd passes)")
    p.add_argument("--stream-init-size", type=int, default=None, metavar="ROWS",
                   help="streamed classes: rows of the seeded sample that initialises their k-means (default "
                        "max(20 x IPC, 4096)); a streamed class of at most ROWS latents gets the in-memory result")


def _cmd_distill(args: argparse.Namespace) -> None:
    if world_size() > 1:  # launched by torchrun / accelerate: every rank runs run_distill with its context
        return main_distill(args)
    run_distill(args)


def _distill_spec(args: argparse.Namespace, method: str, device: str | None = None) -> ModelSpec:
    """The models a distillation needs: the VAE, and the flow or the diffusion model only when ``method``
    uses it (so that a foreign VAE needs neither the embedded generators nor a teacher)."""
    from core.config import DIFFUSION_METHODS, FLOW_METHODS
    from core.models.loading import model_present

    spec = model_spec(args, flow=method in FLOW_METHODS, diffusion=method in DIFFUSION_METHODS, device=device)
    for needed, option, ref, what in ((FLOW_METHODS, "--flow", spec.flow, "a flow model: this project's flow folder, "
                                       "a diffusers DiT folder or a SiT/DiT .pt / .safetensors"),
                                      (DIFFUSION_METHODS, "--diffusion", spec.diffusion, "a diffusion model folder")):
        if method in needed and not model_present(ref):
            raise ValueError(f"method {method!r} needs {what}; {option} {ref} is not there")
        if method in needed:
            _folder_config(ref, "transformer")   # a damaged or hostile config.json is refused before any work
    return spec


def _store_classes(classes, engine):
    """--classes with a latent store may also name class folders (WordNet ids): they become class ids."""
    from core.pipeline.distill import StoreImages

    if classes is None or not isinstance(engine.dataset, StoreImages) or not isinstance(classes, str):
        return classes
    folders = list(engine.dataset.store.class_ids)
    items = [c.strip() for c in classes.split(",")]
    return ",".join(str(folders.index(c)) if c in folders else c for c in items)


def _folder_config(reference: str, sub: str = "vae") -> dict | None:
    """The config.json of a model folder (or of a pipeline folder's ``sub``/: the VAE's vae/, a DiT's transformer/),
    None for a hub id, a file or no config."""
    from core.reads import CONFIG_MAX_BYTES, read_json

    for path in (Path(reference) / "config.json", Path(reference) / sub / "config.json"):
        if path.is_file():
            return read_json(path, CONFIG_MAX_BYTES)
    return None


def _models_record(args: argparse.Namespace, engine) -> dict:
    """The ``models`` entry of a distill manifest: what was used, with fingerprints and the flow's provenance."""
    from core.models.loading import flow_record
    from core.quantize.streaming import StreamingLatents

    store = getattr(args, "latent_store", None)
    models = {"vae": portable(args.vae), "vae_fingerprint": engine.vae.fingerprint,
              "flow": portable(args.flow) if engine.flow is not None else None,
              "flow_model": flow_record(engine.flow, args.flow),
              "diffusion": portable(args.diffusion) if engine.diffusion is not None else None,
              "dataset": engine.dataset.name if store else args.dataset,
              "pool": engine.dataset.name, "dataset_fingerprint": engine.dataset.fingerprint}
    if engine.teacher is not None:   # the embedding of a refinement in the teacher's features
        from core.reads import tensors_fingerprint

        models.update(teacher=portable(args.teacher), teacher_fingerprint=tensors_fingerprint(engine.teacher.net.state_dict()))
    if models["flow_model"] is not None:
        models["flow_model"]["source"] = portable(models["flow_model"]["source"])
    if store:
        models["latent_store"] = portable(store)
    if isinstance(engine.latents, StreamingLatents):
        models["latent_store_streaming"] = engine.latents.record()
    return models


def run_distill(args: argparse.Namespace, ctx=None) -> None:
    """``distill`` in this process, or as one rank of ``ctx`` (main_distill): every rank
    loads the engine and distils its share of each stage; the main rank checks the output folder, exports
    and prints."""
    from dataclasses import replace

    import numpy as np

    from core.pipeline.distill import (
        LocalExecutor,
        StoreImages,
        distill,
        hold_out_validation,
        resolve_classes,
    )
    from core.pipeline.export import check_export_target, export_imagefolder, export_zip

    main = ctx is None or ctx.is_main
    config = distill_config_from_args(args)  # checks every knob before loading anything
    init_size = getattr(args, "stream_init_size", None)
    if init_size is not None:
        check_int("--stream-init-size", init_size, "images")
    device = args.device
    if ctx is not None:
        from core.pipeline.distributed import broadcast_object, rank_device

        device = rank_device(ctx, args.device)
    spec = _distill_spec(args, config.method, device)
    from core.device import check_decode_precision, configure_device, resolve_device

    check_decode_precision(config.sampler.dtype, _folder_config(args.vae), f"--vae {args.vae}")
    precision = {**configure_device(resolve_device(device), args.tf32), "dtype": config.sampler.dtype}
    problem = registry = None
    if main:  # the output and the registry are checked before any model is loaded (the output again when written)
        try:
            out = check_export_target(args.out, args.overwrite)
            registry = open_registry(args)
        except DistillError as exc:
            problem = str(exc)
    if ctx is not None and ctx.is_distributed:
        problem = broadcast_object(ctx, problem)
    if problem:
        raise OutputError(problem)
    as_zip = main and out.suffix.lower() == ".zip"
    engine = engine_from_args(args, spec, ctx)
    if args.pool == TRAIN_MINUS_VAL and not args.latent_store:
        from core.data.splits import validation_rows

        engine = hold_out_validation(engine, validation_rows(args.dataset, engine.dataset.labels, args.data_dir,
                                                             args.test_dir))
    if config.method == "random" and isinstance(engine.dataset, StoreImages):
        engine.dataset.folder()  # the real images must be there before any work
    config = replace(config, classes=resolve_classes(_store_classes(config.classes, engine), engine.latents.class_names))
    if ctx is not None:
        from core.pipeline.distributed import ShardedExecutor, distill_distributed

        executor = ShardedExecutor(ctx, args.decode_batch) if ctx.is_distributed else LocalExecutor(args.decode_batch, "uint8")
        dset = distill_distributed(engine, config, ctx, executor=executor)
    else:  # uint8 images, converted batch by batch: all the export needs, a quarter of float32's memory
        executor = LocalExecutor(args.decode_batch, "uint8")
        dset = distill(engine, config, executor, progress=lambda fraction, message: print(message, flush=True))
    memory = _memory_line(engine, ctx, executor)
    if main:
        extra = {"models": _models_record(args, engine), "precision": precision}
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
        print(memory)
        if registry is not None:
            _record(registry, dset, out, engine.dataset.name)
    if ctx is not None:
        ctx.barrier()


def _record(registry, dset, out, source: str) -> None:
    """Record the export in the run registry; a registry that fails now costs the record only (a warning): the
    export is written and whole."""
    import sqlite3

    from core.config import config_hash

    try:
        with registry:
            run = registry.add_run("distill", dset.config.to_dict(), {}, dset.timings, config_hash(dset.config),
                                   export_path=str(out), source=source)
    except sqlite3.Error as exc:
        print(f"warning: the export is complete, but the run registry {registry.path} could not record it ({exc})",
              file=sys.stderr)
        return
    print(f"recorded as run {run} in {registry.path}")


def _memory_line(engine, ctx, executor) -> str:
    """The log line of the batch sizes and the peak memory (every rank's under torchrun: a collective, called
    by all ranks)."""
    from core.device import describe_peak_memory

    line = describe_peak_memory(engine.vae.device)
    if ctx is not None and ctx.is_distributed:
        from core.pipeline.distributed import gather_objects

        lines = gather_objects(ctx, line, dst=0) or []
        line = "; ".join(f"rank {r}: {text}" for r, text in enumerate(lines))
    batch = executor.used_decode_batch
    return f"decode batch {batch if batch is not None else '-'} ({executor.decode_batch}); {line}"


def main_distill(args) -> None:
    """``python -m core distill`` under torchrun / accelerate: every rank loads the engine (encoding split,
    cache written by rank 0; or the latent store, read by every rank) and distils its share; rank 0 checks
    the output folder, exports and prints (``run_distill`` with this process's context)."""
    from core.pipeline.distributed import init_from_env

    ctx = init_from_env(device=args.device)
    try:
        run_distill(args, ctx)
    finally:
        ctx.shutdown()
