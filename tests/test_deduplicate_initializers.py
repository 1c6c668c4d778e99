"""deduplicate-initializers: equal constants become one (exact bytes, also on hash collisions), scopes
respected, interface names kept, a negative test per decline reason, outputs compared bit for bit on ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx.printer
import pytest
from conftest import assert_identical_outputs, parse_model, random_feeds, total_stats

import graphopt
import passes.deduplicate_initializers as dedup_module
from passes.deduplicate_initializers import DeduplicateInitializers

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def graph(signature: str, body: str, initializers: str = "") -> onnx.ModelProto:
    return parse_model(f"{HEADER}\nagraph {signature} {initializers} {{\n{body}\n}}")


def run(model: onnx.ModelProto):
    optimized, report = graphopt.optimize(model, passes=[DeduplicateInitializers()], check_changed=True)
    onnx.checker.check_model(optimized, full_check=True)
    return optimized, total_stats(report), report


def initializer_names(g: onnx.GraphProto) -> list[str]:
    return sorted(i.name for i in g.initializer)


def test_equal_initializers_become_one():
    model = graph("(float[N,3] x) => (float[N,3] y)", "a = Add(x, c1)\n b = Mul(a, c2)\n y = Sub(b, c3)",
                  "<float[3] c1 = {1, 2, 3}, float[3] c2 = {1, 2, 3}, float[3] c3 = {1, 2, 3}>")
    optimized, stats, report = run(model)
    assert stats == {"removed.initializers": 2, "bytes_saved": 24}
    assert initializer_names(optimized.graph) == ["c1"]
    assert [list(n.input)[1] for n in optimized.graph.node] == ["c1", "c1", "c1"]
    assert report.passes[0].changed is True
    assert_identical_outputs(model, optimized, [random_feeds(model)])


@pytest.mark.parametrize("second", [
    "float[3] c2 = {1, 2, 4}",  # other value
    "float[1,3] c2 = {1, 2, 3}",  # other shape, same bytes
    "int32[3] c2 = {1065353216, 1073741824, 1077936128}",  # other type, the same bytes as float {1, 2, 3}
])
def test_constants_that_differ_in_value_shape_or_type_are_kept(second):
    model = graph("(float[N,3] x) => (float[N,3] y, int64 s)", "y = Add(x, c1)\n s = Size(c2)",
                  f"<float[3] c1 = {{1, 2, 3}}, {second}>")
    optimized, stats, report = run(model)
    assert stats == {}
    assert report.passes[0].changed is False
    assert initializer_names(optimized.graph) == ["c1", "c2"]


def test_zero_signs_and_nan_payloads_compare_as_bytes():
    nan_a, nan_b = np.array([np.nan] * 2, np.float32), np.array([np.nan] * 2, np.float32)
    nan_b.view(np.uint32)[1] ^= 1  # another payload
    constants = {"pz": np.zeros(2, np.float32), "nz": -np.zeros(2, np.float32), "pz2": np.zeros(2, np.float32),
                 "na": nan_a, "na2": nan_a.copy(), "nb": nan_b}
    nodes = [oh.make_node("Add", ["x", name], [f"y_{name}"]) for name in constants]
    model = oh.make_model(oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info(f"y_{name}", onnx.TensorProto.FLOAT, [2]) for name in constants],
        [onnx.numpy_helper.from_array(value, name) for name, value in constants.items()]),
        opset_imports=[oh.make_opsetid("", 17)])
    optimized, stats, _ = run(model)
    assert stats == {"removed.initializers": 2, "bytes_saved": 16}  # pz2 -> pz, na2 -> na
    assert initializer_names(optimized.graph) == ["na", "nb", "nz", "pz"]
    assert_identical_outputs(model, optimized, [{"x": np.array([-0.0, 1.0], np.float32)}])


def test_a_hash_collision_never_merges_different_values(monkeypatch):
    monkeypatch.setattr(dedup_module, "_digest", lambda data: b"every value hashes alike")
    model = graph("(float[N,3] x) => (float[N,3] y)", "a = Add(x, c1)\n b = Mul(a, c2)\n y = Sub(b, c3)",
                  "<float[3] c1 = {1, 2, 3}, float[3] c2 = {3, 2, 1}, float[3] c3 = {1, 2, 3}>")
    optimized, stats, _ = run(model)
    assert stats == {"removed.initializers": 1, "bytes_saved": 12}
    assert initializer_names(optimized.graph) == ["c1", "c2"]
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_string_tensors():
    model = graph("(string[2] x) => (string[2] y, string[2] z)", "y = Concat <axis = 0> (s1, s2)\n z = Identity(s3)",
                  '<string[1] s1 = {"a"}, string[1] s2 = {"a"}, string[2] s3 = {"ab", ""}>')
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    optimized, stats, _ = run(model)
    assert stats == {"removed.initializers": 1, "bytes_saved": stats.get("bytes_saved", 0)}
    assert_identical_outputs(model, optimized, [{"x": np.array(["p", "q"], object)}])


# ---------------------------------------------------------------------------------------------------------
# The interface: graph outputs keep their names, graph inputs are not constants


def test_a_constant_graph_output_is_the_one_kept():
    model = graph("(float[N,3] x) => (float[N,3] y, float[3] c2)", "y = Add(x, c1)",
                  "<float[3] c1 = {1, 2, 3}, float[3] c2 = {1, 2, 3}>")
    optimized, stats, _ = run(model)
    assert stats == {"removed.initializers": 1, "bytes_saved": 12}
    assert [o.name for o in optimized.graph.output] == ["y", "c2"]
    assert list(optimized.graph.node[0].input) == ["x", "c2"]
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_declines_when_two_equal_constants_are_graph_outputs():
    model = graph("(float[N,3] x) => (float[N,3] y, float[3] c1, float[3] c2)", "y = Add(x, c1)",
                  "<float[3] c1 = {1, 2, 3}, float[3] c2 = {1, 2, 3}>")
    optimized, stats, report = run(model)
    assert stats == {"skipped.graph_output": 1}
    assert report.passes[0].changed is False
    assert [o.name for o in optimized.graph.output] == ["y", "c1", "c2"]
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_initializers_that_are_graph_inputs_are_not_constants():
    """w1 and w2 are also graph inputs, so a caller may override them: neither keeps nor replaces w3."""
    weights = [onnx.numpy_helper.from_array(np.array([1, 2, 3], np.float32), n) for n in ("w1", "w2", "w3")]
    model = oh.make_model(oh.make_graph(
        [oh.make_node("Add", ["x", "w1"], ["a"]), oh.make_node("Mul", ["a", "w2"], ["b"]),
         oh.make_node("Sub", ["b", "w3"], ["y"])], "g",
        [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [3]) for n in ("x", "w1", "w2")],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])], weights),
        ir_version=4, opset_imports=[oh.make_opsetid("", 8)])
    optimized, stats, report = run(model)
    assert stats == {}
    assert report.passes[0].changed is False
    assert initializer_names(optimized.graph) == ["w1", "w2", "w3"]
    x = np.array([1, 2, 3], np.float32)
    override = {"x": x, "w1": np.array([5, 5, 5], np.float32), "w2": np.array([7, 7, 7], np.float32)}
    assert_identical_outputs(model, optimized, [{"x": x}, override])


# ---------------------------------------------------------------------------------------------------------
# Scopes

IF_FEEDS = [{"c": np.array(True), "x": np.array([1.5, -2.0], np.float32)},
            {"c": np.array(False), "x": np.array([1.5, -2.0], np.float32)}]


def if_model(then_body, else_body, then_init="", else_init="", outer_body="z = Add(x, w)",
             outer_init="<float[2] w = {1, 2}>"):
    return graph("(bool c, float[2] x) => (float[2] y, float[2] z)", f"""
        {outer_body}
        y = If(c) <
            then_branch = g1 () => (float[2] t) {then_init} {{ {then_body} }},
            else_branch = g2 () => (float[2] e) {else_init} {{ {else_body} }}
        >
    """, outer_init)


def test_a_subgraph_constant_equal_to_an_outer_one_reads_the_outer_one():
    model = if_model("t = Mul(x, v)", "e = Sub(x, w)", then_init="<float[2] v = {1, 2}>")
    optimized, stats, _ = run(model)
    assert stats == {"removed.initializers": 1, "bytes_saved": 8}
    then_branch = optimized.graph.node[1].attribute[0].g
    assert initializer_names(then_branch) == [] and list(then_branch.node[0].input) == ["x", "w"]
    assert initializer_names(optimized.graph) == ["w"]
    assert_identical_outputs(model, optimized, IF_FEEDS)


def test_constants_of_sibling_branches_are_not_merged():
    model = if_model("t = Mul(x, v1)", "e = Sub(x, v2)", then_init="<float[2] v1 = {3, 4}>",
                     else_init="<float[2] v2 = {3, 4}>")
    optimized, stats, report = run(model)
    assert stats == {}
    assert report.passes[0].changed is False
    assert_identical_outputs(model, optimized, IF_FEEDS)


def test_an_outer_constant_read_only_by_two_branches_merges_into_an_outer_equal_one():
    # u is read in both branches only: its home is the main graph, where w (equal) is kept
    model = if_model("t = Mul(x, u)", "e = Sub(x, u)", outer_init="<float[2] w = {1, 2}, float[2] u = {1, 2}>")
    optimized, stats, _ = run(model)
    assert stats == {"removed.initializers": 1, "bytes_saved": 8}
    branches = [a.g for a in optimized.graph.node[1].attribute]
    assert [list(b.node[0].input) for b in branches] == [["x", "w"], ["x", "w"]]
    assert initializer_names(optimized.graph) == ["w"]
    assert_identical_outputs(model, optimized, IF_FEEDS)


def test_an_outer_constant_replaces_equal_ones_in_nested_subgraphs():
    model = graph("(bool c, float[2] x) => (float[2] y)", """
        y = If(c) <
            then_branch = g1 () => (float[2] t) <float[2] v = {1, 2}> {
                a = Add(x, v)
                t = If(c) <
                    then_branch = g11 () => (float[2] t1) <float[2] v1 = {1, 2}> { t1 = Mul(a, v1) },
                    else_branch = g12 () => (float[2] t2) <float[2] v2 = {1, 2}> { t2 = Sub(a, v2) }
                >
            },
            else_branch = g2 () => (float[2] e) <float[2] v3 = {1, 2}> { e = Mul(x, v3) }
        >
    """)
    optimized, stats, _ = run(model)
    assert stats == {"removed.initializers": 2, "bytes_saved": 16}  # v1, v2 -> v; v3 has no equal in scope
    assert_identical_outputs(model, optimized, IF_FEEDS)


# ---------------------------------------------------------------------------------------------------------
# Idempotence


def test_a_second_run_changes_nothing():
    model = if_model("t = Mul(x, v)", "e = Sub(x, u)", then_init="<float[2] v = {1, 2}>",
                     outer_init="<float[2] w = {1, 2}, float[2] u = {1, 2}>")
    once, stats, _ = run(model)
    assert stats["removed.initializers"] == 2
    twice, stats, report = run(once)
    assert report.passes[0].changed is False and stats == {}
    assert onnx.printer.to_text(twice.graph) == onnx.printer.to_text(once.graph)
