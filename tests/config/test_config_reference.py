"""The pipeline file reference is generated from the config models, and one command away."""

from __future__ import annotations

from pydantic import Field

from compress.config import reference
from compress.config.base import DataConfig
from compress.config.reference import (
    END,
    START,
    KeyTable,
    current_block,
    missing_descriptions,
    reference_markdown,
    replace_block,
)
from compress.stages import STAGES
from tests.conftest import ROOT


def test_every_config_key_has_a_description():
    assert missing_descriptions() == []


def test_a_key_added_without_a_description_is_caught(monkeypatch):
    class Extended(DataConfig):
        new_knob: int = 3
        documented: int = Field(4, description="a documented knob")

    real = reference.blocks()
    extra = KeyTable("`data`", Extended, ["new_knob", "documented"], "test")
    monkeypatch.setattr(reference, "blocks", lambda: [*real, extra])
    assert missing_descriptions() == ["`data`: new_knob"]


def test_every_key_of_every_stage_appears_in_some_table():
    tables = [(b.model, set(b.keys)) for b in reference.blocks()]
    for name, spec in STAGES.items():
        for key in spec.config.model_fields:
            assert any(model in spec.config.__mro__ and key in keys for model, keys in tables), (
                f"{name}.{key} is in no table of the reference"
            )


def test_reference_shows_types_defaults_and_bounds():
    text = reference_markdown()
    assert "| `opset` | int, >= 17, <= 23 | `18` |" in text
    assert "| `student` | [`model` block](#model-block) | `{arch: mobilenet_v2}` |" in text
    from compress.distill import METHODS

    links = " or ".join(f"[`{n}` method](#{n}-method)" for n in METHODS.names())
    assert f"| `method` | {links} |" in text
    assert "| `threads` | int or null, >= 1 | `null` |" in text
    assert "runs/&lt;name>/" in text and "runs/<name>" not in text  # not an HTML tag
    for heading in ("### `teacher` stage", "### Training keys", "### `kd` method"):
        assert heading in text


def test_the_readme_says_how_to_get_the_reference_and_the_cli_prints_it(cli):
    """The generated reference is one command away, not pasted into the README to drift."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert START not in readme and "compress config-reference" in readme
    result = cli("config-reference")
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_markdown()


def test_replace_block_keeps_the_rest_of_the_file():
    text = f"intro\n{START}\nold table\n{END}\noutro\n"
    assert replace_block(text, "new\n") == f"intro\n{START}\nnew\n{END}\noutro\n"
    assert current_block(replace_block(text, "new\n")) == "new\n"
