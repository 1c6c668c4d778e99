"""Models with external data, as large models come (issue 7), at a size a test can afford: the model of
``models/build_large.py`` (residual MLP blocks, weights in ``<file>.data``) with hidden 512 and three blocks,
6 MiB. graphopt's external-data output is chosen by size (over 2 GB); the tests lower that threshold, so the
same code path writes these outputs. The 2.2 GiB run is ``benchmarks/bench_large.py``, not a test.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import model as model_io
from graphopt.validate.numerics import run_model

BUILDER = Path(__file__).resolve().parent.parent / "models" / "build_large.py"
HIDDEN, LAYERS = 512, 3


def _builder():
    spec = importlib.util.spec_from_file_location("build_large", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def large_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "large.onnx"
    _builder().build(path, hidden=HIDDEN, layers=LAYERS)
    return path


@pytest.fixture
def external_threshold(monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 2**20)  # a stand-in for 2 GB


def _feeds(batch: int = 4) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).standard_normal((batch, HIDDEN), dtype=np.float32)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _external_locations(path: Path) -> dict[str, tuple[str, int, int]]:
    """Initializer name -> (location, offset, length) of the tensors stored outside the model file."""
    stored = onnx.load_model(path, load_external_data=False)
    found = {}
    for tensor in stored.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            found[tensor.name] = (info["location"], int(info.get("offset", 0)), int(info["length"]))
    return found


def _data_file(model: Path) -> Path:
    """The one external data file the model refers to: beside it, named after it (``<name>[.N].data``)."""
    (location,) = {location for location, _, _ in _external_locations(model).values()}
    assert os.path.basename(location) == location  # beside the model, not in another folder
    assert location.startswith(model.name + ".") and location.endswith(".data")
    return model.parent / location


def test_the_builder_writes_external_data_that_onnxruntime_runs(large_model):
    folder = large_model.parent
    assert sorted(os.listdir(folder)) == ["large.onnx", "large.onnx.data"]  # no staging files left
    locations = _external_locations(large_model)
    assert {location for location, _, _ in locations.values()} == {"large.onnx.data"}
    assert len([name for name in locations if name.endswith("_weight")]) == 2 * LAYERS
    ops = {node.op_type for node in onnx.load_model(large_model, load_external_data=False).graph.node}
    assert {"BatchNormalization", "MatMul", "Gemm", "ReduceMean", "LayerNormalization"} <= ops
    (output,) = run_model(str(large_model), _feeds()).values()
    assert np.isfinite(output).all() and 0.5 < output.std() < 2


@pytest.mark.parametrize("passes", ["lossless", "quantize-qdq(mode=dynamic)"])
def test_optimized_output_has_its_external_data_beside_it_and_runs_alike(large_model, tmp_path, monkeypatch,
                                                                         external_threshold, passes):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(tmp_path)  # a relative output path: the data still goes next to the output
    optimized, report = graphopt.optimize(str(large_model), os.path.join("out", "model.onnx"), passes=passes)
    out = out_dir / "model.onnx"
    data = _data_file(out)
    assert sorted(os.listdir(out_dir)) == ["model.onnx", data.name]
    for location, offset, length in _external_locations(out).values():  # 1 MiB and more: on 64 KiB
        assert offset + length <= (out_dir / location).stat().st_size
        assert length < 2**20 or offset % 2**16 == 0
    assert out.stat().st_size < 2**20 < data.stat().st_size
    assert any(tensor.HasField("raw_data") for tensor in optimized.graph.initializer)  # the caller's copy

    expected = run_model(str(large_model), _feeds())["output"]
    got = run_model(str(out), _feeds())["output"]  # onnxruntime, from the path: it reads the data file
    if passes == "lossless":
        assert report.passes and report.input.bytes > report.output.bytes > 0
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    else:
        assert _cosine(got, expected) > 0.99
    loaded = graphopt.load(out)  # and graphopt reads it back
    assert len(loaded.graph.initializer) == len(optimized.graph.initializer)


def test_an_existing_output_and_its_data_are_replaced_from_the_output_folder(large_model, tmp_path, monkeypatch,
                                                                             external_threshold):
    monkeypatch.chdir(tmp_path)  # onnx's own external-data save refused to write when <out>.data existed here
    graphopt.optimize(str(large_model), "model.onnx", passes="quantize-qdq(mode=dynamic)")
    quantized_size = _data_file(tmp_path / "model.onnx").stat().st_size
    graphopt.optimize(str(large_model), "model.onnx", passes="lossless")
    data = _data_file(tmp_path / "model.onnx")
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", data.name]  # the previous data file is gone
    assert data.stat().st_size > 3 * quantized_size  # float32 again, not int8
    np.testing.assert_allclose(run_model("model.onnx", _feeds())["output"],
                               run_model(str(large_model), _feeds())["output"], rtol=1e-4, atol=1e-4)


def test_the_input_and_its_data_are_left_as_they_were(large_model, tmp_path, external_threshold):
    data = large_model.parent / "large.onnx.data"
    before = (large_model.read_bytes(), data.stat().st_size, data.stat().st_mtime_ns)
    graphopt.optimize(str(large_model), str(tmp_path / "model.onnx"), passes="lossless")
    assert (large_model.read_bytes(), data.stat().st_size, data.stat().st_mtime_ns) == before


def test_external_data_also_holds_subgraph_initializers_and_the_callers_model_is_unchanged(tmp_path):
    helper = onnx.helper
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(shape, dtype=np.float32)
               for name, shape in (("w", (64, 64)), ("then_bias", (64,)), ("else_bias", (64,)))}

    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Add", ["y", f"{name}_bias"], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, [1, 64])],
                                 [onnx.numpy_helper.from_array(weights[f"{name}_bias"], f"{name}_bias")])

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]),
         helper.make_node("If", ["flag"], ["z"], then_branch=branch("then"), else_branch=branch("else"))],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64]),
              helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.numpy_helper.from_array(weights["w"], "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    graphopt.save(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before
    stored = onnx.load_model(tmp_path / "m.onnx", load_external_data=False)
    tensors = list(onnx.external_data_helper._get_initializer_tensors(stored))
    assert sorted(t.name for t in tensors) == ["else_bias", "then_bias", "w"]
    assert all(t.data_location == onnx.TensorProto.EXTERNAL and not t.HasField("raw_data") for t in tensors)
    feeds = {"x": rng.standard_normal((1, 64), dtype=np.float32)}
    for flag in (True, False):
        expected = feeds["x"] @ weights["w"] + weights["then_bias" if flag else "else_bias"]
        got = run_model(str(tmp_path / "m.onnx"), {**feeds, "flag": np.array(flag)})["z"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
