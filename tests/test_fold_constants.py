"""fold-constants: what folds (bitwise as ORT computes it), what is declined and why, If inlining, subgraphs,
the size guard and its option, idempotence, and the shipped models."""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import onnx
import onnx.helper as oh
import onnx_graphsurgeon as gs
import pytest
from conftest import op_counts, parse_model, random_feeds, total_stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphopt
from graphopt.analysis import AnalysisCache
from graphopt.errors import UsageError
from graphopt.pass_base import PassContext
from graphopt.validate.numerics import run_model
from passes.eliminate_identity import EliminateIdentity
from passes.fold_constants import FoldConstants

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def run(model, **options):
    return graphopt.optimize(model, passes=[FoldConstants(**options)], check_changed=True)


def assert_identical(original, optimized, feeds=None):
    """Same output names, dtypes, shapes and bits on ORT with its optimizations off."""
    for feed in feeds or [random_feeds(original, seed) for seed in range(2)]:
        expected, actual = run_model(original, feed), run_model(optimized, feed)
        assert sorted(actual) == sorted(expected)
        for name, value in expected.items():
            assert actual[name].dtype == value.dtype and actual[name].shape == value.shape, name
            np.testing.assert_array_equal(actual[name], value, err_msg=name)


def assert_idempotent(model, **options):
    _, report = run(model, **options)
    assert not report.passes[0].changed, total_stats(report)


def skipped(report):
    return {k: v for k, v in total_stats(report).items() if k.startswith("skipped.")}


def diagnostics(report):
    return [str(d) for d in report.passes[0].result.diagnostics]


def run_on_graph(model, **options):
    """Run the pass on the imported graph directly: no shape inference, so sizes are only known once computed."""
    graph = gs.import_onnx(model)
    result = FoldConstants(**options).run(graph, PassContext(AnalysisCache()))
    return graph, result


# -- what folds ---------------------------------------------------------------------------------------------


def test_constant_chain_folds_to_one_initializer():
    model = parse_model(f"""{HEADER}
    g (float[3] x) => (float[3] y) {{
        a = Constant<value=float[3] {{1.5, -2, 3.25}}>()
        b = Exp(a)
        c = Div(b, a)
        d = Sqrt(c)
        y = Add(x, d)
    }}""")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Add": 1}
    assert total_stats(report) == {"folded.constant_nodes": 1, "folded.nodes": 3}
    assert [i.name for i in optimized.graph.initializer] == ["d"]
    assert_identical(model, optimized)
    assert_idempotent(optimized)


def test_initializers_feed_folding_and_graph_output_stays_an_output(tmp_path):
    weight = oh.make_tensor("w", onnx.TensorProto.FLOAT, [2, 3], np.arange(6, dtype=np.float32))
    graph = oh.make_graph(
        [oh.make_node("Transpose", ["w"], ["wt"]), oh.make_node("MatMul", ["x", "wt"], ["y"]),
         oh.make_node("Neg", ["wt"], ["negative"])],
        "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2]),
         oh.make_tensor_value_info("negative", onnx.TensorProto.FLOAT, [3, 2])], [weight])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    path = tmp_path / "out.onnx"
    optimized, report = graphopt.optimize(model, path, passes=[FoldConstants()], check_changed=True)  # checker+ORT
    assert op_counts(optimized) == {"MatMul": 1}
    assert [o.name for o in optimized.graph.output] == ["y", "negative"]
    assert "negative" in {i.name for i in optimized.graph.initializer}
    assert total_stats(report) == {"folded.nodes": 2}
    assert_identical(model, optimized)


def test_constant_nodes_become_initializers_in_every_form():
    model = parse_model(f"""{HEADER}
    g (float[2] x) => (float[2] y, int64[2] i, float f, string[2] s, float[2] t) {{
        t = Constant<value=float[2] {{1, 2}}>()
        i = Constant<value_ints=[3, 4]>()
        f = Constant<value_float=0.5>()
        s = Constant<value_strings=["a", "bc"]>()
        y = Mul(x, t)
    }}""")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Mul": 1}
    assert total_stats(report) == {"folded.constant_nodes": 4}
    assert {i.name for i in optimized.graph.initializer} == {"t", "i", "f", "s"}
    assert_identical(model, optimized)


