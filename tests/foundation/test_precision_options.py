"""Reduced precision outside training (core.device): TF32 on CUDA, the sampler's ``auto`` precision, and the
refusal of float16 for a Stable Diffusion VAE decode. Pure or flag-only: runs without a GPU."""
from __future__ import annotations

import pytest
import torch

from core.config import SAMPLER_DTYPE_OPTIONS, SAMPLER_DTYPES
from core.device import (
    check_decode_precision,
    configure_device,
    fp16_decode_risk,
    resolve_sampler_dtype,
)

# the relevant keys of stabilityai/sd-vae-ft-ema's config.json (SDXL's and SD3's share the block widths)
SD_VAE = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "latent_channels": 4,
          "scaling_factor": 0.18215, "force_upcast": True}
TINY_VAE = {"_class_name": "AutoencoderKL", "block_out_channels": [16, 32, 32], "latent_channels": 4,
            "force_upcast": True}


@pytest.fixture
def restore_tf32():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_tf32_is_set_on_cuda_only_and_recorded(restore_tf32):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    assert configure_device("cpu") == {"device": "cpu", "tf32": False}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before   # untouched
    # the flags are plain process settings: a CUDA device object sets them even where no GPU is present
    assert configure_device(torch.device("cuda"), allow_tf32=False) == {"device": "cuda", "tf32": False}
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert configure_device(torch.device("cuda:0")) == {"device": "cuda:0", "tf32": True}   # default on
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_sampler_precision_auto_is_resolved_per_device():
    assert SAMPLER_DTYPE_OPTIONS == ("auto",) + SAMPLER_DTYPES
    assert resolve_sampler_dtype("auto", "cpu") == "float32"   # CPU results stay those of the benchmarks
    for name in SAMPLER_DTYPES:
        assert resolve_sampler_dtype(name, "cpu") == name
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        resolve_sampler_dtype("fp8", "cpu")


def test_float16_decode_of_an_sd_vae_is_refused():
    assert "overflows float16" in fp16_decode_risk(SD_VAE)
    assert fp16_decode_risk({**SD_VAE, "force_upcast": False}) is None   # e.g. sdxl-vae-fp16-fix
    assert fp16_decode_risk(TINY_VAE) is None and fp16_decode_risk(None) is None
    for spelling in ("float16", "fp16"):
        with pytest.raises(ValueError, match="float16 decoding refused: a Stable Diffusion VAE.*use bfloat16"):
            check_decode_precision(spelling, SD_VAE, "stabilityai/sd-vae-ft-ema")
    for ok in ("float32", "bfloat16", "bf16"):
        check_decode_precision(ok, SD_VAE)
    check_decode_precision("float16", TINY_VAE)   # the project's small VAEs decode in float16 as before
