"""graphopt.fidelity: what onnx-graphsurgeon drops or cannot represent survives import and export.

One tiny model per restored item. Each item must survive the bare round trip ``to_model(to_graph(m), m)``,
and an edit by a pass where it should: the models hold an Identity that eliminate-identity removes, so the
item is checked on what the pass left untouched. Edits that a pass could make (a changed type, a changed op)
are made on the gs graph directly, to check that restoration never overrides them.
"""

from __future__ import annotations

import pathlib

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import assert_same_outputs, parse_model, random_feeds
from onnx import AttributeProto, TensorProto, helper, numpy_helper

import graphopt
from graphopt.fidelity import export_with_gs
from graphopt.model import load_split, to_graph, to_model
from graphopt.pass_base import Invariant, Pass, PassResult

MODELS_DIR = pathlib.Path(__file__).resolve().parents[1] / "models"

FLOAT2 = [2]


def value(name: str, elem_type: int = TensorProto.FLOAT, shape=FLOAT2) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def model_of(nodes, inputs, outputs, *, initializers=(), opsets=(("", 21),), functions=(), ir_version=10,
             value_info=()) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers),
                              value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                             functions=list(functions), ir_version=ir_version)


def identity_first(*nodes, output_type=TensorProto.FLOAT) -> list[onnx.NodeProto]:
    """``t = Identity(x)`` (which eliminate-identity removes) followed by ``nodes`` reading ``t``."""
    return [helper.make_node("Identity", ["x"], ["t"]), *nodes]


def round_trip(model: onnx.ModelProto) -> onnx.ModelProto:
    return to_model(to_graph(model), model)


def after_pass(model: onnx.ModelProto, passes: str = "eliminate-identity") -> onnx.ModelProto:
    optimized = graphopt.optimize(model, passes=passes, check_changed=True).model
    assert not any(node.op_type == "Identity" and list(node.input) == ["x"] for node in optimized.graph.node)
    return optimized


def both(model: onnx.ModelProto) -> list[onnx.ModelProto]:
    """The bare round trip and the model after eliminate-identity."""
    return [round_trip(model), after_pass(model)]


def node_named(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(node for node in model.graph.node if node.name == name)


def props(entries) -> list[tuple[str, str]]:
    return [(entry.key, entry.value) for entry in entries]


def add_prop(entries, key: str, text: str) -> None:
    entry = entries.add()
    entry.key, entry.value = key, text


RELU = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[2] x) => (float[2] y) {
    t = Identity(x)
    y = Relu(t)
}
"""


# ---------------------------------------------------------------------------------------------------------
# Model, graph and node fields


def test_model_fields_survive_with_their_presence():
    model = parse_model(RELU)
    model.doc_string, model.domain, model.model_version = "model doc", "my.domain", 7
    model.producer_name, model.producer_version = "producer", "1.2"
    add_prop(model.metadata_props, "k", "v")
    for exported in both(model):
        assert (exported.doc_string, exported.domain, exported.model_version) == ("model doc", "my.domain", 7)
        assert (exported.producer_name, exported.producer_version) == ("producer", "1.2")
        assert props(exported.metadata_props) == [("k", "v")]
    bare = parse_model(RELU)
    for exported in both(bare):
        assert not any(exported.HasField(f) for f in ("doc_string", "domain", "model_version", "producer_name"))


def test_training_info_survives():
    model = parse_model(RELU)
    algorithm = helper.make_graph([helper.make_node("Neg", ["x"], ["z"])], "step", [value("x")], [value("z")])
    model.training_info.add().algorithm.CopyFrom(algorithm)
    for exported in both(model):
        assert list(exported.training_info) == list(model.training_info)


def test_graph_metadata_props_survive():
    model = parse_model(RELU)
    add_prop(model.graph.metadata_props, "graph-key", "graph-value")
    for exported in both(model):
        assert props(exported.graph.metadata_props) == [("graph-key", "graph-value")]


def test_quantization_annotation_survives_for_tensors_that_still_exist():
    model = parse_model(RELU)
    for tensor in ("t", "y"):
        annotation = model.graph.quantization_annotation.add()
        annotation.tensor_name = tensor
        add_prop(annotation.quant_parameter_tensor_names, "SCALE_TENSOR", f"{tensor}_scale")
    assert [a.tensor_name for a in round_trip(model).graph.quantization_annotation] == ["t", "y"]
    assert [a.tensor_name for a in after_pass(model).graph.quantization_annotation] == ["y"]  # t was removed


def test_node_doc_string_and_metadata_survive_on_an_untouched_node():
    model = parse_model(RELU)
    relu = model.graph.node[1]
    relu.doc_string = "relu doc"
    add_prop(relu.metadata_props, "origin", "layer1.relu")
    for exported in both(model):
        (node,) = [n for n in exported.graph.node if n.op_type == "Relu"]
        assert node.doc_string == "relu doc" and props(node.metadata_props) == [("origin", "layer1.relu")]


def test_named_node_keeps_its_metadata_when_a_pass_renames_its_output():
    model = parse_model("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[2] x) => (float[2] y) {
        t = Relu(x)
        y = Identity(t)
    }
    """)
    model.graph.node[0].name = "relu"
    add_prop(model.graph.node[0].metadata_props, "origin", "layer1.relu")
    exported = after_pass(model)
    assert list(node_named(exported, "relu").output) == ["y"]
    assert props(node_named(exported, "relu").metadata_props) == [("origin", "layer1.relu")]


