"""Graph-editing primitives that passes share: walking subgraphs, bypassing a node whose output equals one
of its inputs, reading constants. Each keeps the graph's interface (input and output names) intact.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues


def all_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """``graph`` and every subgraph nested in its nodes' attributes (If branches, Loop and Scan bodies),
    outermost first."""
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from all_graphs(value)


class NameAllocator:
    """Fresh tensor and node names that collide with no name in the (top-level) graph, its subgraphs, nor
    each other. Takes one snapshot of the names in use; cheap per name after that."""

    def __init__(self, graph: gs.Graph):
        self.used = {t.name for g in all_graphs(graph) for t in g.tensors().values()}
        self.used |= {n.name for g in all_graphs(graph) for n in g.nodes if n.name}

    def fresh(self, base: str) -> str:
        name, suffix = base, 0
        while name in self.used:
            suffix += 1
            name = f"{base}_{suffix}"
        self.used.add(name)
        return name


def is_standard_op(node: gs.Node, *op_types: str) -> bool:
    """True if ``node`` is one of ``op_types`` in the default ONNX domain (gs leaves an unset domain None)."""
    return node.op in op_types and node.domain in (None, "", "ai.onnx")


def bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor, result: gs.Variable) -> str | None:
    """Remove ``node`` whose output ``result`` equals its input ``source``: consumers of ``result`` read
    ``source`` instead. Returns None on success, or the reason it was declined.

    When ``result`` is an output of ``graph`` its name must survive: ``source`` is renamed to it, which is
    only possible when ``source`` is an ordinary intermediate (produced by a node of this graph, not itself
    a graph input or output, not a constant).
    """
    if result in graph.outputs:
        if isinstance(source, gs.Constant) or not source.inputs or source in graph.inputs:
            return "graph_output_from_input_or_constant"
        if source in graph.outputs:
            return "graph_output_is_also_input_of_node"
        if source.inputs[0] not in graph.nodes:
            return "source_from_outer_scope"
    for consumer in list(result.outputs):
        for index, tensor in enumerate(consumer.inputs):
            if tensor is result:
                consumer.inputs[index] = source
    if result in graph.outputs:
        name = result.name
        graph.outputs[graph.outputs.index(result)] = source
        source.name = name
        source.dtype = result.dtype or source.dtype
        source.shape = result.shape if result.shape is not None else source.shape
    remove_node(graph, node)
    return None


def remove_node(graph: gs.Graph, node: gs.Node) -> None:
    """Disconnect ``node`` and take it out of ``graph``. By identity: gs compares nodes by value, so
    ``graph.nodes.remove`` could take out a different node that looks the same."""
    node.inputs.clear()
    node.outputs.clear()
    index = next(i for i, candidate in enumerate(graph.nodes) if candidate is node)
    del graph.nodes[index]


def replace_nodes(graph: gs.Graph, nodes: list[gs.Node], replacement: gs.Node) -> None:
    """Put ``replacement`` where the last of ``nodes`` was and take ``nodes`` out (by identity)."""
    members = {id(node) for node in nodes}
    position = next(i for i, node in enumerate(graph.nodes) if node is nodes[-1])
    for node in nodes:
        node.inputs.clear()
        node.outputs.clear()
    kept = [node for node in graph.nodes[:position] if id(node) not in members]
    graph.nodes[:] = kept + [replacement] + [node for node in graph.nodes[position:] if id(node) not in members]


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None for anything computed."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = tensor.inputs[0] if tensor is not None and len(tensor.inputs) == 1 else None
    if node is None or not is_standard_op(node, "Constant"):
        return None
    if isinstance(node.attrs.get("value"), gs.Constant):
        return np.asarray(node.attrs["value"].values)
    for attribute, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                             ("value_int", np.int64), ("value_ints", np.int64)):
        if attribute in node.attrs:
            return np.asarray(node.attrs[attribute], dtype)
    return None


def release_values(constant: gs.Constant) -> None:
    """Give a constant that nothing reads any more a stand-in for its values: the same element type and shape,
    no values (reading them raises). gs's tensors live on in reference cycles until a full garbage collection,
    so a weight that a rewrite replaced would otherwise stay in memory with its constant until then. Sparse and
    string values are left to the collector."""
    values = constant._values
    if type(values) is LazyValues:  # dense, read from a TensorProto
        data_type = values.tensor.data_type
    elif isinstance(values, np.ndarray) and values.dtype.kind in "biufc":
        data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    else:
        return
    constant._values = LazyValues(onnx.TensorProto(name=constant.name, data_type=data_type, dims=constant.shape))


def constant_array(tensor: gs.Constant) -> np.ndarray:
    """The constant's values, decoded without caching them in the gs tensor; treat the array as read-only.

    ``tensor.values`` keeps what it decodes for as long as the tensor lives, and a constant a rewrite replaced
    lives on in gs's reference cycles until a full garbage collection: reading weights through ``values``
    would hold a decoded copy of each weight it replaced. Plain tensors are read straight from their
    ``raw_data`` (``plain_raw_data``): one copy of the bytes, where gs's decoder makes two.
    """
    values = tensor._values  # gs's private field: reading ``values`` would cache the decoded array
    if not isinstance(values, LazyValues):
        return np.asarray(values)
    plain = plain_raw_data(values.tensor) if type(values) is LazyValues else None  # not SparseValues
    if plain is None:
        return values.load()
    dtype, shape, raw = plain
    return np.frombuffer(raw, dtype).reshape(shape)


# Element types whose raw_data, read as the numpy dtype onnx maps them to, is what ``to_array`` decodes.
_PLAIN_ELEMENT_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16,
    onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.BOOL,
    onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
    onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128,
})


def plain_raw_data(proto: onnx.TensorProto) -> tuple[np.dtype, tuple[int, ...], bytes] | None:
    """(dtype, shape, raw_data) of a tensor whose ``raw_data``, read as that dtype and shape, is exactly what
    ``onnx.numpy_helper.to_array`` decodes; None where decoding could give something else (other element
    types or encodings, external data, a size that does not match the dims, a big-endian machine)."""
    if sys.byteorder != "little" or proto.data_type not in _PLAIN_ELEMENT_TYPES or not proto.HasField("raw_data") \
            or proto.data_location == onnx.TensorProto.EXTERNAL:
        return None
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(proto.data_type))
    shape = tuple(int(d) for d in proto.dims)
    raw = proto.raw_data
    if len(raw) != math.prod(shape) * dtype.itemsize:
        return None
    return dtype, shape, raw
