"""The real-scale path end to end on tiny random SD-shaped models, stage by stage, with throughput and peak memory.

Models: a diffusers AutoencoderKL shaped like Stable Diffusion's VAE (3 channels in, 4 latent channels, 8x
downsampling, scaling 0.18215, attention in the mid block) but with tiny widths, and a tiny SiT saved as a raw
``.pt`` (loaded as SiT-XL-2-256x256.pt would be). Data: an ImageFolder of random PNGs. Stages: encode (the
engine loader's encode, ``--encode-batch`` auto), quantize, sample (guided PGFM), decode (``--decode-batch``
auto, uint8), export (the atomic ImageFolder export), the bench-engine reports on the device, then the
``distill`` command itself on the device; without --tiny also a decode with SD's real widths (random weights)
to compare the per-image memory estimate with what CUDA allocates.

    python scripts/gpu_scale_check.py                       # cuda, 256 px, 320 images, 4 classes x IPC 10
    python scripts/gpu_scale_check.py --device cpu --tiny   # a few seconds on a CPU: 64 px, 24 images

Peak memory is ``torch.cuda.max_memory_allocated`` per stage on CUDA (reset before each); on a CPU the process's
peak RSS so far (it cannot be reset). Prints one line per stage and, with --json, writes the report.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {  # (resolution, images per class, classes, ipc, VAE widths, norm groups, SiT hidden / depth / heads, steps)
    "full": dict(resolution=256, per_class=80, classes=4, ipc=10, widths=(32, 64, 64, 64), groups=8,
                 hidden=64, depth=2, heads=2, steps=8),
    "tiny": dict(resolution=64, per_class=8, classes=3, ipc=2, widths=(8, 8, 8, 8), groups=4,
                 hidden=32, depth=1, heads=2, steps=2),
}
SD_WIDTHS = (128, 256, 512, 512)   # Stable Diffusion's VAE


def build_models(folder: Path, size: dict, seed: int = 0) -> tuple[Path, Path]:
    """A tiny SD-shaped AutoencoderKL (save_pretrained folder) and a tiny random SiT (.pt state dict)."""
    import torch
    from diffusers import AutoencoderKL

    from core.models.sit import SiT, SiTConfig

    torch.manual_seed(seed)
    n = len(size["widths"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=size["widths"],
                        layers_per_block=1, latent_channels=4, norm_num_groups=size["groups"],
                        sample_size=size["resolution"], scaling_factor=0.18215)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    sit = SiT(SiTConfig(input_size=size["resolution"] // 8, patch_size=2, in_channels=4, hidden_size=size["hidden"],
                        depth=size["depth"], num_heads=size["heads"], num_classes=size["classes"], learn_sigma=True))
    with torch.no_grad():  # SiT's init zeroes the output layer; random weights exercise the whole path
        for p in sit.parameters():
            p.normal_(0, 0.05)
    torch.save(sit.state_dict(), folder / "sit.pt")
    return folder / "vae", folder / "sit.pt"


def write_images(root: Path, size: dict, seed: int = 0) -> Path:
    """An ImageFolder ROOT/train/<class>/<i>.png of random RGB images at the resolution."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    r = size["resolution"]
    for c in range(size["classes"]):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(size["per_class"]):
            Image.fromarray(rng.integers(0, 256, (r, r, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return root


class Recorder:
    """Per-stage seconds, items/s and peak memory on ``device``."""

    def __init__(self, device):
        import torch

        self.device = torch.device(device)
        self.stages: dict[str, dict] = {}

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str, items: int, **extra):
        from core.device import peak_memory, reset_peak_memory

        self._sync()
        reset_peak_memory(self.device)
        base = self._allocated()
        t0 = time.perf_counter()
        yield
        self._sync()
        seconds = time.perf_counter() - t0
        peak, what = peak_memory(self.device)
        row = {"seconds": round(seconds, 4), "items": items, "items_per_s": round(items / max(seconds, 1e-9), 2),
               "peak_bytes": peak, "peak_above_start_bytes": max(0, peak - base) if base is not None else None,
               "peak_is": what, **extra}
        self.stages[name] = row
        more = "".join(f", {k} {v}" for k, v in extra.items())
        print(f"{name:<12} {seconds:8.3f} s  {row['items_per_s']:10.1f} items/s  peak {peak / 2**20:9.1f} MiB "
              f"({what}){more}", flush=True)

    def _allocated(self) -> int | None:
        import torch

        return int(torch.cuda.memory_allocated(self.device)) if self.device.type == "cuda" else None


def measured_executor(recorder: Recorder, decode_batch, n_images: int):
    """A LocalExecutor (uint8 images) that records quantize, sample and decode as stages."""
    from core.pipeline.distill import LocalExecutor

    class Measured(LocalExecutor):
        def quantize(self, *args, **kwargs):
            with recorder.stage("quantize", n_images):
                return super().quantize(*args, **kwargs)

        def sample(self, model, labels, *args, **kwargs):
            with recorder.stage("sample", len(labels)):
                return super().sample(model, labels, *args, **kwargs)

        def decode(self, vae, latents, precision="float32"):
            batch = self.decode_batch_size(vae, latents)
            res = int(latents.shape[-1]) * vae.downsample
            with recorder.stage("decode", len(latents), batch=batch, estimate_bytes_per_image=vae.image_bytes(res)):
                return super().decode(vae, latents, precision)

    return Measured(decode_batch, "uint8")


def sd_calibration(recorder: Recorder, resolution: int, batch: int = 8) -> None:
    """Decode ``batch`` latents with SD's real VAE widths (random weights): CUDA's peak per image vs the estimate."""
    import torch
    from diffusers import AutoencoderKL

    from core.models.vae import LatentAutoencoder

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=SD_WIDTHS, layers_per_block=2,
                        latent_channels=4, norm_num_groups=32, sample_size=resolution, scaling_factor=0.18215)
    ae = LatentAutoencoder(vae, "sd-shaped-random", recorder.device)
    z = torch.randn(batch, 4, resolution // 8, resolution // 8)
    images = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    ae.decode(z[:1], 1)  # warm-up (cuDNN algorithm choice)
    for name, run in (("sd-decode", ae.decode), ("sd-encode", ae.encode)):
        with recorder.stage(name, batch, batch=batch, estimate_bytes_per_image=ae.image_bytes(resolution)):
            run(z if name == "sd-decode" else images, batch)
        row = recorder.stages[name]
        if row["peak_above_start_bytes"] is not None:
            row["measured_bytes_per_image"] = row["peak_above_start_bytes"] // batch
            print(f"{'':<12} measured {row['measured_bytes_per_image'] / 2**20:.1f} MiB/image above the weights, "
                  f"estimate {row['estimate_bytes_per_image'] / 2**20:.1f} MiB/image", flush=True)


def run(device: str = "cuda", tiny: bool = False, out: Path | None = None, decode_batch="auto",
        encode_batch="auto", calibrate: bool | None = None) -> dict:
    """Every stage on ``device``; returns the report (stages, sizes, export folder)."""
    import torch

    from core.cli.main import main as cli
    from core.config import DistillConfig, GuidanceConfig, SamplerConfig
    from core.data.latent_cache import encode_dataset
    from core.data.splits import load_dataset
    from core.device import resolve_device
    from core.evaluation.reports import landing_report, solver_order_report
    from core.models.loading import load_flow_for, load_vae
    from core.models.spec import ModelSpec
    from core.pipeline.distill import DistillEngine, distill
    from core.pipeline.export import export_imagefolder

    where = resolve_device(device)
    size = SIZES["tiny" if tiny else "full"]
    out = Path(out or tempfile.mkdtemp(prefix="gpu-scale-check-"))
    out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(where)
    print(f"gpu_scale_check on {where}" + (f" ({torch.cuda.get_device_name(where)})" if where.type == "cuda" else "")
          + f": {size['classes']} classes x {size['per_class']} random images at {size['resolution']} px, VAE widths "
          f"{size['widths']}, SiT hidden {size['hidden']} depth {size['depth']}; work folder {out}", flush=True)
    vae_dir, sit = build_models(out / "models", size)
    root = write_images(out / "data", size)
    spec = ModelSpec(vae=str(vae_dir), flow=str(sit), diffusion=None, device=str(where), flow_num_heads=size["heads"])

    vae = load_vae(spec)
    data = load_dataset("imagefolder", "train", root, size["resolution"], 3)
    batch = vae.batch_size(encode_batch, size["resolution"])
    with recorder.stage("encode", len(data), batch=batch, estimate_bytes_per_image=vae.image_bytes(size["resolution"])):
        latents = encode_dataset(data, vae, out / "cache", batch, progress=lambda f, m: None)
    flow = load_flow_for(spec, latents.latent_shape, latents.num_classes)
    engine = DistillEngine(data, latents, vae, flow)
    config = DistillConfig(method="pgfm", ipc=size["ipc"], seed=0,
                           sampler=SamplerConfig(steps=size["steps"], cfg_scale=2.0, guidance=GuidanceConfig(0.5)))
    dset = distill(engine, config, measured_executor(recorder, decode_batch, len(data)))
    assert dset.images.dtype == torch.uint8 and len(dset) == size["classes"] * size["ipc"]
    with recorder.stage("export", len(dset)):
        folder = export_imagefolder(dset, out / "export")
    pngs = len(list(folder.glob("*/*.png")))
    assert pngs == len(dset), f"{pngs} PNGs for {len(dset)} images"
    with recorder.stage("bench-engine", 1):   # the reports of `bench-engine`, their inputs on the device
        landing_report(engine, [0.5], ipc=size["ipc"])
        solver_order_report(flow, n=4, steps=(2, 4) if tiny else (4, 8), rtol=1e-3 if tiny else 1e-5)
    args = ["distill", "--dataset", "imagefolder", "--data-dir", str(root), "--resolution", str(size["resolution"]),
            "--vae", str(vae_dir), "--flow", str(sit), "--flow-num-heads", str(size["heads"]), "--device", str(where),
            "--ipc", str(size["ipc"]), "--steps", str(size["steps"]), "--pool", "train", "--registry", "none",
            "--cache-dir", str(out / "cache"), "--decode-batch", str(decode_batch),
            "--encode-batch", str(encode_batch), "--out", str(out / "export-cli")]
    with recorder.stage("distill-cli", len(dset)):
        code = cli(args)
    assert code == 0, f"`python -m core {' '.join(args)}` exited with {code}"
    if calibrate if calibrate is not None else (where.type == "cuda" and not tiny):
        sd_calibration(recorder, size["resolution"])
    return {"device": str(where), "size": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
            "stages": recorder.stages, "export": str(folder), "images": len(dset), "work": str(out)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--tiny", action="store_true", help="small sizes (64 px, 24 images) that run in seconds on a CPU")
    p.add_argument("--out", default=None, help="work folder (default: a new temporary folder)")
    p.add_argument("--decode-batch", default="auto", help="as distill --decode-batch (default auto)")
    p.add_argument("--encode-batch", default="auto", help="as distill --encode-batch (default auto)")
    p.add_argument("--no-calibration", action="store_true", help="skip the decode with SD's real widths")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = p.parse_args(argv)
    from core.cli.options import batch_option

    report = run(args.device, args.tiny, Path(args.out) if args.out else None, batch_option(args.decode_batch),
                 batch_option(args.encode_batch), False if args.no_calibration else None)
    if args.json:
        from core.io import write_json

        write_json(args.json, report)
        print(f"report written to {args.json}")
    return report


if __name__ == "__main__":
    main()
