"""fuse-gelu: both forms, every association and operand order of the outer product, the cube written three
ways, numerics on ORT, and a negative test per decline reason."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from conftest import op_counts, random_feeds, total_stats

import graphopt
from graphopt.validate.numerics import run_model
from passes.fuse_gelu import FuseGelu

OUTER_FORMS = ["(half*x)*s", "(x*s)*half", "(half*s)*x", "(x*s)/2", "(x/2)*s"]


def gelu_model(form="erf", outer="(x*s)*half", erf_argument="div", cube="pow", swap=False, opset=20,
               constant_nodes=False, constants=None, extra_outputs=(), extra_consumer=None, dtype=np.float32,
               shape=("N", 4, 6), scalar_shape=()):
    """A decomposed GELU. ``swap`` puts every commutative operand pair the other way round; ``constants``
    overrides constant values by role (half, two, one, sqrt2, inv_sqrt2, scale, kappa, exponent);
    ``extra_consumer`` names an intermediate that an extra Neg node (a graph output) also reads."""
    values = {"half": 0.5, "two": 2.0, "one": 1.0, "sqrt2": 1.4142135, "inv_sqrt2": 0.70710678,
              "scale": math.sqrt(2 / math.pi), "kappa": 0.044715, "exponent": 3.0, **(constants or {})}
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits = [], []

    def const(role):
        array = np.full(scalar_shape, values[role], dtype)
        if constant_nodes:
            nodes.append(oh.make_node("Constant", [], [role], value=onnx.numpy_helper.from_array(array)))
        else:
            inits.append(onnx.numpy_helper.from_array(array, role))
        return role

    def op(kind, a, b, out):
        nodes.append(oh.make_node(kind, [b, a] if swap and kind in ("Add", "Mul") else [a, b], [out]))
        return out

    if form == "erf":
        if erf_argument == "div":
            argument = op("Div", "x", const("sqrt2"), "scaled")
        else:
            argument = op("Mul", "x", const("inv_sqrt2"), "scaled")
        nodes.append(oh.make_node("Erf", [argument], ["activated"]))
    else:
        if cube == "pow":
            cubed = op("Pow", "x", const("exponent"), "cubed")
        elif cube == "x*(x*x)":
            cubed = op("Mul", "x", op("Mul", "x", "x", "squared"), "cubed")
        else:
            cubed = op("Mul", op("Mul", "x", "x", "squared"), "x", "cubed")
        term = op("Mul", const("kappa"), cubed, "cubic_term")
        polynomial = op("Add", "x", term, "polynomial")
        argument = op("Mul", const("scale"), polynomial, "scaled")
        nodes.append(oh.make_node("Tanh", [argument], ["activated"]))
    s = op("Add", const("one"), "activated", "s")
    if outer == "(half*x)*s":
        op("Mul", op("Mul", const("half"), "x", "partial"), s, "y")
    elif outer == "(x*s)*half":
        op("Mul", op("Mul", "x", s, "partial"), const("half"), "y")
    elif outer == "(half*s)*x":
        op("Mul", op("Mul", const("half"), s, "partial"), "x", "y")
    elif outer == "(x*s)/2":
        op("Div", op("Mul", "x", s, "partial"), const("two"), "y")
    else:
        op("Mul", op("Div", "x", const("two"), "partial"), s, "y")
    outputs = [oh.make_tensor_value_info("y", elem, list(shape))]
    outputs += [oh.make_tensor_value_info(name, elem, list(shape)) for name in extra_outputs]
    if extra_consumer:
        nodes.append(oh.make_node("Neg", [extra_consumer], ["other"]))
        outputs.append(oh.make_tensor_value_info("other", elem, list(shape)))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", elem, list(shape))], outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def run(model):
    return graphopt.optimize(model, passes=[FuseGelu()], check_changed=True)


def assert_same_outputs(original, optimized, rtol=1e-5, atol=1e-5):
    """float32 tolerance on O(1) values (standard normal inputs, scaled by 3 to reach GELU's tails):
    Gelu evaluates the same formula in another order (observed max abs error 1.2e-7 erf, 9.5e-7 tanh)."""
    for seed in range(2):
        feed = {name: value * 3 for name, value in random_feeds(original, seed).items()}
        expected, actual = run_model(original, feed), run_model(optimized, feed)
        assert sorted(actual) == sorted(expected)
        for name in expected:
            assert actual[name].dtype == expected[name].dtype and actual[name].shape == expected[name].shape
            np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol, err_msg=name)


def gelu_attrs(model):
    [node] = [n for n in model.graph.node if n.op_type == "Gelu"]
    assert list(node.input) == ["x"] and list(node.output) == ["y"]
    return {a.name: oh.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("outer", OUTER_FORMS)
@pytest.mark.parametrize("erf_argument", ["div", "mul"])
@pytest.mark.parametrize("swap", [False, True])
def test_erf_form(outer, erf_argument, swap):
    model = gelu_model("erf", outer=outer, erf_argument=erf_argument, swap=swap)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Gelu": 1}
    assert total_stats(report) == {"rewrites.gelu": 1}
    assert gelu_attrs(optimized) == {"approximate": b"none"}
    assert_same_outputs(model, optimized)


@pytest.mark.parametrize("outer", OUTER_FORMS)
@pytest.mark.parametrize("cube", ["pow", "x*(x*x)", "(x*x)*x"])
@pytest.mark.parametrize("swap", [False, True])
def test_tanh_form(outer, cube, swap):
    model = gelu_model("tanh", outer=outer, cube=cube, swap=swap)
    optimized, report = run(model)
    assert op_counts(optimized) == {"Gelu": 1}
    assert total_stats(report) == {"rewrites.gelu": 1}
    assert gelu_attrs(optimized) == {"approximate": b"tanh"}
    assert_same_outputs(model, optimized)


@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_constant_nodes_exact_constants_and_one_element_tensors(form):
    """Constants as Constant nodes of shape [1] (torch's export), with exact (float64-computed) values."""
    model = gelu_model(form, constant_nodes=True, scalar_shape=(1,),
                       constants={"sqrt2": math.sqrt(2), "inv_sqrt2": 1 / math.sqrt(2)})
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Gelu": 1}
    assert_same_outputs(model, optimized)


@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_float16(form):
    """float16 constants are rounded to 11 bits: matched with the dtype's epsilon as tolerance."""
    model = gelu_model(form, dtype=np.float16)
    optimized, _ = run(model)
    assert op_counts(optimized) == {"Gelu": 1}
    assert_same_outputs(model, optimized, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("outer", OUTER_FORMS)
@pytest.mark.parametrize("form, opset", [("erf", 19), ("tanh", 17)])
def test_opset_below_20_declined_once(form, opset, outer):
    """Declined once per GELU whatever its outer form (no inner node is also read as a GELU's last node)."""
    model = gelu_model(form, outer=outer, opset=opset, constant_nodes=True)
    optimized, report = run(model)
    assert total_stats(report) == {"skipped.gelu.opset_below_20": 1}
    assert op_counts(optimized) == op_counts(model)


@pytest.mark.parametrize("make, reason", [
    (lambda: gelu_model("tanh", constants={"kappa": 0.05}), "constant_mismatch"),
    (lambda: gelu_model("tanh", constants={"scale": 0.8}), "constant_mismatch"),
    (lambda: gelu_model("tanh", constants={"exponent": 2.0}), "constant_mismatch"),
    (lambda: gelu_model("erf", constants={"sqrt2": 1.414}), "constant_mismatch"),
    (lambda: gelu_model("erf", constants={"half": 0.6}), "constant_mismatch"),
    (lambda: gelu_model("erf", outer="(x*s)/2", constants={"two": 2.5}), "constant_mismatch"),
    (lambda: gelu_model("erf", constants={"one": 1.5}), "constant_mismatch"),
    (lambda: gelu_model("erf", scalar_shape=(1, 1, 1, 1)), "constant_not_scalar"),
    (lambda: gelu_model("erf", extra_outputs=("activated",)), "intermediate_is_graph_output"),
    (lambda: gelu_model("erf", extra_consumer="s"), "intermediate_has_other_consumers"),
    (lambda: gelu_model("tanh", cube="x*(x*x)", extra_consumer="squared"), "intermediate_has_other_consumers"),
])
def test_declines_with_reason(make, reason):
    model = make()
    optimized, report = run(model)
    assert total_stats(report) == {f"skipped.gelu.{reason}": 1}
    assert op_counts(optimized) == op_counts(model)
    assert_same_outputs(model, optimized)


def test_constant_not_scalar_vector():
    """A per-channel 'half' is not GELU's 0.5, whatever its values."""
    model = gelu_model("erf", scalar_shape=(6,))
    _, report = run(model)
    assert total_stats(report) == {"skipped.gelu.constant_not_scalar": 1}


def test_bfloat16_declined():
    model = gelu_model("erf")
    for value in model.graph.initializer:
        array = onnx.numpy_helper.to_array(value)
        value.CopyFrom(oh.make_tensor(value.name, onnx.TensorProto.BFLOAT16, array.shape, array.ravel()))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = onnx.TensorProto.BFLOAT16
    _, report = run(model)
    assert total_stats(report) == {"skipped.gelu.unsupported_dtype": 1}


def test_not_a_gelu_is_not_matched():
    """x * sigmoid-like shapes that share GELU's outline but not its inner function are not reported."""
    model = gelu_model("erf")
    for node in model.graph.node:
        if node.op_type == "Erf":
            node.op_type = "Sigmoid"
    optimized, report = run(model)
    assert total_stats(report) == {} and not report.passes[0].changed


def test_x_in_inner_must_be_the_multiplied_x():
    """0.5 * x * (1 + erf(z / sqrt 2)) with z != x is not a GELU."""
    model = gelu_model("erf", outer="(half*x)*s")
    model.graph.input.append(oh.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 4, 6]))
    for node in model.graph.node:
        if node.op_type == "Div":
            node.input[0] = "z"
    _, report = run(model)
    assert total_stats(report) == {}


def test_inside_if_branch():
    """Subgraphs are visited; the branch's opset is the model's."""
    body = gelu_model("tanh").graph
    body.name = "then"
    del body.input[:]
    else_graph = oh.make_graph([oh.make_node("Identity", ["x"], ["y_else"])], "else", [],
                               [oh.make_tensor_value_info("y_else", onnx.TensorProto.FLOAT, ["N", 4, 6])])
    graph = oh.make_graph(
        [oh.make_node("If", ["c"], ["out"], then_branch=body, else_branch=else_graph)], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 6]),
         oh.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 4, 6])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)])
    onnx.checker.check_model(model)
    optimized, report = run(model)
    assert total_stats(report) == {"rewrites.gelu": 1}
    [then_branch] = [a.g for a in optimized.graph.node[0].attribute if a.name == "then_branch"]
    then_ops = [n.op_type for n in then_branch.node]
    assert then_ops == ["Gelu"]
    x = np.random.default_rng(0).standard_normal((2, 4, 6)).astype(np.float32)
    for flag in (True, False):
        feed = {"x": x, "c": np.array(flag)}
        np.testing.assert_allclose(run_model(optimized, feed)["out"], run_model(model, feed)["out"],
                                   rtol=1e-5, atol=1e-5)


def test_two_gelus_sharing_x():
    """Two GELUs of the same x (x has consumers outside each match: allowed, it is the input)."""
    model = gelu_model("erf")
    other = onnx.compose.add_prefix_graph(gelu_model("tanh").graph, "t_")
    for node in other.node:
        node.input[:] = ["x" if name == "t_x" else name for name in node.input]
    model.graph.node.extend(other.node)
    model.graph.initializer.extend(other.initializer)
    model.graph.output.append(oh.make_tensor_value_info("t_y", onnx.TensorProto.FLOAT, ["N", 4, 6]))
    onnx.checker.check_model(model)
    optimized, report = run(model)
    assert total_stats(report) == {"rewrites.gelu": 2}
    assert op_counts(optimized) == {"Gelu": 2}
    assert_same_outputs(model, optimized)


@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_second_run_changes_nothing(form):
    once, _ = run(gelu_model(form))
    _, report = run(once)
    assert not report.passes[0].changed and total_stats(report) == {}
