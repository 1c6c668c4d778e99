"""Faithful import into and export from onnx-graphsurgeon (gs 0.6): what gs loses, and how graphopt gets it back.

``import_graph(model)`` gives the passes a gs.Graph; ``export_model(graph, original)`` lets gs write the
edited graph and then restores from ``original`` what gs cannot carry. Nothing is stashed between the two:
every restoration is recomputed from ``original`` and matched to what the passes left behind (see Matching),
so it stays right after passes edited the graph. Neither needs the values of the main graph's initializers
from ``model``/``original``: they may be value-less stand-ins, with the values in separate TensorProtos
(``import_graph(model, weights)``, see ``graphopt.model.SplitModel``).

Import works on a copy of the model that holds no weights: the main graph's initializers are copied without
their values, and gs's constants then read the original's TensorProtos (or ``weights``), shared rather than
copied (a model's weights are most of its bytes; copying them cost a full copy of the model in time and
memory). gs writes into the TensorProtos it exports (it sets ``name`` on them), so export never hands gs a
tensor that holds values (see below), and the shared TensorProtos are never written. The copy is sanitized
first:

* attributes gs cannot hold are removed from the copy, and put back on their node at export: empty
  INTS/FLOATS/STRINGS (gs's export raises), STRING(S) that are not UTF-8 (gs's import raises), and TENSORS,
  GRAPHS, SPARSE_TENSOR(S), TYPE_PROTO(S) (gs drops them silently, which would change the model). Passes do
  not see these attributes.
* value types gs cannot export (optional, map, opaque, sequences of anything but tensors: gs's export
  raises) are cleared in the copy; export puts the original type back.
* initializers that old models (IR < 4) also list as graph inputs stay graph inputs, in their original
  order (gs makes them constants only), so the interface is unchanged until a pass (eliminate-dead-nodes)
  decides otherwise.

Every export goes through ``export_with_gs``, because constants whose values a pass has read hold numpy
arrays (gs drops its lazy reference to the TensorProto on first access) and gs's own encoder cannot write
string tensors, does not pack 4-bit types and writes float8e4m3fnuz as float8e4m3fn. While gs exports, every
dense constant is handed to it as a placeholder TensorProto with the constant's element type and dims but no
values, and variables typed with numpy dtypes carry the ONNX element type that ``onnx.helper`` gives; the
graph is left as it was afterwards. Then each placeholder in the exported model is filled: with a copy of the
constant's TensorProto, or with its array encoded by ``onnx.numpy_helper`` (named as gs named it). The result
is what gs writes when handed those TensorProtos, without gs copying every weight twice (``make_graph`` and
``make_model`` each copy the graph) and without writing into the shared TensorProtos. Shape inference asks
for large initializer values to be left out altogether (``values_up_to``). The last export of a graph
(``release``) leaves each constant reading the TensorProto it was written to, so that what it read before (a
numpy array, an input weight) is freed as the model is written, not after.

After gs exported, ``export_model`` restores:

* model: producer, doc string, domain and model version (with the original's field presence), IR version
  (raised to 4 when an initializer is no longer a graph input), metadata_props, training_info, opset
  imports (the original's, plus domains the graph now uses);
* every graph and subgraph: metadata_props; quantization_annotation of tensors that still exist; complete
  ValueInfos (doc strings, denotations, sequence element shapes, the cleared types), and the declared types
  of the model's inputs and outputs where gs or a pass left them without type or shape; value_info only for
  the names the original declared (the shapes the passes inferred are not written, see
  ``_keep_declared_value_infos``); an outer initializer gs copies into every
  subgraph that reads it goes back to the graph that owned it;
* every node: doc string, metadata_props, overload, attribute doc strings and order, the removed
  attributes; the dummy ``t`` gs writes into TENSOR attribute references and the empty ``name`` it writes
  into the tensors of Constant nodes are cleared;
* local functions: overload, doc string, value_info (of names still used), metadata_props, removed default
  attributes, and their nodes as above.

Matching: a node is found in the original by its name when that name is unique in its graph, else by its
first output; it gets nothing back when no original node matches or when its op (domain and op_type)
changed, and the subgraphs of a node are restored only through a matched node (so an unnamed If whose
output a pass renamed keeps gs's export of its branches: still a correct model, but without the items above).
A ValueInfo is restored only where the exported type is the one gs makes of the original type, so a type a
pass changed stays; the model's inputs and outputs are its interface, which passes keep, so there a type
that says less (no type, or no shape) is also replaced by the declared one. Nothing a pass removed comes
back: nodes, initializers (unused ones are dropped), initializer inputs, functions. Not restored:
initializer order, and sparse initializers gs copies into subgraphs (they stay there, which is correct).
"""

