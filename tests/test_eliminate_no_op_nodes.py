"""eliminate-no-op-nodes: each kind of no-op removed, near misses kept, the signed-zero rule and its option,
a negative test per decline reason, subgraphs, and outputs compared bit for bit with the original on ORT
(-0.0, infinities and NaN payloads included)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.printer
import pytest
from conftest import op_counts, parse_model, random_feeds, total_stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import graphopt
from graphopt.validate.numerics import run_model
from passes.eliminate_no_op_nodes import EliminateNoOpNodes

HEADER = '<ir_version: 8, opset_import: ["" : 18, "com.example" : 1]>'
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


def graph(signature: str, body: str, initializers: str = "", header: str = HEADER) -> onnx.ModelProto:
    return parse_model(f"{header}\nagraph {signature} {initializers} {{\n{body}\n}}")


def run(model: onnx.ModelProto, **options):
    optimized, report = graphopt.optimize(model, passes=[EliminateNoOpNodes(**options)], check_changed=True)
    onnx.checker.check_model(optimized)
    return optimized, total_stats(report), report


def special_values(shape, dtype=np.float32) -> np.ndarray:
    """Values that tell exact from nearly exact: signed zeros, infinities, a NaN with a payload, subnormals."""
    specials = np.array([-0.0, 0.0, np.inf, -np.inf, np.nan, 1e-45, -3.5, 65504.0], dtype)
    if dtype == np.float32:
        specials.view(np.uint32)[4] = 0x7FC0BEEF  # a quiet NaN with a payload
    return np.resize(specials, shape).astype(dtype)


def assert_identical_outputs(original, optimized, feeds):
    """Same output names, dtypes, shapes and bytes on ORT."""
    for feed in feeds:
        expected, actual = run_model(original, feed), run_model(optimized, feed)
        assert list(actual) == list(expected)
        for name, value in expected.items():
            assert actual[name].dtype == value.dtype and actual[name].shape == value.shape, name
            assert actual[name].tobytes() == value.tobytes(), (name, actual[name], value)


def feeds_for(model):
    feeds = random_feeds(model)
    floats = {name: special_values(v.shape, v.dtype) for name, v in feeds.items() if v.dtype.kind == "f"}
    return [feeds, {**feeds, **floats}]


# ---------------------------------------------------------------------------------------------------------
# Removed: (signature, body ending in y = Neg(n) so the no-op is not the graph output, initializers, stat)

SIG = "(float[2,4] x) => (float[2,4] y)"
SYM = "(float[N,4] x) => (float[N,4] y)"

REMOVED = [
    (SIG, "n = Cast <to = 1> (x)", "", "cast"),
    ("(float[2,4] x, float[3] other) => (float[2,4] y)", "n = CastLike(x, other)", "", "castlike"),
    (SIG, "n = Reshape(x, s)", "<int64[2] s = {2, 4}>", "reshape"),
    (SIG, "n = Reshape(x, s)", "<int64[2] s = {0, -1}>", "reshape"),
    (SIG, "n = Reshape(x, s)", "<int64[2] s = {-1, 4}>", "reshape"),
    (SYM, "n = Reshape(x, s)", "<int64[2] s = {0, 4}>", "reshape"),
    (SYM, "n = Reshape(x, s)", "<int64[2] s = {-1, 4}>", "reshape"),  # -1 can only be N: 4 is static
    (SYM, "n = Reshape(x, s)", "<int64[2] s = {0, 0}>", "reshape"),
    (SIG, "sh = Shape(x)\n n = Reshape(x, sh)", "", "reshape"),  # not constant: inferred static shapes
    (SIG, "n = Expand(x, s)", "<int64[2] s = {1, 4}>", "expand"),
    (SYM, "n = Expand(x, s)", "<int64[1] s = {1}>", "expand"),
    (SYM, "n = Expand(x, s)", "<int64[2] s = {1, 4}>", "expand"),
    (SIG, "n = Transpose <perm = [0, 1]> (x)", "", "transpose"),
    ("(float[4] x) => (float[4] y)", "n = Transpose(x)", "", "transpose"),
    (SIG, "n = Pad(x, p)", "<int64[4] p = {0, 0, 0, 0}>", "pad"),
    (SIG, "n = Pad <mode = \"reflect\"> (x, p)", "<int64[4] p = {0, 0, 0, 0}>", "pad"),
    (SIG, "n = Pad <mode = \"edge\"> (x, p, v)", "<int64[4] p = {0, 0, 0, 0}, float v = {7}>", "pad"),
    (SYM, "n = Slice(x, st, en)", f"<int64[2] st = {{0, 0}}, int64[2] en = {{{INT64_MAX}, {INT64_MAX}}}>", "slice"),
    (SIG, "n = Slice(x, st, en, ax, sp)",
     "<int64[1] st = {0}, int64[1] en = {4}, int64[1] ax = {-1}, int64[1] sp = {1}>", "slice"),
    (SIG, "n = Slice(x, st, en, ax)", f"<int64[1] st = {{-9}}, int64[1] en = {{{INT32_MAX}}}, int64[1] ax = {{0}}>",
     "slice"),
    (SIG, "n = Concat <axis = 0> (x)", "", "concat"),
    (SIG, "n = Split <axis = 1, num_outputs = 1> (x)", "", "split"),
    (SIG, "n = Mul(x, one)", "<float one = {1}>", "mul"),
    (SIG, "n = Mul(one, x)", "<float[4] one = {1, 1, 1, 1}>", "mul"),
    (SYM, "n = Mul(x, one)", "<float[1,4] one = {1, 1, 1, 1}>", "mul"),
    (SIG, "n = Div(x, one)", "<float[2,1] one = {1, 1}>", "div"),
    (SIG, "n = Add(x, z)", "<float z = {-0.0}>", "add"),
    (SIG, "n = Add(z, x)", "<float[4] z = {-0.0, -0.0, -0.0, -0.0}>", "add"),
    (SIG, "n = Sub(x, z)", "<float z = {0}>", "sub"),
    (SIG, "c = Constant <value_float = 1.0> ()\n n = Mul(x, c)", "", "mul"),
    (SIG, "c = Constant <value = float[1] {1.0}> ()\n n = Div(x, c)", "", "div"),
    ("(int64[2,4] x) => (int64[2,4] y)", "n = Add(x, z)", "<int64 z = {0}>", "add"),
    ("(int32[2,4] x) => (int32[2,4] y)", "n = Div(x, one)", "<int32[4] one = {1, 1, 1, 1}>", "div"),
    ("(double[2,4] x) => (double[2,4] y)", "n = Mul(x, one)", "<double one = {1}>", "mul"),
    ("(float16[2,4] x) => (float16[2,4] y)", "n = Sub(x, z)", "<float16 z = {0}>", "sub"),
    ("(int64[2,4] x) => (int64[2,4] y)", "n = Where(c, x, z)", "<bool[4] c = {1, 1, 1, 1}, int64 z = {5}>", "where"),
    (SYM, "n = Where(c, z, x)", "<bool c = {0}, float[1,4] z = {1, 2, 3, 4}>", "where"),
    ("(int32[2,4] x) => (int32[2,4] y)", "c = Constant <value = bool[2,1] {1, 1}> ()\n n = Where(c, x, z)",
     "<int32[2,4] z = {1, 2, 3, 4, 5, 6, 7, 8}>", "where"),
    (SIG, "n = Where(c, z, x)", "<bool[2,4] c = {0, 0, 0, 0, 0, 0, 0, 0}, float[2,4] z = {1,2,3,4,5,6,7,8}>",
     "where"),
]


@pytest.mark.parametrize(("signature", "body", "initializers", "op"), REMOVED,
                         ids=[f"{op}-{i}" for i, (_, _, _, op) in enumerate(REMOVED)])
def test_no_op_is_removed_and_outputs_are_identical(signature, body, initializers, op):
    model = graph(signature, f"{body}\n y = Neg(n)", initializers)
    optimized, stats, report = run(model)
    assert stats == {f"removed.{op}": 1}
    assert report.passes[0].changed is True
    assert op_counts(optimized).get(op.capitalize() if op not in ("castlike",) else "CastLike", 0) == 0
    assert_identical_outputs(model, optimized, feeds_for(model))


def test_old_opset_forms_are_removed():
    """Pads, starts/ends/axes and split sizes as attributes (opsets 2-10, 1-9, 2-12)."""
    model = graph("(float[2,4] x) => (float[2,4] y)", """
        b = Pad <pads = [0, 0, 0, 0], mode = "edge"> (x)
        c = Slice <starts = [0], ends = [4], axes = [1]> (b)
        d = Split <axis = 0, split = [2]> (c)
        y = Neg(d)
    """, header='<ir_version: 4, opset_import: ["" : 9]>')
    optimized, stats, _ = run(model)
    assert stats == {"removed.pad": 1, "removed.slice": 1, "removed.split": 1}
    assert op_counts(optimized) == {"Neg": 1}
    assert_identical_outputs(model, optimized, feeds_for(model))


def test_reshape_with_a_shape_attribute_is_removed():
    """Opset < 5 (onnxruntime runs opset 7 and later: structure only)."""
    model = graph("(float[2,4] x) => (float[2,4] y)", "a = Reshape <shape = [2, 4]> (x)\n y = Neg(a)",
                  header='<ir_version: 3, opset_import: ["" : 4]>')
    optimized, stats, _ = run(model)
    assert stats == {"removed.reshape": 1}
    assert op_counts(optimized) == {"Neg": 1}


def test_a_chain_of_no_ops_goes_in_one_run_and_the_output_keeps_its_name():
    model = graph(SIG, """
        r = Relu(x)
        a = Cast <to = 1> (r)
        b = Mul(a, one)
        c = Transpose <perm = [0, 1]> (b)
        y = Reshape(c, s)
    """, "<float one = {1}, int64[2] s = {2, 4}>")
    optimized, stats, _ = run(model)
    assert stats == {"removed.cast": 1, "removed.mul": 1, "removed.transpose": 1, "removed.reshape": 1}
    assert op_counts(optimized) == {"Relu": 1}
    assert [o.name for o in optimized.graph.output] == ["y"] and list(optimized.graph.node[0].output) == ["y"]
    assert_identical_outputs(model, optimized, feeds_for(model))


# A Concat that puts a 1-D tensor back together from its elements (PyTorch's export of x.size() on dynamic
# dimensions). Pieces of s = Shape(x) by name; t is another Shape(x).
PIECES = {
    "p0": "e0 = Gather(s, i0)\n p0 = Unsqueeze(e0, zero)",
    "p1": "e1 = Gather(s, i1)\n p1 = Unsqueeze(e1, zero)",
    "p2": "e2 = Gather(s, im1)\n p2 = Unsqueeze(e2, zero)",  # the last element
    "q01": "q01 = Gather(s, i01)",
    "q12": "q12 = Gather(s, i12)",
    "u0": "t = Shape(x)\n f0 = Gather(t, i0)\n u0 = Unsqueeze(f0, zero)",
    "r01": "r01 = Slice(s, zero, two)",
    "r1e": "r1e = Slice(s, m2, big)",  # s[-2:], to the end
    "c3": "",
}
PIECE_CONSTANTS = ("<int64 i0 = {0}, int64 i1 = {1}, int64 im1 = {-1}, int64[1] zero = {0}, int64[2] i01 = {0, 1},"
                   " int64[2] i12 = {1, 2}, int64[1] c3 = {3}, int64[1] two = {2}, int64[1] m2 = {-2},"
                   " int64[1] big = {9223372036854775807}>")
REASSEMBLED = [
    ("float[N,M,3]", "p0, p1, p2", True),
    ("float[N,M,3]", "q01, p2", True),
    ("float[N,M,3]", "p0, q12", True),
    ("float[N,M,3]", "r01, p2", True),
    ("float[N,M,3]", "p0, r1e", True),
    ("float[N,M,3]", "r01, r1e", False),  # s[1] twice
    ("float[N,M]", "p0, p2", True),  # Gather(s, -1) is s[1] when s has 2 elements
    ("float[N,M,3]", "p0, p2, p1", False),  # out of order
    ("float[N,M,3]", "p0, p1", False),  # not all of s
    ("float[N,M,3]", "p0, p1, c3", False),  # a constant: s[2] is 3, yet the pieces are not s's
    ("float[N,M,3]", "u0, p1, p2", False),  # from another (equal) tensor: merging them is CSE's job
]


@pytest.mark.parametrize(("x", "pieces", "reassembled"), REASSEMBLED)
def test_a_concat_that_reassembles_a_tensor_from_its_elements_is_that_tensor(x, pieces, reassembled):
    body = "\n".join(["s = Shape(x)", *(PIECES[name] for name in pieces.split(", ")),
                      f"n = Concat <axis = 0> ({pieces})", "y = Neg(n)"])
    model = graph(f"({x} x) => (int64[K] y)", body, PIECE_CONSTANTS)
    optimized, stats, _ = run(model)
    assert stats == ({"removed.concat": 1} if reassembled else {})
    assert op_counts(optimized).get("Concat", 0) == (0 if reassembled else 1)
    if reassembled:
        neg = next(node for node in optimized.graph.node if node.op_type == "Neg")
        assert list(neg.input) == ["s"]
    assert_identical_outputs(model, optimized, [random_feeds(model, batch=b) for b in (1, 4)])


def test_a_reassembled_graph_output_keeps_its_name():
    model = graph("(float[N,M] x) => (int64[2] n)",
                  "s = Shape(x)\n e0 = Gather(s, i0)\n e1 = Gather(s, i1)\n p0 = Unsqueeze(e0, zero)\n"
                  "p1 = Unsqueeze(e1, zero)\n n = Concat <axis = 0> (p0, p1)",
                  "<int64 i0 = {0}, int64 i1 = {1}, int64[1] zero = {0}>")
    optimized, stats, _ = run(model)
    assert stats == {"removed.concat": 1}
    assert [node.output[0] for node in optimized.graph.node if node.op_type == "Shape"] == ["n"]
    assert_identical_outputs(model, optimized, [random_feeds(model)])


def test_unsqueezed_gathers_in_opset_11_form_are_recognized():
    """Unsqueeze's axes as an attribute (before opset 13)."""
    model = graph("(float[N,M] x) => (int64[2] y)",
                  "s = Shape(x)\n e0 = Gather(s, i0)\n e1 = Gather(s, i1)\n p0 = Unsqueeze <axes = [0]> (e0)\n"
                  "p1 = Unsqueeze <axes = [-1]> (e1)\n n = Concat <axis = -1> (p0, p1)\n y = Neg(n)",
                  "<int64 i0 = {0}, int64 i1 = {1}>", header='<ir_version: 7, opset_import: ["" : 11]>')
    optimized, stats, _ = run(model)
    assert stats == {"removed.concat": 1}
    assert_identical_outputs(model, optimized, [random_feeds(model)])


