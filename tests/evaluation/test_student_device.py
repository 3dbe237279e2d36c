"""Student evaluation on a chosen device (EvalConfig.device, ``evaluate --device``) and the seed split over
ranks. Only the CPU is exercised here (this suite runs without a GPU): that the student and every batch are
where the config says, that a device which is not there is refused before any work, and the split itself."""
from __future__ import annotations

import json

import pytest
import torch
from test_students import blobs  # two classes a convnet separates easily

import core.evaluation.students as students
from core.evaluation.students import (
    EvalConfig,
    eval_device,
    evaluate_set,
    evaluate_set_distributed,
    seed_shard,
    train_student,
)
from core.pipeline.distributed import DistContext

FAST = dict(width=8, epochs=2, batch_size=4, seeds=(0,), test_batch_size=16)
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture
def spy(monkeypatch):
    """Record the device of every batch the student sees (training and test) and the teacher's inputs."""
    seen = {"student": [], "built": 0}
    build = students.build_classifier

    def spying_build(*args, **kwargs):
        seen["built"] += 1
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: seen["student"].append(inputs[0].device))
        return model

    monkeypatch.setattr(students, "build_classifier", spying_build)
    return seen


class Teacher:
    def __init__(self):
        self.devices = []

    def soft_labels(self, images, temperature):
        self.devices.append(images.device)
        return torch.full((len(images), 2), 0.5)   # on the CPU, as core.models.teacher.Teacher returns them


def test_student_and_batches_are_on_the_requested_device(spy):
    train, test = blobs(4, 0), blobs(8, 1)
    x = train.batch(slice(None))
    config = EvalConfig(**FAST, device="cpu", labels="soft", augment="dsa", relabel=True)
    teacher = Teacher()
    model = train_student(x, train.labels, 2, config, 0, teacher=teacher)
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}
    assert spy["student"] and set(spy["student"]) == {torch.device("cpu")}
    assert teacher.devices and set(teacher.devices) == {torch.device("cpu")}   # relabelled batches too
    result = evaluate_set(x, train.labels, test, EvalConfig(**FAST, device="cpu"))
    assert set(spy["student"]) == {torch.device("cpu")} and result.to_dict()["config"]["device"] == "cpu"
    assert result.to_dict()["config"]["tf32"] is True   # the option is recorded with the result


def test_device_changes_nothing_on_cpu():
    """The device plumbing leaves CPU students bit-identical to one trained without naming a device."""
    train, test = blobs(4, 0), blobs(8, 1)
    x = train.batch(slice(None))
    a = evaluate_set(x, train.labels, test, EvalConfig(**{**FAST, "seeds": (0, 1)}))
    b = evaluate_set(x, train.labels, test, EvalConfig(**{**FAST, "seeds": (0, 1)}, device="cpu", tf32=False))
    assert a.accuracies == b.accuracies


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused_before_any_work(spy):
    train, test = blobs(4, 0), blobs(8, 1)
    teacher = Teacher()
    config = EvalConfig(**FAST, device="cuda", labels="soft")   # a config is only words: made anywhere
    with pytest.raises(ValueError, match="CUDA is not available"):
        evaluate_set(train.batch(slice(None)), train.labels, test, config, teacher=teacher)
    assert spy["built"] == 0 and not teacher.devices   # no student built, no soft label computed
    with pytest.raises(ValueError, match="CUDA is not available"):
        eval_device(EvalConfig(device="cuda:1"))
    with pytest.raises(ValueError, match="device must be"):
        EvalConfig(device="gpu")
    assert eval_device(EvalConfig(device="auto")) == torch.device("cpu")


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
def test_evaluate_command_refuses_cuda_before_reading_anything(tmp_path, capsys, monkeypatch):
    from core.cli.main import main

    def no_reading(*args, **kwargs):
        raise AssertionError("the dataset was read before the device was checked")

    monkeypatch.setattr("core.data.splits.load_dataset", no_reading)
    assert main(["evaluate", str(tmp_path / "not-even-there"), "--device", "cuda", "--seeds", "1"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_evaluate_command_records_its_device(tmp_path, capsys):
    from core.cli.main import main

    out = tmp_path / "set"
    assert main(["distill", "--method", "random", "--ipc", "1", "--classes", "0,1", "--out", str(out)]) == 0
    report = tmp_path / "r.json"
    assert main(["evaluate", str(out), "--epochs", "1", "--seeds", "1", "--device", "cpu", "--no-tf32",
                 "--json", str(report)]) == 0
    assert "s on cpu" in capsys.readouterr().out
    saved = json.loads(report.read_text())
    assert saved["config"]["device"] == "cpu" and saved["config"]["tf32"] is False


@pytest.mark.parametrize("world", range(1, 6))
def test_seed_shard_is_strided_and_complete(world):
    for n in range(0, 12):
        shards = [seed_shard(n, r, world) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))   # each seed once
        for r, s in enumerate(shards):
            assert s == list(range(r, n, world))                        # rank r: r, r + W, ...
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1
    for bad in ((3, 2, 2), (3, -1, 2), (-1, 0, 1), (3, 0, 0)):
        with pytest.raises(ValueError):
            seed_shard(*bad)


def test_one_process_context_equals_evaluate_set():
    train, test = blobs(4, 0), blobs(8, 1)
    x = train.batch(slice(None))
    config = EvalConfig(**{**FAST, "seeds": (0, 1, 2)}, device="cpu")
    a = evaluate_set_distributed(x, train.labels, test, config, DistContext())
    assert a.accuracies == evaluate_set(x, train.labels, test, config).accuracies and a.config == config
