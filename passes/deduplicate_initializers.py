"""deduplicate-initializers: constants with the same element type, shape and bytes become one tensor.

Algebra: a constant is its value; two constants whose element type, shape and bytes are identical are the
same value, so every consumer of one may read the other. Identity is exact: the bytes are hashed
(SHA-256) to find candidates, and on a hash match the bytes are compared in full. Bytes, not numbers, are
compared, so -0.0 and +0.0, or NaNs with different payloads, stay distinct. The values of a weight are read
from its TensorProto without being kept in memory (gs would otherwise hold a decoded copy of every weight).

Scopes: a constant can be read in the graph that defines it and in every subgraph nested in it. Each
constant has a home: the innermost graph that encloses all its readers. Graphs are visited outermost first;
a constant becomes the keeper of its value for its home and everything nested in it, and a later equal
constant whose home lies inside a keeper's scope is replaced by that keeper (never the other way round, so
no graph ever reads a constant it cannot see). Constants in sibling subgraphs (the two branches of an If)
are not merged. Within a graph, constants that are outputs of that graph are visited first, so that they
are the ones kept.

Declines (``skipped.<reason>``): ``graph_output``: the duplicate is an output of a graph (the model's or a
subgraph's) and the keeper is another tensor, so the output's name would change. Never considered: constants
that are graph inputs (initializers that old, IR < 4, models also list as inputs can be overridden when the
model is run, so they are not constants at all), and sparse initializers.

Stats: ``removed.initializers`` (constants no longer referenced) and ``bytes_saved`` (their payload).

``ConstantKey`` (a constant's exact identity, usable as a dict key) is shared with
eliminate-common-subexpressions.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from graphopt.analysis import constant_digest
from graphopt.pass_base import Invariant, Pass, PassContext, PassResult
from graphopt.rewrite import constant_array


def element_type(tensor: gs.Constant) -> int | str:
    """The ONNX element type the constant is written with (a string for a dtype onnx has no type for)."""
    if isinstance(tensor._values, LazyValues):  # gs's private field: reading ``values`` would decode it
        return tensor._values.tensor.data_type
    dtype = tensor.export_dtype
    if isinstance(dtype, int):
        return dtype
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (KeyError, TypeError, ValueError):
        return str(dtype)


def is_dense(tensor: gs.Constant) -> bool:
    return not isinstance(tensor._values, SparseValues)


def constant_bytes(tensor: gs.Constant) -> bytes:
    """The constant's values as bytes (strings length-prefixed, so that no two lists collide)."""
    array = constant_array(tensor)
    if array.dtype == object:
        items = [item if isinstance(item, bytes) else str(item).encode() for item in array.ravel()]
        return b"".join(len(item).to_bytes(8, "little") + item for item in items)
    return np.ascontiguousarray(array).tobytes()


def constant_nbytes(tensor: gs.Constant) -> int:
    values = tensor._values
    return int(values.nbytes) if isinstance(values, (LazyValues, np.ndarray)) else 0


def _header(tensor: gs.Constant) -> tuple:
    """Element type, the dtype of the values as decoded (they differ when gs converts on export), shape. The
    same whether or not gs has decoded the values yet."""
    written = element_type(tensor)
    values = tensor._values
    decoded = _dtype_name(values.dtype) if isinstance(values, np.ndarray) else _decoded_name(written)
    return written, decoded, tuple(int(d) for d in tensor.shape)


@functools.cache
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)  # numpy builds the name anew on every call


@functools.cache
def _decoded_name(written: int | str) -> str:
    """The name of the dtype gs decodes an element type to (the element type itself where numpy has none)."""
    try:
        return _dtype_name(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(written)))
    except (KeyError, TypeError, ValueError):
        return str(written)


def _digest(tensor: gs.Constant) -> bytes:
    """SHA-256 of the constant's dtype, shape and values, computed once per values object
    (``graphopt.analysis.constant_digest``: the structural fingerprint and later runs of this pass hash the
    same weights again)."""
    return constant_digest(tensor)


class ConstantKey:
    """A dense constant's exact identity, for use as (part of) a dict key: equal keys mean identical
    element type, shape and bytes. Hashing uses a SHA-256 of the values (``_digest``); equality compares the
    bytes in full (read again, so that no copy of the values is held)."""

    __slots__ = ("tensor", "header", "digest")

    def __init__(self, tensor: gs.Constant):
        self.tensor = tensor
        self.header = _header(tensor)
        self.digest = _digest(tensor)

    def __hash__(self) -> int:
        return hash((self.header, self.digest))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConstantKey):
            return NotImplemented
        if self.tensor is other.tensor:
            return True
        return (self.header == other.header and self.digest == other.digest
                and constant_bytes(self.tensor) == constant_bytes(other.tensor))


