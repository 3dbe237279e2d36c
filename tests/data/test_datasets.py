import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SYSTEM_DIR,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
)
from core.errors import DatasetNotFoundError

needs_fmnist = pytest.mark.skipif(not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="dataset-fashion-mnist not installed")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_roundtrip_and_errors(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9]) + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


@needs_fmnist
def test_fashion_mnist_shapes_and_label_counts():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 1, 32, 32) and test.images.shape == (10000, 1, 32, 32)
    assert train.class_counts().tolist() == [6000] * 10 and test.class_counts().tolist() == [1000] * 10
    assert train.class_names == FASHION_MNIST_CLASSES
    # padding is background: the 2-pixel border is zero, the centre is not
    assert train.images[:, :, :2].max() == 0 and train.images[:, :, :, 30:].max() == 0
    batch = train.batch(slice(0, 16))
    assert batch.shape == (16, 1, 32, 32) and batch.min() >= -1 and batch.max() <= 1 and batch.min() == -1


def test_fashion_mnist_from_env_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for stem, n in (("t10k", 7),):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    test = load_fashion_mnist("test")
    assert test.images.shape == (7, 1, 32, 32) and test.labels.tolist() == list(range(7))


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_fashion_mnist("train", root=tmp_path)
    assert str(tmp_path) in str(info.value) and "FASHION_MNIST_DIR" in str(info.value)


def _write_folder(root: Path, sizes=((40, 30), (20, 50))) -> None:
    rng = np.random.default_rng(0)
    for name, (w, h) in zip(("cat", "dog"), sizes):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_resolution_channels_and_classes(tmp_path):
    _write_folder(tmp_path)
    data = load_image_folder(tmp_path, resolution=16, channels=3)
    assert data.images.shape == (6, 3, 16, 16) and data.class_names == ("cat", "dog")
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    gray = load_image_folder(tmp_path, resolution=8, channels=1, classes=["dog"])
    assert gray.images.shape == (3, 1, 8, 8) and gray.class_names == ("dog",)


def test_image_folder_errors(tmp_path):
    _write_folder(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="bird"):
        load_image_folder(tmp_path, classes=["cat", "bird"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="without images.*empty"):
        load_image_folder(tmp_path)
    (tmp_path / "empty" / "x.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="x.png: unreadable"):
        load_image_folder(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        load_image_folder(tmp_path / "nope")


def test_validation_split_is_500_per_class_seeded_and_disjoint_from_the_rest():
    import numpy as np

    from core.data.datasets import load_fashion_mnist, validation_indices

    labels = np.repeat(np.arange(3), 600)
    a, b = validation_indices(labels, 50), validation_indices(labels, 50)
    assert np.array_equal(a, b) and len(a) == 150 and np.bincount(labels[a]).tolist() == [50, 50, 50]
    assert not np.array_equal(a, validation_indices(labels, 50, seed=1))
    # a class's pick does not depend on the other classes
    assert np.array_equal(a[labels[a] == 0], validation_indices(labels[:600], 50))
    with pytest.raises(ValueError, match="fewer than the 700"):
        validation_indices(labels, 700)
    try:
        val, rest = load_fashion_mnist("val"), load_fashion_mnist("train-minus-val")
    except Exception:  # noqa: BLE001 - the dataset package is not installed here
        pytest.skip("Fashion-MNIST not installed")
    assert len(val) == 5000 and np.bincount(val.labels).tolist() == [500] * 10 and len(rest) == 55000
    train = load_fashion_mnist("train")
    rows = {r.tobytes() for r in train.images[validation_indices(train.labels)]}
    assert {r.tobytes() for r in val.images} == rows and not rows & {r.tobytes() for r in rest.images[:5000]}