@pytest.mark.parametrize("allowzero", [0, 1])
def test_a_reshape_to_its_own_shape_is_removed_on_dynamic_dims(allowzero):
    model = graph("(float[N,M,3] x) => (float[N,M,3] y)",
                  f"s = Shape(x)\n n = Reshape <allowzero = {allowzero}> (x, s)\n y = Neg(n)")
    optimized, stats, _ = run(model)
    assert stats == {"removed.reshape": 1}
    assert op_counts(optimized) == {"Shape": 1, "Neg": 1}  # the Shape is eliminate-dead-nodes' to remove
    assert_identical_outputs(model, optimized, [random_feeds(model, batch=b) for b in (0, 1, 4)])


def test_a_reshape_to_part_of_its_shape_is_kept():
    model = graph("(float[N,M,3] x) => (float[?,?] y)", "s = Shape <start = 1> (x)\n n = Reshape(x, s)\n y = Neg(n)")
    _, stats, report = run(model)
    assert stats == {}
    assert report.passes[0].changed is False


def test_lossless_removes_a_view_of_a_tensor_to_its_own_size():
    """``x.view(x.size(0), x.size(1), x.size(2))``: the Concat becomes Shape(x) (here), the Reshape to it goes."""
    body = "\n".join(["s = Shape(x)", PIECES["p0"], PIECES["p1"], PIECES["p2"], "n = Concat <axis = 0> (p0, p1, p2)",
                      "r = Reshape(x, n)", "y = Neg(r)"])
    model = graph("(float[N,M,3] x) => (float[N,M,3] y)", body, PIECE_CONSTANTS)
    optimized, _ = graphopt.optimize(model, passes="lossless", check_changed=True)
    assert op_counts(optimized) == {"Neg": 1}
    assert_identical_outputs(model, optimized, [random_feeds(model, batch=b) for b in (1, 4)])


