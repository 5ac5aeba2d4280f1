"""The CUDA paths: a training step, bf16 autocast, the cuda bench device, torch.compile.

Marked ``gpu`` and skipped without a CUDA device; ``pytest -m gpu`` on a GPU machine (see
benchmarks/gpu_check.py) runs them. Tiny models on 16 px inputs, a step or a few calls each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.bench.backends import BackendOptions, load_runner
from compress.bench.timing import TimingPlan
from compress.config.base import DataConfig
from compress.data.module import DataModule
from compress.data.transfer import to_device
from compress.models import ModelSpec, build_model, load_model, save_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SPEC = ModelSpec(arch="mobilenet_v2", num_classes=10, in_channels=1, width_mult=0.25, stem="cifar")
PLAN = TimingPlan(warmup_iterations=2, warmup_seconds=0.0, min_iterations=5, min_seconds=0.0)


def _step(precision: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(logits, loss, largest weight change) of one SGD step on cuda."""
    torch.manual_seed(0)
    model = build_model(SPEC).cuda().to(memory_format=torch.channels_last).train()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 1, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device="cuda")
    with torch.autocast("cuda", precision or torch.float32, enabled=precision is not None):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    opt.step()
    moved = max((p - b).abs().max().item() for p, b in zip(model.parameters(), before, strict=True))
    return logits, loss, moved


def test_a_training_step_on_cuda_updates_the_weights():
    logits, loss, moved = _step(None)
    assert logits.device.type == "cuda" and logits.dtype == torch.float32
    assert torch.isfinite(loss) and moved > 0


def test_bf16_autocast_runs_the_forward_in_bf16_and_trains():
    logits, loss, moved = _step(torch.bfloat16)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(loss) and moved > 0


@pytest.mark.parametrize("nan_step", [None, 3])
def test_fit_on_cuda_trains_and_stops_at_a_nan_step_read_a_step_late(
    fake_fashion: Path, tmp_path: Path, nan_step: int | None
):
    """fit's stop policy on a GPU: the finite flag goes to pinned memory behind the step and is
    read after the next one is queued; a NaN is still reported at its own step."""
    from compress.config.base import DataConfig, TrainConfig
    from compress.data.module import DataModule
    from compress.errors import TrainingError
    from compress.train.loop import fit

    data = DataModule(DataConfig(root=fake_fashion, download=False, image_size=16, batch_size=8),
                      seed=0)  # fmt: skip
    model = build_model(SPEC)
    calls = {"n": 0}

    def step_loss(net, _, x, y, rows):
        calls["n"] += 1
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        return logits, loss * float("nan") if calls["n"] == (nan_step or -1) + 1 else loss

    cfg = TrainConfig(epochs=2, lr=0.05, precision="bf16")
    train = lambda: fit(model, step_loss, data, cfg, device=torch.device("cuda"),  # noqa: E731
                        checkpoint=tmp_path / "c.pt", fingerprint="fp", label="t",
                        augment="standard")  # fmt: skip
    if nan_step is None:
        result = train()
        assert len(result.history) == 2 and result.history[-1]["images_per_s"] > 0
        assert all(p.is_cuda and torch.isfinite(p).all() for p in model.parameters())
    else:
        with pytest.raises(TrainingError, match=f"loss became nan at epoch 1, step {nan_step}"):
            train()


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    save_model(build_model(SPEC).eval(), SPEC, path, {"role": "student", "metrics": {}})
    return path


@pytest.mark.parametrize("backend", ["torch", "torch-compile", "torch-cudagraph"])
def test_cuda_bench_device_times_with_cuda_events_and_predicts_like_cpu(backend, model_file):
    batch = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    cuda = load_runner(backend, model_file, BackendOptions(device="cuda"))
    cpu = load_runner("torch", model_file, BackendOptions(device="cpu"))
    times = cuda.time(batch, PLAN)
    assert len(times) >= PLAN.min_iterations and (times > 0).all()
    np.testing.assert_allclose(cuda.predict(batch), cpu.predict(batch), atol=1e-3)


