"""What an artifact's logits say about it: top-1/top-5, calibration, per-class accuracy, agreement.

Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"): split
the test images into ``bins`` equal-width bins of confidence (the top softmax probability; bin
``i`` holds confidences in (i/bins, (i+1)/bins]), then ``ECE = sum_b (n_b / N) * |acc_b - conf_b|``
with ``acc_b`` the accuracy and ``conf_b`` the mean confidence in bin ``b``. 0 is perfectly
calibrated; reported as a fraction like top-1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from compress.train.evaluate import accuracy

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """top1, top5, ece (fractions) and per_class_top1 keyed by class name."""
    labels = np.asarray(labels)
    metrics: dict[str, Any] = accuracy(torch.from_numpy(logits), torch.from_numpy(labels))
    metrics["ece"] = round(expected_calibration_error(softmax(logits), labels), 6)
    predicted = logits.argmax(axis=1)
    metrics["per_class_top1"] = {
        name: round(float((predicted[labels == c] == c).mean()), 6) if (labels == c).any() else None
        for c, name in enumerate(classes)
    }
    return metrics


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of images on which two models predict the same class."""
    return float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean())
