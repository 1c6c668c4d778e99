"""fuse-reshapes: collapsed chains, bitwise-equal outputs on ORT, and a negative test per decline reason."""

from __future__ import annotations

import math

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


# ---------------------------------------------------------------------------------------------------------
# unsqueeze_chain


def unsqueeze_pair(first, second, outputs, inputs="float[N,S] x", opset=17, extra=""):
    """t = Unsqueeze(x, first), y = Unsqueeze(t, second): axes as initializers (opset 13+) or attributes."""
    if opset < 13:
        return model_text(f"t = Unsqueeze<axes = {first}>(x)\n y = Unsqueeze<axes = {second}>(t)\n {extra}",
                          inputs=inputs, outputs=outputs, opset=opset)
    return model_text(f"t = Unsqueeze(x, a1)\n y = Unsqueeze(t, a2)\n {extra}", inputs=inputs, outputs=outputs,
                      opset=opset, initializers=f"<int64[{len(first)}] a1 = {{{', '.join(map(str, first))}}}, "
                                                f"int64[{len(second)}] a2 = {{{', '.join(map(str, second))}}}>")


def unsqueeze_axes(model):
    node = next(n for n in model.graph.node if n.op_type == "Unsqueeze")
    if node.attribute:
        return list(node.attribute[0].ints)
    return {i.name: onnx.numpy_helper.to_array(i).tolist() for i in model.graph.initializer}[node.input[1]]


@pytest.mark.parametrize("first, second, merged", [
    ([1], [2], [1, 2]),  # BERT's attention mask: [N, S] -> [N, 1, S] -> [N, 1, 1, S]
    ([0], [0], [0, 1]),
    ([2], [1], [1, 3]),
    ([-1], [0], [0, 3]),
    ([0, 2], [-1], [0, 2, 4]),
])
def test_unsqueeze_pair_collapses(first, second, merged):
    model = unsqueeze_pair(first, second, outputs=f"float[{','.join(['?'] * (2 + len(first) + len(second)))}] y")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Unsqueeze": 1}
    assert total_stats(report) == {"rewrites.unsqueeze_chain": 1}
    assert unsqueeze_axes(optimized) == merged
    assert_same_outputs(model, optimized, [random_feeds(model, batch=b) for b in (1, 3)], rtol=0, atol=0)


def test_unsqueeze_axes_attribute_before_opset_13():
    model = unsqueeze_pair([1], [-1], outputs="float[?,?,?,?] y", opset=11)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Unsqueeze": 1}
    assert unsqueeze_axes(optimized) == [1, 3]
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


def test_unsqueeze_chain_of_three_collapses_in_one_run():
    model = model_text("""
        t = Unsqueeze(x, a)
        u = Unsqueeze(t, a)
        y = Unsqueeze(u, a)
    """, inputs="float[N,S] x", outputs="float[1,1,1,N,S] y", initializers="<int64[1] a = {0}>")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Unsqueeze": 1}
    assert total_stats(report) == {"rewrites.unsqueeze_chain": 2}
    assert unsqueeze_axes(optimized) == [0, 1, 2]
    assert_same_outputs(model, optimized, [random_feeds(model)], rtol=0, atol=0)


@pytest.mark.parametrize("model, reason", [
    (lambda: unsqueeze_pair([1], [2], extra="z = Neg(t)", outputs="float[?,?,?,?] y, float[?,?,?] z"),
     "intermediate_has_other_consumers"),
    (lambda: model_text("t = Unsqueeze(x, a1)\n y = Unsqueeze(t, a2)", inputs="float[N,S] x, int64[1] a2",
                        outputs="float[?,?,?,?] y", initializers="<int64[1] a1 = {0}>"), "axes_not_constant"),
])
def test_unsqueeze_chain_declines_with_reason(model, reason):
    model = model()
    optimized, report = run(model)
    assert total_stats(report) == {f"skipped.unsqueeze_chain.{reason}": 1}
    assert len(optimized.graph.node) == len(model.graph.node)