def test_attribute_doc_string_survives():
    model = parse_model("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[2,3] x) => (float[3,2] y) {
        t = Identity(x)
        y = Transpose<perm = [1, 0]>(t)
    }
    """)
    model.graph.node[1].attribute[0].doc_string = "swap the axes"
    for exported in both(model):
        assert exported.graph.node[-1].attribute[0].doc_string == "swap the axes"


# ---------------------------------------------------------------------------------------------------------
# Attributes gs cannot hold


def _sparse(name: str = "") -> onnx.SparseTensorProto:
    values = numpy_helper.from_array(np.array([5.0], np.float32), name)
    indices = numpy_helper.from_array(np.array([1], np.int64))
    return helper.make_sparse_tensor(values, indices, [3])


def _type_proto() -> onnx.TypeProto:
    return helper.make_tensor_type_proto(TensorProto.FLOAT, [2])


ATTRIBUTES_GS_CANNOT_HOLD = {
    "empty ints": lambda: helper.make_attribute("a", [], attr_type=AttributeProto.INTS),
    "empty floats": lambda: helper.make_attribute("a", [], attr_type=AttributeProto.FLOATS),
    "empty strings": lambda: helper.make_attribute("a", [], attr_type=AttributeProto.STRINGS),
    "non-UTF-8 string": lambda: helper.make_attribute("a", b"\xff\xfe"),
    "non-UTF-8 strings": lambda: helper.make_attribute("a", [b"ok", b"\xff"]),
    "tensors": lambda: helper.make_attribute("a", [numpy_helper.from_array(np.ones(2, np.float32))]),
    "graphs": lambda: helper.make_attribute("a", [helper.make_graph([], "b", [], [])]),
    "sparse tensor": lambda: helper.make_attribute("a", _sparse()),
    "sparse tensors": lambda: helper.make_attribute("a", [_sparse()]),
    "type proto": lambda: helper.make_attribute("a", _type_proto()),
    "type protos": lambda: helper.make_attribute("a", [_type_proto(), _type_proto()]),
}


@pytest.mark.parametrize("kind", sorted(ATTRIBUTES_GS_CANNOT_HOLD))
def test_attribute_gs_cannot_hold_survives(kind):
    custom = helper.make_node("Custom", ["t"], ["y"], domain="my.ops", name="custom", keep=1)
    custom.attribute.insert(0, ATTRIBUTES_GS_CANNOT_HOLD[kind]())
    model = model_of(identity_first(custom), [value("x")], [value("y")], opsets=(("", 21), ("my.ops", 1)))
    onnx.checker.check_model(model)
    for exported in both(model):
        assert list(node_named(exported, "custom").attribute) == list(custom.attribute)


def test_constant_with_a_sparse_value_keeps_its_value():
    constant = helper.make_node("Constant", [], ["c"], sparse_value=_sparse())
    model = model_of(identity_first(constant, helper.make_node("Add", ["t", "c"], ["y"])),
                     [value("x", shape=[3])], [value("y", shape=[3])])
    for exported in both(model):
        assert list(exported.graph.node[-2].attribute) == list(constant.attribute)
        onnx.checker.check_model(exported)
        assert_same_outputs(model, exported, [random_feeds(model)])


def test_attribute_is_not_put_back_on_a_node_whose_op_changed():
    custom = helper.make_node("Custom", ["x"], ["y"], domain="my.ops", tp=_type_proto())
    model = model_of([custom], [value("x")], [value("y")], opsets=(("", 21), ("my.ops", 1)))
    graph = to_graph(model)
    graph.nodes[0].op = "Other"
    assert not to_model(graph, model).graph.node[0].attribute


# ---------------------------------------------------------------------------------------------------------
# Value types and ValueInfo details


def _optional_tensor() -> onnx.TypeProto:
    return helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))


def _typed(name: str, type_proto: onnx.TypeProto) -> onnx.ValueInfoProto:
    return helper.make_value_info(name, type_proto)


def test_optional_input_and_output_types_survive():
    model = model_of(identity_first(helper.make_node("OptionalHasElement", ["t"], ["y"]),
                                    helper.make_node("OptionalGetElement", ["t"], ["e"]),
                                    helper.make_node("Optional", ["e"], ["o"])),
                     [_typed("x", _optional_tensor())],
                     [value("y", TensorProto.BOOL, []), _typed("o", _optional_tensor())])
    onnx.checker.check_model(model)
    for exported in both(model):
        assert exported.graph.input[0] == model.graph.input[0]
        assert list(exported.graph.output) == list(model.graph.output)
        onnx.checker.check_model(exported, full_check=True)


def test_map_input_type_survives():
    map_type = helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.INT64, []))
    vectorize = helper.make_node("DictVectorizer", ["t"], ["y"], domain="ai.onnx.ml", string_vocabulary=["a", "b"])
    model = model_of(identity_first(vectorize), [_typed("x", map_type)], [value("y", TensorProto.INT64, [1, 2])],
                     opsets=(("", 21), ("ai.onnx.ml", 3)))
    onnx.checker.check_model(model)
    for exported in both(model):
        assert exported.graph.input[0] == model.graph.input[0]
        onnx.checker.check_model(exported)


def test_sequence_element_shape_and_nested_sequences_survive():
    sequence = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2, 3]))
    nested = helper.make_sequence_type_proto(sequence)
    model = model_of(identity_first(helper.make_node("Identity", ["s"], ["z"]), helper.make_node("Neg", ["t"], ["y"])),
                     [value("x"), _typed("s", nested)], [value("y"), _typed("z", nested)])
    for exported in both(model):
        assert list(exported.graph.input) == list(model.graph.input)
        assert list(exported.graph.output) == list(model.graph.output)


def test_denotations_and_value_info_doc_strings_survive():
    model = parse_model("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[N,3] x) => (float[N,3] y) <float[N,3] u> {
        t = Identity(x)
        u = Relu(t)
        y = Neg(u)
    }
    """)
    for value_info in (model.graph.input[0], model.graph.value_info[0]):
        value_info.doc_string = "rows are samples"
        value_info.type.denotation = "TENSOR"
        value_info.type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    for exported in both(model):
        assert exported.graph.input[0] == model.graph.input[0]
        assert list(exported.graph.value_info) == list(model.graph.value_info)


