"""`bench-speed` and `bench-engine`: the engine's speed and throughput figures, W2, landing errors and
solver orders."""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

from core.cli.options import (
    add_engine,
    bounded,
    engine_from_args,
    model_spec,
    set_option,
)
from core.config import (
    DEFAULT_TF32,
    SAMPLER_DTYPE_OPTIONS,
    STUDENT_ARCHITECTURES,
    TEACHER_DIR,
)


def add_parsers(add) -> None:
    p = add("bench-speed", "Print the engine's speed figures (quantize, guided sampling, decode) and the "
            "throughput of encode, sample and decode in images/s on the device, for any VAE / flow.", _cmd_bench_speed)
    add_engine(p)
    set_option(p, "device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--repeats", type=bounded("repeats"), default=5)
    p.add_argument("--json", default=None)
    g = p.add_argument_group("throughput (synthetic images / latents / labels; any --vae, --flow, --resolution)")
    g.add_argument("--batch-size", type=bounded("batch"), default=64,
                   help="images per encode / sample / decode call (default 64)")
    g.add_argument("--dtype", default="auto", choices=list(SAMPLER_DTYPE_OPTIONS),
                   help="autocast precision of the flow and the VAE (default auto: bfloat16 on a CUDA GPU with bf16, "
                        "float32 elsewhere)")
    g.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=DEFAULT_TF32,
                   help="TF32 float32 matmuls and convolutions on CUDA (default on; no effect elsewhere)")
    g.add_argument("--steps", type=bounded("steps"), default=8,
                   help="Euler steps of the sampling figure (default 8, as distill)")
    g.add_argument("--cfg-scale", type=float, default=2.0, help="CFG scale of the sampling figure (default 2)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the flow and the VAE's encoder / decoder (in place); ignored with a warning "
                        "where compile is unavailable")
    g.add_argument("--throughput-only", action="store_true",
                   help="skip the engine figures, which need the dataset: only --vae (at --resolution) and --flow "
                        "are loaded, e.g. an SD-VAE at 256 px and SiT-XL-2-256x256.pt")

    p = add("bench-student", "Time one student training step (ConvNet-3 on 32 px, 10 classes) under each protocol and "
            "precision, and the seconds a 300-epoch student trains at IPC 1, 10 and 50.", _cmd_bench_student)
    p.add_argument("--steps", type=bounded("steps"), default=20,
                   help="timed steps per setting, after 3 warm-up steps (default 20)")
    p.add_argument("--architecture", default="convnet", choices=list(STUDENT_ARCHITECTURES))
    p.add_argument("--ipc", type=bounded("ipc"), nargs="+", default=[1, 10, 50],
                   help="IPC values at 10 classes (default 1 10 50)")
    p.add_argument("--teacher", default=str(TEACHER_DIR), help="labels the soft-online batches")
    p.add_argument("--json", default=None)

    p = add("bench-engine", "Print per-class W2 (weighted vs uniform), PGFM landing errors and solver orders.",
            _cmd_bench_engine)
    add_engine(p)
    p.add_argument("--ipc", type=bounded("ipc"), nargs="+", default=[10, 50])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--json", default=None)


def _cmd_bench_speed(args: argparse.Namespace) -> None:
    """The engine's speed figures (quantize / guided sample / decode on the dataset, as in benchmarks/speed.json)
    and the throughput of encode, sample and decode in images/s on the device (synthetic inputs, any VAE / flow)."""
    # Long by design: mostly the printed report, line by line.
    import warnings

    import torch

    from core.device import (
        compile_unavailable_reason,
        configure_device,
        maybe_compile,
        resolve_device,
        resolve_sampler_dtype,
    )
    from core.evaluation.reports import speed_report, throughput_report
    from core.io import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.repeats < 1 or args.steps < 1:
        raise ValueError("--batch-size, --repeats and --steps must be >= 1")
    device = resolve_device(args.device)
    args.device, args.dtype = str(device), resolve_sampler_dtype(args.dtype, device)
    report: dict = {"precision": {**configure_device(device, args.tf32), "dtype": args.dtype}}
    if args.throughput_only:
        from core.models.loading import load_flow_for, load_vae, model_present

        spec = model_spec(args, diffusion=False)
        vae = load_vae(spec)
        resolution = args.resolution
        flow = None
        if model_present(spec.flow):
            classes = len(spec.flow_class_map) if spec.flow_class_map else None
            flow = load_flow_for(spec, vae.latent_shape(resolution), classes)
        engine = None
    else:
        engine = engine_from_args(args)
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
    import numpy as np

    from core.evaluation.reports import landing_report, solver_order_report, w2_report
    from core.io import write_json

    engine = engine_from_args(args)
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


def _cmd_bench_student(args: argparse.Namespace) -> None:
    """Seconds per student step by protocol and precision, measured through ``train_student`` itself (so DSA
    and the teacher's relabelling are included), and the 300-epoch student time they imply per IPC."""
    import math

    import numpy as np
    import torch

    from core.device import cpu_bf16_supported
    from core.evaluation.students import protocol_config, train_student
    from core.io import write_json
    from core.models.loading import load_teacher
    from core.models.spec import ModelSpec

    if args.steps < 1 or min(args.ipc) < 1:
        raise ValueError("--steps and --ipc must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load_teacher(ModelSpec(teacher=args.teacher))
    rng = np.random.default_rng(0)
    precisions = ["fp32"] + (["bf16"] if cpu_bf16_supported() else [])
    rows = []
    print(f"student step: {args.architecture} on 1x32x32, 10 classes, {torch.get_num_threads()} torch threads; median of "
          f"{args.steps} epochs of one batch (10·IPC images, at most 256)")
    for protocol in ("hard", "hard-dsa", "soft-online"):
        for precision in precisions:
            config = protocol_config(protocol, architecture=args.architecture, precision=precision, epochs=1, seeds=(0,))
            row = {"protocol": protocol, "precision": precision, "seconds_per_step": {}, "train_seconds_300_epochs": {}}
            for ipc in args.ipc:
                batch = min(256, 10 * ipc)
                images = torch.from_numpy(rng.uniform(-1, 1, (batch, 1, 32, 32)).astype(np.float32))
                labels = np.arange(batch) % 10
                train_student(images, labels, 10, replace(config, epochs=3), 0, teacher=teacher)   # warm-up
                times = []
                for k in range(args.steps):
                    t0 = time.perf_counter()
                    train_student(images, labels, 10, config, k, teacher=teacher)
                    times.append(time.perf_counter() - t0)
                step = float(np.median(times))
                row["seconds_per_step"][ipc] = round(step, 4)
                row["train_seconds_300_epochs"][ipc] = round(300 * math.ceil(10 * ipc / batch) * step, 1)
            rows.append(row)
            print(f"  {protocol:<12} {precision:<5} ms/step " + " / ".join(
                f"{1000 * row['seconds_per_step'][i]:.0f}" for i in args.ipc) + " -> 300 epochs: " + ", ".join(
                f"IPC {i} {row['train_seconds_300_epochs'][i]:.0f} s" for i in args.ipc) + " (training; the test adds)")
    report = {"threads": torch.get_num_threads(), "architecture": args.architecture, "rows": rows}
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
