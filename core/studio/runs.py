"""The Runs page without Streamlit: registry rows -> a flat table, and a run's config -> sidebar settings.

A table row: id, kind, when, name, the tuned parameters (core.studio.session.run_parameters' names), the
latest test accuracy of each protocol (%), headline metrics, pinned, tags, export. ``differing_columns``
names the parameter columns whose values differ between the rows shown (what the page highlights).
"""
from __future__ import annotations

import datetime as _dt
from pathlib import PurePath

from core.config import DistillConfig

PARAMETERS = ("method", "ipc", "classes", "seed", "λ", "schedule", "window", "t0", "r", "cell offset", "prototypes",
              "solver", "steps", "cfg")
METRICS = ("mode_coverage", "precision", "recall", "coverage", "w2_latent_mean", "landing_error_mean")


def _config(row: dict) -> DistillConfig | None:
    """The DistillConfig of a registry row (None for a bench cell or an evaluation of a folder without one)."""
    config = row["config"].get("distill") if row["kind"] == "bench" else row["config"]
    try:
        return DistillConfig.from_dict(config) if config else None
    except ValueError:   # e.g. an evaluation of a plain ImageFolder, or a config of a newer version
        return None


def table_rows(runs: list[dict], owner: str | None = None) -> list[dict]:
    """One flat dict per registry run, pinned runs first, then newest first. ``by``: "you" for ``owner``'s runs,
    else "command line"; ``export``: the export's folder name only (a served app shows no server path)."""
    from core.studio.session import run_parameters

    rows = []
    for r in runs:
        config = _config(r)
        params = run_parameters(config) if config is not None else {}
        latest = {e["protocol"]: e for e in r["evaluations"] if e["split"] == "test"}
        row = {"id": r["id"], "kind": r["kind"], "by": "you" if r.get("owner") == owner else "command line", "when": _dt.datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M"),
               "name": r["name"], **{p: params.get(p) for p in PARAMETERS},
               **{f"accuracy ({p}) %": round(100 * e["accuracy_mean"], 2) for p, e in latest.items()},
               **{m: r["metrics"].get(m) for m in METRICS}, "pinned": r["pinned"], "tags": ", ".join(r["tags"]),
               "export": PurePath(r["export_path"]).name if r["export_path"] else ""}
        rows.append(row)
    return sorted(rows, key=lambda row: (not row["pinned"], -row["id"]))


def differing_columns(rows: list[dict]) -> list[str]:
    """Parameter columns whose values are not all equal across ``rows``."""
    return [p for p in PARAMETERS if len({str(row.get(p)) for row in rows}) > 1]


def sidebar_settings(row: dict, class_names: list[str]) -> dict | None:
    """The sidebar's session values that reproduce a registry run (None when it has no distillation config):
    the keys of ``ui.sidebar.DEFAULTS`` plus ``classes`` (names)."""
    config = _config(row)
    if config is None:
        return None
    s, g = config.sampler, config.sampler.guidance
    classes = list(class_names) if config.classes is None else [class_names[c] for c in config.classes]
    return {"method": config.method, "ipc": config.ipc, "seed": config.seed, "classes": classes,
            "guidance": g.strength, "schedule": g.schedule, "t_start": g.t_start, "t_stop": g.t_stop,
            "trust_radius": g.trust_radius or 0.0, "t0": s.t0, "solver": s.solver, "steps": s.steps,
            "cfg_scale": s.cfg_scale, "dtype": s.dtype, "diffusion_steps": config.diffusion.steps,
            "cell_offset": config.cell_offset,
            "prototypes_per_class": config.prototypes_per_class or 0}
