"""Graph-editing primitives that passes share: walking subgraphs and bypassing a node whose output equals one
of its inputs. Each keeps the graph's interface (input and output names) intact.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs


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
