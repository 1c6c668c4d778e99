"""fuse-reshapes: collapse a chain of shape-only ops ending in a Reshape into that Reshape.

Algebra. Reshape, Flatten, Squeeze and Unsqueeze keep the elements of their input in order and change only
the shape; so does a chain of them. A Reshape's result depends on its input only through the elements and
their number, except where its shape holds a ``0`` that copies a dimension of its input (``allowzero=0``,
the default, and the only meaning before opset 14). Hence, for a shape ``s`` without such a ``0``,
    Reshape(f(x), s) = Reshape(x, s)        for f any chain of Reshape/Flatten/Squeeze/Unsqueeze,
``-1`` included (it is inferred from the element count, which f keeps). A copying ``0`` at position i is
resolved from the statically known dimension i of the Reshape's input (the chain's output) and written as a
number, in a new shape constant. With ``allowzero=1`` a ``0`` is a literal zero and needs no resolution.
The rewrite only moves data: outputs are bitwise equal.

Rule ``reshape_chain`` (stats ``rewrites.reshape_chain`` / ``skipped.reshape_chain.<reason>``). A match is a
Reshape and the shape-only ops before it: the one right before it always, earlier ones while their output
has no other consumer. The Reshape is kept (reading the chain's input), so the driver matches it again with
a later Reshape in the same sweep and a whole chain collapses in one run. Limitation: the rule sees no graph
when matching, so an earlier op whose output is a graph output (and has no other consumer) is taken into the
match, which the driver then refuses (``intermediate_is_graph_output``) instead of matching the shorter chain.

Declines: ``shape_not_constant`` (the shape is neither an initializer nor a Constant node's output);
``copy_dimension_unresolved`` (a copying ``0`` whose dimension is not a known positive number); and what the
fusion driver refuses for every rule (``intermediate_is_graph_output``, ``intermediate_has_other_consumers``).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.fusion import FusionPass, FusionRule, Match, producer
from graphopt.rewrite import NameAllocator, constant_value, is_standard_op, remove_node

_SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _shape_values(reshape: gs.Node) -> np.ndarray | None:
    """The target shape as int64 values (input 1 from opset 5; attribute ``shape`` before), or None when it
    is not constant."""
    if "shape" in reshape.attrs:
        return np.asarray(reshape.attrs["shape"], np.int64)
    shape = constant_value(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    return None if shape is None else shape.astype(np.int64).reshape(-1)


def resolved_shape(reshape: gs.Node) -> np.ndarray | str:
    """The Reshape's target shape with copying zeros replaced by the input's static dimensions, or the
    reason it cannot be."""
    shape = _shape_values(reshape)
    if shape is None:
        return "shape_not_constant"
    if reshape.attrs.get("allowzero", 0) or not (shape == 0).any():
        return shape
    input_shape = reshape.inputs[0].shape
    resolved = shape.copy()
    for axis in np.flatnonzero(shape == 0):
        dim = input_shape[axis] if input_shape is not None and axis < len(input_shape) else None
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            return "copy_dimension_unresolved"
        resolved[axis] = dim
    return resolved


class ReshapeChainRule(FusionRule):
    name = "reshape_chain"
    pattern = ("Reshape|Flatten|Squeeze|Unsqueeze", "Reshape")

    def match(self, node: gs.Node) -> Match | None:
        if not is_standard_op(node, "Reshape"):
            return None
        chain = [node]
        while True:
            data = chain[0].inputs[0] if chain[0].inputs else None
            previous = producer(data, *_SHAPE_ONLY)
            if previous is None or previous.outputs[0] is not data:
                break
            if len(chain) > 1 and len(data.outputs) != 1:
                break
            chain.insert(0, previous)
        return Match(chain) if len(chain) > 1 else None

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        shape = resolved_shape(match.last)
        return shape if isinstance(shape, str) else None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        last = match.last
        shape = resolved_shape(last)
        if not np.array_equal(shape, _shape_values(last)):
            if "shape" in last.attrs:
                last.attrs["shape"] = [int(d) for d in shape]
            else:
                last.inputs[1] = gs.Constant(names.fresh(f"{last.inputs[1].name}_resolved"), shape)
        last.inputs[0] = match.nodes[0].inputs[0]
        for node in match.nodes[:-1]:
            remove_node(graph, node)


class FuseReshapes(FusionPass):
    name = "fuse-reshapes"
    summary = "collapse chains of Reshape/Flatten/Squeeze/Unsqueeze ending in a Reshape into that Reshape"
    rules = (ReshapeChainRule(),)
