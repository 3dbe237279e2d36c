"""Options shared by the commands (models, dataset, engine, distill knobs) and what they turn into: a
ModelSpec, a loaded engine, a DistillConfig. Imports no torch: heavy modules load inside the functions."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from core.models.spec import ModelSpec

from core.config import (
    ASSETS,
    DEFAULT_PGFM_GUIDANCE,
    DEFAULT_REFINE,
    DIFFUSION_DIR,
    FLOW_DIR,
    LIMITS,
    LONG_REFINE,
    LONG_REFINE_UP_TO_IPC,
    METHODS,
    REFINE_EMBEDDINGS,
    REFINE_LR,
    REFINE_OBJECTIVES,
    REFINE_PRESETS,
    REFINE_SPACES,
    SAMPLER_DTYPE_OPTIONS,
    SCHEDULES,
    SOLVERS,
    TEACHER_DIR,
    TEACHER_REFINE,
    VAE_DIR,
)


def set_option(p: argparse.ArgumentParser, dest: str, **changes) -> None:
    """Change an option's default / help after a shared helper added it (e.g. --device auto for GPU commands)."""
    for action in p._actions:
        if action.dest == dest:
            for key, value in changes.items():
                setattr(action, key, value)
            if "default" in changes:
                p.set_defaults(**{dest: changes["default"]})
            return
    raise KeyError(dest)


def _number_within(text: str, kind: str, number: type = int, prefix: str = "", low: int | None = None) -> int | float:
    """``text`` as an integer within ``LIMITS[kind]`` (``low``: another lower bound; ``number`` float: a number > 0
    up to its bound), or the argparse error that says what was expected (``prefix``: other accepted words) and,
    above it, the range."""
    high = LIMITS[kind][1]
    noun, low = ("a number", 0) if number is float else ("an integer", LIMITS[kind][0] if low is None else low)
    try:
        value = number(text)
    except ValueError:
        value = None
    if value is None or not (value > low if number is float else value >= low):
        expected = f"{prefix}{noun} {'>' if number is float else '>='} {low}"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text.strip() if value is not None else repr(text)}")
    if not value <= high:
        raise argparse.ArgumentTypeError(f"expected {prefix}{noun} from {low} to {high}, got {text.strip()}")
    return value


def bounded(kind: str, number: type = int, low: int | None = None) -> Callable[[str], int | float]:
    """An argparse type: an integer within ``LIMITS[kind]`` (``low``: another lower bound; ``number`` float: a
    number > 0 up to its bound)."""
    return lambda text: _number_within(text, kind, number, low=low)


def non_negative_int(text: str) -> int:
    return _number_within(text, "threads")


def batch_option(text: str) -> str | int:
    """An argparse type for batch sizes: 'auto' or an integer within LIMITS' batch bounds."""
    if text.strip().lower() == "auto":
        return "auto"
    return _number_within(text, "batch", prefix="'auto' or ")


def add_batch_options(p: argparse.ArgumentParser, decode: bool = True, encode_aliases: tuple[str, ...] = ()) -> None:
    """--encode-batch (and --decode-batch): images per VAE call, 'auto' (from the resolution and the free memory:
    core.models.vae.LatentAutoencoder.batch_size) or an integer."""
    p.add_argument("--encode-batch", *encode_aliases, dest="encode_batch", type=batch_option, default="auto",
                   metavar="N|auto", help="images per VAE encode call (default auto: as many as fit in half the free "
                   "GPU memory, or 2 GiB on a CPU, at the resolution; at most 256)")
    if decode:
        p.add_argument("--decode-batch", type=batch_option, default="auto", metavar="N|auto",
                       help="latents per VAE decode call (default auto: as many as fit in half the free GPU memory, "
                            "or 2 GiB on a CPU, at the resolution; at most 256); under torchrun also the unit split "
                            "across processes")


def portable(path: str) -> str:
    """A path inside the repository as a relative path (for records that ship), anything else unchanged."""
    try:
        return str(Path(path).resolve().relative_to(ASSETS.parent))
    except ValueError:
        return str(path)


