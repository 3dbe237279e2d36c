"""Calibrating a score against students: does it rank distilled sets the way their students' validation
accuracies do, and how well could anything rank them?

The calibration sets are the benchmark's sweep cells scored on the validation split (``bench --sweep-ipc N
--sweep-protocol P``; each folder's results.json). ``collect_sets`` turns them into one record per distinct
set (IPC, method, distillation config) with its students' accuracies per protocol and seed and the live
scores the benchmark measured; the records are the calibration data file. ``rank_correlations`` gives, per
IPC and protocol, Spearman's ρ and Kendall's τ between a score and the mean validation accuracy, and the
ceiling: ρ between the accuracies of two student seeds of the same sets (where sets differ by less than
seeds do, no score can rank them).

A set of real images drawn anew per student seed (``random``) has a different set per seed: its seed-0
accuracy is used, and it is left out of the ceiling.
"""
from __future__ import annotations

import math

import numpy as np

from core.config import PROTOCOLS, config_hash

# live scores of the app (core.evaluation.assess), and which way is better (+1: higher)
LIVE_SCORES = {"mode_coverage": 1, "precision": 1, "recall": 1, "density": 1, "coverage": 1, "w2_latent_mean": -1}


def set_key(method: str, distill: dict) -> str:
    return f"{method}/{config_hash(distill)}"


def collect_sets(results: list[dict]) -> list[dict]:
    """One record per distinct validation-scored set of the benchmark ``results`` (results.json contents):
    ``{key, name, ipc, method, distill, per_seed_draws, accuracies: {protocol: {seed: accuracy}}, live}``;
    a set in several results (another protocol, more seeds) is merged."""
    sets: dict[str, dict] = {}
    for result in results:
        for name, cell in result.get("cells", {}).items():
            spec = cell.get("spec") or {}
            if spec.get("split") != "val" or "distill" not in spec:
                continue
            key = set_key(cell["method"], spec["distill"])
            record = sets.setdefault(key, {"key": key, "name": name.split("/", 2)[-1], "ipc": int(cell["ipc"]),
                                           "method": cell["method"], "distill": spec["distill"],
                                           "per_seed_draws": "draws" in spec, "accuracies": {},
                                           "live": {k: cell.get("metrics", {}).get(k) for k in LIVE_SCORES}})
            for protocol in PROTOCOLS:
                students = cell.get(protocol)
                if students:
                    seeds = students["config"]["seeds"]
                    record["accuracies"].setdefault(protocol, {}).update(
                        {str(s): float(a) for s, a in zip(seeds, students["accuracies"])})
    return sorted(sets.values(), key=lambda r: (r["ipc"], r["name"]))


def accuracy(record: dict, protocol: str) -> float | None:
    """The set's validation accuracy under ``protocol``: the mean over seeds (seed 0's for per-seed draws)."""
    by_seed = record["accuracies"].get(protocol) or {}
    if record["per_seed_draws"]:
        return by_seed.get("0")
    return float(np.mean(list(by_seed.values()))) if by_seed else None


def _rank(x: list[float], y: list[float]) -> tuple[float, float]:
    from scipy.stats import kendalltau, spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan
    return float(spearmanr(x, y).statistic), float(kendalltau(x, y).statistic)


def ceiling(records: list[dict], protocol: str) -> tuple[float, int]:
    """(Spearman ρ between student seeds 0 and 1 over the sets that have both, how many sets)."""
    pairs = [(r["accuracies"][protocol]["0"], r["accuracies"][protocol]["1"]) for r in records
             if not r["per_seed_draws"] and {"0", "1"} <= set(r["accuracies"].get(protocol, {}))]
    if len(pairs) < 3:
        return math.nan, len(pairs)
    return _rank([a for a, _ in pairs], [b for _, b in pairs])[0], len(pairs)


def rank_correlations(records: list[dict], scores: dict[str, dict[str, float]], protocol: str,
                      sign: int = 1) -> dict:
    """ρ, τ and n between ``scores`` ({set key: {protocol: value}}, ``sign`` -1 for lower-is-better) and the
    sets' validation accuracies under ``protocol``."""
    pairs = [(sign * scores[r["key"]][protocol], accuracy(r, protocol)) for r in records
             if accuracy(r, protocol) is not None and scores.get(r["key"], {}).get(protocol) is not None]
    rho, tau = _rank([p for p, _ in pairs], [a for _, a in pairs])
    return {"rho": rho, "tau": tau, "n": len(pairs)}


def live_scores(records: list[dict], name: str) -> dict[str, dict[str, float]]:
    """A live score of the benchmark's measurements as a {set key: {protocol: value}} table (the same value
    for every protocol)."""
    return {r["key"]: {p: r["live"][name] for p in PROTOCOLS} for r in records if r["live"].get(name) is not None}


def scatter_figure(records: list[dict], scores: dict[str, dict[str, float]], protocols: list[str], label: str,
                   path) -> None:
    """A grid of proxy-vs-validation-accuracy scatter plots (rows: IPC, columns: protocol), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.io import atomic_write

    ipcs = sorted({r["ipc"] for r in records})
    fig, axes = plt.subplots(len(ipcs), len(protocols), figsize=(4.2 * len(protocols), 3.6 * len(ipcs)),
                             squeeze=False)
    for i, ipc in enumerate(ipcs):
        group = [r for r in records if r["ipc"] == ipc]
        for j, protocol in enumerate(protocols):
            ax = axes[i][j]
            points = [(scores[r["key"]][protocol], accuracy(r, protocol), r["method"]) for r in group
                      if accuracy(r, protocol) is not None and scores.get(r["key"], {}).get(protocol) is not None]
            for method in sorted({m for *_, m in points}):
                xs = [100 * x for x, _, m in points if m == method]
                ys = [100 * y for _, y, m in points if m == method]
                ax.scatter(xs, ys, s=18, label=method)
            stats = rank_correlations(group, scores, protocol)
            ax.set_title(f"IPC {ipc}, {protocol}: " + (f"ρ {stats['rho']:.2f}, τ {stats['tau']:.2f} (n {stats['n']})"
                         if stats["n"] >= 3 else f"{stats['n']} sets scored so far"), fontsize=9)
            ax.set_xlabel(f"{label} (%)", fontsize=8)
            ax.set_ylabel("student validation accuracy (%)", fontsize=8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