@pytest.mark.parametrize("shape", [[2, 3, 4, 4], [1, 3, 5, 7]])
def test_static_shape_chain_folds_to_a_constant_shape(shape):
    model = parse_model(f"""{HEADER}
    g (float{shape} x) => (float[{shape[0]}, {math.prod(shape[1:])}] y) {{
        s = Shape(x)
        zero = Constant<value=int64 {{0}}>()
        one = Constant<value=int64 {{1}}>()
        n = Gather<axis=0>(s, zero)
        c = Gather<axis=0>(s, one)
        axes = Constant<value=int64[1] {{0}}>()
        n1 = Unsqueeze(n, axes)
        c1 = Unsqueeze(c, axes)
        rest = Constant<value=int64[1] {{{shape[2] * shape[3]}}}>()
        c2 = Mul(c1, rest)
        target = Concat<axis=0>(n1, c2)
        y = Reshape(x, target)
    }}""")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Reshape": 1}
    stats = total_stats(report)
    assert stats["folded.static_shapes"] == 1 and stats["folded.nodes"] == 7
    target = {i.name: onnx.numpy_helper.to_array(i) for i in optimized.graph.initializer}["target"]
    assert target.tolist() == [shape[0], math.prod(shape[1:])]
    assert_identical(model, optimized)
    assert_idempotent(optimized)


def test_dynamic_batch_only_static_dims_fold():
    model = parse_model(f"""{HEADER}
    g (float[N, 3, 4, 4] x) => (float[N, 48] y) {{
        s = Shape(x)
        zero = Constant<value=int64 {{0}}>()
        one = Constant<value=int64 {{1}}>()
        n = Gather<axis=0>(s, zero)
        c = Gather<axis=0>(s, one)
        axes = Constant<value=int64[1] {{0}}>()
        n1 = Unsqueeze(n, axes)
        c1 = Unsqueeze(c, axes)
        rest = Constant<value=int64[1] {{16}}>()
        c2 = Mul(c1, rest)
        target = Concat<axis=0>(n1, c2)
        y = Reshape(x, target)
    }}""")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Shape": 1, "Gather": 1, "Unsqueeze": 1, "Concat": 1, "Reshape": 1}
    stats = total_stats(report)
    assert stats["folded.static_shapes"] == 1  # Gather(Shape(x), 1) = 3
    assert stats["folded.nodes"] == 3  # that Gather, its Unsqueeze and the Mul
    assert stats["skipped.dynamic_shape"] == 2  # Shape(x), and Gather(Shape(x), 0), which picks N
    assert {i.name: onnx.numpy_helper.to_array(i).tolist() for i in optimized.graph.initializer}["c2"] == [48]
    assert_identical(model, optimized, [random_feeds(model, batch=b) for b in (1, 5)])
    assert_idempotent(optimized)


def shape_equality(other):
    return parse_model(f"""{HEADER}
    g (float[N, 3] x) => (bool[2] y, bool[2] z) <{other}> {{
        s = Shape(x)
        y = Equal(s, c)
        z = Equal(c, s)
    }}""")


@pytest.mark.parametrize("other, expected", [
    ("int64[2] c = {-1, -1}", [False, False]),  # a size is never negative, whatever N is
    ("int64[2] c = {-1, 3}", [False, True]),
    ("int64 c = {-1}", [False, False]),
])
def test_equal_of_a_shape_and_a_constant_folds_when_the_dims_decide_it(other, expected):
    model = shape_equality(other)
    optimized, report = run(model)
    assert op_counts(optimized) == {}
    assert total_stats(report)["folded.static_shapes"] == 2
    assert total_stats(report)["removed.unused_shape_nodes"] == 1
    values = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in optimized.graph.initializer}
    assert values["y"] == values["z"] == expected
    assert_identical(model, optimized, [random_feeds(model, batch=b) for b in (1, 3)])
    assert_idempotent(optimized)


@pytest.mark.parametrize("other", ["int64[2] c = {7, 2}", "int64[2] c = {0, 3}"])
def test_equal_of_a_shape_and_a_constant_is_left_when_a_symbolic_dim_decides_it(other):
    """N may be 7 (or 0): the first comparison depends on the input, so nothing folds."""
    model = shape_equality(other)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Shape": 1, "Equal": 2}
    assert skipped(report) == {"skipped.dynamic_shape": 3}
    assert_identical(model, optimized, [random_feeds(model, batch=b) for b in (3, 7)])


