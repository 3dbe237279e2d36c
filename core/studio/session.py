"""An interactive distillation session without Streamlit: load once, run, score, remember, compare.

``Studio`` bundles the read-only resources every session shares (engine, teacher, real reference, test
split). ``run_once`` distils one ``DistillConfig`` with trajectories recorded and scores it with the
DESIGN.md section 4 metrics; ``RunHistory`` holds one browser session's runs (parameters + metrics) so
two can be compared. The app keeps one Studio per process and one RunHistory per session.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from core.config import BENCHMARK_RESULTS, DistillConfig, config_hash
from core.data.datasets import LabelledImages
from core.evaluation.assess import (
    RealReference,
    assess,
    class_latents,
    coverage_metrics,
    latent_scores,
    load_or_build_reference,
    prdc_metrics,
    reference_cache_file,
    w2_latent_mean,
)
from core.evaluation.metrics import CoverageResult, mode_coverage
from core.evaluation.ranking import RankingBaseline, load_baseline
from core.evaluation.students import EvalConfig, EvalResult, evaluate_set
from core.pipeline.distill import DistilledSet, DistillEngine, distill
from core.registry import Registry, RegistryError
from core.studio.jobs import BackgroundJob

Progress = Callable[[float, str], None]
_PROXY_LOCK = threading.Lock()   # one session builds the shared proxy; the others wait for it


COVERAGE_SCORES = ("mode_coverage", "mode_coverage_per_class")   # the deferred scores arrive in three stages:
PRDC_SCORES = ("precision", "recall", "density", "coverage")      # these, then these, then W2 (start_scores)
# The teacher's scores, added to a deferred run by its scores job before W2.
TEACHER_SCORES = COVERAGE_SCORES + PRDC_SCORES
# The accuracy proxy (core.evaluation.proxy) of each protocol family, on the validation split: metric key -> protocol
PROXY_SCORES = {"predicted_hard_dsa": "hard-dsa", "predicted_soft_online": "soft-online"}


@dataclass
class Studio:
    """``teacher`` / ``reference`` / ``test`` are None for data the shipped teacher does not fit (e.g. a latent
    store of 256-px RGB images): runs then get the latent scores only and students cannot be evaluated."""

    engine: DistillEngine
    teacher: object | None
    reference: RealReference | None
    test: LabelledImages | None
    baseline: RankingBaseline | None = None   # random-real / whole-data accuracies of the benchmark (LRS, ARS)
    registry: Registry | None = None          # where runs and their evaluations are recorded (None: nowhere)
    warnings: tuple[str, ...] = ()            # what loading could not do (shown by every page)
    validation: LabelledImages | None = None  # the validation split (sweeps and tuning test students on it)
    held_out: DistillEngine | None = None     # engine without the validation images (core.studio.sweeps)
    validation_rows: np.ndarray | None = None  # rows of the engine's data that are validation images (None: FMNIST's)
    latents_by_class: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    decoded_prototypes: dict = field(default_factory=dict, repr=False)   # see _decoded_prototypes
    proxies: dict = field(default_factory=dict, repr=False)   # see accuracy_proxy (shared by copies of the studio)

    def __post_init__(self) -> None:
        if not self.latents_by_class:
            self.latents_by_class = self.reference.latents_by_class if self.reference else class_latents(self.engine)


def load_studio(spec=None, data_dir: str | None = None, latent_store: str | None = None,
                reference_per_class: int = 1000, progress: Progress | None = None,
                registry: Registry | None = None, model_folder: str | None = None) -> Studio:
    """Load data, latents (encoded and cached on first use, or a latent store), models and, when the
    teacher fits the data, the real reference of the metrics and the test and validation splits.
    ``model_folder``: a folder ``python -m core prepare`` wrote; its models and its ImageFolder dataset replace
    ``spec`` and ``data_dir`` (test split: the dataset's own, when it has one). ``registry``: where runs are
    recorded (default: the default registry file, when usable)."""
    from core.data.datasets import load_fashion_mnist, validation_indices
    from core.models.loading import load_teacher
    from core.models.spec import ModelSpec, open_model_folder
    from core.pipeline.distill import load_engine

    folder = open_model_folder(model_folder, (spec or ModelSpec()).device) if model_folder else None
    spec = folder.spec if folder else spec or ModelSpec()
    data = folder.data_options() if folder else {"data_dir": data_dir}
    report = progress or (lambda fraction, message: None)
    warnings = []
    if registry is None:
        try:
            registry = Registry()
        except RegistryError as exc:   # a file it must not use is left untouched; the app records nothing
            warnings.append(f"runs are not recorded: {exc}")
    report(0.0, "loading the dataset, its latents (encoded once, then cached) and the models…")
    engine = load_engine(spec, **data, latent_store=latent_store, progress=lambda f, m: report(0.6 * f, m))
    teacher = load_teacher(spec) if spec.teacher else None
    if teacher is None or not teacher.fits(engine.dataset.image_shape, engine.dataset.num_classes):
        report(1.0, "ready (no teacher for this data: latent scores only)")
        return Studio(engine, None, None, None, registry=registry, warnings=tuple(warnings))
    report(0.6, f"teacher features and modes of {reference_per_class} real images per class (cached after the first time)…")
    engine = replace(engine, teacher=teacher)   # the embedding of a refinement in the teacher's features
    reference = load_or_build_reference(engine, teacher, reference_cache_file(engine), reference_per_class)
    test = validation = held_out_rows = None
    if folder is not None:
        test, validation, held_out_rows = _folder_splits(engine, folder)
        if test is None:
            warnings.append(f"{folder.root} has no test split (ROOT/test or ROOT/val): students cannot be tested")
    elif latent_store is None:
        test = load_fashion_mnist("test", data_dir)
        validation = (engine.dataset.subset(validation_indices(engine.dataset.labels), "fashion-mnist-val")
                      if engine.dataset.name == "fashion-mnist-train" else load_fashion_mnist("val", data_dir))
    baseline = None
    if test is not None and folder is None:   # the shipped benchmark is Fashion-MNIST's
        try:
            baseline = load_baseline(BENCHMARK_RESULTS)
        except ValueError as exc:   # a damaged benchmark file costs the app its LRS / ARS columns only
            warnings.append(f"LRS / ARS are not shown: {exc}")
    report(1.0, "ready")
    return Studio(engine, teacher, reference, test, baseline, registry, tuple(warnings), validation,
                  validation_rows=held_out_rows)


def _folder_splits(engine: DistillEngine, folder) -> tuple[LabelledImages | None, LabelledImages, np.ndarray]:
    """(test split or None, validation split, the validation rows of the engine's training split) of a
    ``ModelFolder``'s ImageFolder dataset (``core.data.splits``)."""
    from core.data.splits import folder_splits, load_folder_split, validation_rows

    options = (folder.root, folder.resolution, folder.channels, folder.test_dir)
    splits = folder_splits(folder.root, folder.test_dir)
    test = load_folder_split(folder.root, "test", *options[1:]) if splits.test is not None else None
    rows = validation_rows("imagefolder", engine.dataset.labels, folder.root, folder.test_dir)
    validation = (engine.dataset.subset(rows, engine.dataset.name.replace("-train", "-val"))
                  if len(rows) else load_folder_split(folder.root, "val", *options[1:]))
    return test, validation, rows


@dataclass
class Run:
    """One distillation and its scores. ``features`` (teacher features of ``dset.images``) and ``coverage``
    are None when the studio has no teacher."""

    config: DistillConfig
    dset: DistilledSet
    features: np.ndarray | None
    coverage: CoverageResult | None
    metrics: dict
    prototype_images: torch.Tensor | None      # decoded prototypes, aligned with dset (N, C, H, W)
    seconds: float
    run_id: int = 0
    evaluations: list[dict] = field(default_factory=list)
    studio_key: str = ""   # the app's key of (data and models, settings): a run with the same key is reused
    registry_id: int | None = None   # its row in the studio's run registry, once recorded
    scores_job: BackgroundJob | None = field(default=None, repr=False)   # run_once(defer=True): scores on their way
    pending_metrics: tuple[str, ...] = ()   # the metric keys that job adds (empty once they are in)

    def wait_for_scores(self, timeout: float | None = None, only: tuple[str, ...] | None = None) -> BaseException | None:
        """Block until the deferred scores are in (at once when there are none), or with ``only`` until those
        metric keys are no longer pending (the job adds the teacher's scores before W2); the error that kept
        them from coming in, if any (returned, not raised: the set itself is fine)."""
        job = self.scores_job
        if job is None:
            return None
        if only is not None:
            job.wait_until(lambda: not set(only) & set(self.pending_metrics), timeout)
            # a later stage's failure is not this caller's: what it waited for is in
            return job.error if job.done and set(only) & set(self.pending_metrics) else None
        try:
            job.wait(timeout)
        except Exception as exc:   # noqa: BLE001 - reported to the page, which shows it
            return exc
        return None


def covering_counts(run: Run) -> dict[int, np.ndarray]:
    """class -> (M_c,) number of the run's samples that cover each mode of the class."""
    cov = run.coverage
    return {c: np.bincount(cov.sample_mode[(run.dset.labels == c) & cov.sample_covered], minlength=len(flags))
            for c, flags in cov.covered.items()}


def _decoded_prototypes(studio: Studio, dset: DistilledSet) -> torch.Tensor:
    """VAE decodes of the set's per-sample prototypes, remembered by their bytes (reused while only the
    sampler changes; a cell offset or another allocation of samples to prototypes decodes anew)."""
    import hashlib

    key = hashlib.blake2b(dset.prototypes.numpy().tobytes(), digest_size=16).hexdigest()
    cached = studio.decoded_prototypes.get(key)
    if cached is None:
        cached = studio.decoded_prototypes[key] = studio.engine.vae.decode(dset.prototypes)
        while len(studio.decoded_prototypes) > 16:
            studio.decoded_prototypes.pop(next(iter(studio.decoded_prototypes)))
    return cached


def _scores(studio: Studio, dset: DistilledSet, w2: bool) -> tuple[np.ndarray | None, CoverageResult | None, dict]:
    """(teacher features, mode coverage, metrics) of a set: the teacher's scores where the studio has one."""
    if studio.teacher is None:
        return None, None, latent_scores(studio.latents_by_class, dset, w2)
    features, coverage = _teacher_coverage(studio, dset)
    return features, coverage, assess(studio.reference, studio.teacher, dset, w2, features, coverage)


def _teacher_coverage(studio: Studio, dset: DistilledSet) -> tuple[np.ndarray, CoverageResult]:
    """The set's teacher features (N, D) and their mode coverage."""
    features = studio.teacher.features(dset.images).numpy()
    return features, mode_coverage(studio.reference.modes, features, dset.labels)


def accuracy_proxy(studio: Studio):
    """The studio's accuracy proxy (core.evaluation.proxy.KernelProxy, DEFAULT_PROXY), fitted once to
    the validation split, never to the test split; None without a teacher or a validation split. Built on first
    use (features of the validation images: a few seconds), then shared by every session."""
    from core.evaluation.proxy import KernelProxy

    if studio.teacher is None or studio.validation is None:
        return None
    with _PROXY_LOCK:
        if "default" not in studio.proxies:
            studio.proxies["default"] = KernelProxy(studio.validation, studio.teacher)
        return studio.proxies["default"]


def proxy_scores(studio: Studio, dset: DistilledSet) -> dict[str, float]:
    """Predicted validation accuracy of the set under each protocol family (``PROXY_SCORES``); {} without a proxy.
    The app distils from the whole training split, so a ``random`` set may hold a few of the validation images
    the proxy scores on (at most IPC of the 500 per class): its prediction is then slightly optimistic."""
    proxy = accuracy_proxy(studio)
    if proxy is None or dset.images is None:
        return {}
    return {key: proxy.score(dset.images, dset.labels, protocol) for key, protocol in PROXY_SCORES.items()}


def run_once(studio: Studio, config: DistillConfig, defer: bool = False, progress: Progress | None = None) -> Run:
    """Distil ``config`` (trajectories recorded) and score it: coverage, PRDC, W2, landing error, NFE.

    ``defer``: return after the distillation and the latent scores (landing error, diversity, NFE); a
    background job (``run.scores_job``) then adds the teacher's scores (``run.features``, ``run.coverage``,
    mode coverage and PRDC) and W2 (``run.pending_metrics`` names what it adds), and writes them to the
    run's registry row once recorded. The app shows the images at once and the scores a moment later.
    ``progress`` hears from a refinement (``config.refine``), the one stage that takes long."""
    t0 = time.perf_counter()
    dset = distill(studio.engine, replace(config, record_trajectories=True), progress=progress)
    prototypes = None
    if dset.prototypes is not None:
        prototypes = dset.images if config.method == "d4m" else _decoded_prototypes(studio, dset)
    if not defer:
        features, coverage, metrics = _scores(studio, dset, w2=True)
        metrics.update(proxy_scores(studio, dset))
        return Run(config, dset, features, coverage, metrics, prototypes, time.perf_counter() - t0)
    run = Run(config, dset, None, None, latent_scores(studio.latents_by_class, dset, w2=False), prototypes,
              time.perf_counter() - t0)
    pending = ["w2_latent_mean"]
    if studio.teacher is not None:
        pending[:0] = TEACHER_SCORES + (tuple(PROXY_SCORES) if studio.validation is not None else ())
    run.pending_metrics = tuple(pending)
    start_scores(studio, run)
    return run


def start_scores(studio: Studio, run: Run, after: BackgroundJob | None = None) -> None:
    """Score ``run``'s pending metrics in a background job (``run.scores_job``), once the job ``after`` (a cancelled
    one still winding down) has ended. A cancelled job stops between its stages and leaves the rest pending;
    ``ensure_scores`` starts a new one when the run is shown again."""
    def score(progress) -> None:
        if after is not None:   # one job at a time writes the run's scores
            try:
                after.wait()
            except Exception:   # noqa: BLE001 - its stage is pending still: this job computes it again
                pass
        if job.cancelled:
            return
        # three stages, each reported (waking Run.wait_for_scores(only=...) of the pages waiting for it: the
        # Coverage page waits for mode coverage only); each stores a new dict, so a page iterating the old one
        # is not disturbed; a cancelled job restarted by ensure_scores picks up at the stage it stopped before
        if studio.teacher is not None and COVERAGE_SCORES[0] in run.pending_metrics:
            run.features, run.coverage = _teacher_coverage(studio, run.dset)
            run.metrics = {**run.metrics, **coverage_metrics(run.coverage)}
            run.pending_metrics = tuple(k for k in run.pending_metrics if k not in COVERAGE_SCORES)
            progress(0.3, "mode coverage in")
        if job.cancelled:
            return
        if studio.teacher is not None and PRDC_SCORES[0] in run.pending_metrics:
            run.metrics = {**run.metrics, **prdc_metrics(studio.reference, run.dset, run.features)}
            run.pending_metrics = tuple(k for k in run.pending_metrics if k not in PRDC_SCORES)
            progress(0.5, "teacher scores in")
        if job.cancelled:
            return
        if set(PROXY_SCORES) & set(run.pending_metrics):
            run.metrics = {**run.metrics, **proxy_scores(studio, run.dset)}
            run.pending_metrics = ("w2_latent_mean",)
            progress(0.7, "predicted accuracy in")
        if job.cancelled or "w2_latent_mean" not in run.pending_metrics:
            return
        run.metrics = {**run.metrics, "w2_latent_mean": w2_latent_mean(studio.latents_by_class, run.dset)}
        run.pending_metrics = ()
        if studio.registry is not None and run.registry_id is not None:
            studio.registry.update(run.registry_id, metrics=run.metrics)

    job = BackgroundJob(score, name="scores")
    run.scores_job = job.start()


def ensure_scores(studio: Studio, run: Run) -> None:
    """Restart the scoring of a run whose job was cancelled before its scores were in, also when that job has
    not yet seen the cancel (the new one starts once the old one has stopped)."""
    job = run.scores_job
    if run.pending_metrics and job is not None and job.error is None and (job.done or job.cancelled):
        start_scores(studio, run, after=None if job.done else job)


def record_run(studio: Studio, run: Run) -> None:
    """Write ``run`` to the studio's registry (kind ``app``): config, metrics, timings, the commit."""
    if studio.registry is None:
        return
    run.registry_id = studio.registry.add_run("app", run.config.to_dict(), run.metrics, run.dset.timings,
                                              config_hash(run.config), source=studio.engine.dataset.name)
    if run.scores_job is not None and not run.pending_metrics:   # the scores came in before the row existed
        studio.registry.update(run.registry_id, metrics=run.metrics)


def evaluate_run(studio: Studio, run: Run, config: EvalConfig, progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None) -> EvalResult:
    """Train students on the run's images (DDOQ weights when the run has them); record the result."""
    if studio.test is None:
        raise ValueError("this data has no test split and teacher here: load a model folder of `python -m core "
                         "prepare` with a test split, or export the set and use `python -m core evaluate`")
    weights = run.dset.weights if config.use_weights else None
    result = evaluate_set(run.dset.images, run.dset.labels, studio.test, config, weights, studio.teacher,
                          progress, should_stop)
    run.evaluations.append({"protocol": config.protocol, "architecture": config.architecture, "epochs": config.epochs,
                            "seeds": list(config.seeds), "accuracy_mean": result.mean, "accuracy_std": result.std})
    if studio.registry is not None and run.registry_id is not None:
        studio.registry.add_evaluation(run.registry_id, config.protocol, config.architecture, config.epochs, "test",
                                       config.seeds, result.accuracies, result.seconds)
    return result


def accuracy_text(mean: float, std: float, seeds: int) -> str:
    """'76.19 ± 0.32 % over 3 seeds', or '76.19 % (1 seed, no spread)' (accuracies as fractions)."""
    if seeds > 1:
        return f"{100 * mean:.2f} ± {100 * std:.2f} % over {seeds} seeds"
    return f"{100 * mean:.2f} % (1 seed, no spread)"


def evaluation_rows(run: Run) -> list[dict]:
    """The run's student evaluations for a table, accuracies in % (the spread only with several seeds)."""
    return [{"protocol": e["protocol"], "student": e["architecture"], "epochs": e["epochs"], "seeds": len(e["seeds"]),
             "test accuracy (%)": round(100 * e["accuracy_mean"], 2),
             "± std (%)": round(100 * e["accuracy_std"], 2) if len(e["seeds"]) > 1 else None}
            for e in run.evaluations]


def run_parameters(config: DistillConfig) -> dict:
    """The parameters a researcher tunes, flat, for tables."""
    s, g = config.sampler, config.sampler.guidance
    params = {"method": config.method, "ipc": config.ipc,
              "classes": "all" if config.classes is None else len(config.classes), "seed": config.seed}
    if config.method in ("fm", "pgfm", "ddoq"):
        params.update({"solver": s.solver, "steps": s.steps, "cfg": s.cfg_scale})
    if config.method == "pgfm":
        params.update({"λ": g.strength, "schedule": g.schedule, "window": f"[{g.t_start:g}, {g.t_stop:g}]",
                       "t0": s.t0, "r": g.trust_radius, "cell offset": config.cell_offset,
                       "prototypes": config.prototypes_per_class or config.ipc})
    if config.method.startswith("diffusion"):
        params.update({"steps": config.diffusion.steps})
    if config.refine.iterations:
        r = config.refine
        params["refine"] = f"{r.embedding} {r.objective} {r.space} ×{r.iterations}"
    return params


HEADLINE_METRICS = (*PROXY_SCORES, "mode_coverage", "precision", "recall", "density", "coverage", "w2_latent_mean",
                    "landing_error_mean", "diversity_latent", "nfe_per_image")


def run_row(run: Run, baseline: RankingBaseline | None = None) -> dict:
    """Run id, parameters, headline metrics, wall time, the latest student accuracy of each protocol and,
    given the benchmark's ``baseline``, the DD-Ranking LRS and ARS (core.evaluation.ranking) of the latest
    ConvNet-3 evaluations with the benchmark's epochs (None where an input is missing: a class subset, or a
    protocol not evaluated yet)."""
    row = {"run": run.run_id, **run_parameters(run.config)}
    row.update({k: run.metrics.get(k) for k in HEADLINE_METRICS})
    row["seconds"] = round(run.seconds, 3)
    for e in run.evaluations:   # later evaluations of a protocol replace earlier ones
        row[f"accuracy ({e['protocol']})"] = round(100 * e["accuracy_mean"], 2)
    if baseline is not None:
        comparable = {e["protocol"]: e["accuracy_mean"] for e in run.evaluations
                      if e["architecture"] == "convnet" and e["epochs"] == baseline.epochs}
        every_class = run.config.classes is None or set(run.config.classes) == set(range(len(run.dset.class_names)))
        scores = baseline.scores(run.config.ipc, comparable) if every_class else {}
        row["LRS"] = round(scores["lrs"], 1) if "lrs" in scores else None
        row["ARS"] = round(scores["ars"], 1) if "ars" in scores else None
    return row


@dataclass
class RunHistory:
    """A session's runs, newest last; at most ``limit`` are kept (images and trajectories are in memory)."""

    limit: int = 20
    runs: list[Run] = field(default_factory=list)
    next_id: int = 1

    def add(self, run: Run) -> Run:
        run.run_id = self.next_id
        self.next_id += 1
        self.runs.append(run)
        del self.runs[:-self.limit]
        return run

    def get(self, run_id: int) -> Run:
        for run in self.runs:
            if run.run_id == run_id:
                return run
        raise KeyError(f"run {run_id} is not in this session's history (kept: {[r.run_id for r in self.runs]})")

    def rows(self, baseline: RankingBaseline | None = None) -> list[dict]:
        return [run_row(r, baseline) for r in self.runs]

    def compare(self, a: int, b: int, baseline: RankingBaseline | None = None) -> list[dict]:
        """Side-by-side rows {field, run a, run b} of every parameter and metric of two runs."""
        row_a, row_b = run_row(self.get(a), baseline), run_row(self.get(b), baseline)
        keys = list(dict.fromkeys([*row_a, *row_b]))
        return [{"field": k, f"run {a}": row_a.get(k), f"run {b}": row_b.get(k)} for k in keys if k != "run"]
