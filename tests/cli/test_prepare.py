"""Your own dataset end to end, CI-sized: a procedurally drawn ImageFolder (shapes, not Fashion-MNIST) through
`prepare` (VAE, teacher, flow, diffusion, figures), then `distill --models` and `evaluate --models`."""
import json
from pathlib import Path

from shapes_fixtures import QUICK_PREPARE, draw_shapes

from core.cli.main import main


def test_prepare_then_distill_and_evaluate_with_the_model_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "shapes"
    draw_shapes(data / "train", 60)
    draw_shapes(data / "val", 10, seed=1)
    models = tmp_path / "models" / "shapes"
    quick = QUICK_PREPARE
    assert main(["prepare", str(data), "--out", str(models), *quick]) == 0
    out = capsys.readouterr().out
    assert "[prepare 5/5] eval-models" in out and "validation held out of train" in out
    for part in ("vae", "teacher", "flow", "diffusion"):
        assert (models / part / "training.json").is_file(), part
    figures = json.loads((models / "eval.json").read_text())
    assert {"vae", "teacher", "flow"} <= figures.keys()
    assert main(["prepare", str(data), "--out", str(models), *quick]) == 0   # run again: nothing is trained again
    again = capsys.readouterr().out
    assert again.count("done before") == 4

    distilled = tmp_path / "pgfm"
    assert main(["distill", "--models", str(models), "--method", "pgfm", "--ipc", "2", "--out", str(distilled)]) == 0
    manifest = json.loads((distilled / "manifest.json").read_text())
    assert manifest["num_images"] == 6 and manifest["models"]["pool"].endswith("-train-minus-val")
    assert Path(manifest["models"]["flow"]).name == "flow" and "models" in manifest["models"]["flow"]
    result = tmp_path / "result.json"
    assert main(["evaluate", str(distilled), "--models", str(models), "--protocol", "soft", "--epochs", "1",
                 "--seeds", "1", "--json", str(result)]) == 0   # soft labels: the folder's own teacher
    assert 0 <= json.loads(result.read_text())["accuracy_mean"] <= 1
    assert main(["distill", "--models", str(tmp_path), "--method", "d4m", "--ipc", "1", "--out", str(tmp_path / "x")]) == 2
    assert "not a model folder written by `prepare`" in capsys.readouterr().err


def test_bench_measures_a_model_folder_in_its_own_results_folder(shapes_models, tmp_path, capsys):
    out = tmp_path / "bench-shapes"
    quick = ["--ipc", "1", "--methods", "random", "pgfm", "--protocols", "hard", "--seeds", "1", "--epochs", "2",
             "--no-whole", "--architectures", "--no-sweep", "--no-efficiency", "--threads", "1"]
    assert main(["bench", "--models", str(shapes_models.models), *quick, "--out", str(out)]) in (0, None)
    results = json.loads((out / "results.json").read_text())
    meta = results["meta"]
    assert meta["dataset"].startswith("imagefolder ") and meta["test_images"] == 36   # its own test split
    assert meta["pool"]["name"].endswith("-minus-val") and meta["pool"]["images"] == 180   # val/ is its own folder
    assert {"main/random/ipc1", "main/pgfm/ipc1"} <= results["cells"].keys()
    report = (out / "RESULTS.md").read_text()
    assert report.startswith("# Benchmark results (imagefolder ") and "KIP" not in report
    fmnist = tmp_path / "bench-fmnist"   # a results folder of the embedded default's benchmark is not mixed into
    fmnist.mkdir()
    (fmnist / "results.json").write_text(json.dumps({"cells": {"main/random/ipc1": {}}, "meta": {}}))
    capsys.readouterr()
    assert main(["bench", "--models", str(shapes_models.models), *quick, "--out", str(fmnist)]) == 2
    assert "holds the benchmark of fashion-mnist" in capsys.readouterr().err
    assert json.loads((fmnist / "results.json").read_text()) == {"cells": {"main/random/ipc1": {}}, "meta": {}}
