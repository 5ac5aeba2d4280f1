"""Every registered method trains a MobileNetV2 student from a ResNet-34 teacher through
``compress run``, in one tiny pipeline with one distill stage per method, and each recorded
accuracy is the saved student's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from compress.config.base import DataConfig
from compress.data.module import get_data
from compress.distill import METHODS, load_methods
from compress.models import load_model
from compress.train.evaluate import evaluate
from tests.conftest import requires_fashion, run_pipeline_dict

load_methods()
TINY_METHODS = {"attention": {"pairs": [{"student": "features.6", "teacher": "layer2"}]}}


@pytest.mark.e2e
@requires_fashion
def test_every_method_runs_through_the_cli(cli, tmp_path: Path):
    pipeline = {
        "name": "methods",
        "data": {"dataset": "fashion-mnist", "train_subset": 256, "test_subset": 128,
                 "image_size": 16, "batch_size": 32},
        "teacher": {"model": {"arch": "resnet34", "stem": "compact"}, "epochs": 1, "lr": 0.05,
                    "augment": "none"},
    }  # fmt: skip
    student = {"arch": "mobilenet_v2", "width_mult": 0.25}
    for name in METHODS.names():
        method = {"name": name, **TINY_METHODS.get(name, {})}
        pipeline[f"distill_{name}"] = {"type": "distill", "student": student, "epochs": 1,
                                       "lr": 0.05, "method": method}  # fmt: skip
    mix = [{"name": "kd", "alpha": 0.5}, {"name": "fitnets", "ce_weight": 0, "weight": 0.5}]
    pipeline["distill_mix_kd_fitnets"] = {"type": "distill", "student": student, "epochs": 1,
                                          "method": {"name": "mix", "parts": mix}}  # fmt: skip
    pipeline["born_again"] = {"type": "distill", "input": "distill_kd", "student": student,
                              "epochs": 1, "method": "kd"}  # fmt: skip
    path = tmp_path / "methods.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    result = cli("run", str(path), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stdout + result.stderr
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    distilled = {k: v for k, v in stages.items() if v["type"] == "distill"}
    assert len(distilled) == len(METHODS.names()) + 2  # one per method, a second mix, born-again
    data = get_data(DataConfig.model_validate(pipeline["data"]), seed=0)
    for name, entry in distilled.items():
        assert entry["status"] == "done", name
        assert entry["metrics"]["test_images"] == 128 and entry["metrics"]["epochs"] == 1
        history = json.loads((tmp_path / "run" / entry["artifacts"]["history"]["path"]).read_text())
        assert len(history) == 1 and math.isfinite(history[0]["loss"]), name
        assert entry["metrics"]["train_loss"] == round(history[-1]["loss"], 4), name
        # the recorded top-1 is the saved student's, measured again here on the same test split
        model, _, meta = load_model(tmp_path / "run" / entry["artifacts"]["model"]["path"])
        top1 = evaluate(model, data, data.test, torch.device("cpu"))["top1"]
        assert top1 == pytest.approx(entry["metrics"]["top1"], abs=1 / 64), name  # memory layout
        assert meta["metrics"]["method"] == entry["metrics"]["method"]
    assert stages["distill_mix_kd_fitnets"]["metrics"]["method"] == "kd+fitnets"
    assert stages["born_again"]["inputs"]["teacher"]["stage"] == "distill_kd"
    assert stages["distill_mutual"]["metrics"]["peer_top1"]


def test_bad_layer_name_is_one_clear_line(cli, tmp_path: Path):
    from tests.conftest import tiny_pipeline

    raw = tiny_pipeline()
    raw["distill"]["method"] = {
        "name": "fitnets",
        "pairs": [{"student": "features.99", "teacher": "layer3"}],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    if not (Path("/usr/share/datasets/fashion-mnist").is_dir()):
        pytest.skip("needs Fashion-MNIST to reach the distill stage")
    result = cli("run", str(path), "--run-dir", str(tmp_path / "run"))
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in out
    assert "the student has no layer 'features.99'" in out and "did you mean" in out


@pytest.mark.e2e
@requires_fashion
def test_two_teachers_distil_one_student_through_the_cli(tmp_path: Path):
    """kd from two teachers: both are inputs of the stage (and of its fingerprint); the cached
    logits are computed per teacher."""
    teacher = {"model": {"arch": "mobilenet_v2", "width_mult": 0.25},
               "epochs": 1, "lr": 0.05, "augment": "none"}  # fmt: skip
    pipeline = {
        "name": "two_teachers",
        "data": {"dataset": "fashion-mnist", "train_subset": 256, "test_subset": 128,
                 "image_size": 16, "batch_size": 32},
        "teacher_a": {"type": "teacher", **teacher},
        "teacher_b": {"type": "teacher", **teacher, "lr": 0.02},
        "distill": {"student": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "augment": "none", "teachers": ["teacher_a", "teacher_b"],
                    "method": {"name": "kd", "temperature_schedule": "linear",
                               "final_temperature": 1.0}},
    }  # fmt: skip
    _, stages = run_pipeline_dict(pipeline, tmp_path)
    distill = stages["distill"]
    assert distill["inputs"]["teacher"]["stage"] == "teacher_a"
    assert distill["inputs"]["teacher.2"]["stage"] == "teacher_b"
    assert len(distill["metrics"]["teachers_top1"]) == 2
    assert len(list((tmp_path / "run" / "cache").glob("teacher_logits-*.pt"))) == 2
