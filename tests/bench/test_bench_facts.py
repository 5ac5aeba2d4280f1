"""Parameters and MACs: the ONNX counter and the PyTorch counter agree with a hand count."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from compress.bench.facts import onnx_macs, onnx_params, torch_macs


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)  # 8x8 out: 4*8*8 outputs x 1*3*3
        self.depthwise = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)  # 4*4*4 x 1*3*3
        self.fc = nn.Linear(4 * 4 * 4, 10)  # 10 outputs x 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(torch.relu(self.conv(x)))
        return self.fc(x.flatten(1))


HAND_MACS = 4 * 8 * 8 * 9 + 4 * 4 * 4 * 9 + 10 * 64
HAND_PARAMS = (4 * 9 + 4) + (4 * 9 + 4) + (64 * 10 + 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: quick
def test_macs_from_torch_and_from_onnx_match_a_hand_count(tmp_path: Path):
    model = Tiny().eval()
    assert torch_macs(model, (1, 8, 8)) == HAND_MACS
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)  # fmt: skip
    proto = onnx.load(str(path))
    assert onnx_macs(proto) == HAND_MACS  # per image, whatever the batch it was exported with
    assert onnx_params(proto) == HAND_PARAMS
