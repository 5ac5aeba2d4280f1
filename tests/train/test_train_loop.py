"""The training loop: resumes exactly, stops on NaN with the step named, selects by val."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compress.config.base import DataConfig, TrainConfig
from compress.data.module import DataModule
from compress.data.transfer import to_device
from compress.errors import CompressError, TrainingError
from compress.io import load_torch
from compress.models import ModelSpec, build_model
from compress.train.loop import fit, memory_format


def tiny_setup(root: Path):
    data = DataModule(DataConfig(root=root, download=False, image_size=16, batch_size=8), seed=0)
    torch.manual_seed(0)
    model = build_model(ModelSpec("mobilenet_v2", 10, 1, 0.25, "cifar"))
    return data, model


def train(root: Path, ckpt: Path, cfg: TrainConfig, crash_at: int | None = None):
    data, model = tiny_setup(root)
    calls = {"n": 0}

    def step_loss(net, _, x, y, rows):
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise KeyboardInterrupt
        logits = net(x)
        return logits, F.cross_entropy(logits, y)

    fit(model, step_loss, data, cfg, device=torch.device("cpu"), checkpoint=ckpt,
        fingerprint="fp", label="t", augment="standard")  # fmt: skip
    return model


def test_killed_then_resumed_training_ends_bit_identical(fake_fashion: Path, tmp_path: Path):
    cfg = TrainConfig(epochs=2, lr=0.05, checkpoint_every_steps=2)
    straight = train(fake_fashion, tmp_path / "a.pt", cfg)
    with pytest.raises(KeyboardInterrupt):
        train(fake_fashion, tmp_path / "b.pt", cfg, crash_at=10)  # mid second epoch (7/epoch)
    assert (tmp_path / "b.pt").exists()
    resumed = train(fake_fashion, tmp_path / "b.pt", cfg)
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_nan_loss_stops_naming_the_step(fake_fashion: Path, tmp_path: Path):
    data, model = tiny_setup(fake_fashion)

    def step_loss(net, _, x, y, rows):
        logits = net(x)
        return logits, logits.sum() * float("nan")

    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 0"):
        fit(model, step_loss, data, TrainConfig(epochs=1), device=torch.device("cpu"),
            checkpoint=tmp_path / "c.pt", fingerprint="fp", label="t", augment="none")  # fmt: skip


@pytest.mark.parametrize(("nan_at", "every"), [(3, 4), (6, None)])
def test_a_nan_read_a_step_late_names_its_step_and_no_checkpoint_holds_it(
    fake_fashion: Path, tmp_path: Path, nan_at: int, every: int | None
):
    """The stop policy reads a step's finite flag once the next step is queued. A NaN right
    before a mid-epoch checkpoint (step 3 of 0-6, saved after 4) or at an epoch's last step is
    still caught before the save, so the checkpoint on disk is the finite end of epoch 1."""
    data, model = tiny_setup(fake_fashion)
    calls = {"n": 0}

    def step_loss(net, _, x, y, rows):
        calls["n"] += 1
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        return logits, loss * float("nan") if calls["n"] == 7 + nan_at + 1 else loss

    cfg = TrainConfig(epochs=2, lr=0.05, checkpoint_every_steps=every)
    with pytest.raises(TrainingError, match=rf"loss became nan at epoch 2, step {nan_at}; last "):
        fit(model, step_loss, data, cfg, device=torch.device("cpu"), checkpoint=tmp_path / "n.pt",
            fingerprint="fp", label="t", augment="none")  # fmt: skip
    saved = load_torch(tmp_path / "n.pt")
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_nan_policy_skip_counts_batches(fake_fashion: Path, tmp_path: Path):
    data, model = tiny_setup(fake_fashion)

    def step_loss(net, _, x, y, rows):
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        return logits, loss * float("nan") if rows[0] % 2 == 0 else loss

    result = fit(model, step_loss, data, TrainConfig(epochs=1, nan_policy="skip"),
                 device=torch.device("cpu"), checkpoint=tmp_path / "d.pt", fingerprint="fp",
                 label="t", augment="none")  # fmt: skip
    assert result.skipped_batches > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_trains_on_cpu_and_checkpoints_the_scaler(fake_fashion: Path, tmp_path: Path):
    cfg = TrainConfig(epochs=1, lr=0.05, precision="bf16", channels_last=False)
    model = train(fake_fashion, tmp_path / "e.pt", cfg)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.features[0][0].weight.is_contiguous()  # channels_last: false is honoured
    assert "scaler" in load_torch(tmp_path / "e.pt")


def test_fp16_on_cpu_is_refused_before_any_stage_runs(tmp_path: Path):
    from compress.config.load import parse_pipeline
    from compress.runner import configure_torch
    from tests.conftest import tiny_pipeline

    raw = tiny_pipeline(device="cpu")
    raw["teacher"]["precision"] = "fp16"
    with pytest.raises(CompressError, match=r"teacher.precision: fp16 trains on a GPU only"):
        configure_torch(parse_pipeline(raw))


def test_clip_grad_norm_bounds_the_student_and_the_companion_separately(
    fake_fashion: Path, tmp_path: Path
):
    """One plain SGD step (no momentum, no decay) moves each group by at most lr * clip."""
    data, model = tiny_setup(fake_fashion)
    companion = torch.nn.Linear(10, 10)
    before = [p.detach().clone() for p in model.parameters()]
    before_companion = [p.detach().clone() for p in companion.parameters()]

    def step_loss(net, loss_net, x, y, rows):
        logits = net(x)
        return logits, 100.0 * (F.cross_entropy(logits, y) + loss_net(logits).square().mean())

    lr, clip = 0.5, 0.01
    cfg = TrainConfig(epochs=1, lr=lr, momentum=0.0, weight_decay=0.0, schedule="constant",
                      clip_grad_norm=clip, augment="none")  # fmt: skip
    data.train = data.train.head(8)  # one step
    fit(model, step_loss, data, cfg, device=torch.device("cpu"), checkpoint=tmp_path / "c.pt",
        fingerprint="fp", label="t", augment="none", companion=companion)  # fmt: skip

    def moved(old, new) -> float:
        return torch.sqrt(
            sum(((a - b.detach()) ** 2).sum() for a, b in zip(old, new, strict=True))
        ).item()

    assert moved(before, model.parameters()) == pytest.approx(lr * clip, rel=1e-3)
    assert moved(before_companion, companion.parameters()) == pytest.approx(lr * clip, rel=1e-3)


@pytest.mark.parametrize(("nan_policy", "reads_per_step"), [("stop", 0), ("skip", 1)])
def test_running_loss_and_accuracy_stay_on_the_device_until_read(
    fake_fashion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request,
    nan_policy: str, reads_per_step: int
):  # fmt: skip
    """No read of a device value per step (on a GPU each one drains its queue): the running
    sums stay there, and the stop policy reads each step's finite flag a step late, from host
    memory. Skipping a batch needs the answer before the step: one read. The epoch's loss and
    accuracy still come out as the per-step sums say."""
    import compress.train.loop as loop

    monkeypatch.setattr(loop, "STATS_EVERY_S", 1e9, raising=False)  # no read for the bar
    data, model = tiny_setup(fake_fashion)
    seen: list[tuple[float, int, int]] = []

    def step_loss(net, _, x, y, rows):
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        correct = int((logits.argmax(1) == y).sum())
        seen.append((float(loss), correct, len(y)))
        return logits, loss

    reads = request.getfixturevalue("host_reads")  # counts from here on
    cfg = TrainConfig(epochs=1, lr=0.05, nan_policy=nan_policy)
    result = fit(model, step_loss, data, cfg, device=torch.device("cpu"),
                 checkpoint=tmp_path / "e.pt", fingerprint="fp", label="t",
                 augment="none")  # fmt: skip
    assert reads["n"] == reads_per_step * len(seen)
    images = sum(n for *_, n in seen)
    record = result.history[-1]
    assert record["loss"] == pytest.approx(sum(v * n for v, _, n in seen) / images, rel=1e-12)
    assert record["train_top1"] == sum(c for _, c, _ in seen) / images


def test_batches_on_the_cpu_are_not_pinned_or_copied():
    """Pinning is for a GPU's copies; on the CPU the batch is used as it is."""
    x = torch.randn(4, 3)
    assert to_device(x, torch.device("cpu")) is x


