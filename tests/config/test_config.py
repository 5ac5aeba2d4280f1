"""Pipeline validation: every mistake gets one clear line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compress.config.load import apply_override, load_pipeline, parse_pipeline
from compress.errors import CompressError, ConfigError
from compress.registry import STAGES
from tests.conftest import ROOT, tiny_pipeline


def error_of(raw: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(raw, overrides)
    return str(info.value)


def test_tiny_pipeline_validates_with_defaults_filled_in():
    pipeline = parse_pipeline(tiny_pipeline())
    names = [name for name, _ in pipeline.stage_items()]
    assert names == ["teacher", "distill", "export", "bench"]
    distill = dict(pipeline.stage_items())["distill"]
    assert distill.method.name == "kd"
    assert distill.method.temperature == 4.0  # default made visible
    assert "temperature: 4.0" in pipeline.to_yaml()


def test_unknown_top_level_key_suggests_the_closest():
    raw = tiny_pipeline()
    raw["distil"] = raw.pop("distill")
    message = error_of(raw)
    assert "unknown key 'distil'" in message and "did you mean 'distill'" in message


def test_unknown_nested_key_names_its_path_and_suggests():
    raw = tiny_pipeline()
    raw["distill"]["method"] = {"name": "kd", "temprature": 2.0}
    message = error_of(raw)
    assert "unknown key 'distill.method.temprature'" in message
    assert "did you mean 'temperature'" in message


def test_unknown_data_key():
    raw = tiny_pipeline()
    raw["data"]["batchsize"] = 8
    assert "did you mean 'batch_size'" in error_of(raw)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (
            {"name": "kd", "temperature": 0},
            "distill.method.temperature: Input should be greater than 0",
        ),
        ({"name": "kd", "temperature": -1.5}, "distill.method.temperature"),
        (
            {"name": "kd", "alpha": 1.5},
            "distill.method.alpha: Input should be less than or equal to 1",
        ),
        ({"name": "kd", "alpha": -0.1}, "distill.method.alpha"),
        ({"name": "kd", "alpha": "high"}, "distill.method.alpha: Input should be a valid number"),
    ],
)
def test_out_of_range_values(method, expected):
    raw = tiny_pipeline()
    raw["distill"]["method"] = method
    assert expected in error_of(raw)


def test_unknown_method_lists_valid_ones():
    raw = tiny_pipeline()
    raw["distill"]["method"] = "kdd"
    message = error_of(raw)
    assert "unknown name 'kdd'" in message and "did you mean 'kd'" in message
    assert "baseline" in message


def test_unknown_arch_and_dataset_list_valid_ones():
    raw = tiny_pipeline()
    raw["teacher"]["model"]["arch"] = "resnet43"
    assert "unknown model 'resnet43'" in error_of(raw)
    assert "resnet34" in error_of(raw)
    raw = tiny_pipeline()
    raw["data"]["dataset"] = "fashion_mnist"
    message = error_of(raw)
    assert "did you mean 'fashion-mnist'" in message and "cifar10" in message


def test_missing_checkpoint_file(tmp_path: Path):
    raw = tiny_pipeline()
    raw["teacher"]["checkpoint"] = str(tmp_path / "nope.pt")
    assert "teacher.checkpoint: checkpoint file not found" in error_of(raw)


def test_stage_without_its_input_is_rejected_before_running():
    raw = tiny_pipeline()
    del raw["teacher"]
    assert "stage 'distill' needs the teacher output of an earlier teacher stage" in error_of(raw)
    raw = tiny_pipeline()
    del raw["export"]
    assert "stage 'bench' needs the onnx output of an earlier export stage" in error_of(raw)


def test_baseline_needs_no_teacher():
    raw = tiny_pipeline()
    del raw["teacher"]
    raw["distill"]["method"] = "baseline"
    distill = dict(parse_pipeline(raw).stage_items())["distill"]
    assert not distill.uses_teacher()
    assert STAGES.get("distill").consumes(distill) == {"teacher": False}  # the runner loads none
    raw["distill"]["method"] = "kd"  # the same pipeline with a method that needs one
    assert "stage 'distill' needs the teacher output" in error_of(raw)


def test_overrides_apply_to_any_key_and_are_validated():
    pipeline = parse_pipeline(tiny_pipeline(), ["distill.epochs=3", "data.train_subset=64",
                                                "distill.method.temperature=2"])  # fmt: skip
    stages = dict(pipeline.stage_items())
    assert stages["distill"].epochs == 3
    assert stages["distill"].method.temperature == 2.0
    assert pipeline.data.train_subset == 64
    assert "distill.method.alpha" in error_of(tiny_pipeline(), ["distill.method.alpha=2"])
    assert "did you mean 'epochs'" in error_of(tiny_pipeline(), ["distill.epoch=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_override({}, "distill.epochs")


def test_override_expands_method_shorthand():
    raw = tiny_pipeline()
    apply_override(raw, "distill.method.alpha=0.9")
    assert raw["distill"]["method"] == {"name": "kd", "alpha": 0.9}


def test_bad_yaml_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_pipeline(bad)


def test_two_stages_of_one_type_need_a_type_key():
    raw = tiny_pipeline()
    raw["distill_baseline"] = {"type": "distill", "method": "baseline", "epochs": 1}
    pipeline = parse_pipeline(raw)
    assert dict(pipeline.stage_items())["distill_baseline"].type == "distill"


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_validates(path: Path):
    pipeline = load_pipeline(path)
    assert pipeline.name
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# compress run pipelines/"), "each pipeline names its command"
    assert yaml.safe_load(pipeline.to_yaml())["name"] == pipeline.name


@pytest.mark.parametrize("name", ["../../etc", "a/b", "/tmp/x", "..", ".hidden", "x..y"])
def test_a_stage_name_cannot_lead_outside_the_run_directory(name: str):
    raw = tiny_pipeline()
    raw[name] = {"type": "export"}
    message = error_of(raw)
    assert f"stage name '{name}'" in message and "no '/' or '..'" in message
    assert len(message.splitlines()) == 1


def test_a_stage_cannot_take_the_run_directorys_cache_folder():
    raw = tiny_pipeline()
    raw["cache"] = {"type": "export"}
    assert "stage name 'cache' is taken" in error_of(raw)


def test_grid_cell_names_are_valid_stage_names():
    raw = tiny_pipeline(grid={"methods": ["kd", {"name": "mix", "parts": [{"name": "kd"},
                                                                           {"name": "rkd",
                                                                            "ce_weight": 0}]}],
                              "seeds": [0], "temperatures": [0.5]})  # fmt: skip
    names = [n for n, _ in parse_pipeline(raw).stage_items()]
    assert "distill-T0.5-s0" in names and any("+" in n for n in names)


def test_the_runner_refuses_a_folder_outside_the_run_directory(tmp_path: Path):
    from compress.stage_run import inside

    assert inside(tmp_path, "teacher") == tmp_path / "teacher"
    with pytest.raises(CompressError, match="outside the run directory"):
        inside(tmp_path, "../elsewhere")


def test_validate_cli_rejects_a_stage_named_like_a_path(tmp_path: Path, cli):
    raw = tiny_pipeline()
    raw["../x"] = {"type": "export"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = cli("validate", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stdout.strip().startswith("error: pipeline: stage name '../x'")
    assert not (tmp_path.parent / "x").exists()


def two_teacher_pipeline() -> dict:
    raw = tiny_pipeline()
    raw = {"name": raw["name"], "data": raw["data"], "teacher": raw["teacher"],
           "teacher_b": {**raw["teacher"], "type": "teacher"}, **{k: raw[k] for k in
           ("distill", "export", "bench")}}  # fmt: skip
    raw["distill"]["teachers"] = ["teacher", "teacher_b"]
    return raw


def test_several_teachers_become_the_input_and_extra_inputs():
    from compress.stages import STAGES

    distill = dict(parse_pipeline(two_teacher_pipeline()).stage_items())["distill"]
    assert distill.input == "teacher"
    assert STAGES.get("distill").extra_inputs(distill) == {"teacher.2": ("teacher", "teacher_b")}
    parse_pipeline(yaml.safe_load(parse_pipeline(two_teacher_pipeline()).to_yaml()))  # round trip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"method": "fitnets"}, "several teachers are averaged by method kd only; fitnets"),
        ({"teachers": ["teacher", "teacher"]}, "teachers: a stage is listed twice"),
        ({"input": "teacher_b"}, "set input or teachers, not both"),
        ({"teachers": ["teacher", "nope"]}, "needs the teacher output of 'nope', which is not"),
    ],
)
def test_several_teachers_mistakes_are_one_line(change, expected):
    raw = two_teacher_pipeline()
    raw["distill"].update(change)
    assert expected in error_of(raw)


def test_a_width_multiplier_on_a_fixed_width_resnet_is_one_line():
    raw = tiny_pipeline()
    raw["teacher"]["model"] = {"arch": "resnet18", "width_mult": 0.25}
    assert "resnet18 has a fixed width: width_mult must be 1.0" in error_of(raw)


def test_best_val_without_a_validation_split_is_one_line(tmp_path: Path, cli):
    """It once silently kept the last epoch; now it is refused before any compute."""
    raw = tiny_pipeline()
    raw["distill"]["select"] = "best_val"
    message = error_of(raw)
    assert message.endswith(
        "distill.select: best_val needs a validation split: set data.val_split > 0 "
        "(e.g. 0.1), or select: last"
    )
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert result.stdout.strip().splitlines() == [f"error: {message}"]
    assert parse_pipeline(raw, ["data.val_split=0.1"])  # with a split it validates


def test_a_key_added_later_leaves_existing_runs_fingerprints_alone_at_its_default(monkeypatch):
    """train.compile came after run directories existed: at its default it is not hashed, so
    an upgrade does not make those runs train again; set, it is."""
    import compress.stage_run as stage_run

    hashed = []
    monkeypatch.setattr(stage_run, "sha256_json", lambda value: hashed.append(value) or "h")
    for value in (False, True):
        pipeline = load_pipeline(ROOT / "pipelines" / "quickstart.yaml")
        teacher = dict(pipeline.stage_items())["teacher"].model_copy(update={"compile": value})
        stage_run.stage_fingerprint(pipeline, teacher, {})
    at_default, set_on = (entry["stage"] for entry in hashed)
    assert "compile" not in at_default and set_on["compile"] is True
    assert {k: v for k, v in set_on.items() if k != "compile"} == at_default
