"""tensorrt_lint: QDQ models quantized the way TensorRT wants (Conv, ConvTranspose, Gemm in both weight layouts,
MatMul, weights quantized in the graph as QAT exports them, a weight reaching its MatMul through a Transpose,
If and Loop bodies) have no findings and pass the ONNX checker; every rule fires on a model that breaks that
rule alone, with its id, severity and nodes asserted; FP8/INT4 Q/DQ are out of scope; findings come in graph
order (subgraphs walked too) and the model is left as it was; onnxruntime's QDQ quantizer with the options
TensorRT needs gives a clean model, with uint8 asymmetric defaults the matching rules fire."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime import quantization

from graphopt.cli import main
from graphopt.validate.tensorrt_lint import RULES, LintFinding, lint_tensorrt

FLOAT = TensorProto.FLOAT
INT8_ZERO = np.int8(0)
DIGITS_CNN = Path(__file__).resolve().parent.parent / "models" / "digits_cnn.onnx"


def tensor(name: str, element_type: int, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, element_type, shape)


class GraphBuilder:
    """Nodes and initializers of one graph, in the order added. Every node is named like its output; the
    Q/DQ helpers name theirs ``<x>.q`` / ``<x>.dq`` after the tensor ``x`` they read."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def quantize(self, x: str, scale=0.05, zero_point=INT8_ZERO, **attributes) -> str:
        return self.node("QuantizeLinear", [x, *self._parameters(x, scale, zero_point)], f"{x}.q", **attributes)

    def dequantize(self, x: str, scale=0.05, zero_point=INT8_ZERO, **attributes) -> str:
        return self.node("DequantizeLinear", [x, *self._parameters(x, scale, zero_point)], f"{x}.dq",
                         **attributes)

    def qdq(self, x: str, scale=0.05, zero_point=INT8_ZERO, **attributes) -> str:
        """``x`` through a QuantizeLinear and a DequantizeLinear with the same parameters."""
        return self.dequantize(self.quantize(x, scale, zero_point, **attributes), scale, zero_point, **attributes)

    def int8_weight(self, name: str, shape: tuple[int, ...], axis: int | None = 0, channels: int | None = None,
                    scale: np.ndarray | None = None) -> str:
        """An int8 initializer dequantized per channel: ``channels`` (default ``shape[axis]``) scales of 0.02
        unless ``scale`` is given; no axis attribute when ``axis`` is None (opset < 13)."""
        values = np.random.default_rng(0).integers(-127, 128, shape).astype(np.int8)
        self.constant(name, values)
        if scale is None:
            scale = np.full(channels or shape[axis], 0.02, np.float32)
        attributes = {} if axis is None else {"axis": axis}
        return self.dequantize(name, scale, np.zeros(scale.shape, np.int8), **attributes)

    def parameters(self, name: str, shape: tuple[int, ...]) -> str:
        """A float initializer of small random values (weights or a bias)."""
        return self.constant(name, np.random.default_rng(1).normal(0, 0.1, shape).astype(np.float32))

    def graph(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]):
        return helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              opset: int = 17) -> onnx.ModelProto:
        return helper.make_model(self.graph("g", inputs, outputs), opset_imports=[helper.make_opsetid("", opset)])

    def _parameters(self, x: str, scale, zero_point) -> list[str]:
        """Names of the scale and zero point: given names (str) as they are, values as initializers named after
        ``x``; no zero point input for None."""
        names = [scale if isinstance(scale, str) else self.constant(f"{x}.scale", np.asarray(scale, np.float32))]
        if zero_point is not None:
            names.append(zero_point if isinstance(zero_point, str) else self.constant(f"{x}.zero_point", zero_point))
        return names


# ---------------------------------------------------------------------------------------------------------
# Models quantized the way TensorRT wants; the parameters make each one break a single rule


