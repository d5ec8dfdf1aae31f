"""Tests for metrics.py.

Run: .venv/bin/python -m pytest tests/test_metrics.py -q

Oracles: counts worked out by hand below; sklearn.metrics.f1_score (macro, zero_division=0) when
scikit-learn is installed.
"""
import pytest

import metrics

GOLD = ["a", "a", "b", "b", "c", "c"]
PRED = ["a", "b", "b", "b", None, "a"]


def test_accuracy_f1_and_confusion_by_hand():
    assert metrics.accuracy(PRED, GOLD) == 3 / 6
    # a: TP 1, FP 1, FN 1 -> F1 1/2; b: TP 2, FP 1, FN 0 -> 4/5; c: TP 0 -> 0
    assert metrics.f1_per_label(PRED, GOLD, ["a", "b", "c"]) == {"a": 0.5, "b": 0.8, "c": 0.0}
    assert metrics.macro_f1(PRED, GOLD, ["a", "b", "c"]) == pytest.approx(1.3 / 3)
    assert metrics.confusion_matrix(PRED, GOLD, ["a", "b", "c"]) == [[1, 1, 0, 0], [0, 2, 0, 0],
                                                                     [1, 0, 0, 1]]
    report = metrics.classification_report(PRED, GOLD, ["a", "b", "c"])
    assert report["unparsed"] == 1 and report["n"] == 6


def test_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    expected = sklearn_metrics.f1_score(GOLD, [p or "none" for p in PRED], labels=["a", "b", "c"],
                                        average="macro", zero_division=0)
    assert metrics.macro_f1(PRED, GOLD, ["a", "b", "c"]) == pytest.approx(expected)


def test_lengths_must_match_and_confusion_figure(tmp_path):
    with pytest.raises(ValueError, match="predictions"):
        metrics.accuracy(["a"], ["a", "b"])
    matrix = metrics.confusion_matrix(PRED, GOLD, ["a", "b", "c"])
    metrics.plot_confusion(matrix, ["a", "b", "c"], tmp_path / "c.png", "toy")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
