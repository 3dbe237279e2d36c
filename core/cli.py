"""Command line: ``python -m core COMMAND ...``. Every command takes --seed and prints where outputs went."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from core.assets import ASSETS, DIFFUSION_DIR, FLOW_DIR, TEACHER_DIR, VAE_DIR, ModelSpec
from core.errors import DistillError
from core.guidance import SCHEDULES
from core.benchmark import BENCH_METHODS
from core.pipeline import DEFAULT_PGFM_GUIDANCE, METHODS
from core.solvers import SOLVERS


def _cmd_train_vae(args: argparse.Namespace) -> None:
    from core.autoencoder import TinyVAEConfig, train_tiny_vae

    config = TinyVAEConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           threads=args.threads)
    train_tiny_vae(config, args.out, args.data_dir)


def _cmd_train_teacher(args: argparse.Namespace) -> None:
    from core.teacher import TeacherTrainConfig, train_teacher

    config = TeacherTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                threads=args.threads)
    train_teacher(config, args.out, args.data_dir)


def _encode(args: argparse.Namespace, split: str):
    from core.assets import load_vae
    from core.data import load_dataset
    from core.latents import encode_dataset

    dataset = load_dataset(args.dataset, split, args.data_dir, args.resolution, args.channels)
    vae = load_vae(ModelSpec(vae=args.vae, device=args.device))
    latents = encode_dataset(dataset, vae, args.cache_dir)
    return dataset, vae, latents


def _cmd_encode(args: argparse.Namespace) -> None:
    for split in args.splits:
        t0 = time.perf_counter()
        dataset, _, latents = _encode(args, split)
        print(f"{dataset.name}: {len(latents)} latents of shape {latents.latent_shape} -> {latents.path} "
              f"({time.perf_counter() - t0:.1f} s)")


def _portable(path: str) -> str:
    """A path inside the repository as a relative path (for records that ship), anything else unchanged."""
    try:
        return str(Path(path).resolve().relative_to(ASSETS.parent))
    except ValueError:
        return str(path)


def _cmd_train_latent_model(args: argparse.Namespace) -> None:
    """train-flow and train-diffusion: the same network, data and loop; only the objective differs."""
    import torch

    from core.io import read_json, write_json
    from core.training import LatentModelTrainConfig

    if args.command == "train-flow":
        from core.flow import train_flow as train
    else:
        from core.diffusion import train_diffusion as train
    if args.threads:
        torch.set_num_threads(args.threads)
    _, vae, latents = _encode(args, "train")
    config = LatentModelTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, width=args.width,
                                    hidden=args.hidden, depth=args.depth, seed=args.seed, threads=args.threads)
    provenance = {"vae": _portable(args.vae), "vae_fingerprint": vae.fingerprint, "dataset": args.dataset,
                  "dataset_fingerprint": latents.dataset_fingerprint}
    train(config, latents, args.out, resume=not args.no_resume, provenance=provenance)
    record = read_json(Path(args.out) / "training.json")
    record["command"] = f"python -m core {args.command} --out {args.out} --steps {args.steps} --seed {args.seed}"
    write_json(Path(args.out) / "training.json", record)
    print(f"{args.command}: model written to {args.out}")


def _cmd_eval_models(args: argparse.Namespace) -> None:
    """Print (and record) the figures of the shipped models that the foundation issue asks for."""
    import json

    import torch

    from core.assets import load_flow_for, load_teacher, load_vae
    from core.autoencoder import measure_vae
    from core.data import load_fashion_mnist
    from core.diffusion import DiffusionSamplerConfig, load_diffusion, sample_diffusion
    from core.io import is_model_folder, write_json
    from core.quality import flow_quality, generator_quality

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = ModelSpec(vae=args.vae, flow=args.flow, teacher=args.teacher, device=args.device)
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


def _engine(args: argparse.Namespace):
    from core.pipeline import load_engine

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    spec = ModelSpec(vae=args.vae, flow=args.flow, diffusion=args.diffusion, device=args.device)
    return load_engine(spec, args.dataset, args.data_dir, args.cache_dir, args.resolution, args.channels)


def distill_config_from_args(args: argparse.Namespace, method: str = "", ipc: int = 0):
    """The DistillConfig that the distill options describe (validated by the dataclasses); ``method`` and
    ``ipc`` replace the options of the same name (the benchmark sets them per cell)."""
    from core.diffusion import DiffusionSamplerConfig
    from core.guidance import GuidanceConfig
    from core.pipeline import DistillConfig
    from core.sampling import SamplerConfig

    guidance = GuidanceConfig(strength=args.guidance, schedule=args.schedule, t_start=args.t_start,
                              t_stop=args.t_stop, trust_radius=args.trust_radius)
    sampler = SamplerConfig(solver=args.solver, steps=args.steps, time_shift=args.time_shift,
                            cfg_scale=args.cfg_scale, guidance=guidance, t0=args.t0, seed=args.seed, dtype=args.dtype)
    diffusion = DiffusionSamplerConfig(steps=args.diffusion_steps, cfg_scale=args.cfg_scale, strength=args.strength,
                                       guidance=args.mg_guidance, stop=args.mg_stop, seed=args.seed, dtype=args.dtype)
    classes = getattr(args, "classes", "all")
    return DistillConfig(method=method or args.method, ipc=ipc or args.ipc, classes=None if classes == "all" else classes,
                         seed=args.seed, sampler=sampler, ddoq_t0=args.ddoq_t0, diffusion=diffusion,
                         medoid=args.medoid, pgfm_weights=args.pgfm_weights, record_trajectories=False)


def _cmd_distill(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from core.export import export_imagefolder
    from core.pipeline import distill, resolve_classes

    config = distill_config_from_args(args)  # checks every knob before loading anything
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ValueError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    engine = _engine(args)
    config = replace(config, classes=resolve_classes(config.classes, engine.latents.class_names))
    dset = distill(engine, config)
    models = {"vae": _portable(args.vae), "vae_fingerprint": engine.vae.fingerprint, "flow": _portable(args.flow),
              "diffusion": _portable(args.diffusion),
              "dataset": args.dataset, "dataset_fingerprint": engine.dataset.fingerprint}
    export_imagefolder(dset, out, overwrite=args.overwrite, extra={"models": models})
    landing = dset.landing_error[np.isfinite(dset.landing_error)] if len(dset) else []
    print(f"{config.method}: {len(dset)} images ({config.ipc} per class, {len(set(dset.labels.tolist()))} classes), "
          f"NFE {dset.nfe}/image, {dset.timings['total_s']:.2f} s"
          + (f", landing error mean {np.mean(landing):.4f}" if len(landing) else ""))
    print(f"written to {out} (ImageFolder PNGs, manifest.json, latents.safetensors)")


def _cmd_bench_speed(args: argparse.Namespace) -> None:
    from core.io import write_json
    from core.reports import speed_report

    engine = _engine(args)
    r = speed_report(engine, repeats=args.repeats, seed=args.seed)
    print(f"quantize 10 classes x IPC 50 (k-means, cell masses):  {r['quantize_10_classes_ipc50_s']:.3f} s "
          f"(target <= 2 s); with exact W2 weighted + uniform: {r['quantize_10_classes_ipc50_with_w2_s']:.3f} s")
    print(f"sample 10 classes x IPC 10, 8 Euler steps + CFG, guided, with trajectories: "
          f"{r['sample_100_guided_8_euler_cfg_trajectories_s']:.3f} s (target <= 0.5 s)")
    print(f"decode those 100 latents: {r['decode_100_s']:.4f} s (target <= 0.2 s)")
    print(f"(median of {r['repeats']} runs after a warm-up; {r['threads']} torch threads)")
    if args.json:
        write_json(args.json, r)
        print(f"report written to {args.json}")


def _cmd_bench_engine(args: argparse.Namespace) -> None:
    from core.io import write_json
    from core.reports import landing_report, solver_order_report, w2_report

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
    import sys as _sys

    import torch
    from tqdm import tqdm

    from core.data import load_fashion_mnist
    from core.evaluate import EvalConfig, evaluate_set, read_distilled_folder
    from core.io import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EvalConfig(architecture=args.architecture, labels=args.labels, temperature=args.temperature,
                        epochs=args.epochs, use_weights=not args.no_weights, augment=args.augment,
                        seeds=tuple(range(args.seed, args.seed + args.seeds)), precision=args.precision)
    test = load_fashion_mnist("test", args.data_dir)
    images, labels, weights = read_distilled_folder(args.folder, test.class_names, test.image_shape)
    teacher = None
    if config.labels == "soft":
        from core.assets import load_teacher

        teacher = load_teacher(ModelSpec(teacher=args.teacher))
    bar = tqdm(total=1000, desc=f"evaluate {Path(args.folder).name}", file=_sys.stderr, mininterval=1)

    def progress(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message)

    result = evaluate_set(images, labels, test, config, weights, teacher, progress)
    bar.close()
    print(f"{args.folder}: {len(images)} images, {config.architecture}, {config.labels} labels, "
          f"{'weighted' if weights is not None and config.use_weights else 'unweighted'}: test accuracy "
          f"{100 * result.mean:.2f} ± {100 * result.std:.2f} % over {len(config.seeds)} seeds "
          f"({', '.join(f'{100 * a:.2f}' for a in result.accuracies)}); {sum(result.seconds):.1f} s")
    if args.json:
        write_json(args.json, {"folder": str(args.folder), **result.to_dict()})
        print(f"result written to {args.json}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from core.assets import load_teacher
    from core.benchmark import Bench, BenchConfig, results_summary, run_benchmark
    from core.data import load_fashion_mnist
    from core.io import read_json

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Distill Studio engine (headless).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func, data: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
        p.add_argument("--data-dir", default=None, help="dataset folder (Fashion-MNIST IDX files: default "
                       "$FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist; imagefolder: its root)")
        p.set_defaults(func=func)
        return p

    def add_models(p: argparse.ArgumentParser, flow: bool = False, teacher: bool = False) -> None:
        p.add_argument("--vae", default=str(VAE_DIR), help="VAE folder or diffusers hub id (default: embedded)")
        if flow:
            p.add_argument("--flow", default=str(FLOW_DIR), help="flow model folder (default: embedded)")
        if teacher:
            p.add_argument("--teacher", default=str(TEACHER_DIR), help="teacher folder (default: embedded)")
        p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")

    def add_dataset(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "imagefolder"])
        p.add_argument("--resolution", type=int, default=32, help="imagefolder: image size (default 32)")
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

    p = add("encode", "Encode a dataset with the VAE into the latent cache (reused when present).", _cmd_encode)
    add_models(p)
    add_dataset(p)
    p.add_argument("--splits", nargs="+", default=["train", "test"])

    for name, what, default_out in (("train-flow", "a class-conditional flow-matching model", FLOW_DIR),
                                    ("train-diffusion", "the ε-prediction diffusion counterpart", DIFFUSION_DIR)):
        p = add(name, f"Train {what} on the VAE latents (resumable; EMA weights).", _cmd_train_latent_model)
        add_models(p)
        add_dataset(p)
        p.add_argument("--out", default=str(default_out), help=f"output folder (default {default_out.relative_to(ASSETS.parent)})")
        p.add_argument("--steps", type=int, default=8000)
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--lr", type=float, default=1e-3)
        p.add_argument("--width", type=int, default=512)
        p.add_argument("--hidden", type=int, default=1024)
        p.add_argument("--depth", type=int, default=4)
        p.add_argument("--no-resume", action="store_true", help="ignore OUT/checkpoint.pt and start afresh")

    def add_engine(p: argparse.ArgumentParser) -> None:
        add_models(p, flow=True)
        p.add_argument("--diffusion", default=str(DIFFUSION_DIR), help="diffusion model folder (default: embedded)")
        add_dataset(p)

    def add_distill_options(p: argparse.ArgumentParser, single: bool = True) -> None:
        add_engine(p)
        if single:
            p.add_argument("--method", default="pgfm", choices=list(METHODS))
            p.add_argument("--ipc", type=int, default=10, help="images per class")
            p.add_argument("--classes", default="all", help="'all' or a comma-separated list of class ids or names")
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
        g = p.add_argument_group("diffusion counterpart (diffusion-d4m, diffusion-mg)")
        g.add_argument("--diffusion-steps", type=int, default=25)
        g.add_argument("--strength", type=float, default=0.7, help="diffusion-d4m: fraction of the schedule run")
        g.add_argument("--mg-guidance", type=float, default=0.5, help="diffusion-mg: pull of x̂_0 toward the prototype")
        g.add_argument("--mg-stop", type=float, default=0.6, help="diffusion-mg: fraction of steps guided")

    p = add("distill", "Distil a dataset: quantize, sample, decode, export an ImageFolder + manifest + latents.",
            _cmd_distill)
    add_distill_options(p)
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")

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
    p.add_argument("--teacher", default=str(TEACHER_DIR))
    p.add_argument("--out", default="benchmarks", help="output folder (default benchmarks/)")

    p = add("bench-speed", "Print the engine's speed figures (quantize, guided sampling, decode).", _cmd_bench_speed)
    add_engine(p)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DistillError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