@pytest.mark.parametrize("attrs", ["", "<start=1>", "<end=-1>", "<start=-2, end=3>", "<start=1, end=1>",
                                   "<start=-10, end=10>"])
def test_shape_start_end_are_applied(attrs):
    model = parse_model(f"""<ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, 5, 7] x) => (int64[K] y) {{
        s = Shape{attrs}(x)
        y = Identity(s)
    }}""")
    optimized, report = run(model)
    assert_identical(model, optimized, [random_feeds(model, batch=2)])
    whole = attrs in ("", "<end=-1>", "<start=-10, end=10>")  # these ranges include the batch dimension N
    assert ("Shape" in op_counts(optimized)) == whole
    assert_idempotent(optimized)


@pytest.mark.parametrize("starts, ends, steps, expected", [
    (1, 3, 1, [3, 5]), (-2, 100, 1, [5, 7]), (1, 4, 2, [3, 7]), (0, 2, 1, None)])
def test_slice_of_shape_folds_static_dims(starts, ends, steps, expected):
    model = parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 5, 7] x) => (int64[K] y) {{
        s = Shape(x)
        b = Constant<value=int64[1] {{{starts}}}>()
        e = Constant<value=int64[1] {{{ends}}}>()
        a = Constant<value=int64[1] {{0}}>()
        st = Constant<value=int64[1] {{{steps}}}>()
        y = Slice(s, b, e, a, st)
    }}""")
    optimized, report = run(model)
    assert_identical(model, optimized, [random_feeds(model, batch=2)])
    if expected is None:  # picks the dynamic batch dimension
        assert "Slice" in op_counts(optimized)
    else:
        assert op_counts(optimized) == {}
        assert onnx.numpy_helper.to_array(optimized.graph.initializer[0]).tolist() == expected


def test_fold_shapes_false_leaves_shape_nodes():
    model = parse_model(f"""{HEADER}
    g (float[2, 3] x) => (int64[2] y) {{
        s = Shape(x)
        one = Constant<value=int64[1] {{1}}>()
        y = Add(s, one)
    }}""")
    optimized, report = run(model, fold_shapes=False)
    assert op_counts(optimized) == {"Shape": 1, "Add": 1}
    optimized, _ = run(model)
    assert op_counts(optimized) == {}
    assert_identical(model, optimized)


# -- the size guard -----------------------------------------------------------------------------------------

BLOW_UPS = {
    "ConstantOfShape": ("float[64, 64]", """
        shape = Constant<value=int64[2] {64, 64}>()
        big = ConstantOfShape<value=float[1] {0.5}>(shape)"""),
    "Tile": ("float[4096]", """
        small = Constant<value=float[4] {1, 2, 3, 4}>()
        repeats = Constant<value=int64[1] {1024}>()
        big = Tile(small, repeats)"""),
    "Expand": ("float[64, 64]", """
        small = Constant<value=float[1] {2}>()
        shape = Constant<value=int64[2] {64, 64}>()
        big = Expand(small, shape)"""),
    "Range": ("float[2048]", """
        start = Constant<value=float {0}>()
        limit = Constant<value=float {2048}>()
        delta = Constant<value=float {1}>()
        big = Range(start, limit, delta)"""),
}


def blow_up(op):
    x_type, body = BLOW_UPS[op]
    return parse_model(f"""{HEADER}
    g ({x_type} x) => ({x_type} y) {{ {body}
        y = Add(x, big)
    }}""")


@pytest.mark.parametrize("op", sorted(BLOW_UPS))
def test_blow_ups_are_declined_with_a_diagnostic(op):
    model = blow_up(op)
    optimized, report = run(model)
    assert op_counts(optimized) == {op: 1, "Add": 1}
    assert skipped(report) == {"skipped.size_guard": 1}
    (message,) = [d for d in diagnostics(report) if "size_guard" in d]
    assert "'big'" in message and ("16384 bytes" in message or "8192 bytes" in message)
    assert_identical(model, optimized)
    assert_idempotent(optimized)


@pytest.mark.parametrize("op", sorted(BLOW_UPS))
def test_max_growth_inf_lifts_the_guard(op):
    model = blow_up(op)
    optimized, report = run(model, max_growth="inf")
    assert op_counts(optimized) == {"Add": 1}
    assert skipped(report) == {}
    assert_identical(model, optimized)


@pytest.mark.parametrize("op", sorted(BLOW_UPS))
def test_size_guard_without_inferred_shapes_checks_the_computed_value(op):
    graph, result = run_on_graph(blow_up(op))
    assert result.stats["skipped.size_guard"] == 1
    assert [n.op for n in graph.nodes] == [op, "Add"]


def test_guard_allows_widening_cast_and_refuses_int8_to_float():
    weights = oh.make_tensor("w", onnx.TensorProto.INT8, [4096], np.ones(4096, np.int8))
    half = oh.make_tensor("h", onnx.TensorProto.FLOAT16, [4096], np.ones(4096, np.float16))
    nodes = [oh.make_node("Cast", ["w"], ["wf"], to=onnx.TensorProto.FLOAT),
             oh.make_node("Cast", ["h"], ["hf"], to=onnx.TensorProto.FLOAT),
             oh.make_node("Add", ["x", "wf"], ["y0"]), oh.make_node("Add", ["y0", "hf"], ["y"])]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4096])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096])], [weights, half])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    optimized, report = run(model)
    assert op_counts(optimized) == {"Cast": 1, "Add": 2}  # float16 -> float32 (x2) folded, int8 -> float (x4) not
    assert total_stats(report) == {"folded.nodes": 1, "skipped.size_guard": 1}
    assert_identical(model, optimized)


def test_options_are_validated():
    assert FoldConstants(max_growth="inf").values["max_growth"] == math.inf
    with pytest.raises(UsageError):
        FoldConstants(max_growth=0.5)
    with pytest.raises(UsageError):
        FoldConstants(guard_min_bytes=-1)


# -- declines -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("node", [
    "r = RandomNormal<shape=[3]>()",
    "r = RandomUniform<shape=[3]>()",
    "r = RandomNormalLike(c)",
    "r = RandomUniformLike(c)",
    "r = Bernoulli(p)",
    "r = Dropout(c, ratio, training)",
])
def test_nondeterministic_nodes_are_not_folded(node):
    model = parse_model(f"""{HEADER}
    g (float[3] x) => (float[3] y) {{
        c = Constant<value=float[3] {{1, 2, 3}}>()
        p = Constant<value=float[3] {{0.5, 0.5, 0.5}}>()
        ratio = Constant<value=float {{0.5}}>()
        training = Constant<value=bool {{1}}>()
        {node}
        y = Add(x, r)
    }}""")
    optimized, report = run(model)
    assert skipped(report) == {"skipped.nondeterministic": 1}
    op = node.split("= ")[1].split("<")[0].split("(")[0]
    assert op in op_counts(optimized)


def test_multinomial_is_not_folded():
    model = parse_model(f"""{HEADER}
    g (int32[1, 2] x) => (int32[1, 2] y) {{
        logits = Constant<value=float[1, 3] {{0, 1, 2}}>()
        r = Multinomial<sample_size=2>(logits)
        y = Add(x, r)
    }}""")
    optimized, report = run(model)
    assert skipped(report) == {"skipped.nondeterministic": 1}
    assert "Multinomial" in op_counts(optimized)


def test_unknown_domain_op_is_left_and_the_pipeline_goes_on():
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17, "custom.ops" : 1]>
    g (float[3] x) => (float[3] y) {
        c = Constant<value=float[3] {1, 2, 3}>()
        u = custom.ops.Magic(c)
        v = Add(u, c)
        w = Add(c, c)
        i = Identity(x)
        y0 = Add(i, v)
        y = Add(y0, w)
    }""", check=False)
    optimized, report = graphopt.optimize(model, passes=[FoldConstants(), EliminateIdentity()], check_changed=True)
    stats = total_stats(report)
    assert stats["skipped.non_standard_domain"] == 1 and stats["folded.nodes"] == 1  # w = c + c
    assert stats["removed.identity"] == 1
    assert op_counts(optimized) == {"Magic": 1, "Add": 3}
    assert any("domain 'custom.ops'" in d for d in diagnostics(report))


