"""Hostile inputs (issue #35): each is refused with one line ``error: ...`` naming the file or option (exit 2),
before any work, and never with a traceback: JSON nested 200,000 levels deep or larger than its limit, size-like
options far out of range, an output path through a symbolic-link loop or inside the input dataset, an interrupt
(Ctrl-C: ``interrupted``, exit 130), and `prepare`'s edge cases (relative dataset paths, small datasets)."""
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from shapes_fixtures import draw_shapes

from core.cli.main import main
from core.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[2]
NESTED = "[" * 200_000


def refusal(capsys) -> str:
    """The one line a refused command printed on stderr."""
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------
# 1. JSON: nesting and size
# ------------------------------------------------------------------------------------------------

def _nested(tmp_path: Path, where: str) -> list[str]:
    """A command reading a JSON file (``where``) of 200,000 nested ``[``."""
    folder = tmp_path / where.split("/")[0]
    (folder / "00-a").mkdir(parents=True)
    (tmp_path / where).write_text(NESTED)
    out = ["--out", str(tmp_path / "out")]
    return {"set/manifest.json": ["evaluate", str(folder), "--epochs", "1", "--seeds", "1"],
            "store/index.json": ["distill", "--latent-store", str(folder), *out],
            "vae/config.json": ["distill", "--vae", str(folder), *out],
            "flow/config.json": ["distill", "--method", "pgfm", "--flow", str(folder), *out],
            "models/dataset.json": ["distill", "--models", str(folder), *out]}[where]


@pytest.mark.parametrize("where", ["set/manifest.json", "store/index.json", "vae/config.json", "flow/config.json",
                                   "models/dataset.json"])
def test_json_nested_200000_levels_deep_is_refused_in_one_line(tmp_path, capsys, where):
    assert main(_nested(tmp_path, where)) == 2
    err = refusal(capsys)
    assert f"{where}: JSON nested too deeply" in err and not (tmp_path / "out").exists()