# BERT's token-type ids as PyTorch exports them on dynamic axes: a buffer sliced to the sequence length and
# expanded to input_ids' size, written as Where(Equal(size, -1), 1, size) with size = Concat of Shape pieces.
EXPAND_TO_SIZE = """<ir_version: 8, opset_import: ["" : 17]>
g (int64[B,S] ids) => (int64[B,S] y)
   <int64[1,8] buffer = {0, 1, 2, 3, 4, 5, 6, 7}, int64 i0 = {0}, int64 i1 = {1}, int64[1] zero = {0},
    int64[1] one = {1}, int64[2] minus = {-1, -1}, int64[2] ones = {1, 1}> {
   s = Shape(ids)
   b = Gather(s, i0)
   n = Gather(s, i1)
   b1 = Unsqueeze(b, zero)
   n1 = Unsqueeze(n, zero)
   sliced = Slice(buffer, zero, n1, one, one)
   size = Concat <axis = 0> (b1, n1)
   is_minus = Equal(size, minus)
   target = Where(is_minus, ones, size)
   y = Expand(sliced, target)
}
"""


def test_lossless_reduces_the_exported_expand_to_a_size_to_the_expand_of_the_shape():
    """Concat -> Shape (here), Equal(Shape, -1) -> false (fold-constants), Where(false, 1, s) -> s (here)."""
    model = parse_model(EXPAND_TO_SIZE)
    optimized, report = graphopt.optimize(model, passes="lossless", check_changed=True)
    assert op_counts(optimized) == {"Shape": 1, "Gather": 1, "Unsqueeze": 1, "Slice": 1, "Expand": 1}
    expand = next(node for node in optimized.graph.node if node.op_type == "Expand")
    assert list(expand.input)[1] == "s"
    assert_identical_outputs(model, optimized, [random_feeds(model, batch=b) for b in (1, 5, 8)])


