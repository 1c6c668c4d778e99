"""quantize-qdq: the quantization math, the QDQ structure, placement onnxruntime fuses, accuracy on the digits
models, TensorRT's lint, the interface, and a negative test per reason a node or the whole pass is declined.

The real models are quantized the way users call it: ``graphopt.optimize(path, passes="lossless,quantize-qdq",
data=calibration)`` (lossless first, so BatchNormalization is folded into the Conv weights). Accuracy is
measured on onnxruntime as deployed (``ORT_ENABLE_ALL``: the int8 kernels run) on ``digits_test.npz``.

Everything here runs ``mode=static``: what is placed and written, on all the data. Auto mode (the default),
which builds on it, is tested in ``test_quantize_auto.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import pathlib

import numpy as np
import onnx
import onnx.printer
import onnx_graphsurgeon as gs
import onnxruntime
import pytest
from conftest import op_counts, parse_model, random_feeds, total_stats
from graph_strategies import GeneratedModel, models
from hypothesis import HealthCheck, given, note, settings

import graphopt
from graphopt.pipeline import format_pipeline, parse_pipeline
from graphopt.quantize.placement import TARGETS as TARGET_RULES
from graphopt.quantize.placement import shallow_conv_reason
from graphopt.quantize.rewriting import activation_params, bias_params
from graphopt.quantize.weights import QuantParams, quantize, weight_params
from graphopt.validate.numerics import cpu_session, run_model, with_outputs
from graphopt.validate.placement import node_placement
from graphopt.validate.tensorrt_lint import lint_tensorrt

MODELS_DIR = pathlib.Path(__file__).resolve().parents[1] / "models"
CALIBRATION = str(MODELS_DIR / "digits_calib.npz")
MODELS = ["digits_cnn", "resnet_small", "mobilenetv2_small"]
TARGETS = ["cpu", "tensorrt"]
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@functools.cache
def float_model(name: str) -> onnx.ModelProto:
    return graphopt.optimize(str(MODELS_DIR / f"{name}.onnx"), passes="lossless").model


def static(options: str = "") -> str:
    """The pipeline text of quantize-qdq in static mode with ``options`` (pipeline text too)."""
    return f"quantize-qdq({','.join(filter(None, ('mode=static', options)))})"


@functools.cache
def quantized(name: str, options: str = ""):
    """(model, report) of ``lossless,quantize-qdq(mode=static,options)`` on a model of models/, calibrated on
    digits_calib."""
    return graphopt.optimize(str(MODELS_DIR / f"{name}.onnx"), passes=f"lossless,{static(options)}", data=CALIBRATION,
                             check_changed=True)


@functools.cache
def evaluation_data() -> dict[str, np.ndarray]:
    with np.load(MODELS_DIR / "digits_test.npz") as loaded:
        return {name: loaded[name] for name in loaded.files}


def accuracy(model: onnx.ModelProto) -> float:
    """Top-1 accuracy in percent on digits_test, on onnxruntime with its optimizations on (as deployed)."""
    data = evaluation_data()
    (logits,) = cpu_session(model, optimize=True).run(["logits"], {"input": data["input"]})
    return float(np.mean(logits.argmax(axis=1) == data["label"]) * 100)


def nodes_by_output(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in model.graph.node for name in node.output}


def readers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if name in node.input]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def attribute(node: onnx.NodeProto, name: str, default=None):
    found = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


def quantizer(report) -> object:
    """The quantize-qdq record of an optimize report."""
    return next(record for record in report.passes if record.name == "quantize-qdq")


# ---------------------------------------------------------------------------------------------------------
# The math


def test_asymmetric_activation_params():
    params = activation_params(-1.0, 3.0, signed=False)
    assert params.scale.dtype == np.float32 and params.zero_point.dtype == np.uint8
    assert params.scale == np.float32(4 / 255)
    assert params.zero_point == 64  # round(1 / (4 / 255)) = round(63.75)


def test_asymmetric_range_is_widened_to_include_zero():
    params = activation_params(2.0, 4.0, signed=False)
    assert params.scale == np.float32(4 / 255) and params.zero_point == 0


def test_symmetric_activation_params():
    params = activation_params(-2.0, 1.0, signed=True)
    assert params.scale == np.float32(2 / 127)
    assert params.zero_point.dtype == np.int8 and params.zero_point == 0


def test_all_zero_range_gets_scale_one():
    assert activation_params(0.0, 0.0, signed=False).scale == 1
    assert activation_params(0.0, 0.0, signed=True).scale == 1


def test_quantize_rounds_half_to_even_and_saturates():
    params = QuantParams(np.array(1.0, np.float32), np.array(10, np.uint8))
    values = np.array([0.5, 1.5, 2.5, -0.5, 300.0, -300.0], np.float32)
    np.testing.assert_array_equal(quantize(values, params), [10, 12, 12, 10, 255, 0])
    signed = QuantParams(np.array(1.0, np.float32), np.array(0, np.int8))
    np.testing.assert_array_equal(quantize(values, signed), [0, 2, 2, 0, 127, -128])


def test_weight_params_per_channel():
    weight = np.array([[[[1.0, -2.0]]], [[[0.5, 0.25]]]], np.float32)  # [2, 1, 1, 2]
    params = weight_params(weight, axis=0)
    np.testing.assert_array_equal(params.scale, np.array([2 / 127, 0.5 / 127], np.float32))
    assert params.zero_point.dtype == np.int8 and params.axis == 0
    np.testing.assert_array_equal(quantize(weight, params).reshape(2, 2), [[64, -127], [127, 64]])


def test_weight_params_per_tensor():
    weight = np.array([[1.0, -2.0], [0.5, 0.25]], np.float32)
    params = weight_params(weight, axis=None)
    assert params.scale.shape == () and params.scale == np.float32(2 / 127) and params.axis is None


def test_bias_scale_is_input_scale_times_weight_scale():
    weight = weight_params(np.array([[1.0], [-4.0]], np.float32), axis=0)
    params = bias_params(np.float32(0.1), weight)
    np.testing.assert_array_equal(params.scale, (np.float32(0.1) * weight.scale.astype(np.float64)).astype(np.float32))
    assert params.zero_point.dtype == np.int32 and params.axis == 0
    bias = np.array([1.0, -1.0])
    np.testing.assert_array_equal(quantize(bias, params), np.rint(bias / params.scale))


def test_weight_scale_widens_where_the_int32_bias_would_overflow():
    """A channel with near-zero weights and a large bias (BatchNormalization with gamma ~ 0 folded in)."""
    weight = np.array([[1.0], [1e-12], [0.0]], np.float32)
    bias = np.array([1.0, 5.0, 0.0], np.float32)
    input_scale = np.float32(0.01)
    params = weight_params(weight, axis=0, bias=bias, input_scale=input_scale)
    assert params.scale[0] == np.float32(1 / 127)
    assert params.scale[1] == np.float32(5.0 / (0.01 * (2**31 - 1)))
    assert params.scale[2] == 1  # zero weights and zero bias
    bias_q = quantize(bias, bias_params(input_scale, params))
    assert abs(int(bias_q[1])) <= 2**31 - 1
    restored = bias_q.astype(np.float64) * bias_params(input_scale, params).scale
    np.testing.assert_allclose(restored, bias, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# The real models: structure, size, accuracy, placement


@pytest.mark.parametrize("name", MODELS)
def test_qdq_structure_cpu(name):
    model, _ = quantized(name)
    values, producers = initializers(model), nodes_by_output(model)
    weighted = [node for node in model.graph.node if node.op_type in WEIGHTED]
    assert weighted
    for node in weighted:
        x_dq, w_dq = producers[node.input[0]], producers[node.input[1]]
        assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"
        assert values[x_dq.input[1]].dtype == np.float32 and values[x_dq.input[1]].shape == ()
        assert values[x_dq.input[2]].dtype == np.uint8 and values[x_dq.input[2]].shape == ()
        weight, weight_scale = values[w_dq.input[0]], values[w_dq.input[1]]
        axis = 0 if node.op_type == "Conv" or attribute(node, "transB", 0) else 1
        assert weight.dtype == np.int8 and np.abs(weight).max() <= 127
        assert attribute(w_dq, "axis") == axis and weight_scale.shape == (weight.shape[axis],)
        assert values[w_dq.input[2]].dtype == np.int8 and not values[w_dq.input[2]].any()
        if len(node.input) > 2:
            b_dq = producers[node.input[2]]
            assert b_dq.op_type == "DequantizeLinear" and values[b_dq.input[0]].dtype == np.int32
            assert values[b_dq.input[2]].dtype == np.int32 and not values[b_dq.input[2]].any()
            expected = (values[x_dq.input[1]].astype(np.float64) * weight_scale).astype(np.float32)
            np.testing.assert_array_equal(values[b_dq.input[1]], expected)
    read_in_float = [name for node in weighted for name in node.input if name in values]
    assert not read_in_float, "a weight or bias stayed float32"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_runs_on_onnxruntime_and_file_is_much_smaller(name, target):
    """Weights shrink 4x; what is left is per-channel scales (and int32 biases) and the Q/DQ nodes: the small
    MobileNetV2, with many channels for its weights (depthwise), ends at 0.44 of its float size. (Its stride-2
    stem on one channel reads it through SpaceToDepth: its 3x3 kernel becomes 2x2 on 4 channels, 16 weights
    where it had 9, the rest zeros.)"""
    model, _ = quantized(name, f"target={target}")
    run_model(model, {"input": evaluation_data()["input"][:2]})
    reference = float_model(name)
    assert model.ByteSize() < (0.3 if name == "digits_cnn" else 0.45) * reference.ByteSize()
    values, producers = initializers(model), nodes_by_output(model)
    int8 = sum(values[node.input[0]].nbytes for node in model.graph.node
               if node.op_type == "DequantizeLinear" and values.get(node.input[0], np.float32(0)).dtype == np.int8)
    float_weights = sum(value.nbytes for value in initializers(reference).values() if value.ndim >= 2)
    originals = {node.name: initializers(reference)[node.input[1]] for node in reference.graph.node
                 if node.op_type == "Conv"}
    added = sum(values[producers[node.input[1]].input[0]].size - originals[node.name].size
                for node in model.graph.node if node.op_type == "Conv" and "space_to_depth" in node.input[1])
    assert added == (16 - 9) * 16 * (name == "mobilenetv2_small" and target == "cpu")  # 16 stem channels
    assert int8 == float_weights / 4 + added


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_accuracy_within_one_point_of_float(name, target):
    reference = accuracy(float_model(name))
    measured = accuracy(quantized(name, f"target={target}")[0])
    assert measured >= reference - 1.0, f"{name} {target}: float {reference:.2f}%, int8 {measured:.2f}%"


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
@pytest.mark.parametrize("name", MODELS)
def test_other_calibration_methods(name, method):
    model, _ = quantized(name, f"method={method}")
    assert accuracy(model) >= accuracy(float_model(name)) - 1.0


@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_runs_int8_kernels_and_no_standalone_dequantize(name):
    """With ORT_ENABLE_ALL every Q/DQ fuses into an int8 kernel but the one QuantizeLinear of the graph input:
    the final Gemm writes float logits itself (QGemm), so not even the output needs a DequantizeLinear."""
    model, _ = quantized(name)
    placement = node_placement(model, {"input": evaluation_data()["input"][:4]})
    executed = placement.ops["CPUExecutionProvider"]
    stats = quantizer(quantized(name).report).result.stats
    assert placement.int8_kernels == sum(stats.get(f"quantized.{op}", 0)
                                         for op in ("Conv", "Gemm", "Add", "GlobalAveragePool"))
    assert placement.float_dq == 0 and placement.float_q == 1, executed
    assert not {"Conv", "Gemm", "Relu", "Clip"} & set(executed), executed


@pytest.mark.parametrize("name", MODELS)
def test_tensorrt_target_passes_lint(name):
    model, _ = quantized(name, "target=tensorrt")
    findings = lint_tensorrt(model)
    assert not [finding for finding in findings if finding.severity == "error"], findings
    values = initializers(model)
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert values[node.input[2]].dtype == np.int8 and not values[node.input[2]].any()
    for node in model.graph.node:
        if node.op_type in WEIGHTED and len(node.input) > 2:
            assert node.input[2] in values and values[node.input[2]].dtype == np.float32  # biases stay float


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["digits_cnn", "resnet_small"])
def test_no_qdq_between_conv_and_relu(name, target):
    model, _ = quantized(name, f"target={target}")
    for node in model.graph.node:
        if node.op_type == "Conv":
            following = readers(model, node.output[0])
            assert [n.op_type for n in following] in (["Relu"], ["Add"], ["QuantizeLinear"]), following
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    assert relus and all(nodes_by_output(model)[n.input[0]].op_type in ("Conv", "Add", "Gemm") for n in relus)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_graph_inputs_and_outputs_unchanged(name, target):
    def interface(model):
        return [(v.name, v.type.SerializeToString()) for v in (*model.graph.input, *model.graph.output)]
    assert interface(quantized(name, f"target={target}")[0]) == interface(float_model(name))


def test_stats_count_quantized_nodes_per_op_type():
    stats = quantizer(quantized("digits_cnn").report).result.stats
    assert {key: count for key, count in stats.items() if key.startswith("quantized.")} == {
        "quantized.Conv": 2, "quantized.MaxPool": 2, "quantized.Flatten": 1, "quantized.Gemm": 2}


def test_tensorrt_reports_the_nodes_it_leaves_to_tensorrt():
    record = quantizer(quantized("digits_cnn", "target=tensorrt").report)
    assert record.result.stats["skipped.left_to_tensorrt"] == 3  # two MaxPool, one Flatten
    assert any("[/pool1/MaxPool]" in str(d) and "left_to_tensorrt" in str(d) for d in record.result.diagnostics)


# ---------------------------------------------------------------------------------------------------------
# Options, exclusions, declines


def test_pipeline_text_round_trips():
    text = "quantize-qdq(method=percentile,target=tensorrt,exclude_op_types=[Gemm,Add],exclude_nodes=['a,b'])"
    pipeline = parse_pipeline(text)
    assert format_pipeline(parse_pipeline(format_pipeline(pipeline))) == format_pipeline(pipeline)
    assert pipeline.children()[0].values["exclude_nodes"] == ("a,b",)


def test_exclude_op_types():
    model, report = quantized("digits_cnn", "exclude_op_types=[Gemm]")
    values = initializers(model)
    gemms = [node for node in model.graph.node if node.op_type == "Gemm"]
    assert all(values[node.input[1]].dtype == np.float32 for node in gemms)
    record = quantizer(report)
    assert record.result.stats["skipped.excluded_op_type"] == 2
    assert sum("Gemm left in float (excluded_op_type)" in str(d) for d in record.result.diagnostics) == 2
    assert accuracy(model) >= accuracy(float_model("digits_cnn")) - 1.0


def test_exclude_nodes():
    model, report = quantized("digits_cnn", "exclude_nodes=[/conv2/Conv,no_such_node]")
    conv2 = next(node for node in model.graph.node if node.name == "/conv2/Conv")
    assert conv2.input[1] in initializers(model)  # its weight is read straight from a float initializer
    conv1 = next(node for node in model.graph.node if node.name == "/conv1/Conv")
    assert nodes_by_output(model)[conv1.input[1]].op_type == "DequantizeLinear"
    diagnostics = [str(d) for d in quantizer(report).result.diagnostics]
    assert any("[/conv2/Conv]" in d and "excluded_node" in d for d in diagnostics)
    assert any("no_such_node" in d and d.startswith("warning") for d in diagnostics)


def test_no_data_declines_with_a_diagnostic():
    model, report = graphopt.optimize(str(MODELS_DIR / "digits_cnn.onnx"), passes="lossless,quantize-qdq")
    assert "QuantizeLinear" not in op_counts(model)
    assert total_stats(report)["skipped.no_data"] == 1
    assert any("needs calibration data" in d and d.startswith("warning") for d in report.diagnostics)


def test_synthetic_data_quantizes_with_a_warning():
    model, report = graphopt.optimize(str(MODELS_DIR / "digits_cnn.onnx"),
                                      passes=f"lossless,{static('synthetic=true')}", check_changed=True)
    assert op_counts(model)["QuantizeLinear"] > 0
    assert any("random inputs" in d and d.startswith("warning") for d in report.diagnostics)


def test_second_run_changes_nothing():
    once, _ = quantized("digits_cnn")
    _, report = graphopt.optimize(once, passes="quantize-qdq", data=CALIBRATION, check_changed=True)
    assert not report.passes[0].changed
    assert dict(report.passes[0].result.stats) == {"skipped.already_quantized": 1}


def test_dynamic_mode_needs_no_data():
    """mode=dynamic hands the graph to graphopt.quantize.dynamic (tested in test_quantize_dynamic.py); the pass
    adds the warning for names in exclude_nodes that name no node."""
    model = parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,5,4] x) => (float[N,5,3] y) <float[4,3] w = {{{",".join(str(i - 6) for i in range(12))}}}> {{
       y = MatMul (x, w)
    }}
    """)
    optimized, report = graphopt.optimize(model, passes="quantize-qdq(mode=dynamic,exclude_nodes=[no_such_node])",
                                          check_changed=True)
    assert op_counts(optimized)["DynamicQuantizeLinear"] == 1 and op_counts(optimized)["MatMulInteger"] == 1
    assert dict(quantizer(report).result.stats) == {"quantized.MatMul": 1}
    assert [str(d) for d in quantizer(report).result.diagnostics] == [
        "warning: exclude_nodes names no node of the main graph: 'no_such_node'"]
    feeds = random_feeds(model)
    np.testing.assert_allclose(run_model(optimized, feeds)["y"], run_model(model, feeds)["y"], rtol=0.05, atol=0.1)