def test_a_type_changed_by_a_pass_is_kept():
    model = parse_model("""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[2,3] x) => (float[2,3] y) <float[2,3] u> {
        u = Relu(x)
        y = Neg(u)
    }
    """)
    model.graph.value_info[0].doc_string = "the original's"
    graph = to_graph(model)
    graph.tensors()["u"].dtype = np.float16
    graph.tensors()["u"].shape = [2, "K"]
    (exported,) = to_model(graph, model).graph.value_info
    assert exported.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [d.dim_param or d.dim_value for d in exported.type.tensor_type.shape.dim] == [2, "K"]
    assert not exported.doc_string


def test_a_declared_output_type_a_pass_left_unknown_is_restored():
    model = parse_model(RELU)
    graph = to_graph(model)
    graph.outputs[0].dtype = graph.outputs[0].shape = None
    assert to_model(graph, model).graph.output[0] == model.graph.output[0]


# ---------------------------------------------------------------------------------------------------------
# Subgraphs


IF_READING_OUTER_NAMES = """
<ir_version: 10, opset_import: ["" : 21]>
g (bool c, float[2] x) => (float[2] y) <float[2] w = {1, 2}, float[2] v = {3, 4}> {
    t = Identity(x)
    a = Add(t, w)
    y = If(c) <
        then_branch = then_graph () => (float[2] r1) { r1 = Mul(a, v) },
        else_branch = else_graph () => (float[2] r2) { r2 = Sub(x, w) }
    >
}
"""


