"""`bench-startup`: how long the command line takes, measured in fresh processes: ``--help`` (and whether it
imported torch), a whole ``distill --method pgfm --ipc 10`` into a zip, and the heavy imports that process
needs, each alone (``python -c "import ..."``), to show where the time goes."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.cli.options import bounded

REPO = Path(__file__).resolve().parents[2]
# What a distill process imports, each timed alone in a fresh interpreter (wall seconds include the interpreter).
IMPORTS = {
    "python": "pass",
    "torch": "import torch",
    "torch + torch._dynamo": "import torch, torch._dynamo",
    "torch + diffusers AutoencoderKL": "import torch, diffusers.models.autoencoders.autoencoder_kl",
    "sklearn.cluster": "import sklearn.cluster",
}


def add_parsers(add) -> None:
    p = add("bench-startup", "Time fresh CLI processes: --help, a whole distill --method pgfm --ipc 10 into a zip, "
            "and the heavy imports it needs (torch, diffusers, scikit-learn), each alone.", _cmd_bench_startup)
    p.add_argument("--repeats", type=bounded("repeats"), default=3,
                   help="processes timed per figure (default 3; median shown)")
    p.add_argument("--json", default=None)


def _wall(argv: list[str], repeats: int) -> float:
    """Median wall seconds of ``repeats`` fresh processes ``python ARGV`` (run in the repository)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"python {' '.join(argv)} failed ({done.returncode}): {done.stderr[-400:]}")
    return round(statistics.median(times), 3)


def _cmd_bench_startup(args: argparse.Namespace) -> None:
    from core.io import write_json

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    probe = "import sys, runpy; sys.argv = ['core', '--help']; runpy.run_module('core', run_name='__main__')"
    torch_free = subprocess.run([sys.executable, "-c", f"import sys\ntry:\n    {probe}\nexcept SystemExit:\n    pass\n"
                                 "print('torch' in sys.modules)"], capture_output=True, text=True, cwd=REPO)
    report = {"help_s": _wall(["-m", "core", "--help"], args.repeats),
              "help_imports_torch": torch_free.stdout.strip().splitlines()[-1:] != ["False"]}
    with tempfile.TemporaryDirectory(prefix="distill-startup-") as tmp:
        report["distill_pgfm_ipc10_zip_s"] = _wall(["-m", "core", "distill", "--method", "pgfm", "--ipc", "10",
                                                    "--seed", str(args.seed), "--overwrite",
                                                    "--out", str(Path(tmp) / "set.zip")], args.repeats)
    report["imports_alone_s"] = {name: _wall(["-c", code], args.repeats) for name, code in IMPORTS.items()}
    report.update(repeats=args.repeats, target_distill_s=4.0)
    print(f"python -m core --help: {report['help_s']:.2f} s (median of {args.repeats}); imports torch: "
          f"{'yes' if report['help_imports_torch'] else 'no'}")
    print(f"python -m core distill --method pgfm --ipc 10 --out X.zip: {report['distill_pgfm_ipc10_zip_s']:.2f} s "
          "(target <= 4 s)")
    print("its heavy imports, each alone in a fresh process: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in report["imports_alone_s"].items()))
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
