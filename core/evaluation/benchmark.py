"""The benchmark: distil with every method, score each set, train students on it, tabulate and plot.

Results go to ``OUT/results.json`` after every finished cell (atomically), so an interrupted run keeps
what it finished and a re-run skips those cells (a cell whose parameters changed is recomputed).
``OUT/RESULTS.md`` and the PNG plots are rebuilt from results.json at the end of every run.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from core.config import BENCH_METHODS, DistillConfig, GuidanceConfig, config_hash
from core.evaluation.assess import (
    RealReference,
    assess,
    load_or_build_reference,
    reference_cache_file,
    teacher_accuracy_of,
)
from core.evaluation.students import EvalConfig, evaluate_set
from core.io import write_json
from core.pipeline.distill import DistillEngine, LocalExecutor, distill
from core.reads import read_json

# Benchmark-only variants of a distill method. random-vae: the random real images after a VAE round trip
# (encode -> decode): what the VAE alone costs real images, beside the latent-space methods.
BASE_METHOD = {"ddoq-unweighted": "ddoq", "random-vae": "random"}

# DESIGN.md section 5: published Fashion-MNIST ConvNet-3 hard-label accuracies (KIP paper, Tables 1-2).
PUBLISHED = {
    "DC (Zhao et al., ICLR 2021)": {1: "70.5 ± 0.6", 10: "82.3 ± 0.4", 50: "83.6 ± 0.4"},
    "DSA (Zhao & Bilen, ICML 2021)": {1: "70.6 ± 0.6", 10: "84.6 ± 0.3", 50: "88.7 ± 0.2"},
    "KIP images → ConvNet (Nguyen et al., NeurIPS 2021)": {1: "73.8", 10: "86.8", 50: "87.8"},
}


@dataclass(frozen=True)
class BenchConfig:
    ipcs: tuple[int, ...] = (1, 10, 50)
    seeds: int = 3
    methods: tuple[str, ...] = BENCH_METHODS
    labels: tuple[str, ...] = ("hard", "soft")
    epochs: int = 300
    real_per_class: int = 1000
    sweep: bool = True
    sweep_ipc: int = 10
    sweep_seeds: int = 1
    efficiency: bool = True
    seed: int = 0
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in BENCH_METHODS]
        if unknown:
            raise ValueError(f"unknown benchmark methods {unknown}; choose from {', '.join(BENCH_METHODS)}")
        if self.seeds < 1 or self.epochs < 1 or not self.ipcs:
            raise ValueError("seeds and epochs must be >= 1 and at least one IPC given")


@dataclass
class Bench:
    engine: DistillEngine
    teacher: object
    test: object
    out: Path
    config: BenchConfig
    log: Callable[[str], None] = print
    progress_interval_s: float = 60.0
    reference: RealReference | None = None
    results: dict = field(default_factory=dict)

    def load(self) -> None:
        path = self.out / "results.json"
        self.results = read_json(path) if path.is_file() else {"cells": {}}
        self.results.setdefault("cells", {})

    def save(self) -> None:
        write_json(self.out / "results.json", self.results)

    def cell(self, name: str, method: str, distill_config: DistillConfig, labels: tuple[str, ...], seeds: int) -> dict:
        """Distil, assess and evaluate one configuration. A cell already in results.json with the same
        parameters is kept; only label protocols it lacks are evaluated (the set is re-distilled, which
        is deterministic for the seed). results.json is rewritten after each label protocol."""
        spec = {"method": method, "distill": distill_config.to_dict(), "seeds": seeds, "epochs": self.config.epochs}
        key = config_hash(json.loads(json.dumps(spec, default=str)))
        row = self.results["cells"].get(name)
        if row is not None and config_hash({k: v for k, v in row.get("spec", {}).items() if k != "labels"}) != key:
            row = None  # parameters changed: recompute
        missing = [label for label in labels if row is None or label not in row]
        if not missing:
            self.log(f"[skip] {name} (already in results.json)")
            return row
        if self.reference is None:
            self.log("computing teacher features, PRDC radii and modes of the real training subsample…")
            self.reference = load_or_build_reference(self.engine, self.teacher, reference_cache_file(self.engine),
                                                     self.config.real_per_class, seed=self.config.seed)
        t0 = time.perf_counter()
        dset = distill(self.engine, distill_config)
        if method == "random-vae":
            t_decode = time.perf_counter()
            images = LocalExecutor().decode(self.engine.vae, dset.latents)
            decode_s = time.perf_counter() - t_decode   # counted in s/image like the other methods' decode
            dset = replace(dset, images=images, timings={**dset.timings, "decode_s": dset.timings["decode_s"] + decode_s,
                                                         "total_s": dset.timings["total_s"] + decode_s})
        row = row or {"hash": key, "method": method, "ipc": distill_config.ipc, "spec": spec}
        # the set's measurements always describe its latest distillation (seconds, cheap next to training)
        row.update(metrics=assess(self.reference, self.teacher, dset),
                   teacher_agreement=round(teacher_accuracy_of(self.teacher, dset), 4),
                   distill_seconds=round(dset.timings["total_s"], 3))
        for label in missing:
            eval_config = EvalConfig(labels=label, epochs=self.config.epochs,
                                     seeds=tuple(range(self.config.seed, self.config.seed + seeds)),
                                     use_weights=method != "ddoq-unweighted")
            result = evaluate_set(dset.images, dset.labels, self.test, eval_config, dset.weights, self.teacher,
                                  self._throttled_progress(f"{name} {label}"))
            row[label] = result.to_dict()
            self.log(f"  {name} {label}: {100 * result.mean:.2f} ± {100 * result.std:.2f}")
            # saved after each label protocol: an interrupted IPC 50 cell keeps its finished half
            row["wall_seconds"] = round(row.get("wall_seconds", 0.0) + time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            self.results["cells"][name] = row
            self.save()
        return row

    def _throttled_progress(self, prefix: str) -> Callable[[float, str], None]:
        """A progress callback that logs at most once per ``progress_interval_s`` (students take minutes)."""
        last = time.perf_counter()

        def progress(fraction: float, message: str) -> None:
            nonlocal last
            if time.perf_counter() - last >= self.progress_interval_s:
                last = time.perf_counter()
                self.log(f"    {prefix} {100 * fraction:.0f}%: {message}")
        return progress

    def distill_config(self, method: str, ipc: int, **changes) -> DistillConfig:
        return replace(self.config.distill, method=BASE_METHOD.get(method, method), ipc=ipc, seed=self.config.seed, **changes)

    def run_main(self) -> None:
        for ipc in self.config.ipcs:
            for method in self.config.methods:
                self.log(f"[{method} IPC {ipc}]")
                self.cell(f"main/{method}/ipc{ipc}", method, self.distill_config(method, ipc), self.config.labels,
                          self.config.seeds)

    def sweep_variants(self) -> dict[str, DistillConfig]:
        """One-factor-at-a-time variations of PGFM around its default."""
        base = self.config.distill.sampler
        g = base.guidance
        variants = {"default": base}
        for lam in sorted({0.3, 0.6, 1.2} - {g.strength}):
            variants[f"lambda={lam}"] = replace(base, guidance=replace(g, strength=lam))
        for schedule in sorted({"constant", "linear", "cosine"} - {g.schedule}):
            variants[f"schedule={schedule}"] = replace(base, guidance=replace(g, schedule=schedule))
        variants["window=[0,1]"] = replace(base, guidance=replace(g, t_stop=1.0))
        variants["window=[0,0.5]"] = replace(base, guidance=replace(g, t_stop=0.5))
        variants["t0=0.3"] = replace(base, t0=0.3)
        variants["r=0.5"] = replace(base, guidance=replace(g, trust_radius=0.5))
        for steps in (4, 16):
            variants[f"steps={steps}"] = replace(base, steps=steps)
        variants["lambda=0 (fm)"] = replace(base, guidance=GuidanceConfig(strength=0.0))
        ipc = self.config.sweep_ipc
        return {name: self.distill_config("pgfm", ipc, sampler=s) for name, s in variants.items()}

    def prune_stale_sweep(self) -> None:
        """Drop sweep cells of variants the current default no longer has (e.g. after the default moved)."""
        current = {f"sweep/{name}" for name in self.sweep_variants()}
        for name in [k for k in self.results["cells"] if k.startswith("sweep/") and k not in current]:
            del self.results["cells"][name]

    def run_sweep(self) -> None:
        self.prune_stale_sweep()
        for name, dc in self.sweep_variants().items():
            self.log(f"[sweep {name}]")
            self.cell(f"sweep/{name}", "pgfm", dc, ("hard",), self.config.sweep_seeds)

    def run_efficiency(self) -> None:
        ipc = self.config.sweep_ipc
        for steps in (2, 4, 8, 16):
            dc = self.distill_config("pgfm", ipc, sampler=replace(self.config.distill.sampler, steps=steps))
            self.log(f"[efficiency pgfm steps={steps}]")
            self.cell(f"efficiency/pgfm/steps{steps}", "pgfm", dc, ("hard",), self.config.sweep_seeds)
        for steps in (10, 25, 50, 100):
            dc = self.distill_config("diffusion-mg", ipc, diffusion=replace(self.config.distill.diffusion, steps=steps))
            self.log(f"[efficiency diffusion-mg steps={steps}]")
            self.cell(f"efficiency/diffusion-mg/steps{steps}", "diffusion-mg", dc, ("hard",), self.config.sweep_seeds)


def run_benchmark(bench: Bench, teacher_accuracy: float | None = None) -> dict:
    bench.out.mkdir(parents=True, exist_ok=True)
    bench.load()
    bench.results["meta"] = {"config": asdict(bench.config), "teacher_test_accuracy": teacher_accuracy}
    t0 = time.perf_counter()
    bench.run_main()
    if bench.config.sweep:
        bench.run_sweep()
    if bench.config.efficiency:
        bench.run_efficiency()
    bench.results["meta"]["last_run_seconds"] = round(time.perf_counter() - t0, 1)
    bench.save()
    write_report(bench.results, bench.out)
    return bench.results


# -------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------

def _acc(cell: dict | None, label: str) -> str:
    if not cell or label not in cell:
        return "–"
    r = cell[label]
    return f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}"


def best_sweep_setting(results: dict) -> tuple[str, dict] | None:
    sweep = {k.split("/", 1)[1]: v for k, v in results["cells"].items() if k.startswith("sweep/") and "hard" in v}
    if not sweep:
        return None
    name = max(sweep, key=lambda k: sweep[k]["hard"]["accuracy_mean"])
    return name, sweep[name]


def write_report(results: dict, out: Path) -> Path:
    """RESULTS.md and the plots, from results.json alone."""
    # Long by design: the RESULTS.md text, top to bottom, reads as the report it writes.
    cells = results["cells"]
    meta = results.get("meta", {})
    config = meta.get("config", {})
    ipcs = sorted({c["ipc"] for k, c in cells.items() if k.startswith("main/")})
    methods = [m for m in BENCH_METHODS if any(k.startswith(f"main/{m}/") for k in cells)]
    lines = ["# Benchmark results (Fashion-MNIST, embedded default)", "",
             f"Produced by `python -m core bench` on this project's machine; protocol: students ConvNet-3 (width 128, "
             f"instance norm), SGD lr 0.01, momentum 0.9, wd 5e-4, {config.get('epochs', '?')} epochs, lr ×0.1 at half, "
             f"{config.get('seeds', '?')} seeds (mean ± std of test accuracy, %). `hard`: cross-entropy on the set's "
             "labels; `soft`: KL to the teacher's temperature-4 outputs. DDOQ weights are per-sample loss weights "
             "(`ddoq-unweighted`: the same images without them). `random-vae`: the `random` real images after a "
             "VAE round trip (encode → decode): what the VAE alone costs real images.", ""]
    header = "| method | " + " | ".join(f"IPC {i} hard | IPC {i} soft" for i in ipcs) + " |"
    lines += [header, "|" + "---|" * (1 + 2 * len(ipcs))]
    for m in methods:
        row = [m] + [x for i in ipcs for x in (_acc(cells.get(f"main/{m}/ipc{i}"), "hard"),
                                                 _acc(cells.get(f"main/{m}/ipc{i}"), "soft"))]
        lines.append("| " + " | ".join(row) + " |")
    for name, values in PUBLISHED.items():
        lines.append(f"| *published:* {name} | " + " | ".join(f"{values.get(i, '–')} | –" for i in ipcs) + " |")
    if meta.get("teacher_test_accuracy") is not None:
        lines += ["", f"Whole training set: the shipped teacher (ConvNet-3 trained on all 60k images with its own "
                      f"recipe: `assets/teacher/training.json`, not the 300-epoch protocol) reaches "
                      f"{100 * meta['teacher_test_accuracy']:.2f}% test accuracy."]
    lines += ["", "Published rows: hard labels, ConvNet-3, as tabulated in the KIP paper (DESIGN.md section 5); "
                  "they were not produced by this project.", "",
              "## Set metrics", "",
              "| method | IPC | mode coverage | precision | recall | density | coverage (PRDC) | W2 latent | "
              "landing error | NFE/image | s/image | teacher agreement |", "|" + "---|" * 12]
    for i in ipcs:
        for m in methods:
            c = cells.get(f"main/{m}/ipc{i}")
            if not c:
                continue
            mt = c["metrics"]
            fmt = lambda key, scale=1.0, d=3: "–" if key not in mt else f"{scale * mt[key]:.{d}f}"  # noqa: E731
            lines.append(f"| {m} | {i} | {fmt('mode_coverage', 100, 1)}% | {fmt('precision')} | {fmt('recall')} | "
                         f"{fmt('density')} | {fmt('coverage')} | {fmt('w2_latent_mean')} | {fmt('landing_error_mean', d=4)} | "
                         f"{mt['nfe_per_image']} | {mt['seconds_per_image']:.4f} | {100 * c['teacher_agreement']:.1f}% |")
    best = best_sweep_setting(results)
    if best:
        lines += ["", "## PGFM sweep (one factor at a time around the default; hard labels)", "",
                  "| setting | accuracy | mode coverage | landing error |", "|---|---|---|---|"]
        for k, c in cells.items():
            if k.startswith("sweep/"):
                lines.append(f"| {k[6:]} | {_acc(c, 'hard')} | {100 * c['metrics']['mode_coverage']:.1f}% | "
                             f"{c['metrics'].get('landing_error_mean', float('nan')):.4f} |")
        lines += ["", f"Best setting found: **{best[0]}** ({_acc(best[1], 'hard')})."]
    eff = {k: c for k, c in cells.items() if k.startswith("efficiency/")}
    if eff:
        lines += ["", "## Efficiency (accuracy vs NFE, hard labels)", "",
                  "| sampler | NFE/image | s/image | accuracy |", "|---|---|---|---|"]
        for k, c in eff.items():
            lines.append(f"| {k[11:]} | {c['metrics']['nfe_per_image']} | {c['metrics']['seconds_per_image']:.4f} | "
                         f"{_acc(c, 'hard')} |")
    total = sum(c.get("wall_seconds", 0.0) for c in cells.values())
    lines += ["", f"Compute time of all {len(cells)} cells (distil, score, train and test every student, summed over "
                  f"resumed runs): {total / 60:.1f} min."]
    if meta.get("last_run_seconds") is not None:
        lines += [f"Last run of the command took {meta['last_run_seconds'] / 60:.1f} min (cells already in "
                  "results.json are skipped)."]
    plots = write_plots(results, out)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "RESULTS.md"
    from core.io import atomic_write

    atomic_write(path, lambda p: p.write_text("\n".join(lines) + "\n"))
    return path


def write_plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = results["cells"]
    written = []
    ipcs = sorted({c["ipc"] for k, c in cells.items() if k.startswith("main/")})
    if len(ipcs) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in BENCH_METHODS:
            xs = [i for i in ipcs if f"main/{m}/ipc{i}" in cells]
            if xs:
                ax.plot(xs, [100 * cells[f"main/{m}/ipc{i}"]["hard"]["accuracy_mean"] for i in xs], "o-", label=m)
        ax.set(xscale="log", xlabel="images per class", ylabel="test accuracy (%)", title="Accuracy vs IPC (hard labels)")
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "accuracy_vs_ipc.png"))
    sweep = {k[6:]: c for k, c in cells.items() if k.startswith("sweep/lambda") or k == "sweep/default"}
    if sweep:
        lam = {0.0 if "fm" in k else (float(k.split("=")[1]) if "=" in k else
               results["meta"]["config"]["distill"]["sampler"]["guidance"]["strength"]): c for k, c in sweep.items()}
        xs = sorted(lam)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(xs, [100 * lam[x]["metrics"]["mode_coverage"] for x in xs], "o-")
        ax.set(xlabel="guidance strength λ", ylabel="mode coverage (%)", title="Mode coverage vs λ (PGFM)")
        written.append(_save(fig, out / "coverage_vs_lambda.png"))
    eff = {k: c for k, c in cells.items() if k.startswith("efficiency/")}
    if eff:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name in ("pgfm", "diffusion-mg"):
            pts = sorted((c["metrics"]["nfe_per_image"], 100 * c["hard"]["accuracy_mean"])
                         for k, c in eff.items() if k.startswith(f"efficiency/{name}/"))
            if pts:
                ax.plot(*zip(*pts), "o-", label=name)
        ax.set(xscale="log", xlabel="NFE per image", ylabel="test accuracy (%)", title="Accuracy vs NFE")
        ax.legend()
        written.append(_save(fig, out / "accuracy_vs_nfe.png"))
    return written


def _save(fig, path: Path) -> Path:
    from core.io import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def results_summary(results: dict) -> str:
    """One line per main cell, for the console."""
    rows = []
    for k, c in sorted(results["cells"].items()):
        hard = c.get("hard")
        rows.append(f"{k:<40} hard {100 * hard['accuracy_mean']:.2f} ± {100 * hard['accuracy_std']:.2f}" if hard else k)
    return "\n".join(rows)
