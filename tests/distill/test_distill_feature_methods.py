"""Feature and decoupled methods against independent numpy computations of their papers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.distill import METHODS, load_methods
from compress.distill.base import Features, FeatureShapes, LayerPair
from compress.distill.config import DistillSettings
from compress.distill.features import FeatureTaps, probe_shapes
from compress.distill.methods.dkd import dkd_parts
from compress.distill.methods.kd import kd_divergence
from compress.errors import ConfigError
from compress.models import ModelSpec, build_model

load_methods()
GEN = torch.Generator().manual_seed(0)
LOGITS_S = torch.randn(6, 5, generator=GEN) * 2
LOGITS_T = torch.randn(6, 5, generator=GEN) * 2
LABELS = torch.tensor([0, 1, 2, 3, 4, 0])


def np_softmax(z, t=1.0):
    e = np.exp((z - z.max(1, keepdims=True)) / t)
    return e / e.sum(1, keepdims=True)


def np_ce(z, y):
    return -np.mean(np.log(np_softmax(z)[np.arange(len(y)), y]))


def huber(a, b):
    d = np.abs(a - b)
    return np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5))


def test_dkd_matches_hand_computation_and_the_papers_identity():
    t = 4.0
    s, te, y = LOGITS_S.double().numpy(), LOGITS_T.double().numpy(), LABELS.numpy()
    p_s, p_t = np_softmax(s, t), np_softmax(te, t)
    idx = np.arange(len(y))
    b_s = np.stack([p_s[idx, y], 1 - p_s[idx, y]], 1)
    b_t = np.stack([p_t[idx, y], 1 - p_t[idx, y]], 1)
    tckd = np.mean(np.sum(b_t * np.log(b_t / b_s), 1)) * t * t
    mask = np.eye(5, dtype=bool)[y]
    q_s = np.where(mask, 0, p_s) / (1 - p_s[idx, y])[:, None]
    q_t = np.where(mask, 0, p_t) / (1 - p_t[idx, y])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        nckd_terms = np.where(mask, 0, q_t * np.log(q_t / q_s))
    nckd = np.mean(nckd_terms.sum(1)) * t * t
    got_t, got_n = dkd_parts(LOGITS_S.double(), LOGITS_T.double(), LABELS, t)
    assert got_t.item() == pytest.approx(tckd, rel=1e-6)
    assert got_n.item() == pytest.approx(nckd, rel=1e-6)
    # Zhao et al. eq. (5): KD = TCKD + (1 - p_t^target) * NCKD, per sample
    for i in range(len(y)):
        kd = kd_divergence(LOGITS_S[i : i + 1].double(), LOGITS_T[i : i + 1].double(), t).item()
        tc, nc = dkd_parts(
            LOGITS_S[i : i + 1].double(), LOGITS_T[i : i + 1].double(), LABELS[i : i + 1], t
        )
        assert kd == pytest.approx(tc.item() + (1 - p_t[i, y[i]]) * nc.item(), rel=1e-6)
    spec = METHODS.get("dkd")
    loss = spec.build(spec.params(alpha=1.0, beta=8.0, temperature=t))(
        LOGITS_S.double(), LOGITS_T.double(), LABELS
    )
    assert loss.item() == pytest.approx(np_ce(s, y) + tckd + 8 * nckd, rel=1e-6)


def test_attention_matches_hand_computation():
    fs = torch.randn(4, 6, 4, 4, generator=GEN)
    ft = torch.randn(4, 12, 2, 2, generator=GEN)
    params = METHODS.get("attention").params(
        pairs=[LayerPair(student="s", teacher="t")], beta=1000.0
    )
    loss = METHODS.get("attention").build(params)(
        LOGITS_S[:4], None, LABELS[:4], Features({"s": fs}, {"t": ft})
    )
    a_s = (fs.numpy() ** 2).mean(1)
    a_s = a_s.reshape(4, 2, 2, 2, 2).mean((2, 4))  # 4x4 -> 2x2 average pooling
    a_t = (ft.numpy() ** 2).mean(1)
    q_s = a_s.reshape(4, -1) / np.linalg.norm(a_s.reshape(4, -1), axis=1, keepdims=True)
    q_t = a_t.reshape(4, -1) / np.linalg.norm(a_t.reshape(4, -1), axis=1, keepdims=True)
    expected = np_ce(LOGITS_S[:4].numpy(), LABELS[:4].numpy()) + 500 * np.mean((q_s - q_t) ** 2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_rkd_matches_hand_computation():
    es = torch.randn(5, 7, generator=GEN).double()
    et = torch.randn(5, 3, generator=GEN).double()
    params = METHODS.get("rkd").params(pair=LayerPair(student="s", teacher="t"), ce_weight=0.0)
    loss = METHODS.get("rkd").build(params)(
        LOGITS_S[:5], None, LABELS[:5], Features({"s": es}, {"t": et})
    )

    def dist(e):
        d = np.linalg.norm(e[:, None] - e[None], axis=2)
        return d / d[~np.eye(len(e), dtype=bool)].mean()

    def angle(e):
        out = []
        for j in range(len(e)):
            for i in range(len(e)):
                for k in range(len(e)):
                    a, b = e[i] - e[j], e[k] - e[j]
                    na, nb = np.linalg.norm(a), np.linalg.norm(b)
                    out.append(0.0 if na == 0 or nb == 0 else a @ b / (na * nb))
        return np.array(out)

    s, t = es.numpy(), et.numpy()
    expected = 25 * huber(dist(s), dist(t)) + 50 * huber(angle(s), angle(t))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_rkd_angle_in_float32_matches_the_explicit_form_and_survives_duplicates():
    """The Gram form cancels large terms: on ReLU-like embeddings far from the origin its
    values and loss gradients must match the explicit difference form computed in float64,
    and a duplicated embedding (no direction) must give 0, not the explicit form's 1/eps."""
    from compress.distill.methods.rkd import angle_potential

    def explicit(x):
        diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    generator = torch.Generator().manual_seed(0)
    student = torch.rand(48, 640, generator=generator) * 0.5 + 3.0
    teacher = torch.rand(48, 256, generator=generator)
    fast_input = student.clone().requires_grad_(True)
    reference_input = student.double().requires_grad_(True)
    fast = angle_potential(fast_input)
    reference = explicit(reference_input)
    F.smooth_l1_loss(fast, angle_potential(teacher)).backward()
    F.smooth_l1_loss(reference, explicit(teacher.double())).backward()

    assert torch.allclose(fast.double(), reference, atol=2e-4)
    gradient_error = (fast_input.grad.double() - reference_input.grad).norm()
    assert gradient_error <= 1e-4 * reference_input.grad.norm()

    student[7] = student[3]
    duplicated = student.clone().requires_grad_(True)
    angles = angle_potential(duplicated)
    F.smooth_l1_loss(angles, angle_potential(teacher)).backward()
    assert angles.view(48, 48, 48)[3, 7].abs().max() == 0  # e_7 - e_3 = 0: no direction
    assert torch.isfinite(duplicated.grad).all()
    assert duplicated.grad.abs().max() < 1.0