def test_quantization_ops_are_not_folded():
    model = parse_model(f"""{HEADER}
    g (float[4] x) => (float[4] y) {{
        q = Constant<value=int8[4] {{1, 2, 3, 4}}>()
        scale = Constant<value=float {{0.5}}>()
        zero = Constant<value=int8 {{0}}>()
        w = DequantizeLinear(q, scale, zero)
        y = Add(x, w)
    }}""")
    optimized, report = run(model)
    assert skipped(report) == {"skipped.quantization_op": 1}
    assert "DequantizeLinear" in op_counts(optimized)


def test_onnxruntime_failure_is_declined_and_the_rest_folds():
    model = parse_model(f"""{HEADER}
    g (float[3] x) => (float[3] y, float[3] z) {{
        c = Constant<value=float[6] {{1, 2, 3, 4, 5, 6}}>()
        bad_shape = Constant<value=int64[1] {{4}}>()
        r = Reshape(c, bad_shape)
        y = Add(x, r)
        d = Constant<value=float[3] {{1, 2, 3}}>()
        e = Neg(d)
        z = Add(x, e)
    }}""")
    optimized, report = run(model)
    stats = total_stats(report)
    assert stats["skipped.evaluation_failed"] == 1 and stats["folded.nodes"] == 1
    assert "Reshape" in op_counts(optimized) and "Neg" not in op_counts(optimized)
    assert any("evaluation_failed" in d and "'r'" in d for d in diagnostics(report))
    assert_idempotent(optimized)


