import dataclasses

import numpy as np
import pytest
import torch

from core.data.latent_cache import LatentSet
from core.quantize import disk_cache
from core.quantize.ddoq import QuantizeConfig, quantize
from core.quantize.disk_cache import entry_key, quantize_cached


@pytest.fixture
def latent_set() -> LatentSet:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [40, 30, 20]).astype(np.int64)
    latents = torch.from_numpy(rng.normal(size=(len(labels), 2, 2, 2)).astype(np.float32))
    return LatentSet(latents, labels, ("a", "b", "c"), "data-fp", "vae-fp")


def _same(a, b) -> None:
    assert a.label == b.label and a.method == b.method
    assert torch.equal(a.prototypes, b.prototypes)
    for name in ("weights", "masses", "assignments"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.source_indices is None) == (b.source_indices is None)
    if a.source_indices is not None:
        np.testing.assert_array_equal(a.source_indices, b.source_indices)
    assert a.quantization_error == b.quantization_error
    assert (a.w2_weighted, a.w2_uniform, a.w2_points) == (b.w2_weighted, b.w2_uniform, b.w2_points)


@pytest.mark.parametrize("method,medoid", [("ddoq", False), ("ddoq", True), ("random", False)])
def test_second_call_reads_the_disk_and_equals_quantize(latent_set, tmp_path, monkeypatch, method, medoid):
    config = QuantizeConfig(method=method, ipc=4, medoid=medoid, seed=3, workers=1)
    first = quantize_cached(latent_set, [2, 0], config, tmp_path)
    for a, b in zip(first, quantize(latent_set, [2, 0], config)):
        _same(a, b)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2

    def no_kmeans(*args, **kwargs):
        raise AssertionError("quantize ran although every class was on disk")

    monkeypatch.setattr(disk_cache, "quantize", no_kmeans)
    again = quantize_cached(latent_set, [0, 2], dataclasses.replace(config, workers=2, threads=None), tmp_path)
    _same(again[0], first[1])
    _same(again[1], first[0])


def test_only_missing_classes_are_computed(latent_set, tmp_path, monkeypatch):
    config = QuantizeConfig(ipc=3, workers=1)
    quantize_cached(latent_set, [1], config, tmp_path)
    asked = []

    def spy(latents, classes, cfg):
        asked.append(list(classes))
        return quantize(latents, classes, cfg)

    monkeypatch.setattr(disk_cache, "quantize", spy)
    result = quantize_cached(latent_set, [0, 1, 2], config, tmp_path)
    assert asked == [[0, 2]] and [q.label for q in result] == [0, 1, 2]


def test_key_changes_with_what_changes_the_result():
    config = QuantizeConfig(ipc=3)
    key = entry_key("d", "v", 0, config)
    assert key == entry_key("d", "v", 0, dataclasses.replace(config, workers=7, threads=None))
    others = [entry_key("d2", "v", 0, config), entry_key("d", "v2", 0, config), entry_key("d", "v", 1, config),
              entry_key("d", "v", 0, dataclasses.replace(config, seed=1)),
              entry_key("d", "v", 0, dataclasses.replace(config, ipc=4)),
              entry_key("d", "v", 0, dataclasses.replace(config, medoid=True)),
              entry_key("d", "v", 0, dataclasses.replace(config, compute_w2=False))]
    assert len({key, *others}) == 1 + len(others)


def test_damaged_or_foreign_entry_is_recomputed_and_nothing_else_touched(latent_set, tmp_path):
    config = QuantizeConfig(ipc=3, workers=1)
    expected = quantize_cached(latent_set, [0, 1], config, tmp_path)
    path0, path1 = (tmp_path / f"{entry_key('data-fp', 'vae-fp', c, config)}.safetensors" for c in (0, 1))
    path1.write_bytes(path0.read_bytes())      # class 0's entry under class 1's name: its key disagrees
    path0.write_bytes(b"not a safetensors file")
    mine = tmp_path / "notes.txt"
    mine.write_text("kept")
    with pytest.warns(UserWarning, match="unreadable quantization cache entry"):   # the damaged one is named
        result = quantize_cached(latent_set, [0, 1], config, tmp_path)
    _same(result[0], expected[0])
    _same(result[1], expected[1])
    assert mine.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path0.name, path1.name, "notes.txt"])


def test_a_cache_that_cannot_be_written_warns_and_still_returns_the_result(latent_set, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("mine")                 # the cache folder's path is taken by a file
    config = QuantizeConfig(ipc=2, workers=1)
    with pytest.warns(UserWarning, match="not cached"):
        result = quantize_cached(latent_set, [0], config, blocked / "quantizations")
    _same(result[0], quantize(latent_set, [0], config)[0])
    assert blocked.read_text() == "mine"
