"""Run configurations (dataclasses, checked on construction), the names they accept, one stable
``config_hash``, and ``distill_config``: options -> DistillConfig, shared by the CLI and the app.

Foundation layer: imports no torch, so ``python -m core --help`` and option checks are instant.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

ASSETS = Path(__file__).resolve().parent.parent / "assets"   # the embedded default's shipped models
VAE_DIR, FLOW_DIR, TEACHER_DIR = ASSETS / "vae", ASSETS / "flow", ASSETS / "teacher"
DIFFUSION_DIR = ASSETS / "diffusion"
CACHE_ENV = "DISTILL_CACHE"
DEFAULT_CACHE = ASSETS.parent / ".cache"


def cache_dir(path: str | Path | None = None) -> Path:
    """The cache root: ``path``, else $DISTILL_CACHE, else ``<repo>/.cache`` (ignored by git)."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


# The training split without its validation split (DESIGN.md 4b; core.data.datasets.validation_indices).
TRAIN_MINUS_VAL = "train-minus-val"
# The benchmark's results of the embedded default (the app's run table takes its DD-Ranking references there).
BENCHMARK_RESULTS = ASSETS.parent / "benchmarks" / "results.json"
SAMPLER_DTYPES = ("float32", "bfloat16", "float16")   # model precision of the samplers (core.transport.sampler.DTYPES)
# what a --dtype option takes: "auto" is resolved per device (core.device.resolve_sampler_dtype) before a config is made
SAMPLER_DTYPE_OPTIONS = ("auto",) + SAMPLER_DTYPES
DEFAULT_TF32 = True   # TF32 float32 matmuls on CUDA outside training too (core.device.configure_device)


SCHEDULES = ("constant", "linear", "cosine")


# Bounds of the size-like settings, shared by the configs (so the app) and the CLI's options: far beyond any useful
# value, low enough that a typo (``--steps 1000000000000``) is refused at once instead of allocating terabytes.
LIMITS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**31 - 1),         # numpy's legacy RandomState (optuna) takes < 2**32, with room for seed + k
    "threads": (0, 4096),
    "ipc": (1, 100_000),
    "steps": (1, 1000),             # sampler steps: flow ODE, DDIM (1000 training timesteps)
    "batch": (1, 65_536),
    "epochs": (1, 100_000),
    "train steps": (1, 100_000_000),  # optimisation steps of train-flow / train-diffusion
    "iterations": (0, 1_000_000),   # refinement iterations
    "seeds": (1, 100),              # students (seeds) per set
    "repeats": (1, 1000),
    "width": (1, 65_536),           # network widths, depths, heads
    "images": (1, 10_000_000),      # images per class, per shard, rows
    "resolution": (8, 4096),
    "trials": (1, 10_000),
    "workers": (1, 1024),
    "GiB": (0, 2**20),              # memory limits (a float option > 0)
}


def check_int(name: str, value: Any, kind: str, low: int | None = None) -> None:
    """ValueError unless ``value`` is an integer within ``LIMITS[kind]`` (``low``: another lower bound)."""
    low, high = (LIMITS[kind][0] if low is None else low), LIMITS[kind][1]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if value > high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class GuidanceConfig:
    """strength λ >= 0; window 0 <= t_start <= t_stop <= 1; trust_radius r > 0 or None (no trust region)."""

    strength: float = 0.0
    schedule: str = "constant"
    t_start: float = 0.0
    t_stop: float = 0.8
    trust_radius: float | None = None
    eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_finite("guidance strength λ", self.strength)
        if self.strength < 0:
            raise ValueError(f"guidance strength λ must be >= 0, got {self.strength}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"guidance schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _check_finite("t_start", self.t_start)
        _check_finite("t_stop", self.t_stop)
        if not 0.0 <= self.t_start <= self.t_stop <= 1.0:
            raise ValueError(f"guidance window needs 0 <= t_start <= t_stop <= 1, got [{self.t_start}, {self.t_stop}]")
        if self.trust_radius is not None:
            _check_finite("trust radius r", self.trust_radius)
            if self.trust_radius <= 0:
                raise ValueError(f"trust radius r must be > 0 (or None for no trust region), got {self.trust_radius}")
        _check_finite("eps", self.eps)
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {self.eps}")

    @property
    def active(self) -> bool:
        return self.strength > 0


def guidance_weight(t: float, config: GuidanceConfig) -> float:
    """λ(t): the schedule's value inside [t_start, t_stop], 0 outside."""
    if not config.active or t < config.t_start or t > config.t_stop:
        return 0.0
    span = config.t_stop - config.t_start
    u = 0.0 if span == 0 else (t - config.t_start) / span
    if config.schedule == "constant":
        return config.strength
    if config.schedule == "linear":
        return config.strength * (1.0 - u)
    return config.strength * 0.5 * (1.0 + math.cos(math.pi * u))


SOLVERS = ("euler", "heun", "midpoint", "rk4")


SOLVER_ORDER = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}


