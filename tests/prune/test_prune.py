"""Structured pruning: valid shapes, budgets met, safe reload, ONNX export with parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError
from compress.export.onnx import export_onnx, onnx_session
from compress.models import ModelSpec, build_model, load_model, save_model
from compress.prune.structured import PruneTarget, count_macs_params, prune
from compress.registry import IMPORTANCES

EXAMPLE = torch.randn(1, 3, 16, 16)


def pruned(
    arch: str, target: PruneTarget, importance: str = "l2", **kw
) -> tuple[nn.Module, ModelSpec]:
    torch.manual_seed(0)
    width = 0.5 if arch == "mobilenet_v2" else 1.0
    spec = ModelSpec(arch, 10, 3, width, "compact")
    model = build_model(spec)
    # non-trivial BN scales so importance rankings differ between channels
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
    prune(
        model,
        EXAMPLE,
        importance=importance,
        target=target,
        global_ranking=False,
        steps=2,
        round_to=8,
        ignored_layers=kw.get("ignored", []),
    )
    return model, ModelSpec(arch, 10, 3, width, "compact", pruned=True)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet34"])
@pytest.mark.parametrize("keep", [0.7, 0.5, 0.3])
def test_macs_budget_is_met_and_shapes_stay_valid(arch, keep):
    base_macs, _ = count_macs_params(
        build_model(ModelSpec(arch, 10, 3, 0.5 if arch == "mobilenet_v2" else 1.0, "compact")),
        EXAMPLE,
    )
    model, _ = pruned(arch, PruneTarget("macs", keep))
    macs, _ = count_macs_params(model, EXAMPLE)
    assert macs <= keep * base_macs
    assert model(torch.randn(4, 3, 16, 16)).shape == (4, 10)


def test_channels_are_rounded_to_multiples_of_8_and_depthwise_stays_depthwise():
    model, _ = pruned("mobilenet_v2", PruneTarget("channels", 0.4))
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    hidden = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    assert sum(c % 8 == 0 for c in hidden) >= len(hidden) - 2  # the stem and tiny layers may not


@pytest.mark.parametrize("importance", IMPORTANCES.names())
def test_every_importance_removes_the_dead_channels_first(importance):
    """Channels whose weights, BatchNorm and consumers are all zero carry nothing: every
    importance must rank them lowest, so pruning 30% of a layer removes all 12 of its 48."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("mobilenet_v2", 10, 3, 0.5, "compact"))
    expand, bn, depthwise, dw_bn = (
        model.features[2].conv[0][0],
        model.features[2].conv[0][1],
        model.features[2].conv[1][0],
        model.features[2].conv[1][1],
    )
    dead = torch.arange(0, 48, 4)  # 12 of the block's 48 hidden channels
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.0)
        for layer in (expand, depthwise):
            layer.weight[dead] = 0.0
        for norm in (bn, dw_bn):
            norm.weight[dead], norm.bias[dead] = 0.0, 0.0
        model.features[2].conv[2].weight[:, dead] = 0.0
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 10

    def gradients() -> None:  # for taylor: the loss's gradients on one batch
        F.cross_entropy(model(x), y).backward()

    prune(model, EXAMPLE, importance=importance, target=PruneTarget("channels", 0.3),
          global_ranking=False, steps=1, round_to=8, ignored_layers=[],
          accumulate_gradients=gradients)  # fmt: skip
    expand = model.features[2].conv[0][0]
    assert expand.out_channels < 48
    alive = expand.weight.flatten(1).abs().sum(1) > 0
    assert bool(alive.all()), f"{importance} kept {int((~alive).sum())} dead channels"
    assert model(EXAMPLE).shape == (1, 10)


def test_classifier_and_named_layers_are_left_whole():
    model, _ = pruned("resnet34", PruneTarget("channels", 0.5), ignored=["layer1.0.conv1"])
    assert model.fc.out_features == 10
    assert model.layer1[0].conv1.out_channels == 64


def test_unknown_ignored_layer_is_named():
    with pytest.raises(
        CompressError, match=r"no module 'layer1\.0\.conv' \(did you mean 'layer1\.0\.conv[12]'"
    ):
        pruned("resnet34", PruneTarget("channels", 0.5), ignored=["layer1.0.conv"])


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet34"])
def test_pruned_model_reloads_safely_and_exports_with_parity(arch, tmp_path: Path):
    model, spec = pruned(arch, PruneTarget("macs", 0.5))
    model.eval()
    save_model(model, spec, tmp_path / "pruned.pt", {})
    loaded, loaded_spec, _ = load_model(tmp_path / "pruned.pt")  # weights_only=True inside
    loaded.eval()
    x = torch.randn(3, 3, 16, 16)
    assert loaded_spec.pruned and torch.allclose(loaded(x), model(x), atol=1e-6)
    export_onnx(
        loaded,
        tmp_path / "p.onnx",
        input_shape=(3, 16, 16),
        opset=18,
        dynamic_batch=True,
        metadata={},
    )
    session = onnx_session(tmp_path / "p.onnx")
    out = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(out - model(x).detach().numpy()).max() < 1e-4


def test_unpruned_checkpoint_of_wrong_width_still_fails(tmp_path: Path):
    model, spec = pruned("mobilenet_v2", PruneTarget("macs", 0.5))
    save_model(
        model, ModelSpec(spec.arch, 10, 3, spec.width_mult, spec.stem), tmp_path / "x.pt", {}
    )
    with pytest.raises(Exception, match="does not fit architecture"):
        load_model(tmp_path / "x.pt")


def test_prune_stage_end_to_end_through_compress_run(tmp_path: Path):
    """distill -> prune (KD fine-tune) -> export, from the CLI on a Fashion-MNIST subset; a
    second run skips every stage."""
    from tests.conftest import run_pipeline_dict, tiny_pipeline

    tiny = tiny_pipeline()
    tiny["distill"]["student"]["width_mult"] = 0.5
    prune_block = {"keep_macs": 0.5, "epochs": 1, "method": "kd", "augment": "none",
                   "latency_batch_size": 4}  # fmt: skip
    raw = {**{k: tiny[k] for k in ("name", "data", "teacher", "distill")}, "prune": prune_block,
           "export": {**tiny["export"], "input": "prune"}}  # fmt: skip
    _, stages = run_pipeline_dict(raw, tmp_path)
    metrics = stages["prune"]["metrics"]
    assert stages["prune"]["inputs"]["student"]["stage"] == "distill"
    assert stages["export"]["inputs"]["student"]["stage"] == "prune"
    assert metrics["macs_kept"] <= 0.55 and metrics["params_kept"] < 0.9
    assert metrics["macs"] == metrics["after_prune"]["macs"] < metrics["before"]["macs"]
    assert metrics["latency_ms"]["pruned"]["p50"] > 0 and metrics["onnxruntime_speedup"] > 0
    pruned_model, spec, _ = load_model(
        tmp_path / "run" / stages["prune"]["artifacts"]["model"]["path"]
    )
    assert spec.pruned
    assert count_macs_params(pruned_model, torch.randn(1, 1, 16, 16))[0] == metrics["macs"]
    session = onnx_session(tmp_path / "run" / stages["export"]["artifacts"]["onnx"]["path"])
    x = torch.randn(2, 1, 16, 16)
    out = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(out - pruned_model.eval()(x).detach().numpy()).max() < 1e-4  # the pruned model

    out, again = run_pipeline_dict(raw, tmp_path)
    assert all(again[name]["finished_at"] == stages[name]["finished_at"] for name in stages)
