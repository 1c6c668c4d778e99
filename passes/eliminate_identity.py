"""eliminate-identity: remove Identity nodes, and Dropout nodes that are identities in inference.

Algebra: ``Identity(x) = x``; in inference, ``Dropout(x, ratio, training_mode=false) = x`` (its optional
``mask`` output is then all true). Every consumer of the output reads ``x`` instead. A graph output keeps
its name: the tensor feeding the removed node is renamed to it.

Declines (counted as ``skipped.<reason>``): the output is a graph output fed directly by a graph input or
a constant (removing the node would rename the graph's interface); Dropout whose ``mask`` output is used,
or whose ``training_mode`` input is not the constant false.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.pass_base import Invariant, Pass, PassContext, PassResult
from graphopt.rewrite import all_graphs, bypass, is_standard_op


class EliminateIdentity(Pass):
    name = "eliminate-identity"
    summary = "remove Identity nodes, and Dropout nodes in inference"
    requires = frozenset({Invariant.INFERENCE_MODE})
    preserves = frozenset({Invariant.TOPOLOGICALLY_SORTED, Invariant.SHAPES_INFERRED, Invariant.INFERENCE_MODE})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: collections.Counter[str] = collections.Counter()
        for subgraph in list(all_graphs(graph)):
            for node in [n for n in subgraph.nodes if is_standard_op(n, "Identity", "Dropout")]:
                reason = _why_not_identity(node, subgraph) or bypass(subgraph, node, node.inputs[0], node.outputs[0])
                stats[f"skipped.{reason}" if reason else f"removed.{node.op.lower()}"] += 1
        changed = any(key.startswith("removed.") for key in stats)
        return PassResult(changed, stats)


def _why_not_identity(node: gs.Node, graph: gs.Graph) -> str | None:
    if node.op == "Identity":
        return None
    mask = node.outputs[1] if len(node.outputs) > 1 else None
    if mask is not None and (mask.outputs or mask in graph.outputs):
        return "dropout_mask_used"
    if len(node.inputs) > 2 and node.inputs[2].name:
        training_mode = node.inputs[2]
        if not isinstance(training_mode, gs.Constant) or bool(np.asarray(training_mode.values).any()):
            return "dropout_training_mode"
    return None