EVALS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}


@dataclass(frozen=True)
class SamplerConfig:
    solver: str = "euler"
    steps: int = 8
    time_shift: float = 1.0
    cfg_scale: float = 2.0
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    t0: float = 0.0
    seed: int = 0
    dtype: str = "float32"   # model precision; the ODE state stays float32
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        check_int("steps", self.steps, "steps")
        check_int("seed", self.seed, "seed")
        check_int("batch_size", self.batch_size, "batch")
        for name, value in (("time_shift", self.time_shift), ("cfg_scale", self.cfg_scale), ("t0", self.t0)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.time_shift <= 0:
            raise ValueError(f"time_shift must be > 0, got {self.time_shift}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0 (1 = no CFG), got {self.cfg_scale}")
        if not 0.0 <= self.t0 < 1.0:
            raise ValueError(f"warm start t0 must lie in [0, 1), got {self.t0}")
        if self.dtype not in SAMPLER_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(SAMPLER_DTYPES)}, got {self.dtype!r}")

    def step_methods(self) -> list[str]:
        """The solver of each step. With guidance still active at t = 1 (λ(1) > 0), a stage evaluated at
        t = 1 would divide 0 by 0 in the guidance term, so the last step of heun/rk4 is taken with the
        midpoint rule instead (no stage at t = 1); it keeps λ ≡ 1 landing exactly on the prototype."""
        methods = [self.solver] * self.steps
        if self.solver in ("heun", "rk4") and guidance_weight(1.0, self.guidance) > 0:
            methods[-1] = "midpoint"
        return methods

    @property
    def nfe(self) -> int:
        """Model evaluations per sample (a CFG step batches its two passes into one evaluation)."""
        return sum(EVALS_PER_STEP[m] for m in self.step_methods())


MODES = ("plain", "d4m", "mg")


