"""fuse-transposes: compose a chain of consecutive Transposes into one, or remove it when it is the identity.

Algebra. ``Transpose(x, p)`` has ``out.shape[i] = x.shape[p[i]]``; a Transpose without ``perm`` reverses the
axes (``p = [r-1, ..., 0]``). Two in a row compose:
    transpose(transpose(x, p1), p2) = transpose(x, q)        with q[i] = p1[p2[i]]
and so on along a longer chain. When q is the identity the pair computes x: it is removed and its consumers
read x (``graphopt.rewrite.bypass``; a graph output keeps its name). When bypass cannot keep the name (x is
a graph input, a constant, itself a graph output or from an outer scope), a single Identity is left. The rank
comes from a ``perm`` or a known shape; two Transposes without ``perm`` are two reversals, the identity, even
when the rank is unknown. The rewrite only moves data: outputs are bitwise equal.

Rules (stats ``rewrites.<rule>`` / ``skipped.<rule>.<reason>``): ``cancel_transposes`` (the composition is
the identity) and ``compose_transposes`` (otherwise). Each matches a pair; the second Transpose is kept
(reading x, with the composed perm), so the driver matches it again with the next Transpose in the same
sweep and a whole chain composes in one run.

Declines (``skipped.<rule>.<reason>``): ``invalid_perm`` (a ``perm`` that is not a permutation of the
rank, or perms of different lengths); and what the fusion driver refuses for every rule
(``intermediate_is_graph_output``, ``intermediate_has_other_consumers``).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt.fusion import FusionPass, FusionRule, Match
from graphopt.rewrite import NameAllocator, bypass, remove_node


def composed_perm(pair: list[gs.Node]) -> tuple[int, ...] | None:
    """The permutation q with pair(x) = transpose(x, q), or None when a perm is invalid or the ranks differ."""
    perms = [node.attrs.get("perm") for node in pair]
    ranks = {len(p) for p in perms if p is not None}
    for tensor in (pair[0].inputs[0], *(node.outputs[0] for node in pair)):
        if tensor.shape is not None:
            ranks.add(len(tensor.shape))
    if len(ranks) > 1:
        return None
    if not ranks:  # no perm and no shape: two reversals
        return ()
    rank = ranks.pop()
    composed = tuple(range(rank))
    for perm in perms:
        perm = tuple(range(rank - 1, -1, -1)) if perm is None else tuple(int(axis) for axis in perm)
        if sorted(perm) != list(range(rank)):
            return None
        composed = tuple(composed[axis] for axis in perm)
    return composed


def _is_identity(perm: tuple[int, ...] | None) -> bool:
    return isinstance(perm, tuple) and perm == tuple(range(len(perm)))


def _remove_first(match: Match, graph: gs.Graph) -> None:
    """Make the second Transpose read the first one's input, and drop the first."""
    first, second = match.nodes
    second.inputs[0] = first.inputs[0]
    remove_node(graph, first)


class CancelTransposesRule(FusionRule):
    name = "cancel_transposes"
    pattern = ("Transpose", "Transpose")

    def match(self, node: gs.Node) -> Match | None:
        match = super().match(node)
        return match if match is not None and _is_identity(composed_perm(match.nodes)) else None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        _remove_first(match, graph)
        last = match.last
        if bypass(graph, last, last.inputs[0], last.outputs[0]) is not None:
            last.op, last.attrs = "Identity", {}


class ComposeTransposesRule(FusionRule):
    name = "compose_transposes"
    pattern = ("Transpose", "Transpose")

    def match(self, node: gs.Node) -> Match | None:
        match = super().match(node)
        return match if match is not None and not _is_identity(composed_perm(match.nodes)) else None

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        return "invalid_perm" if composed_perm(match.nodes) is None else None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        perm = composed_perm(match.nodes)
        _remove_first(match, graph)
        match.last.attrs["perm"] = list(perm)


class FuseTransposes(FusionPass):
    name = "fuse-transposes"
    summary = "compose consecutive Transposes into one, and remove chains that compose to the identity"
    rules = (CancelTransposesRule(), ComposeTransposesRule())
