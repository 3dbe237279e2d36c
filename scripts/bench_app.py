"""Measure the app's responsiveness on this machine and print it (targets of the app issue; no assertions).

    python scripts/bench_app.py [--cold] [--repeats 5] [--threads N] [--dtypes float32 bfloat16] [--json FILE]

1. warm open: a fresh Python process (machine set up before: latents and UMAP cached) runs the app
   until its first page is rendered (Streamlit AppTest: script time; the browser adds its page load);
2. λ change: on each main page, set the guidance slider and re-run (sampling + metrics + figures), and
   the time until the run's W2, scored in the background, is in;
3. --cold: the very first start with an empty cache folder: encoding the dataset, the first page, then
   fitting UMAP in the background until it is ready.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # core and ui import from the project root
PAGES = ("pages/sampling.py", "pages/latent_space.py", "pages/trajectories.py", "pages/coverage.py")

FIRST_PAGE = """
import time, sys
t0 = float(sys.argv[1])
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=900).run()
assert not at.exception, at.exception
first = time.time() - t0
umap = None
if len(sys.argv) > 2:
    from ui.projection import umap_job
    from ui.state import get_studio
    job = umap_job(get_studio()).start()
    job.wait()
    umap = time.time() - t0
print(first, umap)
"""


def fresh_process(env: dict, with_umap: bool = False) -> tuple[float, float | None]:
    args = [sys.executable, "-c", FIRST_PAGE, repr(time.time())] + (["umap"] if with_umap else [])
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), None if out[-1] == "None" else float(out[-1])


def lambda_changes(repeats: int, dtype: str | None = None) -> dict[str, list[float]]:
    """Per page: seconds of script time for a λ change (each to a λ no earlier run had, so nothing is reused
    from the history), of that run's ``run_once`` alone (distillation and latent scores), and until all its
    scores (teacher scores and W2, computed in the background) are in. ``dtype``: the sidebar's model
    precision (default: the app's)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    if dtype:
        at.session_state["dtype"] = dtype
    at.run()
    timings = {}
    grid = iter([round(0.3 + 0.05 * k, 2) for k in range(40)])   # λ values, each used once
    for page in PAGES:
        at.switch_page(page).run()
        times, runs, scored = [], [], []
        for _ in range(repeats):
            lam = next(grid)
            t0 = time.perf_counter()
            at.slider(key="guidance").set_value(lam).run()
            times.append(time.perf_counter() - t0)
            assert not at.exception, at.exception
            run = at.session_state["run"]
            assert run.config.sampler.guidance.strength == lam
            runs.append(run.seconds)
            if run.scores_job is not None:
                run.scores_job.wait()
                scored.append(run.scores_job.finished_at - t0)
        timings[Path(page).stem] = times
        timings[f"{Path(page).stem}: run_once"] = runs
        timings[f"{Path(page).stem}: all scores in"] = scored
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="also measure the very first start (empty cache)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the app (DISTILL_STUDIO_THREADS; default: the app's choice)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "bfloat16"],
                        help="measure the λ changes once per model precision (default: the app's default only)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.threads:
        os.environ["DISTILL_STUDIO_THREADS"] = str(args.threads)
    from ui.state import app_threads

    report: dict = {"cpu_count": os.cpu_count(), "threads": app_threads()}
    print(f"{os.cpu_count()} CPU cores, the app's torch threads: {app_threads()}")

    env = {**os.environ, "DISTILL_STUDIO_UMAP_AUTOSTART": "1"}
    warm = [fresh_process(env)[0] for _ in range(2)]
    report["warm_open_first_page_s"] = warm
    print(f"open the app (set up before), fresh process -> first page rendered: "
          f"{', '.join(f'{t:.1f}' for t in warm)} s (target <= 5 s)")

    os.environ["DISTILL_STUDIO_UMAP_AUTOSTART"] = "0"
    for dtype in args.dtypes or [None]:
        timings = lambda_changes(args.repeats, dtype)
        report["lambda_change_s" if dtype is None else f"lambda_change_s ({dtype})"] = timings
        print(f"change λ -> re-sample, re-score, redraw (10 classes x IPC 10, 8 Euler steps; model precision "
              f"{dtype or 'the app default'}; target <= 0.5 s script time):")
        for page, times in timings.items():
            if times:
                print(f"  {page:<32} median {statistics.median(times):.2f} s, max {max(times):.2f} s")

    if args.cold:
        with tempfile.TemporaryDirectory(prefix="distill-cold-") as cache:
            first, umap = fresh_process({**env, "DISTILL_CACHE": cache}, with_umap=True)
        report["cold_start"] = {"first_page_s": first, "umap_ready_s": umap}
        print(f"very first start (empty cache): first page after {first:.1f} s (encoding included), "
              f"UMAP ready after {umap:.1f} s (target <= 180 s)")
    if args.json:
        from core.io import write_json

        write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
