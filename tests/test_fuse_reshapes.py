"""fuse-reshapes: collapsed chains, bitwise-equal outputs on ORT, and a negative test per decline reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_same_outputs, op_counts, parse_model, random_feeds, total_stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphopt
from passes.fuse_reshapes import FuseReshapes


def model_text(body, inputs="float[2,3,4] x", outputs="float[6,4] y", opset=17, initializers=""):
    return parse_model(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({inputs}) => ({outputs}) {initializers}
    {{
        {body}
    }}
    """)


def reshape_pair(second_shape="-1, 4", first_shape="4, 6", outputs="float[6,4] y", extra=""):
    return model_text(f"""
        s1 = Constant<value = int64[{len(first_shape.split(','))}] {{{first_shape}}}>()
        s2 = Constant<value = int64[{len(second_shape.split(','))}] {{{second_shape}}}>()
        t = Reshape(x, s1)
        y = Reshape(t, s2)
        {extra}
    """, outputs=outputs)


def run(model):
    return graphopt.optimize(model, passes=[FuseReshapes()], check_changed=True)


def fold_constant_nodes(model):
    """The Constant nodes of ``model`` as initializers (fusions read initializers; folding is another pass)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup()
    folded = gs.export_onnx(graph)
    folded.ir_version = model.ir_version
    return folded


def test_reshape_pair_collapses():
    model = fold_constant_nodes(reshape_pair())
    optimized, report = run(model)
    assert op_counts(optimized) == {"Reshape": 1}
    assert total_stats(report) == {"rewrites.reshape_chain": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_chain_of_shape_ops_collapses_in_one_run():
    model = fold_constant_nodes(model_text("""
        a = Flatten<axis = 2>(x)
        u = Constant<value = int64[1] {0}>()
        b = Unsqueeze(a, u)
        c = Squeeze(b, u)
        s1 = Constant<value = int64[2] {12, 2}>()
        d = Reshape(c, s1)
        s2 = Constant<value = int64[2] {-1, 4}>()
        y = Reshape(d, s2)
    """))
    optimized, report = run(model)
    assert op_counts(optimized) == {"Reshape": 1}
    assert total_stats(report) == {"rewrites.reshape_chain": 2}  # up to d, then d's Reshape into y's
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_constant_node_shape():
    model = reshape_pair()  # the shapes are Constant nodes
    optimized, report = run(model)
    assert op_counts(optimized) == {"Reshape": 1, "Constant": 1}
    assert total_stats(report) == {"rewrites.reshape_chain": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_copying_zero_resolved_from_static_shape():
    model = fold_constant_nodes(reshape_pair(second_shape="0, -1", first_shape="6, 4"))
    optimized, report = run(model)
    assert op_counts(optimized) == {"Reshape": 1}
    shape = next(init for init in optimized.graph.initializer)
    assert onnx.numpy_helper.to_array(shape).tolist() == [6, -1]
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_allowzero_zero_is_literal():
    model = fold_constant_nodes(model_text("""
        s1 = Constant<value = int64[2] {4, 0}>()
        t = Reshape<allowzero = 1>(x, s1)
        s2 = Constant<value = int64[3] {0, 2, 3}>()
        y = Reshape<allowzero = 1>(t, s2)
    """, inputs="float[2,0,4] x", outputs="float[0,2,3] y", opset=14))
    optimized, report = run(model)
    assert op_counts(optimized) == {"Reshape": 1}
    assert_same_outputs(model, optimized, [{"x": np.zeros((2, 0, 4), np.float32)}], rtol=0, atol=0)


def test_shared_shape_does_not_block():
    """Nothing constant is modified, so a shape tensor shared by two chains is no obstacle."""
    model = fold_constant_nodes(reshape_pair(extra="""
        t2 = Reshape(x, s1)
        z = Reshape(t2, s2)
    """, outputs="float[6,4] y, float[6,4] z"))
    optimized, report = run(model)
    assert op_counts(optimized) == {"Reshape": 2}
    assert total_stats(report) == {"rewrites.reshape_chain": 2}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_shape_attribute_before_opset_5():
    model = model_text("""
        t = Reshape<shape = [4, 6]>(x)
        y = Reshape<shape = [3, -1]>(t)
    """, outputs="float[3,8] y", opset=4)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Reshape": 1}
    assert list(optimized.graph.node[0].attribute[0].ints) == [3, -1]
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_shared_head_ends_the_chain():
    model = fold_constant_nodes(model_text("""
        a = Flatten<axis = 1>(x)
        s1 = Constant<value = int64[2] {4, 6}>()
        b = Reshape(a, s1)
        s2 = Constant<value = int64[2] {-1, 4}>()
        y = Reshape(b, s2)
        z = Neg(a)
    """, outputs="float[6,4] y, float[2,12] z"))
    optimized, report = run(model)
    assert op_counts(optimized) == {"Flatten": 1, "Reshape": 1, "Neg": 1}
    assert total_stats(report) == {"rewrites.reshape_chain": 1,
                                   "skipped.reshape_chain.intermediate_has_other_consumers": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_blocked_consumer_does_not_block_the_chain_before_it():
    model = fold_constant_nodes(model_text("""
        s1 = Constant<value = int64[2] {4, 6}>()
        a = Reshape(x, s1)
        s2 = Constant<value = int64[2] {-1, 4}>()
        b = Reshape(a, s2)
        y = Reshape(b, s)
    """, inputs="float[2,3,4] x, int64[2] s", outputs="float[?,?] y"))
    optimized, report = run(model)
    assert op_counts(optimized) == {"Reshape": 2}
    assert total_stats(report) == {"rewrites.reshape_chain": 1, "skipped.reshape_chain.shape_not_constant": 1}
    feed = {**random_feeds(model), "s": np.array([3, 8])}
    assert_same_outputs(model, optimized, [feed], rtol=0, atol=0)


@pytest.mark.parametrize("model, reason", [
    (lambda: reshape_pair(extra="z = Neg(t)", outputs="float[6,4] y, float[4,6] z"),
     "skipped.reshape_chain.intermediate_has_other_consumers"),
    (lambda: reshape_pair(outputs="float[6,4] y, float[4,6] t"),
     "skipped.reshape_chain.intermediate_is_graph_output"),
    (lambda: model_text("""
        s1 = Constant<value = int64[2] {4, 6}>()
        t = Reshape(x, s1)
        y = Reshape(t, s)
     """, inputs="float[2,3,4] x, int64[2] s"), "skipped.reshape_chain.shape_not_constant"),
    (lambda: model_text("""
        t = Flatten<axis = 1>(x)
        s2 = Constant<value = int64[2] {0, -1}>()
        y = Reshape(t, s2)
     """, inputs="float[N,3,4] x", outputs="float[N,12] y"), "skipped.reshape_chain.copy_dimension_unresolved"),
])
def test_declines_with_reason(model, reason):
    model = fold_constant_nodes(model())
    optimized, report = run(model)
    assert total_stats(report) == {reason: 1}
    assert len(optimized.graph.node) == len(model.graph.node)
    feed = random_feeds(model)
    if "s" in feed:
        feed["s"] = np.array([6, 4])
    assert_same_outputs(model, optimized, [feed], rtol=0, atol=0)


def test_second_run_changes_nothing():
    once, _ = run(fold_constant_nodes(reshape_pair(second_shape="0, -1", first_shape="6, 4")))
    _, report = run(once)
    assert not report.passes[0].changed


def _factorizations(total):
    return [d for d in range(1, total + 1) if total % d == 0]


@st.composite
def shape_of(draw, total, rank):
    dims = []
    for _ in range(rank - 1):
        dims.append(draw(st.sampled_from(_factorizations(total))))
        total //= dims[-1]
    return [*dims, total]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_chains_keep_outputs_bitwise(data):
    """Random chains of Reshape (with -1 and copying 0), Flatten, Squeeze and Unsqueeze: collapsed or not,
    bitwise-equal outputs; a chain ending in a Reshape whose zeros are resolvable leaves no other shape op."""
    shape = [2, 3, 4]
    nodes, inits, current = [], [], "x"
    for index in range(data.draw(st.integers(1, 4), label="length")):
        op = data.draw(st.sampled_from(["Reshape", "Reshape", "Flatten", "Unsqueeze", "Squeeze"]), label="op")
        out = f"t{index}"
        if op == "Reshape":
            target = data.draw(shape_of(24, data.draw(st.integers(1, 4))), label="target")
            spec = list(target)
            for axis in range(len(spec)):
                if axis < len(shape) and shape[axis] == spec[axis] and data.draw(st.booleans(), label="copy"):
                    spec[axis] = 0
            if data.draw(st.booleans(), label="infer"):
                spec[data.draw(st.integers(0, len(spec) - 1))] = -1 if -1 not in spec else spec[0]
            name = f"s{index}"
            inits.append(onnx.numpy_helper.from_array(np.asarray(spec, np.int64), name))
            nodes.append(onnx.helper.make_node("Reshape", [current, name], [out]))
            shape = target
        elif op == "Flatten":
            axis = data.draw(st.integers(0, len(shape)), label="axis")
            nodes.append(onnx.helper.make_node("Flatten", [current], [out], axis=axis))
            shape = [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))]
        elif op == "Unsqueeze":
            name = f"a{index}"
            inits.append(onnx.numpy_helper.from_array(np.asarray([0], np.int64), name))
            nodes.append(onnx.helper.make_node("Unsqueeze", [current, name], [out]))
            shape = [1, *shape]
        else:
            nodes.append(onnx.helper.make_node("Squeeze", [current], [out]))
            shape = [d for d in shape if d != 1]
        current = out
    nodes.append(onnx.helper.make_node("Identity", [current], ["y"]))
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                  [2, 3, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    optimized, report = run(model)
    assert not any(key.startswith("skipped.") for key in total_stats(report))
    if nodes[-2].op_type == "Reshape":
        assert op_counts(optimized) == {"Reshape": 1, "Identity": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)
    _, again = run(optimized)
    assert not again.passes[0].changed