def conv_model(builder: GraphBuilder | None = None, x: str | None = None, weight: str | None = None,
               bias: str | None = "bias", extra_inputs=(), extra_outputs=(), opset: int = 17) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(4 filters of 3x3, bias) -> y[1,4,6,6]: by default the input Q/DQ per-tensor, the
    weight an int8 initializer dequantized per output channel and the bias float."""
    b = builder or GraphBuilder()
    inputs = [x or b.qdq("x"), weight or b.int8_weight("w", (4, 3, 3, 3))]
    if bias == "bias":
        b.parameters("bias", (4,))
    b.node("Conv", inputs + ([bias] if bias else []), "y")
    return b.model([tensor("x", FLOAT, [1, 3, 8, 8]), *extra_inputs],
                   [tensor("y", FLOAT, [1, 4, 6, 6]), *extra_outputs], opset)


def conv_transpose_model(weight_axis: int = 1) -> onnx.ModelProto:
    b = GraphBuilder()
    b.node("ConvTranspose", [b.qdq("x"), b.int8_weight("w", (4, 2, 3, 3), axis=weight_axis)], "y")
    return b.model([tensor("x", FLOAT, [1, 4, 6, 6])], [tensor("y", FLOAT, [1, 2, 8, 8])])


def gemm_model(trans_b: int, weight_axis: int | None = None) -> onnx.ModelProto:
    """A fully connected layer 8 -> 4 with the weight stored (4, 8) for transB=1 (PyTorch) or (8, 4)."""
    b = GraphBuilder()
    shape, default_axis = ((4, 8), 0) if trans_b else ((8, 4), 1)
    weight = b.int8_weight("w", shape, axis=default_axis if weight_axis is None else weight_axis)
    b.node("Gemm", [b.qdq("x"), weight, b.parameters("bias", (4,))], "y", transB=trans_b)
    return b.model([tensor("x", FLOAT, [2, 8])], [tensor("y", FLOAT, [2, 4])])


def matmul_model(weight_axis: int = -1) -> onnx.ModelProto:
    b = GraphBuilder()
    b.node("MatMul", [b.qdq("x"), b.int8_weight("w", (8, 4), axis=weight_axis)], "y")
    return b.model([tensor("x", FLOAT, [2, 5, 8])], [tensor("y", FLOAT, [2, 5, 4])])


def qat_conv_model() -> onnx.ModelProto:
    """Weights kept float and quantized in the graph (what pytorch-quantization exports): W -> Q -> DQ."""
    b = GraphBuilder()
    b.parameters("w", (4, 3, 3, 3))
    channels = np.full(4, 0.02, np.float32)
    return conv_model(b, weight=b.qdq("w", channels, np.zeros(4, np.int8), axis=0))


def transposed_weight_matmul_model() -> onnx.ModelProto:
    """A weight stored (out, in), dequantized along its output channels and transposed for the MatMul."""
    b = GraphBuilder()
    weight = b.node("Transpose", [b.int8_weight("w", (4, 8), axis=0)], "w.t", perm=[1, 0])
    b.node("MatMul", [b.qdq("x"), weight], "y")
    return b.model([tensor("x", FLOAT, [2, 8])], [tensor("y", FLOAT, [2, 4])])


def branch(name: str, zero_point=INT8_ZERO) -> onnx.GraphProto:
    """An If branch reading the outer ``x``: Q/DQ, then a MatMul with its own int8 weight."""
    b = GraphBuilder()
    x = b.node("Identity", ["x"], f"{name}.x")
    b.node("MatMul", [b.qdq(x, zero_point=zero_point), b.int8_weight(f"{name}.w", (8, 4), axis=1)], f"{name}.y")
    return b.graph(name, [], [tensor(f"{name}.y", FLOAT, [2, 4])])


def if_model(then_zero_point=INT8_ZERO, outer_zero_point=INT8_ZERO) -> onnx.ModelProto:
    """``If`` over two quantized MatMul branches, then a Q/DQ of its result in the main graph."""
    b = GraphBuilder()
    b.nodes.append(helper.make_node("If", ["cond"], ["branch.y"], name="if",
                                    then_branch=branch("then", then_zero_point), else_branch=branch("else")))
    b.node("Relu", [b.qdq("branch.y", zero_point=outer_zero_point)], "y")
    return b.model([tensor("cond", TensorProto.BOOL, []), tensor("x", FLOAT, [2, 8])],
                   [tensor("y", FLOAT, [2, 4])])


def loop_model(scale_from_state: bool = False) -> onnx.ModelProto:
    """A Loop whose body multiplies its carried state by a quantized weight; the Q/DQ scale of the state is
    an initializer of the body, or (``scale_from_state``) a value computed from the state."""
    body = GraphBuilder()
    scale = body.node("ReduceMax", ["state"], "state.max", keepdims=0) if scale_from_state else 0.05
    state = body.qdq("state", scale=scale)
    body.node("MatMul", [state, body.int8_weight("w", (4, 4), axis=1)], "state.next")
    body.node("Identity", ["cond"], "cond.next")
    body_graph = body.graph("body", [tensor("i", TensorProto.INT64, []), tensor("cond", TensorProto.BOOL, []),
                                     tensor("state", FLOAT, [2, 4])],
                            [tensor("cond.next", TensorProto.BOOL, []), tensor("state.next", FLOAT, [2, 4])])
    b = GraphBuilder()
    b.constant("trips", np.int64(3))
    b.constant("keep_going", np.bool_(True))
    b.nodes.append(helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], name="loop", body=body_graph))
    return b.model([tensor("x", FLOAT, [2, 4])], [tensor("y", FLOAT, [2, 4])])


CLEAN_MODELS = {
    "conv": conv_model,
    "conv_transpose": conv_transpose_model,
    "gemm_transB": lambda: gemm_model(trans_b=1),
    "gemm": lambda: gemm_model(trans_b=0),
    "matmul_negative_axis": matmul_model,
    "qat_weights": qat_conv_model,
    "weight_through_transpose": transposed_weight_matmul_model,
    "if": if_model,
    "loop": loop_model,
}


@pytest.mark.parametrize("build", CLEAN_MODELS.values(), ids=CLEAN_MODELS.keys())
def test_models_quantized_for_tensorrt_have_no_findings(build):
    model = build()
    onnx.checker.check_model(model, full_check=True)
    assert lint_tensorrt(model) == []


# ---------------------------------------------------------------------------------------------------------
# One model per rule, breaking that rule only


def matmul_integer_model() -> onnx.ModelProto:
    b = GraphBuilder()
    b.node("MatMulInteger", ["a", b.constant("b", np.ones((8, 4), np.int8))], "y")
    return b.model([tensor("a", TensorProto.UINT8, [2, 8])], [tensor("y", TensorProto.INT32, [2, 4])])


def int32_quantize_model() -> onnx.ModelProto:
    b = GraphBuilder()
    b.node("Relu", [b.qdq("x")], "y")
    return b.model([tensor("x", TensorProto.INT32, [2, 8])], [tensor("y", FLOAT, [2, 8])])


def conv_with_activation(**qdq_parameters) -> onnx.ModelProto:
    """The clean Conv model with the input's Q/DQ pair given ``qdq_parameters``."""
    b = GraphBuilder()
    return conv_model(b, x=b.qdq("x", **qdq_parameters))


