"""Strict inputs: non-finite weights are refused when a model loads, evaluate reads manifests strictly and
uses the classes an export records, latent store indexes and shards are checked, model configs are typed,
and an unsafe pickle is refused with the whole reason."""
import argparse
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli.main import main
from core.errors import CacheMismatchError, CheckpointError
from core.evaluation.students import EvalConfig, evaluate_set, read_distilled_folder
from core.io import save_model_folder
from core.models.kinds import FLOW_KIND as FLOW_KIND
from core.models.latent_mlp import LatentMLP, LatentMLPConfig


def poisoned(state: dict[str, torch.Tensor], value: float = float("nan")) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) if v.is_floating_point() else v for k, v in state.items()}


# ------------------------------------------------------------------------------------------------
# Non-finite weights
# ------------------------------------------------------------------------------------------------

def test_a_flow_with_nan_weights_is_refused_and_nothing_is_exported(tmp_path, capsys):
    flow = LatentMLP(LatentMLPConfig((4, 8, 8), 10, width=16, hidden=16, depth=1, emb_dim=8))
    save_model_folder(tmp_path / "flow", FLOW_KIND, flow.config_dict(), poisoned(flow.state_dict()))
    code = main(["distill", "--method", "pgfm", "--ipc", "1", "--classes", "0", "--flow", str(tmp_path / "flow"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "model.safetensors: weights hold NaN or infinite values" in err
    assert not (tmp_path / "out").exists()


def test_every_kind_of_model_refuses_non_finite_weights(tmp_path, scale):
    from core.models.convnet import ConvNet, ConvNetConfig
    from core.models.kinds import DIFFUSION_KIND as DIFFUSION_KIND
    from core.models.loading import load_diffusion, load_velocity_model
    from core.models.teacher import KIND as TEACHER_KIND
    from core.models.teacher import Teacher
    from core.models.vae import LatentAutoencoder
    from tests.conftest import make_tiny_vae

    net = LatentMLP(LatentMLPConfig((4, 8, 8), 3, width=16, hidden=16, depth=1, emb_dim=8))
    save_model_folder(tmp_path / "diffusion", DIFFUSION_KIND, net.config_dict(), poisoned(net.state_dict(), float("inf")))
    teacher = ConvNet(ConvNetConfig(1, 10, 32, 8))
    save_model_folder(tmp_path / "teacher", TEACHER_KIND, teacher.config_dict(), poisoned(teacher.state_dict()))
    vae = make_tiny_vae().vae
    with torch.no_grad():
        next(vae.parameters()).fill_(float("nan"))
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    sit = torch.load(scale.sit, weights_only=True)
    torch.save(poisoned(sit), tmp_path / "sit.pt")
    for load in (lambda: load_diffusion(tmp_path / "diffusion"), lambda: Teacher.load(tmp_path / "teacher"),
                 lambda: LatentAutoencoder.from_pretrained(tmp_path / "vae"),
                 lambda: load_velocity_model(tmp_path / "sit.pt")):
        with pytest.raises(CheckpointError, match="NaN or infinite values"):
            load()


def test_evaluate_refuses_a_class_whose_weights_sum_to_zero():
    from core.data.datasets import LabelledImages

    rng = np.random.default_rng(0)
    test = LabelledImages(rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8), np.arange(20) % 2, ("a", "b"), "t")
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="images of class b all have weight 0"):
        evaluate_set(images, np.array([0, 0, 1, 1]), test, EvalConfig(epochs=1, seeds=(0,)),
                     weights=np.array([1.0, 0.5, 0.0, 0.0]))


# ------------------------------------------------------------------------------------------------
# manifest.json read by evaluate
# ------------------------------------------------------------------------------------------------

def small_export(root):
    for i, name in enumerate(("00-a", "01-b")):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((16, 16), 50 * i, np.uint8)).save(root / name / "x.png")