def test_opset_below_13_declines():
    model = parse_model("""
    <ir_version: 7, opset_import: ["" : 12]>
    g (float[1,2,4,4] x) => (float[1,2,4,4] y) <float[2,2,1,1] w = {1,2,3,4}> { y = Conv (x, w) }
    """)
    optimized, report = graphopt.optimize(model, passes="quantize-qdq(synthetic=true)")
    assert total_stats(report) == {"skipped.opset_below_13": 1}
    assert op_counts(optimized) == {"Conv": 1}


# ---------------------------------------------------------------------------------------------------------
# Tiny models: shared weights, interface, Gemm/MatMul axes, and each per-node reason

SHARED_WEIGHT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,6,6] x) => (float[N,4,6,6] y, float[N,4,6,6] h, float[N,4,6,6] z) <float[4,4,3,3] w = {WEIGHT}> {
   c1 = Conv <pads = [1, 1, 1, 1]> (x, w)
   h = Relu (c1)
   y = Conv <pads = [1, 1, 1, 1]> (h, w)
   z = Conv <pads = [1, 1, 1, 1]> (x, w)
}
""".replace("WEIGHT", ",".join(f"{v:.4f}" for v in np.random.default_rng(0).standard_normal(144)))


def quantize_tiny(text: str, options: str = "", samples: int = 16):
    model = parse_model(text)
    data = random_feeds(model, seed=1, batch=samples)
    return model, *graphopt.optimize(model, passes=static(options), data=data, check_changed=True)


def test_shared_weight_is_quantized_once():
    model, optimized, _ = quantize_tiny(SHARED_WEIGHT)
    int8 = [name for name, value in initializers(optimized).items() if value.dtype == np.int8 and value.size == 144]
    assert len(int8) == 1
    (weight_dq,) = readers(optimized, int8[0])
    assert [n.op_type for n in readers(optimized, weight_dq.output[0])] == ["Conv"] * 3
    placement = node_placement(optimized, random_feeds(model))  # onnxruntime gives each Conv its own copy
    assert placement.int8_kernels == 3 and placement.float_dq == 3  # the three graph outputs y, h, z


def test_shared_weight_stays_float_for_an_excluded_reader():
    model = parse_model(SHARED_WEIGHT)
    model.graph.node[3].name = "excluded"
    optimized, _ = graphopt.optimize(model, passes=static("exclude_nodes=[excluded]"),
                                     data=random_feeds(model, seed=1, batch=16))
    values = initializers(optimized)
    excluded = next(node for node in optimized.graph.node if node.name == "excluded")
    assert values[excluded.input[1]].dtype == np.float32
    assert sum(value.dtype == np.int8 and value.size == 144 for value in values.values()) == 1


def test_intermediate_graph_output_keeps_its_name_and_is_dequantized():
    model, optimized, _ = quantize_tiny(SHARED_WEIGHT)
    assert [o.name for o in optimized.graph.output] == ["y", "h", "z"]
    producer = nodes_by_output(optimized)["h"]
    assert producer.op_type == "DequantizeLinear"  # QLinearConv writes uint8: h is what the int8 model computes
    feeds = random_feeds(model, seed=2)
    expected, actual = run_model(model, feeds), run_model(optimized, feeds)
    for name in ("y", "h", "z"):
        scale = np.abs(expected[name]).max()
        np.testing.assert_allclose(actual[name], expected[name], atol=0.05 * scale)


def test_graph_input_read_by_float_and_int8_nodes():
    """x feeds a quantized Conv and a float Sigmoid: only the Conv reads the dequantized copy."""
    _, optimized, _ = quantize_tiny("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,2,4,4] x) => (float[N,2,4,4] y, float[N,2,4,4] s) <float[2,2,1,1] w = {1,2,3,4}> {
       y = Conv (x, w)
       s = Sigmoid (x)
    }
    """)
    assert [n.op_type for n in readers(optimized, "x")] == ["QuantizeLinear", "Sigmoid"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_weight_axis_follows_trans_b(trans_b, target):
    shape = "3,4" if trans_b else "4,3"
    _, optimized, _ = quantize_tiny(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,3] y) <float[{shape}] w = {{{",".join(str(i - 6) for i in range(12))}}},
                                       float[3] b = {{1, 2, 3}}> {{
       h = Gemm <transB = {trans_b}> (x, w, b)
       y = Relu (h)
    }}
    """, f"target={target}")
    gemm = next(node for node in optimized.graph.node if node.op_type == "Gemm")
    weight_dq = nodes_by_output(optimized)[gemm.input[1]]
    assert attribute(weight_dq, "axis") == (0 if trans_b else 1)
    if target == "tensorrt":
        assert not [finding for finding in lint_tensorrt(optimized) if finding.severity == "error"]


def test_matmul_weight_per_column_and_int8_kernel():
    model, optimized, _ = quantize_tiny(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,5,4] x) => (float[N,5,3] y) <float[4,3] w = {{{",".join(str(i - 6) for i in range(12))}}}> {{
       h = MatMul (x, w)
       y = Relu (h)
    }}
    """)
    matmul = next(node for node in optimized.graph.node if node.op_type == "MatMul")
    weight_dq = nodes_by_output(optimized)[matmul.input[1]]
    assert attribute(weight_dq, "axis") == 1 and initializers(optimized)[weight_dq.input[1]].shape == (3,)
    assert node_placement(optimized, random_feeds(model)).int8_kernels == 1