def test_a_json_file_above_its_limit_is_refused_before_it_is_read(tmp_path, capsys):
    from core.reads import read_json

    (tmp_path / "set" / "00-a").mkdir(parents=True)
    with open(tmp_path / "set" / "manifest.json", "wb") as f:
        f.truncate(2**30)   # sparse: 1 GiB on paper, nothing on disk
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"manifest.json: 1024.0 MiB, larger than the 64 MiB allowed"):
            read_json(tmp_path / "set" / "manifest.json")
        assert tracemalloc.get_traced_memory()[1] < 2**20   # refused from its size: nothing was read
    finally:
        tracemalloc.stop()
    assert main(["evaluate", str(tmp_path / "set"), "--epochs", "1", "--seeds", "1"]) == 2
    assert "larger than the 64 MiB allowed for this JSON file" in refusal(capsys)
    (tmp_path / "vae").mkdir()
    with open(tmp_path / "vae" / "config.json", "wb") as f:
        f.truncate(2 * 2**20)
    assert main(["distill", "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "out")]) == 2
    assert "vae/config.json: 2.0 MiB, larger than the 1 MiB allowed" in refusal(capsys)


# ------------------------------------------------------------------------------------------------
# 2 and 5. Size-like options and seeds
# ------------------------------------------------------------------------------------------------

BIG = "1000000000000"


@pytest.mark.parametrize("args, message", [
    (["distill", "--steps", BIG], "steps must be an integer from 1 to 1000, got 1000000000000"),
    (["sweep", "--name", "s", "--knob", f"steps={BIG}"], "steps must be an integer from 1 to 1000, got 1000000000000"),
    (["sweep", "--name", "s", "--knob", f"steps=1:{BIG}:3"], "steps must be an integer from 1 to 1000"),
    (["tune", "--name", "t", "--space", f"steps=4:{BIG}"], "steps must be an integer from 1 to 1000"),
    (["distill", "--ipc", BIG], "ipc must be an integer from 1 to 100000"),
    (["distill", "--method", "diffusion-d4m", "--diffusion-steps", BIG], "diffusion steps must be an integer from 1 to 1000"),
    (["distill", "--refine", BIG], "refine iterations must be an integer from 0 to 1000000"),
    (["distill", "--refine", "10", "--refine-real-batch", BIG], "refine real_batch must be an integer from 1 to 65536"),
    (["distill", "--sample-batch-size", BIG], "--sample-batch-size must be an integer from 1 to 65536"),
    (["distill", "--decode-batch", BIG], "argument --decode-batch: expected 'auto' or an integer from 1 to 65536"),
    (["distill", "--seed", "99999999999999999999999"],
     "argument --seed: expected an integer from 0 to 2147483647, got 99999999999999999999999"),
    (["distill", "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["distill", "--threads", BIG], "argument --threads: expected an integer from 0 to 4096"),
    (["distill", "--store-max-gib", "inf"], "argument --store-max-gib: expected a number from 0 to 1048576, got inf"),
    (["evaluate", "x", "--seeds", BIG], "argument --seeds: expected an integer from 1 to 100"),
    (["evaluate", "x", "--epochs", BIG], "argument --epochs: expected an integer from 1 to 100000"),
    (["sweep", "--name", "s", "--knob", "guidance=0.5", "--student-seeds", BIG], "argument --student-seeds: expected"),
    (["bench", "--ipc", "1", BIG], "argument --ipc: expected an integer from 1 to 100000"),
    (["train-flow", "--steps", BIG], "argument --steps: expected an integer from 1 to 100000000"),
    (["train-teacher", "--batch-size", BIG], "argument --batch-size: expected an integer from 1 to 65536"),
    (["train-vae", "--epochs", "1e300"], "argument --epochs: expected a number from 0 to 100000"),
    (["encode", "--shard-size", BIG], "argument --shard-size: expected an integer from 1 to 10000000"),
    (["eval-models", "--per-class", BIG], "argument --per-class: expected an integer from 1 to 10000000"),
    (["prepare", "data", "--flow-steps", BIG], "argument --flow-steps: expected an integer from 1 to 100000000"),
    (["bench-speed", "--steps", BIG], "argument --steps: expected an integer from 1 to 1000"),
])
def test_size_like_options_are_bounded(tmp_path, capsys, args, message):
    needs_out = args[0] in ("distill", "prepare") or args[0].startswith("train-")
    assert exit_code(args + (["--out", str(tmp_path / "out")] if needs_out else [])) == 2
    err = refusal(capsys)
    assert message in err and not (tmp_path / "out").exists(), err


def exit_code(argv: list[str]) -> int:
    """``main``'s exit code, also for the options argparse refuses (it exits)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


# ------------------------------------------------------------------------------------------------
# 3 and 7. Output paths: a symbolic-link loop, inside the input dataset
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["distill", "--method", "random", "--ipc", "1"], ["train-teacher"]])
def test_an_out_path_through_a_symlink_loop_is_refused(tmp_path, capsys, command):
    os.symlink("loopA", tmp_path / "loopA")
    assert main([*command, "--out", str(tmp_path / "loopA" / "x")]) == 2
    assert "loopA/x: runs into a loop of symbolic links" in refusal(capsys)


@pytest.mark.parametrize("command, out", [
    (["distill", "--dataset", "imagefolder", "--data-dir", "{data}"], "--out {data}/train/zz-export"),
    (["distill", "--dataset", "imagefolder", "--data-dir", "{data}"], "--out {data}/export.zip"),
    (["train-teacher", "--dataset", "imagefolder", "--data-dir", "{data}"], "--out {data}/train/teacher"),
    (["prepare", "{data}"], "--out {data}/models"),
    (["encode", "--dataset", "imagefolder", "--data-dir", "{data}"], "--store {data}/train/store"),
])
def test_an_output_inside_the_input_dataset_is_refused_before_any_work(tmp_path, capsys, command, out):
    data = tmp_path / "inds"
    draw_shapes(data / "train", 2)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    argv = [a.format(data=data) for a in command + out.split()]
    assert main(argv) == 2
    err = refusal(capsys)
    assert f"{out.split()[0]} {out.split()[1].format(data=data)} is inside the dataset" in err, err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


# ------------------------------------------------------------------------------------------------
# 4. Ctrl-C
# ------------------------------------------------------------------------------------------------

def test_an_interrupt_prints_one_line_and_exits_130(monkeypatch, capsys):
    import core.cli.evaluate

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(core.cli.evaluate, "_cmd_evaluate", interrupted)
    assert main(["evaluate", "somewhere"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_an_interrupt_inside_a_command_that_runs_others_stops_them_all(tmp_path, monkeypatch, capsys):
    import core.cli.train

    ran = []
    monkeypatch.setattr(core.cli.train, "_cmd_train_vae", lambda args: ran.append("vae") or _raise(KeyboardInterrupt))
    monkeypatch.setattr(core.cli.train, "_cmd_train_teacher", lambda args: ran.append("teacher"))
    small_dataset(tmp_path / "data")
    assert main(["prepare", str(tmp_path / "data"), "--out", str(tmp_path / "models"), "--teacher-batch-size", "8"]) == 130
    assert ran == ["vae"] and capsys.readouterr().err == "interrupted\n"


def _raise(exc):
    raise exc


def test_sigint_during_a_long_command_prints_interrupted(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "core", "train-teacher", "--epochs", "1", "--threads", "1",
                             "--out", str(tmp_path / "teacher")], cwd=ROOT, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # not inherited ignored
    seen, deadline = b"", time.monotonic() + 240
    while b"train-teacher epoch" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 4096)   # tqdm's bar: training has started
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = (seen + rest).decode()
    assert proc.returncode == 130 and err.rstrip().endswith("interrupted") and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "teacher").exists()


# ------------------------------------------------------------------------------------------------
# 6. prepare
# ------------------------------------------------------------------------------------------------

def small_dataset(root: Path) -> Path:
    """3 classes x 20 training images (54 after the validation hold-out) and 4 test images each."""
    draw_shapes(root / "train", 20)
    draw_shapes(root / "test", 4, seed=1)
    return root


def test_prepare_refuses_a_dataset_without_a_test_split_or_too_small_for_a_batch(tmp_path, capsys):
    draw_shapes(tmp_path / "data" / "train", 20)
    assert main(["prepare", str(tmp_path / "data"), "--out", str(tmp_path / "models")]) == 2
    assert "data has no test split: add ROOT/test (or ROOT/val)" in refusal(capsys)
    small_dataset(tmp_path / "data")
    assert main(["prepare", str(tmp_path / "data"), "--out", str(tmp_path / "models")]) == 2
    assert refusal(capsys) == ("error: train-teacher would take no optimisation step: 54 training images make less "
                               "than one batch of --teacher-batch-size 128; give --teacher-batch-size 54 or less\n")
    assert main(["prepare", str(tmp_path / "data"), "--out", str(tmp_path / "models"), "--teacher-batch-size", "8",
                 "--vae-epochs", "0.5", "--vae-batch-size", "64"]) == 2
    assert "give --vae-batch-size 27 or less (or more --vae-epochs)" in refusal(capsys)
    assert not (tmp_path / "models").exists()


def test_prepare_of_a_small_dataset_by_relative_paths_works_from_another_folder(tmp_path, monkeypatch, capsys):
    from shapes_fixtures import QUICK_PREPARE

    from core.models.spec import open_model_folder

    small_dataset(tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path / "work")
    old = os.umask(0o022)
    try:
        assert main(["prepare", "data", "--out", "models/x", *QUICK_PREPARE, "--vae-batch-size", "16",
                     "--teacher-batch-size", "16", "--no-diffusion"]) == 0
    finally:
        os.umask(old)
    for path in Path("models").rglob("*"):   # safetensors writes 0600; the umask's modes are restored
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
    monkeypatch.chdir(tmp_path)   # elsewhere: the recorded dataset is still found
    folder = open_model_folder("work/models/x")
    assert Path(folder.root) == tmp_path / "work" / "data" and Path(folder.spec.vae) == Path("work/models/x/vae")
    capsys.readouterr()
    assert main(["distill", "--models", "work/models/x", "--method", "pgfm", "--ipc", "1", "--out", "set"]) == 0
    assert "3 classes" in capsys.readouterr().out


def test_a_relative_path_of_an_older_record_is_found_beside_the_model_folder(tmp_path):
    import json

    from core.models.spec import open_model_folder

    (tmp_path / "models" / "x").mkdir(parents=True)
    (tmp_path / "models" / "data").mkdir()
    (tmp_path / "models" / "x" / "dataset.json").write_text(json.dumps({"root": "../data", "resolution": 16,
                                                                        "channels": 3}))
    assert Path(open_model_folder(tmp_path / "models" / "x").root).resolve() == tmp_path / "models" / "data"
