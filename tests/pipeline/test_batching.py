"""Batch sizes of encode / decode ("auto" from the resolution and the free memory), uint8 decoding, the export of
a uint8 set, and the peak-memory line of the commands."""
import argparse

import numpy as np
import pytest
import torch

from core.config import DEFAULT_PGFM_GUIDANCE, DistillConfig, SamplerConfig
from core.models.vae import (
    CPU_BATCH_BUDGET,
    MAX_AUTO_BATCH,
    LatentAutoencoder,
    auto_batch_size,
    check_batch_option,
    memory_budget,
    vae_image_bytes,
)
from core.pipeline.distill import LocalExecutor, decode_pixels, distill, to_pixels
from core.pipeline.export import export_imagefolder, export_zip_bytes

MiB = 2**20
SD_WIDTHS = (128, 256, 512, 512)


def _sd_shaped_on_meta() -> LatentAutoencoder:
    """Stable Diffusion's VAE architecture, weightless (meta device): enough for its memory estimate."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=SD_WIDTHS,
                            layers_per_block=2, latent_channels=4, norm_num_groups=32, scaling_factor=0.18215)
    return LatentAutoencoder(vae, "sd-shaped", "meta")


def test_image_bytes_estimate_matches_the_sd_decoder_figure():
    # 6 full-resolution tensors of 128 channels in float32 + the mid block's 1024 x 1024 attention scores
    assert vae_image_bytes(256, 128, 4, 32 * 32) == 6 * 256 * 256 * 128 * 4 + 2 * 1024**2 * 4 == 200 * MiB
    assert vae_image_bytes(512, 128) == 4 * vae_image_bytes(256, 128)
    assert vae_image_bytes(256, 128, value_bytes=2) == vae_image_bytes(256, 128) // 2
    for bad in (dict(resolution=0, width=8), dict(resolution=32, width=0), dict(resolution=32.0, width=8),
                dict(resolution=32, width=8, attention_tokens=-1)):
        with pytest.raises(ValueError, match="must be an integer"):
            vae_image_bytes(**bad)
    sd = _sd_shaped_on_meta()
    assert sd.image_bytes(256) == 200 * MiB and sd.downsample == 8


def test_auto_batch_size_fits_the_budget_and_stays_in_range():
    assert auto_batch_size(200 * MiB, CPU_BATCH_BUDGET) == 10             # SD at 256 px on a CPU
    assert auto_batch_size(200 * MiB, int(0.5 * 140 * 2**30)) == MAX_AUTO_BATCH == 256  # an H200: capped
    assert auto_batch_size(200 * MiB, 10 * MiB) == 1                      # never 0
    assert auto_batch_size(1, 2**40, cap=7) == 7
    with pytest.raises(ValueError):
        auto_batch_size(0, 1)


def test_memory_budget_uses_the_free_gpu_memory_on_cuda(monkeypatch):
    assert memory_budget("cpu") == memory_budget("meta") == CPU_BATCH_BUDGET
    assert memory_budget("cuda:0", free_bytes=80 * 2**30) == 40 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**30, 80 * 2**30))
    assert memory_budget(torch.device("cuda", 1)) == 5 * 2**30


def test_vae_batch_size_option(tiny_vae):
    assert tiny_vae.batch_size("auto", 32) == MAX_AUTO_BATCH   # the embedded sizes keep the former 256
    assert tiny_vae.batch_size(7, 32) == 7
    sd = _sd_shaped_on_meta()
    assert sd.batch_size("auto", 256) == 10 and sd.batch_size("auto", 512) == 2 and sd.batch_size("auto", 2048) == 1
    for bad in (0, -1, "8", 2.5, True, None):
        with pytest.raises(ValueError, match="'auto' or an integer >= 1"):
            check_batch_option(bad)


def test_cli_batch_option_parses_auto_and_integers():
    from core.cli.options import add_batch_options, batch_option

    assert batch_option("auto") == "auto" and batch_option("AUTO") == "auto" and batch_option("12") == 12
    for bad in ("0", "-3", "many", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="'auto' or an integer >= 1"):
            batch_option(bad)
    p = argparse.ArgumentParser()
    add_batch_options(p, encode_aliases=("--batch-size",))
    args = p.parse_args([])
    assert (args.encode_batch, args.decode_batch) == ("auto", "auto")
    assert p.parse_args(["--batch-size", "4", "--decode-batch", "3"]).encode_batch == 4


def test_commands_have_the_batch_options():
    from core.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    distill_args = commands["distill"].parse_args(["--out", "x"])
    assert (distill_args.encode_batch, distill_args.decode_batch) == ("auto", "auto")
    encode_args = commands["encode"].parse_args(["--encode-batch", "16"])
    assert encode_args.encode_batch == 16 and not hasattr(encode_args, "decode_batch")
    assert commands["encode"].parse_args(["--batch-size", "5"]).encode_batch == 5   # the former name still works


def test_decode_pixels_converts_batch_by_batch(tiny_vae, monkeypatch):
    latents = torch.randn(7, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = to_pixels(tiny_vae.decode(latents, 3))
    sizes = []
    decode = tiny_vae.decode
    monkeypatch.setattr(tiny_vae, "decode", lambda z, *a, **k: sizes.append(len(z)) or decode(z, *a, **k))
    pixels = decode_pixels(tiny_vae, latents, 3)
    assert pixels.dtype == torch.uint8 and pixels.shape == (7, 1, 32, 32) and torch.equal(pixels, expected)
    assert sizes == [3, 3, 1]   # never the whole set as float32
    assert decode_pixels(tiny_vae, latents[:0], 3).shape[0] == 0


def test_decode_pixels_refuses_a_decoder_that_gives_nan(tiny_vae, monkeypatch):
    """Cast to uint8, NaN would pass for black pixels: the decoded floats are checked first."""
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    decode = tiny_vae.decode

    def overflowing(z, *args, **kwargs):
        images = decode(z, *args, **kwargs).clone()
        images[-1, 0, 0, 0] = float("nan")   # the last image of every batch
        return images

    monkeypatch.setattr(tiny_vae, "decode", overflowing)
    with pytest.raises(ValueError, match=r"non-finite images \(rows \[1\]\) at precision float32"):
        decode_pixels(tiny_vae, latents, 2)


def test_float16_decoding_is_refused_for_a_stable_diffusion_vae_config(tiny_vae, monkeypatch):
    monkeypatch.setitem(tiny_vae.vae.config, "block_out_channels", (128, 256, 512, 512))
    with pytest.raises(ValueError, match="float16 decoding refused"):
        tiny_vae.decode(torch.zeros(1, 4, 8, 8), 1, "float16")


def test_a_uint8_set_exports_the_same_files_as_the_float_set(engine, tmp_path):
    config = DistillConfig(method="pgfm", ipc=2, seed=3, sampler=SamplerConfig(steps=3, guidance=DEFAULT_PGFM_GUIDANCE))
    floats = distill(engine, config, LocalExecutor(2))
    pixels = distill(engine, config, LocalExecutor(2, "uint8"))
    a, b = export_imagefolder(floats, tmp_path / "a"), export_imagefolder(pixels, tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == len(floats) and files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "latents.safetensors").read_bytes() == (b / "latents.safetensors").read_bytes()
    assert len(export_zip_bytes(pixels, selection=[0, 3])) > 0
    pixels.images = None   # what a rank other than 0 holds
    with pytest.raises(ValueError, match="holds no images"):
        export_imagefolder(pixels, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_export_still_refuses_non_finite_float_images(engine, tmp_path):
    config = DistillConfig(method="d4m", ipc=2, seed=0)
    dset = distill(engine, config)
    dset.images = dset.images.clone()
    dset.images[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1 of 6 images have NaN or infinite images \(ids \[3\]\)"):
        export_imagefolder(dset, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_peak_memory_line():
    from core.device import describe_peak_memory, peak_memory, reset_peak_memory

    used, what = peak_memory("cpu")
    reset_peak_memory("cpu")  # a no-op on a CPU
    assert used > 10 * MiB and what == "peak RSS of this process"
    assert describe_peak_memory("cpu").startswith("peak memory ") and "GiB (peak RSS" in describe_peak_memory("cpu")
    assert np.isfinite(used)
