"""fuse-conv-mul-add: counts, numerics on ORT, and a negative test per decline reason."""

from __future__ import annotations

import functools

import conftest
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from conftest import op_counts, random_feeds, total_stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphopt
from passes.fuse_conv_mul_add import FuseConvMulAdd

RNG = np.random.default_rng(0)
F = onnx.TensorProto.FLOAT


def _const(name, array):
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def conv_steps(steps, layer="Conv", bias=True, group=1, spatial=2, dtype=np.float32, extra_outputs=(),
               extra_consumers=(), weight_shared=False, bias_shared=False, weight_input=False, bias_input=False):
    """x -> Conv/ConvTranspose (4 -> 8 channels, 3x3) -> h -> steps -> y.

    ``steps`` are (op, operand, conv_side_first): operand an array (an initializer) or a name (a graph input of
    the output's shape). Intermediates are named h, s1, s2, ...; ``extra_outputs`` makes some of them graph
    outputs, ``extra_consumers`` gives some of them a Neg consumer."""
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    kernel = (3,) * spatial
    weight_shape = (8, 4 // group, *kernel) if layer == "Conv" else (4, 8 // group, *kernel)
    inits = [] if weight_input else [_const("w", RNG.standard_normal(weight_shape).astype(dtype))]
    if bias and not bias_input:
        inits.append(_const("b", RNG.standard_normal(8).astype(dtype)))
    x_shape = ["N", 4, *(5,) * spatial]
    y_shape = ["N", 8, *((5,) * spatial if layer == "Conv" else (7,) * spatial)]
    inputs = [oh.make_tensor_value_info("x", elem, x_shape)]
    if weight_input:
        inputs.append(oh.make_tensor_value_info("w", elem, list(weight_shape)))
    if bias_input:
        inputs.append(oh.make_tensor_value_info("b", elem, [8]))
    attrs = {"group": group, **({"pads": [1] * 2 * spatial} if layer == "Conv" else {})}
    nodes = [oh.make_node(layer, ["x", "w", "b"] if bias else ["x", "w"], ["h"], **attrs)]
    names = ["h", *[f"s{i}" for i in range(1, len(steps))], "y"]
    for index, (op, operand, conv_side_first) in enumerate(steps):
        if isinstance(operand, str):
            inputs.append(oh.make_tensor_value_info(operand, elem, y_shape))
            operand_name = operand
        else:
            operand_name = f"k{index}"
            inits.append(_const(operand_name, np.asarray(operand, dtype)))
        pair = [names[index], operand_name] if conv_side_first else [operand_name, names[index]]
        nodes.append(oh.make_node(op, pair, [names[index + 1]]))
    outputs = [oh.make_tensor_value_info("y", elem, y_shape)]
    outputs += [oh.make_tensor_value_info(name, elem, y_shape) for name in extra_outputs]
    for name in extra_consumers:
        nodes.append(oh.make_node("Neg", [name], [f"{name}_neg"]))
        outputs.append(oh.make_tensor_value_info(f"{name}_neg", elem, y_shape))
    if weight_shared or bias_shared:
        nodes.append(oh.make_node(layer, ["x", "w", "b"] if bias_shared else ["x", "w"], ["other"], **attrs))
        outputs.append(oh.make_tensor_value_info("other", elem, y_shape))
    graph = oh.make_graph(nodes, "g", inputs, outputs, inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def channel_vector(shape=(8, 1, 1), low=0.5, high=1.5):
    return RNG.uniform(low, high, shape)


# Folding reassociates float arithmetic: equal within float32 rounding of values of magnitude ~10.
assert_same_outputs = functools.partial(conftest.assert_same_outputs, rtol=1e-5, atol=1e-5)


def run(model):
    return graphopt.optimize(model, passes=[FuseConvMulAdd()], check_changed=True)


@pytest.mark.parametrize("steps", [
    [("Mul", channel_vector(), True)],
    [("Mul", channel_vector((1, 8, 1, 1)), False)],
    [("Mul", 0.5, True)],
    [("Add", channel_vector((1, 8, 1, 1), -1, 1), True)],
    [("Add", channel_vector((8, 1, 1), -1, 1), False)],
    [("Add", [0.25], True)],
    [("Sub", channel_vector(), True)],
    [("Div", channel_vector(), True)],
    [("Mul", channel_vector(), True), ("Add", channel_vector((1, 8, 1, 1), -1, 1), False)],
    [("Add", channel_vector(), True), ("Mul", channel_vector(), True), ("Sub", 0.5, True), ("Div", 2.0, True)],
])
@pytest.mark.parametrize("bias", [True, False])
def test_steps_folded_and_numerics_kept(steps, bias):
    model = conv_steps(steps, bias=bias)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Conv": 1}
    assert total_stats(report) == {"rewrites.conv_mul_add": len(steps)}  # step by step, in one sweep
    assert_same_outputs(model, optimized, [random_feeds(model, seed) for seed in range(2)])


@pytest.mark.parametrize("layer", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("group", [1, 2])
def test_grouped_and_transposed(layer, group):
    model = conv_steps([("Mul", channel_vector(), True), ("Add", channel_vector(low=-1, high=1), True)],
                       layer=layer, group=group)
    optimized, _ = run(model)
    assert op_counts(optimized) == {layer: 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


@pytest.mark.parametrize("spatial", [1, 3])
def test_other_spatial_ranks(spatial):
    model = conv_steps([("Mul", channel_vector((8,) + (1,) * spatial), True)], spatial=spatial)
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Conv": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_float64():
    """ORT's CPU Conv has no float64 kernel: compared on onnx's reference evaluator instead."""
    from onnx.reference import ReferenceEvaluator

    model = conv_steps([("Mul", channel_vector(), True), ("Add", 1.5, True)], dtype=np.float64)
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Conv": 1}
    feed = random_feeds(model)
    expected, actual = ReferenceEvaluator(model).run(None, feed), ReferenceEvaluator(optimized).run(None, feed)
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-12, atol=1e-12)


def test_constant_node_operands():
    """Operands may be Constant nodes as well as initializers."""
    model = conv_steps([("Mul", channel_vector(), True), ("Add", channel_vector((1, 8, 1, 1)), False)])
    for index, name in enumerate(["k0", "k1"]):
        init = next(i for i in model.graph.initializer if i.name == name)
        model.graph.node.insert(index, oh.make_node("Constant", [], [name], value=init))
        model.graph.initializer.remove(init)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Conv": 1}
    assert total_stats(report) == {"rewrites.conv_mul_add": 2}
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_add_only_chain_keeps_a_shared_weight():
    """Only the bias changes when nothing scales, so a weight shared with another Conv is no obstacle."""
    model = conv_steps([("Add", channel_vector(), True)], weight_shared=True)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Conv": 2}
    assert total_stats(report) == {"rewrites.conv_mul_add": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_foldable_steps_before_a_residual_add_are_folded():
    model = conv_steps([("Mul", channel_vector(), True), ("Add", channel_vector(), True), ("Add", "r", True)])
    optimized, report = run(model)
    assert op_counts(optimized) == {"Conv": 1, "Add": 1}
    assert total_stats(report) == {"rewrites.conv_mul_add": 2, "skipped.conv_mul_add.operand_not_constant": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])
    _, again = run(optimized)
    assert not again.passes[0].changed
    assert total_stats(again) == {"skipped.conv_mul_add.operand_not_constant": 1}


def test_step_with_another_consumer_ends_the_chain():
    model = conv_steps([("Mul", channel_vector(), True), ("Add", channel_vector(), True)], extra_consumers=("s1",))
    optimized, report = run(model)
    assert op_counts(optimized) == {"Conv": 1, "Add": 1, "Neg": 1}
    assert total_stats(report) == {"rewrites.conv_mul_add": 1,
                                   "skipped.conv_mul_add.intermediate_has_other_consumers": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


@pytest.mark.parametrize("model, reason", [
    (lambda: conv_steps([("Mul", channel_vector(), True)], weight_input=True), "weight_not_constant"),
    (lambda: conv_steps([("Add", channel_vector(), True)], bias_input=True), "bias_not_constant"),
    (lambda: conv_steps([("Mul", channel_vector(), True)], dtype=np.float16), "unsupported_dtype"),
    (lambda: conv_steps([("Add", "r", True)]), "operand_not_constant"),
    (lambda: conv_steps([("Mul", channel_vector((5,)), True)]), "operand_not_per_channel"),  # along the width
    (lambda: conv_steps([("Mul", channel_vector((5, 1)), True)]), "operand_not_per_channel"),  # the height
    (lambda: conv_steps([("Add", channel_vector((1, 8, 1, 5)), True)]), "operand_not_per_channel"),
    (lambda: conv_steps([("Add", channel_vector((3, 1, 1, 1)), True)]), "operand_not_per_channel"),  # batch
    (lambda: conv_steps([("Mul", channel_vector((1, 1, 1, 1)), True)], spatial=1),  # would enlarge the output
     "operand_not_per_channel"),
    (lambda: conv_steps([("Mul", [np.inf], True)]), "operand_not_finite"),
    (lambda: conv_steps([("Div", np.r_[np.ones(7), 0.0].reshape(8, 1, 1), True)]), "operand_not_finite"),
    (lambda: conv_steps([("Mul", channel_vector(), True)], extra_outputs=("h",)), "intermediate_is_graph_output"),
    (lambda: conv_steps([("Mul", channel_vector(), True)], extra_consumers=("h",)),
     "intermediate_has_other_consumers"),
    (lambda: conv_steps([("Mul", channel_vector(), True)], weight_shared=True), "shared_weight"),
    (lambda: conv_steps([("Add", channel_vector(), True)], bias_shared=True), "shared_weight"),
])
def test_declines_with_reason(model, reason):
    model = model()
    optimized, report = run(model)
    assert total_stats(report) == {f"skipped.conv_mul_add.{reason}": 1}
    assert op_counts(optimized) == op_counts(model)
    if reason != "unsupported_dtype":  # ORT's CPU Conv has no float16 kernel to compare on
        assert_same_outputs(model, optimized, [random_feeds(model)])


def test_second_run_changes_nothing():
    once, _ = run(conv_steps([("Mul", channel_vector(), True), ("Add", channel_vector(), True)]))
    _, report = run(once)
    assert not report.passes[0].changed


PER_CHANNEL_SHAPES = [(), (1,), (8, 1, 1), (1, 8, 1, 1), (1, 1, 1), (1, 1, 1, 1)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_per_channel_chains_fold_completely(data):
    steps = []
    for _ in range(data.draw(st.integers(1, 4), label="length")):
        op = data.draw(st.sampled_from(["Mul", "Add", "Sub", "Div"]), label="op")
        shape = data.draw(st.sampled_from(PER_CHANNEL_SHAPES), label="shape")
        side = data.draw(st.booleans(), label="conv side first") if op in ("Mul", "Add") else True
        steps.append((op, channel_vector(shape, -2, 2) if op in ("Add", "Sub") else channel_vector(shape), side))
    layer = data.draw(st.sampled_from(["Conv", "ConvTranspose"]), label="layer")
    model = conv_steps(steps, layer=layer, group=data.draw(st.sampled_from([1, 2, 4])), bias=data.draw(st.booleans()))
    optimized, report = run(model)
    assert op_counts(optimized) == {layer: 1}
    assert total_stats(report) == {"rewrites.conv_mul_add": len(steps)}
    assert_same_outputs(model, optimized, [random_feeds(model)])


@pytest.mark.parametrize("layer, group", [("Conv", 1), ("Conv", 2), ("ConvTranspose", 2)])
@pytest.mark.parametrize("op", ["Mul", "Div"])
def test_scaled_weights_are_float64_products_rounded_once(layer, group, op):
    vector = channel_vector()
    model = conv_steps([(op, vector, True)], layer=layer, group=group)
    optimized, _ = run(model)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    scale = inits["k0"].astype(np.float64).reshape(-1)
    scale = scale if op == "Mul" else 1.0 / scale
    weight = inits["w"].astype(np.float64)
    if layer == "Conv":
        expected = weight * scale[:, None, None, None]
    else:  # weight [C_in, C_out/g, k, k]: output channel of [i, j] is (i // (C_in/g)) * (C_out/g) + j
        i, j = np.indices(weight.shape[:2])
        expected = weight * scale[(i // (weight.shape[0] // group)) * weight.shape[1] + j][:, :, None, None]
    (node,) = optimized.graph.node
    folded = {t.name: onnx.numpy_helper.to_array(t) for t in optimized.graph.initializer}[node.input[1]]
    np.testing.assert_array_equal(folded.view(np.uint32), expected.astype(np.float32).view(np.uint32))
