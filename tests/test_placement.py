"""node_placement: float models run as float kernels, onnxruntime turns a QDQ model's groups into integer
kernels only when it optimizes, the trace parser reads real and hand-written traces, and no profile files are
left behind."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, get_all_operator_schema
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from graphopt.validate.placement import INT8_KERNELS, executed_nodes, node_placement

CPU = "CPUExecutionProvider"
DISABLE_ALL = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
INPUT_SHAPE = (1, 3, 8, 8)


def _conv_net() -> onnx.ModelProto:
    """x -> Conv(8, 3x3, bias) -> Relu -> Conv(4, 3x3) -> Relu -> y, random weights."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (4, 8, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["y"], name="relu2")]
    graph = helper.make_graph(nodes, "conv_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, INPUT_SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class RandomBatches(CalibrationDataReader):
    """A few random input batches for calibration."""

    def __init__(self, count: int = 4):
        rng = np.random.default_rng(1)
        self.batches = iter([{"x": rng.standard_normal(INPUT_SHAPE).astype(np.float32)} for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def float_model() -> onnx.ModelProto:
    return _conv_net()


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory, float_model) -> onnx.ModelProto:
    folder = tmp_path_factory.mktemp("qdq")
    onnx.save_model(float_model, folder / "float.onnx")
    quantize_static(str(folder / "float.onnx"), str(folder / "qdq.onnx"), RandomBatches(),
                    quant_format=QuantFormat.QDQ)
    return onnx.load_model(folder / "qdq.onnx")


@pytest.fixture
def feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(2).standard_normal(INPUT_SHAPE).astype(np.float32)}


def test_float_model_runs_float_kernels_on_cpu(float_model, feeds):
    placement = node_placement(float_model, feeds)
    assert set(placement.provider_nodes) == {CPU} and set(placement.ops) == {CPU}
    assert placement.provider_nodes[CPU] == sum(placement.ops[CPU].values()) >= 1
    assert (placement.model_q, placement.model_dq, placement.int8_kernels) == (0, 0, 0)
    assert (placement.float_q, placement.float_dq) == (0, 0)


def test_unoptimized_float_model_runs_every_node(float_model, feeds):
    placement = node_placement(float_model, feeds, optimization_level=DISABLE_ALL)
    assert placement.ops == {CPU: {"Conv": 2, "Relu": 2}}
    assert placement.provider_nodes == {CPU: 4}


def test_qdq_model_becomes_integer_kernels_when_optimized(qdq_model, feeds):
    placement = node_placement(qdq_model, feeds)
    ops = placement.ops[CPU]
    assert (placement.model_q, placement.model_dq) == (3, 6)
    assert placement.int8_kernels == ops["QLinearConv"] == 2
    assert "Conv" not in ops
    assert placement.float_q == ops.get("QuantizeLinear", 0) and placement.float_dq == ops.get("DequantizeLinear", 0)
    assert 1 <= placement.float_q < placement.model_q  # the input still needs quantizing ...
    assert 1 <= placement.float_dq < placement.model_dq  # ... and the output dequantizing


def test_unoptimized_qdq_model_keeps_every_q_and_dq_standalone(qdq_model, feeds):
    placement = node_placement(qdq_model.SerializeToString(), feeds, optimization_level=DISABLE_ALL)
    assert placement.int8_kernels == 0
    assert (placement.float_q, placement.float_dq) == (placement.model_q, placement.model_dq) == (3, 6)
    assert placement.provider_nodes == {CPU: len(qdq_model.graph.node)}
    assert placement.ops[CPU]["Conv"] == 2


def test_to_dict(qdq_model, feeds):
    as_dict = node_placement(qdq_model, feeds).to_dict()
    assert set(as_dict) == {"provider_nodes", "ops", "model_q", "model_dq", "int8_kernels", "float_q", "float_dq"}
    assert as_dict["ops"][CPU]["QLinearConv"] == 2


def _kernel_event(name: str, op_type: str, provider: str, **args) -> dict:
    return {"cat": "Node", "pid": 1, "tid": 1, "dur": 5, "ts": 10, "ph": "X", "name": f"{name}_kernel_time",
            "args": {"op_name": op_type, "provider": provider, "node_index": "0", **args}}


HAND_WRITTEN_TRACE = [
    {"cat": "Session", "pid": 1, "tid": 1, "dur": 200, "ts": 1, "ph": "X", "name": "model_loading_array", "args": {}},
    {"cat": "Session", "pid": 1, "tid": 1, "dur": 900, "ts": 2, "ph": "X", "name": "session_initialization",
     "args": {}},
    {"cat": "Node", "pid": 1, "tid": 1, "dur": 1, "ts": 9, "ph": "X", "name": "q_fence_before",
     "args": {"op_name": "QuantizeLinear"}},
    _kernel_event("q", "QuantizeLinear", CPU, activation_size="768", output_type_shape=[{"uint8": [1, 3]}]),
    {"cat": "Node", "pid": 1, "tid": 1, "dur": 1, "ts": 16, "ph": "X", "name": "q_fence_after",
     "args": {"op_name": "QuantizeLinear"}},
    _kernel_event("conv1_token_5", "QLinearConv", CPU),
    _kernel_event("MatMul_3", "MatMul", "CUDAExecutionProvider"),
    _kernel_event("body_add", "Add", CPU),
    _kernel_event("body_add", "Add", CPU),  # a Loop body node runs twice: one node
    _kernel_event("dq", "DequantizeLinear", CPU),
    {"cat": "Kernel", "name": "volta_sgemm_128x64", "args": {"op_name": "MatMul"}},
    {"cat": "Node", "name": "no_args_kernel_time"},
    {"cat": "Node", "name": "odd_kernel_time", "args": {"op_name": 3, "provider": CPU}},
    "not an event",
    {"cat": "Session", "pid": 1, "tid": 1, "dur": 60, "ts": 8, "ph": "X", "name": "model_run", "args": {}},
]
HAND_WRITTEN_NODES = [(CPU, "QuantizeLinear"), (CPU, "QLinearConv"), ("CUDAExecutionProvider", "MatMul"),
                      (CPU, "Add"), (CPU, "DequantizeLinear")]


@pytest.mark.parametrize("trace", [HAND_WRITTEN_TRACE, {"traceEvents": HAND_WRITTEN_TRACE}, [], {}],
                         ids=["list", "object", "empty-list", "empty-object"])
def test_executed_nodes_of_a_hand_written_trace(trace):
    expected = HAND_WRITTEN_NODES if trace else []
    assert executed_nodes(trace) == expected


def test_executed_nodes_of_a_real_trace(float_model, feeds, tmp_path):
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    options.graph_optimization_level = DISABLE_ALL
    session = ort.InferenceSession(float_model.SerializeToString(), options, providers=[CPU])
    session.run(None, feeds)
    with open(session.end_profiling(), encoding="utf-8") as handle:
        trace = json.load(handle)
    assert sorted(executed_nodes(trace)) == [(CPU, "Conv"), (CPU, "Conv"), (CPU, "Relu"), (CPU, "Relu")]


def test_int8_kernels_are_onnxruntime_operators():
    """Every name in INT8_KERNELS is an operator onnxruntime knows (a typo would never be counted)."""
    known = {schema.name for schema in get_all_operator_schema()}
    assert INT8_KERNELS <= known


@pytest.fixture
def isolated_folders(tmp_path, monkeypatch) -> tuple[str, str]:
    """An empty temporary-files folder and an empty working folder, both watched by the test."""
    temp, work = tmp_path / "temp", tmp_path / "work"
    temp.mkdir()
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.chdir(work)
    return str(temp), str(work)


def test_no_profile_files_left_behind(isolated_folders, float_model, feeds):
    node_placement(float_model, feeds)
    assert [os.listdir(folder) for folder in isolated_folders] == [[], []]


def test_no_profile_files_left_behind_when_the_run_fails(isolated_folders, float_model):
    wrong_shape = {"x": np.zeros((1, 5, 8, 8), dtype=np.float32)}
    with pytest.raises(InvalidArgument, match="input: x"):
        node_placement(float_model, wrong_shape)
    assert [os.listdir(folder) for folder in isolated_folders] == [[], []]
