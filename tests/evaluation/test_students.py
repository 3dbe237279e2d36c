import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.datasets import LabelledImages
from core.data.augment import dsa_augment
from core.evaluation.students import EvalConfig, EvaluationCancelled, evaluate_set, read_distilled_folder, train_student

FAST = dict(width=16, epochs=30, batch_size=64, seeds=(0,), lr=0.05)


def blobs(n_per_class: int, seed: int) -> LabelledImages:
    """Two classes a convnet separates easily: a bright square top-left vs bottom-right."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(2 * n_per_class, 1, 16, 16), dtype=np.uint8)
    images[:n_per_class, :, 2:7, 2:7] = 255
    images[n_per_class:, :, 9:14, 9:14] = 255
    return LabelledImages(images, np.repeat([0, 1], n_per_class), ("a", "b"), f"blobs{seed}")


def test_students_learn_from_a_tiny_set_and_are_seeded():
    train, test = blobs(5, 0), blobs(50, 1)
    x = train.batch(slice(None))
    result = evaluate_set(x, train.labels, test, EvalConfig(**{**FAST, "seeds": (0, 1)}))
    assert len(result.accuracies) == 2 and result.mean > 0.9
    again = evaluate_set(x, train.labels, test, EvalConfig(**{**FAST, "seeds": (0, 1)}))
    assert again.accuracies == result.accuracies
    d = result.to_dict()
    assert d["accuracy_mean"] == pytest.approx(result.mean, abs=1e-5) and d["config"]["epochs"] == 30


def test_weights_scale_the_loss():
    train = blobs(4, 0)
    x = train.batch(slice(None))
    zero_class_b = np.where(train.labels == 1, 0.0, 1.0)  # class b contributes nothing
    model = train_student(x, train.labels, 2, EvalConfig(**FAST), 0, weights=zero_class_b)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert (pred == 0).all()


def test_soft_labels_resnet_dsa_and_cancel():
    train, test = blobs(4, 0), blobs(10, 1)
    x = train.batch(slice(None))

    class Teacher:
        def soft_labels(self, images, temperature):
            return torch.tensor([[0.9, 0.1]] * 4 + [[0.1, 0.9]] * 4)

    cfg = EvalConfig(**{**FAST, "labels": "soft", "architecture": "resnet", "augment": "dsa", "epochs": 3})
    assert len(evaluate_set(x, train.labels, test, cfg, teacher=Teacher()).accuracies) == 1
    with pytest.raises(ValueError, match="soft labels .*need a teacher"):
        evaluate_set(x, train.labels, test, cfg)
    with pytest.raises(EvaluationCancelled):
        evaluate_set(x, train.labels, test, EvalConfig(**FAST), should_stop=lambda: True)
    aug = dsa_augment(x, torch.Generator().manual_seed(0))
    assert aug.shape == x.shape and not torch.equal(aug, x)


def test_bad_configs_and_shapes():
    with pytest.raises(ValueError, match="labels must be 'hard' or 'soft'"):
        EvalConfig(labels="x")
    with pytest.raises(ValueError, match="architecture must be one of"):
        EvalConfig(architecture="vit")
    test = blobs(2, 0)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 16, 16\)"):
        evaluate_set(torch.zeros(2, 1, 8, 8), np.array([0, 1]), test, EvalConfig(**FAST))


def test_read_folder_reports_every_problem(tmp_path):
    names = ("T-shirt/top", "Bag", "Coat")
    (tmp_path / "00-T-shirt_top").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "00-T-shirt_top" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "00-T-shirt_top" / "small.png")
    (tmp_path / "00-T-shirt_top" / "broken.png").write_bytes(b"nope")
    (tmp_path / "Bag").mkdir()
    (tmp_path / "Hats").mkdir()
    with pytest.raises(ValueError) as info:
        read_distilled_folder(tmp_path, names, (1, 16, 16))
    message = str(info.value)
    for part in ("small.png: size 8x8, expected 16x16", "broken.png: unreadable", "'Bag' is empty",
                 "'Hats' is not a class", "missing class folders: Coat"):
        assert part in message


def test_read_folder_uses_manifest_weights(tmp_path):
    for i, name in enumerate(("00-a", "01-b")):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((16, 16), 50 * i, np.uint8)).save(tmp_path / name / "x.png")
    (tmp_path / "manifest.json").write_text(json.dumps({"images": [{"file": "00-a/x.png", "weight": 1.5},
                                                                   {"file": "01-b/x.png", "weight": 0.5}]}))
    x, y, w, classes = read_distilled_folder(tmp_path, ("a", "b"), (1, 16, 16))
    assert x.shape == (2, 1, 16, 16) and y.tolist() == [0, 1] and w.tolist() == [1.5, 0.5]


@pytest.mark.parametrize("architecture", ["resnet-bn", "mlp"])
def test_cross_architecture_students_learn_the_blobs(architecture):
    train, test = blobs(5, 0), blobs(50, 1)
    result = evaluate_set(train.batch(slice(None)), train.labels, test,
                          EvalConfig(**{**FAST, "architecture": architecture, "width": 32}))
    assert result.mean > 0.9 and result.to_dict()["config"]["architecture"] == architecture


def test_the_cli_names_every_student_architecture():
    from core.config import STUDENT_ARCHITECTURES
    from core.models.convnet import ARCHITECTURES, ConvNetConfig, build_classifier

    assert tuple(ARCHITECTURES) == STUDENT_ARCHITECTURES
    bn = build_classifier("resnet-bn", ConvNetConfig(1, 10, 32, 128))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in build_classifier("resnet", ConvNetConfig()).modules())
