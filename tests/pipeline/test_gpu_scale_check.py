"""scripts/gpu_scale_check.py, the device check of the real-scale path, at its --tiny sizes on the CPU."""
import importlib.util
import json
from pathlib import Path

import torch
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_scale_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_scale_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_scale_check_runs_every_stage_on_the_cpu(tmp_path, capsys):
    report = _script().main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "work"),
                             "--json", str(tmp_path / "report.json")])
    stages = ["encode", "quantize", "sample", "decode", "export", "bench-engine", "distill-cli"]
    assert list(report["stages"]) == stages and report["device"] == "cpu"
    assert json.loads((tmp_path / "report.json").read_text())["stages"].keys() == set(stages)
    for name in stages:
        row = report["stages"][name]
        assert row["seconds"] >= 0 and row["peak_bytes"] > 0 and row["peak_is"] == "peak RSS of this process"
    size = report["size"]
    assert report["stages"]["encode"]["items"] == size["classes"] * size["per_class"]
    assert report["stages"]["decode"]["batch"] >= 1 and report["stages"]["decode"]["estimate_bytes_per_image"] > 0
    for export in (Path(report["export"]), tmp_path / "work" / "export-cli"):
        pngs = sorted(export.glob("*/*.png"))
        assert len(pngs) == report["images"] == size["classes"] * size["ipc"]
        with Image.open(pngs[0]) as im:
            assert im.size == (size["resolution"],) * 2 and im.mode == "RGB"
    out = capsys.readouterr().out
    assert "decode batch" in out and "peak memory" in out   # the distill command's log
    assert not torch.cuda.is_available() or report["device"] == "cpu"
