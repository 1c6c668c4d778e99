"""The fusion driver: rules say what to match, whether it is safe, and how to rewrite it; the driver does the
rest once for every rule.

A ``FusionRule`` has a declarative ``pattern``: a chain of op types, each node feeding the next through its
first output (``"Conv|ConvTranspose"`` allows either op). ``match`` returns the chain ending at a node (a
rule with a non-chain pattern overrides it). ``check(match) -> reason | None`` refuses with a reason a user
can read in the stats; ``rewrite(match, graph, names)`` performs the rewrite so that the match's final output
tensors keep being produced (same tensor objects), so consumers need no rewiring.

The driver refuses, before asking the rule, any match that reaches into an enclosing graph (a subgraph node
whose chain starts at a producer outside the subgraph: ``crosses_scope``), any match whose intermediate
tensors are graph outputs or have live consumers outside the match (a consumer no graph output depends on
does not count: the pass's clean-up removes it), and any match whose weights (the constants the rule will
modify, listed by the rule in ``Match.weights``) are shared with other nodes. It counts ``rewrites.<rule>``
and ``skipped.<rule>.<reason>``, visits subgraphs, and runs clean-up and toposort once per pass. A weight that
a rewrite left unread (no node reads it, no graph lists it as an input or output) lets go of its values at
once (``graphopt.rewrite.release_values``), so that a model's replaced weights are not all held until the end.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import ClassVar

import onnx_graphsurgeon as gs

from graphopt.pass_base import Invariant, Pass, PassContext, PassResult
from graphopt.rewrite import NameAllocator, all_graphs, is_standard_op, release_values, remove_node


@dataclasses.dataclass
class Match:
    """Matched nodes in pattern order (the last one's outputs survive the rewrite), and the constants the
    rewrite will change (they must not be shared with nodes outside the match)."""

    nodes: list[gs.Node]
    weights: list[gs.Constant] = dataclasses.field(default_factory=list)

    @property
    def last(self) -> gs.Node:
        return self.nodes[-1]

    def intermediates(self) -> list[gs.Tensor]:
        return [t for node in self.nodes[:-1] for t in node.outputs if t.name]


class FusionRule:
    """One rewrite. Subclasses set ``name`` (used in stats) and ``pattern``, and implement ``check`` and
    ``rewrite`` (and ``match`` when the pattern is not a chain)."""

    name: ClassVar[str]
    pattern: ClassVar[tuple[str, ...]] = ()

    def match(self, node: gs.Node) -> Match | None:
        chain = [node]
        for op_types in reversed(self.pattern[:-1]):
            producer = single_producer(chain[0].inputs[0] if chain[0].inputs else None)
            if producer is None or not is_standard_op(producer, *op_types.split("|")):
                return None
            chain.insert(0, producer)
        if not is_standard_op(node, *self.pattern[-1].split("|")):
            return None
        return Match(chain)

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        return None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        raise NotImplementedError


def absorb_with_bias(graph: gs.Graph, layer: gs.Node, follower: gs.Node, bias: gs.Tensor) -> None:
    """``layer`` (Conv, ConvTranspose or Gemm) takes ``bias`` as its bias input and writes ``follower``'s
    output, and ``follower`` (the node folded into it) leaves the graph."""
    if len(layer.inputs) > 2:
        layer.inputs[2] = bias
    else:
        layer.inputs.append(bias)
    layer.outputs[0] = follower.outputs[0]
    remove_node(graph, follower)


def single_producer(tensor: gs.Tensor | None) -> gs.Node | None:
    """The node producing ``tensor``, if there is exactly one (never for constants and graph inputs)."""
    if tensor is None or isinstance(tensor, gs.Constant) or len(tensor.inputs) != 1:
        return None
    return tensor.inputs[0]


def producer(tensor: gs.Tensor | None, *op_types: str) -> gs.Node | None:
    """The single producer of ``tensor`` if it is one of ``op_types`` (default domain), else None."""
    node = single_producer(tensor)
    return node if node is not None and is_standard_op(node, *op_types) else None


def both_orders(pair):
    """The two operands of a commutative binary node, in both orders (nothing for other arities)."""
    if len(pair) == 2:
        yield pair[0], pair[1]
        yield pair[1], pair[0]


def escape_reason(match: Match, graph: gs.Graph, dead: frozenset[int] = frozenset()) -> str | None:
    """Why the driver refuses ``match`` regardless of the rule, or None. Consumers in ``dead`` (ids of nodes
    no graph output depends on; the pass's clean-up removes them) do not count."""
    ignored = {id(node) for node in match.nodes} | dead
    for tensor in match.intermediates():
        if tensor in graph.outputs:
            return "intermediate_is_graph_output"
        if any(id(consumer) not in ignored for consumer in tensor.outputs):
            return "intermediate_has_other_consumers"
    for weight in match.weights:
        if any(id(consumer) not in ignored for consumer in weight.outputs):
            return "shared_weight"
    return None


def dead_nodes(graph: gs.Graph) -> frozenset[int]:
    """Ids of the nodes of ``graph`` that no graph output depends on. Nodes read through subgraphs count as
    live (the node holding the subgraph is what the walk reaches)."""
    live: set[int] = set()
    stack = [tensor for tensor in graph.outputs]
    while stack:
        tensor = stack.pop()
        for node in tensor.inputs:
            if id(node) not in live:
                live.add(id(node))
                stack.extend(node.inputs)
                stack.extend(_outer_reads(node))
    return frozenset(id(node) for node in graph.nodes if id(node) not in live)


def _outer_reads(node: gs.Node) -> list[gs.Tensor]:
    """Tensors a node's subgraphs read from enclosing scopes (they are live when the node is)."""
    reads = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            local = {id(t) for g in all_graphs(value) for n in g.nodes for t in n.outputs}
            local |= {id(t) for g in all_graphs(value) for t in g.inputs}
            reads += [t for g in all_graphs(value) for n in g.nodes for t in n.inputs if id(t) not in local]
    return reads


def _unread(tensor: gs.Tensor, graphs: list[gs.Graph]) -> bool:
    """True if no node reads ``tensor`` and none of ``graphs`` has it among its inputs or outputs."""
    return not tensor.outputs and not any(t is tensor for g in graphs for t in (*g.inputs, *g.outputs))


class FusionPass(Pass):
    """A pass that applies its ``rules`` to every node of the graph and its subgraphs, once."""

    rules: ClassVar[tuple[FusionRule, ...]]
    requires = frozenset({Invariant.SHAPES_INFERRED})
    establishes = frozenset({Invariant.TOPOLOGICALLY_SORTED})
    preserves = frozenset({Invariant.INFERENCE_MODE})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: collections.Counter[str] = collections.Counter()
        names = NameAllocator(graph)
        graphs = list(all_graphs(graph))
        for subgraph in graphs:
            self._apply(subgraph, names, stats, graphs)
        changed = any(key.startswith("rewrites.") for key in stats)
        if changed:
            graph.cleanup(remove_unused_graph_inputs=False)
            graph.toposort(recurse_functions=False, mode="nodes")
        return PassResult(changed, stats)

    def _apply(self, graph: gs.Graph, names: NameAllocator, stats: collections.Counter[str],
               graphs: list[gs.Graph]) -> None:
        consumed: set[int] = set()
        dead = dead_nodes(graph)
        local = {id(node) for node in graph.nodes}
        for node in list(graph.nodes):
            for rule in self.rules:
                if id(node) in consumed:
                    break
                match = rule.match(node)
                if match is None or any(id(n) in consumed for n in match.nodes):
                    continue
                if any(id(n) not in local for n in match.nodes):
                    # a producer in an enclosing graph (a subgraph reads the outer tensor): the rewrite would
                    # move computation across the scope boundary and remove a node from the wrong graph
                    stats[f"skipped.{rule.name}.crosses_scope"] += 1
                    continue
                reason = escape_reason(match, graph, dead) or rule.check(match, graph)
                if reason:
                    stats[f"skipped.{rule.name}.{reason}"] += 1
                    continue
                rule.rewrite(match, graph, names)
                for weight in match.weights:
                    if _unread(weight, graphs):
                        release_values(weight)
                # removed nodes are gone; a node the rewrite kept (e.g. the Conv that absorbed a
                # BatchNormalization) may start the next match in the same sweep
                consumed.update(id(n) for n in match.nodes if not n.outputs)
                stats[f"rewrites.{rule.name}"] += 1
