"""fuse-pad-into-conv: pads folded into Conv and AveragePool, bitwise-equal outputs on ORT, and a negative test
per decline reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from conftest import assert_same_outputs, op_counts, random_feeds, total_stats
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import graphopt
from passes.fuse_pad_into_conv import FusePadIntoConv

RNG = np.random.default_rng(0)
F = onnx.TensorProto.FLOAT


def _const(name, array):
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def pad_model(pads=(0, 0, 1, 2, 0, 0, 2, 1), layer="Conv", layer_attrs=None, opset=18, mode="constant",
              value=None, axes=None, pad_inputs_as_graph_inputs=(), extra_outputs=(), extra_consumer=False,
              x_shape=("N", 3, 7, 6), weight_from_pad=False, typed_outputs=True):
    """x -> Pad -> p -> Conv(w: [4, 3, 3, 3]) or AveragePool(kernel 3x3) -> y, with Pad in the form of ``opset``."""
    inits, inputs = [], [oh.make_tensor_value_info("x", F, list(x_shape))]
    pad_attrs = {"mode": mode}
    if opset < 11:
        pad_attrs["pads"] = list(pads)
        if value is not None:
            pad_attrs["value"] = float(value)
        pad_inputs = ["x"]
    else:
        pad_inputs = ["x", "pads"]
        operands = {"pads": np.asarray(pads, np.int64)}
        if value is not None or axes is not None:
            pad_inputs.append("value" if value is not None else "")
            if value is not None:
                operands["value"] = np.asarray(value, np.float32)
        if axes is not None:
            pad_inputs.append("axes")
            operands["axes"] = np.asarray(axes, np.int64)
        for name, array in operands.items():
            if name in pad_inputs_as_graph_inputs:
                inputs.append(oh.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                                                        list(array.shape)))
            else:
                inits.append(_const(name, array))
    nodes = [oh.make_node("Pad", pad_inputs, ["p"], **pad_attrs)]
    if layer == "Conv":
        inits.append(_const("w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)))
        inits.append(_const("b", RNG.standard_normal(4).astype(np.float32)))
        conv_inputs = ["p", "p"] if weight_from_pad else ["p", "w", "b"]
        nodes.append(oh.make_node("Conv", conv_inputs, ["y"], **(layer_attrs or {})))
    else:
        nodes.append(oh.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3], **(layer_attrs or {})))
    outputs = [oh.make_tensor_value_info("y", F, None)]
    if extra_consumer:
        nodes.append(oh.make_node("Neg", ["p"], ["z"]))
        outputs.append(oh.make_tensor_value_info("z", F, None))
    outputs += [oh.make_tensor_value_info(name, F, None) for name in extra_outputs]
    graph = oh.make_graph(nodes, "g", inputs, outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    return _with_output_shapes(model) if typed_outputs else model


def _with_output_shapes(model):
    """Graph outputs typed with the shapes onnx infers (the checker wants a shape on every output)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for output in model.graph.output:
        if output.name in known and known[output.name].type.tensor_type.HasField("shape"):
            output.type.CopyFrom(known[output.name].type)
        else:
            output.type.tensor_type.shape.SetInParent()
            output.type.tensor_type.shape.ClearField("dim")
            for _ in range(4):
                output.type.tensor_type.shape.dim.add()
    return model


def run(model):
    return graphopt.optimize(model, passes=[FusePadIntoConv()], check_changed=True)


def layer_attr(model, name):
    node = next(n for n in model.graph.node if n.op_type in ("Conv", "AveragePool"))
    attribute = next((a for a in node.attribute if a.name == name), None)
    return None if attribute is None else onnx.helper.get_attribute_value(attribute)


@pytest.mark.parametrize("opset", [10, 13, 18])
def test_pad_folded_into_conv_pads(opset):
    model = pad_model(opset=opset, layer_attrs={"pads": [1, 0, 0, 1]})
    optimized, report = run(model)
    assert op_counts(optimized) == {"Conv": 1}
    assert layer_attr(optimized, "pads") == [2, 2, 2, 2]
    assert total_stats(report) == {"rewrites.pad_conv": 1}
    assert_same_outputs(model, optimized, [random_feeds(model, seed) for seed in range(2)], rtol=0, atol=0)


@pytest.mark.parametrize("layer_attrs", [{"strides": [2, 2]}, {"dilations": [2, 1]}, {"auto_pad": "VALID"}])
def test_conv_attributes_kept(layer_attrs):
    model = pad_model(layer_attrs=layer_attrs)
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Conv": 1}
    assert layer_attr(optimized, "auto_pad") in (None, b"NOTSET")
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_explicit_zero_value_and_axes():
    model = pad_model(pads=(1, 2, 2, 1), axes=(-2, 3), value=0.0)
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Conv": 1}
    assert layer_attr(optimized, "pads") == [1, 2, 2, 1]
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