@pytest.mark.parametrize("to", [onnx.TensorProto.BFLOAT16, onnx.TensorProto.STRING])
def test_results_onnxruntime_cannot_return_are_not_folded(to):
    model = parse_model(f"""{HEADER}
    g (float[2] x) => (float[2] y) {{
        c = Constant<value=float[2] {{1.5, 2}}>()
        odd = Cast<to={to}>(c)
        back = Cast<to=1>(odd)
        y = Add(x, back)
    }}""")
    optimized, report = run(model)
    assert skipped(report) == {"skipped.unsupported_dtype": 1}
    assert op_counts(optimized) == {"Cast": 2, "Add": 1}
    assert_identical(model, optimized)


def test_sequence_results_are_not_folded():
    model = parse_model(f"""{HEADER}
    g (float[4] x) => (float[4] y) {{
        a = Constant<value=float[2] {{1, 2}}>()
        b = Constant<value=float[2] {{3, 4}}>()
        s = SequenceConstruct(a, b)
        c = ConcatFromSequence<axis=0>(s)
        y = Add(x, c)
    }}""")
    optimized, report = run(model)
    assert skipped(report) == {"skipped.not_a_tensor": 1}
    assert_identical(model, optimized)


def test_sparse_constant_is_left_alone():
    sparse = oh.make_sparse_tensor(oh.make_tensor("v", onnx.TensorProto.FLOAT, [2], [1.0, 2.0]),
                                   oh.make_tensor("i", onnx.TensorProto.INT64, [2], [0, 3]), [5])
    graph = oh.make_graph([oh.make_node("Constant", [], ["c"], sparse_value=sparse),
                           oh.make_node("Add", ["x", "c"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    _, report = run(model)
    assert skipped(report) == {"skipped.unsupported_constant": 1}


def test_opset_newer_than_onnx_knows_leaves_shape_rules_off():
    model = parse_model(f"""{HEADER}
    g (float[2, 3] x) => (int64[2] y) {{
        y = Shape(x)
    }}""")
    graph = gs.import_onnx(model)
    graph.opset = onnx.defs.onnx_opset_version() + 1
    result = FoldConstants().run(graph, PassContext(AnalysisCache()))
    assert not result.changed and dict(result.stats) == {"skipped.unknown_opset": 1}


# -- control flow -------------------------------------------------------------------------------------------


def if_model(condition: int, nested: bool = False):
    inner = """
            ci = Constant<value=bool {1}>()
            o = If(ci) <then_branch = t2 () => (float[3] p) { p = Mul(x, k) },
                        else_branch = e2 () => (float[3] p2) { p2 = Neg(x) }>""" if nested else \
        "o = Mul(x, k)"
    return parse_model(f"""{HEADER}
    g (float[3] x) => (float[3] y, float[3] z, float[3] w) {{
        k = Constant<value=float[3] {{1, 2, 3}}>()
        cond = Constant<value=bool {{{condition}}}>()
        y, z, w = If(cond) <
            then_branch = tb () => (float[3] o, float[3] k2, float[3] xo) {{
                tmp = Add(k, k)
                {inner}
                k2 = Identity(tmp)
                xo = Identity(x)
            }},
            else_branch = eb () => (float[3] o2, float[3] k3, float[3] xo2) {{
                o2 = Sub(x, k)
                k3 = Identity(k)
                xo2 = Neg(x)
            }}>
        u = Add(y, z)
    }}""")


@pytest.mark.parametrize("condition", [0, 1])
@pytest.mark.parametrize("nested", [False, True])
def test_if_with_constant_condition_is_inlined(condition, nested):
    model = if_model(condition, nested)
    optimized, report = run(model)
    assert "If" not in op_counts(optimized)
    assert [o.name for o in optimized.graph.output] == ["y", "z", "w"]
    stats = total_stats(report)
    assert stats["rewrites.if_inlined"] == (2 if condition and nested else 1)
    assert_identical(model, optimized)
    assert_idempotent(optimized)


def test_inlined_branch_names_that_collide_are_renamed():
    model = parse_model(f"""{HEADER}
    g (float[3] x, bool c) => (float[3] y, float[3] z) {{
        cond = Constant<value=bool {{1}}>()
        y = If(cond) <then_branch = tb () => (float[3] o) {{ t = Neg(x)  o = Abs(t) }},
                      else_branch = eb () => (float[3] o2) {{ o2 = Identity(x) }}>
        z = If(c) <then_branch = tc () => (float[3] q) {{ t = Exp(x)  q = Abs(t) }},
                   else_branch = ec () => (float[3] q2) {{ q2 = Identity(x) }}>
    }}""")
    optimized, report = run(model)
    onnx.checker.check_model(optimized, full_check=True)
    assert op_counts(optimized) == {"Neg": 1, "Abs": 1, "If": 1}
    assert_identical(model, optimized)


def test_loop_body_folds_what_does_not_depend_on_loop_state():
    model = parse_model(f"""{HEADER}
    g (float[2] x) => (float[2] y, float[N, 2] s) {{
        n = Constant<value=int64 {{3}}>()
        keep = Constant<value=bool {{1}}>()
        outer = Constant<value=float[2] {{1, 2}}>()
        start = Constant<value=float[2] {{0, 0.5}}>()
        last, s = Loop(n, keep, start) <body = b (int64 i, bool c, float[2] v) => (bool c2, float[2] v2, float[2] w) {{
            c2 = Identity(c)
            one = Constant<value=float[2] {{1, 1}}>()
            step = Add(one, outer)
            fi = Cast<to=1>(i)
            scaled = Mul(step, fi)
            moved = Add(v, scaled)
            v2 = Sub(moved, outer)
            w = Mul(step, step)
        }}>
        y = Add(x, last)
    }}""")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Loop": 1, "Add": 1}  # every Loop input is constant: not evaluated
    body = optimized.graph.node[0].attribute[0].g
    assert [n.op_type for n in body.node] == ["Identity", "Cast", "Mul", "Add", "Sub"]
    onnx.checker.check_model(optimized, full_check=True)
    assert {"step", "w"} <= {i.name for i in body.initializer}  # gs exports 'outer' where it is used, too
    stats = total_stats(report)
    assert stats["skipped.control_flow"] == 1 and stats["folded.nodes"] == 2
    assert_identical(model, optimized)
    assert_idempotent(optimized)


# -- properties ---------------------------------------------------------------------------------------------

_UNARY = ["Neg", "Abs", "Exp", "Sqrt", "Reciprocal", "Sin", "Tanh", "Sigmoid", "Floor"]
_BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Pow"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_UNARY + _BINARY), st.integers(0, 10), st.integers(0, 10), st.booleans()),
                min_size=1, max_size=8), st.integers(0, 2**16))
def test_random_graphs_keep_their_bits_and_fold_to_a_fixed_point(steps, seed):
    """Graphs mixing constant-only and input-dependent values: outputs are bitwise unchanged, every node left
    depends on the input, and a second run changes nothing."""
    rng = np.random.default_rng(seed)
    inits = [onnx.numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), f"c{i}") for i in range(2)]
    names, nodes = ["c0", "c1", "x"], []
    for index, (op, a, b, _) in enumerate(steps):
        inputs = [names[a % len(names)]] + ([names[b % len(names)]] if op in _BINARY else [])
        nodes.append(oh.make_node(op, inputs, [f"t{index}"]))
        names.append(f"t{index}")
    nodes.append(oh.make_node("Add", ["x", names[-1]], ["y"]))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    optimized, _ = run(model)
    assert_identical(model, optimized, [{"x": rng.uniform(0.5, 2, 4).astype(np.float32)}])
    assert_idempotent(optimized)


