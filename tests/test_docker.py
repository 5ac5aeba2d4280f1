"""The Docker images cannot be built here; these checks keep their pins and contract in step."""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT

DOCKER = ROOT / "docker"


def pins() -> dict[str, str]:
    lines = (DOCKER / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    assert all(len(r.specifier) == 1 and str(r.specifier).startswith("==") for r in reqs)
    return {r.name.lower().replace("_", "-"): str(r.specifier)[2:] for r in reqs}


def test_every_runtime_dependency_is_pinned_within_its_range():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    for line in project["dependencies"]:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{name} has no pin in docker/requirements.txt"
        assert req.specifier.contains(pinned[name]), f"{name}=={pinned[name]} is not {req}"


def test_cpu_image_installs_the_cpu_builds_of_the_pinned_torch():
    text = (DOCKER / "Dockerfile.cpu").read_text()
    pinned = pins()
    assert f"torch=={pinned['torch']}+cpu" in text
    assert f"torchvision=={pinned['torchvision']}+cpu" in text


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_run_compress_as_a_user_with_run_and_data_volumes(name: str):
    text = (DOCKER / name).read_text()
    assert 'ENTRYPOINT ["compress"]' in text
    assert 'VOLUME ["/workspace/runs", "/workspace/data"]' in text
    assert "COMPRESS_DATA=/workspace/data" in text
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    base = re.search(r"^FROM (\S+)", text, flags=re.M).group(1)
    assert ":" in base and not base.endswith(":latest")


def test_gpu_image_is_on_a_pinned_tensorrt_base_with_the_tensorrt_extra():
    text = (DOCKER / "Dockerfile.gpu").read_text()
    tag = re.search(r"^ARG TRT_TAG=(\S+)$", text, flags=re.M).group(1)
    assert re.fullmatch(r"\d\d\.\d\d-py3", tag)
    assert "FROM nvcr.io/nvidia/tensorrt:${TRT_TAG}" in text and '".[tensorrt]"' in text