@dataclass(frozen=True)
class DiffusionSamplerConfig:
    mode: str = "plain"        # plain | d4m | mg
    steps: int = 25
    cfg_scale: float = 2.0
    strength: float = 0.7      # d4m: fraction of the schedule that is run (1 = from pure noise)
    guidance: float = 0.5      # mg: λ, pull of x̂_0 toward the prototype
    stop: float = 0.6          # mg: guidance on the first ``stop`` fraction of the steps
    x0_clip: float | None = 4.0  # clip x̂_0 to ±x0_clip (None: no clipping); see sampling_scheduler
    seed: int = 0
    dtype: str = "float32"
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"diffusion mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_int("diffusion steps", self.steps, "steps")
        check_int("seed", self.seed, "seed")
        check_int("batch_size", self.batch_size, "batch")
        for name, value, low, high in (("strength", self.strength, 0.0, 1.0), ("guidance", self.guidance, 0.0, 1.0),
                                       ("stop", self.stop, 0.0, 1.0)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
                raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
        if self.mode == "d4m" and self.strength == 0:
            raise ValueError("strength must be > 0 for d4m (0 would run no denoising step)")
        if self.x0_clip is not None and (not math.isfinite(self.x0_clip) or self.x0_clip <= 0):
            raise ValueError(f"x0_clip must be a finite number > 0 or None, got {self.x0_clip!r}")
        if not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {self.cfg_scale!r}")

    @property
    def nfe(self) -> int:
        """Denoising steps run (core.transport.ddim.diffusion_timesteps has as many entries)."""
        return self.steps if self.mode != "d4m" else max(1, min(self.steps, round(self.steps * self.strength)))


REFINE_SPACES = ("latent", "pixel")
REFINE_OBJECTIVES = ("mean", "mmd")
REFINE_EMBEDDINGS = ("random", "teacher")
SOFT_TEMPERATURE = 4.0   # of soft labels: soft-online's KL (EvalConfig.temperature), the teacher's, the boundary term's


@dataclass(frozen=True)
class RefineConfig:
    """Distribution-matching refinement of a sampled set (core.pipeline.refine); ``iterations`` 0: none.
    ``space``: ``latent`` (Adam on the latents, through the frozen decoder) or ``pixel`` (SGD on the images);
    ``real_batch``: real images per class and iteration; ``width``: channels of the random ConvNet-3 embeddings;
    ``objective``: ``mean`` (DM: the squared distance of mean embeddings) or ``mmd`` (that plus a Gaussian-kernel
    MMD², which also matches the spread of the embeddings, M3D-style); ``embedding``: ``random`` (DM's freshly
    initialised ConvNet-3 every iteration) or ``teacher`` (the frozen teacher's penultimate features, the space
    whose labels ``soft-online`` students learn; ``width`` is then unused); ``project_t`` > 0 (latent space, flow methods):
    afterwards the refined latents are noised back to time ``project_t`` (0 noise, 1 data) with the noise each sample
    started from (the sampler's seed) and the flow integrates them to t = 1 again, unguided (SDEdit-style), pulling
    them back toward what the generator draws; its time counts as refinement time; 0: not. ``boundary`` > 0 (embedding
    teacher): adds that weight times the negative entropy of the teacher's temperature-``SOFT_TEMPERATURE``
    outputs on the set's augmented images, so the set moves toward where the teacher is unsure, near the class
    boundaries, whose soft labels tell a student most (boundary-supporting samples, Heo et al., AAAI 2019); 0: not."""

    iterations: int = 0
    space: str = "latent"
    lr: float = 0.01
    real_batch: int = 128
    width: int = 64
    objective: str = "mean"
    project_t: float = 0.0
    embedding: str = "random"
    boundary: float = 0.0

    # Fields added after results were keyed by this config (see DistillConfig.LATER_DEFAULTS).
    LATER_DEFAULTS: ClassVar[dict[str, Any]] = {"objective": "mean", "project_t": 0.0, "embedding": "random",
                                                "boundary": 0.0}

    def __post_init__(self) -> None:
        if self.space not in REFINE_SPACES:
            raise ValueError(f"refine space must be one of {', '.join(REFINE_SPACES)}, got {self.space!r}")
        if self.objective not in REFINE_OBJECTIVES:
            raise ValueError(f"refine objective must be one of {', '.join(REFINE_OBJECTIVES)}, got {self.objective!r}")
        if self.embedding not in REFINE_EMBEDDINGS:
            raise ValueError(f"refine embedding must be one of {', '.join(REFINE_EMBEDDINGS)}, got {self.embedding!r}")
        for name, kind in (("iterations", "iterations"), ("real_batch", "batch"), ("width", "width")):
            check_int(f"refine {name}", getattr(self, name), kind)
        _check_finite("refine lr", self.lr)
        if self.lr <= 0:
            raise ValueError(f"refine lr must be > 0, got {self.lr}")
        _check_finite("refine project_t", self.project_t)
        if not 0.0 <= self.project_t < 1.0:
            raise ValueError(f"refine project_t must lie in [0, 1) (0: no projection), got {self.project_t}")
        _check_finite("refine boundary", self.boundary)
        if self.boundary < 0:
            raise ValueError(f"refine boundary must be >= 0 (0: no boundary term), got {self.boundary}")
        if self.boundary and self.embedding != "teacher":
            raise ValueError("refine boundary weighs the teacher's uncertainty: give embedding 'teacher' as well")
        if self.embedding != "random" and not self.iterations:
            raise ValueError("refine embedding chooses the network a refinement matches in: give iterations > 0 as well")
        if self.project_t and not self.iterations:
            raise ValueError("refine project_t projects a refined set: give iterations > 0 as well")
        if self.project_t and self.space != "latent":
            raise ValueError("refine project_t needs the latent space: a pixel-space refinement has no latents to project")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if self.LATER_DEFAULTS.get(k, object()) != v}


# The refinement of the benchmark's ``pgfm-dm`` row and of ``distill --refine`` without settings (chosen on the
# validation split at IPC 50: benchmarks/sweep-ipc50).
REFINE_LR = {"pixel": 1.0, "latent": 0.01}   # the step size of each space when none is given
DEFAULT_REFINE = RefineConfig(iterations=150, space="latent", lr=REFINE_LR["latent"], real_batch=128, width=64)
# Up to this IPC, pgfm-dm refines 3x as long: on validation at IPC 10 (soft-online, one seed) 450 iterations gave
# 84.0 % against 83.1 % for 150 (benchmarks/sweep-ipc10-soft-online); at IPC 50 both gave 88.4 %, 450 for 2.2x
# the time (benchmarks/sweep-ipc50-soft-online).
LONG_REFINE_UP_TO_IPC = 10
LONG_REFINE = replace(DEFAULT_REFINE, iterations=3 * DEFAULT_REFINE.iterations)