# -- the shipped models -------------------------------------------------------------------------------------

_HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = sorted(glob.glob(os.path.join(_HERE, "..", "models", "*.onnx"))) + sorted(
    glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "*.onnx")))


@pytest.mark.parametrize("path", MODELS, ids=os.path.basename)
def test_models_keep_identical_outputs_and_are_a_fixed_point(path):
    original = onnx.load(path)
    optimized, report = run(path)
    assert len(optimized.graph.node) <= len(original.graph.node)
    assert_identical(original, optimized, [random_feeds(original, seed=0, batch=2)])
    assert_idempotent(optimized)


@pytest.mark.parametrize("ir_version, folds", [(3, True), (8, False)])
def test_initializer_listed_as_input_is_constant_only_before_ir4(ir_version, folds):
    """From IR 4 on, an initializer that is also a graph input is a default the caller may override."""
    weight = oh.make_tensor("w", onnx.TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    graph = oh.make_graph([oh.make_node("Neg", ["w"], ["n"]), oh.make_node("Add", ["x", "n"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3]),
                           oh.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [3])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])], [weight])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 9)], ir_version=ir_version)
    optimized, report = run(model)
    assert ("Neg" not in op_counts(optimized)) == folds
    feed = {"x": np.ones(3, np.float32)}
    assert_identical(model, optimized, [feed])
    if not folds:
        override = {**feed, "w": np.full(3, 5, np.float32)}
        np.testing.assert_array_equal(run_model(optimized, override)["y"], run_model(model, override)["y"])


