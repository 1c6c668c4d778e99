"""eliminate-dead-nodes: dead nodes and chains removed (subgraphs included), graph inputs kept, nodes used only
from a subgraph kept, and the IR < 4 initializer inputs removed unless ``initializer_inputs=false``; outputs
compared with the original on onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.printer
import pytest
from conftest import assert_same_outputs, op_counts, parse_model, random_feeds, total_stats

import graphopt

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def eliminate(model: onnx.ModelProto, passes: str = "eliminate-dead-nodes"):
    """(optimized model, summed stats, report) with the honesty check on; the result is checker-valid."""
    optimized, report = graphopt.optimize(model, passes=passes, check_changed=True)
    onnx.checker.check_model(optimized, full_check=True)
    return optimized, total_stats(report), report


def graph(signature: str, body: str) -> onnx.ModelProto:
    return parse_model(f"{HEADER}\nagraph {signature} {{\n{body}\n}}")


def subgraph_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    return {attribute.name: [n.op_type for n in attribute.g.node]
            for node in model.graph.node for attribute in node.attribute
            if attribute.type == onnx.AttributeProto.GRAPH}


def test_dead_chain_is_removed():
    model = graph("(float[N,4] x) => (float[N,4] y)", "a = Neg(x)\n b = Abs(a)\n c = Exp(b)\n y = Relu(x)")
    optimized, stats, report = eliminate(model)
    assert stats == {"removed.nodes": 3}
    assert op_counts(optimized) == {"Relu": 1}
    assert (report.passes[0].nodes_before, report.passes[0].nodes_after) == (4, 1)
    assert_same_outputs(model, optimized, [random_feeds(model, seed) for seed in range(2)])


def test_dead_branch_off_a_live_node_is_removed_and_the_live_node_kept():
    model = graph("(float[N,4] x) => (float[N,4] y)",
                  "r = Relu(x)\n d1 = Neg(r)\n d2 = Add(d1, r)\n y = Abs(r)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.nodes": 2}
    assert op_counts(optimized) == {"Relu": 1, "Abs": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_dead_constant_node_is_removed():
    model = graph("(float[N,4] x) => (float[N,4] y)",
                  "k = Constant <value = float[4] {1, 2, 3, 4}> ()\n y = Relu(x)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.nodes": 1}
    assert op_counts(optimized) == {"Relu": 1}


def test_node_with_one_used_output_is_kept_with_all_its_outputs():
    model = graph("(float[N,4] x) => (float[N,2] y)", "a, b = Split <axis = 1> (x)\n y = Relu(a)\n dead = Neg(b)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.nodes": 1}
    assert op_counts(optimized) == {"Split": 1, "Relu": 1}
    assert list(optimized.graph.node[0].output) == ["a", "b"]
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_graph_inputs_are_never_removed():
    model = graph("(float[N,4] x, float[N,4] unused, float[N,4] only_dead) => (float[N,4] y)",
                  "d = Neg(only_dead)\n y = Relu(x)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.nodes": 1}
    assert [i.name for i in optimized.graph.input] == ["x", "unused", "only_dead"]
    assert [i.type for i in optimized.graph.input] == [i.type for i in model.graph.input]
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_nothing_dead_means_no_change():
    model = graph("(float[N,4] x, float[N,4] unused) => (float[N,4] y)", "r = Relu(x)\n y = Neg(r)")
    optimized, stats, report = eliminate(model)
    assert stats == {}
    assert report.passes[0].changed is False
    assert onnx.printer.to_text(optimized.graph) == onnx.printer.to_text(model.graph)


# ---------------------------------------------------------------------------------------------------------
# Subgraphs

IF_TEXT = f"""{HEADER}
agraph (bool c, float[2] x) => (float[2] y) {{
    a = Relu(x)
    y = If(c) <
        then_branch = then_graph () => (float[2] t_out) {{
            dead1 = Neg(a)
            dead2 = Exp(dead1)
            t_out = Abs(a)
        }},
        else_branch = else_graph () => (float[2] e_out) {{
            e_out = Neg(a)
        }}
    >
}}
"""

LOOP_TEXT = f"""{HEADER}
agraph (int64 trip, bool cond, float[2] x) => (float[2] out) {{
    w = Relu(x)
    out = Loop(trip, cond, x) <
        body = loop_body (int64 i, bool c, float[2] v) => (bool c_out, float[2] v_out) {{
            dead = Mul(v, w)
            c_out = Identity(c)
            v_out = Add(v, w)
        }}
    >
}}
"""


def test_dead_nodes_inside_if_branches_are_removed():
    model = parse_model(IF_TEXT)
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.nodes": 2}
    assert op_counts(optimized) == {"Relu": 1, "If": 1}
    assert subgraph_ops(optimized) == {"then_branch": ["Abs"], "else_branch": ["Neg"]}
    feeds = random_feeds(model)
    assert_same_outputs(model, optimized, [{**feeds, "c": np.array(True)}, {**feeds, "c": np.array(False)}])


def test_dead_node_in_a_loop_body_is_removed_and_outer_node_used_by_the_body_kept():
    model = parse_model(LOOP_TEXT)
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.nodes": 1}
    assert op_counts(optimized) == {"Relu": 1, "Loop": 1}  # w is read only inside the body: still live
    assert subgraph_ops(optimized) == {"body": ["Identity", "Add"]}
    body = optimized.graph.node[1].attribute[0].g
    assert [i.name for i in body.input] == ["i", "c", "v"]  # body inputs are the Loop's signature
    feeds = random_feeds(model)
    assert_same_outputs(model, optimized, [{**feeds, "trip": np.array(n, np.int64), "cond": np.array(True)}
                                           for n in (0, 3)])


def test_a_dead_if_is_removed_with_its_branches():
    model = parse_model(f"""{HEADER}
        agraph (bool c, float[2] x) => (float[2] y) {{
            y = Relu(x)
            unused = If(c) <
                then_branch = g1 () => (float[2] t) {{ t = Neg(x) }},
                else_branch = g2 () => (float[2] e) {{ e1 = Abs(x) e = Exp(e1) }}
            >
        }}""")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.nodes": 4}  # the If and the three nodes of its branches
    assert op_counts(optimized) == {"Relu": 1}
    assert_same_outputs(model, optimized, [{**random_feeds(model), "c": np.array(True)}])


def test_local_function_bodies_are_left_as_they_are():
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        agraph (float[N,4] x) => (float[N,4] y) {
            y = local.F(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        F (a) => (b) {
            dead = Neg(a)
            b = Relu(a)
        }""")
    optimized, stats, report = eliminate(model)
    assert report.passes[0].changed is False
    assert stats == {}
    assert [n.op_type for n in optimized.functions[0].node] == ["Neg", "Relu"]


