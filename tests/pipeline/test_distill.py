import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.config import METHODS, DistillConfig
from core.models.latent_mlp import LatentMLP, LatentMLPConfig
from core.pipeline.distill import DistillEngine, distill, resolve_classes
from core.pipeline.export import export_imagefolder


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_complete_set(engine, method, tmp_path):
    config = DistillConfig(method=method, ipc=4, classes=(0, 2), seed=1)
    dset = distill(engine, config)
    assert dset.images.shape == (8, 1, 32, 32) and dset.latents.shape == (8, 4, 8, 8)
    assert dset.labels.tolist() == [0] * 4 + [2] * 4
    assert dset.images.min() >= -1 and dset.images.max() <= 1
    assert np.allclose([dset.weights[dset.labels == c].mean() for c in (0, 2)], 1.0)
    expects_model = method in ("ddoq", "fm", "pgfm", "diffusion-d4m", "diffusion-mg")
    assert (dset.nfe > 0) == expects_model
    if method == "fm":
        assert (dset.prototype_ids == -1).all() and np.isnan(dset.landing_error).all()
    else:
        assert dset.prototype_ids.tolist() == [0, 1, 2, 3] * 2
    if method == "random":  # real images of the right class
        assert (engine.dataset.labels[dset.source_indices] == dset.labels).all()
        torch.testing.assert_close(dset.images, engine.dataset.batch(dset.source_indices))
    if method == "d4m":
        assert np.allclose(dset.landing_error, 0, atol=1e-6)
    if method == "ddoq":
        masses = np.concatenate([q.weights for q in dset.quantization])
        assert np.allclose(dset.weights, masses * 4)
    # determinism
    again = distill(engine, config)
    assert torch.equal(again.latents, dset.latents)

    out = export_imagefolder(dset, tmp_path / "export", extra={"models": {"vae": "tiny"}})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["num_images"] == 8 and manifest["seed"] == 1
    assert manifest["config"]["ipc"] == 4 and manifest["config"]["sampler"]["steps"] == 8
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["00-T-shirt_top", "02-Coat"]
    first = manifest["images"][0]
    assert set(first) >= {"file", "class_id", "class_name", "prototype_id", "weight", "landing_error"}
    png = np.asarray(Image.open(out / first["file"]))
    assert png.shape == (32, 32) and png.dtype == np.uint8
    tensors = load_file(str(out / "latents.safetensors"))
    torch.testing.assert_close(tensors["latents"], dset.latents)
    assert tensors["labels"].tolist() == dset.labels.tolist()


def test_pgfm_guidance_lands_closer_than_unguided_warm_start_free_sampling(engine):
    from dataclasses import replace

    from core.config import GuidanceConfig

    base = DistillConfig(method="pgfm", ipc=5, seed=0)
    weak = distill(engine, replace(base, sampler=replace(base.sampler, guidance=GuidanceConfig(strength=0.0))))
    strong = distill(engine, replace(base, sampler=replace(base.sampler, guidance=GuidanceConfig(strength=1.0, t_stop=1.0))))
    assert strong.landing_error.max() < 1e-4 < weak.landing_error.min()


