"""fuse-reshapes: collapse a chain of shape-only ops ending in a Reshape into that Reshape, two Unsqueezes in a
row into one, and a Reshape's target computed from its own input's dimensions into a constant.

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

Rule ``unsqueeze_chain`` (stats ``rewrites.unsqueeze_chain`` / ``skipped.unsqueeze_chain.<reason>``).
``Unsqueeze(Unsqueeze(x, a1), a2) = Unsqueeze(x, a)``: both insert dimensions of size 1 and keep x's
dimensions in order, so only the positions of the inserted ones matter. In the output (rank r + |a1| + |a2|)
the second node's are a2 (normalized by that rank); the first node's, a1 (normalized by r + |a1|), are
positions among the dimensions the second node did not insert: a1's position p lands on the p-th output
position not in a2. So a = a2 | {the p-th position not in a2 : p in a1}, independent of the dimensions'
values. The second Unsqueeze is kept, reading x with the axes a (input 1 from opset 13, attribute
``axes`` before); a chain of several collapses in one run. Declines: ``axes_not_constant``;
``rank_unknown`` (a negative axis, and x's rank is not known); ``axes_out_of_range`` (a negative axis below
minus the rank: the model fails there); and the driver's two refusals above.

Rule ``reshape_own_dims`` (stats ``rewrites.reshape_own_dims`` / ``skipped.reshape_own_dims.<reason>``).
Exporters write ``x.view(x.size(0), x.size(1), 12, 64)`` on dynamic dimensions as ``Reshape(x, s)`` with
``s = Concat(Unsqueeze(Gather(Shape(x), 0), [0]), Unsqueeze(Gather(Shape(x), 1), [0]), [12], [64])``. With
``allowzero=0`` (the default, and the only meaning before opset 14) a 0 at position i of the target stands
for x's dimension i (``copy rule``); so every entry of s that is x's own dimension i at position i of s can
be written as 0: ``Reshape(x, s) = Reshape(x, s')`` with ``s' = [0, 0, 12, 64]``, a constant.
Proof. Reshape first resolves its target: each 0 becomes the input's dimension at that position, then a -1
becomes the element count divided by the product of the others; the output is x's elements in order, in the
resolved shape (or the node fails, if the resolved shape does not hold them). s' has s's length (each
piece gives as many entries as it holds when the model runs), and they differ only at positions i where
s[i] = d_i, x's dimension i (so i < rank(x): the entry is an element of Shape(x)), and s'[i] = 0. If
d_i > 0, s[i] resolves to d_i as a number and s'[i] to d_i by the copy rule; if d_i = 0, s[i] is itself a
0 and copies d_i = 0, as s'[i] does. Every other entry is the same in both, a 0 or a -1 included, so both
resolve to the same shape, and both nodes give the same output (or both fail). No entry of s' other than
these is new, so no 0 is created where s held a number that is not x's own dimension there.
With ``allowzero=1`` a 0 is the literal 0 and the rule does not apply.
The entries of s come from the pieces of its Concat (axis 0, in order): constants (initializers or Constant
nodes) keep their values; a piece that picks elements of ``Shape(x)`` (``Unsqueeze(Gather(Shape(x), k),
[0])``, ``Gather(Shape(x), ks)`` with 1-D ks, ``Slice(Shape(x), [a], [b])``:
``eliminate_no_op_nodes.picked_elements``) holds x's dimensions start + k (``Shape``'s ``start``, 0 by
default) for its indices k, which must be the positions it fills in s. A negative index counts from the end
of Shape(x), and a Slice's bounds are clamped to it: both need its length, x's rank. The Reshape is kept,
reading the new constant target (one per rewrite: deduplicate-initializers merges equal ones); the Concat
and what computes its pieces are left to clean-up, and are kept for their other consumers.

Matches a Reshape whose target is a Concat output with a piece that is not constant. Declines:
``allowzero``; ``other_tensor_dim`` (a piece picks from the Shape of another tensor, whatever its value:
that two tensors share a dimension is not known here); ``position_mismatch`` (x's dimension at another
position than its own); ``rank_unknown`` (a negative index, a Slice, or a negative ``start`` of Shape, and
the rank is not known, or rests on initializers that are also graph inputs: see eliminate-no-op-nodes);
``piece_computed`` (any other piece, e.g. a product of dimensions, elements of a tensor that is not a
Shape output, or an initializer that is also a graph input: a default the caller may override).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.fusion import FusionPass, FusionRule, Match, producer
from graphopt.rewrite import NameAllocator, constant_value, is_standard_op, remove_node
from passes.eliminate_no_op_nodes import Known, picked_elements, tensor_shape

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


def _unsqueeze_axes(node: gs.Node) -> np.ndarray | None:
    """An Unsqueeze's axes as int64 values (input 1 from opset 13; attribute ``axes`` before), or None when
    they are not constant."""
    if "axes" in node.attrs:
        return np.asarray(node.attrs["axes"], np.int64).reshape(-1)
    axes = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if axes is None else axes.astype(np.int64).reshape(-1)


def _merged_axes(first: gs.Node, second: gs.Node) -> list[int] | str:
    """The axes a of ``Unsqueeze(x, a) = second(first(x))`` (the module docstring has the algebra), sorted,
    or the reason they cannot be known."""
    inner, outer = _unsqueeze_axes(first), _unsqueeze_axes(second)
    if inner is None or outer is None:
        return "axes_not_constant"
    if (inner < 0).any() or (outer < 0).any():
        shape = first.inputs[0].shape
        if shape is None:
            return "rank_unknown"
        inner = np.where(inner < 0, inner + len(shape) + len(inner), inner)
        outer = np.where(outer < 0, outer + len(shape) + len(inner) + len(outer), outer)
        if (inner < 0).any() or (outer < 0).any():
            return "axes_out_of_range"
    inserted = set(outer.tolist())
    kept = (position for position in itertools.count() if position not in inserted)
    slots = list(itertools.islice(kept, int(inner.max(initial=-1)) + 1))
    return sorted(inserted | {slots[p] for p in inner.tolist()})


class UnsqueezeChainRule(FusionRule):
    name = "unsqueeze_chain"
    pattern = ("Unsqueeze", "Unsqueeze")

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        axes = _merged_axes(*match.nodes)
        return axes if isinstance(axes, str) else None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        first, second = match.nodes
        axes = _merged_axes(first, second)
        if "axes" in second.attrs:
            second.attrs["axes"] = axes
        else:
            second.inputs[1] = gs.Constant(names.fresh(f"{second.outputs[0].name}_axes"), np.array(axes, np.int64))
        second.inputs[0] = first.inputs[0]
        remove_node(graph, first)


def own_dims_target(reshape: gs.Node, known: Known) -> np.ndarray | str:
    """The constant target s' of ``Reshape(x, Concat(pieces))``: the constant pieces' values, and 0 for every
    entry that is x's own dimension at its own position (the module docstring has the proof); or the reason
    it cannot be written."""
    if reshape.attrs.get("allowzero", 0):
        return "allowzero"
    target: list[int] = []
    for piece in producer(reshape.inputs[1], "Concat").inputs:
        values = known.value(piece)
        if values is None:
            values = _copied_dims(piece, reshape.inputs[0], len(target), known)
            if isinstance(values, str):
                return values
        target += [int(value) for value in np.ravel(values)]
    return np.array(target, np.int64)


def _copied_dims(piece: gs.Tensor, data: gs.Tensor, position: int, known: Known) -> list[int] | str:
    """Zeros, one per entry, when ``piece`` holds data's dimensions at their own positions of the target (it
    starts at ``position``); else the reason."""
    picked = picked_elements(piece, known)
    if isinstance(picked, str):
        return "rank_unknown" if picked == "length_unknown" else "piece_computed"
    source, indices = picked
    shape = producer(source, "Shape")
    if shape is None:
        return "piece_computed"
    if shape.inputs[0] is not data:
        return "other_tensor_dim"
    start = _shape_start(shape, known)
    if start is None:
        return "rank_unknown"
    if [start + index for index in indices] != list(range(position, position + len(indices))):
        return "position_mismatch"
    return [0] * len(indices)


def _shape_start(shape: gs.Node, known: Known) -> int | None:
    """The axis of Shape(x)'s first element: its ``start`` (0 by default), counted from the end of x's dimensions
    when negative (None when x's rank is not known)."""
    start = shape.attrs.get("start", 0)
    if start >= 0:
        return start
    dims = tensor_shape(shape.inputs[0])
    return max(start + len(dims), 0) if dims is not None and known.shapes_from_values else None


def _known(graph: gs.Graph) -> Known:
    """The values of ``graph``'s constants, except those that are also its inputs, which a caller may override
    (``Known``). A subgraph sees only its own inputs, none of which is a constant."""
    return Known(graph.opset, {id(t) for t in graph.inputs if isinstance(t, gs.Constant)})


class ReshapeOwnDimsRule(FusionRule):
    name = "reshape_own_dims"
    pattern = ("Reshape",)

    def match(self, node: gs.Node) -> Match | None:
        if not is_standard_op(node, "Reshape") or len(node.inputs) != 2:
            return None
        concat = producer(node.inputs[1], "Concat")
        if concat is None or all(constant_value(piece) is not None for piece in concat.inputs):
            return None
        return Match([node])

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        target = own_dims_target(match.last, _known(graph))
        return target if isinstance(target, str) else None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        reshape = match.last
        target = own_dims_target(reshape, _known(graph))
        reshape.inputs[1] = gs.Constant(names.fresh(f"{reshape.outputs[0].name}_shape"), target)


class FuseReshapes(FusionPass):
    name = "fuse-reshapes"
    summary = ("collapse chains of Reshape/Flatten/Squeeze/Unsqueeze ending in a Reshape into that Reshape, "
               "Unsqueeze pairs into one Unsqueeze, and a Reshape's target made of its input's own dimensions "
               "into a constant")
    rules = (ReshapeOwnDimsRule(), ReshapeChainRule(), UnsqueezeChainRule())