def test_training_batches_reach_the_gpu_through_pinned_memory_unchanged(monkeypatch):
    pinned = []
    original = torch.Tensor.pin_memory

    def spy(self, *args, **kwargs):
        pinned.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    x = torch.randn(8, 1, 16, 16)
    moved = to_device(x, torch.device("cuda"))
    assert moved.device.type == "cuda" and pinned == [x.shape]
    assert torch.equal(moved.cpu(), x)


def test_batches_normalised_and_augmented_on_the_gpu_are_the_host_batches(fake_fashion):
    data = DataModule(DataConfig(root=fake_fashion, download=False, batch_size=8), seed=1)
    gpu = list(data.train_batches(1, 8, "standard", device=torch.device("cuda")))
    host = list(data.train_batches(1, 8, "standard"))
    for (xa, ya, _), (xb, yb, _) in zip(gpu, host, strict=True):
        assert xa.device.type == "cuda" and ya.device.type == "cpu"
        torch.testing.assert_close(xa.cpu(), xb, rtol=0, atol=1e-6)
        assert torch.equal(ya, yb)


def test_cuda_graphs_replay_one_graph_per_batch_shape(model_file):
    cuda = load_runner("torch-cudagraph", model_file, BackendOptions(device="cuda"))
    cpu = load_runner("torch", model_file, BackendOptions(device="cpu"))
    rng = np.random.default_rng(1)
    for n in (2, 4, 2):  # the second batch of 2 replays the first graph with new inputs
        batch = rng.standard_normal((n, 1, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(cuda.predict(batch), cpu.predict(batch), atol=1e-3)
    assert sorted(cuda.call.graphs) == [(2, 1, 16, 16), (4, 1, 16, 16)]


@pytest.mark.parametrize("backend", ["tensorrt", "tensorrt-e2e"])
def test_tensorrt_engine_builds_times_and_predicts_like_cpu(backend, tmp_path: Path, model_file):
    """The one test of the TensorRT path: only where TensorRT is installed (the GPU image)."""
    pytest.importorskip("tensorrt")
    from compress.export.onnx import export_onnx
    from compress.export.tensorrt import EngineProfile, build_engine

    model, _, _ = load_model(model_file)
    onnx_file, engine = tmp_path / "model.onnx", tmp_path / "model.engine"
    export_onnx(model, onnx_file, input_shape=(1, 16, 16), opset=18, dynamic_batch=True,
                metadata={})  # fmt: skip
    facts = build_engine(onnx_file, engine, tmp_path / "build.log", int8=False,
                         input_shape=(1, 16, 16), profile=EngineProfile(1, 4, 8))  # fmt: skip
    assert facts["precision"] == "fp16" and engine.stat().st_size == facts["bytes"]
    trt = load_runner(backend, engine, BackendOptions())  # a GPU-only backend: cuda by default
    cpu = load_runner("torch", model_file, BackendOptions(device="cpu"))
    batch = np.random.default_rng(2).standard_normal((4, 1, 16, 16)).astype(np.float32)
    assert (trt.time(batch, PLAN) > 0).all() and trt.device == "cuda"
    np.testing.assert_allclose(trt.predict(batch), cpu.predict(batch), atol=5e-2)  # fp16 engine


def test_cached_teacher_outputs_live_on_the_gpu_and_give_a_step_its_rows():
    from compress.distill.train import resident, take_rows

    logits, features = torch.randn(50, 10), torch.randn(50, 4, 3, 3)
    on_gpu = resident([logits, features], torch.device("cuda"))
    assert all(t.device.type == "cuda" for t in on_gpu)
    rows = torch.tensor([3, 1, 49])  # on the host, as the data module gives them
    picked = take_rows(on_gpu[1], 0, rows, torch.device("cuda"))
    assert picked.device.type == "cuda" and torch.equal(picked.cpu(), features[rows])
    # left on the host (as when too big for the GPU): the rows are copied over
    from_host = take_rows(logits, 0, rows, torch.device("cuda"))
    assert from_host.device.type == "cuda" and torch.equal(from_host.cpu(), logits[rows])