def conv_with_scale_input() -> onnx.ModelProto:
    b = GraphBuilder()
    return conv_model(b, x=b.qdq("x", scale="s"), extra_inputs=[tensor("s", FLOAT, [])])


def conv_with_zero_point_input() -> onnx.ModelProto:
    b = GraphBuilder()
    return conv_model(b, x=b.qdq("x", zero_point="z"), extra_inputs=[tensor("z", TensorProto.INT8, [])])


def conv_with_uint8_weight() -> onnx.ModelProto:
    b = GraphBuilder()
    b.constant("w", np.full((4, 3, 3, 3), 130, np.uint8))
    return conv_model(b, weight=b.dequantize("w", 0.02, np.uint8(0)))


def conv_with_negative_weight_scale() -> onnx.ModelProto:
    b = GraphBuilder()
    scale = np.array([0.02, -0.02, 0.02, 0.02], np.float32)
    return conv_model(b, weight=b.int8_weight("w", (4, 3, 3, 3), scale=scale))


def conv_with_weight_axis(axis: int) -> onnx.ModelProto:
    b = GraphBuilder()
    return conv_model(b, weight=b.int8_weight("w", (4, 3, 3, 3), axis=axis))


def conv_at_opset_12() -> onnx.ModelProto:
    """Per-channel weights in an opset-12 model: no axis attribute (TensorRT would take axis 0)."""
    b = GraphBuilder()
    return conv_model(b, weight=b.int8_weight("w", (4, 3, 3, 3), axis=None, channels=4), opset=12)