def _branches(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    (node,) = [node for node in model.graph.node if node.op_type == "If"]
    return [attribute.g for attribute in node.attribute]


def test_inferred_shapes_are_not_written_declared_ones_are():
    """The passes infer every tensor's shape; the output declares only what the input declared (the digits
    CNN declares none: onnxruntime's own inference decides, as for the original)."""
    path = str(MODELS_DIR / "digits_cnn.onnx")
    assert not onnx.load(path).graph.value_info
    plain = graphopt.optimize(path, passes="lossless").model
    assert not plain.graph.value_info
    model = onnx.load(path)
    declared = next(name for node in model.graph.node if node.op_type == "Relu" for name in node.output)
    model.graph.value_info.append(helper.make_tensor_value_info(declared, TensorProto.FLOAT, None))
    optimized = graphopt.optimize(model, passes="lossless").model
    assert [value.name for value in optimized.graph.value_info] == [declared]


def test_subgraphs_get_no_value_info_for_outer_names():
    model = parse_model(IF_READING_OUTER_NAMES)
    for exported in both(model):
        assert [list(branch.value_info) for branch in _branches(exported)] == [[], []]


def test_outer_initializers_stay_in_the_graph_that_owns_them():
    model = parse_model(IF_READING_OUTER_NAMES)  # w is read by the main graph and a branch, v by a branch only
    for exported in both(model):
        assert sorted(t.name for t in exported.graph.initializer) == ["v", "w"]
        assert [list(branch.initializer) for branch in _branches(exported)] == [[], []]
        onnx.checker.check_model(exported)
        for condition in (True, False):
            assert_same_outputs(model, exported, [{"c": np.array(condition), "x": np.array([1, -2], np.float32)}])


def test_node_metadata_inside_a_subgraph_survives():
    model = parse_model(IF_READING_OUTER_NAMES)
    add_prop(_branches(model)[0].node[0].metadata_props, "origin", "then.mul")
    for exported in both(model):
        assert props(_branches(exported)[0].node[0].metadata_props) == [("origin", "then.mul")]


# ---------------------------------------------------------------------------------------------------------
# Functions


def _function(**fields) -> onnx.FunctionProto:
    nodes = [helper.make_node("Transpose", ["i"], ["m"], perm=[0]), helper.make_node("Relu", ["m"], ["o"])]
    function = helper.make_function("my.fn", "F", ["i"], ["o"], nodes, [helper.make_opsetid("", 21)], **fields)
    return function


def test_function_fields_survive():
    function = _function(doc_string="function doc")
    function.overload = "v1"
    function.value_info.append(value("m"))
    add_prop(function.metadata_props, "fk", "fv")
    function.attribute_proto.append(helper.make_attribute("unused", [], attr_type=AttributeProto.INTS))
    call = helper.make_node("F", ["t"], ["y"], domain="my.fn", overload="v1", name="call")
    model = model_of(identity_first(call), [value("x", shape=[2])], [value("y", shape=[2])],
                     opsets=(("", 21), ("my.fn", 1)), functions=[function])
    onnx.checker.check_model(model)
    for exported in both(model):
        assert list(exported.functions) == [function]
        assert node_named(exported, "call").overload == "v1"
        onnx.checker.check_model(exported)


def test_tensor_attribute_reference_gets_no_dummy_tensor():
    constant = helper.make_node("Constant", [], ["c"])
    constant.attribute.add(name="value", type=AttributeProto.TENSOR, ref_attr_name="value")
    function = helper.make_function("my.fn", "C", ["i"], ["o"], [constant, helper.make_node("Add", ["i", "c"], ["o"])],
                                    [helper.make_opsetid("", 21)], attributes=["value"])
    call = helper.make_node("C", ["t"], ["y"], domain="my.fn", value=numpy_helper.from_array(np.ones(2, np.float32)))
    model = model_of(identity_first(call), [value("x")], [value("y")], opsets=(("", 21), ("my.fn", 1)),
                     functions=[function])
    onnx.checker.check_model(model)
    for exported in both(model):
        assert list(exported.functions) == [function]
        assert_same_outputs(model, exported, [random_feeds(model)])


class SortTopologically(Pass):
    name = "sort-topologically"
    summary = "requires a topologically sorted graph, changes nothing"
    requires = frozenset({Invariant.TOPOLOGICALLY_SORTED})

    def run(self, graph, ctx):
        return PassResult(False)


def test_a_graph_with_subgraphs_and_functions_can_be_sorted():
    model = parse_model(IF_READING_OUTER_NAMES)
    function = _function()
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("my.fn", 1))
    model.graph.node[1].CopyFrom(helper.make_node("F", ["t"], ["a0"], domain="my.fn"))
    model.graph.node.insert(2, helper.make_node("Add", ["a0", "w"], ["a"]))
    onnx.checker.check_model(model)
    optimized = graphopt.optimize(model, passes=[SortTopologically()], check_changed=True).model
    assert_same_outputs(model, optimized, [{"c": np.array(True), "x": np.array([1, -2], np.float32)}])


