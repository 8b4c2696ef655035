"""The statistics of benchmarks/confidence_eval.py, on numbers whose answers are known."""

import importlib.util

import numpy as np
import pytest

from _app_helpers import REPO

spec = importlib.util.spec_from_file_location("confidence_eval", REPO / "benchmarks" / "confidence_eval.py")
confidence_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(confidence_eval)


def test_auroc():
    positives = np.array([1, 1, 0, 0], bool)
    assert confidence_eval.auroc(np.array([0.9, 0.8, 0.2, 0.1]), positives) == 1.0
    assert confidence_eval.auroc(np.array([0.1, 0.2, 0.8, 0.9]), positives) == 0.0
    assert confidence_eval.auroc(np.array([0.5, 0.5, 0.5, 0.5]), positives) == 0.5
    assert confidence_eval.auroc(np.array([0.9, 0.3, 0.5, 0.1]), positives) == 0.75
    assert np.isnan(confidence_eval.auroc(np.array([0.1, 0.2]), np.array([0, 0], bool)))


def test_threshold_table_and_jaccard():
    confidence = np.array([0.95, 0.9, 0.5, 0.2])
    jaccards = np.array([0.9, 0.5, 0.8, 0.3])  # two failures: confidence 0.9 and 0.2
    row = next(r for r in confidence_eval.threshold_table(confidence, jaccards) if r["threshold"] == 0.6)
    assert row["review_share"] == 0.5 and row["failures_caught"] == 0.5
    assert row["accepted_mean_jaccard"] == pytest.approx(0.7)
    a = np.zeros((4, 4), np.uint8)
    a[:2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[1:3] = 1
    assert confidence_eval.jaccard(a, b) == pytest.approx(1 / 3)
    assert confidence_eval.jaccard(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