def conv_with_quantize_read_by_relu() -> onnx.ModelProto:
    b = GraphBuilder()
    return conv_model(b, x=b.dequantize(b.node("Relu", [b.quantize("x")], "x.q.relu")))


def conv_with_quantize_as_output() -> onnx.ModelProto:
    b = GraphBuilder()
    return conv_model(b, extra_outputs=[tensor("x.q", TensorProto.INT8, [1, 3, 8, 8])])


def conv_with_float_input() -> onnx.ModelProto:
    return conv_model(x="x")


def matmul_with_float_weight() -> onnx.ModelProto:
    b = GraphBuilder()
    b.node("MatMul", [b.qdq("x"), b.parameters("w", (8, 4))], "y")
    return b.model([tensor("x", FLOAT, [2, 8])], [tensor("y", FLOAT, [2, 4])])


def conv_with_int8_bias() -> onnx.ModelProto:
    b = GraphBuilder()
    return conv_model(b, bias=b.qdq(b.parameters("b", (4,)), 0.001))


def case(build, rule: str, severity: str, *nodes: str, id: str | None = None):
    return pytest.param(build, rule, severity, list(nodes), id=id or rule)


VIOLATIONS = [
    case(matmul_integer_model, "unsupported-quantized-operator", "error", "y"),
    case(int32_quantize_model, "quantize-input-not-float", "error", "x.q"),
    case(lambda: conv_with_activation(zero_point=np.uint8(0)), "quantize-type-not-int8", "error", "x.q"),
    case(lambda: conv_with_activation(zero_point=None), "quantize-type-not-int8", "error", "x.q",
         id="quantize-type-not-int8-by-default"),
    case(conv_with_uint8_weight, "dq-input-not-int8", "error", "w.dq"),
    case(lambda: conv_with_activation(zero_point=np.int8(3)), "zero-point-not-zero", "error", "x.q", "x.q.dq"),
    case(conv_with_scale_input, "scale-not-constant", "error", "x.q", "x.q.dq"),
    case(conv_with_zero_point_input, "zero-point-not-constant", "error", "x.q", "x.q.dq"),
    *[case(lambda scale=scale: conv_with_activation(scale=scale), "scale-not-positive-finite", "error",
           "x.q", "x.q.dq", id=f"scale-{scale}") for scale in (0.0, -0.05, np.nan, np.inf)],
    case(conv_with_negative_weight_scale, "scale-not-positive-finite", "error", "w.dq", id="weight-scale"),
    case(lambda: conv_with_activation(scale=np.full(3, 0.05), zero_point=np.zeros(3, np.int8), axis=1),
         "per-channel-activation", "error", "x.q", "x.q.dq"),
    case(lambda: conv_with_weight_axis(1), "per-channel-axis", "error", "w.dq", id="conv-axis"),
    case(lambda: conv_transpose_model(weight_axis=0), "per-channel-axis", "error", "w.dq", id="conv-transpose-axis"),
    case(lambda: gemm_model(trans_b=1, weight_axis=1), "per-channel-axis", "error", "w.dq", id="gemm-transB-axis"),
    case(lambda: gemm_model(trans_b=0, weight_axis=0), "per-channel-axis", "error", "w.dq", id="gemm-axis"),
    case(lambda: matmul_model(weight_axis=0), "per-channel-axis", "error", "w.dq", id="matmul-axis"),
    case(conv_at_opset_12, "per-channel-before-opset-13", "error", "w.dq"),
    case(conv_with_quantize_read_by_relu, "dangling-quantize", "error", "x.q"),
    case(conv_with_quantize_as_output, "dangling-quantize", "error", "x.q", id="quantize-as-graph-output"),
    case(conv_with_float_input, "partially-quantized-op", "warning", "y"),
    case(matmul_with_float_weight, "partially-quantized-op", "warning", "y", id="float-weight"),
    case(conv_with_int8_bias, "quantized-bias", "warning", "y"),
]


@pytest.mark.parametrize(("build", "rule", "severity", "nodes"), VIOLATIONS)
def test_each_rule_fires_on_a_model_breaking_it_alone(build, rule, severity, nodes):
    findings = lint_tensorrt(build())
    assert [(finding.rule, finding.severity, finding.node) for finding in findings] == [
        (rule, severity, node) for node in nodes]
    assert all(finding.message and "\n" not in finding.message for finding in findings)


