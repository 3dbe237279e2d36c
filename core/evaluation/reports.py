"""Measurements of the engine that the CLI prints: speed, W2 per class, landing errors, solver orders.

Speed figures are medians of several repeats after a warm-up; they are shown, never asserted in tests.
``speed_report`` gives the engine issue's three figures on the embedded default; ``throughput_report``
gives images/s of encode, sample and decode for any VAE / flow on any device (``bench-speed``).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from core.config import SOLVER_ORDER, SOLVERS, GuidanceConfig, SamplerConfig
from core.pipeline.distill import DistillEngine
from core.quantize.ddoq import QuantizeConfig, quantize
from core.transport.sampler import sample
from core.transport.solvers import time_grid


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device | None = None) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run (which also triggers any
    torch.compile code generation); on CUDA the device is synchronised around each run."""
    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed_report(engine: DistillEngine, repeats: int = 5, seed: int = 0) -> dict:
    """The three speed figures of the engine issue (targets: 2 s, 0.5 s, 0.2 s on 2 CPU cores)."""
    classes = list(range(engine.latents.num_classes))
    q_fast = QuantizeConfig(method="ddoq", ipc=50, seed=seed, compute_w2=False)
    q_w2 = replace(q_fast, compute_w2=True)
    quantize_s = _median_seconds(lambda: quantize(engine.latents, classes, q_fast), repeats)
    quantize_w2_s = _median_seconds(lambda: quantize(engine.latents, classes, q_w2), max(1, repeats // 2))
    q10 = quantize(engine.latents, classes, replace(q_fast, ipc=10))
    prototypes = torch.cat([q.prototypes for q in q10])
    labels = torch.tensor(classes).repeat_interleave(10)
    config = SamplerConfig(solver="euler", steps=8, cfg_scale=2.0, seed=seed,
                           guidance=GuidanceConfig(strength=0.6, schedule="linear", t_stop=0.8))
    sample_s = _median_seconds(lambda: sample(engine.flow, labels, prototypes, config, record=True), repeats)
    latents = sample(engine.flow, labels, prototypes, config).latents
    decode_s = _median_seconds(lambda: engine.vae.decode(latents), repeats)
    return {
        "quantize_10_classes_ipc50_s": round(quantize_s, 3), "quantize_10_classes_ipc50_with_w2_s": round(quantize_w2_s, 3),
        "sample_100_guided_8_euler_cfg_trajectories_s": round(sample_s, 3), "decode_100_s": round(decode_s, 4),
        "threads": torch.get_num_threads(), "repeats": repeats, "statistic": "median",
    }


def throughput_report(vae=None, flow: torch.nn.Module | None = None, resolution: int = 32, batch_size: int = 64,
                      steps: int = 8, cfg_scale: float = 2.0, dtype: str = "float32", repeats: int = 5,
                      seed: int = 0, compiled: bool = False) -> dict:
    """Images per second of ``vae.encode``, flow sampling and ``vae.decode`` on one batch of ``batch_size``,
    on the device the models live on (median of ``repeats`` after a warm-up; results include the copy back
    to the CPU, as in the pipeline).

    Inputs are synthetic, so any VAE / flow pair can be measured without a dataset: uniform images in
    [-1, 1] at ``resolution`` (the VAE's channels), standard-normal latents, random class labels.
    ``dtype`` ("float32", "bfloat16", "float16"): the flow runs under autocast in it (``SamplerConfig.dtype``),
    and so do the VAE's encoder and decoder. Sampling is unguided Euler with ``steps`` steps and CFG
    ``cfg_scale``: one model evaluation per step (conditional and null passes batched into one forward of
    2·B rows when ``cfg_scale`` != 1); ``sample_image_nfe_per_s`` = images · NFE / s is the per-evaluation
    rate, comparable across step counts. Either model may be None (its figures are left out)."""
    from core.device import autocast
    from core.transport.sampler import DTYPES

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size} and {repeats}")
    low = DTYPES[dtype] if dtype != "float32" else None
    g = torch.Generator().manual_seed(seed)
    report: dict = {"batch_size": batch_size, "dtype": dtype, "repeats": repeats, "statistic": "median",
                    "compiled": bool(compiled), "threads": torch.get_num_threads()}
    latent_shape = None
    if vae is not None:
        device = torch.device(vae.device)
        latent_shape = tuple(vae.latent_shape(resolution))
        report.update(device=str(device), resolution=resolution, latent_shape=list(latent_shape), vae=str(vae.source))
        images = torch.rand(batch_size, vae.image_channels, resolution, resolution, generator=g) * 2 - 1
        with autocast(device, low):
            encode_s = _median_seconds(lambda: vae.encode(images, batch_size), repeats, device)
        report.update(encode_batch_s=round(encode_s, 5), encode_images_per_s=round(batch_size / encode_s, 2))
    if flow is not None:
        shape = tuple(int(s) for s in flow.config.latent_shape)
        if latent_shape is not None and shape != latent_shape:
            raise ValueError(f"the flow works on latents {shape}, the VAE makes {latent_shape} at {resolution} px; "
                             f"pass the --resolution the flow was trained at")
        device = next(flow.parameters()).device
        labels = torch.randint(0, int(flow.config.num_classes), (batch_size,), generator=g)
        config = SamplerConfig(solver="euler", steps=steps, cfg_scale=cfg_scale, seed=seed, dtype=dtype,
                               batch_size=batch_size)
        sample_s = _median_seconds(lambda: sample(flow, labels, None, config), repeats, device)
        report.setdefault("device", str(device))
        report.update(flow_latent_shape=list(shape), flow_kind=str(getattr(flow.config, "kind", "distill-studio/flow-mlp")),
                      sample_steps=steps, sample_solver="euler", sample_cfg_scale=cfg_scale, sample_nfe=config.nfe,
                      sample_batch_s=round(sample_s, 5), sample_images_per_s=round(batch_size / sample_s, 2),
                      sample_image_nfe_per_s=round(batch_size * config.nfe / sample_s, 2))
        latent_shape = latent_shape or shape
    if vae is not None:
        device = torch.device(vae.device)
        latents = torch.randn(batch_size, *latent_shape, generator=g)
        with autocast(device, low):
            decode_s = _median_seconds(lambda: vae.decode(latents, batch_size), repeats, device)
        report.update(decode_batch_s=round(decode_s, 5), decode_images_per_s=round(batch_size / decode_s, 2))
    return report


def w2_report(engine: DistillEngine, ipcs: list[int], seed: int = 0) -> dict:
    """Per class and IPC: W2 of the DDOQ-weighted vs the uniform (D4M) measure on the same centroids."""
    out = {}
    for ipc in ipcs:
        rows = quantize(engine.latents, list(range(engine.latents.num_classes)),
                        QuantizeConfig(method="ddoq", ipc=ipc, seed=seed, compute_w2=True))
        out[str(ipc)] = [{"class": engine.latents.class_names[q.label], "w2_weighted": round(q.w2_weighted, 4),
                          "w2_uniform": round(q.w2_uniform, 4), "e2": round(q.quantization_error, 4),
                          "reduction_pct": round(100 * (1 - q.w2_weighted / q.w2_uniform), 2)} for q in rows]
    return out


def landing_report(engine: DistillEngine, strengths: list[float], ipc: int = 10, seed: int = 0,
                   base: SamplerConfig | None = None) -> dict:
    """Mean / max landing error (latent RMS units) of PGFM at several constant λ on [0, t_stop]."""
    classes = list(range(engine.latents.num_classes))
    q = quantize(engine.latents, classes, QuantizeConfig(method="ddoq", ipc=ipc, seed=seed, compute_w2=False))
    prototypes = torch.cat([r.prototypes for r in q])
    labels = torch.tensor(classes).repeat_interleave(ipc)
    base = base or SamplerConfig(steps=8, seed=seed)
    out = {}
    for lam in strengths:
        for t_stop in (0.8, 1.0):
            config = replace(base, guidance=GuidanceConfig(strength=lam, schedule="constant", t_stop=t_stop))
            err = sample(engine.flow, labels, prototypes, config).landing_error
            out[f"lambda={lam},window=[0,{t_stop}]"] = {"mean": round(float(err.mean()), 5), "max": round(float(err.max()), 5)}
    return out


def solver_order_report(flow: torch.nn.Module, n: int = 16, steps: tuple[int, ...] = (8, 16, 32, 64, 128),
                        cfg_scale: float = 1.0, seed: int = 0, rtol: float = 1e-9) -> dict:
    """Error of each fixed-step solver against torchdiffeq dopri5 (rtol = atol = ``rtol``, float64), unguided.

    The observed order is log2(err(N) / err(2N)); it should approach the solver's nominal order.
    """
    from torchdiffeq import odeint

    from core.transport.path import cfg_velocity
    from core.transport.solvers import integrate

    model = flow.double() if next(flow.parameters()).dtype != torch.float64 else flow
    device = next(model.parameters()).device   # inputs on the model's device (noise drawn on the CPU from the seed)
    try:
        g = torch.Generator().manual_seed(seed)
        x0 = torch.randn(n, *model.config.latent_shape, generator=g, dtype=torch.float64).to(device)
        y = torch.arange(n, device=device) % model.config.num_classes

        def f(t, x):
            return cfg_velocity(model, x, float(t), y, cfg_scale)

        with torch.inference_mode():
            reference = odeint(f, x0, torch.tensor([0.0, 1.0], dtype=torch.float64, device=device), method="dopri5",
                               rtol=rtol, atol=rtol)[-1]
            out = {}
            for solver in SOLVERS:
                errors = []
                for s in steps:
                    x, _ = integrate(lambda x, t: f(t, x), x0, time_grid(s), solver)
                    errors.append(float((x - reference).flatten(1).norm(dim=1).mean() / np.sqrt(x0[0].numel())))
                orders = [round(float(np.log2(a / b)), 2) for a, b in zip(errors, errors[1:])]
                out[solver] = {"nominal_order": SOLVER_ORDER[solver], "steps": list(steps),
                               "rms_error": [float(f"{e:.3e}") for e in errors], "observed_order": orders}
    finally:
        flow.float()
    return out