# ---------------------------------------------------------------------------------------------------------
# Constants and the source model


def test_constant_tensor_gets_no_empty_name():
    constant = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(2, np.float32)))
    model = model_of(identity_first(constant, helper.make_node("Add", ["t", "c"], ["y"])), [value("x")], [value("y")])
    assert not constant.attribute[0].t.HasField("name")
    for exported in both(model):
        assert exported.graph.node[-2].attribute[0] == constant.attribute[0]


def test_the_source_model_is_not_modified():
    constant = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(2, np.float32)))
    weight = numpy_helper.from_array(np.full(2, 3, np.float32), "w")
    model = model_of([constant, helper.make_node("Add", ["x", "c"], ["t"]), helper.make_node("Mul", ["t", "w"], ["u"]),
                      helper.make_node("Identity", ["u"], ["y"])], [value("x")], [value("y")], initializers=[weight])
    before = model.SerializeToString()
    round_trip(model)
    graphopt.optimize(model, passes="lossless", check_changed=True)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("array", [
    np.array([b"a", b"bc", b""], dtype=object),
    np.array([-8, 7, 0], dtype=ml_dtypes.int4),
    np.array([0.5, -2, 1], dtype=ml_dtypes.float8_e4m3fnuz),
    np.array([0.5, -2, 1], dtype=ml_dtypes.bfloat16),
    np.array([1.5, -0.25], dtype=np.float16),
], ids=lambda array: str(array.dtype))
def test_constants_a_pass_has_read_are_written_exactly(array):
    initializer = numpy_helper.from_array(array, "w")
    model = model_of([helper.make_node("Identity", ["w"], ["y"])], [],
                     [value("y", initializer.data_type, [len(array)])], initializers=[initializer])
    constant = helper.make_node("Constant", [], ["y2"], value=numpy_helper.from_array(array))
    model.graph.node.append(constant)
    model.graph.output.append(value("y2", initializer.data_type, [len(array)]))
    graph = to_graph(model)
    for tensor in [*graph.tensors().values(), graph.nodes[1].attrs["value"]]:
        if isinstance(tensor, gs.Constant):
            assert tensor.values is not None  # reading the values makes gs hold numpy arrays
    for exported in (to_model(graph, model), export_with_gs(graph)):
        (written,) = exported.graph.initializer
        for tensor in (written, exported.graph.node[1].attribute[0].t):
            assert tensor.data_type == initializer.data_type
            assert numpy_helper.to_array(tensor).tolist() == numpy_helper.to_array(initializer).tolist()
            assert numpy_helper.to_array(tensor).dtype == numpy_helper.to_array(initializer).dtype