@pytest.mark.parametrize("manifest, message", [
    ("{not json", "manifest.json: not valid JSON"),
    ("[1, 2]", "must be a JSON object with a list \"images\", found list"),
    ('{"images": {"file": "00-a/x.png"}}', "\"images\" must be a list"),
    ('{"method": "d4m"}', "\"images\" must be a list of {\"file\", \"weight\"} entries, found nothing"),
    ('{"images": [3]}', "images[0]: must be an object"),
    ('{"images": [{"weight": 1}]}', "images[0]: \"file\" must be a path string, found null"),
    ('{"images": [{"file": 7}]}', "images[0]: \"file\" must be a path string, found 7"),
    ('{"images": [{"file": "00-a/x.png", "weight": "heavy"}]}', "images[0] (00-a/x.png): \"weight\" must be a finite"),
    ('{"images": [{"file": "00-a/x.png", "weight": NaN}]}', "\"weight\" must be a finite number >= 0, found NaN"),
    ('{"images": [{"file": "00-a/x.png", "weight": -1}]}', "\"weight\" must be a finite number >= 0, found -1"),
    ('{"images": [{"file": "00-a/x.png"}, {"file": "01-b/gone.png"}]}', "images[1]: \"file\" '01-b/gone.png' is listed but not on disk"),
    ('{"images": [{"file": "../../etc/passwd"}]}', "must be CLASS_FOLDER/IMAGE inside the folder"),
])
def test_an_invalid_manifest_names_the_file_and_the_entry(tmp_path, manifest, message):
    small_export(tmp_path)
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(ValueError) as info:
        read_distilled_folder(tmp_path, ("a", "b"), (1, 16, 16))
    assert "manifest.json" in str(info.value) and message in str(info.value), str(info.value)


def test_evaluate_uses_the_classes_an_export_records(tmp_path, capsys):
    out = tmp_path / "two"
    assert main(["distill", "--method", "d4m", "--ipc", "1", "--classes", "0,1", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--seeds", "1", "--epochs", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "classes T-shirt/top, Trouser (as its manifest records): tested on their 2000 test images" in stdout
    assert "test accuracy" in stdout


# ------------------------------------------------------------------------------------------------
# Latent store index.json and shards
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def store(scale, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(scale.store, copy)
    return copy


def edit_index(store, change) -> None:
    index = json.loads((store / "index.json").read_text())
    change(index)
    (store / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("file", ["../outside_shard.safetensors", "/etc/passwd", "shard-00001.safetensors"])
def test_a_shard_file_outside_the_store_or_out_of_place_is_refused(store, file):
    from core.data.latent_store import LatentStore

    edit_index(store, lambda index: index["shards"][0].update(file=file))
    with pytest.raises(CacheMismatchError, match=r"shards\[0\]\.file must be 'shard-00000.safetensors', a file inside"):
        LatentStore(store)


def test_index_counts_that_do_not_add_up_are_refused(store):
    from core.data.latent_store import LatentStore

    edit_index(store, lambda index: index["shards"][0]["classes"].update({"0": 99}))
    with pytest.raises(CacheMismatchError, match="'count' and per-class 'classes' counts disagree"):
        LatentStore(store)


def test_a_shard_replaced_by_a_copy_of_another_is_refused_when_read(store):
    from core.data.latent_store import LatentStore

    shutil.copy(store / "shard-00001.safetensors", store / "shard-00000.safetensors")
    with pytest.raises(CacheMismatchError, match="shard-00000.safetensors: shard does not belong to this store"):
        LatentStore(store).labels()


def test_a_shard_with_other_labels_than_its_index_record_is_refused(store):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from core.data.latent_store import LatentStore

    path = store / "shard-00000.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    tensors["labels"] = torch.full_like(tensors["labels"], 2)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CacheMismatchError, match="records .* for it"):
        LatentStore(store).labels()


# ------------------------------------------------------------------------------------------------
# Model config types and pickles
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("width", "wide", "config field 'width' must be an integer, got \"wide\""),
    ("latent_shape", [4, 8], "config field 'latent_shape' must be"),
    ("depth", True, "config field 'depth' must be an integer, got true"),
    ("colour", 3, "unknown config fields ['colour']"),
])
def test_a_flow_config_of_wrong_types_names_the_file_and_field(tmp_path, field, value, message):
    from core.models.loading import load_flow

    flow = LatentMLP(LatentMLPConfig((4, 8, 8), 3, width=16, hidden=16, depth=1, emb_dim=8))
    save_model_folder(tmp_path / "flow", FLOW_KIND, flow.config_dict(), flow.state_dict())
    meta = json.loads((tmp_path / "flow" / "config.json").read_text())
    meta["config"][field] = value
    (tmp_path / "flow" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        load_flow(tmp_path / "flow")
    assert str(tmp_path / "flow" / "config.json") in str(info.value) and message in str(info.value)


def test_an_unsafe_pickle_is_refused_with_the_whole_reason(tmp_path, scale):
    from core.models.loading import load_velocity_model

    state = torch.load(scale.sit, weights_only=True)
    torch.save({"ema": state, "args": argparse.Namespace(model="SiT-XL/2")}, tmp_path / "0400000.pt")
    with pytest.raises(CheckpointError) as info:
        load_velocity_model(tmp_path / "0400000.pt")
    message = str(info.value)
    assert "never unpickled" in message and "can result in arbitrary code execution" in message
    assert "unsupported global" in message.lower() and "argparse.Namespace" in message and "\x1b" not in message
