"""eliminate-common-subexpressions: of two nodes that compute the same thing from the same inputs, keep one.

Algebra: an ONNX operator is a function of its inputs and attributes. Two nodes with the same op and domain,
equal attributes and the same inputs, position by position (the same tensor, or constants with identical
type, shape and bytes; an initializer that is also a graph input, as in IR < 4 models, may be overridden by
the caller and counts only as itself), and the same pattern of requested outputs, compute equal outputs;
consumers of the later node's outputs read the earlier node's instead, and the later node is removed.
Attributes are equal when they are identical: numbers bit for bit (so 0.0 and -0.0 differ, NaN equals NaN),
tensors by type, shape and bytes, and subgraphs structurally: the same nodes in the same order with the same
ops, attributes and wiring, where tensors made inside the subgraph are matched by position and tensors read
from enclosing graphs must be the same tensors (names inside a subgraph do not matter).

Nodes are visited in topological order and each node is compared after its inputs were rewired, so a chain
of duplicates collapses in one run. Every graph is a scope of its own (subgraphs of If, Loop and Scan too):
only nodes of the same graph are merged, so a subgraph never reads a tensor it cannot see. Local functions
are not visited. When the removed node's output is an output of the graph, the kept node's output takes
its name (graph outputs keep their names).

Declines (``skipped.<reason>``, counted for each node that matches an earlier one but is kept):
``nondeterministic``: RandomNormal, RandomUniform, RandomNormalLike, RandomUniformLike, Multinomial,
Bernoulli, Dropout that may run in training mode, or a subgraph containing one;
``custom_domain``: an op outside the ONNX domains (``ai.onnx``, ``ai.onnx.ml``,
``ai.onnx.preview.training``) or a local function: its semantics (and its determinism) are unknown;
``attributes_not_visible``: the op's schema has an attribute, absent on the node, of a kind graphopt keeps
out of the gs graph (an empty list, a list of tensors or graphs, a sparse tensor, a type), so two nodes that
look equal might not be (the node's op or an op in its subgraphs; Constant is exempt: it has exactly one
value attribute); ``both_graph_outputs``: the two nodes' outputs are both outputs of the graph, and one
tensor cannot carry two names.
"""

from __future__ import annotations

import collections
import struct
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.pass_base import Invariant, Pass, PassContext, PassResult
from graphopt.rewrite import all_graphs
from passes.deduplicate_initializers import ConstantKey, is_dense

NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})
ONNX_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml",
                "ai.onnx.preview.training": "ai.onnx.preview.training"}
_AttrType = onnx.defs.OpSchema.AttrType
# Attribute kinds that graphopt's import may keep out of the gs graph (see graphopt.fidelity.gs_holds). A
# STRING is hidden only when it is not UTF-8, which no ONNX-domain op's string attribute can validly be.
_HIDEABLE = frozenset({_AttrType.INTS, _AttrType.FLOATS, _AttrType.STRINGS, _AttrType.TENSORS, _AttrType.GRAPHS,
                       _AttrType.SPARSE_TENSOR, _AttrType.SPARSE_TENSORS, _AttrType.TYPE_PROTO,
                       _AttrType.TYPE_PROTOS})


class EliminateCommonSubexpressions(Pass):
    name = "eliminate-common-subexpressions"
    summary = "merge nodes that compute the same op on the same inputs with the same attributes"
    requires = frozenset({Invariant.TOPOLOGICALLY_SORTED})
    preserves = frozenset({Invariant.TOPOLOGICALLY_SORTED, Invariant.SHAPES_INFERRED, Invariant.INFERENCE_MODE})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: collections.Counter[str] = collections.Counter()
        keys, checker = _Keys(graph), _Mergeability(graph)
        # all_graphs is consumed lazily on purpose: the subgraphs of a node merged away in an enclosing
        # graph are never visited.
        for scope in all_graphs(graph):
            _eliminate_in(scope, keys, checker, stats)
        changed = any(key.startswith("removed.") for key in stats)
        return PassResult(changed, stats)


