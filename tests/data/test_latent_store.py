"""Streaming ImageFolder (class lists, selection, resize + crop, bad files) and the sharded latent store."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.datasets import load_image
from core.data.imagefolder import (
    CLASSLIST_DIR,
    StreamingImageFolder,
    builtin_class_lists,
    open_image_folder,
    read_class_list,
    resolve_classes,
)
from core.data.latent_cache import encode_dataset
from core.data.latent_store import INDEX_NAME, LatentStore, shard_name
from core.data.store_encoding import encode_to_store
from core.errors import (
    CacheMismatchError,
    CheckpointError,
    DatasetNotFoundError,
    ImageReadError,
)
from core.models.vae import LatentAutoencoder, TinyVAEConfig, build_tiny_vae
from core.quantize.ddoq import QuantizeConfig
from core.quantize.streaming import quantize_store

WNIDS = ("n00000001", "n00000002", "n00000003")
COUNTS = (5, 4, 6)
SIZES = ((40, 30), (30, 70), (64, 64), (100, 50), (23, 90), (70, 71))  # (w, h): both orientations, odd sizes


def write_folder(root: Path, counts=COUNTS, seed: int = 0) -> Path:
    """3 classes named by fake WordNet ids, PNG and JPEG images of varied sizes, plus a class-list file."""
    rng = np.random.default_rng(seed)
    for c, (wnid, n) in enumerate(zip(WNIDS, counts)):
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            w, h = SIZES[(i + c) % len(SIZES)]
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            image.save(root / wnid / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / WNIDS[0] / "notes.txt").write_text("not an image")  # ignored
    (root / ".hidden").mkdir()
    (root.parent / "classes.txt").write_text("# two of the three\nn00000003 gamma, gamma ray\nn00000001 alpha\n")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "data")


def rgb_vae(seed: int = 0, levels: int = 3) -> LatentAutoencoder:
    """A tiny random AutoencoderKL: 3 -> 4 channels, downsampling 2**(levels - 1)."""
    torch.manual_seed(seed)
    vae = build_tiny_vae(TinyVAEConfig(block_out_channels=(8,) * levels, norm_num_groups=4), in_channels=3,
                         sample_size=64)
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    return LatentAutoencoder(vae, source=f"tiny-rgb-{seed}")


@pytest.fixture(scope="module")
def vae() -> LatentAutoencoder:
    return rgb_vae()


# ---------------------------------------------------------------------------------------------
# class lists and selection
# ---------------------------------------------------------------------------------------------

def test_shipped_class_lists():
    lists = builtin_class_lists()
    assert {"imagenette", "imagewoof"} <= set(lists) and all(p.parent == CLASSLIST_DIR for p in lists.values())
    nette, woof = read_class_list("imagenette"), read_class_list("imagewoof")
    assert len(nette) == len(woof) == 10
    assert nette[0] == ("n01440764", ("tench",)) and nette[1] == ("n02102040", ("English springer",))
    assert [e.key for e in nette] == sorted(e.key for e in nette)  # the usual label order
    assert ("n02099601", ("golden retriever",)) in woof and woof[-1] == ("n02115641", ("dingo",))
    assert not {e.key for e in nette} & {e.key for e in woof}


def test_resize_crop_shapes_range_and_order(folder):
    ds = StreamingImageFolder(folder, resolution=64, workers=2)
    assert len(ds) == sum(COUNTS) and ds.class_ids == list(WNIDS) and ds.class_names == WNIDS
    assert ds.class_counts().tolist() == list(COUNTS) and ds.image_shape == (3, 64, 64)
    assert ds.labels.tolist() == [0] * 5 + [1] * 4 + [2] * 6
    batches = list(ds.iter_batches(batch_size=4))
    assert [len(b.indices) for b in batches] == [4, 4, 4, 3]
    images = torch.cat([b.images for b in batches])
    assert images.shape == (15, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), np.arange(15))
    expected = torch.from_numpy(load_image(ds.path(7), 64, 3).copy()).float() / 127.5 - 1
    torch.testing.assert_close(images[7], expected)
    part = ds.load([14, 2])
    assert part.labels.tolist() == [2, 0]
    torch.testing.assert_close(part.images, images[[14, 2]])
    # one worker, no prefetch: same pixels
    single = StreamingImageFolder(folder, resolution=64, workers=1)
    torch.testing.assert_close(torch.cat([b.images for b in single.iter_batches(6)]), images)


def test_centre_crop_of_wide_and_tall_images(tmp_path):
    for name, size in (("wide", (384, 128)), ("tall", (128, 384))):
        (tmp_path / name).mkdir()
        a = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        a[..., 0] = 255  # red borders, green centre third
        if size[0] > size[1]:
            a[:, 128:256] = (0, 255, 0)
        else:
            a[128:256, :] = (0, 255, 0)
        Image.fromarray(a).save(tmp_path / name / "x.png")
    ds = StreamingImageFolder(tmp_path, resolution=32)
    images = ds.load([0, 1]).images
    assert images.shape == (2, 3, 32, 32)
    centre = images[:, :, 2:-2, 2:-2]  # away from the resampling seam
    assert torch.allclose(centre[:, 1], torch.ones(1)) and torch.allclose(centre[:, 0], -torch.ones(1), atol=1e-2)


def test_class_subsets_by_wnid_name_and_list(folder, tmp_path):
    ds = StreamingImageFolder(folder, classes=["n00000003", "n00000001"], resolution=32)
    assert ds.class_ids == ["n00000003", "n00000001"] and ds.class_counts().tolist() == [6, 5]
    assert StreamingImageFolder(folder, "n00000002,n00000001", resolution=32).class_ids == ["n00000002", "n00000001"]
    listed = StreamingImageFolder(folder, classes=str(tmp_path / "classes.txt"), resolution=32)
    assert listed.class_ids == ["n00000003", "n00000001"] and listed.class_names == ("gamma", "alpha")
    # names from a list file, then by human name and case/underscore-insensitively
    assert resolve_classes(folder, [str(tmp_path / "classes.txt")]) == (["n00000003", "n00000001"], ["gamma", "alpha"])

    # ImageNet WNID folders selected by human name, and name folders selected by WNID (shipped lists)
    net = tmp_path / "net"
    for sub in ("n01440764", "n03028079", "Golden_Retriever"):
        (net / sub).mkdir(parents=True)
        Image.new("RGB", (20, 10)).save(net / sub / "a.JPEG")
    assert resolve_classes(net, ["church", "Tench"]) == (["n03028079", "n01440764"], ["church", "tench"])
    assert resolve_classes(net, ["n02099601"]) == (["Golden_Retriever"], ["golden retriever"])
    assert resolve_classes(net) == (["Golden_Retriever", "n01440764", "n03028079"],
                                    ["Golden_Retriever", "tench", "church"])
    # ImageNet's LOC_synset_mapping.txt format; a repeated name is shown with its WordNet id and is ambiguous
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n01440764 tench, Tinca tinca\nn03028079 church, church building\n")
    assert resolve_classes(net, str(mapping)) == (["n01440764", "n03028079"], ["tench", "church"])
    with pytest.raises(DatasetNotFoundError, match="unknown classes 'Tinca_tinca'"):
        resolve_classes(net, ["Tinca_tinca"])  # the shipped lists know it as "tench" only
    twice = tmp_path / "twice.txt"
    twice.write_text("n01440764 crane\nn03028079 crane\n")
    assert resolve_classes(net, str(twice))[1] == ["crane (n01440764)", "crane (n03028079)"]
    with pytest.raises(DatasetNotFoundError, match="ambiguous class names: 'crane' is n01440764 or n03028079"):
        resolve_classes(net, [str(twice), "crane"])
    with pytest.raises(DatasetNotFoundError, match="unknown classes.*n02102040"):
        open_image_folder(net, "imagenette")  # only 2 of its 10 classes are there
    nette = tmp_path / "imagenette2" / "train"
    for entry in read_class_list("imagenette"):
        (nette / entry.key).mkdir(parents=True)
        Image.new("RGB", (12, 9)).save(nette / entry.key / "a.jpg")
    ds = open_image_folder(nette.parent, "imagenette", resolution=8, split="train")
    assert ds.root == nette and len(ds.class_ids) == 10 and ds.class_names[:2] == ("tench", "English springer")


def test_unknown_and_empty_classes(folder):
    with pytest.raises(DatasetNotFoundError, match=r"unknown classes 'n0000004' \(close: .*n00000001") as info:
        StreamingImageFolder(folder, classes=["n00000001", "n0000004"])
    assert "Class folders there: n00000001, n00000002, n00000003" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="no such class list"):
        read_class_list("imagenet-42")
    with pytest.raises(DatasetNotFoundError, match="more than once"):
        StreamingImageFolder(folder, classes=["n00000001", "n00000001"])
    (folder / "n00000009").mkdir()
    (folder / "n00000009" / "readme.md").write_text("x")
    with pytest.raises(DatasetNotFoundError, match=r"without images.*n00000009"):
        StreamingImageFolder(folder)
    assert len(StreamingImageFolder(folder, classes=list(WNIDS), max_per_class=2)) == 6
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        StreamingImageFolder(folder / "nope")


def test_corrupt_images_error_or_skip(folder):
    (folder / "n00000002" / "zz-bad.jpg").write_bytes(b"not a jpeg at all")
    good = (folder / "n00000002" / "img00.jpg").read_bytes()
    (folder / "n00000002" / "zz-truncated.jpg").write_bytes(good[: len(good) // 2])
    ds = StreamingImageFolder(folder, resolution=32)
    with pytest.raises(ImageReadError, match=r"zz-bad\.jpg: unreadable image.*skip_bad=True"):
        list(ds.iter_batches(8))
    lenient = StreamingImageFolder(folder, resolution=32, skip_bad=True)
    with pytest.warns(UserWarning, match="zz-"):
        batches = list(lenient.iter_batches(8))
    kept = np.concatenate([b.indices for b in batches])
    assert len(kept) == len(lenient) - 2 and sorted(lenient.path(i).name for i in lenient.skipped) == \
        ["zz-bad.jpg", "zz-truncated.jpg"]
    assert all(len(b.images) == len(b.indices) == len(b.labels) for b in batches)


def test_fingerprint_tracks_files_and_resolution(folder, tmp_path):
    a = StreamingImageFolder(folder, resolution=64)
    assert a.fingerprint == StreamingImageFolder(folder, resolution=64).fingerprint
    assert a.fingerprint != StreamingImageFolder(folder, resolution=32).fingerprint
    assert a.fingerprint != StreamingImageFolder(folder, classes=list(WNIDS[:2]), resolution=64).fingerprint
    moved = shutil.copytree(folder, tmp_path / "moved")  # copy2 keeps mtimes: same dataset
    assert StreamingImageFolder(moved, resolution=64).fingerprint == a.fingerprint
    path = moved / WNIDS[0] / "img00.jpg"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert StreamingImageFolder(moved, resolution=64).fingerprint != a.fingerprint


# ---------------------------------------------------------------------------------------------
# the latent store
# ---------------------------------------------------------------------------------------------

def quiet(fraction, message):
    pass


def interrupt_after(shard: int):
    """A progress callback that stops the encode (as Ctrl-C would) once shard ``shard`` is written."""
    def progress(fraction, message):
        if message.startswith(f"wrote {shard_name(shard)}"):
            raise KeyboardInterrupt("simulated interruption")
    return progress


def test_store_equals_in_memory_encoding(folder, tmp_path, vae):
    ds = StreamingImageFolder(folder, resolution=64, workers=2)
    store = encode_to_store(ds, vae, tmp_path / "store", shard_size=4, batch_size=3, progress=quiet)
    assert sorted(p.name for p in store.path.iterdir()) == [INDEX_NAME] + [shard_name(i) for i in range(4)]
    index = json.loads((store.path / INDEX_NAME).read_text())
    assert index["complete"] and index["dataset_fingerprint"] == ds.fingerprint
    assert index["vae_fingerprint"] == vae.fingerprint and index["latent_shape"] == [4, 16, 16]
    assert index["counts"] == list(COUNTS) and index["class_names"] == list(WNIDS) and len(index["shards"]) == 4
    assert index["shards"][1]["classes"] == {"0": 1, "1": 3}
    assert len(store) == 15 and store.latent_shape == (4, 16, 16) and store.counts.tolist() == list(COUNTS)

    reference = encode_dataset(ds.to_labelled_images(), vae, use_cache=False, progress=quiet)
    latents = store.as_latent_set()
    assert latents.class_names == WNIDS and latents.path == store.path
    assert latents.dataset_fingerprint == ds.fingerprint and latents.vae_fingerprint == vae.fingerprint
    np.testing.assert_array_equal(latents.labels, ds.labels)
    torch.testing.assert_close(latents.latents, reference.latents, atol=2e-3, rtol=2e-3)  # both fp16-rounded
    direct = vae.encode(torch.cat([b.images for b in ds.iter_batches(15)]))
    torch.testing.assert_close(latents.latents, direct, atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(store.labels(), ds.labels)
    np.testing.assert_array_equal(store.file_indices(), np.arange(15))
    for c in range(3):
        chunks = list(store.iter_class(c, chunk_size=2))
        assert max(len(x) for x in chunks) <= 2
        torch.testing.assert_close(torch.cat(chunks), latents.of_class(c), atol=0, rtol=0)
        torch.testing.assert_close(store.load_class(c), latents.of_class(c), atol=0, rtol=0)
    with pytest.raises(ValueError, match="max_bytes"):
        store.load_class(0, max_bytes=100)
    with pytest.raises(ValueError, match="max_bytes"):
        store.as_latent_set(max_bytes=100)
    assert sum(len(s.latents) for s in store.iter_shards(dtype=None)) == 15
    assert next(store.iter_shards(dtype=None)).latents.dtype == torch.float16


def test_resume_after_interruption_encodes_only_missing_shards(folder, tmp_path, vae, monkeypatch):
    ds = StreamingImageFolder(folder, resolution=64, workers=2)
    full = encode_to_store(ds, vae, tmp_path / "full", shard_size=4, batch_size=3, progress=quiet)

    store_dir = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        encode_to_store(ds, vae, store_dir, shard_size=4, batch_size=3, progress=interrupt_after(1))
    assert sorted(p.name for p in store_dir.iterdir()) == [INDEX_NAME, shard_name(0), shard_name(1)]
    with pytest.raises(CheckpointError, match="incomplete.*run the same encode again"):
        LatentStore(store_dir)
    (store_dir / ".shard-00002.safetensors.abc123.tmp").write_bytes(b"half a shard from a killed run")

    encoded = []
    real_encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda images, bs=256: encoded.append(len(images)) or real_encode(images, bs))
    messages = []
    store = encode_to_store(ds, vae, store_dir, shard_size=4, batch_size=3, progress=lambda f, m: messages.append(m))
    assert sum(encoded) == 15 - 8, "only the two missing shards were encoded"
    assert sum(m.startswith("kept") for m in messages) == 2 and not list(store_dir.glob(".*.tmp"))
    torch.testing.assert_close(store.as_latent_set().latents, full.as_latent_set().latents, atol=0, rtol=0)
    assert store.index["counts"] == full.index["counts"] and store.index["shards"] == full.index["shards"]

    encoded.clear()
    again = encode_to_store(ds, vae, store_dir, shard_size=4, batch_size=3, progress=quiet)
    assert not encoded and len(again) == 15  # complete: nothing to do
    with pytest.raises(CacheMismatchError, match="shard_size=4"):
        encode_to_store(ds, vae, store_dir, shard_size=8, progress=quiet)


def test_store_of_another_vae_or_dataset_is_refused(folder, tmp_path, vae):
    ds = StreamingImageFolder(folder, resolution=64)
    store_dir = tmp_path / "store"
    store = encode_to_store(ds, vae, store_dir, shard_size=8, progress=quiet)
    other = rgb_vae(seed=1)
    with pytest.raises(CacheMismatchError, match="another VAE.*tiny-rgb-0.*tiny-rgb-1"):
        encode_to_store(ds, other, store_dir, shard_size=8, progress=quiet)
    with pytest.raises(CacheMismatchError, match="another VAE"):
        store.check(vae=other)
    store.check(vae=vae, dataset=ds)
    Image.new("RGB", (50, 40)).save(folder / WNIDS[1] / "new.png")
    grown = StreamingImageFolder(folder, resolution=64)
    with pytest.raises(CacheMismatchError, match="another dataset.*16 images"):
        encode_to_store(grown, vae, store_dir, shard_size=8, progress=quiet)
    replaced = encode_to_store(grown, vae, store_dir, shard_size=8, progress=quiet, overwrite=True)
    assert len(replaced) == 16 and replaced.dataset_fingerprint == grown.fingerprint
    # a shard from another store is refused by its metadata
    shutil.copy(replaced.path / shard_name(0), tmp_path / "foreign.safetensors")
    partial = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        encode_to_store(ds, vae, partial, shard_size=8, progress=interrupt_after(0))
    shutil.copy(tmp_path / "foreign.safetensors", partial / shard_name(1))
    with pytest.raises(CacheMismatchError, match=f"{shard_name(1)}: shard does not belong"):
        encode_to_store(ds, vae, partial, shard_size=8, progress=quiet)
    with pytest.raises(CheckpointError, match="no latent store here"):
        LatentStore(tmp_path / "nowhere")


def test_skipped_images_are_recorded(folder, tmp_path, vae):
    (folder / WNIDS[2] / "broken.png").write_bytes(b"\x89PNG broken")
    ds = StreamingImageFolder(folder, resolution=64, skip_bad=True)
    with pytest.warns(UserWarning, match="broken.png"):
        store = encode_to_store(ds, vae, tmp_path / "store", shard_size=8, progress=quiet)
    assert len(ds) == 16 and len(store) == 15 and store.counts.tolist() == list(COUNTS)
    assert store.index["skipped_files"] == [f"{WNIDS[2]}/broken.png"]
    bad = ds.files.index(f"{WNIDS[2]}/broken.png")
    assert bad not in store.file_indices() and len(store.file_indices()) == 15


def test_default_256_px_gives_sd_shaped_latents(tmp_path):
    write_folder(tmp_path / "data", counts=(2, 1, 1))
    ds = StreamingImageFolder(tmp_path / "data", classes=[WNIDS[0], WNIDS[2]])
    assert ds.resolution == 256 and ds.image_shape == (3, 256, 256)
    vae8 = rgb_vae(levels=4)  # downsampling 8, as the Stable Diffusion VAE: 256 px -> 4 x 32 x 32
    store = encode_to_store(ds, vae8, tmp_path / "store", progress=quiet)
    assert store.latent_shape == (4, 32, 32) and len(store) == 3 and store.class_names == (WNIDS[0], WNIDS[2])
    assert store.as_latent_set().latents.shape == (3, 4, 32, 32)


def test_quantize_store_in_memory_and_streamed(folder, tmp_path, vae):
    store = encode_to_store(StreamingImageFolder(folder, resolution=32), vae, tmp_path / "s", shard_size=4,
                            progress=quiet)
    config = QuantizeConfig(ipc=2, compute_w2=False, workers=1)
    in_memory = quantize_store(store, [0, 2], config)
    streamed = quantize_store(store, [0, 2], config, max_class_bytes=0)  # every class takes the streaming path
    for a, b in zip(in_memory, streamed):  # classes fit the streaming sample: identical results
        torch.testing.assert_close(a.prototypes, b.prototypes)
        np.testing.assert_array_equal(a.weights, b.weights)
        assert a.prototypes.shape == (2, 4, 8, 8) and a.weights.sum() == pytest.approx(1)
    parallel = quantize_store(store, [0, 2], QuantizeConfig(ipc=2, compute_w2=False, workers=2))
    for a, b in zip(in_memory, parallel):
        torch.testing.assert_close(a.prototypes, b.prototypes, atol=0, rtol=0)
    # a sample smaller than the class: the mini-batch + Lloyd path, reading the store class by class
    mini = quantize_store(store, [0, 2], config, max_class_bytes=0, chunk_size=2, init_size=3)
    for c, r in zip([0, 2], mini):
        x = store.load_class(c).reshape(int(store.counts[c]), -1)
        d = torch.cdist(x, r.prototypes.reshape(2, -1))
        np.testing.assert_array_equal(r.assignments, d.argmin(1).numpy())
        np.testing.assert_allclose(r.weights, np.bincount(r.assignments, minlength=2) / len(x))
        assert r.quantization_error == pytest.approx(float(d.min(1).values.pow(2).mean().sqrt()), rel=1e-4)
    with pytest.raises(ValueError, match="larger than these classes' sizes"):
        quantize_store(store, [1], QuantizeConfig(ipc=5))