def test_bf16_on_a_cpu_trains_contiguous_and_everything_else_as_configured():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory_format(TrainConfig(precision="bf16"), cpu) == torch.contiguous_format
    assert memory_format(TrainConfig(precision="bf16"), cuda) == torch.channels_last
    assert memory_format(TrainConfig(), cpu) == torch.channels_last
    assert memory_format(TrainConfig(channels_last=False), cuda) == torch.contiguous_format


def test_the_bf16_contiguous_note_prints_once_a_process(capsys: pytest.CaptureFixture):
    import compress.train.loop as loop

    loop._say_bf16_cpu_is_contiguous.cache_clear()
    for _ in range(3):  # e.g. the cells of a grid
        memory_format(TrainConfig(precision="bf16"), torch.device("cpu"))
    assert capsys.readouterr().out.count("trains in the contiguous format") == 1


def test_predict_copies_the_logits_back_once_a_split_not_once_a_batch(
    fake_fashion: Path, monkeypatch: pytest.MonkeyPatch
):
    """On a GPU each copy back waits for the queued work; logits are small enough to keep."""
    from compress.train.evaluate import predict

    _, model = tiny_setup(fake_fashion)
    data = DataModule(DataConfig(root=fake_fashion, download=False, image_size=16,
                                 eval_batch_size=6), seed=0)  # fmt: skip
    assert sum(1 for _ in data.eval_batches(data.test)) == 4
    copies = {"n": 0}
    cpu = torch.Tensor.cpu

    def counted_cpu(self: torch.Tensor, *args, **kwargs):
        copies["n"] += 1
        return cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counted_cpu)
    logits = predict(model, data, data.test, torch.device("cpu"))
    assert copies["n"] == 1
    assert logits.shape == (len(data.test), 10) and logits.device.type == "cpu"


