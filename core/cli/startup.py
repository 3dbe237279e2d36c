"""`bench-startup`: how long the command line takes to answer, measured in fresh processes: ``--help`` (and
whether it imported torch) and a whole ``distill --method pgfm --ipc 10`` into a zip, with the import time
of the heavy libraries in that process (``python -X importtime``)."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "diffusers", "torch._dynamo", "sklearn", "scipy", "PIL")


def add_parsers(add) -> None:
    p = add("bench-startup", "Time fresh CLI processes: --help, and a whole distill --method pgfm --ipc 10 into a "
            "zip, with the import time of torch, diffusers and scikit-learn in it.", _cmd_bench_startup)
    p.add_argument("--repeats", type=int, default=3, help="processes timed per figure (default 3; median shown)")
    p.add_argument("--json", default=None)


def _timed(argv: list[str]) -> tuple[float, str]:
    """Wall seconds of ``python -X importtime -m core ARGV`` and its stderr (the import times)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "core", *argv], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = "\n".join(l for l in done.stderr.splitlines() if not l.startswith("import time:"))[-400:]
        raise RuntimeError(f"python -m core {' '.join(argv)} failed ({done.returncode}): {tail}")
    return seconds, done.stderr


def import_seconds(stderr: str) -> dict[str, float]:
    """Cumulative import seconds of each HEAVY package from ``-X importtime`` lines (0 when not imported)."""
    found = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, cumulative, name = line.split("|")
            name = name.strip()
            if name in HEAVY and name not in found:
                found[name] = int(cumulative) / 1e6
    return {name: round(found.get(name, 0.0), 3) for name in HEAVY}


def _cmd_bench_startup(args: argparse.Namespace) -> None:
    from core.io import write_json

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    help_runs = [_timed(["--help"]) for _ in range(args.repeats)]
    with tempfile.TemporaryDirectory(prefix="distill-startup-") as tmp:
        distill_runs = [_timed(["distill", "--method", "pgfm", "--ipc", "10", "--seed", str(args.seed),
                                "--out", str(Path(tmp) / f"set-{k}.zip")]) for k in range(args.repeats)]
    report = {
        "help_s": round(statistics.median(s for s, _ in help_runs), 3),
        "help_imports_torch": any(import_seconds(err)["torch"] > 0 for _, err in help_runs),
        "distill_pgfm_ipc10_zip_s": round(statistics.median(s for s, _ in distill_runs), 3),
        "distill_imports_s": import_seconds(min(distill_runs)[1]),
        "repeats": args.repeats, "target_distill_s": 4.0,
    }
    print(f"python -m core --help: {report['help_s']:.2f} s (median of {args.repeats}); imports torch: "
          f"{'yes' if report['help_imports_torch'] else 'no'}")
    print(f"python -m core distill --method pgfm --ipc 10 --out X.zip: {report['distill_pgfm_ipc10_zip_s']:.2f} s "
          f"(target <= 4 s)")
    imports = report["distill_imports_s"]
    print("  of which imports (cumulative, fastest run; torch._dynamo is imported by diffusers): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in imports.items()))
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