def _eliminate_in(scope: gs.Graph, keys: _Keys, checker: _Mergeability, stats: collections.Counter[str]) -> None:
    first: dict[tuple, gs.Node] = {}
    removed: set[int] = set()
    for node in scope.nodes:
        key = keys.node(node)
        kept = first.setdefault(key, node)
        if kept is node:
            continue
        reason = checker.why_not(node, scope) or _output_conflict(kept, node, scope)
        if reason:
            stats[f"skipped.{reason}"] += 1
            continue
        _merge(scope, kept, node)
        removed.add(id(node))
        stats[f"removed.{node.op.lower()}"] += 1
    if removed:  # by identity: gs compares nodes (and tensors) by name and contents
        scope.nodes = [node for node in scope.nodes if id(node) not in removed]


# ---------------------------------------------------------------------------------------------------------
# Keys: equal keys mean the nodes compute the same outputs


class _Same:
    """A tensor (or any object) compared by identity, and kept alive while the key exists."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: object):
        self.tensor = tensor

    def __hash__(self) -> int:
        return id(self.tensor)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.tensor is self.tensor


Scopes = tuple[dict[int, int], ...]  # tensors made inside enclosing subgraphs, innermost last


class _Keys:
    """Node keys. ``overridable``: ids of constants that are also graph inputs (IR < 4 models list their
    initializers as inputs, and a caller may feed other values): they are compared by identity."""

    def __init__(self, graph: gs.Graph):
        self.overridable = {id(t) for t in graph.inputs if isinstance(t, gs.Constant)}

    def node(self, node: gs.Node, scopes: Scopes = ()) -> tuple:
        return (
            ONNX_DOMAINS.get(node.domain or "", node.domain),
            node.op,
            tuple((name, self.attribute(value, scopes)) for name, value in sorted(node.attrs.items())),
            tuple(self.tensor(tensor, scopes) for tensor in node.inputs),
            tuple(bool(tensor.name) for tensor in node.outputs),
        )

    def tensor(self, tensor: gs.Tensor, scopes: Scopes = ()) -> tuple:
        if isinstance(tensor, gs.Constant) and is_dense(tensor) and id(tensor) not in self.overridable:
            return ("constant", ConstantKey(tensor))
        if not tensor.name:
            return ("omitted",)
        for level, local in enumerate(reversed(scopes)):
            if id(tensor) in local:
                return ("local", level, local[id(tensor)])
        return ("tensor", _Same(tensor))

    def attribute(self, value: Any, scopes: Scopes) -> Any:
        if isinstance(value, (bool, int, np.integer)):
            return ("i", int(value))
        if isinstance(value, (float, np.floating)):
            return ("f", struct.pack("<d", float(value)))  # bitwise: -0.0 != 0.0, NaN == NaN
        if isinstance(value, (str, bytes)):
            return ("s", value)
        if isinstance(value, (list, tuple)):
            return ("l", tuple(self.attribute(item, scopes) for item in value))
        if isinstance(value, gs.Constant) and is_dense(value):
            return ("t", ConstantKey(value))
        if isinstance(value, gs.Graph):
            return ("g", self.graph(value, scopes))
        if isinstance(value, gs.Node.AttributeRef):
            return ("r", value.name, str(value.type))
        return ("x", _Same(value))  # anything else is equal only to itself

    def graph(self, graph: gs.Graph, scopes: Scopes = ()) -> tuple:
        """A subgraph's structure with its own names abstracted away: tensors made inside it (and inside
        the subgraphs enclosing it, up to the node being compared) are numbered in order of definition;
        tensors it reads from further out are compared by identity."""
        local: dict[int, int] = {}
        scopes = (*scopes, local)
        inputs = []
        for tensor in graph.inputs:
            local[id(tensor)] = len(local)
            inputs.append((str(tensor.dtype), None if tensor.shape is None else tuple(tensor.shape),
                           getattr(tensor, "type", None)))
        nodes = []
        for node in graph.nodes:
            nodes.append(self.node(node, scopes))
            for tensor in node.outputs:
                if tensor.name and id(tensor) not in local:
                    local[id(tensor)] = len(local)
        outputs = tuple(self.tensor(tensor, scopes) for tensor in graph.outputs)
        return tuple(inputs), tuple(nodes), outputs


# ---------------------------------------------------------------------------------------------------------
# Declines


class _Mergeability:
    """Why a node may not be merged with an equal one (or None): nondeterminism, unknown semantics, or
    attributes that might differ unseen."""

    def __init__(self, graph: gs.Graph):
        self.functions = {(f.domain or "", f.name) for f in getattr(graph, "functions", [])}
        self.opsets = {ONNX_DOMAINS.get(o.domain, o.domain): o.version for o in (graph.import_domains or [])}
        self.graph_inputs = {id(t) for t in graph.inputs}

    def why_not(self, node: gs.Node, scope: gs.Graph) -> str | None:
        for inner, graph in _nodes_within(node, scope):
            reason = self._why_not_one(inner, graph.opset)
            if reason:
                return reason
        return None

    def _why_not_one(self, node: gs.Node, opset: int) -> str | None:
        domain = node.domain or ""
        if domain not in ONNX_DOMAINS or (domain, node.op) in self.functions:
            return "custom_domain"
        domain = ONNX_DOMAINS[domain]
        if domain == "" and (node.op in NONDETERMINISTIC or (node.op == "Dropout" and self._may_train(node, opset))):
            return "nondeterministic"
        version = opset if domain == "" else self.opsets.get(domain, 1)
        if _attributes_may_be_hidden(node, domain, version):
            return "attributes_not_visible"
        return None

    def _may_train(self, node: gs.Node, opset: int) -> bool:
        """True unless this Dropout provably runs in inference mode (then it is a deterministic identity)."""
        if "is_test" in node.attrs or opset < 7:
            return not node.attrs.get("is_test", 0)  # opset < 7: training unless is_test=1
        if len(node.inputs) < 3 or not node.inputs[2].name:
            return False
        mode = node.inputs[2]
        return not isinstance(mode, gs.Constant) or id(mode) in self.graph_inputs or bool(mode.values.any())


def _nodes_within(node: gs.Node, scope: gs.Graph):
    """``node`` and every node of its subgraphs, each with the graph it is in."""
    yield node, scope
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            for subgraph in all_graphs(value):
                for inner in subgraph.nodes:
                    yield inner, subgraph


def _attributes_may_be_hidden(node: gs.Node, domain: str, version: int) -> bool:
    if node.op == "Constant" and node.attrs:
        return False  # exactly one value attribute, and gs holds it
    try:
        schema = onnx.defs.get_schema(node.op, version, domain)
    except onnx.defs.SchemaError:
        return True
    return any(attribute.type in _HIDEABLE and name not in node.attrs for name, attribute in schema.attributes.items())


def _is_among(tensor: gs.Tensor, tensors: list[gs.Tensor]) -> bool:
    return any(t is tensor for t in tensors)  # gs's ``in`` compares tensors by name


def _output_conflict(kept: gs.Node, duplicate: gs.Node, scope: gs.Graph) -> str | None:
    for kept_tensor, duplicate_tensor in zip(kept.outputs, duplicate.outputs, strict=True):
        if _is_among(duplicate_tensor, scope.outputs) and _is_among(kept_tensor, scope.outputs):
            return "both_graph_outputs"
    return None


# ---------------------------------------------------------------------------------------------------------
# The rewrite


def _merge(scope: gs.Graph, kept: gs.Node, duplicate: gs.Node) -> None:
    """Consumers of ``duplicate``'s outputs (in this graph or nested ones) read ``kept``'s; an output of a
    graph is replaced there, and an output of ``scope`` passes its name to the kept tensor. ``duplicate`` is
    disconnected; the caller takes it out of ``scope.nodes``."""
    for kept_tensor, duplicate_tensor in zip(kept.outputs, duplicate.outputs, strict=True):
        if not duplicate_tensor.name:
            continue
        for consumer in list(duplicate_tensor.outputs):
            for index, tensor in enumerate(consumer.inputs):
                if tensor is duplicate_tensor:
                    consumer.inputs[index] = kept_tensor
        for graph in all_graphs(scope):
            if not _is_among(duplicate_tensor, graph.outputs):
                continue
            if graph is scope:
                kept_tensor.name = duplicate_tensor.name
                kept_tensor.dtype = duplicate_tensor.dtype or kept_tensor.dtype
                if duplicate_tensor.shape is not None:
                    kept_tensor.shape = duplicate_tensor.shape
            graph.outputs = [kept_tensor if t is duplicate_tensor else t for t in graph.outputs]
    _detach(duplicate)


def _detach(node: gs.Node) -> None:
    """Disconnect ``node`` and every node of its subgraphs, so no tensor keeps them as consumers."""
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            for subgraph in all_graphs(value):
                for inner in subgraph.nodes:
                    inner.inputs.clear()
                    inner.outputs.clear()
    node.inputs.clear()
    node.outputs.clear()
