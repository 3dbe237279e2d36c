"""Student protocols (hard, hard-dsa, soft, soft-online) and the DSA augmentation of the reference code's
single mode: one policy per batch, parameters per image, the reference's ranges."""
import numpy as np
import pytest
import torch

import core.data.augment as augment
from core.config import PROTOCOLS
from core.data.datasets import LabelledImages
from core.data.augment import POLICIES, dsa_augment
from core.evaluation.students import EvalConfig, evaluate_set, protocol_config


def batch(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_one_policy_is_drawn_per_batch_and_every_policy_occurs(monkeypatch):
    calls = []
    for name in POLICIES:
        monkeypatch.setitem(augment.TRANSFORMS, name, lambda x, g, name=name: (calls.append(name), x)[1])
    g = torch.Generator().manual_seed(0)
    for k in range(120):
        before = len(calls)
        dsa_augment(batch(), g)
        assert len(calls) == before + 1
    counts = {p: calls.count(p) for p in POLICIES}
    assert all(5 < c < 40 for c in counts.values()), counts


def test_flip_crop_and_cutout_follow_the_reference():
    x, g = batch(), torch.Generator().manual_seed(1)
    flipped = dsa_augment(x, g, "flip")
    for a, b in zip(flipped, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(2))
    cut = dsa_augment(x, g, "cutout")
    holes = (cut != x).sum((1, 2, 3))
    assert (holes > 0).all() and (holes <= 16 * 16).all()  # one square of round(0.5 * 32) pixels, clipped
    assert torch.equal(cut[cut != x], torch.zeros(int(holes.sum())))
    shifted = dsa_augment(x, g, "crop")
    for a, b in zip(shifted, x):  # an integer translation of at most round(0.125 * 32) = 4 pixels, zeros shifted in
        assert any(torch.equal(a, _shift(b, dy, dx)) for dy in range(-4, 5) for dx in range(-4, 5))


def _shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(0, -dy):min(h, h - dy), max(0, -dx):min(w, w - dx)] = \
        image[..., max(0, dy):min(h, h + dy), max(0, dx):min(w, w + dx)]
    return out


def test_colour_scale_and_rotate_ranges():
    x, g = batch(64), torch.Generator().manual_seed(2)
    flat = torch.full((64, 1, 32, 32), 0.25)
    bright = dsa_augment(flat, g, "color")  # one channel: brightness ±0.5, saturation is a no-op, contrast keeps flat
    shift = bright[:, 0, 0, 0] - 0.25
    assert (shift.abs() <= 0.5 + 1e-6).all() and shift.std() > 0.1
    assert torch.allclose(bright, bright[:, :, :1, :1].expand_as(bright))
    for policy in ("scale", "rotate"):
        warped = dsa_augment(x, g, policy)
        assert warped.shape == x.shape and not torch.equal(warped, x) and torch.isfinite(warped).all()
    assert torch.equal(dsa_augment(x, torch.Generator().manual_seed(3)), dsa_augment(x, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="DSA policy must be one of"):
        dsa_augment(x, g, "noise")


def test_protocol_names_and_configs():
    assert EvalConfig().protocol == "hard"
    for name in PROTOCOLS:
        config = protocol_config(name, epochs=2)
        assert config.protocol == name and config.epochs == 2
    assert protocol_config("soft-online").relabel and protocol_config("hard-dsa").augment == "dsa"
    assert EvalConfig(labels="soft", augment="dsa").protocol == "custom"
    with pytest.raises(ValueError, match="relabel .* needs labels='soft'"):
        EvalConfig(relabel=True)
    with pytest.raises(ValueError, match="protocol must be one of"):
        protocol_config("soft-dsa")


def test_soft_online_asks_the_teacher_about_every_augmented_batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 1, 16, 16), dtype=np.uint8)
    data = LabelledImages(images, np.arange(12) % 2, ("a", "b"), "tiny")
    x = data.batch(slice(None))
    seen = []

    class Teacher:
        def soft_labels(self, batch, temperature):
            seen.append(batch.clone())
            return torch.softmax(batch.flatten(1)[:, :2] * 0 + torch.tensor([2.0, 0.0]), 1)

    config = protocol_config("soft-online", width=8, epochs=3, batch_size=4, seeds=(0,))
    result = evaluate_set(x, data.labels, data, config, teacher=Teacher())
    assert len(seen) == 3 * 3  # 3 epochs x 3 batches, no static pass over the un-augmented set
    originals = {tuple(img.flatten().tolist()[:8]) for img in x}
    assert sum(tuple(b[0].flatten().tolist()[:8]) not in originals for b in seen) >= 5  # labelled after augmentation
    assert result.to_dict()["protocol"] == "soft-online"
    with pytest.raises(ValueError, match="need a teacher"):
        evaluate_set(x, data.labels, data, config)


def test_evaluate_command_takes_a_protocol(tmp_path, capsys):
    from core.cli.main import main

    assert main(["evaluate", str(tmp_path), "--protocol", "hard-dsa", "--labels", "soft"]) == 2
    assert "either --protocol or --labels / --augment" in capsys.readouterr().err
    out = tmp_path / "set"
    assert main(["distill", "--method", "d4m", "--ipc", "1", "--classes", "0,1", "--out", str(out)]) == 0
    report = tmp_path / "r.json"
    assert main(["evaluate", str(out), "--protocol", "soft-online", "--epochs", "1", "--seeds", "1",
                 "--json", str(report)]) == 0
    assert "protocol soft-online" in capsys.readouterr().out
    import json

    saved = json.loads(report.read_text())
    assert saved["protocol"] == "soft-online" and saved["config"]["relabel"] is True and saved["split"] == "test"
    assert main(["evaluate", str(out), "--split", "val", "--epochs", "1", "--seeds", "1"]) == 0
    assert "tested on their 1000 validation images" in (text := capsys.readouterr().out) and "validation accuracy" in text
    full = tmp_path / "full"
    assert main(["distill", "--method", "random", "--ipc", "1", "--classes", "0,1", "--pool", "train", "--out", str(full)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["pool"] == "fashion-mnist-train-minus-val"   # distill holds the split out by default
    assert json.loads((full / "manifest.json").read_text())["models"]["pool"] == "fashion-mnist-train"
    capsys.readouterr()
    assert main(["evaluate", str(full), "--split", "val", "--epochs", "1", "--seeds", "1"]) == 2
    assert "includes the validation images" in capsys.readouterr().err   # refused before any training