# ---------------------------------------------------------------------------------------------------------
# Near misses: not no-ops, kept without a stat

KEPT = [
    (SIG, "n = Cast <to = 11> (x)", ""),
    (SIG, "n = Reshape(x, s)", "<int64[2] s = {4, 2}>"),
    (SYM, "n = Reshape(x, s)", "<int64[2] s = {-1, 2}>"),
    ("(float[N,M] x) => (float[N,M] y)", "n = Reshape(x, s)", "<int64[2] s = {0, -1}>"),  # N might be 0
    (SIG, "n = Transpose <perm = [1, 0]> (x)", ""),
    (SIG, "n = Transpose(x)", ""),
    (SIG, "n = Pad(x, p)", "<int64[4] p = {0, 1, 0, 0}>"),
    (SIG, "n = Slice(x, st, en)", "<int64[1] st = {0}, int64[1] en = {1}>"),
    (SIG, "n = Slice(x, st, en, ax, sp)",
     f"<int64[1] st = {{0}}, int64[1] en = {{{INT64_MAX}}}, int64[1] ax = {{0}}, int64[1] sp = {{-1}}>"),
    (SIG, "n = Slice(x, st, en)", f"<int64[1] st = {{1}}, int64[1] en = {{{INT64_MAX}}}>"),
    (SIG, "n = Mul(x, two)", "<float two = {2}>"),
    (SIG, "n = Mul(x, w)", "<float[4] w = {1, 1, 2, 1}>"),
    (SIG, "n = Div(one, x)", "<float one = {1}>"),
    (SIG, "n = Sub(z, x)", "<float z = {0}>"),
    (SIG, "n = Add(x, nan)", "<float nan = {NaN}>"),
    (SIG, "n = Where(c, x, z)", "<bool[4] c = {1, 0, 1, 1}, float z = {5}>"),
]