def test_per_channel_false_gives_one_weight_scale():
    _, optimized, _ = quantize_tiny(SHARED_WEIGHT, "per_channel=false")
    values = initializers(optimized)
    weight_dqs = [node for node in optimized.graph.node
                  if node.op_type == "DequantizeLinear" and node.input[0] in values]
    assert weight_dqs and all(values[n.input[1]].shape == () and attribute(n, "axis") is None for n in weight_dqs)


def pooled_model(activation: str) -> onnx.ModelProto:
    """Conv(stem, 1 -> 16) -> ``activation`` (or nothing) -> MaxPool(2) -> Conv(16 -> 16, 3x3); the stem is
    named ``stem``, to be kept float."""
    rng = np.random.default_rng(0)
    w1, w2 = (",".join(f"{v:.4f}" for v in rng.standard_normal(size) * scale) for size, scale in ((144, 0.3),
                                                                                                   (2304, 0.08)))
    rectified = f"r = {activation} (c)" if activation else "r = Identity (c)"
    model = parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,1,8,8] x) => (float[N,16,4,4] y) <float[16,1,3,3] w1 = {{{w1}}}, float[16,16,3,3] w2 = {{{w2}}}> {{
       c = Conv <pads = [1, 1, 1, 1]> (x, w1)
       {rectified}
       p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
       y = Conv <pads = [1, 1, 1, 1]> (p, w2)
    }}
    """)
    model.graph.node[0].name = "stem"
    if not activation:  # the Identity only named the tensor
        del model.graph.node[1]
        model.graph.node[1].input[0] = "c"
    return model


def max_pools_on_uint8(model: onnx.ModelProto, folder: pathlib.Path) -> int:
    """MaxPools that read a QuantizeLinear's output in the graph onnxruntime runs (ORT_ENABLE_ALL, saved)."""
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    producers = nodes_by_output(optimized)
    return sum(node.op_type == "MaxPool" and getattr(producers.get(node.input[0]), "op_type", "") == "QuantizeLinear"
               for node in optimized.graph.node)


