"""Every registry is the single source of its names: a throwaway entry, registered the way a new
file registers itself, shows up in config validation, the config reference, the CLI and the
report without an edit anywhere else.

The entries are registered in a fresh interpreter before anything reads the registries (as a
new module in the entries' package would be, when the registry imports it), so that the pydantic
unions and the CLI's help built from them include the newcomer; it prints what it saw as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compress.registry import import_all
from tests.conftest import ROOT

PROBE = r"""
import json, sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch_pruning as tp

from compress.bench.backends import Backend, Runner
from compress.data.datasets import DatasetInfo, ImageSource
from compress.distill.base import DistillLoss, MethodParams, MethodSpec, hard_label_ce
from compress.registry import BACKENDS, DATASETS, IMPORTANCES, METHODS, STAGES
from compress.stages.base import StageConfig, StageResult, StageSpec


class NoopConfig(StageConfig):
    type: Literal["noop"] = "noop"


STAGES.register("noop")(StageSpec(config=NoopConfig, run=lambda cfg, ctx: StageResult(),
                                  produces=None, consumes=lambda cfg: {}, summary="does nothing"))


class HalfParams(MethodParams):
    name: Literal["half_ce"] = "half_ce"


class HalfLoss(DistillLoss):
    def __init__(self, params, shapes=None, student=None):
        super().__init__()

    def forward(self, student, teacher, labels, features=None):
        return 0.5 * hard_label_ce(student, labels)


METHODS.register("half_ce")(MethodSpec(params=HalfParams, build=HalfLoss, uses_teacher=False,
                                       paper="-", summary="half the cross-entropy"))


def echo(path, options):
    return Runner("echo", "cpu", lambda b: b, lambda x: x, lambda b: np.zeros((len(b), 10)))


BACKENDS.register("echo")(Backend(echo, runs="onnx", title="Echo runtime"))


def toy(root, download):
    split = ImageSource(torch.arange(4) % 2, ["a", "b"], torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    return split, split


DATASETS.register("toyset")(DatasetInfo(toy, 8, 1, (0.5,), (0.5,), "made up by the test"))
IMPORTANCES.register("random")(lambda: tp.importance.RandomImportance())

from typer.testing import CliRunner

from compress.cli import app
from compress.config.base import DataConfig
from compress.config.load import parse_pipeline
from compress.config.reference import reference_markdown
from compress.errors import ConfigError
from compress.report import write_report
from compress.report.rows import runtime_name
from compress.runner import run_pipeline

seen = {}
reference = reference_markdown()
cli = CliRunner()


def validates(raw):
    # True, or the error (so a failing test shows it)
    try:
        parse_pipeline(raw)
    except ConfigError as exc:
        return str(exc)
    return True


def message(raw):
    return str(validates(raw))


run_dir = Path(sys.argv[1])
pipeline = parse_pipeline({"name": "noop", "noop": {}})
run_pipeline(pipeline, run_dir)
markdown, _ = write_report(run_dir)
seen["stage"] = {
    "validates": dict(pipeline.stage_items())["noop"].type == "noop",
    "listed_when_unknown": "noop" in message({"name": "x", "nope": {}}),
    "reference": "`noop`" in reference,
    "report": "| noop | noop | done |" in markdown.read_text(),
}
method = {"name": "half_ce"}
mix = {"name": "mix", "parts": [{"name": "half_ce"}, {"name": "kd", "alpha": 0.0}]}
seen["method"] = {
    "validates": validates({"name": "m", "distill": {"method": method}}),
    "in_a_mix": validates({"name": "m", "t": {"type": "teacher"}, "distill": {"method": mix}}),
    "listed_when_unknown": "half_ce" in message({"name": "m", "distill": {"method": "nope"}}),
    "reference": "half_ce" in reference,
    "cli": "half_ce" in cli.invoke(app, ["methods"]).output,
}
bench = {"name": "b", "t": {"type": "teacher"}, "d": {"type": "distill"}, "export": {},
         "bench": {"backends": ["echo"]}}
seen["backend"] = {
    "validates": validates(bench),
    "listed_when_unknown": "echo" in message({**bench, "bench": {"backends": ["nope"]}}),
    "reference": "echo" in reference,
    "cli": "echo" in cli.invoke(app, ["bench", "--help"], terminal_width=200).output,
    "report": runtime_name("echo-cuda") == "Echo runtime, cuda",
}
seen["dataset"] = {
    "validates": DataConfig(dataset="toyset").dataset == "toyset",
    "listed_when_unknown": "toyset" in message({"name": "d", "data": {"dataset": "nope"},
                                                "teacher": {}}),
    "reference": "toyset" in reference,
    "cli": "toyset" in cli.invoke(app, ["data", "check", "toyset"], terminal_width=200).output,
}
prune = {"name": "p", "t": {"type": "teacher"}, "d": {"type": "distill"}}
seen["importance"] = {
    "validates": validates({**prune, "prune": {"importance": "random"}}),
    "listed_when_unknown": "random" in message({**prune, "prune": {"importance": "nope"}}),
    "reference": "random" in reference,
}
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bool]]:
    run_dir = tmp_path_factory.mktemp("registry") / "run"
    result = subprocess.run([sys.executable, "-c", PROBE, str(run_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("registry", ["stage", "method", "backend", "dataset", "importance"])
def test_a_new_entry_is_seen_everywhere_its_names_are(seen: dict, registry: str):
    missing = {place: ok for place, ok in seen[registry].items() if ok is not True}
    assert not missing, f"a new {registry} is not seen in: {missing}"


def test_a_registry_imports_its_entries_on_first_read():
    """What makes one file enough: nothing imports an entry's module by hand."""
    code = ("from compress.registry import BACKENDS, IMPORTANCES, STAGES\n"
            "print(sorted(STAGES.names()), BACKENDS.names(), IMPORTANCES.names())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    assert "'prune'" in out and "'tensorrt-e2e'" in out and "'taylor'" in out


def test_import_all_imports_every_module_of_a_package():
    import_all("compress.prune.importances")
    assert {"compress.prune.importances.lamp", "compress.prune.importances.taylor"} <= set(
        sys.modules
    )


def test_the_package_layers_hold(tmp_path: Path):
    """lint-imports (the contract in pyproject.toml) passes: imports point one way."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
