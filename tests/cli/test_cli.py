import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for command in ("train-vae", "train-teacher", "train-flow", "train-diffusion", "encode", "distill",
                    "evaluate", "bench", "bench-speed", "bench-student", "bench-engine", "bench-startup", "eval-models"):
        assert command in out.stdout


def test_every_command_takes_a_seed():
    from core.cli.main import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps sub-parsers here
    assert len(commands) >= 10
    for name, sub in commands.items():
        assert "--seed" in sub.format_help(), name


def test_missing_dataset_is_a_clear_error(tmp_path):
    out = run("encode", "--data-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"))
    assert out.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in out.stderr and "Traceback" not in out.stderr


def test_encode_prints_where_latents_went(tmp_path):
    out = run("encode", "--splits", "test", "--cache-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert str(tmp_path) in out.stdout and "10000 latents of shape (4, 8, 8)" in out.stdout
    assert list((tmp_path / "latents").glob("fashion-mnist-test-*.safetensors"))


def test_help_and_a_mistyped_option_import_no_torch():
    for args in (["--help"], ["distill", "--methd", "pgfm", "--out", "x"], ["distill", "--help"]):
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "core", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
        assert out.returncode in (0, 2) and imported, out.stderr[-300:]
        assert not {"torch", "diffusers", "sklearn"} & imported, (args, {"torch", "diffusers", "sklearn"} & imported)
        if "--methd" in args:
            assert out.returncode == 2 and "error: unrecognized arguments: --methd" in out.stderr


def test_a_latent_store_has_no_validation_split_to_hold_out(tmp_path, capsys):
    from core.cli.main import main

    assert main(["train-flow", "--latent-store", str(tmp_path / "store"), "--train-split", "train-minus-val",
                 "--out", str(tmp_path / "flow")]) == 2
    assert "a latent store trains on all its images" in capsys.readouterr().err
    assert not (tmp_path / "flow").exists()


def test_teacher_and_students_on_an_image_folder(tmp_path, capsys):
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_splits import make_folder

    from core.cli.main import main

    root = tmp_path / "data"
    make_folder(root / "train", {"circle": 12, "square": 12}, size=16, mode="RGB")
    make_folder(root / "val", {"circle": 4, "square": 4}, size=16, mode="RGB")
    data = ["--dataset", "imagefolder", "--data-dir", str(root), "--resolution", "16", "--channels", "3"]
    assert main(["train-teacher", *data, "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "teacher")]) == 0
    record = json.loads((tmp_path / "teacher" / "training.json").read_text())
    assert "train-minus-val (22 images)" in record["dataset"] and "-test (8 images)" in record["evaluated_on"]
    assert json.loads((tmp_path / "teacher" / "config.json").read_text())["config"]["depth"] == 2   # 16 px: 2 blocks
    out = capsys.readouterr().out
    assert "validation held out of train" in out and f"test {root / 'val'}" in out
    result = tmp_path / "result.json"
    assert main(["evaluate", str(root / "train"), *data, "--epochs", "1", "--seeds", "1", "--json", str(result)]) == 0
    assert 0 <= json.loads(result.read_text())["accuracy_mean"] <= 1
    assert main(["evaluate", str(root / "train"), *data, "--protocol", "soft", "--epochs", "1", "--seeds", "1"]) == 2
    assert "does not fit this data" in capsys.readouterr().err   # the embedded teacher is Fashion-MNIST's
    assert main(["evaluate", str(root / "train"), *data, "--protocol", "soft", "--epochs", "1", "--seeds", "1",
                 "--teacher", str(tmp_path / "teacher")]) == 0
    assert main(["train-vae", *data, "--epochs", "0.5", "--batch-size", "8", "--out", str(tmp_path / "vae")]) == 0
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert (config["in_channels"], config["block_out_channels"]) == (3, [16, 32])   # 16 px: 2 blocks, a 4x8x8 latent
    assert main(["encode", *data[:4], "--resolution", "18", "--channels", "1"]) == 2
    assert "not divisible by the VAE's downsampling factor 4" in capsys.readouterr().err
    assert main(["encode", *data]) == 2   # the embedded VAE encodes grey images: said before any image is read
    assert "the VAE takes 1-channel images; --channels is 3" in capsys.readouterr().err


def test_bench_student_times_every_protocol(tmp_path, capsys):
    from core.cli.main import main

    report = tmp_path / "student.json"
    assert main(["bench-student", "--steps", "1", "--ipc", "1", "--threads", "1", "--json", str(report)]) in (0, None)
    rows = json.loads(report.read_text())["rows"]
    assert {r["protocol"] for r in rows} == {"hard", "hard-dsa", "soft-online"}
    assert all(r["seconds_per_step"]["1"] > 0 and r["train_seconds_300_epochs"]["1"] >= 300 * r["seconds_per_step"]["1"] - 0.1
               for r in rows)
    assert "ms/step" in capsys.readouterr().out


def test_distill_and_evaluate_record_their_runs_in_the_registry(tmp_path, capsys):
    from core.cli.main import main
    from core.registry import Registry, default_path

    out = tmp_path / "set"
    assert main(["distill", "--method", "d4m", "--ipc", "1", "--classes", "0,1", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--protocol", "hard", "--epochs", "1", "--seeds", "2"]) == 0
    with Registry(default_path()) as reg:   # the test's own registry ($DISTILL_REGISTRY)
        distilled, evaluated = reg.runs()
    assert distilled["kind"] == "distill" and distilled["config"]["method"] == "d4m" and distilled["export_path"] == str(out)
    assert distilled["source"] == "fashion-mnist-train-minus-val" and distilled["timings"]["total_s"] >= 0
    assert evaluated["kind"] == "evaluate" and evaluated["config"]["ipc"] == 1
    (e,) = evaluated["evaluations"]
    assert e["protocol"] == "hard" and e["seeds"] == [0, 1] and len(e["accuracies"]) == 2 and e["split"] == "test"
    assert f"recorded as run {evaluated['id']}" in capsys.readouterr().out
    broken = tmp_path / "broken.sqlite"
    broken.write_text("not a database")
    assert main(["distill", "--method", "d4m", "--ipc", "1", "--out", str(tmp_path / "other"), "--registry",
                 str(broken)]) == 2
    assert "not a SQLite file" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert broken.read_text() == "not a database"
    assert main(["distill", "--method", "d4m", "--ipc", "1", "--out", str(tmp_path / "quiet"), "--registry", "none"]) == 0
    with Registry(default_path()) as reg:
        assert len(reg.runs()) == 2


def test_eval_models_on_an_image_folder_with_its_own_teacher(tmp_path, capsys):
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_splits import make_folder

    from core.cli.main import main

    root = tmp_path / "data"   # ten classes of grey 32-px images: the embedded VAE and flow fit them
    classes = {f"c{k}": 4 for k in range(10)}
    make_folder(root / "train", classes, size=32, mode="L")
    make_folder(root / "test", {c: 2 for c in classes}, size=32, mode="L")
    data = ["--dataset", "imagefolder", "--data-dir", str(root), "--resolution", "32", "--channels", "1"]
    assert main(["train-teacher", *data, "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "teacher")]) == 0
    report = tmp_path / "models.json"
    assert main(["eval-models", *data, "--teacher", str(tmp_path / "teacher"), "--per-class", "2", "--cfg-sweep",
                 "--steps", "2", "--diffusion-steps", "2", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "(target" not in out   # the embedded default's targets are not this data's
    figures = json.loads(report.read_text())
    assert figures["vae"]["test_psnr_db"] > 0 and 0 <= figures["teacher"]["test_accuracy"] <= 1


def test_the_recommended_recipe_has_one_short_name():
    from core.cli.main import build_parser
    from core.cli.options import distill_config_from_args
    from core.config import TEACHER_REFINE

    parser = build_parser()

    def refine(*argv):
        return distill_config_from_args(parser.parse_args(["distill", "--out", "x", *argv])).refine

    assert refine("--refine-preset", "tdm") == TEACHER_REFINE == refine(
        "--refine", "150", "--refine-embedding", "teacher", "--refine-objective", "mmd")
    mixed = refine("--refine-preset", "tdm", "--refine", "300", "--refine-objective", "mean")
    assert (mixed.iterations, mixed.objective, mixed.embedding) == (300, "mean", "teacher")   # given options win
    assert refine().iterations == 0 and refine("--refine", "150").embedding == "random"