@pytest.mark.parametrize(("signature", "body", "initializers"), KEPT)
def test_near_misses_are_kept_silently(signature, body, initializers):
    model = graph(signature, f"{body}\n y = Neg(n)", initializers)
    optimized, stats, report = run(model)
    assert stats == {}
    assert report.passes[0].changed is False
    assert op_counts(optimized) == op_counts(model)


@pytest.mark.parametrize(("body", "override"), [
    ("n = Mul(x, one)", {"one": np.array(3, np.float32)}),
    ("n = Reshape(x, s)", {"s": np.array([2, -1], np.int64)}),
    ("n = Expand(x, s)", {"s": np.array([1, 4], np.int64)}),
])
def test_initializers_that_are_graph_inputs_are_not_known_values(body, override):
    """IR < 4 style: ``one`` and ``s`` are initializers and graph inputs, so a caller may override them."""
    name = next(iter(override))
    declared = "float one" if name == "one" else "int64[2] s"
    model = graph(f"(float[2,4] x, {declared}) => (float[2,4] y)", f"{body}\n y = Neg(n)",
                  "<float one = {1}>" if name == "one" else "<int64[2] s = {2, 4}>")
    optimized, stats, report = run(model)
    assert stats == {}
    assert report.passes[0].changed is False
    x = random_feeds(model)["x"]
    assert_identical_outputs(model, optimized, [{"x": x}, {"x": x, **override}])


