"""fuse-conv-bn: counts, numerics on ORT, and a negative test per decline reason."""

from __future__ import annotations

import functools

import conftest
import numpy as np
import onnx
import onnx.helper as oh
import onnx_graphsurgeon as gs
import pytest
from conftest import op_counts, random_feeds, total_stats
from onnx_graphsurgeon.ir.tensor import LazyValues

import graphopt
from graphopt.analysis import AnalysisCache
from graphopt.model import to_graph
from graphopt.pass_base import PassContext
from passes.fuse_conv_bn import FuseConvBatchNorm

RNG = np.random.default_rng(0)


def _const(name, array):
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def _bn_params(prefix, channels, shared=None):
    return [
        _const(f"{prefix}_gamma", RNG.uniform(0.5, 1.5, channels).astype(np.float32)),
        _const(f"{prefix}_beta", RNG.standard_normal(channels).astype(np.float32)),
        _const(f"{prefix}_mean", RNG.standard_normal(channels).astype(np.float32)),
        _const(f"{prefix}_var", RNG.uniform(0.5, 2.0, channels).astype(np.float32)),
    ]


def _model(layer_nodes, inits, x_shape, y_shape, opset=17, extra_outputs=(), bn_attrs=None, bn_outputs=("y",)):
    bn = oh.make_node("BatchNormalization", ["h", "bn_gamma", "bn_beta", "bn_mean", "bn_var"], list(bn_outputs),
                      **(bn_attrs or {}))
    graph = oh.make_graph(
        [*layer_nodes, bn], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape),
         *[oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, y_shape) for name in extra_outputs]],
        inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def conv_bn(bias=True, group=1, extra_outputs=(), weight_shared=False, bn_attrs=None, bn_outputs=("y",)):
    weight = RNG.standard_normal((8, 4 // group, 3, 3)).astype(np.float32)
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    nodes = [oh.make_node("Conv", inputs, ["h"], pads=[1, 1, 1, 1], group=group)]
    inits = [_const("w", weight), _const("b", RNG.standard_normal(8).astype(np.float32)), *_bn_params("bn", 8)]
    if weight_shared:
        nodes.append(oh.make_node("Conv", ["x", "w"], ["other"], pads=[1, 1, 1, 1]))
        extra_outputs = (*extra_outputs, "other")
    return _model(nodes, inits, ["N", 4, 6, 6], ["N", 8, 6, 6], extra_outputs=extra_outputs, bn_attrs=bn_attrs,
                  bn_outputs=bn_outputs)


# Folding reassociates float arithmetic: equal within float32 rounding of values of magnitude ~10.
assert_same_outputs = functools.partial(conftest.assert_same_outputs, rtol=1e-5, atol=1e-5)


def run(model):
    return graphopt.optimize(model, passes=[FuseConvBatchNorm()], check_changed=True)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_bn_fused_and_numerics_kept(bias, group):
    model = conv_bn(bias=bias, group=group)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Conv": 1}
    assert total_stats(report) == {"rewrites.conv_bn": 1}
    assert_same_outputs(model, optimized, [random_feeds(model, seed) for seed in range(2)])


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn(group):
    weight = RNG.standard_normal((4, 8 // group, 3, 3)).astype(np.float32)
    nodes = [oh.make_node("ConvTranspose", ["x", "w"], ["h"], group=group)]
    model = _model(nodes, [_const("w", weight), *_bn_params("bn", 8)], ["N", 4, 5, 5], ["N", 8, 7, 7])
    optimized, report = run(model)
    assert op_counts(optimized) == {"ConvTranspose": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn(trans_b):
    weight = RNG.standard_normal((8, 6) if trans_b else (6, 8)).astype(np.float32)
    nodes = [oh.make_node("Gemm", ["x", "w", "b"], ["h"], transB=trans_b)]
    inits = [_const("w", weight), _const("b", RNG.standard_normal(8).astype(np.float32)), *_bn_params("bn", 8)]
    model = _model(nodes, inits, ["N", 6], ["N", 8])
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Gemm": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_matmul_bn_becomes_gemm():
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"])]
    inits = [_const("w", RNG.standard_normal((6, 8)).astype(np.float32)), *_bn_params("bn", 8)]
    model = _model(nodes, inits, ["N", 6], ["N", 8])
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Gemm": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


@pytest.mark.parametrize("model, reason", [
    (lambda: conv_bn(extra_outputs=("h",)), "skipped.conv_bn.intermediate_is_graph_output"),
    (lambda: conv_bn(weight_shared=True), "skipped.conv_bn.shared_weight"),
    (lambda: conv_bn(bn_attrs={"training_mode": 1}, bn_outputs=("y", "m", "v")), "skipped.conv_bn.bn_training_mode"),
    (lambda: _model([oh.make_node("MatMul", ["x", "w"], ["h"])],
                    [_const("w", RNG.standard_normal((6, 8)).astype(np.float32)), *_bn_params("bn", 3)],
                    ["N", 3, 6], ["N", 3, 8]), "skipped.conv_bn.matmul_output_not_2d"),
    (lambda: _model([oh.make_node("Conv", ["x", "x"], ["h"])], _bn_params("bn", 1), [1, 1, 1, 1], [1, 1, 1, 1]),
     "skipped.conv_bn.weight_not_constant"),
])
def test_declines_with_reason(model, reason):
    model = model()
    optimized, report = run(model)
    assert total_stats(report) == {reason: 1}
    assert "BatchNormalization" in op_counts(optimized)
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_second_run_changes_nothing():
    once, _ = run(conv_bn())
    _, report = run(once)
    assert not report.passes[0].changed


def _reference_fold(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """The folded weight and bias computed independently: s, b' and every product W[c] * s[c] in float64, each
    rounded once to float32 (what the pass has always stored)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    layer = model.graph.node[0]
    gamma, beta, mean, var = (inits[f"bn_{p}"].astype(np.float64) for p in ("gamma", "beta", "mean", "var"))
    scale = gamma / np.sqrt(var + 1e-5)
    weight = inits[layer.input[1]].astype(np.float64)
    bias = inits[layer.input[2]].astype(np.float64) if len(layer.input) > 2 else np.zeros_like(scale)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in layer.attribute}
    if layer.op_type == "Conv":
        channel = np.arange(weight.shape[0]).reshape(-1, *[1] * (weight.ndim - 1))
    elif layer.op_type == "ConvTranspose":  # weight [C_in, C_out/g, k...]
        in_per_group = weight.shape[0] // attrs.get("group", 1)
        i, j = np.indices(weight.shape[:2])
        channel = ((i // in_per_group) * weight.shape[1] + j).reshape(*weight.shape[:2], *[1] * (weight.ndim - 2))
    elif attrs.get("transB", 0):
        channel = np.arange(weight.shape[0])[:, None]
    else:
        channel = np.arange(weight.shape[1])[None, :]
    return (weight * scale[channel]).astype(np.float32), (scale * (bias - mean) + beta).astype(np.float32)


def _conv_transpose_bn(group):
    weight = RNG.standard_normal((4, 8 // group, 3, 3)).astype(np.float32)
    nodes = [oh.make_node("ConvTranspose", ["x", "w"], ["h"], group=group)]
    return _model(nodes, [_const("w", weight), *_bn_params("bn", 8)], ["N", 4, 5, 5], ["N", 8, 7, 7])


def _gemm_bn(trans_b):
    weight = RNG.standard_normal((8, 6) if trans_b else (6, 8)).astype(np.float32)
    nodes = [oh.make_node("Gemm", ["x", "w", "b"], ["h"], transB=trans_b)]
    inits = [_const("w", weight), _const("b", RNG.standard_normal(8).astype(np.float32)), *_bn_params("bn", 8)]
    return _model(nodes, inits, ["N", 6], ["N", 8])


def _matmul_bn():
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"])]
    return _model(nodes, [_const("w", RNG.standard_normal((6, 8)).astype(np.float32)), *_bn_params("bn", 8)],
                  ["N", 6], ["N", 8])


@pytest.mark.parametrize("model", [
    lambda: conv_bn(bias=True), lambda: conv_bn(bias=False, group=2), lambda: _conv_transpose_bn(1),
    lambda: _conv_transpose_bn(2), lambda: _gemm_bn(0), lambda: _gemm_bn(1), _matmul_bn,
], ids=["conv", "grouped-conv-no-bias", "conv-transpose", "grouped-conv-transpose", "gemm", "gemm-transB",
        "matmul"])
def test_folded_weights_are_float64_products_rounded_once(model):
    model = model()
    optimized, _ = run(model)
    (layer,) = optimized.graph.node
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in optimized.graph.initializer}
    weight, bias = _reference_fold(model)
    assert inits[layer.input[1]].dtype == np.float32
    np.testing.assert_array_equal(inits[layer.input[1]].view(np.uint32), weight.view(np.uint32))
    np.testing.assert_array_equal(inits[layer.input[2]].view(np.uint32), bias.view(np.uint32))


def test_checks_decode_no_weight():
    """Deciding reads shapes and types only: a decoded weight would stay in memory with its constant."""
    model = _gemm_bn(0)
    model.graph.node[0].attribute.append(oh.make_attribute("alpha", 2.0))
    graph = to_graph(model)
    result = FuseConvBatchNorm().run(graph, PassContext(AnalysisCache()))
    assert result.stats == {"skipped.conv_bn.gemm_attributes": 1}
    assert all(isinstance(t._values, LazyValues) for t in graph.tensors().values() if isinstance(t, gs.Constant))


@pytest.mark.parametrize("weight_is_output", [False, True])
def test_a_replaced_weight_lets_go_of_its_values_unless_a_graph_lists_it(weight_is_output):
    model = conv_bn()
    if weight_is_output:
        model.graph.output.append(oh.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [8, 4, 3, 3]))
    graph = to_graph(model)
    weight = graph.tensors()["w"]
    result = FuseConvBatchNorm().run(graph, PassContext(AnalysisCache()))
    assert result.stats == {"rewrites.conv_bn": 1}
    assert weight._values.tensor.HasField("raw_data") == weight_is_output