from __future__ import annotations

import collections
import contextlib
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx import AttributeProto
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from graphopt.rewrite import all_graphs

_LIST_FIELDS = {AttributeProto.INTS: "ints", AttributeProto.FLOATS: "floats", AttributeProto.STRINGS: "strings"}
_SCALAR_TYPES_GS_HOLDS = frozenset({AttributeProto.FLOAT, AttributeProto.INT, AttributeProto.STRING,
                                    AttributeProto.TENSOR, AttributeProto.GRAPH})
_MODEL_FIELDS = ("producer_name", "producer_version", "domain", "model_version", "doc_string")


# ---------------------------------------------------------------------------------------------------------
# Import


def import_graph(model: onnx.ModelProto, weights: Sequence[onnx.TensorProto] | None = None) -> gs.Graph:
    """``model``'s graph as a gs.Graph, imported from a sanitized copy without weights (``model`` is left
    untouched). The graph's constants read the main graph's initializer TensorProtos, which are not copied:
    ``weights[i]`` for initializer i when given (a model whose initializers are value-less stand-ins, see
    ``graphopt.model.SplitModel``), else ``model``'s own. Keep them unchanged while the graph is in use."""
    sanitized, weights = _copy_without_weights(model, weights)
    _strip_graph_for_gs(sanitized.graph)
    for function in sanitized.functions:
        _strip_nodes_for_gs(function.node)
        _remove_attributes_gs_cannot_hold(function.attribute_proto)
    graph = gs.import_onnx(sanitized)
    _read_weights_from(graph, weights)
    _keep_initializer_inputs(graph, model.graph)
    return graph