def test_export_selection_and_refusals(engine, tmp_path):
    dset = distill(engine, DistillConfig(method="d4m", ipc=3))
    out = export_imagefolder(dset, tmp_path / "sel", selection=[4, 0, 4])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [im["index"] for im in manifest["images"]] == [0, 4]
    with pytest.raises(FileExistsError, match="not empty"):
        export_imagefolder(dset, out)
    export_imagefolder(dset, out, selection=[1], overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["num_images"] == 1
    with pytest.raises(ValueError, match="selection is empty"):
        export_imagefolder(dset, tmp_path / "x", selection=[])
    with pytest.raises(ValueError, match=r"selection ids must lie in \[0, 9\)"):
        export_imagefolder(dset, tmp_path / "x", selection=[9])
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


def test_bad_inputs_fail_before_work(engine):
    with pytest.raises(ValueError, match=r"ipc=31 is larger than these classes' sizes: T-shirt/top \(30\)"):
        distill(engine, DistillConfig(method="random", ipc=31, classes=(0,)))
    with pytest.raises(ValueError, match="unknown classes \\['Sandal'\\].*T-shirt/top, Bag, Coat"):
        resolve_classes(["Sandal"], engine.latents.class_names)
    with pytest.raises(ValueError, match="unknown classes \\[7\\]"):
        resolve_classes([7], engine.latents.class_names)
    assert resolve_classes("bag,0", engine.latents.class_names) == (0, 1)
    assert resolve_classes("all", engine.latents.class_names) == (0, 1, 2)
    with pytest.raises(ValueError, match="method must be one of"):
        DistillConfig(method="dm")
    with pytest.raises(ValueError, match="ipc must be an integer >= 1"):
        DistillConfig(ipc=0)
    wrong = DistillEngine(engine.dataset, engine.latents, engine.vae,
                          LatentMLP(LatentMLPConfig((4, 8, 8), 5, width=16, hidden=16, depth=1, emb_dim=8)))
    with pytest.raises(ValueError, match="model has 5 classes but the data has 3"):
        distill(wrong, DistillConfig(method="pgfm", ipc=2))
    with pytest.raises(ValueError, match="needs a diffusion model"):
        distill(DistillEngine(engine.dataset, engine.latents, engine.vae, engine.flow), DistillConfig(method="diffusion-mg"))


def test_hold_out_validation_keeps_the_other_rows_and_their_latents(tiny_vae):
    from core.data.datasets import VALIDATION_PER_CLASS, LabelledImages, validation_indices
    from core.data.latent_cache import LatentSet
    from core.pipeline.distill import DistillEngine, hold_out_validation

    n = VALIDATION_PER_CLASS + 40
    labels = np.repeat(np.arange(2), n)
    images = np.random.default_rng(0).integers(0, 256, (2 * n, 1, 4, 4), dtype=np.uint8)
    data = LabelledImages(images, labels, ("a", "b"), "toy")
    latents = LatentSet(torch.arange(2 * n, dtype=torch.float32).view(-1, 1, 1, 1), labels, ("a", "b"), data.fingerprint, "vae")
    held = hold_out_validation(DistillEngine(data, latents, tiny_vae))
    assert len(held.dataset) == 80 and held.dataset.name == "toy-minus-val"
    kept = np.setdiff1d(np.arange(2 * n), validation_indices(labels))
    assert np.array_equal(held.dataset.images, images[kept])
    assert held.latents.latents.flatten().long().tolist() == kept.tolist()   # row-aligned with the images
    assert held.latents.dataset_fingerprint == held.dataset.fingerprint
    with pytest.raises(ValueError, match="already held out"):
        hold_out_validation(held)


def test_a_selection_exports_its_own_counts_and_stable_class_indices(engine, tmp_path):
    from core.evaluation.students import read_distilled_folder
    from core.pipeline.export import CLASS_INDEX, MANIFEST, is_export

    dset = distill(engine, DistillConfig(method="random", ipc=4))
    picks = [int(i) for i in np.flatnonzero(dset.labels == 1)[:3]] + [int(np.flatnonzero(dset.labels == 2)[0])]
    out = export_imagefolder(dset, tmp_path / "sel", picks, extra={"whole_set_metrics": {"recall": 0.5}})
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["num_images"] == 4 and manifest["classes"] == [1, 2] and manifest["ipc"] is None
    assert manifest["images_per_class"] == {"01-Bag": 3, "02-Coat": 1} and manifest["distilled_ipc"] == 4
    assert manifest["selection"] == {"whole_set": False, "of_images": 12} and "whole_set_metrics" in manifest
    assert json.loads((out / CLASS_INDEX).read_text()) == {"00-T-shirt_top": 0, "01-Bag": 1, "02-Coat": 2}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["01-Bag", "02-Coat"]
    assert is_export(out)                                   # --overwrite may replace it
    read = read_distilled_folder(out, dset.class_names, (1, 32, 32))
    assert read.classes == (1, 2) and sorted(read.labels.tolist()) == [1, 1, 1, 2]   # labels keep their ids
    whole = json.loads((export_imagefolder(dset, tmp_path / "all") / MANIFEST).read_text())
    assert whole["ipc"] == 4 and whole["selection"]["whole_set"] and whole["classes"] == [0, 1, 2]


def test_cell_offset_moves_pgfm_targets_toward_a_real_latent_of_each_cell(engine):
    from dataclasses import asdict

    from core.config import config_hash

    base = DistillConfig(method="pgfm", ipc=3)
    assert "cell_offset" not in base.to_dict()   # earlier keys (benchmark cells, caches) stay valid
    assert config_hash(base) == config_hash({k: v for k, v in asdict(base).items() if k not in base.LATER_DEFAULTS})
    centroid = distill(engine, base)
    real = distill(engine, DistillConfig(method="pgfm", ipc=3, cell_offset=1.0))
    half = distill(engine, DistillConfig(method="pgfm", ipc=3, cell_offset=0.5))
    again = distill(engine, DistillConfig(method="pgfm", ipc=3, cell_offset=1.0))
    assert torch.equal(real.prototypes, again.prototypes) and torch.equal(real.latents, again.latents)   # seeded
    for q in real.quantization:   # each target is a real latent of its prototype's k-means cell
        members = engine.latents.latents[torch.from_numpy(engine.latents.labels == q.label)].flatten(1)
        rows = np.flatnonzero(real.labels == q.label)
        for j, target in enumerate(real.prototypes[rows]):
            distance, nearest = (members - target.flatten()).norm(dim=1).min(0)
            assert distance < 1e-4 and q.assignments[int(nearest)] == j
    torch.testing.assert_close(half.prototypes, (centroid.prototypes + real.prototypes) / 2)
    assert "cell_offset" in real.config.to_dict()
    with pytest.raises(ValueError, match="cell_offset must lie in"):
        DistillConfig(method="pgfm", cell_offset=1.5)


def test_fewer_prototypes_than_ipc_share_the_samples_by_cell_mass(engine):
    from core.quantize.ddoq import allocate_by_weight

    config = DistillConfig(method="pgfm", ipc=6, prototypes_per_class=2, pgfm_weights=True)
    dset = distill(engine, config)
    assert len(dset) == 18 and all(q.ipc == 2 for q in dset.quantization)
    for c, q in zip((0, 1, 2), dset.quantization):
        rows = np.flatnonzero(dset.labels == c)
        counts = np.bincount(dset.prototype_ids[rows], minlength=2)
        assert counts.tolist() == allocate_by_weight(q.weights, 6).tolist()
        for j in range(2):   # every sample of a prototype is guided to it, from its own noise
            same = rows[dset.prototype_ids[rows] == j]
            assert all(torch.equal(dset.prototypes[i], q.prototypes[j]) for i in same)
            if len(same) > 1:
                assert not torch.equal(dset.latents[same[0]], dset.latents[same[1]])
        assert dset.weights[rows].mean() == pytest.approx(1.0)   # the cell mass shared by its samples
    assert dset.config.to_dict()["prototypes_per_class"] == 2
    offset = distill(engine, DistillConfig(method="pgfm", ipc=6, prototypes_per_class=2, cell_offset=1.0))
    for q in offset.quantization:   # each sample's own real latent of its prototype's cell
        members = engine.latents.latents[torch.from_numpy(engine.latents.labels == q.label)].flatten(1)
        for i in np.flatnonzero(offset.labels == q.label):
            distance, nearest = (members - offset.prototypes[i].flatten()).norm(dim=1).min(0)
            assert distance < 1e-4 and q.assignments[int(nearest)] == offset.prototype_ids[i]
    with pytest.raises(ValueError, match="prototypes_per_class must be an integer in"):
        DistillConfig(method="pgfm", ipc=3, prototypes_per_class=4)


def test_the_model_precision_also_runs_the_decoder(engine):
    full = distill(engine, DistillConfig(method="pgfm", ipc=2))
    half = distill(engine, DistillConfig(method="pgfm", ipc=2, sampler=replace(full.config.sampler, dtype="bfloat16")))
    assert half.images.dtype == torch.float32 and not torch.equal(half.images, full.images)
    assert (half.images - full.images).abs().max() < 0.15
    decoded = engine.vae.decode(half.latents, precision="bfloat16")
    assert torch.equal(decoded, half.images)   # the set's images are its latents decoded in bf16
