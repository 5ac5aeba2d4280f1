"""Models: every registered architecture builds for any stem, channels and class count;
checkpoints load only safely and only into the architecture they fit."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from compress.errors import CheckpointError
from compress.io import load_torch
from compress.models import MODELS, ModelSpec, build_model, load_model, save_model
from compress.models.checkpoint import load_state_dict_checked
from compress.models.weights import extract_state_dict

FAST_ARCHS = [a for a in MODELS.names() if a != "resnet50"]


@pytest.mark.parametrize("arch", FAST_ARCHS)
@pytest.mark.parametrize(
    ("stem", "channels", "size"), [("cifar", 1, 16), ("compact", 3, 16), ("imagenet", 3, 32)]
)
def test_forward_shapes_and_gradients(arch, stem, channels, size):
    width = 0.25 if arch == "mobilenet_v2" else 1.0
    model = build_model(
        ModelSpec(arch, num_classes=7, in_channels=channels, width_mult=width, stem=stem)
    )
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_model_file_round_trip(tmp_path: Path):
    spec = ModelSpec("mobilenet_v2", 10, 1, 0.5, "cifar")
    model = build_model(spec).eval()
    save_model(model, spec, tmp_path / "m.pt", {"labels": list("abcdefghij")})
    loaded, loaded_spec, meta = load_model(tmp_path / "m.pt")
    x = torch.randn(3, 1, 16, 16)
    assert loaded_spec == spec and meta["labels"][0] == "a"
    assert torch.equal(loaded.eval()(x), model(x))


def test_plain_torchvision_state_dict_and_ddp_prefix_load(tmp_path: Path):
    reference = torchvision.models.resnet18(num_classes=10)
    spec = ModelSpec("resnet18", 10, 3, 1.0, "imagenet")
    for payload in (
        reference.state_dict(),
        {"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}},
    ):
        path = tmp_path / "user.pt"
        torch.save(payload, path)
        model = build_model(spec)
        load_state_dict_checked(model, extract_state_dict(load_torch(path), path), path, "resnet18")
        assert torch.equal(model.fc.weight, reference.fc.weight)


def test_wrong_architecture_is_named(tmp_path: Path):
    path = tmp_path / "mnv2.pt"
    torch.save(build_model(ModelSpec("mobilenet_v2", 10, 3)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit architecture 'resnet34'.*missing"):
        load_state_dict_checked(
            build_model(ModelSpec("resnet34", 10, 3)), load_torch(path), path, "resnet34"
        )


def test_wrong_class_count_names_the_shape(tmp_path: Path):
    path = tmp_path / "r18.pt"
    torch.save(build_model(ModelSpec("resnet18", 100, 3)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"fc.weight \(100, 512\) vs \(10, 512\)"):
        load_state_dict_checked(
            build_model(ModelSpec("resnet18", 10, 3)), load_torch(path), path, "resnet18"
        )


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch " + str(MARKER),))


MARKER = Path("/tmp/compress-pickle-ran")


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    with pytest.raises(CheckpointError, match=r"cannot load .* safely"):
        load_torch(path)
    assert not MARKER.exists()