# The fields of a TensorProto that hold its values; the others (name, type, dims, ...) describe it.
_VALUE_FIELDS = frozenset({"raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                           "uint64_data"})


def _copy_without_weights(model: onnx.ModelProto,
                          weights: Sequence[onnx.TensorProto] | None) -> tuple[onnx.ModelProto, dict[int, tuple]]:
    """A copy of ``model`` whose main-graph initializers have no values, and for each of those stand-ins (by
    ``id``) the pair (stand-in, the TensorProto that holds its values: ``weights[i]``, or else the model's own
    initializer). Copied field by field: ``CopyFrom`` would copy the weights too (upb copies deeply and has no
    way to copy a message while leaving some fields out); initializers that are stand-ins already (``weights``
    given) are copied whole."""
    copy = onnx.ModelProto()
    copy_fields_except(copy, model, skip={"graph"})
    copy.graph.SetInParent()
    copy_fields_except(copy.graph, model.graph, skip={"initializer"})
    if weights is None:
        weights = model.graph.initializer
        for initializer in weights:
            copy_without_values(copy.graph.initializer.add(), initializer)
    else:
        copy.graph.initializer.extend(model.graph.initializer)
    # the stand-ins are kept alive in the pairs, so their ids stay their own
    pairs = {id(stand_in): (stand_in, weight) for stand_in, weight in zip(copy.graph.initializer, weights, strict=True)}
    return copy, pairs


def copy_without_values(target: onnx.TensorProto, source: onnx.TensorProto) -> None:
    """Copy what describes ``source`` (name, element type, dims, ...) into ``target``, but not its values."""
    copy_fields_except(target, source, skip=_VALUE_FIELDS)


def copy_fields_except(target, source, skip) -> None:
    """Copy every field ``source`` has set, except those named in ``skip`` (whose values are never read).
    Unknown fields are not copied."""
    for field in source.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        if field.is_repeated:
            values = getattr(source, field.name)
            if len(values):
                getattr(target, field.name).extend(values)
        elif source.HasField(field.name):
            if field.message_type is not None:
                getattr(target, field.name).CopyFrom(getattr(source, field.name))
            else:
                setattr(target, field.name, getattr(source, field.name))


def _read_weights_from(graph: gs.Graph, weights: dict[int, tuple]) -> None:
    """Point the constants gs imported from value-less stand-ins at the original TensorProtos."""
    for tensor in _every_tensor(graph):
        if isinstance(tensor, gs.Constant) and isinstance(tensor._values, LazyValues):
            pair = weights.get(id(tensor._values.tensor))
            if pair is not None and pair[0] is tensor._values.tensor:
                tensor._values = LazyValues(pair[1])


def _gs_holds(attribute: onnx.AttributeProto) -> bool:
    """True if gs imports and exports ``attribute`` without loss."""
    if attribute.ref_attr_name:
        return True
    if attribute.type in _LIST_FIELDS:
        values = getattr(attribute, _LIST_FIELDS[attribute.type])
        return bool(values) and (attribute.type != AttributeProto.STRINGS or all(map(_is_utf8, values)))
    if attribute.type == AttributeProto.STRING:
        return _is_utf8(attribute.s)
    return attribute.type in _SCALAR_TYPES_GS_HOLDS


def _gs_exports_type(type_proto: onnx.TypeProto) -> bool:
    """True if gs can export a value of this type: tensors, sparse tensors, sequences of tensors, no type."""
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        return type_proto.sequence_type.elem_type.WhichOneof("value") == "tensor_type"
    return kind in ("tensor_type", "sparse_tensor_type") or type_proto.ByteSize() == 0


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _strip_graph_for_gs(graph: onnx.GraphProto) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if not _gs_exports_type(value.type):
            value.ClearField("type")
    _strip_nodes_for_gs(graph.node)


def _strip_nodes_for_gs(nodes: Iterable[onnx.NodeProto]) -> None:
    for node in nodes:
        _remove_attributes_gs_cannot_hold(node.attribute)
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                _strip_graph_for_gs(attribute.g)


def _remove_attributes_gs_cannot_hold(attributes) -> None:
    for index in reversed(range(len(attributes))):
        if not _gs_holds(attributes[index]):
            del attributes[index]


def _keep_initializer_inputs(graph: gs.Graph, original: onnx.GraphProto) -> None:
    """Put initializers that the original also lists as graph inputs back among the inputs, in order. One
    that nothing uses is not in the gs graph and stays dropped: it feeds nothing."""
    initializers = {initializer.name for initializer in original.initializer}
    if not any(value.name in initializers for value in original.input):
        return
    tensors = graph.tensors()
    graph.inputs = [tensors[value.name] for value in original.input if value.name in tensors]


# ---------------------------------------------------------------------------------------------------------
# Export


def export_model(graph: gs.Graph, original: onnx.ModelProto, *, release: bool = False) -> onnx.ModelProto:
    """Export ``graph`` with gs and restore from ``original`` what gs does not carry (see the module docstring).
    ``release``: see ``export_with_gs``."""
    model = export_with_gs(graph, release=release)
    _restore_graph(model.graph, original.graph, outer_owners=None)
    _restore_functions(model, original)
    _restore_model_fields(model, original)
    return model


def export_with_gs(graph: gs.Graph, *, values_up_to: int | None = None, release: bool = False) -> onnx.ModelProto:
    """``gs.export_onnx`` without type checks, safe for graphs whose constants a pass has read (see the
    module docstring); nothing is restored. For analyses that need the graph as a ModelProto.

    ``values_up_to``: main-graph initializers with more elements than this are written with their name,
    element type and dims only (for shape inference, which needs no more). ``release``: every dense constant is
    left reading its exported TensorProto instead, so that its numpy array, or the TensorProto it read, can be
    freed as soon as it is written (for the last export of a graph: the graph then shares memory with the
    returned model).
    """
    with _encoded_for_gs(graph) as placeholders:
        model = gs.export_onnx(graph, do_type_check=False)
    _fill_placeholders(model, placeholders, values_up_to, release)
    return model


@contextlib.contextmanager
def _encoded_for_gs(graph: gs.Graph) -> Iterator[_Placeholders]:
    """While gs exports: dense constants hold value-less placeholder TensorProtos, and variables typed with
    numpy dtypes hold their ONNX element type (see the module docstring). Undone afterwards.

    gs keeps a constant's values in the private ``_values`` (and a requested conversion in
    ``_export_dtype``: gs encodes those itself, as before); reading them through ``values`` would load every
    still-lazy weight.
    """
    placeholders = _Placeholders()
    undo: list[tuple[gs.Tensor, str, object]] = []
    try:
        for tensor in _every_tensor(graph):
            if isinstance(tensor, gs.Constant):
                values = tensor._values  # sparse constants (SparseValues) are left to gs, which copies them
                dense = isinstance(values, LazyValues) and not isinstance(values, SparseValues)
                if dense or (isinstance(values, np.ndarray) and tensor._export_dtype is None):
                    undo.append((tensor, "_values", values))
                    tensor._values = LazyValues(placeholders.add(tensor, values))
            elif isinstance(tensor.dtype, np.dtype):
                element_type = _onnx_element_type(tensor.dtype)
                if element_type is not None:
                    undo.append((tensor, "dtype", tensor.dtype))
                    tensor.dtype = element_type
        yield placeholders
    finally:
        for tensor, field, value in reversed(undo):
            setattr(tensor, field, value)


class _Placeholders:
    """Value-less TensorProtos handed to gs in place of constants' values, each marked in its ``doc_string``
    (gs copies the TensorProtos it gets as they are, and sets only their ``name``). The mark carries a random
    token, so no tensor of the model can be taken for a placeholder."""

    def __init__(self) -> None:
        self.mark = f"graphopt placeholder {uuid.uuid4().hex} "
        self.sources: list[list] = []  # [constant, TensorProto or numpy array]

    def add(self, constant: gs.Constant, values: LazyValues | np.ndarray) -> onnx.TensorProto:
        placeholder = onnx.TensorProto()
        if isinstance(values, LazyValues):
            source = values.tensor
            placeholder.data_type = source.data_type
            placeholder.dims.extend(source.dims)
        else:
            source = values
            placeholder.data_type = _array_element_type(values)
            placeholder.dims.extend(values.shape)
        placeholder.doc_string = f"{self.mark}{len(self.sources)}"
        self.sources.append([constant, source])
        return placeholder

    def index(self, tensor: onnx.TensorProto) -> int | None:
        """The placeholder number ``tensor`` is marked with, or None for any other tensor."""
        if tensor.HasField("doc_string") and tensor.doc_string.startswith(self.mark):
            return int(tensor.doc_string[len(self.mark):])
        return None


def _array_element_type(array: np.ndarray) -> int:
    """The element type ``onnx.numpy_helper.from_array`` writes ``array`` with."""
    if array.dtype == object or np.issubdtype(array.dtype, np.str_):
        return onnx.TensorProto.STRING
    return onnx.helper.np_dtype_to_tensor_dtype(array.dtype)


def _fill_placeholders(model: onnx.ModelProto, placeholders: _Placeholders, values_up_to: int | None,
                       release: bool) -> None:
    """Give every placeholder in ``model`` its constant's values (see ``export_with_gs``): what gs writes when
    handed the constant's TensorProto, or the array encoded by ``onnx.numpy_helper``, under gs's name."""
    if values_up_to is not None:
        for tensor in model.graph.initializer:
            if math.prod(tensor.dims) > values_up_to:
                _keep_only_type_and_dims(tensor)
    if not placeholders.sources:
        return
    for tensor in _tensor_protos(model):
        index = placeholders.index(tensor)
        if index is None:
            continue
        constant, source = placeholders.sources[index]
        name = tensor.name
        tensor.CopyFrom(source if isinstance(source, onnx.TensorProto)
                        else onnx.numpy_helper.from_array(source, constant.name))
        tensor.name = name
        if release:
            constant._values = LazyValues(tensor)
            placeholders.sources[index][1] = tensor  # the values are no longer referenced from here either


def _keep_only_type_and_dims(tensor: onnx.TensorProto) -> None:
    """Keep a tensor's name, element type and dims, and drop everything else (its values, or its mark)."""
    dims, data_type, name = list(tensor.dims), tensor.data_type, tensor.name
    tensor.Clear()
    tensor.name, tensor.data_type = name, data_type
    tensor.dims.extend(dims)


def _tensor_protos(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every dense TensorProto in ``model``: initializers and tensor attributes, in subgraphs and functions."""
    def in_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        yield from in_nodes(graph.node)

    def in_attributes(attributes) -> Iterator[onnx.TensorProto]:
        for attribute in attributes:
            if attribute.type == AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == AttributeProto.TENSORS:
                yield from attribute.tensors
            elif attribute.type == AttributeProto.GRAPH:
                yield from in_graph(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for graph in attribute.graphs:
                    yield from in_graph(graph)

    def in_nodes(nodes) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            yield from in_attributes(node.attribute)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)
        yield from in_attributes(function.attribute_proto)


def _every_tensor(graph: gs.Graph) -> Iterator[gs.Tensor]:
    """Each tensor of the graph, its subgraphs and functions once, including constants in node attributes."""
    seen: set[int] = set()
    for scope in (graph, *graph.functions):
        for subgraph in all_graphs(scope):
            values = [v for node in subgraph.nodes for v in node.attrs.values() if isinstance(v, gs.Constant)]
            for tensor in [*subgraph.tensors().values(), *values]:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield tensor


def _onnx_element_type(dtype: np.dtype) -> int | None:
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(dtype)
    except (KeyError, TypeError, ValueError):  # a dtype onnx has no element type for: gs gets it unchanged
        return None


# ---------------------------------------------------------------------------------------------------------
# Restoring graphs


def _restore_graph(graph: onnx.GraphProto, original: onnx.GraphProto,
                   outer_owners: dict[str, onnx.GraphProto] | None) -> None:
    """Restore ``graph`` from ``original``. ``outer_owners`` maps the initializers of enclosing graphs to the
    (exported) graph that owns them; it is None for the model's main graph."""
    del graph.metadata_props[:]
    graph.metadata_props.extend(original.metadata_props)
    _restore_quantization_annotations(graph, original)
    _restore_value_infos(graph, original, interface=outer_owners is None)
    _keep_declared_value_infos(graph, original)
    if outer_owners is not None:
        _return_hoisted_initializers(graph, original, outer_owners)
    owners = dict(outer_owners or {})
    owners.update((initializer.name, graph) for initializer in original.initializer)
    # values this graph's nodes produced may have become constants (folding): gs copies those into every
    # subgraph that reads them, so they are returned here too
    owners.update((name, graph) for node in original.node for name in node.output if name)
    _restore_nodes(graph.node, original.node, owners)


def _restore_quantization_annotations(graph: onnx.GraphProto, original: onnx.GraphProto) -> None:
    if graph.quantization_annotation or not original.quantization_annotation:
        return
    present = _names_in(graph)
    graph.quantization_annotation.extend(a for a in original.quantization_annotation if a.tensor_name in present)


def _names_in(graph: onnx.GraphProto) -> set[str]:
    names = {name for node in graph.node for name in (*node.input, *node.output)}
    names.update(value.name for value in (*graph.input, *graph.output))
    names.update(initializer.name for initializer in graph.initializer)
    return names


def _restore_value_infos(graph: onnx.GraphProto, original: onnx.GraphProto, interface: bool) -> None:
    """Original ValueInfos where gs's type still says what the original said (with ``interface``, also
    where the graph's inputs and outputs say less); and the value_info of intermediates whose type gs could
    not hold (gs wrote none for them)."""
    declared = {value.name: value for value in (*original.value_info, *original.input, *original.output)}
    for value in (*graph.input, *graph.output):
        source = declared.get(value.name)
        if source is not None and (_is_gs_export_of(value.type, source.type)
                                   or interface and _says_less(value.type, source.type)):
            value.CopyFrom(source)
    for value in graph.value_info:
        source = declared.get(value.name)
        if source is not None and _is_gs_export_of(value.type, source.type):
            value.CopyFrom(source)
    listed = {value.name for value in (*graph.input, *graph.output, *graph.value_info)}
    produced = {name for node in graph.node for name in node.output}
    graph.value_info.extend(value for value in original.value_info
                            if value.name in produced and value.name not in listed
                            and not _gs_exports_type(value.type))


def _is_gs_export_of(exported: onnx.TypeProto, original: onnx.TypeProto) -> bool:
    """True if ``exported`` is what gs makes of ``original``: gs drops denotations, the shapes of sequence
    elements and sparse tensors, and the types it cannot export; anything else means a pass changed it."""
    kind = exported.WhichOneof("value")
    if kind is None:
        return not _gs_exports_type(original) or original.WhichOneof("value") is None
    if kind != original.WhichOneof("value"):
        return False
    if kind == "sequence_type":
        return _is_gs_tensor_export(exported.sequence_type.elem_type.tensor_type,
                                    original.sequence_type.elem_type.tensor_type, gs_keeps_shape=False)
    if kind in ("tensor_type", "sparse_tensor_type"):
        return _is_gs_tensor_export(getattr(exported, kind), getattr(original, kind),
                                    gs_keeps_shape=kind == "tensor_type")
    return False


def _says_less(exported: onnx.TypeProto, original: onnx.TypeProto) -> bool:
    """True if ``exported`` has no type, or is a tensor of the original element type without a shape."""
    kind = exported.WhichOneof("value")
    if kind is None:
        return True
    return (kind == "tensor_type" and original.WhichOneof("value") == kind
            and exported.tensor_type.elem_type == original.tensor_type.elem_type
            and not exported.tensor_type.HasField("shape"))


def _is_gs_tensor_export(exported, original, gs_keeps_shape: bool) -> bool:
    if exported.elem_type != original.elem_type:
        return False
    if not exported.HasField("shape"):
        return not (gs_keeps_shape and original.HasField("shape"))
    return original.HasField("shape") and _dims(exported.shape) == _dims(original.shape)


def _dims(shape: onnx.TensorShapeProto) -> list[int | str | None]:
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param if dim.HasField("dim_param") else None
            for dim in shape.dim]


def _keep_declared_value_infos(graph: onnx.GraphProto, original: onnx.GraphProto) -> None:
    """Keep the value_info of the names the original graph declared and drop what gs adds: the shapes the
    passes inferred (and, in a subgraph, an entry for every outer-scope tensor it reads). Inferred shapes are
    for the passes, not for the output, where they only add bytes and change what a runtime's own inference
    finds: given BERT-base's, onnxruntime 1.32 fuses its Add + LayerNormalization pairs into
    SkipLayerNormalization, whose CPU kernel is 6.8x slower than the two ops ([1, 128, 768]: 614 against
    91 us), and the model 3% slower than the original."""
    declared = {value.name for value in original.value_info}
    kept = [value for value in graph.value_info if value.name in declared]
    if len(kept) != len(graph.value_info):
        _replace(graph.value_info, kept)


def _return_hoisted_initializers(graph: onnx.GraphProto, original: onnx.GraphProto,
                                 outer_owners: dict[str, onnx.GraphProto]) -> None:
    """gs copies an outer initializer into every subgraph that reads it: move it back to its owner."""
    own = {initializer.name for initializer in original.initializer}
    hoisted = [i for i in graph.initializer if i.name in outer_owners and i.name not in own]
    if not hoisted:
        return
    by_owner: dict[int, list[onnx.TensorProto]] = collections.defaultdict(list)
    for initializer in hoisted:
        by_owner[id(outer_owners[initializer.name])].append(initializer)
    for initializers in by_owner.values():
        owner = outer_owners[initializers[0].name]
        present = {initializer.name for initializer in owner.initializer}
        owner.initializer.extend(i for i in initializers if i.name not in present)
    moved = {initializer.name for initializer in hoisted}
    _replace(graph.initializer, [i for i in graph.initializer if i.name not in moved])


def _replace(field, items: list) -> None:
    """Replace the contents of a repeated message field (the items are copied before the field is cleared)."""
    copies = [type(item)() for item in items]
    for copy, item in zip(copies, items, strict=True):
        copy.CopyFrom(item)
    del field[:]
    field.extend(copies)


# ---------------------------------------------------------------------------------------------------------
# Restoring nodes


def _restore_nodes(nodes, original_nodes, owners: dict[str, onnx.GraphProto]) -> None:
    for node, source in _matched_nodes(nodes, original_nodes):
        _restore_node(node, source)
        subgraphs = {a.name: a.g for a in source.attribute if a.type == AttributeProto.GRAPH}
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH and attribute.name in subgraphs:
                _restore_graph(attribute.g, subgraphs[attribute.name], owners)


def _matched_nodes(nodes, original_nodes) -> Iterator[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """Pairs (node, its original): matched by unique name, else first output, and only with the same op."""
    index = _node_index(original_nodes)
    unique_names = _unique_names(nodes)
    for node in nodes:
        for key in _node_keys(node, unique_names):
            source = index.get(key)
            if source is not None and _op(source) == _op(node):
                yield node, source
                break


def _node_index(nodes) -> dict[tuple[str, str], onnx.NodeProto]:
    unique_names = _unique_names(nodes)
    index: dict[tuple[str, str], onnx.NodeProto] = {}
    for node in nodes:
        for key in _node_keys(node, unique_names):
            index.setdefault(key, node)
    return index


def _unique_names(nodes) -> set[str]:
    counts = collections.Counter(node.name for node in nodes if node.name)
    return {name for name, count in counts.items() if count == 1}


def _node_keys(node: onnx.NodeProto, unique_names: set[str]) -> list[tuple[str, str]]:
    keys = [("name", node.name)] if node.name in unique_names else []
    first_output = next((name for name in node.output if name), None)
    if first_output is not None:
        keys.append(("output", first_output))
    return keys


def _op(node: onnx.NodeProto) -> tuple[str, str]:
    return _domain(node.domain), node.op_type


def _restore_node(node: onnx.NodeProto, source: onnx.NodeProto) -> None:
    if source.HasField("doc_string"):
        node.doc_string = source.doc_string
    if source.HasField("overload"):
        node.overload = source.overload
    del node.metadata_props[:]
    node.metadata_props.extend(source.metadata_props)
    originals = {attribute.name: attribute for attribute in source.attribute}
    for attribute in node.attribute:
        if attribute.name in originals:
            _restore_attribute(attribute, originals[attribute.name])
    present = {attribute.name for attribute in node.attribute}
    node.attribute.extend(a for a in source.attribute if a.name not in present and not _gs_holds(a))
    _order_like(node.attribute, [attribute.name for attribute in source.attribute])


def _restore_attribute(attribute: onnx.AttributeProto, source: onnx.AttributeProto) -> None:
    if source.HasField("doc_string"):
        attribute.doc_string = source.doc_string
    if attribute.type != AttributeProto.TENSOR or source.type != AttributeProto.TENSOR:
        return
    if attribute.ref_attr_name and not source.HasField("t"):
        attribute.ClearField("t")  # gs writes a dummy tensor into a reference to a TENSOR attribute
    elif attribute.t.HasField("name") and not attribute.t.name and not source.t.HasField("name"):
        attribute.t.ClearField("name")  # gs writes name="" into the tensor of a Constant node


def _order_like(attributes, order: list[str]) -> None:
    """Sort ``attributes`` in the original order; attributes the original did not have go last."""
    rank = {name: index for index, name in enumerate(order)}
    ordered = sorted(attributes, key=lambda attribute: rank.get(attribute.name, len(rank)))
    if [a.name for a in ordered] != [a.name for a in attributes]:
        _replace(attributes, ordered)


# ---------------------------------------------------------------------------------------------------------
# Restoring functions and the model


def _restore_functions(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Functions are matched by domain and name (and, for overloads, by their order among namesakes)."""
    namesakes: dict[tuple[str, str], list[onnx.FunctionProto]] = collections.defaultdict(list)
    for function in original.functions:
        namesakes[(function.domain, function.name)].append(function)
    for function in model.functions:
        candidates = namesakes.get((function.domain, function.name))
        if candidates:
            _restore_function(function, candidates.pop(0))


def _restore_function(function: onnx.FunctionProto, source: onnx.FunctionProto) -> None:
    _copy_fields(function, source, ("overload", "doc_string"))
    del function.metadata_props[:]
    function.metadata_props.extend(source.metadata_props)
    used = {name for node in function.node for name in node.output}
    used.update((*function.input, *function.output))
    declared = {value.name for value in function.value_info}
    function.value_info.extend(v for v in source.value_info if v.name in used and v.name not in declared)
    present = {attribute.name for attribute in function.attribute_proto}
    function.attribute_proto.extend(a for a in source.attribute_proto
                                    if a.name not in present and not _gs_holds(a))
    _restore_nodes(function.node, source.node, owners={})


def _restore_model_fields(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    _copy_fields(model, original, _MODEL_FIELDS)
    model.ir_version = original.ir_version
    if model.ir_version < 4 and _has_initializer_outside_inputs(model.graph):
        model.ir_version = 4  # IR < 4 requires every initializer to be a graph input
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    del model.training_info[:]
    model.training_info.extend(original.training_info)
    _restore_opsets(model, original)


def _copy_fields(target, source, fields: Iterable[str]) -> None:
    """Copy scalar fields with their presence: a field the source does not set is cleared."""
    for field in fields:
        if source.HasField(field):
            setattr(target, field, getattr(source, field))
        else:
            target.ClearField(field)


def _has_initializer_outside_inputs(graph: onnx.GraphProto) -> bool:
    inputs = {value.name for value in graph.input}
    return any(initializer.name not in inputs for initializer in graph.initializer)


def _restore_opsets(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """The original opset imports, plus any domain gs added because a node now uses it."""
    exported = [(opset.domain, opset.version) for opset in model.opset_import]
    kept = {_domain(opset.domain) for opset in original.opset_import}
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    for domain, version in exported:
        if _domain(domain) not in kept:
            model.opset_import.append(onnx.helper.make_opsetid(domain, version))
            kept.add(_domain(domain))


def _domain(domain: str) -> str:
    """The canonical spelling of an operator domain: "ai.onnx" is the default domain ""."""
    return "" if domain == "ai.onnx" else domain