def test_a_variable_typed_with_a_numpy_float8_dtype_keeps_its_onnx_type():
    model = model_of([helper.make_node("Identity", ["x"], ["y"])], [value("x", TensorProto.FLOAT8E4M3FNUZ)],
                     [value("y", TensorProto.FLOAT8E4M3FNUZ)])
    graph = to_graph(model)
    graph.outputs[0].dtype = np.dtype(ml_dtypes.float8_e4m3fnuz)  # as onnx.helper.tensor_dtype_to_np_dtype gives
    assert to_model(graph, model).graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT8E4M3FNUZ
    assert graph.outputs[0].dtype == np.dtype(ml_dtypes.float8_e4m3fnuz)


def test_unused_initializers_and_dropped_initializer_inputs_stay_removed():
    model = parse_model("""
    <ir_version: 3, opset_import: ["" : 8]>
    g (float[2] x, float[2] w, float[2] unused) => (float[2] y) <float[2] w = {1, 2}, float[2] unused = {0, 0}> {
        y = Mul(x, w)
    }
    """)
    assert [i.name for i in round_trip(model).graph.input] == ["x", "w"]
    optimized = graphopt.optimize(model, passes="eliminate-dead-nodes", check_changed=True).model
    assert [i.name for i in optimized.graph.input] == ["x"]
    assert [t.name for t in optimized.graph.initializer] == ["w"]


def test_round_trip_of_a_model_gs_cannot_hold_is_byte_identical():
    function = _function(doc_string="function doc")
    add_prop(function.metadata_props, "fk", "fv")
    custom = helper.make_node("Custom", ["x"], ["u"], domain="my.ops", doc_string="custom doc", name="custom",
                              tensors=[numpy_helper.from_array(np.ones(2, np.float32))])
    custom.attribute.append(helper.make_attribute("empty", [], attr_type=AttributeProto.INTS))
    call = helper.make_node("F", ["u"], ["y"], domain="my.fn", name="call")
    model = model_of([custom, call], [value("x")], [value("y")], opsets=(("", 21), ("my.ops", 1), ("my.fn", 1)),
                     functions=[function])
    model.doc_string = "model doc"
    add_prop(model.metadata_props, "k", "v")
    add_prop(model.graph.metadata_props, "gk", "gv")
    assert round_trip(model).SerializeToString() == model.SerializeToString()


def _weighted_with_subgraph() -> onnx.ModelProto:
    """Main-graph weights (one read inside an If branch) and a branch initializer of its own."""
    branch = helper.make_graph([helper.make_node("Mul", ["t", "w"], ["b_out"]),
                                helper.make_node("Add", ["b_out", "c"], ["b_y"])], "branch", [], [value("b_y")],
                               [numpy_helper.from_array(np.full(2, 0.5, np.float32), "c")])
    nodes = identity_first(helper.make_node("Add", ["t", "v"], ["u"]),
                           helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch))
    weights = [numpy_helper.from_array(np.array([1.5, -2], np.float32), name) for name in ("w", "v")]
    return model_of(nodes, [value("x"), value("flag", TensorProto.BOOL, [])], [value("y"), value("u")],
                    initializers=weights)


def test_a_split_model_exports_what_the_whole_model_exports():
    model = _weighted_with_subgraph()
    split = load_split(model.SerializeToString())
    exported = to_model(to_graph(split.model, split.weights), split.model)
    assert exported.SerializeToString() == round_trip(model).SerializeToString()


def test_the_last_export_lets_go_of_the_input_weights():
    model = _weighted_with_subgraph()
    split = load_split(model.SerializeToString())
    graph = to_graph(split.model, split.weights)
    exported = to_model(graph, split.model, release=True)
    read = [t._values.tensor for g in graph.subgraphs(recursive=True) for t in g.tensors().values()
            if isinstance(t, gs.Constant)] + [t._values.tensor for t in graph.tensors().values()
                                             if isinstance(t, gs.Constant)]
    assert not any(tensor is weight for tensor in read for weight in split.weights)
    assert {t.name for t in read} == {"w", "v", "c"}
    assert exported.SerializeToString() == round_trip(model).SerializeToString()