@pytest.mark.parametrize("layer_attrs", [
    {"count_include_pad": 1},
    {"count_include_pad": 1, "pads": [1, 0, 0, 1], "strides": [2, 2]},
    {},  # count_include_pad=0 without pads of its own: the explicit zeros were counted
])
def test_average_pool(layer_attrs):
    model = pad_model(layer="AveragePool", layer_attrs=layer_attrs, opset=19)
    optimized, report = run(model)
    assert op_counts(optimized) == {"AveragePool": 1}
    assert layer_attr(optimized, "count_include_pad") == 1
    assert total_stats(report) == {"rewrites.pad_conv": 1}
    assert_same_outputs(model, optimized, [random_feeds(model, seed) for seed in range(2)], rtol=0, atol=0)


@pytest.mark.parametrize("model, reason", [
    (lambda: pad_model(mode="reflect"), "pad_mode_not_constant"),
    (lambda: pad_model(pad_inputs_as_graph_inputs=("pads",)), "pads_not_constant"),
    (lambda: pad_model(value=0.0, pad_inputs_as_graph_inputs=("value",)), "pad_value_not_constant"),
    (lambda: pad_model(value=1.0), "pad_value_not_zero"),
    (lambda: pad_model(value=-0.0), "pad_value_not_zero"),
    (lambda: pad_model(value=1.0, opset=10), "pad_value_not_zero"),
    (lambda: pad_model(pads=(1, 1, 1, 1), axes=(2, 3), pad_inputs_as_graph_inputs=("axes",)), "axes_not_constant"),
    (lambda: pad_model(pads=(0, 0, -1, 0, 0, 0, 0, 1)), "negative_pads"),
    (lambda: pad_model(pads=(0, 1, 1, 1, 0, 0, 1, 1), layer="AveragePool"), "pads_on_non_spatial_axes"),
    (lambda: pad_model(pads=(1, 0, 1, 1, 0, 0, 1, 1), layer="AveragePool"), "pads_on_non_spatial_axes"),
    (lambda: pad_model(layer_attrs={"auto_pad": "SAME_UPPER"}), "auto_pad_not_notset"),
    (lambda: pad_model(layer="AveragePool", layer_attrs={"pads": [1, 1, 1, 1]}), "pool_excludes_padding"),
    (lambda: pad_model(layer="AveragePool", layer_attrs={"ceil_mode": 1, "strides": [2, 2], "count_include_pad": 1}),
     "pool_ceil_mode"),
    (lambda: pad_model(layer="AveragePool", layer_attrs={"pads": [0, 1, 0, 0], "count_include_pad": 1}),
     "pool_pads_exceed_kernel"),
    (lambda: pad_model(pads=(0, 0, 0, 0, 0, 0, 0, 0), x_shape=(1, 3, 3, 3), weight_from_pad=True),
     "padded_tensor_used_as_weight"),
    (lambda: pad_model(extra_outputs=("p",)), "intermediate_is_graph_output"),
    (lambda: pad_model(extra_consumer=True), "intermediate_has_other_consumers"),
])
def test_declines_with_reason(model, reason):
    model = model()
    optimized, report = run(model)
    assert total_stats(report) == {f"skipped.pad_conv.{reason}": 1}
    assert op_counts(optimized) == op_counts(model)
    feeds = random_feeds(model)
    feeds.update({"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]), "value": np.zeros((), np.float32),
                  "axes": np.array([2, 3])})
    feeds = {name: value for name, value in feeds.items() if name in {i.name for i in model.graph.input}}
    assert_same_outputs(model, optimized, [feeds], rtol=0, atol=0)