# ---------------------------------------------------------------------------------------------------------
# IEEE 754: the signed-zero rule


def test_add_of_positive_zero_is_kept_by_default_because_it_turns_negative_zero_positive():
    model = graph(SIG, "n = Add(x, z)\n y = Neg(n)", "<float z = {0}>")
    optimized, stats, report = run(model)
    assert stats == {"skipped.signed_zero": 1}
    assert report.passes[0].changed is False
    assert_identical_outputs(model, optimized, feeds_for(model))


def test_add_of_positive_zero_is_removed_with_ignore_signed_zeros_and_differs_only_at_negative_zero():
    model = graph(SIG, "n = Add(x, z)\n y = Neg(n)", "<float z = {0}>")
    optimized, stats, _ = run(model, ignore_signed_zeros=True)
    assert stats == {"removed.add": 1}
    x = special_values([2, 4])
    expected, actual = run_model(model, {"x": x})["y"], run_model(optimized, {"x": x})["y"]
    differs = expected.view(np.uint32) != actual.view(np.uint32)
    assert differs.any() and np.array_equal(differs, np.signbit(x) & (x == 0))  # only where x is -0.0
    np.testing.assert_array_equal(actual, expected)  # which compares equal: -0.0 == +0.0


def test_where_choosing_x_is_kept_by_default_because_onnxruntime_turns_its_negative_zeros_positive():
    model = graph(SIG, "n = Where(c, x, z)\n y = Neg(n)", "<bool[4] c = {1, 1, 1, 1}, float z = {5}>")
    optimized, stats, report = run(model)
    assert stats == {"skipped.signed_zero": 1}
    assert report.passes[0].changed is False
    optimized, stats, _ = run(model, ignore_signed_zeros=True)
    assert stats == {"removed.where": 1}
    x = special_values([2, 4])
    expected, actual = run_model(model, {"x": x})["y"], run_model(optimized, {"x": x})["y"]
    differs = expected.view(np.uint32) != actual.view(np.uint32)
    assert np.array_equal(differs, np.signbit(x) & (x == 0))  # only where x is -0.0 (ORT 1.32)
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize(("body", "initializers"), [
    ("n = Add(x, z)", "<float[4] z = {-0.0, 0, -0.0, -0.0}>"),  # one +0.0 is enough
    ("n = Sub(x, z)", "<float z = {-0.0}>"),  # x - (-0.0) = x + (+0.0)
    ("n = Add(z, x)", "<float z = {0}>"),
])
def test_zeros_that_would_change_the_sign_of_zero_are_declined(body, initializers):
    model = graph(SIG, f"{body}\n y = Neg(n)", initializers)
    _, stats, _ = run(model)
    assert stats == {"skipped.signed_zero": 1}
    optimized, stats, _ = run(model, ignore_signed_zeros=True)
    assert len(stats) == 1 and next(iter(stats)).startswith("removed.")


def test_option_prints_in_pipeline_text():
    assert graphopt.format_pipeline(EliminateNoOpNodes(ignore_signed_zeros=True)) == \
        "eliminate-no-op-nodes(ignore_signed_zeros=true)"


# ---------------------------------------------------------------------------------------------------------
# Declines, one test per reason


@pytest.mark.parametrize(("signature", "body", "initializers"), [
    ("(float[4] x) => (float[2,4] y)", "n = Add(x, z)", "<float[2,4] z = {" + ", ".join(["-0.0"] * 8) + "}>"),
    ("(float[N,1] x) => (float[N,4] y)", "n = Mul(x, one)", "<float[4] one = {1, 1, 1, 1}>"),
    ("(float[N,K] x) => (float[N,K] y)", "n = Mul(x, one)", "<float[4] one = {1, 1, 1, 1}>"),  # K may be 1
    ("(float[3] x) => (float[2,3] y)", "n = Div(x, one)", "<float[2,1] one = {1, 1}>"),
])
def test_declines_neutral_constants_that_broadcast(signature, body, initializers):
    model = graph(signature, f"{body}\n y = Neg(n)", initializers)
    optimized, stats, report = run(model)
    assert stats == {"skipped.broadcast": 1}
    assert report.passes[0].changed is False


