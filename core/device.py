"""Device, precision and compilation choices, in one place for training, sampling and benchmarks.

- ``resolve_device("auto")``: cuda, then mps, then cpu; a named device is checked to exist.
- ``resolve_precision(name, device)``: ``auto`` / ``fp32`` / ``bf16`` / ``fp16`` -> the autocast dtype
  (None: plain float32). ``auto`` is bf16 on a CUDA GPU that supports it, fp16 on an older one, float32
  elsewhere (CPU training stays float32 by default, as the shipped models were trained). bf16 on a CPU is
  allowed only where oneDNN reports bf16 support (AVX512-BF16 / AMX); fp16 on a CPU runs but is slow.
- ``autocast(device, dtype)``: ``torch.autocast`` for a reduced dtype, a null context for float32. Weights
  and optimiser state stay float32 (mixed precision); only the autocast-eligible ops run in the low dtype.
- ``grad_scaler(device, dtype)``: a ``torch.amp.GradScaler`` that is enabled for fp16 only (bf16 has
  float32's exponent range and needs none); a disabled scaler passes everything through unchanged.
- ``maybe_compile(module)``: ``module.compile()`` in place (state-dict keys unchanged) where torch.compile can
  work, a warning and no change where it cannot.
- Outside training: ``configure_device(device, allow_tf32)`` (TF32 matmuls / convolutions on CUDA, default on;
  returns the manifest record), ``resolve_sampler_dtype("auto", device)`` (bf16 sampling and decoding on a
  CUDA GPU with bf16, float32 elsewhere), ``check_decode_precision`` (float16 is refused for an SD-VAE decode,
  whose activations overflow it).
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# the sampler's spelling (SamplerConfig.dtype, --dtype) -> the training spelling
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
COMPILE_BACKEND_ENV = "DISTILL_STUDIO_COMPILE_BACKEND"  # e.g. "eager" to check the code path without codegen


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; otherwise the named device (checked to exist)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch.device for a ``--device`` value: ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda``, ``cuda:N``."""
    if isinstance(name, torch.device):
        return pick_device(str(name))
    try:
        return pick_device(str(name).strip() or "auto")
    except RuntimeError as exc:  # torch.device("gpu") and the like
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc


def cpu_bf16_supported() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":   # native bf16 (compute capability 8.0, Ampere, and later), not emulated
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return cpu_bf16_supported()
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: float32 throughout).

    ``auto``: bf16 on CUDA where supported (Ampere and later), else fp16 on CUDA; float32 on CPU and MPS.
    ``bf16`` on a CPU without native bf16, or any reduced precision on MPS, raises ValueError."""
    precision = DTYPE_NAMES.get(precision, precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype = _PRECISION_DTYPES[precision]
    if dtype is None:
        return None
    if device.type == "mps":
        raise ValueError(f"precision {precision} is not supported on MPS here; use fp32")
    if dtype == torch.bfloat16 and not bf16_supported(device):
        where = "this CPU has no native bf16 (AVX512-BF16 / AMX)" if device.type == "cpu" else "this GPU has no bf16"
        raise ValueError(f"precision bf16 requested but {where}; use fp32{' or fp16' if device.type == 'cuda' else ''}")
    return dtype


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device`` (bf16 / fp16), or a null context for float32 / None."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only; disabled it is a pass-through (scale, unscale_, step, update)."""
    device = torch.device(device)
    enabled = dtype == torch.float16 and device.type in ("cuda", "cpu")
    return torch.amp.GradScaler(device.type if device.type in ("cuda", "cpu") else "cpu", enabled=enabled)


def configure_device(device: torch.device | str, allow_tf32: bool = True) -> dict:
    """TF32 for float32 matmuls and convolutions on CUDA (Ampere and later: tensor cores with a 10-bit mantissa,
    about 1e-3 relative error per product; SiT's training script sets it), or not.

    On a CUDA ``device`` sets ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``
    to ``allow_tf32`` (process-wide flags); elsewhere touches nothing. Returns the record for a run's manifest:
    ``{"device": str, "tf32": bool}`` (tf32 is True only where it is in effect: CUDA and allowed)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
        torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    return {"device": str(device), "tf32": device.type == "cuda" and bool(allow_tf32)}


# AutoencoderKL block widths of the Stable Diffusion VAE family (SD 1/2, SDXL, SD3 and FLUX's 16-channel one)
SD_VAE_BLOCKS = (128, 256, 512, 512)


def fp16_decode_risk(vae_config: dict | None) -> str | None:
    """Why a float16 decode with this ``AutoencoderKL`` config would overflow (None: not known to).

    The SD-VAE family's decoder (``block_out_channels`` (128, 256, 512, 512)) has activations beyond float16's
    range (65504) at 256 px and up, which become inf / NaN images; diffusers upcasts it (``force_upcast``).
    A config with ``force_upcast: false`` (e.g. madebyollin/sdxl-vae-fp16-fix, retrained to stay in range)
    is not flagged, nor are the project's small VAEs."""
    if not vae_config:
        return None
    blocks = tuple(int(b) for b in (vae_config.get("block_out_channels") or ()))
    if blocks == SD_VAE_BLOCKS and vae_config.get("force_upcast", True) is not False:
        return ("a Stable Diffusion VAE decoder (block_out_channels 128/256/512/512) overflows float16 "
                "(inf / NaN pixels)")
    return None


