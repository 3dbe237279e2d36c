import math

import pytest

from core.evaluation.ranking import robustness_scores


def test_scores_follow_the_dd_ranking_definitions():
    acc = {"hard": 0.80, "hard-dsa": 0.82, "soft-online": 0.86}
    random = {"hard": 0.76, "hard-dsa": 0.78, "soft-online": 0.80}
    s = robustness_scores(acc, random, whole_hard_accuracy=0.92)
    assert s["ior_hard"] == pytest.approx(0.04) and s["ior_soft-online"] == pytest.approx(0.06)
    assert s["hlr"] == pytest.approx(0.12)
    scale = lambda x: 100 * (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))  # noqa: E731
    assert s["lrs"] == pytest.approx(scale(0.5 * 0.06 - 0.5 * 0.12))
    assert s["ars"] == pytest.approx(scale(0.5 * 0.04 + 0.5 * 0.04))


def test_scores_span_0_to_100_and_random_real_scores_26_9():
    assert robustness_scores({"hard": 1.0, "hard-dsa": 1.0}, {"hard": 0.0, "hard-dsa": 0.0}, None)["ars"] == pytest.approx(100)
    assert robustness_scores({"hard": 0.0, "hard-dsa": 0.0}, {"hard": 1.0, "hard-dsa": 1.0}, None)["ars"] == pytest.approx(0)
    same = {"hard": 0.7, "hard-dsa": 0.7}
    assert robustness_scores(same, same, None)["ars"] == pytest.approx(26.894, abs=1e-3)


def test_missing_inputs_leave_scores_out():
    s = robustness_scores({"hard": 0.8}, {"hard-dsa": 0.7}, None)
    assert s == {}
    s = robustness_scores({"hard": 0.8, "soft-online": 0.9}, {"hard": 0.7, "soft-online": 0.8}, None)
    assert "hlr" not in s and "lrs" not in s and "ars" not in s and s["ior_hard"] == pytest.approx(0.1)
