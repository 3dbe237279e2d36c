"""VAE wrapper over diffusers ``AutoencoderKL`` and the embedded tiny VAE.

Convention (DESIGN.md section 2): ``z = scaling_factor * (E(x) - shift_factor)`` with the posterior
mean; images are float in [-1, 1], shape (B, C, H, W); latents are (B, latent_channels, H/f, W/f).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from core.data.datasets import LabelledImages
from core.device import pick_device
from core.errors import CheckpointError
from core.reads import CONFIG_MAX_BYTES, read_json, require_finite_module, tensors_fingerprint

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
TRAINING_RECORD = "training.json"

# -- batch sizes of encode / decode --------------------------------------------------------------
AUTO = "auto"
MAX_AUTO_BATCH = 256            # the most images per VAE call "auto" picks (the former fixed batch)
CPU_BATCH_BUDGET = 2 << 30      # bytes of activations one VAE call may use on a CPU (or MPS)
CUDA_FREE_FRACTION = 0.5        # share of the GPU's free memory one VAE call may use
ACTIVATION_COPIES = 6           # full-resolution tensors of the first block's width alive at the peak


def vae_image_bytes(resolution: int, width: int, value_bytes: int = 4, attention_tokens: int = 0) -> int:
    """Estimated peak activation bytes per image of one AutoencoderKL encode or decode call.

    ``resolution``: image side in px; ``width``: channels of the VAE's first block (block_out_channels[0],
    128 for SD's VAE); ``value_bytes``: 4 for float32; ``attention_tokens``: latent pixels (h·w) when the mid
    block has attention (its token x token scores, two copies), else 0. The peak is ACTIVATION_COPIES (6)
    full-resolution tensors of ``width`` channels: counted on diffusers' AutoencoderKL, decode holds 6.0 of
    them at its peak and encode 4 to 5 (SD's VAE at 256 px: 192 MiB per image to decode)."""
    for name, value in (("resolution", resolution), ("width", width), ("value_bytes", value_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(attention_tokens, bool) or not isinstance(attention_tokens, int) or attention_tokens < 0:
        raise ValueError(f"attention_tokens must be an integer >= 0, got {attention_tokens!r}")
    return (ACTIVATION_COPIES * resolution * resolution * width + 2 * attention_tokens ** 2) * value_bytes


def auto_batch_size(image_bytes: int, budget_bytes: int, cap: int = MAX_AUTO_BATCH) -> int:
    """Images per VAE call: as many as ``budget_bytes`` holds at ``image_bytes`` each, at least 1, at most ``cap``."""
    if image_bytes < 1 or cap < 1:
        raise ValueError(f"image_bytes and cap must be >= 1, got {image_bytes} and {cap}")
    return int(max(1, min(cap, budget_bytes // image_bytes)))


def memory_budget(device: str | torch.device, free_bytes: int | None = None) -> int:
    """Bytes one VAE call may use on ``device``: CUDA_FREE_FRACTION of the free GPU memory (``free_bytes``, by
    default ``torch.cuda.mem_get_info``), CPU_BATCH_BUDGET on any other device."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH_BUDGET
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return int(CUDA_FREE_FRACTION * free_bytes)


def check_batch_option(value) -> str | int:
    """``value`` as a batch option: "auto" or an integer >= 1 (ValueError otherwise)."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"a batch size must be 'auto' or an integer >= 1, got {value!r}")
    return value


class LatentAutoencoder:
    """A frozen ``AutoencoderKL`` with the project's scaling convention and batched encode/decode."""

    def __init__(self, vae: AutoencoderKL, source: str = "", device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        vae = vae.to(device=device)
        if dtype != torch.float32:  # diffusers warns on any dtype cast, so cast only when asked to
            vae = vae.to(dtype=dtype)
        self.vae = vae.eval().requires_grad_(False)
        self.source = source
        self.device = torch.device(device)
        self.dtype = dtype
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: str = "auto", dtype: torch.dtype = torch.float32,
                        subfolder: str | None = None) -> "LatentAutoencoder":
        """Load from a local ``save_pretrained`` folder or a hub id (e.g. ``stabilityai/sd-vae-ft-mse``)."""
        local = Path(path_or_id)
        looks_local = local.exists() or str(path_or_id).startswith((".", "/")) or str(path_or_id).count("/") != 1
        config = local / (subfolder or "") / "config.json"
        if looks_local and not config.is_file():
            raise CheckpointError(
                f"{local}: no VAE here (expected config.json and {WEIGHTS_NAME} written by save_pretrained); "
                "re-create it with `python -m core train-vae --out DIR` or give a diffusers hub id")
        if looks_local:   # checked (size, nesting) before diffusers parses it
            read_json(config, CONFIG_MAX_BYTES)
        try:
            kwargs = {"subfolder": subfolder} if subfolder else {}
            vae = AutoencoderKL.from_pretrained(str(path_or_id), use_safetensors=True, low_cpu_mem_usage=False,
                                                **kwargs)
        except (OSError, ValueError, RuntimeError, EnvironmentError) as exc:
            raise CheckpointError(f"{path_or_id}: could not load an AutoencoderKL ({exc}); "
                                  "check the folder or hub id, or re-create it with `python -m core train-vae`") from exc
        require_finite_module(vae, path_or_id, "re-create it with `python -m core train-vae`")
        return cls(vae, str(path_or_id), pick_device(device), dtype)

    # -- convention ------------------------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(self.vae.config.shift_factor or 0.0)

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def check_input(self, resolution: int, channels: int | None = None) -> None:
        """Refuse, before any image is read, images this VAE cannot encode: a size that is not a multiple of
        its downsampling factor, or another number of channels."""
        if channels is not None and channels != self.image_channels:
            raise ValueError(f"the VAE takes {self.image_channels}-channel images; --channels is {channels} (give "
                             f"--channels {self.image_channels}, or a VAE of {channels}-channel images with --vae)")
        if resolution % self.downsample:
            nearest = self.downsample * max(1, round(resolution / self.downsample))
            raise ValueError(f"--resolution {resolution} is not divisible by the VAE's downsampling factor "
                             f"{self.downsample}; use a multiple of it (e.g. {nearest})")

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        f = self.downsample
        return (int(self.vae.config.latent_channels), resolution // f, resolution // f)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the weights and config: the key of every cache derived from this VAE."""
        if self._fingerprint is None:
            config = {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")}
            self._fingerprint = tensors_fingerprint(self.vae.state_dict(),
                                                    extra=json.dumps(config, sort_keys=True, default=str))
        return self._fingerprint

    # -- encode / decode -------------------------------------------------------------------------
    def image_bytes(self, resolution: int) -> int:
        """Estimated peak activation bytes per image of an encode or decode at ``resolution`` px (``vae_image_bytes``)."""
        config = self.vae.config
        tokens = (resolution // self.downsample) ** 2 if getattr(config, "mid_block_add_attention", True) else 0
        value_bytes = torch.empty(0, dtype=self.dtype).element_size()
        return vae_image_bytes(int(resolution), int(config.block_out_channels[0]), value_bytes, tokens)

    def batch_size(self, option: str | int, resolution: int, free_bytes: int | None = None) -> int:
        """Images per encode / decode call for a batch ``option``: an integer as it is; "auto": as many as
        ``memory_budget(self.device, free_bytes)`` holds at ``image_bytes(resolution)`` each, in [1, 256]."""
        option = check_batch_option(option)
        if option != AUTO:
            return option
        return auto_batch_size(self.image_bytes(resolution), memory_budget(self.device, free_bytes))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, batch_size: int | str = AUTO) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) -> scaled posterior-mean latents, float32 on CPU; ``batch_size``
        images per VAE call, "auto": from the resolution and the free memory (``batch_size``)."""
        self._check_images(images)
        batch_size = self.batch_size(batch_size, int(images.shape[-1]))
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(self.device, self.dtype)
            mean = self.vae.encode(x).latent_dist.mean
            out.append(((mean - self.shift_factor) * self.scaling_factor).float().cpu())
        return torch.cat(out) if out else torch.empty(0, *self.latent_shape(images.shape[-1]))

    def decode_with_grad(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images in [-1, 1] on the VAE's device, in one call, differentiable in the
        latents (the decoder's weights stay frozen): what a refinement through the decoder optimises."""
        z = latents.to(self.device, self.dtype)
        return self.vae.decode(z / self.scaling_factor + self.shift_factor).sample.float().clamp(-1, 1)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, batch_size: int | str = AUTO, precision: str = "float32") -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images in [-1, 1], float32 on CPU. ``batch_size``: latents per VAE
        call ("auto": from the resolution and the free memory); ``precision``: ``float32``, or
        ``bfloat16`` / ``float16`` autocast of the decoder (a distillation's model precision)."""
        expected = int(self.vae.config.latent_channels)
        if latents.ndim != 4 or latents.shape[1] != expected:
            raise ValueError(f"latents must have shape (B, {expected}, h, w), got {tuple(latents.shape)}")
        if precision == "float16":   # an SD-VAE decoder overflows it: refused, whatever named the VAE
            from core.device import check_decode_precision

            check_decode_precision(precision, dict(self.vae.config), f"VAE {self.source}")
        batch_size = self.batch_size(batch_size, int(latents.shape[-1]) * self.downsample)
        amp = (torch.autocast(self.device.type, dtype=getattr(torch, precision)) if precision != "float32"
               else contextlib.nullcontext())
        out = []
        for start in range(0, len(latents), batch_size):
            z = latents[start:start + batch_size].to(self.device, self.dtype)
            with amp:
                x = self.vae.decode(z / self.scaling_factor + self.shift_factor).sample
            out.append(x.float().clamp_(-1, 1).cpu())
        return torch.cat(out) if out else torch.empty(0)

    def _check_images(self, images: torch.Tensor) -> None:
        c = self.image_channels
        if images.ndim != 4 or images.shape[1] != c:
            raise ValueError(f"images must have shape (B, {c}, H, W), got {tuple(images.shape)}")
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise ValueError(f"image size {tuple(images.shape[-2:])} must be divisible by {self.downsample}")


# -------------------------------------------------------------------------------------------------
# The embedded tiny VAE
# -------------------------------------------------------------------------------------------------

@dataclass
class TinyVAEConfig:
    """Training configuration of the embedded VAE (1 x 32 x 32 -> 4 x 8 x 8)."""

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    epochs: float = 4.0
    batch_size: int = 64
    lr: float = 2e-3
    kl_weight: float = 1e-6
    seed: int = 0
    threads: int = 0  # 0: torch's default
    train_split: str = "train-minus-val"   # the validation split held out (DESIGN.md 4b); "train": all images
    dataset: str = "fashion-mnist"         # or "imagefolder" (core.data.splits: ROOT/train, val, test)
    resolution: int = 32                   # imagefolder: image size (Fashion-MNIST is 32, padded)
    channels: int = 1                      # imagefolder: 1 or 3
    test_dir: str | None = None            # imagefolder: the test split's folder (default ROOT/test, else ROOT/val)


def vae_widths(resolution: int) -> tuple[int, ...]:
    """Encoder block widths for images of ``resolution`` px: one block per halving down to an 8x8 latent
    (16 px: 2 blocks, 32 px: 3 — the embedded VAE's (16, 32, 32) —, 64 px: 4, 128 px: 5)."""
    if resolution < 16 or resolution & (resolution - 1):
        raise ValueError(f"train-vae builds VAEs for power-of-two resolutions of at least 16 px, got {resolution} "
                         "(for other sizes give a pretrained VAE with --vae)")
    return (16,) + (32,) * (resolution.bit_length() - 4)


def build_tiny_vae(config: TinyVAEConfig, in_channels: int = 1, sample_size: int = 32) -> AutoencoderKL:
    n = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
        sample_size=sample_size, mid_block_add_attention=False, scaling_factor=1.0, shift_factor=0.0,
    )


def psnr_db(reference: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """PSNR in dB on [0, 1] images of the whole set: 10 log10(1 / MSE), inputs in [-1, 1]."""
    mse = F.mse_loss((reconstruction + 1) / 2, (reference + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def measure_vae(ae: LatentAutoencoder, test: LabelledImages, batch_size: int = 256,
                limit: int | None = None) -> dict[str, float]:
    """Test-set PSNR (dB, [0,1] images), encode and decode throughput (images/s) on ae.device."""
    n = len(test) if limit is None else min(limit, len(test))
    images = test.batch(slice(0, n))
    ae.encode(images[:batch_size], batch_size)  # warm-up
    t0 = time.perf_counter()
    latents = ae.encode(images, batch_size)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    recon = ae.decode(latents, batch_size)
    t_dec = time.perf_counter() - t0
    return {
        "test_psnr_db": round(psnr_db(images, recon), 3),
        "encode_images_per_s": round(n / t_enc, 1),
        "decode_images_per_s": round(n / t_dec, 1),
        "latent_mean": round(float(latents.mean()), 4),
        "latent_std": round(float(latents.std()), 4),
        "images": n,
        "threads": torch.get_num_threads(),
        "device": str(ae.device),
    }
