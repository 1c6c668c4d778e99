"""fuse-transposes: composed and cancelled chains, bitwise-equal outputs on ORT, a negative test per decline
reason, and a property test over random chains."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from conftest import assert_same_outputs, op_counts, parse_model, random_feeds, total_stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphopt
from passes.fuse_transposes import FuseTransposes


def transposes(perms, shape=(2, 3, 4, 5), extra_outputs=(), consumers=()):
    """x -> Transpose(perms[0]) -> t1 -> ... -> y; ``extra_outputs`` names intermediates (t1, ...) that are also
    graph outputs; ``consumers`` names intermediates that also feed a Neg."""
    names = ["x", *[f"t{i}" for i in range(1, len(perms))], "y"]
    shapes, value = {"x": list(shape)}, np.empty(shape)
    nodes = []
    for index, perm in enumerate(perms):
        attrs = {} if perm is None else {"perm": list(perm)}
        nodes.append(oh.make_node("Transpose", [names[index]], [names[index + 1]], **attrs))
        value = np.transpose(value, perm)
        shapes[names[index + 1]] = list(value.shape)
    outputs = [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shapes["y"])]
    for name in consumers:
        nodes.append(oh.make_node("Neg", [name], [f"{name}_neg"]))
        outputs.append(oh.make_tensor_value_info(f"{name}_neg", onnx.TensorProto.FLOAT, shapes[name]))
    outputs += [oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shapes[name]) for name in extra_outputs]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))], outputs)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def unknown_rank_transposes(perms):
    """x -> Reshape(x, s) of unknown rank -> Transposes -> Neg -> y: no tensor of the chain has a known rank."""
    names = ["z", *[f"t{i}" for i in range(1, len(perms) + 1)]]
    nodes = [oh.make_node("Reshape", ["x", "s"], ["z"])]
    for index, perm in enumerate(perms):
        attrs = {} if perm is None else {"perm": list(perm)}
        nodes.append(oh.make_node("Transpose", [names[index]], [names[index + 1]], **attrs))
    nodes.append(oh.make_node("Neg", [names[-1]], ["y"]))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [24]),
                                       oh.make_tensor_value_info("s", onnx.TensorProto.INT64, ["L"])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["a", "b", "c"])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def run(model):
    return graphopt.optimize(model, passes=[FuseTransposes()], check_changed=True)


def transpose_perms(model):
    return [list(node.attribute[0].ints) if node.attribute else None
            for node in model.graph.node if node.op_type == "Transpose"]


def test_two_transposes_compose():
    model = transposes([(1, 0, 2, 3), (2, 0, 1, 3)])
    optimized, report = run(model)
    assert op_counts(optimized) == {"Transpose": 1}
    assert transpose_perms(optimized) == [[2, 1, 0, 3]]  # q[i] = p1[p2[i]]
    assert total_stats(report) == {"rewrites.compose_transposes": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_whole_chain_in_one_run():
    model = transposes([(1, 0, 2, 3), (0, 2, 1, 3), (3, 1, 2, 0), (1, 2, 3, 0)])
    optimized, report = run(model)
    assert op_counts(optimized) == {"Transpose": 1}
    assert total_stats(report) == {"rewrites.compose_transposes": 3}  # pair by pair, in one sweep
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_identity_composition_removed_and_output_name_kept():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,4] x) => (float[2,3,4] y) {
        a = Relu(x)
        t = Transpose<perm = [2, 0, 1]>(a)
        y = Transpose<perm = [1, 2, 0]>(t)
    }
    """
    model = parse_model(text)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Relu": 1}
    assert [o.name for o in optimized.graph.output] == ["y"]
    assert total_stats(report) == {"rewrites.cancel_transposes": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_identity_composition_from_graph_input_to_output_leaves_identity():
    model = transposes([(1, 0, 2, 3), (1, 0, 2, 3)])
    optimized, report = run(model)
    assert op_counts(optimized) == {"Identity": 1}
    assert total_stats(report) == {"rewrites.cancel_transposes": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_identity_composition_feeding_a_node_is_bypassed():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,4] x) => (float[2,3,4] y) {
        t = Transpose<perm = [1, 0, 2]>(x)
        u = Transpose<perm = [1, 0, 2]>(t)
        y = Relu(u)
    }
    """
    model = parse_model(text)
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Relu": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


@pytest.mark.parametrize("perms, expected", [
    ([None, None], {"Identity": 1}),
    ([None, (1, 2, 0, 3)], {"Transpose": 1}),
    ([None, None, None], {"Transpose": 1}),
])
def test_missing_perm_reverses_axes(perms, expected):
    model = transposes(perms)
    optimized, _ = run(model)
    assert op_counts(optimized) == expected
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


@pytest.mark.parametrize("count, expected", [(2, {}), (3, {"Transpose": 1})])
def test_missing_perms_of_unknown_rank(count, expected):
    """Two reversals are the identity whatever the rank; a third is left as it is."""
    model = unknown_rank_transposes([None] * count)
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Reshape": 1, "Neg": 1, **expected}
    assert transpose_perms(optimized) in ([], [None])
    feed = {"x": np.arange(24, dtype=np.float32), "s": np.array([2, 3, 4])}
    assert_same_outputs(model, optimized, [feed], rtol=0, atol=0)


def test_shared_head_ends_the_chain():
    model = transposes([(1, 0, 2, 3), (0, 2, 1, 3), (3, 1, 2, 0)], consumers=("t1",))
    optimized, report = run(model)
    assert op_counts(optimized) == {"Transpose": 2, "Neg": 1}
    assert total_stats(report) == {"rewrites.compose_transposes": 1,
                                   "skipped.compose_transposes.intermediate_has_other_consumers": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_graph_output_inside_a_chain_splits_it():
    model = transposes([(1, 0, 2, 3), (0, 2, 1, 3), (3, 1, 2, 0)], extra_outputs=("t2",))
    optimized, report = run(model)
    assert op_counts(optimized) == {"Transpose": 2}
    assert total_stats(report) == {"rewrites.compose_transposes": 1,
                                   "skipped.compose_transposes.intermediate_is_graph_output": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


@pytest.mark.parametrize("model, reason", [
    (lambda: transposes([(1, 0, 2, 3), (2, 0, 1, 3)], extra_outputs=("t1",)),
     "skipped.compose_transposes.intermediate_is_graph_output"),
    (lambda: transposes([(1, 0, 2, 3), (2, 0, 1, 3)], consumers=("t1",)),
     "skipped.compose_transposes.intermediate_has_other_consumers"),
    (lambda: transposes([(1, 0, 2, 3), (1, 0, 2, 3)], consumers=("t1",)),
     "skipped.cancel_transposes.intermediate_has_other_consumers"),
    (lambda: transposes([(1, 0, 2, 3), (1, 0, 2, 3)], extra_outputs=("t1",)),
     "skipped.cancel_transposes.intermediate_is_graph_output"),
])
def test_declines_with_reason(model, reason):
    model = model()
    optimized, report = run(model)
    assert total_stats(report) == {reason: 1}
    assert op_counts(optimized)["Transpose"] == 2
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_invalid_perm_declined():
    model = unknown_rank_transposes([(1, 0), (2, 1, 0)])  # not runnable: only the verdict is checked
    optimized, report = run(model)
    assert total_stats(report) == {"skipped.compose_transposes.invalid_perm": 1}
    assert op_counts(optimized)["Transpose"] == 2


def test_inside_subgraph_with_outer_scope_source():
    then_branch = oh.make_graph(
        [oh.make_node("Transpose", ["x"], ["t"], perm=[1, 0]), oh.make_node("Transpose", ["t"], ["r"], perm=[1, 0])],
        "then", [], [oh.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [2, 3])])
    else_branch = oh.make_graph([oh.make_node("Neg", ["x"], ["r2"])], "else", [],
                                [oh.make_tensor_value_info("r2", onnx.TensorProto.FLOAT, [2, 3])])
    graph = oh.make_graph(
        [oh.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)], "g",
        [oh.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    optimized, report = run(model)
    assert total_stats(report) == {"rewrites.cancel_transposes": 1}
    branches = {attribute.name: attribute.g for attribute in optimized.graph.node[0].attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["Identity"]  # x is from the outer scope
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    feeds = [{"c": np.array(True), "x": x}, {"c": np.array(False), "x": x}]
    assert_same_outputs(model, optimized, feeds, rtol=0, atol=0)


@pytest.mark.parametrize("perms", [[(1, 0, 2, 3), (0, 2, 1, 3), (3, 1, 2, 0)], [(1, 0, 2, 3), (1, 0, 2, 3)]])
def test_second_run_changes_nothing(perms):
    once, _ = run(transposes(perms, consumers=("t1",)))
    _, report = run(once)
    assert not report.passes[0].changed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_chains_keep_outputs_and_leave_at_most_one_transpose(data):
    rank = data.draw(st.integers(1, 4), label="rank")
    perms = data.draw(st.lists(st.one_of(st.none(), st.permutations(range(rank))), min_size=1, max_size=5))
    model = transposes(perms, shape=(2, 3, 4, 5)[:rank])
    optimized, _ = run(model)
    assert op_counts(optimized).get("Transpose", 0) <= 1
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)
    _, again = run(optimized)
    assert not again.passes[0].changed