# pgfm-tdm's refinement: DEFAULT_REFINE's 150 steps in the teacher's features, with the MMD objective. On validation
# at IPC 10 (soft-online, one seed; benchmarks/sweep-ipc10-soft-online) it gave 85.3 % (mode coverage 79 %) against
# 84.9 % (72 %) for the mean objective and 84.0 % (69 %) for pgfm-dm's 450 random-network steps.
TEACHER_REFINE = replace(DEFAULT_REFINE, embedding="teacher", objective="mmd")


# Named refinements: ``distill --refine-preset NAME`` (the recommended recipe is pgfm with ``tdm``) and the app's
# Refine stage. Options given beside a preset override its fields.
REFINE_PRESETS = {"tdm": TEACHER_REFINE, "dm": DEFAULT_REFINE}
RECOMMENDED_REFINE = "tdm"


def default_refine(ipc: int) -> RefineConfig:
    """pgfm-dm's refinement at ``ipc``: LONG_REFINE up to LONG_REFINE_UP_TO_IPC, DEFAULT_REFINE above."""
    return LONG_REFINE if ipc <= LONG_REFINE_UP_TO_IPC else DEFAULT_REFINE


METHODS = ("random", "d4m", "ddoq", "fm", "pgfm", "diffusion-d4m", "diffusion-mg")


FLOW_METHODS = ("ddoq", "fm", "pgfm")


DIFFUSION_METHODS = ("diffusion-d4m", "diffusion-mg")


# Chosen by 3-seed student accuracy at IPC 10 (benchmarks/pgfm_default.json): constant λ 0.9 on [0, 0.8]
# gave 78.44 ± 0.44 % against 75.12 ± 0.11 % for the earlier default (linear decay from λ 0.6).
DEFAULT_PGFM_GUIDANCE = GuidanceConfig(strength=0.9, schedule="constant", t_start=0.0, t_stop=0.8)


@dataclass(frozen=True)
class DistillConfig:
    """Everything that defines a distilled set; recorded whole in the manifest."""

    method: str = "pgfm"
    ipc: int = 10
    classes: tuple[int, ...] | None = None          # None: all classes
    seed: int = 0
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=8, guidance=DEFAULT_PGFM_GUIDANCE))
    ddoq_t0: float = 0.5                            # warm start of the ddoq decode-through-flow ODE
    diffusion: DiffusionSamplerConfig = field(default_factory=DiffusionSamplerConfig)
    medoid: bool = False
    pgfm_weights: bool = False                      # pgfm: keep DDOQ cell masses as weights
    record_trajectories: bool = False
    # pgfm: guide each sample to prototype + cell_offset · (a random real latent of the prototype's k-means
    # cell − prototype): 0 = the centroid (the paper), 1 = a real latent of the cell (seeded by ``seed``)
    cell_offset: float = 0.0
    # pgfm: K < IPC prototypes per class, the IPC samples allocated to them in proportion to their DDOQ cell
    # masses (largest remainder, DESIGN.md section 3): several samples (different noise) per prototype
    prototypes_per_class: int | None = None
    # distribution-matching refinement of the sampled set (DM; core.pipeline.refine): off unless iterations > 0
    refine: RefineConfig = field(default_factory=RefineConfig)

    # Fields added after results were keyed by this config: recorded only when they differ from these
    # values, so the hash (benchmark cells, caches) of a config that does not use them stays what it was.
    LATER_DEFAULTS: ClassVar[dict[str, Any]] = {"cell_offset": 0.0, "prototypes_per_class": None,
                                                "refine": RefineConfig().to_dict()}

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check_int("ipc", self.ipc, "ipc")
        check_int("seed", self.seed, "seed")
        if not 0.0 <= self.ddoq_t0 < 1.0:
            raise ValueError(f"ddoq_t0 must lie in [0, 1), got {self.ddoq_t0}")
        _check_finite("cell_offset", self.cell_offset)
        if not 0.0 <= self.cell_offset <= 1.0:
            raise ValueError(f"cell_offset must lie in [0, 1], got {self.cell_offset}")
        if self.refine.iterations and self.method == "random":
            raise ValueError("refinement applies to generated sets: method random keeps its real images as they are")
        if self.refine.project_t and self.method not in FLOW_METHODS:
            raise ValueError(f"refine project_t integrates the flow model: it applies to {', '.join(FLOW_METHODS)}, "
                             f"not {self.method}")
        k = self.prototypes_per_class
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.ipc):
            raise ValueError(f"prototypes_per_class must be an integer in [1, ipc = {self.ipc}], got {k!r}")

    def to_dict(self) -> dict:
        data = {**asdict(self), "refine": self.refine.to_dict()}
        for name, default in self.LATER_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DistillConfig":
        """The config that ``to_dict`` wrote (a manifest's ``config``, a registry row). ValueError names a field
        this code does not know, or an invalid value."""
        def build(kind: type, values: Any, where: str, nested: dict[str, type] | None = None):
            if not isinstance(values, Mapping):
                raise ValueError(f"{where} must be an object, got {type(values).__name__}")
            unknown = sorted(set(values) - {f.name for f in fields(kind)})
            if unknown:
                raise ValueError(f"{where}: unknown fields {unknown}")
            values = dict(values)
            for name, sub in (nested or {}).items():
                if name in values:
                    values[name] = build(sub, values[name], f"{where}.{name}")
            try:
                return kind(**values)
            except TypeError as exc:
                raise ValueError(f"{where}: {exc}") from exc

        values = dict(data)
        if values.get("classes") is not None:
            values["classes"] = tuple(values["classes"])
        if "sampler" in values:
            values["sampler"] = build(SamplerConfig, values["sampler"], "sampler", {"guidance": GuidanceConfig})
        if "diffusion" in values:
            values["diffusion"] = build(DiffusionSamplerConfig, values["diffusion"], "diffusion")
        if "refine" in values:
            values["refine"] = build(RefineConfig, values["refine"], "refine")
        return build(cls, values, "config")


