"""Defects found by review of the methods (issue 15): each test failed before its fix."""

from __future__ import annotations

import pytest
import torch

from compress.distill.base import METHODS
from compress.distill.methods.dkd import dkd_parts
from compress.distill.methods.mutual import MutualLoss, buildable
from compress.models.checkpoint import ModelSpec, build_model


def spec(arch: str) -> ModelSpec:
    return ModelSpec(arch=arch, num_classes=10, in_channels=1, width_mult=1.0, stem="compact")


def test_mutual_peers_get_the_architectures_own_init_and_their_own_seed():
    torch.manual_seed(0)
    student = buildable(build_model(spec("mobilenet_v2")), spec("mobilenet_v2"))
    loss = MutualLoss(METHODS.get("mutual").params(peers=2), None, student)
    stem = [m.features[0][0].weight for m in (student, *loss.peers)]
    stds = [float(w.detach().std()) for w in stem]
    assert stds[1] == pytest.approx(stds[0], rel=0.15)  # kaiming fan_out, not the default init
    assert stds[2] == pytest.approx(stds[0], rel=0.15)
    assert not torch.equal(stem[0], stem[1]) and not torch.equal(stem[1], stem[2])

    torch.manual_seed(0)
    resnet = buildable(build_model(spec("resnet18")), spec("resnet18"))
    peer = MutualLoss(METHODS.get("mutual").params(), None, resnet).peers[0]
    assert float(peer.layer1[0].bn2.weight.abs().sum()) == 0.0  # zero-init residual kept


def test_dkd_takes_half_precision_logits():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 10, generator=gen), torch.randn(4, 10, generator=gen)
    labels = torch.tensor([0, 3, 9, 3])
    want = dkd_parts(student, teacher, labels, 4.0)
    got = dkd_parts(student.half(), teacher.half(), labels, 4.0)
    assert got[0].dtype == torch.float32
    assert [float(g) for g in got] == pytest.approx([float(w) for w in want], rel=1e-2)


def test_dkd_warms_up_over_a_twelfth_of_the_run_by_default():
    loss = METHODS.get("dkd").build(METHODS.get("dkd").params(ce_weight=0.0))
    loss.plan(120)  # the paper: 20 of 240 epochs
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    labels = torch.tensor([0, 1, 2, 3])
    first = float(loss(student, teacher, labels))
    for _ in range(20):
        loss(student, teacher, labels)
    assert first == pytest.approx(float(loss(student, teacher, labels)) / 10, rel=1e-4)
    off = METHODS.get("dkd").build(METHODS.get("dkd").params(ce_weight=0.0, warmup_steps=0))
    off.plan(120)
    assert float(off(student, teacher, labels)) == pytest.approx(10 * first, rel=1e-4)


def test_fitnets_default_hint_weight_has_the_reference_scale():
    """mean-MSE hints weighted 100, as RepDistiller and mdistiller (was 1.0: ~100x weaker)."""
    from compress.distill.base import Features, FeatureShapes

    spec_ = METHODS.get("fitnets")
    params = spec_.params(pairs=[{"student": "s", "teacher": "t"}], ce_weight=0.0)
    loss = spec_.build(params, FeatureShapes({"s": (4, 2, 2)}, {"t": (4, 2, 2)}))
    f_s, f_t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    features = Features({"s": f_s}, {"t": f_t}, torch.zeros(3, 1, 2, 2))
    logits = torch.zeros(3, 10)
    got = float(loss(logits, logits, torch.zeros(3, dtype=torch.long), features))
    assert got == pytest.approx(100.0 * float(loss.hint(features)), rel=1e-6)
    assert params.hint_weight == 100.0
