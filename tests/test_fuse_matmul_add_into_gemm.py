"""fuse-matmul-add-into-gemm: counts, numerics on ORT, and a negative test per decline reason."""

from __future__ import annotations

import functools

import conftest
import numpy as np
import onnx
import pytest
from conftest import op_counts, parse_model, random_feeds, total_stats

import graphopt
from passes.fuse_matmul_add_into_gemm import FuseMatMulAddIntoGemm

RNG = np.random.default_rng(0)


def matmul_add(bias="float[8] c", a="float[M,6] a", b="float[6,8] b", y="float[M,8] y", add="y = Add(h, c)",
               extra="", extra_outputs="", opset=17, check=True):
    """y = Add(MatMul(a, b), c), with a, b and c graph inputs (those left out are to be added as initializers,
    and the model checked then)."""
    inputs = ", ".join(part for part in (a, b, bias) if part)
    outputs = ", ".join(part for part in (y, extra_outputs) if part)
    return parse_model(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({inputs}) => ({outputs})
    {{
        h = MatMul(a, b)
        {add}
        {extra}
    }}
    """, check=check)


# Folding reassociates float arithmetic: equal within float32 rounding of values of magnitude ~10.
assert_same_outputs = functools.partial(conftest.assert_same_outputs, rtol=1e-5, atol=1e-5)


def run(model):
    return graphopt.optimize(model, passes=[FuseMatMulAddIntoGemm()], check_changed=True)


@pytest.mark.parametrize("bias", ["float[8] c", "float[1,8] c", "float[M,8] c", "float[M,1] c", "float[1,1] c",
                                  "float[1] c", "float c"])
def test_broadcastable_bias_fused(bias):
    model = matmul_add(bias=bias)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Gemm": 1}
    assert total_stats(report) == {"rewrites.matmul_add": 1}
    assert_same_outputs(model, optimized, [random_feeds(model, seed) for seed in range(2)])


def test_constant_weight_and_bias_on_the_left_of_add():
    weight = onnx.numpy_helper.from_array(RNG.standard_normal((6, 8)).astype(np.float64), "b")
    bias = onnx.numpy_helper.from_array(RNG.standard_normal(8).astype(np.float64), "c")
    model = matmul_add(a="double[5,6] a", b="", bias="", y="double[5,8] y", add="y = Add(c, h)", check=False)
    model.graph.initializer.extend([weight, bias])
    onnx.checker.check_model(model)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Gemm": 1}
    gemm = optimized.graph.node[0]
    assert list(gemm.input) == ["a", "b", "c"] and list(gemm.output) == ["y"]
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_gemm_in_a_bigger_graph():
    model = matmul_add(add="s = Add(h, c)\n y = Relu(s)")
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Gemm": 1, "Relu": 1}
    assert_same_outputs(model, optimized, [random_feeds(model)])


def test_opset_before_7_declined():
    """Add and Gemm broadcast by attribute before opset 7 (ORT cannot run Add-6: only the verdict is checked)."""
    model = matmul_add(a="float[2,6] a", bias="float[2] c", y="float[2,8] y", opset=6,
                       add="y = Add<broadcast = 1, axis = 0>(h, c)")
    optimized, report = run(model)
    assert total_stats(report) == {"skipped.matmul_add.opset_too_old": 1}
    assert op_counts(optimized) == {"MatMul": 1, "Add": 1}


def test_shared_weight_and_bias_do_not_block():
    """Nothing constant is modified, so weights shared by two MatMul+Add pairs are no obstacle."""
    model = matmul_add(b="", bias="", add="y1 = Add(h, c)\n h2 = MatMul(a, b)\n y = Add(c, h2)",
                       extra_outputs="float[M,8] y1", check=False)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(RNG.standard_normal((6, 8)).astype(np.float32), "b"),
                                    onnx.numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "c")])
    onnx.checker.check_model(model)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Gemm": 2}
    assert total_stats(report) == {"rewrites.matmul_add": 2}
    assert_same_outputs(model, optimized, [random_feeds(model)])


@pytest.mark.parametrize("model, reason", [
    (lambda: matmul_add(a="int32[M,6] a", b="int32[6,8] b", bias="int32[8] c", y="int32[M,8] y"), "unsupported_dtype"),
    (lambda: matmul_add(a="float[B,M,6] a", y="float[B,M,8] y"), "operand_not_2d"),
    (lambda: matmul_add(b="float[6] b", bias="float[1] c", y="float[M] y"), "operand_not_2d"),
    (lambda: parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[6] x, int64[L] s, float[6,8] b, float[8] c) => (float[?,8] y) {
            a = Reshape(x, s)
            h = MatMul(a, b)
            y = Add(h, c)
        }
     """), "operand_rank_unknown"),
    (lambda: matmul_add(bias="float[2,8] c"), "bias_not_broadcastable"),
    (lambda: matmul_add(bias="float[1,M,8] c", y="float[1,M,8] y"), "bias_not_broadcastable"),
    (lambda: matmul_add(bias="float[K] c"), "bias_not_broadcastable"),
    (lambda: matmul_add(bias="", add="y = Add(h, h)"), "bias_is_matmul_output"),
    (lambda: matmul_add(extra_outputs="float[M,8] h"), "intermediate_is_graph_output"),
    (lambda: matmul_add(extra="z = Neg(h)", extra_outputs="float[M,8] z"), "intermediate_has_other_consumers"),
])
def test_declines_with_reason(model, reason):
    model = model()
    optimized, report = run(model)
    assert total_stats(report) == {f"skipped.matmul_add.{reason}": 1}
    assert "MatMul" in op_counts(optimized) and "Gemm" not in op_counts(optimized)
    feeds = random_feeds(model)
    if reason == "bias_not_broadcastable":  # runnable sizes for the symbolic dimensions
        feeds["a"] = feeds["a"][..., :2, :] if feeds["c"].shape[-2:-1] == (2,) else feeds["a"]
        feeds["c"] = feeds["c"] if feeds["c"].shape[-1] == 8 else RNG.standard_normal(8).astype(np.float32)
    if reason == "operand_rank_unknown":
        feeds["s"] = np.array([1, 6])
    assert_same_outputs(model, optimized, [feeds])


def test_second_run_changes_nothing():
    once, _ = run(matmul_add())
    _, report = run(once)
    assert not report.passes[0].changed