def unknown_shape_model(body, initializers):
    """x comes out of an op of an unknown domain: its type and shape are unknown (not run on ORT)."""
    return graph("(float[2,4] x0) => (float[2,4] y)", f"x = com.example.Mystery(x0)\n {body}\n y = Neg(n)",
                 initializers)


def test_declines_a_non_scalar_neutral_constant_when_the_rank_is_unknown():
    model = unknown_shape_model("n = Mul(x, one)", "<float[4] one = {1, 1, 1, 1}>")
    _, stats, report = run(model)
    assert stats == {"skipped.shape_unknown": 1}
    assert report.passes[0].changed is False
    scalar = unknown_shape_model("n = Mul(x, one)", "<float one = {1}>")
    _, stats, _ = run(scalar)
    assert stats == {"removed.mul": 1}


def test_declines_a_cast_whose_input_type_is_unknown():
    model = unknown_shape_model("n = Cast <to = 1> (x)", "")
    _, stats, report = run(model)
    assert stats == {"skipped.dtype_unknown": 1}
    assert report.passes[0].changed is False


def test_declines_a_neutral_constant_of_another_type():
    """Invalid ONNX (Add needs one type), but passes the basic checker: never trust the constant's type."""
    model = graph(SIG, "n = Add(x, z)\n y = Neg(n)", "<int64 z = {0}>")
    _, stats, report = run(model)
    assert stats == {"skipped.dtype_mismatch": 1}
    assert report.passes[0].changed is False


@pytest.mark.parametrize(("signature", "body", "initializers"), [
    ("(int64[4] x) => (int64[2,4] y)", "n = Where(c, x, z)", "<bool[2,4] c = {1,1,1,1,1,1,1,1}, int64 z = {5}>"),
    ("(int64[4] x) => (int64[2,4] y)", "n = Where(c, x, z)", "<bool[2,1] c = {1, 1}, int64 z = {5}>"),
    ("(float[N,1] x) => (float[N,4] y)", "n = Where(c, z, x)", "<bool c = {0}, float[4] z = {1, 2, 3, 4}>"),
])
def test_declines_a_constant_where_whose_other_operands_broadcast(signature, body, initializers):
    model = graph(signature, f"{body}\n y = Neg(n)", initializers)
    _, stats, report = run(model)
    assert stats == {"skipped.broadcast": 1}
    assert report.passes[0].changed is False


def test_declines_a_constant_where_whose_operand_rank_is_unknown():
    _, stats, report = run(unknown_shape_model("n = Where(c, z, x)", "<bool c = {0}, float z = {5}>"))
    assert stats == {"skipped.shape_unknown": 1}
    assert report.passes[0].changed is False


@pytest.mark.parametrize(("output", "body"), [
    ("float[2,4] y", "c = Constant <value = bool {0}> ()\n n = Where(c, w, x)"),
    ("int64[2] y, float[4] z", """z = Neg(w)
    s = Shape(x)
    i0 = Constant <value = int64 {0}> ()
    i1 = Constant <value = int64 {1}> ()
    zero = Constant <value = int64[1] {0}> ()
    e0 = Gather(s, i0)
    e1 = Gather(s, i1)
    p0 = Unsqueeze(e0, zero)
    p1 = Unsqueeze(e1, zero)
    n = Concat <axis = 0> (p0, p1)"""),
])
def test_declines_what_rests_on_inferred_shapes_when_initializers_are_inputs(output, body):
    """``w`` is an initializer and a graph input: shapes inferred from initializer values may not hold."""
    model = graph(f"(float[2,4] x, float[4] w) => ({output})", f"{body}\n y = Neg(n)", "<float[4] w = {1, 2, 3, 4}>")
    _, stats, report = run(model)
    assert stats == {"skipped.shape_from_default_values": 1}
    assert report.passes[0].changed is False


def test_declines_a_slice_to_int32_max_on_a_symbolic_dimension():
    sliced = graph(SYM, "n = Slice(x, st, en)\n y = Neg(n)", f"<int64[1] st = {{0}}, int64[1] en = {{{INT32_MAX}}}>")
    _, stats, report = run(sliced)
    assert stats == {"skipped.dim_not_static": 1}
    assert report.passes[0].changed is False