def check_decode_precision(precision: str, vae_config: dict | None, name: str = "VAE") -> None:
    """Refuse a float16 VAE decode where ``fp16_decode_risk`` names a reason (ValueError, before any work).
    ``precision``: a sampler dtype (``core.config.SAMPLER_DTYPES``) or its training spelling (fp16, bf16, fp32)."""
    if DTYPE_NAMES.get(precision, precision) != "fp16":
        return
    reason = fp16_decode_risk(vae_config)
    if reason is not None:
        raise ValueError(f"{name}: float16 decoding refused: {reason}; use bfloat16 (float32's exponent range, on "
                         f"GPUs that have it) or float32")


def resolve_sampler_dtype(name: str, device: torch.device | str) -> str:
    """A sampler precision option -> a ``core.config.SAMPLER_DTYPES`` name. ``auto``: bfloat16 on a CUDA GPU with
    bf16 (Ampere and later), float32 elsewhere (CPU results stay those of the shipped benchmarks); a dtype
    name is returned as given. ValueError for anything else."""
    from core.config import SAMPLER_DTYPES

    if name == "auto":
        device = torch.device(device)
        return "bfloat16" if device.type == "cuda" and bf16_supported(device) else "float32"
    if name not in SAMPLER_DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(SAMPLER_DTYPES)}, got {name!r}")
    return name


def compile_unavailable_reason(device: torch.device | str = "cpu", backend: str | None = None) -> str | None:
    """Why ``torch.compile`` cannot work here (None: it can). Checked: torch.compile exists, the Python
    version is supported by this torch, and inductor has its compiler (a C++ compiler for CPU code,
    triton for CUDA code)."""
    backend = backend or os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        importlib.import_module("torch._dynamo")
    except Exception as exc:  # noqa: BLE001 - any import failure means no compile
        return f"torch._dynamo cannot be imported ({exc})"
    if sys.platform == "win32" and backend == "inductor":
        return "inductor is not supported on Windows by this torch"
    if backend != "inductor":
        return None
    device = torch.device(device)
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed (inductor needs it for CUDA code)"
    elif device.type == "cpu":
        if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            return "no C++ compiler (g++ / clang++) on PATH (inductor needs one for CPU code)"
    elif device.type == "mps":
        return None
    return None


def maybe_compile(module: torch.nn.Module, device: torch.device | str = "cpu", enabled: bool = True,
                  backend: str | None = None, mode: str | None = None) -> bool:
    """Compile ``module`` in place with ``torch.compile`` (``module.compile()``: attributes, parameters and
    state-dict keys stay as they are); returns True when compiled. Where compile is unavailable it warns
    and leaves the module unchanged. ``backend``: default ``$DISTILL_STUDIO_COMPILE_BACKEND`` or inductor.
    The first calls after compiling are slow (tracing and code generation; again for each new batch shape)."""
    if not enabled:
        return False
    backend = backend or os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
    reason = compile_unavailable_reason(device, backend)
    if reason is not None:
        warnings.warn(f"--compile ignored: {reason}; running uncompiled", RuntimeWarning, stacklevel=2)
        return False
    kwargs = {"backend": backend}
    if mode is not None:
        kwargs["mode"] = mode
    module.compile(**kwargs)
    return True


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG and return a CPU generator seeded the same way."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def fast_model_dtype(device: str = "cpu") -> str:
    """The sampler precision (core.config.SAMPLER_DTYPES) an interactive session should use on ``device``:
    bfloat16 where it runs natively (about half the time of a float32 step on an AVX512-BF16 CPU), else float32."""
    return "bfloat16" if bf16_supported(torch.device(device)) else "float32"


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak for ``peak_memory`` on a CUDA device (a no-op elsewhere: a process's peak RSS cannot be reset)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> tuple[int, str]:
    """(bytes, what they are): ``torch.cuda.max_memory_allocated`` on a CUDA device, else this process's peak
    resident set size (``resource.getrusage``; 0 where the platform has no such figure)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), f"CUDA max allocated on {device}"
    try:
        import resource
    except ImportError:  # Windows
        return 0, "peak RSS (unknown on this platform)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "peak RSS of this process"


def describe_peak_memory(device: torch.device | str) -> str:
    """'peak memory 1.23 GiB (CUDA max allocated on cuda:0)': a line for a command's log."""
    used, what = peak_memory(device)
    return f"peak memory {used / 2**30:.2f} GiB ({what})"