def test_compile_computes_the_same_loss_and_checkpoints_plain_weights(
    fake_fashion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """train.compile: true compiles the training calls only: the same model computes the same
    first loss, and the checkpoint holds the model's own keys (no torch.compile wrapper prefix),
    so it resumes, evaluates and exports as an eager one."""
    compiled_modules = []
    real_compile = torch.compile
    spy = lambda m, **kw: compiled_modules.append(m) or real_compile(m, **kw)  # noqa: E731
    monkeypatch.setattr(torch, "compile", spy)
    runs = {}
    for compiled in (False, True):
        data, _ = tiny_setup(fake_fashion)
        torch.manual_seed(0)  # ResNet-18: no dropout, whose masks compiled code draws otherwise
        model = build_model(ModelSpec("resnet18", 10, 1, 1.0, "cifar"))
        losses: list[float] = []

        def step_loss(net, _, x, y, rows, losses=losses):
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            losses.append(float(loss))
            return logits, loss

        cfg = TrainConfig(epochs=1, steps=2, lr=0.01, compile=compiled)
        fit(model, step_loss, data, cfg, device=torch.device("cpu"),
            checkpoint=tmp_path / f"{compiled}.pt", fingerprint="fp", label="t",
            augment="none")  # fmt: skip
        runs[compiled] = losses, load_torch(tmp_path / f"{compiled}.pt")["model"]
        assert compiled_modules == ([model] if compiled else [])
    (eager_losses, eager_saved), (losses, saved) = runs[False], runs[True]
    assert list(saved) == list(eager_saved)
    # the first step starts from the same weights; fused kernels round differently
    assert losses[0] == pytest.approx(eager_losses[0], rel=1e-5)
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())


def test_compiled_bf16_training_on_a_cpu_keeps_depthwise_weight_gradients_finite():
    """Inductor makes convolutions channels_last on a CPU by itself, where torch's bf16
    depthwise weight gradients come back holding stale memory (non-finite 99 times in 100
    with plain torch.compile, torch 2.14.1). ``compiled`` keeps the contiguous format fit chose."""
    from benchmarks.bf16_depthwise_check import broken_gradients
    from compress.train.loop import compiled

    contiguous = torch.contiguous_format
    assert broken_gradients(contiguous, 10, lambda conv: compiled(conv, contiguous)) == 0