@pytest.mark.parametrize(("signature", "body", "initializers", "reason"), [
    ("(float[2,4] x) => (float[2,4] y)", "y = Cast <to = 1> (x)", "", "graph_output_from_input_or_constant"),
    ("(float[2,4] x) => (float[2,4] y)", "y = Mul(x, one)", "<float one = {1}>", "graph_output_from_input_or_constant"),
    ("(float[2,4] x) => (float[2,4] y)", "y = Reshape(c, s)", "<float[2,4] c = {1,2,3,4,5,6,7,8}, int64[2] s = {2, 4}>",
     "graph_output_from_input_or_constant"),
    ("(float[2,4] x) => (float[2,4] r, float[2,4] y)", "r = Relu(x)\n y = Transpose <perm = [0, 1]> (r)", "",
     "graph_output_is_also_input_of_node"),
])
def test_declines_what_would_rename_a_graph_output(signature, body, initializers, reason):
    model = graph(signature, body, initializers)
    optimized, stats, report = run(model)
    assert stats == {f"skipped.{reason}": 1}
    assert report.passes[0].changed is False
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]
    assert_identical_outputs(model, optimized, feeds_for(model))


# ---------------------------------------------------------------------------------------------------------
# Subgraphs

IF_TEXT = f"""{HEADER}
agraph (bool c, float[2] x) => (float[2] y) <float one = {{1}}, float[2] nz = {{-0.0, -0.0}}> {{
    a = Relu(x)
    y = If(c) <
        then_branch = g1 () => (float[2] t) {{
            m = Mul(a, one)
            t1 = Add(m, nz)
            t = Neg(t1)
        }},
        else_branch = g2 () => (float[2] e) {{
            e = Cast <to = 1> (a)
        }}
    >
}}
"""


def test_no_ops_inside_branches_are_removed_but_outer_tensors_keep_their_names():
    model = parse_model(IF_TEXT)
    optimized, stats, _ = run(model)
    # then: Mul and Add go (Neg reads outer 'a'); else: the branch output comes from the outer scope
    assert stats == {"removed.mul": 1, "removed.add": 1, "skipped.source_from_outer_scope": 1}
    branches = {a.name: [n.op_type for n in a.g.node] for a in optimized.graph.node[1].attribute}
    assert branches == {"then_branch": ["Neg"], "else_branch": ["Cast"]}
    assert list(optimized.graph.node[1].attribute[0].g.node[0].input) == ["a"]
    onnx.checker.check_model(optimized, full_check=True)
    feeds = {"x": special_values([2])}
    assert_identical_outputs(model, optimized, [{**feeds, "c": np.array(True)}, {**feeds, "c": np.array(False)}])


# ---------------------------------------------------------------------------------------------------------
# Idempotence


@pytest.mark.parametrize("text", [
    IF_TEXT,
    f"{HEADER} agraph (float[2,4] x) => (float[2,4] y) <float one = {{1}}, float z = {{0}}>"
    "{ a = Relu(x) b = Mul(a, one) c = Add(b, z) y = Cast <to = 1> (c) }",
])
def test_a_second_run_changes_nothing(text):
    once, _, _ = run(parse_model(text))
    twice, stats, report = run(once)
    assert report.passes[0].changed is False
    assert not any(key.startswith("removed.") for key in stats)
    assert onnx.printer.to_text(twice.graph) == onnx.printer.to_text(once.graph)


# ---------------------------------------------------------------------------------------------------------
# Property: a neutral constant is removed exactly when broadcasting leaves x's shape, and outputs are identical

@settings(max_examples=40, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
       op=st.sampled_from(["Mul", "Div", "Add", "Sub"]))
def test_neutral_constants_are_removed_exactly_when_the_shape_is_kept(shapes, op):
    x_shape, c_shape = (list(shape) for shape in shapes.input_shapes)
    neutral = np.full(c_shape, 1.0 if op in ("Mul", "Div") else (-0.0 if op == "Add" else 0.0), np.float32)
    out_shape = list(np.broadcast_shapes(tuple(x_shape), tuple(c_shape)))
    model = oh.make_model(oh.make_graph(
        [oh.make_node(op, ["x", "c"], ["n"]), oh.make_node("Neg", ["n"], ["y"])], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
        [onnx.numpy_helper.from_array(neutral, "c")]), opset_imports=[oh.make_opsetid("", 18)])
    optimized, stats, _ = run(model)
    assert ("removed." + op.lower() in stats) == (out_shape == x_shape)
    assert_identical_outputs(model, optimized, [{"x": special_values(x_shape)}])