def test_unsqueeze_chain_declines_negative_axes_on_an_unknown_rank():
    """x comes out of an op of an unknown domain, so its rank is unknown (structure only: ORT cannot run it)."""
    model = parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[N,S] x0) => (float[?,?,?,?] y) <int64[1] a1 = {-1}, int64[1] a2 = {0}> {
        x = com.example.Mystery(x0)
        t = Unsqueeze(x, a1)
        y = Unsqueeze(t, a2)
    }""")
    optimized, report = run(model)
    assert total_stats(report) == {"skipped.unsqueeze_chain.rank_unknown": 1}
    assert len(optimized.graph.node) == 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_unsqueeze_pairs_match_numpy(data):
    """Any two Unsqueezes (axes of either sign) collapse into one with the shape and values numpy gives."""
    rank = data.draw(st.integers(0, 3), label="rank")
    shape = [2, 3, 4][:rank]

    def axes(rank_out, count):
        chosen = data.draw(st.permutations(range(rank_out)))[:count]
        return [a - rank_out if data.draw(st.booleans()) else a for a in chosen]

    first = axes(rank + (n1 := data.draw(st.integers(1, 2), label="n1")), n1)
    second = axes(rank + n1 + (n2 := data.draw(st.integers(1, 2), label="n2")), n2)
    x = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    expected = np.expand_dims(np.expand_dims(x, first), second)
    model = model_text("t = Unsqueeze(x, a1)\n y = Unsqueeze(t, a2)",
                       inputs=f"float[{', '.join(map(str, shape))}] x" if shape else "float x",
                       outputs=f"float[{', '.join(map(str, expected.shape))}] y",
                       initializers=f"<int64[{n1}] a1 = {{{', '.join(map(str, first))}}}, "
                                    f"int64[{n2}] a2 = {{{', '.join(map(str, second))}}}>")
    optimized, report = run(model)
    assert op_counts(optimized) == {"Unsqueeze": 1}
    assert np.array_equal(np.expand_dims(x, unsqueeze_axes(optimized)), expected)
    assert_same_outputs(model, optimized, [{"x": x}], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# reshape_own_dims: attention's head split and merge as PyTorch exports them on dynamic batch and sequence

OWN_DIMS_CONSTANTS = ("<int64 i0 = {0}, int64 i1 = {1}, int64 im1 = {-1}, int64 im2 = {-2}, int64 im3 = {-3}, "
                      "int64[1] zero = {0}, int64[1] one = {1}, int64[1] two = {2}, int64[1] m1 = {-1}, "
                      "int64[1] m3 = {-3}, int64[1] big = {9223372036854775807}, int64[2] i01 = {0, 1}, "
                      "int64[1] heads = {2}, int64[1] size = {4}, int64[1] width = {8}>")
DIM0 = "e0 = Gather(s, i0)\n p0 = Unsqueeze(e0, zero)"
DIM1 = "e1 = Gather(s, i1)\n p1 = Unsqueeze(e1, zero)"


def own_dims_model(pieces, body, x="float[B,S,8] x", y="float[B,S,2,4] y", reshape="Reshape",
                   opset=17, header=""):
    """y = Reshape(x, Concat(pieces)) with s = Shape(x); ``body`` computes the pieces."""
    return model_text(f"""
        {header}
        s = Shape(x)
        {body}
        target = Concat <axis = 0> ({pieces})
        y = {reshape}(x, target)
    """, inputs=x, outputs=y, opset=opset, initializers=OWN_DIMS_CONSTANTS)


def own_dims_feeds(shape, sizes=((1, 1), (2, 7), (3, 64), (0, 5))):
    """Inputs of ``shape`` with its two leading (symbolic) dims taken from ``sizes``: zero-size included."""
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((b, s, *shape[2:])).astype(np.float32)} for b, s in sizes]


def reshape_targets(model):
    values = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in model.graph.initializer}
    return [values.get(node.input[1]) for node in model.graph.node if node.op_type == "Reshape"]


@pytest.mark.parametrize("pieces, body, target", [
    ("p0, p1, heads, size", f"{DIM0}\n {DIM1}", [0, 0, 2, 4]),  # what PyTorch writes
    ("q, heads, size", "q = Gather(s, i01)", [0, 0, 2, 4]),
    ("q, heads, size", "q = Slice(s, zero, two)", [0, 0, 2, 4]),
    ("q, heads, size", "q = Slice(s, m3, m1)", [0, 0, 2, 4]),  # Shape(x)[-3:-1], x of rank 3
    ("p0, p1, heads, size", "e0 = Gather(s, im3)\n p0 = Unsqueeze(e0, zero)\n e1 = Gather(s, im2)\n"
                            "p1 = Unsqueeze(e1, m1)", [0, 0, 2, 4]),  # negative indices and Unsqueeze axis
    ("p0, p1, heads, size", f"{DIM0}\n t = Shape <start = 1> (x)\n e1 = Gather(t, i0)\n p1 = Unsqueeze(e1, zero)",
     [0, 0, 2, 4]),
    ("p0, p1, heads, size", f"{DIM0}\n t = Shape <start = -2> (x)\n e1 = Gather(t, i0)\n p1 = Unsqueeze(e1, zero)",
     [0, 0, 2, 4]),
    ("p0, zero, heads, size", DIM0, [0, 0, 2, 4]),  # a 0 of the target copies too
    ("p0, m1, size", DIM0, [0, -1, 4]),
    ("p0, p1, c", f"{DIM0}\n {DIM1}\n c = Constant <value = int64[2] {{2, 4}}> ()", [0, 0, 2, 4]),
    ("p0, p1, heads, size", f"{DIM0}\n {DIM1}\n".replace("Gather(s, i1)", "Gather <axis = -1> (s, i1)"),
     [0, 0, 2, 4]),
])
def test_own_dims_become_copying_zeros(pieces, body, target):
    model = own_dims_model(pieces, body, y=f"float[{', '.join(['?'] * len(target))}] y")
    optimized, report = run(model)
    assert total_stats(report) == {"rewrites.reshape_own_dims": 1}
    assert op_counts(optimized) == {"Reshape": 1}  # the shape arithmetic is gone with the driver's clean-up
    assert reshape_targets(optimized) == [target]
    sizes = ((1, 1), (2, 7), (3, 64)) + ((0, 5),) * (-1 not in target)  # -1 with a 0 batch: both models fail
    assert_same_outputs(model, optimized, own_dims_feeds((None, None, 8), sizes), rtol=0, atol=0)


SPLIT_AND_MERGE = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[B,S,8] x) => (float[B,S,8] y) {OWN_DIMS_CONSTANTS} {{
    s = Shape(x)
    {DIM0}
    {DIM1}
    split = Concat <axis = 0> (p0, p1, heads, size)
    q = Reshape(x, split)
    t = Transpose <perm = [0, 2, 1, 3]> (q)
    u = Softmax <axis = -1> (t)
    v = Transpose <perm = [0, 2, 1, 3]> (u)
    r = Shape(v)
    f0 = Gather(r, i0)
    f1 = Gather(r, i1)
    g0 = Unsqueeze(f0, zero)
    g1 = Unsqueeze(f1, zero)
    merge = Concat <axis = 0> (g0, g1, width)
    y = Reshape(v, merge)
}}
"""


