"""Analyses of a graph: computed on demand, cached until the graph changes.

``AnalysisCache`` holds one value per analysis function; the pass manager calls ``invalidate()`` after
every pass that changed the graph, so a pass never reads a stale analysis. ``structural_fingerprint`` is the
hash the manager uses to check that a pass's ``changed`` bit is honest. ``infer_shapes`` establishes the
``shapes-inferred`` invariant with onnx's own shape inference.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.fidelity import export_with_gs

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
        _feed_array(digest, tensor.values)
    return tensor.name


def _feed_value(digest: hashlib._Hash, value: Any) -> None:
    if isinstance(value, gs.Graph):
        _feed_graph(digest, value)
    elif isinstance(value, gs.Constant):
        _feed_array(digest, value.values)
    elif isinstance(value, np.ndarray):
        _feed_array(digest, value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _feed_value(digest, item)
    else:
        digest.update(repr(value).encode())


def _feed_array(digest: hashlib._Hash, array: Any) -> None:
    array = np.asarray(array)
    digest.update(f"{array.dtype} {array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes() if array.dtype != object else repr(array).encode())


_KEEP_VALUES_UP_TO = 4096  # elements


def infer_shapes(graph: gs.Graph) -> None:
    """Annotate dtypes and shapes of the graph's tensors in place with onnx's shape inference.

    Large constants are reduced to their declared type and dims first (shape inference needs only those;
    small ones such as shape vectors keep their values for data propagation), so large models cost no
    extra copy of their weights. Tensors whose shape inference cannot determine keep what they had.
    """
    model = export_with_gs(graph)  # gs.export_onnx cannot write every constant a pass has read
    for initializer in model.graph.initializer:
        if np.prod(initializer.dims, dtype=np.int64) > _KEEP_VALUES_UP_TO:
            _drop_payload(initializer)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as error:  # onnx raises bare exceptions from C++; inference is best-effort here
        logger.info("shape inference failed, shapes left as they were: %s", error)
        return
    known = {info.name: info for info in inferred.graph.value_info}
    for tensor in graph.tensors().values():
        info = known.get(tensor.name)
        if isinstance(tensor, gs.Variable) and info is not None and info.type.HasField("tensor_type"):
            tensor_type = info.type.tensor_type
            if tensor_type.elem_type:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            if tensor_type.HasField("shape"):
                tensor.shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                                for d in tensor_type.shape.dim]


def _drop_payload(tensor: onnx.TensorProto) -> None:
    """Keep a tensor's name, type and dims, and drop its values (shape inference needs only those)."""
    dims, dtype, name = list(tensor.dims), tensor.data_type, tensor.name
    tensor.Clear()
    tensor.name, tensor.data_type = name, dtype
    tensor.dims.extend(dims)
