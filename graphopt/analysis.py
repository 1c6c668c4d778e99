"""Analyses of a graph: computed on demand, cached until the graph changes.

``AnalysisCache`` holds one value per analysis function; the pass manager calls ``invalidate()`` after
every pass that changed the graph, so a pass never reads a stale analysis. ``structural_fingerprint`` is the
hash the manager uses to check that a pass's ``changed`` bit is honest. ``infer_shapes`` establishes the
``shapes-inferred`` invariant with onnx's own shape inference.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphopt.fidelity import export_with_gs
from graphopt.rewrite import plain_raw_data

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AnalysisCache:
    """Cached results of analysis functions ``f(graph) -> T``, dropped whenever the graph changes."""

    def __init__(self) -> None:
        self._results: dict[Callable[..., Any], Any] = {}
        self.version = 0

    def get(self, analysis: Callable[[gs.Graph], T], graph: gs.Graph) -> T:
        if analysis not in self._results:
            self._results[analysis] = analysis(graph)
        return self._results[analysis]

    def invalidate(self) -> None:
        self._results.clear()
        self.version += 1


def structural_fingerprint(graph: gs.Graph) -> str:
    """A hash of everything a pass can change: nodes (op, domain, name, attributes, subgraphs, wiring),
    graph inputs and outputs (names, dtypes, shapes), constants (names and values), and local functions.
    Shapes that inference annotates on intermediate tensors are not part of it."""
    digest = hashlib.sha256()
    _feed_graph(digest, graph)
    for function in getattr(graph, "functions", []):
        digest.update(f"function {function.domain}:{function.name}".encode())
        _feed_graph(digest, function)
    return digest.hexdigest()


def _feed_graph(digest: hashlib._Hash, graph: gs.Graph) -> None:
    for label, tensors in (("in", graph.inputs), ("out", graph.outputs)):
        for tensor in tensors:
            shape = None if tensor.shape is None else list(tensor.shape)  # gs gives lists or tuples
            digest.update(f"{label} {tensor.name} {tensor.dtype} {shape}".encode())
    for node in graph.nodes:
        inputs = [_tensor_key(digest, t) for t in node.inputs]
        outputs = [t.name for t in node.outputs]
        digest.update(f"node {node.domain}:{node.op} {node.name} {inputs} -> {outputs}".encode())
        for key in sorted(node.attrs):
            digest.update(f"attr {key}=".encode())
            _feed_value(digest, node.attrs[key])


def _tensor_key(digest: hashlib._Hash, tensor: gs.Tensor) -> str:
    if isinstance(tensor, gs.Constant):
        digest.update(f"const {tensor.name}".encode())
        digest.update(constant_digest(tensor))
    return tensor.name


def _feed_value(digest: hashlib._Hash, value: Any) -> None:
    if isinstance(value, gs.Graph):
        _feed_graph(digest, value)
    elif isinstance(value, gs.Constant):
        digest.update(constant_digest(value))
    elif isinstance(value, np.ndarray):
        digest.update(array_digest(value))
    elif isinstance(value, (list, tuple)):
        for item in value:
            _feed_value(digest, item)
    else:
        digest.update(repr(value).encode())


# ---------------------------------------------------------------------------------------------------------
# Digests of constant values


def constant_digest(tensor: gs.Constant) -> bytes:
    """SHA-256 of a constant's values as gs decodes them: dtype, shape and bytes (``array_digest``). The same
    whether or not gs has decoded the values yet, so reading a constant never looks like a change.

    Weights are most of a model's bytes and are hashed again by every fingerprint and by the passes that
    compare constants, so a digest is computed once per values object (the ``LazyValues`` holding the
    TensorProto, or the numpy array) and cached for as long as that object lives. That is exact because
    values are never edited in place: a pass that changes a constant gives it new values (the pass contract,
    see ``graphopt.pass_base``), and ``graphopt.fidelity`` never lets gs write into a TensorProto it shares.
    Under ``exact_digests`` (the pass manager's honesty check) arrays are hashed every time, so that even
    an in-place edit shows. Plain numeric TensorProtos with ``raw_data`` are hashed from those bytes without
    decoding them: decoding them gives exactly those bytes (on a little-endian machine).
    """
    values = tensor._values
    if not isinstance(values, LazyValues):
        values = np.asarray(values)
        if _exact_arrays.get() or values is not tensor._values:  # an array made here for a list is not kept
            return array_digest(values)
    cached = _DIGESTS.get(id(values))
    if cached is not None and cached[0]() is values:
        return cached[1]
    if isinstance(values, np.ndarray):
        digest = array_digest(values)
    else:
        digest = _raw_data_digest(values) if type(values) is LazyValues else None
        if digest is None:
            digest = array_digest(values.load())
    _DIGESTS[id(values)] = (weakref.ref(values, _forget(id(values))), digest)
    return digest


_DIGESTS: dict[int, tuple[weakref.ref, bytes]] = {}  # id(values object) -> (a reference to it, digest)
# Per thread and task (a context variable, not a global): one optimize() checking honesty in a thread must not
# switch the caching of another running beside it.
_exact_arrays: contextvars.ContextVar[bool] = contextvars.ContextVar("graphopt_exact_digests", default=False)


@contextlib.contextmanager
def exact_digests(exact: bool = True) -> Iterator[None]:
    """While active (with ``exact``), ``constant_digest`` hashes numpy arrays every time instead of trusting
    the digest it cached for the same array object."""
    token = _exact_arrays.set(exact or _exact_arrays.get())
    try:
        yield
    finally:
        _exact_arrays.reset(token)


def _forget(key: int) -> Callable[[weakref.ref], None]:
    """A weakref callback that drops the cache entry of a values object that no longer exists."""
    def callback(ref: weakref.ref) -> None:
        entry = _DIGESTS.get(key)
        if entry is not None and entry[0] is ref:
            del _DIGESTS[key]
    return callback


def _raw_data_digest(values: LazyValues) -> bytes | None:
    """``array_digest(values.load())`` computed from the TensorProto's raw_data, or None where decoding
    could give other bytes (``graphopt.rewrite.plain_raw_data``)."""
    plain = plain_raw_data(values.tensor)
    return None if plain is None else _digest_of(*plain)


def array_digest(array: np.ndarray) -> bytes:
    """SHA-256 of an array's dtype, shape and bytes (strings: each length-prefixed, so no two lists of
    strings collide)."""
    if array.dtype == object:
        items = [item if isinstance(item, bytes) else str(item).encode() for item in array.ravel()]
        return _digest_of(array.dtype, array.shape, b"".join(len(i).to_bytes(8, "little") + i for i in items))
    contiguous = np.ascontiguousarray(array).reshape(-1)
    try:
        data = contiguous.view(np.uint8)  # hashed in place: no copy of the bytes
    except (TypeError, ValueError):
        data = contiguous.tobytes()
    return _digest_of(array.dtype, array.shape, data)


def _digest_of(dtype: np.dtype, shape: tuple, data) -> bytes:
    digest = hashlib.sha256(f"{dtype} {tuple(shape)}".encode())
    digest.update(data)
    return digest.digest()


_KEEP_VALUES_UP_TO = 4096  # elements


def infer_shapes(graph: gs.Graph) -> None:
    """Annotate dtypes and shapes of the graph's tensors in place with onnx's shape inference.

    Large constants are reduced to their declared type and dims first (shape inference needs only those;
    small ones such as shape vectors keep their values for data propagation), so large models cost no
    extra copy of their weights. Tensors whose shape inference cannot determine keep what they had.
    """
    # gs.export_onnx cannot write every constant a pass has read; large values are never even copied
    model = export_with_gs(graph, values_up_to=_KEEP_VALUES_UP_TO)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as error:  # onnx raises bare exceptions from C++; inference is best-effort here
        logger.info("shape inference failed, shapes left as they were: %s", error)
        return
    _annotate(graph.tensors().values(), inferred.graph)
    _annotate_subgraphs(graph, inferred.graph)


def _annotate(tensors, inferred: onnx.GraphProto) -> None:
    """Give ``tensors`` (variables) the dtype and shape ``inferred``'s value_info records under their names."""
    known = {info.name: info for info in inferred.value_info}
    for tensor in tensors:
        info = known.get(tensor.name)
        if isinstance(tensor, gs.Variable) and info is not None and info.type.HasField("tensor_type"):
            tensor_type = info.type.tensor_type
            if tensor_type.elem_type:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            if tensor_type.HasField("shape"):
                tensor.shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                                for d in tensor_type.shape.dim]


def _annotate_subgraphs(graph: gs.Graph, inferred: onnx.GraphProto) -> None:
    """The same for the tensors made inside If/Loop/Scan bodies, from each body's own value_info (onnx infers
    them there too; without this, passes that need a shape declined everything inside subgraphs). The
    exported graph has the gs graph's nodes in the same order; a body is paired with the same node's
    attribute of the same name, and only tensors written by the body's own nodes are annotated (sibling
    bodies may reuse a name)."""
    if len(graph.nodes) != len(inferred.node):
        return
    for node, proto in zip(graph.nodes, inferred.node, strict=True):
        if node.op != proto.op_type:
            return
        bodies = {a.name: a.g for a in proto.attribute if a.type == onnx.AttributeProto.GRAPH}
        for key, value in node.attrs.items():
            if isinstance(value, gs.Graph) and key in bodies:
                _annotate([t for inner in value.nodes for t in inner.outputs], bodies[key])
                _annotate_subgraphs(value, bodies[key])