@pytest.mark.parametrize("activation", ["Relu", "Clip"])
def test_a_float_max_pool_after_a_float_activation_trades_places_with_it(activation, tmp_path):
    """With the stem float, the Q/DQ on the MaxPool's output would be moved before it by onnxruntime (a uint8
    MaxPool in NCHW); after the swap the Relu/Clip stops that, and computes exactly what it did."""
    model = pooled_model(activation)
    feeds = random_feeds(model, seed=2)
    optimized, report = graphopt.optimize(model, passes=static("exclude_nodes=[stem]"),
                                          data=random_feeds(model, seed=1, batch=16), check_changed=True)
    producers = nodes_by_output(optimized)
    assert producers["p"].op_type == activation and producers[producers["p"].input[0]].op_type == "MaxPool"
    assert producers[producers["p"].input[0]].input[0] == "c"
    assert [node.op_type for node in readers(optimized, "p")] == ["QuantizeLinear"]
    expected, actual = (run_model(with_outputs(m, ["p"]), feeds) for m in (model, optimized))
    np.testing.assert_array_equal(actual["p"], expected["p"])
    assert max_pools_on_uint8(optimized, tmp_path) == 0
    control, _ = graphopt.optimize(pooled_model(""), passes=static("exclude_nodes=[stem]"),
                                   data=random_feeds(model, seed=1, batch=16))
    assert max_pools_on_uint8(control, tmp_path) == 1  # the move the swap prevents