def test_branches_of_a_dynamic_if_are_folded_inside():
    model = parse_model(f"""{HEADER}
    g (float[3] x, bool c) => (float[3] y) {{
        k = Constant<value=float[3] {{1, 2, 3}}>()
        d = Neg(k)
        y = If(c) <then_branch = tb () => (float[3] o) {{ two = Constant<value=float {{2}}>()  o = Mul(d, two) }},
                   else_branch = eb () => (float[3] o2) {{ o2 = Add(x, d) }}>
    }}""")
    optimized, report = run(model)
    onnx.checker.check_model(optimized, full_check=True)
    then_branch = optimized.graph.node[0].attribute[0].g
    assert len(then_branch.node) == 0 and [i.name for i in then_branch.initializer] == ["o"]
    stats = total_stats(report)
    assert stats["folded.nodes"] == 2 and stats["folded.constant_nodes"] == 2
    feeds = [{**random_feeds(model), "c": np.array(flag)} for flag in (True, False)]
    assert_identical(model, optimized, feeds)
    assert_idempotent(optimized)


def test_a_branch_folding_a_static_dim_leaves_the_outer_shape_node_connected():
    """The branch's Gather folds; the outer Shape it read is left whole (eliminate-dead-nodes' job), never
    emptied in place: that once left a node without inputs or outputs in the outer graph."""
    model = parse_model(f"""{HEADER}
    g (float[N, 3] x, bool c) => (int64 y) <int64 one = {{1}}, int64 two = {{2}}> {{
        s = Shape(x)
        y = If(c) <then_branch = tb () => (int64 a) {{ a = Gather(s, one) }},
                   else_branch = eb () => (int64 b) {{ b = Identity(two) }}>
    }}""")
    optimized, report = run(model)
    onnx.checker.check_model(optimized, full_check=True)
    assert [(n.op_type, list(n.input)) for n in optimized.graph.node] == [("Shape", ["x"]), ("If", ["c"])]
    assert total_stats(report)["folded.static_shapes"] == 1
    feeds = [{**random_feeds(model), "c": np.array(flag)} for flag in (True, False)]
    assert_identical(model, optimized, feeds)


