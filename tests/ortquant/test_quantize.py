"""``compress quantize`` on a foreign ONNX file: the INT8 file, its kernels, metadata, figures,
and the mistakes that must cost nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from compress.errors import CompressError, DataError
from compress.export.onnx import read_metadata
from compress.ortquant.images import folder_images, resolve_preprocess
from compress.ortquant.quantize import (
    QuantizeRequest,
    check_request,
    quantize_and_measure,
    read_input,
    reduce_range_setting,
)
from tests.conftest import requires_fashion

INPUT = "pixels:0"  # an odd input name, as other exporters write them
CLASSES = 10


def tiny_resnet(channels: int = 1) -> nn.Module:
    """A ResNet-18 in miniature from torchvision's own block: stem, two residual blocks (one
    downsampling), global pool, classifier; BatchNorm everywhere, as in the real thing."""
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    model = nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        BasicBlock(8, 8), BasicBlock(8, 16, stride=2, downsample=down),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES),
    )  # fmt: skip
    for m in model.modules():  # BatchNorm statistics of a trained model, not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def export(model: nn.Module, path: Path, size: int = 28, channels: int = 1) -> Path:
    """What a user's script does: torch.onnx.export with a dynamic batch and its own names (the
    TorchScript exporter: ten times faster here than the dynamo one, which the benchmark uses),
    plus a metadata entry of their own."""
    torch.onnx.export(model, (torch.randn(2, channels, size, size),), str(path),
                      input_names=[INPUT], output_names=["scores"], dynamo=False,
                      dynamic_axes={INPUT: {0: "n"}, "scores": {0: "n"}})  # fmt: skip
    proto = onnx.load(str(path))
    proto.metadata_props.add(key="author", value="someone else")
    onnx.save_model(proto, str(path))
    return path


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tiny_resnet(), tmp_path_factory.mktemp("foreign") / "model.onnx")


@requires_fashion
def test_quantize_cli_on_fashion_mnist(cli, fp32: Path, tmp_path: Path):
    out, figures = tmp_path / "model_int8.onnx", tmp_path / "figures.json"
    result = cli("quantize", str(fp32), "--dataset", "fashion-mnist", "--out", str(out),
                 "--calibration-images", "64", "--limit", "300", "--batch-sizes", "1,8",
                 "--rounds", "1", "--json", str(figures))  # fmt: skip
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert "INT8 vs FP32" in text and "left in float" in text
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    r = json.loads(figures.read_text())
    # every conv, residual add and the classifier on integer kernels: nothing heavy left float
    ops = r["runtime_ops"]
    assert ops.get("QLinearConv") == 6 and ops.get("QLinearAdd") == 2 and ops.get("QGemm") == 1
    assert r["float_compute_ops"] == 0 and r["integer_ops"] >= 9
    assert r["settings"]["float_outputs"] == ["scores"]  # logits are not rounded to 8 bits
    assert not {"Conv", "Add", "Gemm"} & set(r["float_ops"])
    acc = r["accuracy"]
    assert acc["images"] == 300 and acc["data"] == "fashion-mnist test split"
    for name in ("fp32", "int8"):
        assert 0.0 <= acc[name]["top1"] <= acc[name]["top5"] <= 1.0
    assert acc["top1_delta"] == pytest.approx(acc["int8"]["top1"] - acc["fp32"]["top1"], abs=1e-6)
    assert 0.8 <= acc["agreement"] <= 1.0  # the same model, rounded: mostly the same answers
    assert set(r["speed"]) == {"1", "8"}
    for stats in r["speed"].values():
        assert stats["ratio"] == pytest.approx(stats["fp32"]["p50"] / stats["int8"]["p50"], 1e-2)
    assert r["files"]["int8"]["bytes"] == out.stat().st_size
    assert r["settings"]["calibration_images"] == 64
    assert r["settings"]["calibration_data"] == "fashion-mnist train split"
    assert r["input"] == {"name": INPUT, "shape": ["n", 1, 28, 28]}
    meta = read_metadata(out)
    assert meta["author"] == "someone else"  # the source's own metadata is kept
    assert meta["preprocess"]["mean"] == pytest.approx([0.2860]) and meta["preprocess"]["size"] == [
        28, 28,
    ]  # fmt: skip
    assert meta["labels"][0] == "T-shirt/top" and len(meta["labels"]) == CLASSES
    assert meta["quantization"]["target"] == "onnxruntime" and meta["source_file"] == "model.onnx"
    assert [i.name for i in onnx.load(str(out)).graph.input] == [INPUT]


def test_mistakes_are_one_line_and_write_nothing(cli, fp32: Path, tmp_path: Path):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    out = tmp_path / "int8.onnx"
    for args, message in (
        ([str(not_onnx), "--dataset", "fashion-mnist"], "is not an ONNX file"),
        ([str(fp32), "--dataset", "fashion-mnst"], "did you mean 'fashion-mnist'"),
    ):
        result = cli("quantize", *args, "--out", str(out))
        text = result.stdout + result.stderr
        assert result.returncode == 2 and text.startswith("error:"), text
        assert text.count("error:") == 1 and "Traceback" not in text, text
        assert message in " ".join(text.split()), text  # rich wraps long lines at 120 columns
        assert not out.exists() and list(tmp_path.iterdir()) == [not_onnx]


def test_existing_output_the_input_itself_and_no_images_are_refused(fp32: Path, tmp_path: Path):
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(CompressError, match="exists; pass --overwrite"):
        check_request(QuantizeRequest(fp32, out, dataset="fashion-mnist"))
    assert out.read_bytes() == b"keep me"
    with pytest.raises(CompressError, match="is the input file"):
        check_request(QuantizeRequest(fp32, fp32, dataset="fashion-mnist", overwrite=True))
    with pytest.raises(CompressError, match="--dataset NAME or --images DIR"):
        check_request(QuantizeRequest(fp32, tmp_path / "new.onnx"))


def test_graphs_that_are_not_image_classifiers_are_refused(tmp_path: Path):
    from onnx import TensorProto, helper

    def save(inputs: list, output_shape: list, name: str) -> Path:
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)
        node = helper.make_node("Cast", [inputs[0].name], ["y"], to=TensorProto.FLOAT)
        model = helper.make_model(helper.make_graph([node], "g", inputs, [out]))
        path = tmp_path / name
        onnx.save_model(model, str(path))
        return path

    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])
    mask = helper.make_tensor_value_info("m", TensorProto.FLOAT, ["n", 1, 8, 8])
    ints = helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 1, 8, 8])
    for path, message in (
        (save([image, mask], ["n", 1, 8, 8], "two.onnx"), "has 2 inputs"),
        (save([ints], ["n", 1, 8, 8], "ints.onnx"), "float32 expected"),
        (save([image], ["n", 1, 8, 8], "map.onnx"), "a classifier gives [batch, classes]"),
    ):
        with pytest.raises(CompressError, match=message.replace("[", r"\[")):
            read_input(path)
    with pytest.raises(CompressError, match="not found"):
        read_input(tmp_path / "missing.onnx")


def test_preprocessing_comes_from_flags_then_the_file_then_the_dataset():
    shape = ["n", 3, 32, 32]
    defaults = ((0.5,), (0.25,))
    stored = {"mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 1.0], "size": [32, 32]}
    pre = resolve_preprocess(shape, None, None, None, None, defaults)
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.25] * 3 and pre["size"] == [32, 32]
    assert resolve_preprocess(shape, stored, None, None, None, defaults)["mean"] == [0.1, 0.2, 0.3]
    flags = resolve_preprocess(shape, stored, [0.4] * 3, [0.3] * 3, None, defaults)
    assert flags["mean"] == [0.4] * 3 and flags["std"] == [0.3] * 3
    dynamic = resolve_preprocess(["n", 3, "h", "w"], None, [0.4], [0.3], 24, None)
    assert dynamic["size"] == [24, 24] and dynamic["channels"] == 3
    for args, message in (
        ((shape, None, None, None, None, None), "give --mean and --std"),
        ((["n", 3, "h", "w"], None, [0.4], [0.3], None, None), "give --image-size"),
        ((shape, None, [0.4], [0.3], 28, None), "fixed at 32x32"),
        ((shape, None, [0.4, 0.4], [0.3], None, None), "must have 3 values"),
        ((["n", 4, 8, 8], None, [0.4], [0.3], None, None), "4 input channels"),
    ):
        with pytest.raises(CompressError, match=message):
            resolve_preprocess(*args)


def _write_images(folder: Path, n: int, size: int = 12) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_images_folder_layouts(tmp_path: Path):
    pre = resolve_preprocess(["n", 1, 16, 16], None, [0.5], [0.5], None, None)
    for name in ("cat", "dog"):
        _write_images(tmp_path / "tree" / name, 5)
    tree = folder_images(tmp_path / "tree", pre, 4, None, known_labels=["dog", "bird", "cat"])
    assert tree.labelled and tree.classes == ["dog", "bird", "cat"]  # the file's names win
    assert (tree.calibration_count, tree.evaluation_count) == (4, 6)  # disjoint: 10 images
    x, y = next(tree.evaluation(16))
    assert x.shape == (6, 1, 16, 16) and x.dtype == np.float32 and set(y) <= {0, 2}
    assert next(tree.calibration(3)).shape == (3, 1, 16, 16)

    for split in ("train/a", "train/b", "test/a", "test/b"):
        _write_images(tmp_path / "split" / split, 3)
    split = folder_images(tmp_path / "split", pre, 100, None, known_labels=None)
    assert split.classes == ["a", "b"] and split.calibration_count == split.evaluation_count == 6
    assert split.description.endswith("/train") and split.evaluation_description.endswith("/test")

    _write_images(tmp_path / "flat", 5)
    flat = folder_images(tmp_path / "flat", pre, 2, None, known_labels=None)
    assert not flat.labelled and flat.evaluation_count == 3

    (tmp_path / "flat" / "broken.png").write_bytes(b"\x89PNG not really")
    broken = folder_images(tmp_path / "flat", pre, 100, None, known_labels=None)
    with pytest.raises(DataError, match=r"broken\.png"):
        list(broken.calibration(8))
    with pytest.raises(DataError, match="no such folder"):
        folder_images(tmp_path / "nowhere", pre, 2, None, known_labels=None)


def test_quantize_a_3_channel_model_on_an_image_folder(tmp_path: Path):
    source = export(tiny_resnet(channels=3), tmp_path / "rgb.onnx", size=16, channels=3)
    for name in ("a", "b", "c"):
        _write_images(tmp_path / "images" / name, 6)
    out = tmp_path / "rgb_int8.onnx"
    request = QuantizeRequest(source, out, images=tmp_path / "images", calibration_images=8,
                              mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], batch_sizes=(2,),
                              rounds=1, reduce_range="off")  # fmt: skip
    r = quantize_and_measure(request)
    assert r["settings"]["reduce_range"] is False and r["integer_ops"] >= 8
    assert r["accuracy"]["images"] == 10 and "int8" in r["accuracy"]
    assert read_metadata(out)["labels"] == ["a", "b", "c"]
    assert read_metadata(out)["preprocess"]["std"] == [0.25, 0.25, 0.25]


def test_reduce_range_choices():
    assert reduce_range_setting("on")[0] is True and reduce_range_setting("off")[0] is False
    auto, why = reduce_range_setting("auto")
    assert isinstance(auto, bool) and why.startswith("auto:")


def test_a_reduce_mean_pool_the_quantizer_left_float_runs_integer(tmp_path: Path):
    """The dynamo exporter's pool, ReduceMean over H and W, as onnxruntime's quantizer leaves it:
    Q -> DQ -> ReduceMean -> Q -> DQ, the shape known only before the first Q."""
    from onnx import TensorProto, helper, numpy_helper

    from compress.export.kernels import runtime_ops
    from compress.export.qdq import global_average_pools

    def const(name: str, value) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value), name)

    scale, zero = const("s", np.float32(0.05)), const("z", np.uint8(10))
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"]),
        helper.make_node("ReduceMean", ["rd", "axes"], ["m"], keepdims=1),
        helper.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]),
        helper.make_node("DequantizeLinear", ["mq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 1, 1])],
        [scale, zero, const("axes", np.array([2, 3], dtype=np.int64))],
        value_info=[helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 4, 5, 5])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    onnx.save_model(model, str(before))
    assert global_average_pools(model) == 1
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(after))
    assert "ReduceMean" in runtime_ops(before)
    ops = runtime_ops(after)
    assert ops.get("QLinearGlobalAveragePool") == 1 and "ReduceMean" not in ops
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(size=(3, 4, 5, 5)).astype(np.float32)
    want, got = (ort.InferenceSession(str(p)).run(None, {"x": x})[0] for p in (before, after))
    assert np.abs(want - got).max() <= 0.05 + 1e-6  # at most one step of the output's scale