BENCH_METHODS = ("random", "random-vae", "d4m", "ddoq", "ddoq-unweighted", "fm", "pgfm", "pgfm-dm", "pgfm-tdm",
                 "diffusion-d4m", "diffusion-mg")


# Network presets of train-flow / train-diffusion (core.training.loop): the project's adaLN MLP sizes, SiT names.
MLP_PRESETS: dict[str, dict[str, int]] = {
    "mlp-s": dict(width=256, hidden=512, depth=4),
    "mlp-m": dict(width=512, hidden=1024, depth=4),   # the shipped flow (assets/flow)
}
SIT_MODELS = ("sit-s/2", "sit-b/2", "sit-l/2", "sit-xl/2")
MODEL_PRESETS = tuple(MLP_PRESETS) + SIT_MODELS


# Student networks of the evaluation (core.models.convnet.ARCHITECTURES builds them; names here for the CLI).
STUDENT_ARCHITECTURES = ("convnet", "resnet", "resnet-bn", "mlp")

# Student protocols (DESIGN.md section 4b): label source, augmentation, and whether the teacher labels every
# augmented batch (core.evaluation.students).
PROTOCOLS = {
    "hard": {"labels": "hard", "augment": "none", "relabel": False},
    "hard-dsa": {"labels": "hard", "augment": "dsa", "relabel": False},
    "soft": {"labels": "soft", "augment": "none", "relabel": False},
    "soft-online": {"labels": "soft", "augment": "dsa", "relabel": True},
}


def config_hash(config: Any) -> str:
    """12 hex digits of SHA-256 over a config (a dataclass or a JSON-able dict) as sorted JSON: the one key
    under which runs, benchmark cells and caches are stored."""
    data = (config.to_dict() if hasattr(config, "to_dict") else asdict(config)) if is_dataclass(config) else config
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _apply_refine_preset(o: dict) -> None:
    """Fill the refine options of ``o`` from ``o["refine_preset"]`` (REFINE_PRESETS) where they are not given (a
    value given beside the preset wins)."""
    name = o.pop("refine_preset", None)
    if name is None:
        return
    if name not in REFINE_PRESETS:
        raise ValueError(f"refine preset must be one of {', '.join(REFINE_PRESETS)}, got {name!r}")
    preset = REFINE_PRESETS[name]
    o["refine"] = o.get("refine") or preset.iterations
    for field_name in ("space", "real_batch", "width", "objective", "project_t", "embedding", "boundary"):
        o.setdefault(f"refine_{field_name}", getattr(preset, field_name))


