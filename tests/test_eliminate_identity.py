"""eliminate-identity: Identity and inference-mode Dropout removed, graph output names kept, and each reason
to decline (``skipped.*``) exercised; outputs compared with the original on onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.printer
import pytest
from conftest import assert_same_outputs, op_counts, parse_model, random_feeds, total_stats

import graphopt

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def eliminate(model: onnx.ModelProto, passes: str = "eliminate-identity"):
    """(optimized model, summed stats, report) with the honesty check on; the result is checker-valid."""
    optimized, report = graphopt.optimize(model, passes=passes, check_changed=True)
    onnx.checker.check_model(optimized, full_check=True)
    return optimized, total_stats(report), report


def graph(signature: str, body: str, initializers: str = "") -> onnx.ModelProto:
    return parse_model(f"{HEADER}\nagraph {signature} {initializers} {{\n{body}\n}}")


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def test_identity_between_input_and_node_is_removed():
    model = graph("(float[N,4] x) => (float[N,4] y)", "t = Identity(x)\n y = Relu(t)")
    optimized, stats, report = eliminate(model)
    assert stats == {"removed.identity": 1}
    assert op_counts(optimized) == {"Relu": 1}
    assert list(optimized.graph.node[0].input) == ["x"]
    assert report.passes[0].changed is True
    assert (report.passes[0].nodes_before, report.passes[0].nodes_after) == (2, 1)
    assert_same_outputs(model, optimized, [random_feeds(model, seed) for seed in range(3)])


def test_identity_feeding_a_graph_output_keeps_the_output_name_and_type():
    model = graph("(float[N,4] x) => (float[N,4] y)", "r = Relu(x)\n y = Identity(r)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.identity": 1}
    assert op_counts(optimized) == {"Relu": 1}
    assert output_names(optimized) == ["y"]
    assert list(optimized.graph.node[0].output) == ["y"]
    assert optimized.graph.output[0].type == model.graph.output[0].type
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_identity_output_with_several_consumers_and_a_graph_output():
    model = graph("(float[N,4] x) => (float[N,4] y, float[N,4] z)",
                  "r = Relu(x)\n y = Identity(r)\n z = Add(y, y)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.identity": 1}
    assert op_counts(optimized) == {"Relu": 1, "Add": 1}
    assert output_names(optimized) == ["y", "z"]
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_identity_chain_is_removed_entirely():
    model = graph("(float[N,4] x) => (float[N,4] y)",
                  "a = Relu(x)\n b = Identity(a)\n c = Identity(b)\n d = Identity(c)\n y = Identity(d)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.identity": 4}
    assert op_counts(optimized) == {"Relu": 1}
    assert output_names(optimized) == ["y"]
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_identity_chain_from_input_to_output_keeps_the_last_identity():
    model = graph("(float[N,4] x) => (float[N,4] y)", "t = Identity(x)\n u = Identity(t)\n y = Identity(u)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.identity": 2, "skipped.graph_output_from_input_or_constant": 1}
    assert op_counts(optimized) == {"Identity": 1}
    assert list(optimized.graph.node[0].input) == ["x"]
    assert output_names(optimized) == ["y"]
    assert_same_outputs(model, optimized, [random_feeds(model)])


# ---------------------------------------------------------------------------------------------------------
# Declines


@pytest.mark.parametrize(("signature", "body", "initializers"), [
    ("(float[N,4] x) => (float[N,4] y)", "y = Identity(x)", ""),
    ("(float[N,4] x) => (float[4] y)", "y = Identity(c)", "<float[4] c = {1, 2, 3, 4}>"),
])
def test_declines_graph_output_fed_by_graph_input_or_constant(signature, body, initializers):
    model = graph(signature, body, initializers)
    optimized, stats, report = eliminate(model)
    assert stats == {"skipped.graph_output_from_input_or_constant": 1}
    assert report.passes[0].changed is False
    assert op_counts(optimized) == {"Identity": 1}
    assert output_names(optimized) == ["y"]
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_declines_when_the_source_is_also_a_graph_output():
    model = graph("(float[N,4] x) => (float[N,4] r, float[N,4] y)", "r = Relu(x)\n y = Identity(r)")
    optimized, stats, report = eliminate(model)
    assert stats == {"skipped.graph_output_is_also_input_of_node": 1}
    assert report.passes[0].changed is False
    assert output_names(optimized) == ["r", "y"]
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_two_identities_of_one_source_to_two_outputs_keep_both_names():
    model = graph("(float[N,4] x) => (float[N,4] y1, float[N,4] y2)",
                  "r = Relu(x)\n y1 = Identity(r)\n y2 = Identity(r)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.identity": 1, "skipped.graph_output_is_also_input_of_node": 1}
    assert op_counts(optimized) == {"Relu": 1, "Identity": 1}
    assert output_names(optimized) == ["y1", "y2"]
    assert_same_outputs(model, optimized, [random_feeds(model)])


# ---------------------------------------------------------------------------------------------------------
# Dropout

DROPOUT_SIGNATURE = "(float[N,4] x, bool mode) => (float[N,4] y)"
DROPOUT_CONSTANTS = "<float ratio = {0.5}, bool no = {0}, bool yes = {1}>"


@pytest.mark.parametrize("dropout", [
    "d = Dropout(a)",
    "d = Dropout(a, ratio)",
    "d = Dropout(a, ratio, no)",
    "d = Dropout(a, , no)",
    "d, unused_mask = Dropout(a)",
    "d, unused_mask = Dropout(a, ratio, no)",
])
def test_inference_dropout_is_removed(dropout):
    model = graph(DROPOUT_SIGNATURE, f"a = Relu(x)\n {dropout}\n y = Neg(d)", DROPOUT_CONSTANTS)
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.dropout": 1}
    assert op_counts(optimized) == {"Relu": 1, "Neg": 1}
    assert_same_outputs(model, optimized, [{**random_feeds(model), "mode": np.array(False)}])


def test_old_opset_dropout_with_ratio_attribute_is_removed():
    model = parse_model("""
        <ir_version: 6, opset_import: ["" : 10]>
        agraph (float[N,4] x) => (float[N,4] y) {
            a = Relu(x)
            d, m = Dropout <ratio = 0.3> (a)
            y = Neg(d)
        }""")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.dropout": 1}
    assert op_counts(optimized) == {"Relu": 1, "Neg": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_dropout_feeding_a_graph_output_is_removed_keeping_the_name():
    model = graph("(float[N,4] x) => (float[N,4] y)", "a = Relu(x)\n y = Dropout(a)")
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.dropout": 1}
    assert output_names(optimized) == ["y"]
    assert_same_outputs(model, optimized, [random_feeds(model)])


@pytest.mark.parametrize(("signature", "body", "reason"), [
    ("(float[N,4] x) => (float[N,4] y, bool[N,4] m)", "a = Relu(x)\n d, m = Dropout(a)\n y = Neg(d)",
     "dropout_mask_used"),
    ("(float[N,4] x) => (float[N,4] y)",
     "a = Relu(x)\n d, m = Dropout(a)\n mf = Cast <to = 1> (m)\n s = Add(d, mf)\n y = Neg(s)", "dropout_mask_used"),
    (DROPOUT_SIGNATURE, "a = Relu(x)\n d = Dropout(a, ratio, yes)\n y = Neg(d)", "dropout_training_mode"),
    (DROPOUT_SIGNATURE, "a = Relu(x)\n d = Dropout(a, ratio, mode)\n y = Neg(d)", "dropout_training_mode"),
    (DROPOUT_SIGNATURE, "a = Relu(x)\n m = Not(mode)\n d = Dropout(a, ratio, m)\n y = Neg(d)",
     "dropout_training_mode"),
])
def test_dropout_is_kept_when_it_may_not_be_an_identity(signature, body, reason):
    model = graph(signature, body, DROPOUT_CONSTANTS)
    optimized, stats, report = eliminate(model)
    assert stats == {f"skipped.{reason}": 1}
    assert report.passes[0].changed is False
    assert op_counts(optimized) == op_counts(model)
    if reason == "dropout_mask_used":  # in training mode Dropout is random: compare only inference runs
        assert_same_outputs(model, optimized, [random_feeds(model)])


def test_mixed_dropouts_are_counted_per_reason():
    model = graph("(float[N,4] x, bool mode) => (float[N,4] y, bool[N,4] mask)", """
        a = Relu(x)
        d1 = Dropout(a)
        d2 = Dropout(d1, ratio, no)
        d3, m3 = Dropout(d2)
        d4, mask = Dropout(d3)
        d5 = Dropout(d4, ratio, yes)
        y = Dropout(d5, ratio, mode)
    """, DROPOUT_CONSTANTS)
    optimized, stats, _ = eliminate(model)
    assert stats == {"removed.dropout": 3, "skipped.dropout_mask_used": 1, "skipped.dropout_training_mode": 2}
    assert op_counts(optimized) == {"Relu": 1, "Dropout": 3}
    assert output_names(optimized) == ["y", "mask"]


# ---------------------------------------------------------------------------------------------------------
# Subgraphs

IF_TEXT = f"""{HEADER}
agraph (bool c, float[2] x) => (float[2] y) {{
    a = Relu(x)
    y = If(c) <
        then_branch = then_graph () => (float[2] t_out) {{
            i1 = Identity(a)
            i2 = Neg(i1)
            t_out = Identity(i2)
        }},
        else_branch = else_graph () => (float[2] e_out) {{
            e_out = Identity(a)
        }}
    >
}}
"""

LOOP_TEXT = f"""{HEADER}
agraph (int64 trip, bool cond, float[2] x) => (float[2] out) {{
    w = Relu(x)
    wi = Identity(w)
    out = Loop(trip, cond, x) <
        body = loop_body (int64 i, bool c, float[2] v) => (bool c_out, float[2] v_out) {{
            c_out = Identity(c)
            t = Identity(wi)
            s = Add(v, t)
            v_out = Identity(s)
        }}
    >
}}
"""


def _subgraph_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    ops = {}
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                ops[attribute.name] = [n.op_type for n in attribute.g.node]
    return ops


def test_identities_inside_if_branches():
    model = parse_model(IF_TEXT)
    onnx.checker.check_model(model, full_check=True)
    optimized, stats, _ = eliminate(model)
    # then: both removed (i1 reads the outer 'a' directly, i2 renamed to the branch output);
    # else: the branch output comes straight from the outer scope, so it stays
    assert stats == {"removed.identity": 2, "skipped.source_from_outer_scope": 1}
    assert _subgraph_ops(optimized) == {"then_branch": ["Neg"], "else_branch": ["Identity"]}
    feeds = random_feeds(model)
    assert_same_outputs(model, optimized, [{**feeds, "c": np.array(True)}, {**feeds, "c": np.array(False)}])


def test_identities_inside_a_loop_body_with_an_outer_scope_reference():
    model = parse_model(LOOP_TEXT)
    onnx.checker.check_model(model, full_check=True)
    optimized, stats, _ = eliminate(model)
    # outer wi, body t and v_out removed; c_out = Identity(c) comes from a body input and stays
    assert stats == {"removed.identity": 3, "skipped.graph_output_from_input_or_constant": 1}
    assert op_counts(optimized) == {"Relu": 1, "Loop": 1}
    assert _subgraph_ops(optimized) == {"body": ["Identity", "Add"]}
    body = optimized.graph.node[1].attribute[0].g
    assert [o.name for o in body.output] == ["c_out", "v_out"]
    assert list(body.node[1].input) == ["v", "w"]
    feeds = random_feeds(model)
    assert_same_outputs(model, optimized, [{**feeds, "trip": np.array(n, np.int64), "cond": np.array(True)}
                                           for n in (0, 1, 4)])


def test_outer_identities_read_only_inside_branches_are_removed():
    model = parse_model(f"""{HEADER}
        agraph (bool c, float[2] x) => (float[2] y, float[2] k) {{
            r = Relu(x)
            k = Identity(r)
            j = Identity(r)
            y = If(c) <
                then_branch = g1 () => (float[2] t) {{ t = Neg(j) }},
                else_branch = g2 () => (float[2] e) {{ e = Abs(k) }}
            >
        }}""")
    optimized, stats, _ = eliminate(model)
    # j: its branch consumer reads r; k: a graph output, so r is renamed to k, also inside the branch
    assert stats == {"removed.identity": 2}
    assert op_counts(optimized) == {"Relu": 1, "If": 1}
    assert output_names(optimized) == ["y", "k"]
    assert list(optimized.graph.node[0].output) == ["k"]
    feeds = random_feeds(model)
    assert_same_outputs(model, optimized, [{**feeds, "c": np.array(True)}, {**feeds, "c": np.array(False)}])


# ---------------------------------------------------------------------------------------------------------
# Idempotence


CHAIN_TEXT = f"""{HEADER}
agraph (float[N,4] x) => (float[N,4] y) {{ t = Identity(x) u = Relu(t) v = Identity(u) y = Identity(v) }}
"""


@pytest.mark.parametrize("text", [IF_TEXT, LOOP_TEXT, CHAIN_TEXT])
def test_a_second_run_changes_nothing(text):
    once, _, _ = eliminate(parse_model(text))
    twice, stats, report = eliminate(once)
    assert report.passes[0].changed is False
    assert not any(key.startswith("removed.") for key in stats)
    assert onnx.printer.to_text(twice.graph) == onnx.printer.to_text(once.graph)


def test_no_identity_means_no_change():
    model = graph("(float[N,4] x) => (float[N,4] y)", "y = Relu(x)")
    optimized, stats, report = eliminate(model)
    assert stats == {}
    assert report.passes[0].changed is False
    assert onnx.printer.to_text(optimized.graph) == onnx.printer.to_text(model.graph)