def test_every_rule_has_a_violating_model_and_a_description():
    assert {param.values[1] for param in VIOLATIONS} == set(RULES)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule) and description for rule, description in RULES.items())


def test_an_int32_bias_is_rejected_at_its_dequantize_and_reported_on_the_layer():
    """onnxruntime's quantizer writes int32 biases: TensorRT rejects their DequantizeLinear."""
    b = GraphBuilder()
    b.constant("b", np.arange(4, dtype=np.int32))
    findings = lint_tensorrt(conv_model(b, bias=b.dequantize("b", 0.001, np.int32(0))))
    assert [(f.rule, f.severity, f.node) for f in findings] == [
        ("dq-input-not-int8", "error", "b.dq"), ("quantized-bias", "warning", "y")]
    assert "int32" in findings[0].message


def test_uint8_activations_with_a_nonzero_zero_point_break_both_rules():
    findings = lint_tensorrt(conv_with_activation(zero_point=np.uint8(128)))
    assert [(f.rule, f.node) for f in findings] == [
        ("quantize-type-not-int8", "x.q"), ("zero-point-not-zero", "x.q"), ("zero-point-not-zero", "x.q.dq")]
    assert "128" in findings[1].message


# ---------------------------------------------------------------------------------------------------------
# Subgraphs, order, scope, the finding itself


def test_if_branches_are_checked_after_the_main_graph():
    findings = lint_tensorrt(if_model(then_zero_point=np.int8(1), outer_zero_point=np.int8(2)))
    assert [(f.rule, f.node) for f in findings] == [
        ("zero-point-not-zero", "branch.y.q"), ("zero-point-not-zero", "branch.y.q.dq"),
        ("zero-point-not-zero", "then.x.q"), ("zero-point-not-zero", "then.x.q.dq")]


@pytest.mark.parametrize(("reader", "expected"), [("Identity", []), ("Relu", [("dangling-quantize", "x.q")])])
def test_a_quantize_read_from_inside_a_branch(reader, expected):
    """The main graph quantizes ``x``; the then-branch dequantizes it, directly or after ``reader``."""
    def reading_branch(name: str, reader: str) -> onnx.GraphProto:
        b = GraphBuilder()
        weight = b.int8_weight(f"{name}.w", (8, 4), axis=1)
        b.node("MatMul", [b.dequantize(b.node(reader, ["x.q"], f"{name}.read")), weight], f"{name}.y")
        return b.graph(name, [], [tensor(f"{name}.y", FLOAT, [2, 4])])

    b = GraphBuilder()
    b.quantize("x")
    b.nodes.append(helper.make_node("If", ["cond"], ["y"], name="if", then_branch=reading_branch("then", reader),
                                    else_branch=reading_branch("else", "Identity")))
    model = b.model([tensor("cond", TensorProto.BOOL, []), tensor("x", FLOAT, [2, 8])], [tensor("y", FLOAT, [2, 4])])
    onnx.checker.check_model(model, full_check=True)
    assert [(f.rule, f.node) for f in lint_tensorrt(model)] == expected


def test_a_scale_computed_from_loop_state_is_not_a_build_time_constant():
    findings = lint_tensorrt(loop_model(scale_from_state=True))
    assert [(f.rule, f.severity, f.node) for f in findings] == [
        ("scale-not-constant", "error", "state.q"), ("scale-not-constant", "error", "state.q.dq")]
    assert "'state.max'" in findings[0].message


def test_a_scale_computed_from_constants_is_a_build_time_constant():
    b = GraphBuilder()
    scale = b.node("Div", [b.constant("one", np.float32(1)), b.constant("range", np.float32(20))], "scale")
    assert lint_tensorrt(conv_model(b, x=b.qdq("x", scale=scale))) == []