def rgb_stem_model() -> onnx.ModelProto:
    """Conv(stem, 3 -> 16, 3x3, stride 2) -> Relu -> Conv(16 -> 16, 3x3) -> Relu -> GlobalAveragePool."""
    rng = np.random.default_rng(0)
    w1, w2 = (",".join(f"{v:.4f}" for v in rng.standard_normal(size) * scale) for size, scale in ((432, 0.2),
                                                                                                   (2304, 0.08)))
    return parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,16,16] x) => (float[N,16,1,1] y) <float[16,3,3,3] w1 = {{{w1}}}, float[16,16,3,3] w2 = {{{w2}}}> {{
       c = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w1)
       r = Relu (c)
       b = Conv <pads = [1, 1, 1, 1]> (r, w2)
       rb = Relu (b)
       y = GlobalAveragePool (rb)
    }}
    """)


def test_an_rgb_stem_reads_its_input_through_space_to_depth(monkeypatch):
    """The same int8 sums, so onnxruntime's int8 model gives bit-identical outputs with and without it."""
    model = rgb_stem_model()
    data = random_feeds(model, seed=1, batch=16)
    optimized, report = graphopt.optimize(model, passes=static(), data=data, check_changed=True)
    result = quantizer(report).result
    assert result.stats["rewrites.space_to_depth"] == 1 and result.stats["quantized.Conv"] == 2
    producers = nodes_by_output(optimized)
    stem = next(node for node in optimized.graph.node if node.op_type == "Conv")
    chain = [producers[stem.input[0]]]
    while chain[-1].input[0] != "x":
        chain.append(producers[chain[-1].input[0]])
    assert [node.op_type for node in chain] == ["DequantizeLinear", "QuantizeLinear", "SpaceToDepth"]
    assert attribute(stem, "strides") == [1, 1] and initializers(optimized)[producers[stem.input[1]].input[0]].shape \
        == (16, 12, 2, 2)
    assert any("through SpaceToDepth(2) as 12 channels" in str(d) for d in result.diagnostics)
    monkeypatch.setitem(TARGET_RULES, "cpu", dataclasses.replace(TARGET_RULES["cpu"], space_to_depth_stems=False))
    plain, plain_report = graphopt.optimize(model, passes=static(), data=data)
    assert "rewrites.space_to_depth" not in quantizer(plain_report).result.stats
    feeds = random_feeds(model, seed=2, batch=4)
    (expected,), (actual,) = (cpu_session(m, optimize=True).run(["y"], feeds) for m in (plain, optimized))
    np.testing.assert_array_equal(actual, expected)
    assert node_placement(optimized, feeds).int8_kernels == node_placement(plain, feeds).int8_kernels == 3  # + GAP