def model_spec(args: argparse.Namespace, flow: bool = True, diffusion: bool = True,
                device: str | None = None) -> ModelSpec:
    """The ModelSpec of the model options (checks the flow options); generators not wanted are left out."""
    from core.models.spec import ModelSpec

    return ModelSpec(vae=args.vae, flow=args.flow if flow else None,
                     diffusion=getattr(args, "diffusion", None) if diffusion else None, device=device or args.device,
                     flow_convention=getattr(args, "flow_convention", None),
                     flow_num_heads=getattr(args, "flow_num_heads", None),
                     flow_class_map=getattr(args, "flow_class_map", None))


def add_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=None, metavar="FILE",
                   help="the run registry (SQLite) this command records its run in (default $DISTILL_REGISTRY, else "
                        ".cache/runs/registry.sqlite); 'none' records nothing")


def open_registry(args: argparse.Namespace):
    """The run registry of ``--registry`` (None for 'none'), opened before any work so that a file it cannot
    use is refused at once (core.registry.RegistryError)."""
    if getattr(args, "registry", None) == "none":
        return None
    from core.registry import Registry

    return Registry(args.registry)


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def engine_from_args(args: argparse.Namespace, spec: ModelSpec | None = None, ctx=None):
    """The engine of the engine options: a latent store (--latent-store) or the dataset (encoded once and
    cached; split across ranks when ``ctx`` is distributed), the VAE and the generators of ``spec``."""
    from core.pipeline.distill import load_engine

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    spec = spec or model_spec(args)
    store = getattr(args, "latent_store", None)
    if store:
        max_bytes = int(args.store_max_gib * 2**30)
        # distill (the command with --stream) streams a store above the limit, or any with --stream; others refuse it
        stream = (True if args.stream else None) if hasattr(args, "stream") else False
        return with_refine_teacher(load_engine(spec, data_dir=args.data_dir, latent_store=store, max_store_bytes=max_bytes,
                                               stream=stream, stream_init_size=getattr(args, "stream_init_size", None)),
                                   args)
    if args.dataset == "imagefolder" and (ctx is None or ctx.is_main):
        check_folder(args)
    if ctx is not None and ctx.is_distributed:
        from core.pipeline.distributed import load_engine_distributed

        return with_refine_teacher(load_engine_distributed(ctx, spec, args.dataset, args.data_dir, args.cache_dir,
                                                           args.resolution, args.channels,
                                                           encode_batch=getattr(args, "encode_batch", "auto")), args)
    engine = load_engine(spec, args.dataset, args.data_dir, args.cache_dir, args.resolution, args.channels,
                         encode_batch=getattr(args, "encode_batch", "auto"))
    return with_refine_teacher(engine, args)


def with_refine_teacher(engine, args: argparse.Namespace):
    """``engine`` with the teacher (``--teacher``) a refinement with ``--refine-embedding teacher`` needs."""
    # (ipc 1: the refinement does not depend on it, and the benchmark's --ipc is a list)
    if not hasattr(args, "refine") or distill_config_from_args(args, ipc=1).refine.embedding != "teacher":
        return engine
    from dataclasses import replace

    from core.models.loading import load_teacher
    from core.models.spec import ModelSpec

    # on the VAE's device, where the decoded images are (--device auto resolved; a rank's own GPU)
    return replace(engine, teacher=load_teacher(ModelSpec(teacher=args.teacher, device=str(engine.vae.device))))


def encode_split(args: argparse.Namespace, split: str):
    from core.data.latent_cache import encode_dataset
    from core.data.splits import load_dataset
    from core.models.loading import load_vae
    from core.models.spec import ModelSpec

    vae = load_vae(ModelSpec(vae=args.vae, device=args.device))
    if args.dataset == "imagefolder":
        vae.check_input(args.resolution, args.channels)
        check_folder(args)
    dataset = load_dataset(args.dataset, split, args.data_dir, args.resolution, args.channels,
                           getattr(args, "test_dir", None))
    latents = encode_dataset(dataset, vae, args.cache_dir)
    return dataset, vae, latents


def check_folder(args: argparse.Namespace) -> None:
    """Before an ImageFolder is read: its splits and class folders are checked, and what loading will do to
    mixed sizes or colour modes is printed."""
    from core.data.splits import folder_report, folder_splits

    if args.data_dir is None:
        raise ValueError("--dataset imagefolder needs --data-dir ROOT (ROOT/train/<class>/..., optionally ROOT/val, "
                         "ROOT/test)")
    splits = folder_splits(args.data_dir, getattr(args, "test_dir", None))
    print(f"{args.data_dir}: {splits.describe()}")
    for note in folder_report(splits.train, args.resolution, args.channels):
        print(f"note: {note}")


