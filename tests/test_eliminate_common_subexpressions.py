"""eliminate-common-subexpressions: duplicates merged (chains in one run, subgraphs per scope, structurally
equal subgraph attributes), graph output names kept, a negative test per decline reason, and outputs
compared bit for bit with the original on onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.printer
import pytest
from conftest import assert_identical_outputs, op_counts, parse_model, random_feeds, total_stats
from hypothesis import given, settings
from hypothesis import strategies as st

import graphopt
from passes.eliminate_common_subexpressions import EliminateCommonSubexpressions

HEADER = '<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>'


def graph(signature: str, body: str, initializers: str = "") -> onnx.ModelProto:
    return parse_model(f"{HEADER}\nagraph {signature} {initializers} {{\n{body}\n}}")


def run(model: onnx.ModelProto):
    """(optimized model, stats, report) with the honesty check on; the result passes the full checker."""
    optimized, report = graphopt.optimize(model, passes=[EliminateCommonSubexpressions()], check_changed=True)
    onnx.checker.check_model(optimized, full_check=True)
    return optimized, total_stats(report), report


def output_names(model):
    return [o.name for o in model.graph.output]


def subgraph_ops(model):
    return {a.name: [n.op_type for n in a.g.node] for node in model.graph.node for a in node.attribute
            if a.type == onnx.AttributeProto.GRAPH}


def test_duplicate_node_is_merged():
    model = graph("(float[N,4] x) => (float[N,4] y)", "a = Relu(x)\n b = Relu(x)\n y = Add(a, b)")
    optimized, stats, report = run(model)
    assert stats == {"removed.relu": 1}
    assert op_counts(optimized) == {"Relu": 1, "Add": 1}
    assert list(optimized.graph.node[1].input) == ["a", "a"]
    assert report.passes[0].changed is True
    assert_identical_outputs(model, optimized, [random_feeds(model, seed) for seed in range(3)])


def test_chain_of_duplicates_collapses_in_one_run():
    model = graph("(float[N,4] x) => (float[N,4] y)", """
        a1 = Relu(x)
        a2 = Relu(x)
        b1 = Exp(a1)
        b2 = Exp(a2)
        c1 = Mul(b1, a1)
        c2 = Mul(b2, a2)
        y = Sub(c1, c2)
    """)
    optimized, stats, _ = run(model)
    assert stats == {"removed.relu": 1, "removed.exp": 1, "removed.mul": 1}
    assert op_counts(optimized) == {"Relu": 1, "Exp": 1, "Mul": 1, "Sub": 1}
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_equal_constants_count_as_the_same_input_but_zero_signs_differ():
    model = graph("(float[N,3] x) => (float[N,3] y, float[N,3] z)", """
        a = Add(x, c1)
        b = Add(x, c2)
        y = Mul(a, b)
        p = Add(x, z1)
        q = Add(x, z2)
        z = Div(p, q)
    """, "<float[3] c1 = {1, 2, 3}, float[3] c2 = {1, 2, 3}, float[3] z1 = {0, 0, 0}, float[3] z2 = {0, -0.0, 0}>")
    optimized, stats, _ = run(model)
    assert stats == {"removed.add": 1}  # c1 == c2 byte for byte; z1 and z2 differ in the sign of a zero
    assert op_counts(optimized) == {"Add": 3, "Mul": 1, "Div": 1}
    feeds = random_feeds(model)
    assert_identical_outputs(model, optimized, [feeds, {"x": np.array([[-0.0, -0.0, 0.0]], np.float32)}])


@pytest.mark.parametrize("body", [
    "a = LeakyRelu <alpha = 0.1> (x)\n b = LeakyRelu <alpha = 0.2> (x)",
    "a = LeakyRelu <alpha = 0.0> (x)\n b = LeakyRelu <alpha = -0.0> (x)",  # bitwise attribute comparison
    "a = Relu(x)\n b = Sigmoid(x)",
    "a = Sub(x, w)\n b = Sub(w, x)",  # inputs are positional
    "a = ReduceSum <keepdims = 1> (x, axes)\n b = ReduceSum <keepdims = 1> (x, axes2)",
])
def test_different_nodes_are_not_merged(body):
    model = graph("(float[4,4] x) => (float[4,4] y)", f"{body}\n y = Add(a, b)",
                  "<float[4] w = {1, 2, 3, 4}, int64[1] axes = {0}, int64[1] axes2 = {1}>")
    optimized, stats, report = run(model)
    assert stats == {}
    assert report.passes[0].changed is False
    assert op_counts(optimized) == op_counts(model)


def test_constant_nodes_with_equal_values_are_merged():
    model = graph("(float[N,2] x) => (float[N,2] y)", """
        c1 = Constant <value = float[2] {1.5, -0.0}> ()
        c2 = Constant <value = float[2] {1.5, -0.0}> ()
        c3 = Constant <value = float[2] {1.5, 0.0}> ()
        a = Mul(x, c1)
        b = Mul(x, c2)
        c = Mul(x, c3)
        s = Add(a, b)
        y = Add(s, c)
    """)
    optimized, stats, _ = run(model)
    assert stats == {"removed.constant": 1, "removed.mul": 1}
    assert op_counts(optimized) == {"Constant": 2, "Mul": 2, "Add": 2}
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_multi_output_nodes_are_merged_output_by_output():
    model = graph("(float[N,6] x) => (float[N,2] v, int64[N,2] i)", """
        v1, i1 = TopK <axis = 1> (x, k)
        v2, i2 = TopK <axis = 1> (x, k)
        v = Add(v1, v2)
        i = Add(i1, i2)
    """, "<int64[1] k = {2}>")
    optimized, stats, _ = run(model)
    assert stats == {"removed.topk": 1}
    assert op_counts(optimized) == {"TopK": 1, "Add": 2}
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_initializers_that_are_graph_inputs_count_only_as_themselves():
    """IR < 4 style: c1, c2 and ``no`` are initializers and graph inputs, so a caller may override them."""
    model = graph("(float[N,3] x, float[3] c1, float[3] c2, bool no) => (float[N,3] y, float[N,3] z)", """
        a = Add(x, c1)
        b = Add(x, c2)
        y = Mul(a, b)
        d1 = Dropout(x, ratio, no)
        d2 = Dropout(x, ratio, no)
        z = Add(d1, d2)
    """, "<float[3] c1 = {1, 2, 3}, float[3] c2 = {1, 2, 3}, float ratio = {0.5}, bool no = {0}>")
    optimized, stats, report = run(model)
    assert stats == {"skipped.nondeterministic": 1}
    assert report.passes[0].changed is False
    x = random_feeds(model)["x"]
    override = {"x": x, "c1": np.array([5, 6, 7], np.float32), "c2": np.array([-1, 0, 1], np.float32)}
    assert_identical_outputs(model, optimized, [{"x": x}, override])


# ---------------------------------------------------------------------------------------------------------
# Graph outputs


def test_a_duplicate_that_is_a_graph_output_keeps_its_name():
    model = graph("(float[N,4] x) => (float[N,4] y, float[N,4] z)", "a = Relu(x)\n y = Neg(a)\n z = Relu(x)")
    optimized, stats, _ = run(model)
    assert stats == {"removed.relu": 1}
    assert output_names(optimized) == ["y", "z"]
    assert [list(n.output) for n in optimized.graph.node] == [["z"], ["y"]]
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_declines_when_both_outputs_are_graph_outputs():
    model = graph("(float[N,4] x) => (float[N,4] y, float[N,4] z)", "y = Relu(x)\n z = Relu(x)")
    optimized, stats, report = run(model)
    assert stats == {"skipped.both_graph_outputs": 1}
    assert report.passes[0].changed is False
    assert op_counts(optimized) == {"Relu": 2}
    assert output_names(optimized) == ["y", "z"]


def test_a_third_duplicate_still_merges_after_a_decline():
    model = graph("(float[N,4] x) => (float[N,4] y, float[N,4] z, float[N,4] w)",
                  "y = Relu(x)\n z = Relu(x)\n t = Relu(x)\n w = Neg(t)")
    optimized, stats, _ = run(model)
    assert stats == {"skipped.both_graph_outputs": 1, "removed.relu": 1}
    assert op_counts(optimized) == {"Relu": 2, "Neg": 1}
    assert_identical_outputs(model, optimized, [random_feeds(model)])


# ---------------------------------------------------------------------------------------------------------
# Declines


@pytest.mark.parametrize("body", [
    "a = RandomNormal <shape = [2, 4]> ()\n b = RandomNormal <shape = [2, 4]> ()",
    "a = RandomUniform <shape = [2, 4], seed = 1.0> ()\n b = RandomUniform <shape = [2, 4], seed = 1.0> ()",
    "a = RandomNormalLike(x)\n b = RandomNormalLike(x)",
    "a = RandomUniformLike(x)\n b = RandomUniformLike(x)",
    "a = Bernoulli(p)\n b = Bernoulli(p)",
    "a = Dropout(x, ratio, yes)\n b = Dropout(x, ratio, yes)",
    "a = Dropout(x, ratio, mode)\n b = Dropout(x, ratio, mode)",
])
def test_declines_nondeterministic_ops(body):
    model = graph("(float[2,4] x, float[2,4] p, bool mode) => (float[2,4] y)", f"{body}\n y = Add(a, b)",
                  "<float ratio = {0.5}, bool yes = {1}>")
    optimized, stats, report = run(model)
    assert stats == {"skipped.nondeterministic": 1}
    assert report.passes[0].changed is False
    assert op_counts(optimized) == op_counts(model)


def test_declines_multinomial():
    model = graph("(float[2,4] x) => (int32[2,3] y)",
                  "a = Multinomial <sample_size = 3> (x)\n b = Multinomial <sample_size = 3> (x)\n y = Add(a, b)")
    _, stats, _ = run(model)
    assert stats == {"skipped.nondeterministic": 1}


def test_inference_dropouts_are_merged():
    model = graph("(float[2,4] x) => (float[2,4] y)",
                  "a = Dropout(x, ratio, no)\n b = Dropout(x, ratio, no)\n c = Dropout(x)\n d = Dropout(x)\n"
                  " s = Add(a, b)\n y = Add(s, d)", "<float ratio = {0.5}, bool no = {0}>")
    optimized, stats, _ = run(model)
    assert stats == {"removed.dropout": 2}
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_declines_old_opset_dropout_without_is_test():
    model = parse_model("""<ir_version: 3, opset_import: ["" : 6]>
        agraph (float[2,4] x) => (float[2,4] y) {
            a = Dropout(x)
            b = Dropout(x)
            c = Dropout <is_test = 1> (x)
            d = Dropout <is_test = 1> (x)
            s = Add(a, b)
            t = Add(c, d)
            y = Add(s, t)
        }""")
    _, stats, _ = run(model)
    assert stats == {"skipped.nondeterministic": 1, "removed.dropout": 1}


def test_declines_ops_of_custom_domains():
    model = graph("(float[N,4] x) => (float[N,4] y)",
                  "a = com.microsoft.Gelu(x)\n b = com.microsoft.Gelu(x)\n y = Add(a, b)")
    optimized, stats, report = run(model)
    assert stats == {"skipped.custom_domain": 1}
    assert report.passes[0].changed is False
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_declines_attributes_graphopt_cannot_see_but_merges_when_they_are_all_given():
    weights = "<float[2,3,3,3] w = {" + ", ".join(str(i % 7 - 3) for i in range(54)) + "}>"
    implicit = "a = Conv(x, w)\n b = Conv(x, w)"
    explicit = ("a = Conv <dilations = [1, 1], kernel_shape = [3, 3], pads = [0, 0, 0, 0], strides = [1, 1]> (x, w)\n"
                "b = Conv <dilations = [1, 1], kernel_shape = [3, 3], pads = [0, 0, 0, 0], strides = [1, 1]> (x, w)")
    for body, expected in [(implicit, {"skipped.attributes_not_visible": 1}), (explicit, {"removed.conv": 1})]:
        model = graph("(float[1,3,5,5] x) => (float[1,2,3,3] y)", f"{body}\n y = Add(a, b)", weights)
        optimized, stats, _ = run(model)
        assert stats == expected
        assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_declines_nodes_whose_differences_graphopt_cannot_see():
    """Two Optional nodes that differ only in their TYPE_PROTO attribute, which the gs graph does not hold."""
    def empty_optional(output, elem_type):
        node = oh.make_node("Optional", [], [output])
        node.attribute.append(oh.make_attribute("type", oh.make_tensor_type_proto(elem_type, [2])))
        return node

    nodes = [empty_optional("o1", onnx.TensorProto.FLOAT), empty_optional("o2", onnx.TensorProto.INT64),
             oh.make_node("OptionalHasElement", ["o1"], ["y1"]), oh.make_node("OptionalHasElement", ["o2"], ["y2"])]
    model = oh.make_model(oh.make_graph(nodes, "g", [], [oh.make_tensor_value_info(n, onnx.TensorProto.BOOL, [])
                                                         for n in ("y1", "y2")]),
                          opset_imports=[oh.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    optimized, stats, report = run(model)
    assert stats == {"skipped.attributes_not_visible": 1}
    assert report.passes[0].changed is False
    types = [n.attribute[0].tp.tensor_type.elem_type for n in optimized.graph.node if n.op_type == "Optional"]
    assert types == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT64]
    assert_identical_outputs(model, optimized, [{}])


# ---------------------------------------------------------------------------------------------------------
# Subgraphs

IF_SIGNATURE = "(bool c, float[2] x) => (float[2] y)"


def branch_feeds(model):
    feeds = random_feeds(model)
    return [{**feeds, "c": np.array(True)}, {**feeds, "c": np.array(False)}]


def test_duplicates_inside_a_branch_are_merged_but_never_with_the_outer_graph():
    model = graph(IF_SIGNATURE, """
        a = Relu(x)
        y = If(c) <
            then_branch = g1 () => (float[2] t) {
                r1 = Relu(x)  r2 = Relu(x)  n = Neg(a)  s = Add(r1, r2)  t = Add(s, n)
            },
            else_branch = g2 () => (float[2] e) { e = Relu(x) }
        >
    """)
    optimized, stats, _ = run(model)
    assert stats == {"removed.relu": 1}
    assert subgraph_ops(optimized) == {"then_branch": ["Relu", "Neg", "Add", "Add"], "else_branch": ["Relu"]}
    assert_identical_outputs(model, optimized, branch_feeds(model))


def test_outer_duplicates_read_inside_subgraphs_are_rewired():
    model = graph(IF_SIGNATURE, """
        a = Exp(x)
        b = Exp(x)
        y = If(c) <
            then_branch = g1 () => (float[2] t) { t = Neg(b) },
            else_branch = g2 () => (float[2] e) { e = Identity(b) }
        >
    """)
    optimized, stats, _ = run(model)
    assert stats == {"removed.exp": 1}
    then_branch = optimized.graph.node[1].attribute[0].g
    assert list(then_branch.node[0].input) == ["a"]
    assert_identical_outputs(model, optimized, branch_feeds(model))


def _two_ifs(then1: str, then2: str) -> onnx.ModelProto:
    return graph("(bool c, float[2] x) => (float[2] y)", f"""
        a = Relu(x)
        i1 = If(c) <
            then_branch = t1 () => (float[2] o1) {{ {then1} }},
            else_branch = e1 () => (float[2] p1) {{ p1 = Neg(a) }}
        >
        i2 = If(c) <
            then_branch = t2 () => (float[2] o2) {{ {then2} }},
            else_branch = e2 () => (float[2] p2) {{ p2 = Neg(a) }}
        >
        y = Sub(i1, i2)
    """, "<float[2] w = {1, 2}>")


def test_if_nodes_with_structurally_equal_branches_are_merged():
    model = _two_ifs("h1 = Add(a, w)  o1 = Mul(h1, x)", "h2 = Add(a, w)  o2 = Mul(h2, x)")
    optimized, stats, _ = run(model)
    assert stats == {"removed.if": 1}
    assert op_counts(optimized) == {"Relu": 1, "If": 1, "Sub": 1}
    assert_identical_outputs(model, optimized, branch_feeds(model))


@pytest.mark.parametrize("then2", [
    "h2 = Add(a, w)  o2 = Mul(x, h2)",  # operands swapped
    "h2 = Add(x, w)  o2 = Mul(h2, x)",  # reads another outer tensor
    "h2 = Add(a, w)  o2 = Mul(h2, h2)",  # other wiring inside
    "h2 = Sub(a, w)  o2 = Mul(h2, x)",  # other op
])
def test_if_nodes_with_different_branches_are_kept(then2):
    model = _two_ifs("h1 = Add(a, w)  o1 = Mul(h1, x)", then2)
    optimized, stats, report = run(model)
    assert stats == {}
    assert report.passes[0].changed is False


def test_if_nodes_with_a_random_op_inside_are_kept():
    model = _two_ifs("h1 = RandomNormalLike(a)  o1 = Add(h1, x)", "h2 = RandomNormalLike(a)  o2 = Add(h2, x)")
    _, stats, _ = run(model)
    assert stats == {"skipped.nondeterministic": 1}


def test_loop_bodies_merged_inside_and_loops_merged_outside():
    model = graph("(int64 n, bool c, float[2] x) => (float[2] y)", """
        l1 = Loop(n, c, x) <body = b1 (int64 i, bool ci, float[2] v) => (bool co, float[2] vo) {
            co = Identity(ci)
            p = Relu(v)
            q = Relu(v)
            vo = Add(p, q)
        }>
        l2 = Loop(n, c, x) <body = b2 (int64 j, bool cj, float[2] u) => (bool cu, float[2] uo) {
            cu = Identity(cj)
            s = Relu(u)
            t = Relu(u)
            uo = Add(s, t)
        }>
        y = Add(l1, l2)
    """)
    optimized, stats, _ = run(model)
    # the Loops are equal as written: the second goes (with its body); then the kept body loses a Relu
    assert stats == {"removed.loop": 1, "removed.relu": 1}
    assert op_counts(optimized) == {"Loop": 1, "Add": 1}
    assert subgraph_ops(optimized) == {"body": ["Identity", "Relu", "Add"]}
    feeds = random_feeds(model)
    assert_identical_outputs(model, optimized, [{**feeds, "n": np.array(k, np.int64), "c": np.array(True)}
                                                for k in (0, 1, 3)])


# ---------------------------------------------------------------------------------------------------------
# Idempotence and no-ops


@pytest.mark.parametrize("text", [
    "a1 = Relu(x)\n a2 = Relu(x)\n b1 = Exp(a1)\n b2 = Exp(a2)\n y = Add(b1, b2)",
    "y = Relu(x)\n z = Relu(x)",
    "a = Relu(x)\n z = Relu(x)\n y = Neg(a)",
])
def test_a_second_run_changes_nothing(text):
    model = graph("(float[N,4] x) => (float[N,4] y, float[N,4] z)" if "z =" in text
                  else "(float[N,4] x) => (float[N,4] y)", text)
    once, _, _ = run(model)
    twice, stats, report = run(once)
    assert report.passes[0].changed is False
    assert not any(key.startswith("removed.") for key in stats)
    assert onnx.printer.to_text(twice.graph) == onnx.printer.to_text(once.graph)


# ---------------------------------------------------------------------------------------------------------
# Property: random graphs with many duplicates keep their outputs, and no two remaining nodes are equal

UNARY = ("Relu", "Neg", "Exp", "Abs", "Sigmoid")
BINARY = ("Add", "Mul", "Sub", "Max")


@st.composite
def random_graphs(draw):
    tensors = ["x0", "x1"]
    nodes = []
    for index in range(draw(st.integers(2, 14))):
        if draw(st.booleans()):
            op, inputs = draw(st.sampled_from(UNARY)), [draw(st.sampled_from(tensors))]
        else:
            op, inputs = draw(st.sampled_from(BINARY)), draw(st.lists(st.sampled_from(tensors), min_size=2, max_size=2))
        name = f"t{index}"
        nodes.append(oh.make_node(op, inputs, [name]))
        tensors.append(name)
    outputs = draw(st.lists(st.sampled_from(tensors[2:]), min_size=1, max_size=3, unique=True))
    value_info = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [3]) for n in ("x0", "x1")]
    g = oh.make_graph(nodes, "random", value_info,
                      [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [3]) for n in outputs])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


@settings(max_examples=40, deadline=None)
@given(random_graphs())
def test_random_graphs_keep_their_outputs_and_lose_every_duplicate(model):
    optimized, _, _ = run(model)
    assert _remaining_duplicates_are_all_graph_outputs(optimized)
    assert output_names(optimized) == output_names(model)
    assert_identical_outputs(model, optimized, [random_feeds(model, seed) for seed in range(2)])


def _remaining_duplicates_are_all_graph_outputs(model) -> bool:
    outputs = set(output_names(model))
    seen: dict = {}
    for node in model.graph.node:
        key = (node.op_type, tuple(node.input))
        if key in seen and not (seen[key] in outputs and node.output[0] in outputs):
            return False
        seen.setdefault(key, node.output[0])
    return True