@pytest.mark.parametrize(("weight", "input_shape", "attrs", "shallow"), [
    ((16, 1, 3, 3), None, {}, True),  # a first layer on one channel
    ((16, 4, 3, 3), None, {}, True),
    ((16, 8, 3, 3), None, {}, False),
    ((32, 16, 1, 1), None, {}, False),  # a 1x1 projection on 16 channels
    ((64, 3, 7, 7), None, {}, True),  # an RGB stem on an input of unknown size: stays on 3 channels
    ((64, 3, 7, 7), [1, 3, 224, 224], {"strides": [2, 2], "pads": [3, 3, 3, 3]}, False),  # SpaceToDepth: 12
    ((16, 1, 3, 3), None, {"group": 16}, False),  # depthwise: its own int8 kernel
    ((16, 2, 3, 3), None, {"group": 8}, True),  # grouped, 2 channels per group
])
def test_shallow_convolutions(weight, input_shape, attrs, shallow):
    node = gs.Node("Conv", attrs=attrs, inputs=[gs.Variable("x", np.float32, input_shape),
                                                gs.Constant("w", np.ones(weight, np.float32))],
                   outputs=[gs.Variable("y")])
    assert shallow_conv_reason(node, TARGET_RULES["cpu"]) == ("shallow_conv" if shallow else None)
    assert shallow_conv_reason(node, TARGET_RULES["tensorrt"]) is None