class DeduplicateInitializers(Pass):
    name = "deduplicate-initializers"
    summary = "make constants with identical type, shape and bytes one tensor"
    preserves = frozenset({Invariant.TOPOLOGICALLY_SORTED, Invariant.SHAPES_INFERRED, Invariant.INFERENCE_MODE})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        scopes = _Scopes(graph)
        inputs = {id(t) for g in scopes.graphs for t in g.inputs if isinstance(t, gs.Constant)}
        outputs = {id(t) for g in scopes.graphs for t in g.outputs if isinstance(t, gs.Constant)}
        candidates = [c for c in scopes.constants() if id(c) not in inputs and is_dense(c)]
        # Only values whose type and shape occur twice can have a duplicate: hash nothing else.
        headers = collections.Counter(_header(c) for c in candidates)
        by_home: dict[int, list[gs.Constant]] = collections.defaultdict(list)
        for constant in candidates:
            if headers[_header(constant)] > 1:
                by_home[id(scopes.home(constant))].append(constant)

        stats: collections.Counter[str] = collections.Counter()
        replacement: dict[int, gs.Constant] = {}

        def visit(scope: gs.Graph, keepers: dict[ConstantKey, gs.Constant]) -> None:
            keepers = dict(keepers)
            home = by_home.get(id(scope), [])
            for constant in sorted(home, key=lambda c: id(c) not in outputs):  # stable: outputs first
                key = ConstantKey(constant)
                keeper = keepers.setdefault(key, constant)
                if keeper is constant or keeper.name == constant.name:
                    continue
                if id(constant) in outputs:
                    stats["skipped.graph_output"] += 1
                    continue
                replacement[id(constant)] = keeper
                stats["removed.initializers"] += 1
                stats["bytes_saved"] += constant_nbytes(constant)
            for node in scope.nodes:
                for index, tensor in enumerate(node.inputs):
                    if id(tensor) in replacement:
                        node.inputs[index] = replacement[id(tensor)]
            for child in scopes.children(scope):
                visit(child, keepers)

        visit(graph, {})
        return PassResult(bool(replacement), stats)


class _Scopes:
    """The tree of a graph and its subgraphs, and where each constant is read."""

    def __init__(self, graph: gs.Graph):
        self.parent: dict[int, gs.Graph | None] = {id(graph): None}
        self.depth: dict[int, int] = {id(graph): 0}
        self.graphs: list[gs.Graph] = []
        self._children: dict[int, list[gs.Graph]] = collections.defaultdict(list)
        self._readers: dict[int, list[gs.Graph]] = collections.defaultdict(list)
        self._constants: dict[int, gs.Constant] = {}
        self._walk(graph)

    def _walk(self, graph: gs.Graph) -> None:
        self.graphs.append(graph)
        for tensor in self._constants_read_by(graph):
            self._constants.setdefault(id(tensor), tensor)
            self._readers[id(tensor)].append(graph)
        for node in graph.nodes:
            for value in node.attrs.values():
                if isinstance(value, gs.Graph):
                    self.parent[id(value)] = graph
                    self.depth[id(value)] = self.depth[id(graph)] + 1
                    self._children[id(graph)].append(value)
                    self._walk(value)

    @staticmethod
    def _constants_read_by(graph: gs.Graph) -> Iterator[gs.Constant]:
        seen: set[int] = set()
        for tensor in [*graph.outputs, *(t for node in graph.nodes for t in node.inputs)]:
            if isinstance(tensor, gs.Constant) and id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor

    def constants(self) -> list[gs.Constant]:
        return list(self._constants.values())

    def children(self, graph: gs.Graph) -> list[gs.Graph]:
        return self._children[id(graph)]

    def home(self, constant: gs.Constant) -> gs.Graph:
        """The innermost graph enclosing every graph that reads ``constant``."""
        readers = self._readers[id(constant)]
        home = readers[0]
        for graph in readers[1:]:
            home = self._common_ancestor(home, graph)
        return home

    def _common_ancestor(self, a: gs.Graph, b: gs.Graph) -> gs.Graph:
        while self.depth[id(a)] > self.depth[id(b)]:
            a = self.parent[id(a)]
        while self.depth[id(b)] > self.depth[id(a)]:
            b = self.parent[id(b)]
        while a is not b:
            a, b = self.parent[id(a)], self.parent[id(b)]
        return a