def test_fitnets_with_identity_regressor_is_pooled_mse():
    fs = torch.randn(3, 4, 4, 4, generator=GEN)
    ft = torch.randn(3, 4, 2, 2, generator=GEN)
    params = METHODS.get("fitnets").params(
        pairs=[LayerPair(student="s", teacher="t")], hint_weight=2.0, ce_weight=0.0
    )
    loss_fn = (
        METHODS.get("fitnets")
        .build(params, FeatureShapes({"s": (4, 4, 4)}, {"t": (4, 2, 2)}))
        .eval()
    )
    with torch.no_grad():
        loss_fn.regressors[0][0].weight.copy_(torch.eye(4).view(4, 4, 1, 1))
    loss = loss_fn(LOGITS_S[:3], None, LABELS[:3], Features({"s": fs}, {"t": ft}))
    pooled = fs.numpy().reshape(3, 4, 2, 2, 2, 2).mean((3, 5))
    bn = 1 / np.sqrt(1 + 1e-5)  # eval-mode BN with fresh running stats
    assert loss.item() == pytest.approx(2.0 * np.mean((pooled * bn - ft.numpy()) ** 2), rel=1e-5)


def test_contrastive_with_identity_heads_is_infonce():
    es = torch.randn(4, 3, generator=GEN)
    et = torch.randn(4, 3, generator=GEN)
    params = METHODS.get("contrastive").params(
        pair=LayerPair(student="s", teacher="t"), dim=3, tau=0.5, ce_weight=0.0, nce_weight=1.0
    )
    loss_fn = METHODS.get("contrastive").build(params, FeatureShapes({"s": (3,)}, {"t": (3,)}))
    with torch.no_grad():
        for head in (loss_fn.student_head, loss_fn.teacher_head):
            head.weight.copy_(torch.eye(3))
            head.bias.zero_()
    loss = loss_fn(LOGITS_S[:4], None, LABELS[:4], Features({"s": es}, {"t": et}))
    zs = es.numpy() / np.linalg.norm(es.numpy(), axis=1, keepdims=True)
    zt = et.numpy() / np.linalg.norm(et.numpy(), axis=1, keepdims=True)
    logits = zs @ zt.T / 0.5
    expected = np.mean(-np.log(np_softmax(logits)[np.arange(4), np.arange(4)]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mix_is_a_weighted_sum_and_keeps_one_cross_entropy():
    parts = [{"name": "kd", "alpha": 0.5}, {"name": "dkd", "ce_weight": 0.0, "weight": 0.25}]
    settings = DistillSettings(method={"name": "mix", "parts": parts})
    from compress.distill.train import build_loss

    loss = build_loss(settings, FeatureShapes())(LOGITS_S, LOGITS_T, LABELS, Features())
    kd = METHODS.get("kd").build(settings.methods()[0])(LOGITS_S, LOGITS_T, LABELS)
    dkd = METHODS.get("dkd").build(settings.methods()[1])(LOGITS_S, LOGITS_T, LABELS)
    assert loss.item() == pytest.approx(kd.item() + 0.25 * dkd.item(), rel=1e-6)
    with pytest.raises(ValueError, match="only one part of a mix may keep the hard-label loss"):
        DistillSettings(method={"name": "mix", "parts": [{"name": "kd"}, {"name": "fitnets"}]})


def test_taps_capture_by_module_path_and_bad_names_suggest():
    model = build_model(ModelSpec("mobilenet_v2", 10, 1, 0.25, "cifar"))
    shapes = probe_shapes(
        model, ["features.13", "features"], torch.randn(2, 1, 16, 16), "the student"
    )
    assert shapes["features.13"][1:] == (2, 2) and len(shapes["features"]) == 3
    with pytest.raises(ConfigError, match=r"no layer 'features\.133'.*did you mean 'features\.13'"):
        FeatureTaps(model, ["features.133"], "the student")
    taps = FeatureTaps(nn.Sequential(nn.Linear(2, 3)), ["0"], "m")
    assert taps.outputs == {}


def test_dkd_warmup_ramps_the_kd_terms_linearly():
    spec = METHODS.get("dkd")
    loss_fn = spec.build(spec.params(warmup_steps=4, ce_weight=0.0))
    full = spec.build(spec.params(ce_weight=0.0))(LOGITS_S, LOGITS_T, LABELS).item()
    ramp = [loss_fn(LOGITS_S, LOGITS_T, LABELS).item() / full for _ in range(6)]
    assert ramp == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("name", ["kd", "kd-cosine", "dkd", "mutual", "self"])
def test_methods_with_step_counters_read_nothing_off_the_device_per_step(name, request):
    """Their step counters stay on the device (a read per step would wait for the GPU): kd's
    temperature schedule, dkd's and mutual's ramps and self's EMA decay are computed there."""
    spec = METHODS.get(name.removesuffix("-cosine"))
    params = {"dkd": {"warmup_steps": 4}, "mutual": {"warmup": 0.5},
              "kd-cosine": {"temperature_schedule": "cosine", "final_temperature": 1.0},
              }.get(name, {})  # fmt: skip
    student = nn.Linear(4, LOGITS_S.shape[1])
    loss_fn = spec.build(spec.params(**params), None, student)
    loss_fn.plan(8)
    inputs = torch.randn(len(LABELS), 4)
    reads = request.getfixturevalue("host_reads")  # counts from here on
    for _ in range(3):
        loss_fn(student(inputs), LOGITS_T, LABELS, Features(inputs=inputs))
    assert reads["n"] == 0


TAPPED = {"student": "features.3", "teacher": "features.5"}
EVERY_METHOD = {
    "baseline": {}, "kd": {}, "dkd": {}, "mutual": {}, "self": {},
    "fitnets": {"pairs": [TAPPED]}, "attention": {"pairs": [TAPPED]},
    "rkd": {"pair": TAPPED}, "contrastive": {"pair": TAPPED},
    "mix": {"parts": [{"name": "kd"}, {"name": "fitnets", "pairs": [TAPPED], "ce_weight": 0.0}]},
}  # fmt: skip


def test_every_method_is_in_the_host_read_check():
    assert sorted(EVERY_METHOD) == METHODS.names(), "add the new method to EVERY_METHOD"


@pytest.mark.parametrize("name", sorted(EVERY_METHOD))
def test_a_distill_stage_reads_nothing_off_the_device_per_step(name, fake_fashion, tmp_path,
                                                                request):  # fmt: skip
    """The whole distillation step, not just the loss, whatever the method, with its teacher
    outputs cached as the quickstart runs it: no read of a device value (the finite-loss flag
    is read a step late, from host memory)."""
    from compress.config.base import TrainConfig
    from tests.distill.tiny_run import distil, save_teacher

    save_teacher(fake_fashion)
    train = TrainConfig(epochs=1, steps=6, lr=0.01, augment="none")
    reads = request.getfixturevalue("host_reads")  # counts from here on
    distil(fake_fashion, tmp_path, {"name": name, **EVERY_METHOD[name]}, train)
    assert reads["n"] == 0