REASONS_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2,4,4] x, float[2,2,1,1] wx) => (float[N,2,4,4] a, float[N,2,4,4] b, float[N,2,4,4] c, float[N,2,4,4] d,
                                         float[N,2,2,2] e, float[N,2,4,4] f)
   <float[2,2,1,1] w = {1,2,3,4}, float[2,1,1] k = {1, 2}> {
   p = MaxPool <kernel_shape = [1, 1]> (x)
   a = Conv (p, wx)
   c1 = Conv (x, w)
   b = Relu (c1)
   c = Softplus (c1)
   d = Mul (c1, k)
   e = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c1)
   f = Relu (x)
}
"""


def test_each_per_node_reason():
    _, optimized, report = quantize_tiny(REASONS_MODEL)
    stats = total_stats(report)
    assert stats == {"quantized.Conv": 1, "quantized.MaxPool": 1, "calibrated_tensors": 2,
                     "skipped.no_quantized_input": 2,  # the first MaxPool and the Relu of x
                     "skipped.weight_not_constant": 1, "skipped.not_fusable": 1, "skipped.no_int8_kernel": 1,
                     "skipped.constant_operand": 1}, stats
    diagnostics = [str(d) for d in report.passes[0].result.diagnostics]
    assert len(diagnostics) == 6 and all(d.startswith("info [") for d in diagnostics)
    assert collections.Counter(n.op_type for n in optimized.graph.node)["QuantizeLinear"] == 3  # x, c1, e


def test_matmul_and_gemm_read_only_by_float_nodes_write_float():
    """A transformer's projection, MatMul -> Reshape -> Add(bias), and a Gemm -> Relu at the output: with no
    int8 node after them MatMul and Gemm keep a float output (MatMulIntegerToFloat, QGemm), the Reshape and
    the Relu stay float, and no DequantizeLinear runs standalone."""
    model, optimized, report = quantize_tiny(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,5,4] x) => (float[N,5,3,1] y, float[N,3] z)
       <float[4,3] w = {{{",".join(str(i - 6) for i in range(12))}}}, int64[4] shape = {{0, 5, 3, 1}},
        float[3,1] bias = {{1, 2, 3}}, float[3,3] v = {{1, 0, 0, 0, 1, 0, 0, 0, 1}}> {{
       h = MatMul (x, w)
       r = Reshape (h, shape)
       y = Add (r, bias)
       m = ReduceMean <axes = [1], keepdims = 0> (h)
       p = Gemm (m, v)
       z = Relu (p)
    }}
    """)
    stats = total_stats(report)
    assert stats["skipped.float_neighbours"] == 1 and stats["skipped.after_float_output"] == 1, stats
    assert [n.op_type for n in readers(optimized, "h")] == ["Reshape", "ReduceMean"]  # MatMul writes h in float
    placement = node_placement(optimized, random_feeds(model))
    assert placement.int8_kernels == 2 and placement.float_dq == 0, placement.ops


