"""eliminate-dead-nodes: remove nodes whose outputs nobody uses, and weights listed as graph inputs.

A node is dead when none of its outputs is a graph output or (transitively) feeds one; removing it cannot
change any output. onnx-graphsurgeon's ``cleanup`` finds them (subgraphs included; local function bodies are
left as they are); graph inputs are never removed, since they are the model's signature.

Old models (IR version < 4) list every initializer as a graph input too, which makes onnxruntime treat the
weights as overridable inputs and keeps it from folding them. Such an input is removed (its initializer
stays) when the option ``initializer_inputs`` is on; the model's IR version then rises to 4. Unused
initializers and value_info need no pass: only tensors attached to nodes survive the gs import, so they
are dropped when the model is read.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt.pass_base import Invariant, Option, Pass, PassContext, PassResult
from graphopt.rewrite import all_graphs


class EliminateDeadNodes(Pass):
    name = "eliminate-dead-nodes"
    summary = "remove nodes whose outputs nobody uses, and initializers listed as graph inputs (IR < 4)"
    options = (Option("initializer_inputs", bool, True,
                      "remove initializers from the graph inputs of old (IR < 4) models"),)
    preserves = frozenset({Invariant.TOPOLOGICALLY_SORTED, Invariant.SHAPES_INFERRED, Invariant.INFERENCE_MODE})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: dict[str, int] = {}
        nodes_before = _count_nodes(graph)
        graph.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=True, remove_unused_graph_inputs=False,
                      recurse_functions=False)
        if nodes_before > _count_nodes(graph):
            stats["removed.nodes"] = nodes_before - _count_nodes(graph)
        if self.values["initializer_inputs"]:
            weights = [tensor for tensor in graph.inputs if isinstance(tensor, gs.Constant)]
            for tensor in weights:
                graph.inputs.remove(tensor)
            if weights:
                stats["removed.initializer_inputs"] = len(weights)
        return PassResult(bool(stats), stats)


def _count_nodes(graph: gs.Graph) -> int:
    return sum(len(g.nodes) for g in all_graphs(graph))
