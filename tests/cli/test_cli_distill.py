"""``python -m core distill`` on the embedded default writes a complete output folder."""
import json
from types import SimpleNamespace

import pytest

from core.cli.main import main


@pytest.fixture
def distill(capsys):
    """Run ``python -m core distill ARGS`` in-process; returns (returncode, stdout, stderr)."""
    def run(*args: str) -> SimpleNamespace:
        code = main(["distill", *args])
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)
    return run


@pytest.mark.parametrize("method", ["random", "d4m", "ddoq", "fm", "pgfm", "diffusion-d4m", "diffusion-mg"])
def test_distill_writes_a_complete_folder(distill, tmp_path, method):
    out = tmp_path / method
    result = distill("--method", method, "--ipc", "2", "--classes", "Trouser,7", "--out", str(out), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["seed"] == 3 and manifest["num_images"] == 4
    assert manifest["config"]["classes"] == [1, 7]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["01-Trouser", "07-Sneaker"]
    assert len(list(out.glob("*/*.png"))) == 4 and (out / "latents.safetensors").is_file()
    assert manifest["models"]["vae_fingerprint"]
    # --dtype auto on a CPU samples in float32 (the shipped benchmarks' precision); TF32 is CUDA's only
    assert manifest["config"]["sampler"]["dtype"] == "float32"
    assert manifest["precision"] == {"device": "cpu", "tf32": False, "dtype": "float32"}


def test_device_auto_picks_this_machines_device_and_the_manifest_says_which(distill, tmp_path):
    import torch

    result = distill("--method", "d4m", "--ipc", "1", "--device", "auto", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["precision"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_float16_decoding_with_a_stable_diffusion_vae_is_refused_before_any_work(distill, tmp_path):
    vae = tmp_path / "sd-vae"   # its config is all the check reads: nothing is loaded
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL",
                                                 "block_out_channels": [128, 256, 512, 512]}))
    result = distill("--vae", str(vae), "--dtype", "float16", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "float16 decoding refused" in result.stderr and "bfloat16" in result.stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_is_refused_before_any_work(distill, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    result = distill("--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["--ipc", "6001"], "ipc=6001 is larger than these classes' sizes"),
    (["--classes", "Hat"], "unknown classes ['Hat']"),
    (["--guidance", "-1"], "λ must be >= 0"),
    (["--guidance", "nan"], "λ must be a finite number"),
    (["--trust-radius", "-0.5"], "trust radius r must be > 0"),
    (["--t0", "1.0"], "t0 must lie in [0, 1)"),
    (["--t-start", "0.9", "--t-stop", "0.2"], "t_start <= t_stop"),
    (["--steps", "0"], "steps must be an integer >= 1"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(distill, tmp_path, args, message):
    result = distill("--out", str(tmp_path / "o"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_distill_to_a_zip_path_writes_the_zipped_export(tmp_path, capsys):
    import zipfile

    from core.cli.main import main

    out = tmp_path / "set.zip"
    assert main(["distill", "--method", "d4m", "--ipc", "1", "--classes", "0,1", "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    assert "manifest.json" in names and len([n for n in names if n.endswith(".png")]) == 2
    assert main(["distill", "--method", "d4m", "--ipc", "1", "--classes", "0", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_refinement_in_the_teachers_features_loads_the_teacher(distill, tmp_path):
    out = tmp_path / "o"
    result = distill("--method", "pgfm", "--ipc", "1", "--classes", "1,7", "--refine", "2",
                     "--refine-embedding", "teacher", "--out", str(out))
    assert result.returncode == 0, result.stderr
    refine = json.loads((out / "manifest.json").read_text())["config"]["refine"]
    assert refine["embedding"] == "teacher" and refine["iterations"] == 2
    result = distill("--refine", "2", "--refine-embedding", "teacher", "--teacher", str(tmp_path / "none"),
                     "--out", str(tmp_path / "p"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and not (tmp_path / "p").exists()
    assert "none: model folder not found" in result.stderr
