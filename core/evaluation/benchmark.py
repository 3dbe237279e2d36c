"""The benchmark: distil with every method, score each set, train students on it, tabulate and plot.

Results go to ``OUT/results.json`` after every finished cell (atomically), so an interrupted run keeps
what it finished and a re-run skips those cells (a cell whose parameters changed is recomputed). Several
benchmarks may share one folder: each write merges, under a lock, with what the others wrote since.
``OUT/RESULTS.md`` and the PNG plots are rebuilt from results.json at the end of every run.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from core.config import (
    BENCH_METHODS,
    DEFAULT_REFINE,
    LONG_REFINE,
    PROTOCOLS,
    REFINE_LR,
    STUDENT_ARCHITECTURES,
    TEACHER_REFINE,
    TRAIN_MINUS_VAL,
    DistillConfig,
    GuidanceConfig,
    RefineConfig,
    config_hash,
    default_refine,
)
from core.data.datasets import holds_out_validation
from core.evaluation.assess import (
    RealReference,
    assess,
    load_or_build_reference,
    reference_cache_file,
    teacher_accuracy_of,
)
from core.evaluation.ranking import RankingBaseline
from core.evaluation.students import EvalResult, evaluate_set, protocol_config
from core.io import locked, write_json
from core.pipeline.distill import DistillEngine, LocalExecutor, distill
from core.reads import read_json, tensors_fingerprint

# Benchmark-only variants of a distill method. random-vae: the random real images after a VAE round trip
# (encode -> decode): what the VAE alone costs real images, beside the latent-space methods.
# pgfm-dm: PGFM's samples refined by distribution matching (core.pipeline.refine, default_refine(ipc));
# pgfm-tdm: the matching in the teacher's features, with the MMD term (TEACHER_REFINE).
BASE_METHOD = {"ddoq-unweighted": "ddoq", "random-vae": "random", "pgfm-dm": "pgfm", "pgfm-tdm": "pgfm"}
METHOD_CHANGES = {"pgfm-dm": lambda ipc: {"refine": default_refine(ipc)},
                  "pgfm-tdm": lambda ipc: {"refine": TEACHER_REFINE}}

FASHION_MNIST = "fashion-mnist"   # meta.dataset of the embedded default's benchmark (and of results without one)

# DESIGN.md section 5: published Fashion-MNIST ConvNet-3 hard-label accuracies (KIP paper, Tables 1-2).
PUBLISHED = {
    "DC (Zhao et al., ICLR 2021)": {1: "70.5 ± 0.6", 10: "82.3 ± 0.4", 50: "83.6 ± 0.4"},
    "DSA (Zhao & Bilen, ICML 2021)": {1: "70.6 ± 0.6", 10: "84.6 ± 0.3", 50: "88.7 ± 0.2"},
    "KIP images → ConvNet (Nguyen et al., NeurIPS 2021)": {1: "73.8", 10: "86.8", 50: "87.8"},
}


# Random real images are drawn anew for every student seed (seed s draws with seed s): a single draw at
# IPC 1 decides the baseline by luck (one image per class), and the spread over draws belongs in its ±.
PER_SEED = "one per student seed"

# The benchmark's stages beside the main table (DESIGN.md section 4b).
ARCH_IPCS = (10, 50)                     # cross-architecture students, at these IPC (those the run has)
ARCH_METHODS = ("random", "d4m", "ddoq", "pgfm", "pgfm-dm", "pgfm-tdm")
ARCH_PROTOCOL = "hard-dsa"


@dataclass(frozen=True)
class BenchConfig:
    """What the benchmark runs. ``pool``: the training images the methods draw from (``train-minus-val``:
    the validation split held out, as DESIGN.md 4b asks; ``train`` only for data without one). The main
    table, whole-data row and cross-architecture students are tested on the test split; the sweep, which
    exists to choose settings, on the validation split."""

    ipcs: tuple[int, ...] = (1, 10, 50)
    seeds: int = 3
    methods: tuple[str, ...] = BENCH_METHODS
    protocols: tuple[str, ...] = ("hard", "hard-dsa", "soft-online")
    epochs: int = 300
    real_per_class: int = 1000
    pool: str = TRAIN_MINUS_VAL
    whole_data: bool = True
    whole_data_epochs: int = 4
    whole_data_seeds: int = 1
    architectures: tuple[str, ...] = ("resnet-bn", "mlp")
    main: bool = True
    sweep: bool = True
    sweep_ipc: int = 10
    sweep_seeds: int = 1
    sweep_protocol: str = "hard"
    sweep_variants: tuple[str, ...] = ()   # names of ``Bench.sweep_variants`` to run (empty: all)
    efficiency: bool = True
    seed: int = 0
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in BENCH_METHODS]
        if unknown:
            raise ValueError(f"unknown benchmark methods {unknown}; choose from {', '.join(BENCH_METHODS)}")
        bad = [p for p in (*self.protocols, self.sweep_protocol) if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise ValueError(f"unknown protocols {bad}; choose from {', '.join(PROTOCOLS)}")
        bad = [a for a in self.architectures if a not in STUDENT_ARCHITECTURES]
        if bad:
            raise ValueError(f"unknown student architectures {bad}; choose from {', '.join(STUDENT_ARCHITECTURES)}")
        if self.pool not in ("train", TRAIN_MINUS_VAL):
            raise ValueError(f"pool must be 'train' or {TRAIN_MINUS_VAL!r}, got {self.pool!r}")
        if min(self.seeds, self.epochs, self.whole_data_epochs, self.whole_data_seeds) < 1 or not self.ipcs:
            raise ValueError("seeds and epochs must be >= 1 and at least one IPC given")


@dataclass
class Bench:
    """``test``: the split the reported tables read; ``validation``: the one the sweep reads (needed when
    the config sweeps). ``engine`` must hold the config's ``pool`` (``hold_out_validation`` makes it)."""

    engine: DistillEngine
    teacher: object
    test: object
    out: Path
    config: BenchConfig
    validation: object | None = None
    log: Callable[[str], None] = print
    progress_interval_s: float = 60.0
    reference: RealReference | None = None
    results: dict = field(default_factory=dict)
    registry: object | None = None   # a core.registry.Registry: each cell and each protocol's students go there too
    _registry_runs: dict = field(default_factory=dict, repr=False)
    # sets distilled in this process, by method and config: a set's cross-architecture cells reuse it (the
    # refinement of pgfm-dm takes minutes; distillation is deterministic for the seed, so nothing changes)
    _distilled: dict = field(default_factory=dict, repr=False)
    _touched: set = field(default_factory=set, repr=False)   # cells this process wrote or dropped since it saved

    def __post_init__(self) -> None:
        held_out = holds_out_validation(self.engine.dataset.name)
        if held_out != (self.config.pool == TRAIN_MINUS_VAL):
            raise ValueError(f"the benchmark's pool is {self.config.pool!r} but the engine holds "
                             f"{self.engine.dataset.name!r}" + ("" if held_out else
                             "; hold the validation split out first (core.pipeline.distill.hold_out_validation)"))
        if self.config.sweep and self.validation is None:
            raise ValueError("the sweep chooses settings on the validation split: give the Bench its validation images")
        if self.engine.teacher is not self.teacher:   # pgfm-tdm's embedding is the teacher meta.models records
            self.engine = replace(self.engine, teacher=self.teacher)

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    def _read(self) -> dict:
        return read_json(self.results_path) if self.results_path.is_file() else {"cells": {}}

    def load(self) -> None:
        self.results = self._read()
        self.results.setdefault("cells", {})

    def refresh(self) -> None:
        """Take up the cells other benchmarks wrote to the folder since this one last read or saved it (its
        writes are atomic, so no lock is needed to read); every change of this one is saved already."""
        self.results["cells"] = self._read().get("cells", {})

    def save(self) -> None:
        """Write results.json, merged under the folder's lock with what other benchmarks wrote to it since this
        one last read or saved it: the cells this process changed since then come from it (with the protocols and
        students only the file has, see ``merge_cell``), every other cell from the file. ``meta`` is this run's,
        but a run without the main table keeps the file's ``config``, and the models must be the file's (see
        ``models_conflict``). ``results`` becomes the merge."""
        with locked(self.out):
            on_disk = self._read()
            theirs = on_disk.get("meta", {})
            mine = self.results.get("meta", {})
            changed = models_conflict(theirs.get("models") or {}, mine.get("models") or {})
            if changed:
                raise ValueError(models_conflict_message(self.results_path, changed))
            cells = dict(on_disk.get("cells", {}))
            for name in self._touched:
                if name in self.results["cells"]:
                    cells[name] = merge_cell(cells.get(name), self.results["cells"][name])
                else:
                    cells.pop(name, None)
            meta = {**theirs, **mine}
            if "models" in meta:
                meta["models"] = {**theirs.get("models", {}), **meta["models"]}
            if not self.config.main and "config" in theirs:
                meta["config"] = theirs["config"]
            self.results = {**self.results, "cells": cells, "meta": meta}
            write_json(self.results_path, self.results)
            self._touched.clear()

    def drop(self, names: list[str]) -> None:
        """Remove these cells from results.json (all benchmarks' copies of them)."""
        for name in names:
            self.results["cells"].pop(name, None)
            self._touched.add(name)
        if names:
            self.save()

    def _store(self, name: str, row: dict) -> None:
        self.results["cells"][name] = row
        self._touched.add(name)
        self.save()

    def _row(self, name: str, spec: dict, protocols: tuple[str, ...]) -> tuple[dict | None, list[str], str]:
        """The row of cell ``name`` if its parameters are unchanged, the protocols it still lacks, its key."""
        key = config_hash(json.loads(json.dumps(spec, default=str)))
        row = self.results["cells"].get(name)
        if row is not None and row.get("hash") != key:
            row = None  # parameters changed: recompute
        return row, [p for p in protocols if row is None or p not in row], key

    def _evaluate(self, name: str, row: dict, missing: list[str], sets: dict, split, started: float,
                  **settings) -> None:
        """Train and test the students of each missing protocol, one seed at a time. results.json is
        rewritten after every student (its accuracy kept under ``row["partial"][protocol]`` until the
        protocol's last seed is in), so an interrupted IPC 50 cell loses at most the student in training.
        ``sets``: student seed -> (images, labels, weights) it trains on; one key ``None`` when every seed
        trains on the same set (the seeds then give the same students as one ``evaluate_set`` call)."""
        for protocol in missing:
            eval_config = protocol_config(protocol, **settings)
            progress = self._throttled_progress(f"{name} {protocol}")
            partial = row.setdefault("partial", {}).setdefault(protocol, {"seeds": [], "accuracies": [], "seconds": []})
            n = len(eval_config.seeds)
            for k, seed in enumerate(eval_config.seeds):
                if seed in partial["seeds"]:
                    continue
                images, labels, weights = sets[None] if None in sets else sets[seed]
                one = evaluate_set(images, labels, split, replace(eval_config, seeds=(seed,)), weights, self.teacher,
                                   lambda f, m, k=k: progress((k + f) / n, m))
                partial["seeds"].append(seed)
                partial["accuracies"].append(one.accuracies[0])
                partial["seconds"].append(one.seconds[0])
                self._store(name, row)
            order = [partial["seeds"].index(seed) for seed in eval_config.seeds]
            result = EvalResult([partial["accuracies"][i] for i in order], [partial["seconds"][i] for i in order],
                                eval_config, len(next(iter(sets.values()))[0]),
                                {} if None in sets else {"draws": "one set per seed"})
            del row["partial"][protocol]
            if not row["partial"]:
                del row["partial"]
            row[protocol] = result.to_dict()
            if self.registry is not None:
                if name not in self._registry_runs:
                    self._registry_runs[name] = self.registry.add_run(
                        "bench", row["spec"], row.get("metrics", {}), {"distill_s": row.get("distill_seconds")},
                        row["hash"], source=self.engine.dataset.name, name=name)
                self.registry.add_evaluation(self._registry_runs[name], protocol, eval_config.architecture,
                                             eval_config.epochs, row["spec"]["split"], eval_config.seeds,
                                             result.accuracies, result.seconds)
            self.log(f"  {name} {protocol}: {100 * result.mean:.2f} ± {100 * result.std:.2f} "
                     f"({statistics.fmean(result.seconds):.0f} s/student)")
            row["wall_seconds"] = round(row.get("wall_seconds", 0.0) + time.perf_counter() - started, 1)
            started = time.perf_counter()
            self._store(name, row)

    def cell(self, name: str, method: str, distill_config: DistillConfig, protocols: tuple[str, ...], seeds: int,
             architecture: str = "convnet", on_validation: bool = False) -> dict:
        """Distil, assess and evaluate one configuration. A cell already in results.json with the same
        parameters is kept; only protocols it lacks are evaluated (the set is re-distilled, which is
        deterministic for the seed, and done once per process: see ``_distill``)."""
        spec = {"method": method, "distill": distill_config.to_dict(), "seeds": seeds, "epochs": self.config.epochs,
                "architecture": architecture, "pool": self.config.pool, "split": "val" if on_validation else "test"}
        if method in ("random", "random-vae"):   # random real: which images is the main source of spread
            spec["draws"] = PER_SEED
        self.refresh()   # another benchmark on this folder may have done this cell, or some of its protocols
        row, missing, key = self._row(name, spec, protocols)
        if not missing:
            self.log(f"[skip] {name} (already in results.json)")
            return row
        if self.reference is None:
            self.log("computing teacher features, PRDC radii and modes of the real training subsample…")
            self.reference = load_or_build_reference(self.engine, self.teacher, reference_cache_file(self.engine),
                                                     self.config.real_per_class, seed=self.config.seed)
        t0 = time.perf_counter()
        dset = self._distill(method, distill_config)
        row = row or {"hash": key, "method": method, "ipc": distill_config.ipc, "spec": spec}
        # the set's measurements always describe its latest distillation (seconds, cheap next to training)
        row.update(metrics=assess(self.reference, self.teacher, dset),
                   teacher_agreement=round(teacher_accuracy_of(self.teacher, dset), 4),
                   distill_seconds=round(dset.timings["total_s"], 3))
        seeds_used = self._seeds(seeds)
        if spec.get("draws") == PER_SEED:   # the seed's own draw; the metrics above are seed 0's
            sets = {s: self._distill(method, replace(distill_config, seed=s)) for s in seeds_used}
            sets = {s: (d.images, d.labels, d.weights) for s, d in sets.items()}
        else:
            sets = {None: (dset.images, dset.labels, dset.weights)}
        self._evaluate(name, row, missing, sets, self.validation if on_validation else self.test, t0,
                       architecture=architecture, epochs=self.config.epochs, seeds=seeds_used,
                       use_weights=method != "ddoq-unweighted")
        return row

    def _distill(self, method: str, distill_config: DistillConfig):
        key = (method, config_hash(distill_config.to_dict()))
        if key not in self._distilled:
            self._distilled[key] = self._distill_anew(method, distill_config)
        return self._distilled[key]

    def _distill_anew(self, method: str, distill_config: DistillConfig):
        progress = self._throttled_progress(f"{method}/ipc{distill_config.ipc} distill")   # the refinement's
        dset = distill(self.engine, distill_config, progress=progress)
        if method == "random-vae":
            t_decode = time.perf_counter()
            images = LocalExecutor().decode(self.engine.vae, dset.latents)
            decode_s = time.perf_counter() - t_decode   # counted in s/image like the other methods' decode
            dset = replace(dset, images=images, timings={**dset.timings, "decode_s": dset.timings["decode_s"] + decode_s,
                                                         "total_s": dset.timings["total_s"] + decode_s})
        return dset

    def _seeds(self, n: int) -> tuple[int, ...]:
        return tuple(range(self.config.seed, self.config.seed + n))

    def run_whole_data(self) -> dict:
        """Students on the whole pool (every training image students may see) under each protocol: the
        table's own ceiling. Fewer epochs than the distilled sets (``whole_data_epochs``), lr x0.1 at half."""
        c = self.config
        name = "whole/convnet"
        spec = {"method": "whole", "epochs": c.whole_data_epochs, "seeds": c.whole_data_seeds, "pool": c.pool,
                "split": "test", "images": len(self.engine.dataset)}
        row, missing, key = self._row(name, spec, c.protocols)
        self.log(f"[whole training set: {len(self.engine.dataset)} images, {c.whole_data_epochs} epochs]")
        if not missing:
            self.log(f"[skip] {name} (already in results.json)")
            return row
        row = row or {"hash": key, "method": "whole", "spec": spec}
        data = self.engine.dataset
        self._evaluate(name, row, missing, {None: (data.batch(slice(None)), data.labels, None)}, self.test,
                       time.perf_counter(), epochs=c.whole_data_epochs, seeds=self._seeds(c.whole_data_seeds))
        return row

    def run_architectures(self) -> None:
        """Cross-architecture students (``architectures``) under ``ARCH_PROTOCOL`` at ``ARCH_IPCS``."""
        for architecture in self.config.architectures:
            for ipc in (i for i in ARCH_IPCS if i in self.config.ipcs):
                for method in (m for m in ARCH_METHODS if m in self.config.methods):
                    self.log(f"[{architecture} student: {method} IPC {ipc}]")
                    self.cell(f"arch/{architecture}/{method}/ipc{ipc}", method, self.distill_config(method, ipc),
                              (ARCH_PROTOCOL,), self.config.seeds, architecture=architecture)

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
        base = BASE_METHOD.get(method, method)
        changes = {**({"refine": RefineConfig()} if base == "random" else {}),   # real images are not refined
                   **(METHOD_CHANGES[method](ipc) if method in METHOD_CHANGES else {}), **changes}
        return replace(self.config.distill, method=base, ipc=ipc, seed=self.config.seed, **changes)

    def run_main(self) -> None:
        for ipc in self.config.ipcs:
            for method in self.config.methods:
                self.log(f"[{method} IPC {ipc}]")
                self.cell(f"main/{method}/ipc{ipc}", method, self.distill_config(method, ipc), self.config.protocols,
                          self.config.seeds)

    def sweep_variants(self) -> dict[str, tuple[str, DistillConfig]]:
        """name -> (method, config): one-factor-at-a-time variations of PGFM around its default at
        ``sweep_ipc``, and random real images there (the reference every variant must beat)."""
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
        variants["cfg=1.5"] = replace(base, cfg_scale=1.5)   # weaker class guidance: more varied samples?
        ipc = self.config.sweep_ipc
        configs = {name: ("pgfm", self.distill_config("pgfm", ipc, sampler=s)) for name, s in variants.items()}
        for offset in (0.5, 1.0):
            configs[f"cell offset={offset:g}"] = ("pgfm", self.distill_config("pgfm", ipc, cell_offset=offset))
        if ipc >= 2:   # half as many prototypes, two samples each (by cell mass), alone and with real-latent targets
            configs[f"prototypes={ipc // 2}"] = ("pgfm", self.distill_config("pgfm", ipc, prototypes_per_class=ipc // 2))
            configs[f"prototypes={ipc // 2}, cell offset=1"] = (
                "pgfm", self.distill_config("pgfm", ipc, prototypes_per_class=ipc // 2, cell_offset=1.0))
        for space, lr in REFINE_LR.items():   # distribution-matching refinement in each space (DEFAULT_REFINE's steps)
            refine = replace(DEFAULT_REFINE, space=space, lr=lr)
            configs[f"dm {space}"] = ("pgfm", self.distill_config("pgfm", ipc, refine=refine))
        # around pgfm-dm: a longer or faster refinement, other starting points for it, a projection after it
        faster = replace(DEFAULT_REFINE, lr=3 * DEFAULT_REFINE.lr)
        configs["dm latent x3 iterations"] = ("pgfm", self.distill_config("pgfm", ipc, refine=LONG_REFINE))
        configs["dm latent x6 iterations"] = ("pgfm", self.distill_config(
            "pgfm", ipc, refine=replace(LONG_REFINE, iterations=2 * LONG_REFINE.iterations)))
        configs["dm latent x3 lr"] = ("pgfm", self.distill_config("pgfm", ipc, refine=faster))
        for t in (0.8, 0.9):   # the refined latents noised back to t and integrated again: precision back, spread kept?
            configs[f"dm latent, projected from t={t:g}"] = ("pgfm", self.distill_config(
                "pgfm", ipc, refine=replace(DEFAULT_REFINE, project_t=t)))
        configs["dm latent, lambda=0.3"] = ("pgfm", self.distill_config(
            "pgfm", ipc, refine=DEFAULT_REFINE, sampler=replace(base, guidance=replace(g, strength=0.3))))
        for cfg in (1.0, 1.5):
            configs[f"dm latent, cfg={cfg:g}"] = ("pgfm", self.distill_config(
                "pgfm", ipc, refine=DEFAULT_REFINE, sampler=replace(base, cfg_scale=cfg)))
        configs["dm latent, cell offset=1"] = ("pgfm", self.distill_config(
            "pgfm", ipc, refine=DEFAULT_REFINE, cell_offset=1.0))
        if ipc >= 2:   # half as many prototypes, about two samples each (allocated by cell mass), then refined
            configs[f"dm latent, prototypes={ipc // 2}"] = ("pgfm", self.distill_config(
                "pgfm", ipc, refine=DEFAULT_REFINE, prototypes_per_class=ipc // 2))
        for name, refine in (("dm latent, mmd", DEFAULT_REFINE), ("dm latent x3 iterations, mmd", LONG_REFINE)):
            configs[name] = ("pgfm", self.distill_config("pgfm", ipc, refine=replace(refine, objective="mmd")))
        for objective in ("mean", "mmd"):   # the teacher's features as the embedding, where soft-online labels
            configs["dm latent, teacher embedding" + (", mmd" if objective == "mmd" else "")] = ("pgfm", self.distill_config(
                "pgfm", ipc, refine=replace(DEFAULT_REFINE, embedding="teacher", objective=objective)))
        configs["dm pixel, teacher embedding, mmd"] = ("pgfm", self.distill_config(   # the best space at IPC 50
            "pgfm", ipc, refine=replace(TEACHER_REFINE, space="pixel", lr=REFINE_LR["pixel"])))
        configs["dm latent x2 iterations, teacher embedding, mmd"] = ("pgfm", self.distill_config(
            "pgfm", ipc, refine=replace(TEACHER_REFINE, iterations=2 * TEACHER_REFINE.iterations)))
        for beta in (1.0, 4.0):   # pgfm-tdm pulled toward where the teacher is unsure (RefineConfig.boundary)
            configs[f"dm latent, teacher embedding, mmd, boundary={beta:g}"] = ("pgfm", self.distill_config(
                "pgfm", ipc, refine=replace(TEACHER_REFINE, boundary=beta)))
        configs["random real"] = ("random", self.distill_config("random", ipc))
        chosen = self.config.sweep_variants
        unknown = sorted(set(chosen) - set(configs))
        if unknown:
            raise ValueError(f"unknown sweep variants {unknown}; choose from {', '.join(configs)}")
        return {name: v for name, v in configs.items() if not chosen or name in chosen}

    def sweep_cell_name(self, variant: str) -> str:
        return f"sweep/ipc{self.config.sweep_ipc}/{variant}"

    def prune_stale_sweep(self) -> None:
        """Drop this IPC's sweep cells of variants the current default no longer has (e.g. after the default
        moved); a run restricted to some variants (``sweep_variants``) keeps the others."""
        if self.config.sweep_variants:
            return
        prefix = self.sweep_cell_name("")
        current = {self.sweep_cell_name(name) for name in self.sweep_variants()}
        self.drop([k for k in self.results["cells"] if k.startswith(prefix) and k not in current])

    def run_sweep(self) -> None:
        self.prune_stale_sweep()
        for name, (method, dc) in self.sweep_variants().items():
            self.log(f"[sweep IPC {self.config.sweep_ipc}: {name}]")
            self.cell(self.sweep_cell_name(name), method, dc, (self.config.sweep_protocol,), self.config.sweep_seeds,
                      on_validation=True)

    def run_efficiency(self) -> None:
        ipc = self.config.sweep_ipc
        for steps in (2, 4, 8, 16):
            dc = self.distill_config("pgfm", ipc, sampler=replace(self.config.distill.sampler, steps=steps))
            self.log(f"[efficiency pgfm steps={steps}]")
            self.cell(f"efficiency/ipc{ipc}/pgfm/steps{steps}", "pgfm", dc, ("hard",), self.config.sweep_seeds)
        for steps in (10, 25, 50, 100):
            dc = self.distill_config("diffusion-mg", ipc, diffusion=replace(self.config.distill.diffusion, steps=steps))
            self.log(f"[efficiency diffusion-mg steps={steps}]")
            self.cell(f"efficiency/ipc{ipc}/diffusion-mg/steps{steps}", "diffusion-mg", dc, ("hard",),
                      self.config.sweep_seeds)


def merge_cell(theirs: dict | None, mine: dict) -> dict:
    """A cell as this process has it (``mine``) merged with another benchmark's version of it: of the same
    parameters (hash), the protocols and unfinished students only ``theirs`` has are kept (of a protocol both
    are still training, the students of both, one per seed); of other parameters, ``mine`` replaces it."""
    if theirs is None or theirs.get("hash") != mine.get("hash"):
        return mine
    merged = {**theirs, **mine}
    partial = {**theirs.get("partial", {}), **mine.get("partial", {})}
    for protocol, students in theirs.get("partial", {}).items():
        own = partial[protocol]
        extra = [i for i, seed in enumerate(students["seeds"]) if seed not in own["seeds"]]
        partial[protocol] = {k: own[k] + [students[k][i] for i in extra] for k in own}
    merged.pop("partial", None)
    partial = {p: students for p, students in partial.items() if p not in merged}   # finished: no partial
    return {**merged, "partial": partial} if partial else merged


def models_record(engine: DistillEngine, teacher) -> dict[str, str | None]:
    """Fingerprints (SHA-256 of the weights) of the models a benchmark's cells depend on; None: absent. A
    foreign flow's time convention or class map, which change its samples as much as its weights, count too."""
    def weights(module, extra: str = "") -> str | None:
        return None if module is None else tensors_fingerprint(module.state_dict(), extra)

    config = getattr(engine.flow, "config", None)
    adapter = {k: getattr(config, k) for k in ("convention", "class_map") if getattr(config, k, None) is not None}
    flow = weights(engine.flow, json.dumps(adapter, sort_keys=True, default=str) if adapter else "")
    return {"vae": engine.vae.fingerprint, "flow": flow, "diffusion": weights(engine.diffusion),
            "teacher": weights(teacher.net)}


def models_conflict(recorded: dict, models: dict) -> list[str]:
    """The models whose fingerprints differ between a results folder's record and this run's; a model absent
    from either (None: not loaded, so none of its cells are made) is no conflict."""
    return sorted(k for k in models.keys() | recorded.keys()
                  if None not in (models.get(k), recorded.get(k)) and models[k] != recorded[k])


def models_conflict_message(path: Path, changed: list[str]) -> str:
    return (f"{path} holds cells of other models ({', '.join(changed)} differ): give another --out for these "
            "models; nothing was changed")


def run_benchmark(bench: Bench, teacher_accuracy: float | None = None, teacher_train_split: str = "train",
                  dataset: str = FASHION_MNIST) -> dict:
    """Run the configured stages (resuming finished cells), then write RESULTS.md and the plots.
    ``teacher_train_split``: what the teacher was trained on (its training.json; ``train`` when it predates
    the validation split), said in the report. ``dataset``: what is measured, as the report names it."""
    bench.out.mkdir(parents=True, exist_ok=True)
    bench.load()
    meta = bench.results.setdefault("meta", {})
    models, recorded = models_record(bench.engine, bench.teacher), meta.get("models") or {}
    changed = models_conflict(recorded, models)
    if changed:
        raise ValueError(models_conflict_message(bench.results_path, changed))
    # results that predate this record are taken to be these models'; a model absent now keeps its record
    meta["models"] = {**recorded, **{k: v for k, v in models.items() if v is not None}}
    # ``config`` describes the main table (its seeds and epochs): a run of other stages alone keeps it
    if bench.config.main or "config" not in meta:
        meta["config"] = asdict(bench.config)
    meta.update(teacher_test_accuracy=teacher_accuracy, teacher_train_split=teacher_train_split,
                selection_split="validation", report_split="test", dataset=dataset, test_images=len(bench.test),
                pool={"name": bench.engine.dataset.name, "images": len(bench.engine.dataset)})
    t0 = time.perf_counter()
    if bench.config.main:
        bench.run_main()
    if bench.config.whole_data:
        bench.run_whole_data()
    if bench.config.architectures:
        bench.run_architectures()
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

PROTOCOL_TEXT = {
    "hard": "cross-entropy on the set's labels, no augmentation",
    "hard-dsa": "hard labels, DSA augmentation (one transform type drawn per batch, the reference's ranges)",
    "soft": "KL · T² to the teacher's temperature-4 outputs on the un-augmented images, computed once",
    "soft-online": "every batch DSA-augmented and labelled by the teacher (temperature 4, KL · T²)",
}


def _acc(cell: dict | None, protocol: str) -> str:
    if not cell or protocol not in cell:
        return "–"
    r = cell[protocol]
    if len(r.get("accuracies", [])) == 1:   # one seed: no spread to show
        return f"{100 * r['accuracy_mean']:.1f} (1 seed)"
    return f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}"


def _mean(cell: dict | None, protocol: str) -> float | None:
    return cell[protocol]["accuracy_mean"] if cell and protocol in cell else None


def sweeps(results: dict) -> dict[int, dict[str, dict]]:
    """IPC -> variant name -> cell, of the sweep cells in ``results`` (``sweep/ipcN/variant``)."""
    out: dict[int, dict[str, dict]] = {}
    for k, c in results["cells"].items():
        if k.startswith("sweep/ipc"):
            _, ipc, name = k.split("/", 2)
            out.setdefault(int(ipc[3:]), {})[name] = c
    return dict(sorted(out.items()))


def best_sweep_setting(results: dict, ipc: int) -> tuple[str, dict, str] | None:
    """The PGFM sweep variant at ``ipc`` with the highest validation accuracy: (name, cell, protocol), under
    the protocol that the IPC's sweep cells were evaluated with (the first of PROTOCOLS they share)."""
    variants = sweeps(results).get(ipc, {})
    protocol = next((p for p in PROTOCOLS if variants and all(p in c for c in variants.values())), None)
    sweep = {k: c for k, c in variants.items() if protocol in c and c["method"] == "pgfm"}
    if not sweep:
        return None
    name = max(sweep, key=lambda k: sweep[k][protocol]["accuracy_mean"])
    return name, sweep[name], protocol


def ranking_rows(results: dict) -> list[dict]:
    """DD-Ranking scores (core.evaluation.ranking) of every main cell that has a random-real cell at its IPC."""
    baseline = RankingBaseline.from_results(results)
    if baseline is None:
        return []
    rows = []
    for name, c in sorted(results["cells"].items(), key=lambda kv: (kv[1].get("ipc", 0), kv[0])):
        if name.startswith("main/") and c["method"] != "random" and c["ipc"] in baseline.random:
            accuracy = {p: c[p]["accuracy_mean"] for p in PROTOCOLS if p in c}
            rows.append({"method": c["method"], "ipc": c["ipc"], **baseline.scores(c["ipc"], accuracy)})
    return rows


def _protocols_in(cells: dict) -> list[str]:
    return [p for p in PROTOCOLS if any(p in c for k, c in cells.items() if k.startswith(("main/", "whole/")))]


def write_report(results: dict, out: Path) -> Path:
    """RESULTS.md and the plots, from results.json alone."""
    # Long by design: the RESULTS.md text, top to bottom, reads as the report it writes.
    cells = results["cells"]
    meta = results.get("meta", {})
    config = meta.get("config", {})
    pool = meta.get("pool", {})
    ipcs = sorted({c["ipc"] for k, c in cells.items() if k.startswith("main/")})
    methods = [m for m in BENCH_METHODS if any(k.startswith(f"main/{m}/") for k in cells)]
    protocols = _protocols_in(cells)
    whole = cells.get("whole/convnet")
    pct = lambda x: "–" if x is None else f"{100 * x:+.1f}"  # noqa: E731 - points, signed
    dataset = meta.get("dataset", FASHION_MNIST)
    fmnist = dataset == FASHION_MNIST
    title = "Fashion-MNIST, embedded default" if fmnist else dataset
    validation = "500 per class of train" if fmnist else "its own folder, or 10 % of each class of train"
    lines = [f"# Benchmark results ({title})", "",
             f"Produced by `python -m core bench` on this project's machine. Students: ConvNet-3 (width 128, instance "
             f"norm), SGD lr 0.01, momentum 0.9, wd 5e-4, {config.get('epochs', '?')} epochs, lr ×0.1 at half, "
             f"{config.get('seeds', '?')} seeds; mean ± std of **test** accuracy (%, the "
             f"{meta.get('test_images', 10_000):,} test images). "
             f"The methods draw from `{pool.get('name', '?')}` ({pool.get('images', '?')} images): the validation "
             f"split ({validation}, DESIGN.md 4b) is held out, and every choice that looked at accuracy "
             "(the sweep below) read validation accuracy, never test. DDOQ weights are per-sample loss weights "
             "(`ddoq-unweighted`: the same images without them). `random-vae`: the `random` real images after a "
             "VAE round trip (encode → decode): what the VAE alone costs real images. `pgfm-dm`: the `pgfm` images refined "
             "by distribution matching against the real images (random ConvNet embeddings, DSA; `core/pipeline/refine.py`); "
             "`pgfm-tdm`: the same matching in the teacher's penultimate features, with an MMD term.", "",
             "Protocols (DESIGN.md section 4b):", ""]
    lines += [f"- `{p}`: {PROTOCOL_TEXT[p]}" for p in protocols]
    if whole:
        spec = whole["spec"]
        whole_text = (f"whole training set ({spec['images']:,} images, {spec['epochs']} epoch{'s' * (spec['epochs'] > 1)}, "
                      f"{spec['seeds']} seed{'s' * (spec['seeds'] > 1)})")
    lines += ["", "## Test accuracy", ""]
    for p in protocols:
        lines += [f"### `{p}`", "", "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |", "|" + "---|" * (1 + len(ipcs))]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(_acc(cells.get(f"main/{m}/ipc{i}"), p) for i in ipcs) + " |")
        if whole and p in whole:
            lines.append(f"| *{whole_text}* | " + " | ".join(_acc(whole, p) for _ in ipcs) + " |")
        if p == "hard-dsa" and fmnist:
            for name, values in PUBLISHED.items():
                lines.append(f"| *published (hard-dsa protocol):* {name} | " + " | ".join(values.get(i, "–") for i in ipcs) + " |")
        lines.append("")
    if fmnist:
        lines += ["Published rows: ConvNet-3 trained with DSA augmentation, as tabulated in the KIP paper (DESIGN.md "
                  "section 5); they were not produced by this project and sit in the `hard-dsa` table, the protocol "
                  "they used."]
    if meta.get("teacher_test_accuracy") is not None:
        seen = ("all the training images, validation split included" if meta.get("teacher_train_split", "train") == "train"
                else "the training images without the validation split")
        lines += ["", f"The {'shipped ' if fmnist else ''}teacher (ConvNet-3 trained on {seen}, with its own recipe: "
                      f"its `training.json`) reaches {100 * meta['teacher_test_accuracy']:.2f}% test accuracy; "
                      "it labels the batches of `soft-online`."]
    pgfm_methods = [m for m in ("pgfm", "pgfm-dm", "pgfm-tdm") if m in methods]
    if pgfm_methods and "random" in methods:
        lines += ["", "## PGFM against random real images", "",
                  "Test accuracy of each PGFM method minus that of random real images, same protocol and IPC "
                  "(points):"]
        for method in pgfm_methods:
            lines += ["", f"`{method}`:", "", "| protocol | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
                      "|" + "---|" * (1 + len(ipcs))]
            verdicts = {"above": 0, "within the seeds' spread of": 0, "below": 0}
            for p in protocols:
                diffs = []
                for i in ipcs:
                    a_cell, r_cell = cells.get(f"main/{method}/ipc{i}"), cells.get(f"main/random/ipc{i}")
                    a, r = _mean(a_cell, p), _mean(r_cell, p)
                    if a is None or r is None:
                        diffs.append("–")
                        continue
                    spread = max(a_cell[p]["accuracy_std"], r_cell[p]["accuracy_std"])
                    verdict = "above" if a - r > spread else "below" if r - a > spread else "within the seeds' spread of"
                    verdicts[verdict] += 1
                    diffs.append(f"{pct(a - r)} ({100 * a:.1f} vs {100 * r:.1f})")
                lines.append(f"| `{p}` | " + " | ".join(diffs) + " |")
            lines += ["", f"Of the {sum(verdicts.values())} measured protocol × IPC cells, `{method}` is "
                          + ", ".join(f"{verdict} random real in {n}" for verdict, n in verdicts.items())
                          + " (a difference counts when it exceeds the larger of the two standard deviations)."]
    ranking = ranking_rows(results)
    if ranking:
        lines += ["", "## DD-Ranking scores", "",
                  "IOR: improvement over random real under a protocol (points); HLR: hard-label recovery, whole-data "
                  "`hard` accuracy minus the set's (points, lower is better); LRS (label-robust, own protocol "
                  "`soft-online`) and ARS (augmentation-robust, `hard` and `hard-dsa`) on 0–100; ARS 26.9 = no "
                  "better than random real, LRS 26.9 = a gain over random real equal to the HLR (definitions: "
                  "DESIGN.md 4b).", "",
                  "| method | IPC | IOR hard | IOR hard-dsa | IOR soft-online | HLR | LRS | ARS |", "|" + "---|" * 8]
        for r in ranking:
            score = lambda k: "–" if k not in r else f"{r[k]:.1f}"  # noqa: E731
            lines.append(f"| {r['method']} | {r['ipc']} | {pct(r.get('ior_hard'))} | {pct(r.get('ior_hard-dsa'))} | "
                         f"{pct(r.get('ior_soft-online'))} | {pct(r.get('hlr'))} | {score('lrs')} | {score('ars')} |")
    arch = {k: c for k, c in cells.items() if k.startswith("arch/")}
    if arch:
        archs = ["convnet"] + [a for a in STUDENT_ARCHITECTURES if any(k.startswith(f"arch/{a}/") for k in arch)]
        arch_ipcs = sorted({c["ipc"] for c in arch.values()})
        lines += ["", f"## Cross-architecture students (`{ARCH_PROTOCOL}`, test accuracy %)", "",
                  "The same sets trained into other students: ConvNet-3 (the table above), `resnet-bn` (ResNet-10-style, "
                  "four basic-block stages of widths 16–128, batch norm), `mlp` (two hidden layers of 128 ReLU units).", "",
                  "| student | method | " + " | ".join(f"IPC {i}" for i in arch_ipcs) + " |", "|" + "---|" * (2 + len(arch_ipcs))]
        for a in archs:
            for m in ARCH_METHODS:
                key = (lambda i: f"main/{m}/ipc{i}") if a == "convnet" else (lambda i: f"arch/{a}/{m}/ipc{i}")
                values = [_acc(cells.get(key(i)), ARCH_PROTOCOL) for i in arch_ipcs]
                if any(v != "–" for v in values):
                    lines.append(f"| {a} | {m} | " + " | ".join(values) + " |")
    lines += ["", "## Set metrics", "",
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
    for ipc, variants in sweeps(results).items():
        best = best_sweep_setting(results, ipc)
        if best is None:
            continue
        name, cell, protocol = best
        random = _mean(variants.get("random real"), protocol)
        lines += ["", f"## PGFM sweep at IPC {ipc} (one factor at a time around the default; `{protocol}`, "
                      "**validation** accuracy)", "",
                  "| setting | validation accuracy | vs random real (points) | mode coverage | landing error |",
                  "|---|---|---|---|---|"]
        for k, c in variants.items():
            a = _mean(c, protocol)
            gap = "–" if a is None or random is None or k == "random real" else pct(a - random)
            landing = c["metrics"].get("landing_error_mean")
            lines.append(f"| {k} | {_acc(c, protocol)} | {gap} | {100 * c['metrics']['mode_coverage']:.1f}% | "
                         f"{'–' if landing is None else f'{landing:.4f}'} |")
        lines += ["", f"Best PGFM setting on validation at IPC {ipc}: **{name}** ({_acc(cell, protocol)})."]
    eff = {k: c for k, c in cells.items() if k.startswith("efficiency/ipc")}
    if eff:
        lines += ["", "## Efficiency (test accuracy vs NFE, `hard`)", "",
                  "| IPC | sampler | NFE/image | s/image | accuracy |", "|---|---|---|---|---|"]
        for k, c in eff.items():
            _, ipc, sampler = k.split("/", 2)
            lines.append(f"| {ipc[3:]} | {sampler} | {c['metrics']['nfe_per_image']} | "
                         f"{c['metrics']['seconds_per_image']:.4f} | {_acc(c, 'hard')} |")
    lines += ["", "## Compute", "", "Seconds per ConvNet-3 student (train and test one seed; median over the main "
              "cells' students, since a student that shared the cores with other work takes longer):", "", "| protocol | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
              "|" + "---|" * (1 + len(ipcs))]
    for p in protocols:
        per_ipc = []
        for i in ipcs:
            seconds = [s for k, c in cells.items() if k.startswith("main/") and c["ipc"] == i and p in c
                       for s in c[p]["seconds"]]
            per_ipc.append(f"{statistics.median(seconds):.0f}" if seconds else "–")
        lines.append(f"| `{p}` | " + " | ".join(per_ipc) + " |")
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
    protocols = _protocols_in(cells)
    if len(ipcs) > 1 and protocols:
        fig, axes = plt.subplots(1, len(protocols), figsize=(4.5 * len(protocols), 4), sharey=True, squeeze=False)
        for ax, p in zip(axes[0], protocols):
            for m in BENCH_METHODS:
                xs = [i for i in ipcs if p in cells.get(f"main/{m}/ipc{i}", {})]
                if xs:
                    ax.plot(xs, [100 * cells[f"main/{m}/ipc{i}"][p]["accuracy_mean"] for i in xs], "o-", label=m)
            if p in cells.get("whole/convnet", {}):
                ax.axhline(100 * cells["whole/convnet"][p]["accuracy_mean"], color="grey", ls="--", label="whole set")
            ax.set(xscale="log", xlabel="images per class", title=p)
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle("Accuracy vs IPC by protocol")
        written.append(_save(fig, out / "accuracy_vs_ipc.png"))
    for ipc, variants in sweeps(results).items():
        strength = results["meta"]["config"]["distill"]["sampler"]["guidance"]["strength"]
        lam = {0.0 if "fm" in k else (float(k.split("=")[1]) if "=" in k else strength): c
               for k, c in variants.items() if k.startswith("lambda") or k == "default"}
        if len(lam) < 2:
            continue
        xs = sorted(lam)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(xs, [100 * lam[x]["metrics"]["mode_coverage"] for x in xs], "o-")
        ax.set(xlabel="guidance strength λ", ylabel="mode coverage (%)", title=f"Mode coverage vs λ (PGFM, IPC {ipc})")
        written.append(_save(fig, out / f"coverage_vs_lambda_ipc{ipc}.png"))
    eff = {k.split("/", 2)[1:]: c for k, c in cells.items() if k.startswith("efficiency/ipc")}
    if eff:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for ipc in sorted({i for i, _ in eff}):
            for name in ("pgfm", "diffusion-mg"):
                pts = sorted((c["metrics"]["nfe_per_image"], 100 * c["hard"]["accuracy_mean"])
                             for (i, sampler), c in eff.items() if i == ipc and sampler.startswith(f"{name}/"))
                if pts:
                    ax.plot(*zip(*pts), "o-", label=f"{name} IPC {ipc[3:]}")
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
