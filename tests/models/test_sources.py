"""Library and user models (torchvision:, timm:, python:) through every stage's building blocks,
and every model-spec mistake as one line with exit code 2."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from compress.export.onnx import export_onnx, onnx_session
from compress.export.qdq import int8_graph_passes
from compress.models import ModelSpec, build_model, load_model, save_model
from compress.prune.structured import PruneTarget, prune
from compress.quant.prepare import QuantSpec, calibrate, freeze_for_export, quantize_model
from tests.conftest import ROOT, requires_fashion, run_cli

HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (compress[timm])")

FACTORY = """
from torch import nn


def small_cnn(width=8, num_classes=1000):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )


def not_a_model():
    return {"conv": 3}


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.fc(x.mean((2, 3)))
"""


@pytest.fixture(scope="module")
def factory_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "my_models.py"
    path.write_text(FACTORY)
    return path


ARCHS = [
    "torchvision:mobilenet_v3_small",
    "torchvision:efficientnet_b0",
    "torchvision:resnet18",
    pytest.param("timm:resnet18d", marks=needs_timm),
    "python",
]


def arch_name(arch: str, factory_file: Path) -> str:
    return f"python:{factory_file}:small_cnn" if arch == "python" else arch


@pytest.mark.parametrize("arch", ARCHS)
def test_model_trains_prunes_quantizes_exports_and_reloads(arch, factory_file, tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(arch_name(arch, factory_file), num_classes=10, in_channels=1, stem="cifar")
    model = build_model(spec)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    # one training step moves the weights and gives a finite loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and model(x).shape == (4, 10)

    # saved and rebuilt from its spec (weights_only loading), same outputs
    model.eval()
    save_model(model, spec, tmp_path / "m.pt", {})
    loaded, loaded_spec, _ = load_model(tmp_path / "m.pt")
    assert loaded_spec == spec and torch.allclose(loaded.eval()(x), model(x), atol=1e-5)

    # structured pruning, and the pruned file rebuilds to the pruned widths
    pruned = build_model(spec).eval()
    pruned.load_state_dict(model.state_dict())
    prune(pruned, x[:1], importance="l2", target=PruneTarget("channels", 0.25),
          global_ranking=False, steps=1, round_to=1, ignored_layers=[])  # fmt: skip
    pruned_spec = ModelSpec(**{**spec.__dict__, "pruned": True})
    save_model(pruned, pruned_spec, tmp_path / "p.pt", {})
    reloaded, _, _ = load_model(tmp_path / "p.pt")
    assert sum(p.numel() for p in reloaded.parameters()) < sum(
        p.numel() for p in model.parameters()
    )
    assert torch.allclose(reloaded.eval()(x), pruned(x), atol=1e-5)

    # PTQ: fake-quantized, calibrated, saved, rebuilt, exported to INT8 ONNX with parity
    quant = QuantSpec()
    quantized = quantize_model(model, quant)
    calibrate(quantized, iter([torch.randn(8, 1, 16, 16)]), torch.device("cpu"))
    q_spec = ModelSpec(**{**spec.__dict__, "quant": quant.to_dict()})
    save_model(quantized, q_spec, tmp_path / "q.pt", {})
    q_loaded, _, _ = load_model(tmp_path / "q.pt")
    assert torch.allclose(q_loaded.eval()(x), quantized(x), atol=1e-5)
    onnx_path = tmp_path / "q.onnx"
    export_onnx(freeze_for_export(quantized), onnx_path, input_shape=(1, 16, 16), opset=18,
                dynamic_batch=True, metadata={},
                graph_passes=int8_graph_passes(quant.to_dict()))  # fmt: skip
    out = onnx_session(onnx_path).run(None, {"input": x.numpy()})[0]
    reference = quantized(x).detach().numpy()
    # one quantization step of the logits at most, on random weights and inputs
    assert np.abs(out - reference).max() <= 0.1 * np.abs(reference).max() + 1e-3


def test_pretrained_weights_load_from_a_local_torchvision_state_dict(tmp_path):
    """A torchvision-layout file (1000-class head, RGB stem) loads before adaptation: the body
    keeps its weights, the first conv's are summed over RGB, the head is new."""
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    spec = ModelSpec("torchvision:resnet18", num_classes=10, in_channels=1, stem="imagenet")
    model = build_model(spec, str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    assert model.fc.out_features == 10
    # our own model file (adapted layout) loads as well
    save_model(model, spec, tmp_path / "ours.pt", {})
    again = build_model(spec, str(tmp_path / "ours.pt"))
    assert torch.equal(again.fc.weight, model.fc.weight)


def test_adaptation_is_logged_and_stem_refused_where_it_does_not_apply():
    import torchvision

    from compress.errors import CompressError
    from compress.models.adapt import adapt

    model = torchvision.models.mobilenet_v3_small()
    changes = adapt(model, "torchvision:mobilenet_v3_small", 10, 1, "cifar")
    assert changes == [
        "classifier.3 Linear(1024->1000) -> Linear(1024->10)",
        "features.0.0 Conv2d(3->16, 3x3/2) -> Conv2d(1->16, 3x3/1)",
    ]
    with pytest.raises(CompressError, match="has none"):
        adapt(torchvision.models.mobilenet_v3_small(), "m", 10, 1, "compact")
    vit = torchvision.models.vit_b_16()
    with pytest.raises(CompressError, match="16x16/16 patch embedding"):
        adapt(vit, "torchvision:vit_b_16", 10, 3, "cifar")


def test_layers_lists_module_paths_shapes_and_macs(cli):
    result = cli("layers", "torchvision:mobilenet_v3_small", "--image-size", "28",
                 "--channels", "1")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "features.0.0" in result.stdout and "16x28x28" in result.stdout
    assert "classifier.3" in result.stdout and "MMACs per image" in result.stdout


def _validate(tmp_path: Path, model: dict, env: dict | None = None, code: str | None = None):
    pipeline = {"name": "spec", "data": {"dataset": "fashion-mnist", "image_size": 16},
                "teacher": {"model": model, "epochs": 0}}  # fmt: skip
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    if code is None:
        return run_cli("run", str(path), "--run-dir", str(tmp_path / "run"))
    return subprocess.run(
        [sys.executable, "-c", code, "run", str(path), "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip


def _one_line_exit_2(result: subprocess.CompletedProcess, tmp_path: Path, *needles: str) -> None:
    """One error (the console may wrap it at the terminal width), exit 2, no run directory."""
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert out.count("error:") == 1 and out.lstrip().startswith("error:"), out
    assert "Traceback" not in out, out
    text = " ".join(out.split())
    for needle in needles:
        assert needle in text, text
    assert not (tmp_path / "run").exists()


MISTAKES = {
    "torchvision name": ({"arch": "torchvision:mobilenet_v3_smal"},
                         ["did you mean 'mobilenet_v3_small'"]),
    "weights name": ({"arch": "torchvision:resnet18", "weights": "IMAGENET1K_V7"},
                     ["did you mean 'IMAGENET1K_V1'"]),
    "source prefix": ({"arch": "torchvison:resnet18"}, ["did you mean 'torchvision'"]),
    "not a module": ({"arch": "python:{factory}:not_a_model"}, ["returned dict, not a torch.nn"]),
    "no factory": ({"arch": "python:{factory}:small_cn"}, ["did you mean 'small_cnn'"]),
}  # fmt: skip


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_model_spec_mistakes_are_one_line_exit_2_nothing_written(mistake, factory_file, tmp_path):
    model, needles = MISTAKES[mistake]
    model = {k: v.format(factory=factory_file) for k, v in model.items()}
    _one_line_exit_2(_validate(tmp_path, model), tmp_path, *needles)


@needs_timm
def test_timm_name_did_you_mean_and_missing_extra(tmp_path):
    result = _validate(tmp_path, {"arch": "timm:resnet18e"})
    _one_line_exit_2(result, tmp_path, "unknown timm model 'resnet18e'", "did you mean")
    hide_timm = "import sys; sys.modules['timm'] = None; from compress.cli import main; main()"
    result = _validate(tmp_path, {"arch": "timm:resnet18d"}, code=hide_timm)
    _one_line_exit_2(result, tmp_path, "pip install 'compress[timm]'")


def test_weights_file_of_another_architecture(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    result = _validate(tmp_path, {"arch": "torchvision:mobilenet_v3_small",
                                  "weights": str(tmp_path / "r18.pth")})  # fmt: skip
    _one_line_exit_2(result, tmp_path, "do not fit torchvision:mobilenet_v3_small",
                     "another architecture")  # fmt: skip


def test_untraceable_model_in_ptq_is_one_line(factory_file):
    from compress.errors import CompressError

    spec = ModelSpec(f"python:{factory_file}:Branchy", num_classes=10, in_channels=3)
    with pytest.raises(CompressError) as info:
        quantize_model(build_model(spec), QuantSpec())
    assert "cannot trace Branchy" in str(info.value) and "\n" not in str(info.value)


def test_untraceable_ptq_input_stops_the_run_before_any_stage(factory_file, tmp_path):
    """Found at validation: the teacher stage, which would train, writes nothing either."""
    pipeline = {"name": "spec", "data": {"dataset": "fashion-mnist", "image_size": 16},
                "teacher": {"model": {"arch": f"python:{factory_file}:Branchy"}, "epochs": 1},
                "ptq": {"input": "teacher"}}  # fmt: skip
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    result = run_cli("run", str(path), "--run-dir", str(tmp_path / "run"))
    _one_line_exit_2(result, tmp_path, "ptq: cannot trace Branchy for quantization")


@pytest.mark.e2e
@requires_fashion
def test_user_factory_pipeline_through_ptq_export_bench(factory_file, tmp_path):
    """python: teacher and torchvision student through the CLI; the model files rebuild with
    the user's factory in later stages and in compress bench."""
    raw = {
        "name": "byo",
        "data": {"dataset": "fashion-mnist", "train_subset": 64, "test_subset": 64,
                 "image_size": 16, "batch_size": 32},
        "teacher": {"model": {"arch": f"python:{factory_file}:small_cnn", "kwargs": {"width": 8}},
                    "epochs": 1, "augment": "none"},
        "distill": {"student": {"arch": "torchvision:mobilenet_v3_small", "stem": "cifar"},
                    "epochs": 1, "method": {"name": "fitnets", "pairs": [
                        {"teacher": "4", "student": "features.3"}]}, "augment": "none"},
        "ptq": {"calibration_images": 32},
        "export": {"parity_images": 0, "min_agreement": 0.0},
        "bench": {"backends": ["onnxruntime"], "batch_sizes": [2], "min_iterations": 3,
                  "min_seconds": 0.0, "warmup_iterations": 1, "warmup_seconds": 0.0,
                  "ratio_rounds": 2, "include_teacher": False},
    }  # fmt: skip
    path = tmp_path / "byo.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_cli("run", str(path), "--run-dir", str(tmp_path / "run"))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "classifier.3 Linear(1024->1000) -> Linear(1024->10)" in out
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["export"]["inputs"]["student"]["stage"] == "ptq"
    assert stages["export"]["metrics"]["runtime_ops"].get("QLinearConv", 0) > 0
    teacher_file = tmp_path / "run" / stages["teacher"]["artifacts"]["model"]["path"]
    bench = run_cli("bench", str(teacher_file), "--batch-sizes", "1", "--min-iterations", "2",
                    "--min-seconds", "0", "--warmup-iterations", "1",
                    "--warmup-seconds", "0")  # fmt: skip
    assert bench.returncode == 0, bench.stdout + bench.stderr