def distill_config_from_args(args: argparse.Namespace, method: str = "", ipc: int = 0):
    """The DistillConfig that the distill options describe (``core.config.distill_config``, as the app's
    sidebar); ``method`` and ``ipc`` replace the options of the same name (the benchmark sets them per cell)."""
    from core.config import distill_config

    options = dict(vars(args))
    options.update({k: v for k, v in (("method", method), ("ipc", ipc)) if v})
    if options.get("dtype") == "auto":   # resolved for the device: a config records the precision that ran
        from core.device import resolve_device, resolve_sampler_dtype

        options["dtype"] = resolve_sampler_dtype("auto", resolve_device(options.get("device") or "cpu"))
    return distill_config(options)


def add_model_folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=None, metavar="DIR",
                   help="a model folder written by `prepare`: its VAE, flow, teacher and diffusion model replace the "
                        "embedded ones (where not given), and its dataset the data options (where left out)")


def add_models(p: argparse.ArgumentParser, flow: bool = False, teacher: bool = False) -> None:
    add_model_folder(p)
    p.add_argument("--vae", default=str(VAE_DIR), help="VAE folder or diffusers hub id (default: embedded)")
    if flow:
        p.add_argument("--flow", default=str(FLOW_DIR),
                       help="flow (velocity) model: this project's flow folder, a diffusers DiT folder or "
                            "pipeline (convention from its scheduler/, else --flow-convention or a "
                            "velocity_convention.json), or a raw SiT/DiT state dict .pt/.pth/.safetensors such as "
                            "SiT-XL-2-256x256.pt (default: embedded)")
        p.add_argument("--flow-convention", default=None, metavar="PRESET|JSON",
                       help="time/sign convention of a foreign flow: 'sit' (t=0 noise, t=1 data, predicts data - "
                            "noise; the default for .pt/.safetensors files), 'diffusers-flow' (timestep 1000·σ, "
                            "σ = 1 - t, predicts noise - data), 'ddpm-eps' (a DDPM noise predictor on DiT's "
                            "schedule, converted to a velocity; DiT-XL-2-*.pt), or a JSON object with time_scale / "
                            "time_reversed / velocity_sign, or beta_schedule / beta_start / beta_end / "
                            "num_train_timesteps / prediction_type (and optionally preset); leave unset for this "
                            "project's flow folders")
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
    p.add_argument("--resolution", type=bounded("resolution"), default=32,
                   help="imagefolder: image size (default 32; 256 for Stable-Diffusion-sized latents)")
    p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="imagefolder: 1 or 3")
    p.add_argument("--cache-dir", default=None, help="latent cache root (default $DISTILL_CACHE or .cache/)")
    p.add_argument("--test-dir", default=None,
                   help="imagefolder: the test split's folder (default ROOT/test, else ROOT/val); the validation "
                        "split is ROOT/val when that is not the test split, else 10%% of each class of ROOT/train")


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
    g.add_argument("--dtype", default="float32", choices=list(SAMPLER_DTYPE_OPTIONS),
                   help="model precision of sampling and decoding (default float32, the benchmarks' reference; "
                        "auto: bfloat16 on a CUDA GPU with native bf16, float32 elsewhere)")
    g.add_argument("--guidance", type=float, default=DEFAULT_PGFM_GUIDANCE.strength, help="PGFM λ (>= 0)")
    g.add_argument("--schedule", default=DEFAULT_PGFM_GUIDANCE.schedule, choices=list(SCHEDULES))
    g.add_argument("--t-start", type=float, default=DEFAULT_PGFM_GUIDANCE.t_start)
    g.add_argument("--t-stop", type=float, default=DEFAULT_PGFM_GUIDANCE.t_stop)
    g.add_argument("--trust-radius", type=float, default=None, help="r in latent RMS units (default: none)")
    g.add_argument("--t0", type=float, default=0.0, help="PGFM warm start in [0, 1)")
    g.add_argument("--ddoq-t0", type=float, default=0.5, help="ddoq: warm start of the decode-through-flow ODE")
    g.add_argument("--medoid", action="store_true", help="use the real latent nearest each centroid")
    g.add_argument("--pgfm-weights", action="store_true", help="pgfm: keep DDOQ cell masses as image weights")
    g.add_argument("--cell-offset", type=float, default=None,
                   help="pgfm: guide each sample to prototype + OFFSET · (a random real latent of its k-means cell − "
                        "prototype), in [0, 1] (default 0: the centroid; 1: a real latent of the cell)")
    g.add_argument("--prototypes-per-class", type=int, default=None, metavar="K",
                   help="pgfm: K < IPC prototypes per class; the IPC samples are allocated to them in proportion to "
                        "their DDOQ cell masses (largest remainder), several samples per prototype (default: K = IPC)")
    g.add_argument("--sample-batch-size", type=int, default=None, metavar="B",
                   help="rows per sampler batch, flow and diffusion (default 1024; lower it for large models on "
                        "small GPUs); under torchrun also the unit split across processes")
    g = p.add_argument_group("distribution-matching refinement of a generated set (DM; core/pipeline/refine.py); "
                             f"the --refine-* settings default to {DEFAULT_REFINE}")
    g.add_argument("--refine", type=int, default=0, metavar="ITERATIONS",
                   help=f"refine the sampled images for ITERATIONS steps of distribution matching against the real "
                        f"images (random ConvNet embeddings, DSA; default 0: none; the benchmark's pgfm-dm: "
                        f"{DEFAULT_REFINE.iterations}, {LONG_REFINE.iterations} up to IPC {LONG_REFINE_UP_TO_IPC})")
    g.add_argument("--refine-preset", default=None, choices=list(REFINE_PRESETS),
                   help=f"a named refinement: tdm ({TEACHER_REFINE.iterations} steps of MMD in the teacher's features; "
                        "with --method pgfm the recommended recipe), dm (DM's random networks); the --refine-* options "
                        "given beside it override its settings")
    g.add_argument("--refine-space", default=None, choices=list(REFINE_SPACES),
                   help="pixel: optimise the decoded images; latent: the latents, through the frozen decoder")
    g.add_argument("--refine-lr", type=float, default=None,
                   help="step size (default: " + ", ".join(f"{k} {v:g}" for k, v in REFINE_LR.items()) + ")")
    g.add_argument("--refine-real-batch", type=int, default=None,
                   help="real images per class and iteration")
    g.add_argument("--refine-width", type=int, default=None,
                   help="channels of the random ConvNet-3 embeddings")
    g.add_argument("--refine-objective", default=None, choices=list(REFINE_OBJECTIVES),
                   help="mean: DM's distance of mean embeddings; mmd: that plus a Gaussian-kernel MMD² of the "
                        "embeddings (M3D-style: also matches their spread)")
    g.add_argument("--refine-embedding", default=None, choices=list(REFINE_EMBEDDINGS),
                   help="random: DM's freshly initialised ConvNet-3 every iteration; teacher: the frozen teacher's "
                        "penultimate features (--teacher), whose labels soft-online students learn")
    g.add_argument("--refine-boundary", type=float, default=None, metavar="WEIGHT",
                   help="with --refine-embedding teacher: add WEIGHT x the negative entropy of the teacher's outputs "
                        "(temperature 4) on the set's images, moving it toward the class boundaries; 0: not")
    g.add_argument("--refine-project-t", type=float, default=None, metavar="T",
                   help="after a latent refinement, noise the latents back to time T (0 noise, 1 data) and integrate "
                        "the flow to t = 1 again, unguided (SDEdit-style), toward what the generator draws; 0: not")
    g = p.add_argument_group("diffusion counterpart (diffusion-d4m, diffusion-mg)")
    g.add_argument("--diffusion-steps", type=int, default=25)
    g.add_argument("--strength", type=float, default=0.7, help="diffusion-d4m: fraction of the schedule run")
    g.add_argument("--mg-guidance", type=float, default=0.5, help="diffusion-mg: pull of x̂_0 toward the prototype")
    g.add_argument("--mg-stop", type=float, default=0.6, help="diffusion-mg: fraction of steps guided")
