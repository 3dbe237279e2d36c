"""Calibration of a score against students: sets collected from benchmark results, rank correlations per
protocol, and the seed-to-seed ceiling."""
import math

import pytest

from core.evaluation.calibration import accuracy, ceiling, collect_sets, live_scores, rank_correlations


def cell(name, method, strength, accuracies, protocol="hard-dsa", split="val", draws=False, coverage=0.5):
    spec = {"distill": {"ipc": 10, "method": method, "sampler": {"guidance": {"strength": strength}}},
            "split": split, **({"draws": "per seed"} if draws else {})}
    return name, {"method": method, "ipc": 10, "spec": spec, "metrics": {"mode_coverage": coverage},
                  protocol: {"accuracies": accuracies, "config": {"seeds": list(range(len(accuracies)))}}}


def results(*cells):
    return {"cells": dict(cells)}


def test_sets_are_merged_across_protocols_and_test_cells_are_left_out():
    hard = results(cell("sweep/ipc10/a", "pgfm", 0.3, [0.70, 0.72]), cell("main/b", "pgfm", 0.9, [0.8], split="test"))
    soft = results(cell("sweep/ipc10/a", "pgfm", 0.3, [0.81], protocol="soft-online"))
    (record,) = collect_sets([hard, soft])
    assert record["name"] == "a" and record["accuracies"] == {"hard-dsa": {"0": 0.70, "1": 0.72},
                                                             "soft-online": {"0": 0.81}}
    assert accuracy(record, "hard-dsa") == pytest.approx(0.71) and accuracy(record, "soft") is None


def test_rank_correlations_and_the_ceiling_of_two_student_seeds():
    cells = [cell(f"sweep/ipc10/s{i}", "pgfm", s, [a, b], coverage=c) for i, (s, a, b, c) in
             enumerate([(0.1, 0.60, 0.61, 0.9), (0.2, 0.65, 0.73, 0.8), (0.3, 0.70, 0.72, 0.7), (0.4, 0.75, 0.74, 0.6)])]
    cells.append(cell("sweep/ipc10/random real", "random", 0.0, [0.99, 0.10], draws=True, coverage=0.5))
    records = collect_sets([results(*cells)])
    top, pairs = ceiling(records, "hard-dsa")
    assert pairs == 4 and top == pytest.approx(0.8)   # the random set's seeds are other draws: not in the ceiling
    perfect = {r["key"]: {"hard-dsa": accuracy(r, "hard-dsa")} for r in records}
    assert rank_correlations(records, perfect, "hard-dsa") == {"rho": pytest.approx(1), "tau": pytest.approx(1), "n": 5}
    coverage = rank_correlations(records, live_scores(records, "mode_coverage"), "hard-dsa")
    assert coverage["rho"] < 0 and rank_correlations(records, live_scores(records, "mode_coverage"), "hard-dsa",
                                                     sign=-1)["rho"] == -coverage["rho"]
    assert math.isnan(rank_correlations(records[:2], perfect, "hard-dsa")["rho"])   # too few sets to rank