def test_inlined_branch_outputs_that_are_constants_or_repeated_become_identities_then_fold():
    model = parse_model(f"""{HEADER}
    g (float[3] x) => (float[3] y, float[3] z, float[3] k, float[3] s) {{
        cond = Constant<value=bool {{1}}>()
        y, z, k = If(cond) <then_branch = tb () => (float[3] o, float[3] o_again, float[3] c) {{
                                o = Neg(x)
                                o_again = Identity(o)
                                c = Constant<value=float[3] {{1, 2, 3}}>()
                             }},
                             else_branch = eb () => (float[3] p, float[3] q, float[3] r) {{
                                p = Identity(x)  q = Identity(x)  r = Identity(x)
                             }}>
        s = Add(y, k)
    }}""")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Neg": 1, "Identity": 1, "Add": 1}
    assert "k" in {i.name for i in optimized.graph.initializer}
    assert_identical(model, optimized)
    assert_idempotent(optimized)


def test_shapes_of_an_inlined_branch_fold_in_the_same_run():
    model = parse_model(f"""{HEADER}
    g (float[2, 6] x) => (float[3, 4] y) {{
        cond = Constant<value=bool {{0}}>()
        t = If(cond) <then_branch = tb () => (float[2, 6] o) {{ o = Neg(x) }},
                      else_branch = eb () => (float[2, 6] o2) {{ o2 = Relu(x) }}>
        s = Shape(t)
        half = Constant<value=int64[2] {{3, 4}}>()
        n = Div(s, s)
        target = Mul(n, half)
        y = Reshape(t, target)
    }}""")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Relu": 1, "Reshape": 1}
    assert_identical(model, optimized)
    assert_idempotent(optimized)


def test_float16_arithmetic_is_declined_and_float16_data_movement_folds():
    """onnxruntime's CPU provider runs this float16 Mul in float32 and drops the Cast pair around the scale, so
    the original computes with the unrounded scale: folding the scale to a float16 constant would change bits."""
    model = parse_model(f"""{HEADER}
    g (float16[2, 3] x) => (float16[2, 3] y) {{
        eight = Constant<value=float {{8}}>()
        root = Sqrt(eight)
        scale = Cast<to=10>(root)
        w = Constant<value=float16[3, 2] {{1, 2, 3, 4, 5, 6}}>()
        wt = Transpose(w)
        scaled = Mul(x, scale)
        y = Add(scaled, wt)
    }}""")
    optimized, report = run(model)
    stats = total_stats(report)
    assert stats["skipped.float16_arithmetic"] == 1
    assert "Transpose" not in op_counts(optimized) and "Cast" in op_counts(optimized)
    assert_identical(model, optimized)


def test_if_inside_a_loop_body_is_inlined_there_and_scan_bodies_fold():
    model = parse_model(f"""{HEADER}
    g (float[2] x, float[3, 2] xs) => (float[2] y, float[3, 2] ys) {{
        n = Constant<value=int64 {{2}}>()
        keep = Constant<value=bool {{1}}>()
        k = Constant<value=float[2] {{1, 2}}>()
        y = Loop(n, keep, x) <body = b (int64 i, bool c, float[2] v) => (bool c2, float[2] v2) {{
            c2 = Identity(c)
            flag = Constant<value=bool {{1}}>()
            v2 = If(flag) <then_branch = tb () => (float[2] o) {{ kk = Add(k, k)  o = Mul(v, kk) }},
                           else_branch = eb () => (float[2] o2) {{ o2 = Identity(v) }}>
        }}>
        ys = Scan<num_scan_inputs=1, body = s (float[2] row) => (float[2] out) {{
            two = Constant<value=float[2] {{2, 2}}>()
            scale = Mul(two, k)
            out = Mul(row, scale)
        }}>(xs)
    }}""")
    optimized, report = run(model)
    onnx.checker.check_model(optimized, full_check=True)
    loop_body = optimized.graph.node[0].attribute[0].g
    assert [n.op_type for n in loop_body.node] == ["Identity", "Mul"]
    scan = next(n for n in optimized.graph.node if n.op_type == "Scan")
    scan_body = next(a.g for a in scan.attribute if a.name == "body")
    assert [n.op_type for n in scan_body.node] == ["Mul"]
    assert total_stats(report)["rewrites.if_inlined"] == 1
    assert_identical(model, optimized)
    assert_idempotent(optimized)