def test_constant_node_pads():
    model = pad_model(pads=(1, 2, 2, 1), axes=(2, 3), value=0.0)
    for index, name in enumerate(["pads", "value", "axes"]):
        init = next(i for i in model.graph.initializer if i.name == name)
        model.graph.node.insert(index, oh.make_node("Constant", [], [name], value=init))
        model.graph.initializer.remove(init)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Conv": 1}
    assert total_stats(report) == {"rewrites.pad_conv": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_shared_pads_and_weight_do_not_block():
    """Nothing constant is modified, so a pads tensor and a weight shared by two Pad+Conv pairs are no obstacle."""
    model = pad_model(typed_outputs=False)
    model.graph.node.extend([oh.make_node("Pad", ["x", "pads"], ["p2"]), oh.make_node("Conv", ["p2", "w"], ["y2"])])
    model.graph.output.append(oh.make_tensor_value_info("y2", F, None))
    model = _with_output_shapes(model)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Conv": 2}
    assert total_stats(report) == {"rewrites.pad_conv": 2}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_average_pool_before_opset_7_declined():
    """AveragePool-1 has no count_include_pad (ORT cannot run it: only the verdict is checked)."""
    model = pad_model(layer="AveragePool", opset=6)
    optimized, report = run(model)
    assert total_stats(report) == {"skipped.pad_conv.pool_excludes_padding": 1}
    assert op_counts(optimized) == op_counts(model)


def test_axes_with_unknown_rank_declined():
    """Mapping ``axes`` onto all axes needs the rank: here neither the input's nor the kernel's is known."""
    graph = oh.make_graph(
        [oh.make_node("Reshape", ["x", "s"], ["r"]), oh.make_node("Pad", ["r", "pads", "", "axes"], ["p"]),
         oh.make_node("Reshape", ["v", "s"], ["w"]), oh.make_node("Conv", ["p", "w"], ["y"])], "g",
        [oh.make_tensor_value_info("x", F, [48]), oh.make_tensor_value_info("v", F, [48]),
         oh.make_tensor_value_info("s", onnx.TensorProto.INT64, ["L"])],
        [oh.make_tensor_value_info("y", F, ["a", "b", "c", "d"])],
        [_const("pads", np.array([1, 1, 1, 1], np.int64)), _const("axes", np.array([-2, -1], np.int64))])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    optimized, report = run(model)
    assert total_stats(report) == {"skipped.pad_conv.rank_unknown": 1}
    assert op_counts(optimized) == op_counts(model)
    feed = {"x": RNG.standard_normal(48).astype(np.float32), "v": RNG.standard_normal(48).astype(np.float32),
            "s": np.array([1, 3, 4, 4])}
    assert_same_outputs(model, optimized, [feed], rtol=0, atol=0)


def test_second_run_changes_nothing():
    once, _ = run(pad_model())
    _, report = run(once)
    assert not report.passes[0].changed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_pads_and_layers_keep_outputs_bitwise(data):
    """Any Pad before any Conv or AveragePool: fused or declined, the outputs stay bitwise equal."""
    spatial = data.draw(st.integers(1, 2), label="spatial")
    layer = data.draw(st.sampled_from(["Conv", "AveragePool"]), label="layer")
    kernel = data.draw(st.lists(st.integers(1, 3), min_size=spatial, max_size=spatial), label="kernel")
    sizes = data.draw(st.lists(st.integers(3, 6), min_size=spatial, max_size=spatial), label="sizes")
    pad_begin = data.draw(st.lists(st.integers(0, 2), min_size=spatial, max_size=spatial))
    pad_end = data.draw(st.lists(st.integers(0, 2), min_size=spatial, max_size=spatial))
    own = data.draw(st.lists(st.integers(0, 1), min_size=2 * spatial, max_size=2 * spatial), label="own pads")
    strides = data.draw(st.lists(st.integers(1, 2), min_size=spatial, max_size=spatial), label="strides")
    attrs = {"kernel_shape": kernel, "pads": own, "strides": strides}
    if layer == "Conv":
        attrs["dilations"] = data.draw(st.lists(st.integers(1, 2), min_size=spatial, max_size=spatial))
    else:
        attrs["count_include_pad"] = data.draw(st.integers(0, 1), label="count_include_pad")
    dilations = attrs.get("dilations", [1] * spatial)
    for axis in range(spatial):  # the original must have a non-empty output
        padded = sizes[axis] + pad_begin[axis] + pad_end[axis] + own[axis] + own[spatial + axis]
        assume(padded >= dilations[axis] * (kernel[axis] - 1) + 1)
        if layer == "AveragePool":
            assume(own[axis] < kernel[axis] and own[spatial + axis] < kernel[axis])
    pads = [0, 0, *pad_begin, 0, 0, *pad_end]
    inits = [_const("pads", np.asarray(pads, np.int64))]
    inputs = ["p"]
    if layer == "Conv":
        inits.append(_const("w", RNG.standard_normal((2, 3, *kernel)).astype(np.float32)))
        inputs.append("w")
    graph = oh.make_graph(
        [oh.make_node("Pad", ["x", "pads"], ["p"]), oh.make_node(layer, inputs, ["y"], **attrs)], "g",
        [oh.make_tensor_value_info("x", F, [2, 3, *sizes])], [oh.make_tensor_value_info("y", F, None)], inits)
    model = _with_output_shapes(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 19)]))
    optimized, report = run(model)
    stats = total_stats(report)
    assert stats in ({"rewrites.pad_conv": 1}, {"skipped.pad_conv.pool_pads_exceed_kernel": 1},
                     {"skipped.pad_conv.pool_excludes_padding": 1})
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)