@pytest.mark.parametrize("element_type", [TensorProto.FLOAT8E4M3FN, TensorProto.INT4])
def test_fp8_and_int4_weights_are_out_of_scope(element_type):
    """Weight-only FP8/INT4 (a float MatMul input) and a non-zero zero point: nothing is reported."""
    b = GraphBuilder()
    b.initializers.append(helper.make_tensor("w", element_type, [8, 4], np.ones(32)))
    b.initializers.append(helper.make_tensor("w.zero_point", element_type, [], [1]))
    b.node("DequantizeLinear", ["w", b.constant("w.scale", np.float32(0.02)), "w.zero_point"], "w.dq")
    b.node("MatMul", ["x", "w.dq"], "y")
    model = b.model([tensor("x", FLOAT, [2, 8])], [tensor("y", FLOAT, [2, 4])], opset=21)
    onnx.checker.check_model(model, full_check=True)
    assert lint_tensorrt(model) == []


def test_unnamed_nodes_are_reported_by_their_output():
    model = conv_with_activation(zero_point=np.int8(3))
    for node in model.graph.node:
        node.name = ""
    assert [f.node for f in lint_tensorrt(model)] == ["x.q", "x.q.dq"]


def test_the_model_is_left_unchanged():
    model = conv_with_activation(zero_point=np.uint8(128))
    before = model.SerializeToString()
    lint_tensorrt(model)
    assert model.SerializeToString() == before


def test_finding_to_dict():
    finding = LintFinding("zero-point-not-zero", "error", "x.q", "zero point 3 is not 0")
    assert finding.to_dict() == {"rule": "zero-point-not-zero", "severity": "error", "node": "x.q",
                                 "message": "zero point 3 is not 0"}


class RandomImages(quantization.CalibrationDataReader):
    """Three random batches for the digits CNN's input, for onnxruntime's calibration."""

    def __init__(self, model: onnx.ModelProto) -> None:
        declared = model.graph.input[0]
        shape = [dim.dim_value or 1 for dim in declared.type.tensor_type.shape.dim]
        rng = np.random.default_rng(0)
        self.batches = iter([{declared.name: rng.random(shape, np.float32)} for _ in range(3)])

    def get_next(self):
        return next(self.batches, None)


@pytest.mark.parametrize(("options", "expected"), [
    ({"activation_type": quantization.QuantType.QInt8, "per_channel": True,
      "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}}, set()),
    ({"activation_type": quantization.QuantType.QUInt8},
     {"quantize-type-not-int8", "zero-point-not-zero", "dq-input-not-int8", "quantized-bias"}),
], ids=["tensorrt-options", "uint8-asymmetric"])
def test_onnxruntime_quantizer_output(tmp_path, options, expected):
    """onnxruntime's QDQ quantizer with the options TensorRT needs gives a clean model; with uint8 asymmetric
    activations and int32 biases, the rules for those fire."""
    model = onnx.load(DIGITS_CNN)
    output = tmp_path / "quantized.onnx"
    quantization.quantize_static(model, output, RandomImages(model), quant_format=quantization.QuantFormat.QDQ,
                                 weight_type=quantization.QuantType.QInt8, **options)
    findings = lint_tensorrt(onnx.load(output))
    assert {finding.rule for finding in findings} == expected


@pytest.fixture(scope="module")
def uint8_quantized(tmp_path_factory):
    model = onnx.load(DIGITS_CNN)
    output = tmp_path_factory.mktemp("quantized") / "uint8.onnx"
    quantization.quantize_static(model, output, RandomImages(model), quant_format=quantization.QuantFormat.QDQ,
                                 weight_type=quantization.QuantType.QInt8,
                                 activation_type=quantization.QuantType.QUInt8)
    return str(output)


def test_lint_command_exits_1_on_errors(uint8_quantized, capsys):
    assert main(["lint", uint8_quantized]) == 1
    captured = capsys.readouterr()
    assert "error: [zero-point-not-zero]" in captured.out and "TensorRT QDQ error(s)" in captured.err
    assert main(["lint", str(DIGITS_CNN), "--json"]) == 0 and capsys.readouterr().out.strip() == "[]"


def test_gate_fails_tensorrt_lint_errors_even_without_tensorrt(uint8_quantized, capsys):
    """TensorRT is not installed here: the provider is skipped, the static lint still decides."""
    code = main(["gate", str(DIGITS_CNN), uint8_quantized, "--providers", "cpu,tensorrt", "--min-cosine", "0.5",
                 "--rounds", "2"])
    captured = capsys.readouterr()
    assert code == 1 and "tensorrt_lint[tensorrt]" in captured.err
    assert "int8 kernels" in captured.out  # the placement note for the quantized candidate on the CPU