FOLLOWERS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,8,8] x) => (float[N,8,8,8] y)
   <float[4,4,3,3] w1 = {W}, float[4,4,3,3] w2 = {W}, float[4,4,3,3] w3 = {W}, float[4] b = {1, 2, 3, 4},
    int64[2] split = {4, 4}, float[4] scales = {1, 1, 2, 2}> {
   c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b)
   r1 = Relu (c1)
   c2 = Conv <pads = [1, 1, 1, 1]> (x, w2)
   l = LeakyRelu (c2)
   cat = Concat <axis = 1> (r1, l)
   s1, s2 = Split <axis = 1> (cat, split)
   t = Transpose <perm = [0, 1, 3, 2]> (s2)
   m = Mul (s1, t)
   ap = AveragePool <kernel_shape = [2, 2], strides = [2, 2]> (m)
   up = Resize <mode = "nearest"> (ap, , scales)
   sg = Sigmoid (up)
   c3 = Conv <pads = [1, 1, 1, 1]> (sg, w3)
   y = Concat <axis = 1> (c3, sg)
}
""".replace("{W}", "{" + ",".join(f"{v:.3f}" for v in np.random.default_rng(0).standard_normal(144)) + "}")


def test_followers_stay_int8_between_quantized_nodes():
    """Every op with a CPU QDQ selector in one chain: the QLinear kernels (Concat, LeakyRelu, Mul, AveragePool,
    Sigmoid), and Split, Transpose, Resize running on uint8 (their Q/DQ dropped, so they share parameters)."""
    model, optimized, report = quantize_tiny(FOLLOWERS)
    stats = total_stats(report)
    assert not [key for key in stats if key.startswith("skipped.")], stats
    values, producers = initializers(optimized), nodes_by_output(optimized)
    for node in optimized.graph.node:
        if node.op_type in ("Split", "Transpose", "Resize"):
            source = producers[node.input[0]]
            for output in node.output:
                (quantize_node,) = readers(optimized, output)
                assert values[quantize_node.input[1]] == values[source.input[1]]
                assert values[quantize_node.input[2]] == values[source.input[2]]
    placement = node_placement(optimized, random_feeds(model, batch=1))
    assert placement.int8_kernels == 9 and placement.float_q == 1, placement.ops
    assert placement.float_dq == 1, placement.ops  # y, the graph output
    executed = set(placement.ops["CPUExecutionProvider"])
    assert not {"Conv", "Concat", "Mul", "Sigmoid", "LeakyRelu", "AveragePool"} & executed, executed



# ---------------------------------------------------------------------------------------------------------
# Generated models (tests/graph_strategies.py): what quantization must keep on any graph


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=models())
def test_generated_models_stay_valid_and_close(target, case: GeneratedModel):
    """Calibrated on the feeds it is run on: the full checker passes, the interface is unchanged, both
    onnxruntime levels run it, outputs stay within 10% of their largest magnitude, ``changed`` is honest, a
    second run changes nothing; for TensorRT the lint finds no error."""
    options = static(f"target={target}")
    optimized, _ = graphopt.optimize(case.model, passes=options, data=case.feeds, check_changed=True)
    note(onnx.printer.to_text(optimized))
    onnx.checker.check_model(optimized, full_check=True)
    assert [(v.name, v.type) for v in (*optimized.graph.input, *optimized.graph.output)] == \
        [(v.name, v.type) for v in (*case.model.graph.input, *case.model.graph.output)]
    cpu_session(optimized, optimize=True).run(None, case.feeds)
    expected, actual = run_model(case.model, case.feeds), run_model(optimized, case.feeds)
    for name, value in expected.items():
        if value.dtype.kind == "f" and value.size:
            np.testing.assert_allclose(actual[name], value, rtol=0, atol=0.1 * float(np.abs(value).max()) + 1e-3)
    if target == "tensorrt":
        assert not [finding for finding in lint_tensorrt(optimized) if finding.severity == "error"]
    _, again = graphopt.optimize(optimized, passes=options, data=case.feeds, check_changed=True)
    assert not again.passes[0].changed