def test_head_split_and_merge_on_dynamic_batch_and_sequence():
    model = parse_model(SPLIT_AND_MERGE)
    optimized, report = run(model)
    assert total_stats(report) == {"rewrites.reshape_own_dims": 2}
    assert op_counts(optimized) == {"Reshape": 2, "Transpose": 2, "Softmax": 1}
    assert reshape_targets(optimized) == [[0, 0, 2, 4], [0, 0, 8]]
    assert_same_outputs(model, optimized, own_dims_feeds((None, None, 8)), rtol=0, atol=0)
    _, again = run(optimized)
    assert not again.passes[0].changed


def test_lossless_leaves_no_shape_arithmetic_in_attention():
    model = parse_model(SPLIT_AND_MERGE)
    optimized, report = graphopt.optimize(model, passes="lossless", check_changed=True)
    assert op_counts(optimized) == {"Reshape": 2, "Transpose": 2, "Softmax": 1}
    assert_same_outputs(model, optimized, own_dims_feeds((None, None, 8)), rtol=0, atol=0)


def test_a_shared_target_is_replaced_for_each_reshape_and_kept_for_its_other_consumers():
    model = model_text(f"""
        s = Shape(x)
        {DIM0}
        {DIM1}
        target = Concat <axis = 0> (p0, p1, heads, size)
        y = Reshape(x, target)
        u = Reshape(x, target)
        n = Neg(x)
        v = Reshape(n, target)
        z = Reshape(w, target)
    """, inputs="float[B,S,8] x, float[B,S,8] w",
                       outputs=", ".join(f"float[B,S,2,4] {name}" for name in "yuvz") + ", int64[4] target",
                       initializers=OWN_DIMS_CONSTANTS)
    optimized, report = run(model)
    assert total_stats(report) == {"rewrites.reshape_own_dims": 2,
                                   "skipped.reshape_own_dims.other_tensor_dim": 2}  # Neg(x) is another tensor
    assert op_counts(optimized) == {"Shape": 1, "Gather": 2, "Unsqueeze": 2, "Concat": 1, "Neg": 1, "Reshape": 4}
    assert reshape_targets(optimized) == [[0, 0, 2, 4], [0, 0, 2, 4], None, None]
    feeds = [{**feed, "w": feed["x"] + 1} for feed in own_dims_feeds((None, None, 8))]
    assert_same_outputs(model, optimized, feeds, rtol=0, atol=0)


