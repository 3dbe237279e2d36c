"""Your own dataset end to end, CI-sized: a procedurally drawn ImageFolder (shapes, not Fashion-MNIST) through
`prepare` (VAE, teacher, flow, diffusion, figures), then `distill --models` and `evaluate --models`."""
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.cli.main import main

SHAPES = ("circle", "square", "triangle")


def draw_shapes(root: Path, per_class: int, size: int = 16, seed: int = 0) -> None:
    """``per_class`` RGB images of each shape at random positions, sizes and colours on a dark background."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
            r = int(rng.integers(size // 5, size // 3))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            colour = tuple(int(v) for v in rng.integers(120, 256, 3))
            box = (cx - r, cy - r, cx + r, cy + r)
            draw = ImageDraw.Draw(im)
            if shape == "circle":
                draw.ellipse(box, fill=colour)
            elif shape == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            im.save(root / shape / f"{i:03d}.png")


def test_prepare_then_distill_and_evaluate_with_the_model_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "shapes"
    draw_shapes(data / "train", 60)
    draw_shapes(data / "val", 10, seed=1)
    models = tmp_path / "models" / "shapes"
    quick = ["--resolution", "16", "--channels", "3", "--vae-epochs", "1", "--teacher-epochs", "2", "--flow-steps", "30",
             "--model", "mlp-s", "--batch-size", "32", "--eval-per-class", "2", "--threads", "1"]
    assert main(["prepare", str(data), "--out", str(models), *quick]) == 0
    out = capsys.readouterr().out
    assert "[prepare 5/5] eval-models" in out and "validation held out of train" in out
    for part in ("vae", "teacher", "flow", "diffusion"):
        assert (models / part / "training.json").is_file(), part
    figures = json.loads((models / "eval.json").read_text())
    assert {"vae", "teacher", "flow"} <= figures.keys()
    assert main(["prepare", str(data), "--out", str(models), *quick]) == 0   # run again: nothing is trained again
    again = capsys.readouterr().out
    assert again.count("done before") == 4

    distilled = tmp_path / "pgfm"
    assert main(["distill", "--models", str(models), "--method", "pgfm", "--ipc", "2", "--out", str(distilled)]) == 0
    manifest = json.loads((distilled / "manifest.json").read_text())
    assert manifest["num_images"] == 6 and manifest["models"]["pool"].endswith("-train-minus-val")
    assert Path(manifest["models"]["flow"]).name == "flow" and "models" in manifest["models"]["flow"]
    result = tmp_path / "result.json"
    assert main(["evaluate", str(distilled), "--models", str(models), "--protocol", "soft", "--epochs", "1",
                 "--seeds", "1", "--json", str(result)]) == 0   # soft labels: the folder's own teacher
    assert 0 <= json.loads(result.read_text())["accuracy_mean"] <= 1
    assert main(["distill", "--models", str(tmp_path), "--method", "d4m", "--ipc", "1", "--out", str(tmp_path / "x")]) == 2
    assert "not a model folder written by `prepare`" in capsys.readouterr().err
