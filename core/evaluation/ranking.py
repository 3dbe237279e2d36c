"""DD-Ranking robustness scores of a distilled set (DESIGN.md section 4b).

Accuracies are fractions in [0, 1], all at the same IPC with the same student:
- IOR(p) = acc(set, p) - acc(random real, p): improvement over random real under protocol p;
- HLR = acc(whole training set, hard) - acc(set, hard): hard-label recovery (lower is better);
- LRS = 100 (e^a - e^-1) / (e - e^-1), a = IOR(p_own)/2 - HLR/2: label-robust score;
- ARS = 100 (e^b - e^-1) / (e - e^-1), b = IOR(hard-dsa)/2 + IOR(hard)/2: augmentation-robust score.
a and b lie in [-1, 1], so both scores lie in [0, 100]. a = 0 or b = 0 scores 26.9: for ARS that is a set no
better than random real under either protocol; for LRS a set whose gain over random real equals its HLR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# The protocol a method's LRS uses as its own. DESIGN.md 4b: the one the method is reported under; every
# method of this project is a generative or relabelled set reported with soft-online, so one constant serves.
OWN_PROTOCOL = "soft-online"


def _scaled(x: float) -> float:
    return 100.0 * (math.exp(x) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def robustness_scores(accuracy: dict[str, float], random_accuracy: dict[str, float],
                      whole_hard_accuracy: float | None, own_protocol: str = OWN_PROTOCOL) -> dict[str, float]:
    """IOR per protocol present in both ``accuracy`` and ``random_accuracy`` (keys ``ior_<protocol>``),
    ``hlr`` (needs ``whole_hard_accuracy`` and a hard accuracy), ``lrs`` and ``ars`` where their inputs
    exist. Missing inputs leave the score out rather than guessing it."""
    scores = {f"ior_{p}": accuracy[p] - random_accuracy[p] for p in accuracy if p in random_accuracy}
    if whole_hard_accuracy is not None and "hard" in accuracy:
        scores["hlr"] = whole_hard_accuracy - accuracy["hard"]
    if f"ior_{own_protocol}" in scores and "hlr" in scores:
        scores["lrs"] = _scaled(0.5 * scores[f"ior_{own_protocol}"] - 0.5 * scores["hlr"])
    if "ior_hard-dsa" in scores and "ior_hard" in scores:
        scores["ars"] = _scaled(0.5 * scores["ior_hard-dsa"] + 0.5 * scores["ior_hard"])
    return scores


@dataclass(frozen=True)
class RankingBaseline:
    """The references of IOR and HLR from a benchmark's results.json: random-real accuracy per IPC and
    protocol (ConvNet-3, ``epochs``) and the whole-data ``hard`` accuracy. A set evaluated with the same
    student and epochs gets its scores from ``scores``."""

    epochs: int
    random: dict[int, dict[str, float]]
    whole_hard: float | None

    @classmethod
    def from_results(cls, results: dict) -> "RankingBaseline | None":
        """None when the results hold no random-real cell (nothing to compare with)."""
        cells = results.get("cells", {})
        random = {c["ipc"]: {p: v["accuracy_mean"] for p, v in c.items() if isinstance(v, dict) and "accuracy_mean" in v}
                  for k, c in cells.items() if k.startswith("main/random/ipc")}
        if not random:
            return None
        whole = cells.get("whole/convnet", {}).get("hard")
        epochs = results.get("meta", {}).get("config", {}).get("epochs", 300)
        return cls(int(epochs), random, None if whole is None else whole["accuracy_mean"])

    def scores(self, ipc: int, accuracy: dict[str, float]) -> dict[str, float]:
        return robustness_scores(accuracy, self.random.get(ipc, {}), self.whole_hard)


def load_baseline(results_file: str | Path) -> RankingBaseline | None:
    """``RankingBaseline`` of a results.json; None when the file is missing (a benchmark not run yet)."""
    from core.reads import read_json

    path = Path(results_file)
    return RankingBaseline.from_results(read_json(path)) if path.is_file() else None
