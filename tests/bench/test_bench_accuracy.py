"""Accuracy figures of logits whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from compress.bench.accuracy import (
    agreement,
    classification_metrics,
    expected_calibration_error,
)


def test_ece_on_a_known_case():
    # 4 images at confidence 0.9 (3 right: acc 0.75) and 4 at 0.6 (all right: acc 1.0):
    # ECE = 0.5 * |0.75 - 0.9| + 0.5 * |1.0 - 0.6| = 0.075 + 0.2 = 0.275
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(0.275)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.5, 0.5]] * 4)  # argmax is class 0 for all; half of them are class 0
    assert expected_calibration_error(probs, np.array([0, 1, 0, 1])) == pytest.approx(0.0)


def test_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    # 1/15 exactly belongs to bin 0 (0, 1/15]; a wrong bin would still give the same ECE for a
    # single image, so use two images in different bins with different accuracies
    probs = np.array([[1 / 15, 14 / 15], [0.99, 0.01]])
    ece = expected_calibration_error(probs, np.array([1, 0]), bins=15)
    assert ece == pytest.approx(0.5 * abs(1 - 14 / 15) + 0.5 * abs(1 - 0.99))


def test_classification_metrics_per_class_and_top5():
    logits = np.array([[3.0, 1, 0], [0, 2.0, 1], [0, 2.0, 1], [1, 0, 3.0]])
    labels = np.array([0, 1, 2, 2])
    metrics = classification_metrics(logits, labels, ["a", "b", "c"])
    assert metrics["top1"] == pytest.approx(0.75) and metrics["top5"] == 1.0
    assert metrics["per_class_top1"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert 0.0 <= metrics["ece"] <= 1.0


def test_agreement_counts_equal_predictions():
    a = np.array([[1.0, 0], [0, 1.0], [1.0, 0]])
    b = np.array([[2.0, 0], [2.0, 0], [2.0, 0]])
    assert agreement(a, b) == pytest.approx(2 / 3)
