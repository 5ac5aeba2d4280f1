"""Distillation losses against hand computations of their papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.distill import METHODS, load_methods

load_methods()


def softmax(z: np.ndarray, t: float) -> np.ndarray:
    e = np.exp((z - z.max(1, keepdims=True)) / t)
    return e / e.sum(1, keepdims=True)


def hand_kd(student, teacher, labels, t, alpha) -> float:
    """alpha * CE + (1 - alpha) * T^2 * KL(p_t || p_s), written out with numpy."""
    s, te = student.astype(np.float64), teacher.astype(np.float64)
    p_hard = softmax(s, 1.0)
    ce = -np.mean(np.log(p_hard[np.arange(len(labels)), labels]))
    p_t, p_s = softmax(te, t), softmax(s, t)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    return alpha * ce + (1 - alpha) * t * t * kl


@pytest.mark.parametrize(("t", "alpha"), [(1.0, 0.5), (4.0, 0.1), (8.0, 0.9), (2.5, 0.0)])
def test_kd_matches_hand_computation(t, alpha):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 10, generator=gen) * 3
    teacher = torch.randn(6, 10, generator=gen) * 3
    labels = torch.randint(0, 10, (6,), generator=gen)
    spec = METHODS.get("kd")
    loss = spec.build(spec.params(temperature=t, alpha=alpha))(student, teacher, labels)
    expected = hand_kd(student.numpy(), teacher.numpy(), labels.numpy(), t, alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_kd_soft_part_is_zero_when_student_equals_teacher():
    logits = torch.randn(4, 7)
    spec = METHODS.get("kd")
    loss = spec.build(spec.params(temperature=3.0, alpha=0.0))(
        logits, logits.clone(), torch.zeros(4).long()
    )
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_kd_is_forward_kl_teacher_to_student():
    """KL(p_t || p_s) differs from KL(p_s || p_t); the loss must equal the former."""
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 3.0, 0.5]])
    spec = METHODS.get("kd")
    loss = spec.build(spec.params(temperature=1.0, alpha=0.0))(student, teacher, torch.tensor([0]))
    p_t, p_s = softmax(teacher.numpy(), 1), softmax(student.numpy(), 1)
    forward = float(np.sum(p_t * np.log(p_t / p_s)))
    reverse = float(np.sum(p_s * np.log(p_s / p_t)))
    assert loss.item() == pytest.approx(forward, rel=1e-5)
    assert not math.isclose(forward, reverse, rel_tol=1e-2)


def test_kd_gradient_scale_is_comparable_across_temperatures():
    """With the T^2 factor, soft-target gradient norms stay within the same order of magnitude."""
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(32, 10, generator=gen) * 4
    norms = []
    spec = METHODS.get("kd")
    for t in (2.0, 4.0, 8.0, 16.0):
        student = (torch.randn(32, 10, generator=gen) * 4).requires_grad_()
        spec.build(spec.params(temperature=t, alpha=0.0))(
            student, teacher, torch.zeros(32).long()
        ).backward()
        norms.append(student.grad.norm().item())
    assert max(norms) / min(norms) < 4.0


def test_baseline_is_cross_entropy_and_ignores_the_teacher():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    spec = METHODS.get("baseline")
    loss = spec.build(spec.params())(logits, None, labels)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert not spec.uses_teacher


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_gives_a_finite_loss_with_gradients(name):
    spec = METHODS.get(name)
    student = torch.randn(8, 10, requires_grad=True)
    teacher = torch.randn(8, 10)
    loss = spec.build(spec.params())(student, teacher, torch.randint(0, 10, (8,)))
    loss.backward()
    assert torch.isfinite(loss) and student.grad is not None and student.grad.abs().sum() > 0