# ---------------------------------------------------------------------------------------------------------
# Old models: initializers listed as graph inputs

IR3_TEXT = """
<ir_version: 3, opset_import: ["" : 8]>
agraph (float[2,4] x, float[4] w, float[4] b) => (float[2,4] y) <float[4] w = {1, 2, 3, 4}, float[4] b = {0, 0, 1, 1}> {
    t = Mul(x, w)
    u = Add(t, b)
    y = Relu(u)
}
"""


def test_initializer_inputs_are_removed_by_default():
    model = parse_model(IR3_TEXT)
    optimized, stats, report = eliminate(model)
    assert stats == {"removed.initializer_inputs": 2}
    assert report.passes[0].changed is True
    assert [i.name for i in optimized.graph.input] == ["x"]
    assert sorted(t.name for t in optimized.graph.initializer) == ["b", "w"]
    assert optimized.ir_version >= 4
    assert op_counts(optimized) == op_counts(model)
    assert_same_outputs(model, optimized, [random_feeds(model, seed) for seed in range(2)])


def test_initializer_inputs_are_kept_when_switched_off():
    model = parse_model(IR3_TEXT)
    optimized, stats, report = eliminate(model, "eliminate-dead-nodes(initializer_inputs=false)")
    assert stats == {}
    assert report.passes[0].changed is False
    assert [i.name for i in optimized.graph.input] == ["x", "w", "b"]
    assert optimized.ir_version == 3
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_dead_nodes_and_initializer_inputs_together():
    model = parse_model(IR3_TEXT.replace("y = Relu(u)", "y = Relu(u)\n    dead = Neg(w)"))
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.nodes": 1, "removed.initializer_inputs": 2}
    assert op_counts(optimized) == {"Mul": 1, "Add": 1, "Relu": 1}
    assert optimized.ir_version >= 4
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_dce_alias_and_lossless_preset_remove_both():
    model = parse_model(IR3_TEXT.replace("t = Mul(x, w)", "x2 = Identity(x)\n    t = Mul(x2, w)\n    d = Neg(x2)"))
    optimized, stats, _ = eliminate(model, "lossless")
    assert stats["removed.identity"] == 1
    assert stats["removed.nodes"] == 1
    assert stats["removed.initializer_inputs"] == 2
    assert op_counts(optimized) == {"Mul": 1, "Add": 1, "Relu": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])
    _, dce_stats, _ = eliminate(model, "dce")
    assert dce_stats == {"removed.nodes": 1, "removed.initializer_inputs": 2}


# ---------------------------------------------------------------------------------------------------------
# Idempotence


@pytest.mark.parametrize("text", [IF_TEXT, LOOP_TEXT, IR3_TEXT,
                                  f"{HEADER} agraph (float[N,4] x) => (float[N,4] y) {{ a = Neg(x) y = Relu(x) }}"])
def test_a_second_run_changes_nothing(text):
    once, _, _ = eliminate(parse_model(text))
    twice, stats, report = eliminate(once)
    assert report.passes[0].changed is False
    assert stats == {}
    assert onnx.printer.to_text(twice.graph) == onnx.printer.to_text(once.graph)