def distill_config(options: Mapping[str, Any]) -> DistillConfig:
    """The DistillConfig that flat ``options`` describe (the CLI's parsed options or the app's sidebar state;
    a missing option takes its default). Keys: method, ipc, classes ("all", a string of names / ids or ids),
    seed; guidance, schedule, t_start, t_stop, trust_radius, t0; solver, steps, time_shift, cfg_scale, dtype,
    sample_batch_size; diffusion_steps, strength, mg_guidance, mg_stop; ddoq_t0, medoid, pgfm_weights,
    cell_offset, prototypes_per_class; refine (iterations, 0: none), refine_space, refine_lr, refine_real_batch,
    refine_width, refine_objective, refine_project_t, refine_embedding, refine_boundary (defaults: DEFAULT_REFINE, the space's REFINE_LR),
    refine_preset (a name of REFINE_PRESETS: its refinement, the other refine options overriding it).
    ValueError (from the dataclasses) names what is invalid."""
    base, sampler, diffusion = DistillConfig(), SamplerConfig(), DiffusionSamplerConfig()
    o = {k: v for k, v in options.items() if v is not None}
    batch = o.get("sample_batch_size", sampler.batch_size)
    check_int("--sample-batch-size", batch, "batch")
    seed, dtype, cfg = o.get("seed", 0), o.get("dtype", sampler.dtype), o.get("cfg_scale", sampler.cfg_scale)
    default = DEFAULT_PGFM_GUIDANCE
    guidance = GuidanceConfig(strength=o.get("guidance", default.strength), schedule=o.get("schedule", default.schedule),
                              t_start=o.get("t_start", default.t_start), t_stop=o.get("t_stop", default.t_stop),
                              trust_radius=o.get("trust_radius"))
    classes = o.get("classes", "all")
    _apply_refine_preset(o)
    refine = RefineConfig()
    for key in ("refine_space", "refine_lr", "refine_real_batch", "refine_width", "refine_objective", "refine_project_t",
                "refine_embedding", "refine_boundary"):
        if o.get(key) not in (None, getattr(DEFAULT_REFINE, key.removeprefix("refine_"))) and not o.get("refine", 0):
            raise ValueError(f"{key} {o[key]!r} changes a refinement, but none is asked for: give refine N > 0 (--refine N)")
    if o.get("refine", 0):
        space = o.get("refine_space", DEFAULT_REFINE.space)
        refine = RefineConfig(iterations=o["refine"], space=space, lr=o.get("refine_lr", REFINE_LR.get(space, DEFAULT_REFINE.lr)),
                              real_batch=o.get("refine_real_batch", DEFAULT_REFINE.real_batch),
                              width=o.get("refine_width", DEFAULT_REFINE.width),
                              objective=o.get("refine_objective", DEFAULT_REFINE.objective),
                              project_t=o.get("refine_project_t", DEFAULT_REFINE.project_t),
                              embedding=o.get("refine_embedding", DEFAULT_REFINE.embedding),
                              boundary=o.get("refine_boundary", DEFAULT_REFINE.boundary))
    return DistillConfig(refine=refine,
        method=o.get("method", base.method), ipc=o.get("ipc", base.ipc), classes=None if classes == "all" else classes,
        seed=seed, ddoq_t0=o.get("ddoq_t0", base.ddoq_t0), medoid=bool(o.get("medoid", False)),
        pgfm_weights=bool(o.get("pgfm_weights", False)), record_trajectories=False,
        # only pgfm uses it: other methods keep the default, so their configs (and hashes) do not depend on it
        cell_offset=float(o.get("cell_offset", base.cell_offset)) if o.get("method", base.method) == "pgfm" else 0.0,
        prototypes_per_class=o.get("prototypes_per_class") if o.get("method", base.method) == "pgfm" else None,
        sampler=SamplerConfig(solver=o.get("solver", sampler.solver), steps=o.get("steps", base.sampler.steps),
                              time_shift=o.get("time_shift", sampler.time_shift), cfg_scale=cfg, guidance=guidance,
                              t0=o.get("t0", sampler.t0), seed=seed, dtype=dtype, batch_size=batch),
        diffusion=DiffusionSamplerConfig(steps=o.get("diffusion_steps", diffusion.steps), cfg_scale=cfg,
                                         strength=o.get("strength", diffusion.strength),
                                         guidance=o.get("mg_guidance", diffusion.guidance),
                                         stop=o.get("mg_stop", diffusion.stop), seed=seed, dtype=dtype,
                                         batch_size=batch))