@pytest.mark.parametrize("model, reason", [
    (lambda: own_dims_model("p0, p1, heads, size", f"{DIM0}\n {DIM1}", reshape="Reshape <allowzero = 1>"),
     "allowzero"),
    (lambda: own_dims_model("p0, p1, heads, size", f"{DIM0}\n e1 = Gather(r, i1)\n p1 = Unsqueeze(e1, zero)",
                            header="w = Neg(x)\n r = Shape(w)"), "other_tensor_dim"),
    (lambda: own_dims_model("p1, p0, heads, size", f"{DIM0}\n {DIM1}", x="float[N,N,8] x",
                            y="float[N,N,2,4] y"), "position_mismatch"),
    (lambda: own_dims_model("p0, twice, size", f"{DIM0}\n {DIM1}\n twice = Mul(p1, two)", y="float[B,?,4] y"),
     "piece_computed"),
])
def test_own_dims_declines_with_reason(model, reason):
    model = model()
    optimized, report = run(model)
    assert total_stats(report) == {f"skipped.reshape_own_dims.{reason}": 1}
    assert len(optimized.graph.node) == len(model.graph.node)
    assert_same_outputs(model, optimized, own_dims_feeds((None, None, 8), sizes=((1, 1), (3, 3))), rtol=0, atol=0)


@pytest.mark.parametrize("pieces, body, stats", [
    ("p0, p1, heads, size", f"{DIM0}\n {DIM1}", {"rewrites.reshape_own_dims": 1}),  # a Gather that succeeds
    ("p0, p1, heads, size", f"{DIM0}\n e1 = Gather(s, im2)\n p1 = Unsqueeze(e1, zero)",
     {"skipped.reshape_own_dims.rank_unknown": 1}),
    ("q, heads, size", "q = Slice(s, zero, two)", {"skipped.reshape_own_dims.rank_unknown": 1}),
    ("p0, p1, heads, size", f"{DIM0}\n t = Shape <start = -2> (x)\n e1 = Gather(t, i0)\n p1 = Unsqueeze(e1, zero)",
     {"skipped.reshape_own_dims.rank_unknown": 1}),
])
def test_own_dims_on_an_unknown_rank(pieces, body, stats):
    """x comes out of an op of an unknown domain, so its rank is unknown: nonnegative indices still name x's
    dims (the Gather fails unless they exist), anything that counts from the end does not (structure only:
    ORT cannot run the op)."""
    model = parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[B,S,8] x0) => (float[B,S,2,4] y) {OWN_DIMS_CONSTANTS} {{
        x = com.example.Mystery(x0)
        s = Shape(x)
        {body}
        target = Concat <axis = 0> ({pieces})
        y = Reshape(x, target)
    }}""")
    optimized, report = run(model)
    assert total_stats(report) == stats
    if "rewrites.reshape_own_dims" in stats:
        assert reshape_targets(optimized) == [[0, 0, 2, 4]]


def test_a_target_of_constants_only_is_left_to_constant_folding():
    model = model_text("""
        target = Concat <axis = 0> (heads, size)
        y = Reshape(x, target)
    """, inputs="float[2,4] x", outputs="float[2,4] y", initializers=OWN_DIMS_CONSTANTS)
    optimized, report = run(model)
    assert total_stats(report) == {}
    assert op_counts(optimized) == {"Concat": 1, "Reshape": 1}


def test_own_dims_does_not_read_a_constant_a_caller_may_override():
    """IR < 4: ``heads`` and ``size`` are initializers and graph inputs, defaults a caller may replace."""
    model = parse_model("""
    <ir_version: 3, opset_import: ["" : 8]>
    g (float[B,S,8] x, int64[1] heads, int64[1] size) => (float[B,S,2,4] y)
       <int64[1] heads = {2}, int64[1] size = {4}> {
        s = Shape(x)
        i0 = Constant <value = int64 {0}> ()
        i1 = Constant <value = int64 {1}> ()
        e0 = Gather(s, i0)
        e1 = Gather(s, i1)
        p0 = Unsqueeze <axes = [0]> (e0)
        p1 = Unsqueeze <axes = [0]> (e1)
        target = Concat <axis = 0> (p0, p1, heads, size)
        y = Reshape(x, target)
    }""")
    optimized, report = run(model)
    assert total_stats(report) == {"skipped.reshape_own_dims.piece_computed": 1}
    assert len(optimized.graph.node) == len(model.graph.node)
