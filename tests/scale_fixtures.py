"""Tiny stand-ins for real-scale models and data, saved the way real ones are: an SD-VAE-shaped AutoencoderKL
(3x256x256 -> 4x32x32, scaling 0.18215), an ImageFolder of WordNet-id class folders, SiT checkpoints, and
the latent store the CLI encodes from them (shared by the CLI and app tests)."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.cli.main import main

REPO = Path(__file__).resolve().parent.parent
WNIDS = ("n01440764", "n02102040", "n02979186")       # ImageNette's first three: tench, English springer, ...
NAMES = ("tench", "English springer", "cassette player")
PER_CLASS = 4
SIZES = ((256, 256), (300, 256), (256, 320), (288, 288))  # (w, h)
SIT = dict(input_size=32, patch_size=4, in_channels=4, hidden_size=32, depth=1, num_heads=2, learn_sigma=True)


def _random_sit(num_classes: int, seed: int = 0):
    from core.models.sit import SiT, SiTConfig

    torch.manual_seed(seed)
    model = SiT(SiTConfig(num_classes=num_classes, **SIT))
    with torch.no_grad():  # SiT's own init zeroes the output layer; random weights exercise the whole path
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def _tiny_sd_vae(folder: Path, seed: int = 0) -> Path:
    """A random AutoencoderKL shaped like SD's VAE (3 channels in, 4 latent channels, 8x down, 0.18215)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=256,
                        scaling_factor=0.18215)
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def scale(tmp_path_factory) -> SimpleNamespace:
    """Tiny models and data saved the way real ones are, and the latent store encoded from them by the CLI."""
    root = tmp_path_factory.mktemp("scale")
    rng = np.random.default_rng(0)
    data = root / "imagenette-mini" / "train"
    for c, wnid in enumerate(WNIDS):
        (data / wnid).mkdir(parents=True)
        for i in range(PER_CLASS):
            w, h = SIZES[(i + c) % len(SIZES)]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / wnid / f"{wnid}_{i}.{'JPEG' if i % 2 else 'png'}")
    vae = _tiny_sd_vae(root / "tiny-sd-vae")
    sit = root / "tiny-sit.pt"
    torch.save(_random_sit(3).state_dict(), sit)
    sit5 = root / "tiny-sit-5.safetensors"  # 5 classes, heads in the metadata: used through a class map
    save_file({k: v.contiguous() for k, v in _random_sit(5, seed=1).state_dict().items()}, str(sit5),
              metadata={"num_heads": "2"})
    store = root / "store"
    code = main(["encode", "--dataset", "imagefolder", "--data-dir", str(data.parent), "--classes", ",".join(WNIDS),
                 "--resolution", "256", "--vae", str(vae), "--store", str(store), "--shard-size", "5",
                 "--batch-size", "4", "--threads", "2"])
    assert code == 0
    return SimpleNamespace(root=root, data=data.parent, vae=vae, sit=sit, sit5=sit5, store=store)


