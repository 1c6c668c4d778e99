"""Per-layer divergence: where did a candidate model start to differ from its reference?

Both models are copied with every top-level node output exposed as a graph output, run once on the given
feeds on onnxruntime's CPU provider with its graph optimizations off (``numerics.run_model``), and every
tensor that exists in both is compared by name, in the reference's node order (ONNX requires nodes in
topological order, and ``graphopt.load`` checks it). The first comparison beyond tolerance is the first
divergence: the layer to look at.

Contract: graphopt's passes never reuse a tensor name for a different value, so a name present in both models
holds the same value in both. A tensor that a pass removed (a Conv output once BatchNormalization is folded
into the Conv, an Identity's output) has no counterpart in the candidate; it is counted as ``unmatched``, not
compared. Values that are not tensors (sequences, maps) are not compared either.

Tolerance: float tensors agree when ``|cand - ref| <= atol + rtol * |ref|`` elementwise (numpy's ``allclose``
rule); integer, bool and string tensors must be equal. Errors and cosine come from ``numerics.compare_tensor``.

Exposed outputs are declared by name only (``numerics.with_outputs``): onnxruntime accepts a graph output
without a type and takes it from its own type inference when it resolves the graph.

Memory: every intermediate tensor of both models is held at once, so callers pass one small batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from graphopt.validate.numerics import compare_tensor, run_model, with_outputs


@dataclasses.dataclass(frozen=True)
class LayerComparison:
    """One intermediate tensor of the reference against the same-named tensor of the candidate."""

    tensor: str
    node: str
    op_type: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    within_tolerance: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PerLayerResult:
    """The comparisons in the reference's topological order, and how many reference tensors had no match."""

    compared: tuple[LayerComparison, ...]
    unmatched: int

    @property
    def first_divergence(self) -> LayerComparison | None:
        """The first compared tensor beyond tolerance, or None when every compared tensor agrees."""
        return next((c for c in self.compared if not c.within_tolerance), None)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {"compared": [c.to_dict() for c in self.compared], "unmatched": self.unmatched,
                "first_divergence": first.to_dict() if first is not None else None}


def compare_layers(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                   rtol: float = 1e-4, atol: float = 1e-5) -> PerLayerResult:
    """Run both models on ``feeds`` with every node output exposed and compare the tensors they share.

    The models passed in are not modified."""
    reference_values = run_model(_with_node_outputs(reference), feeds)
    candidate_values = run_model(_with_node_outputs(candidate), feeds)
    compared, unmatched = [], 0
    for node in reference.graph.node:
        for name in filter(None, node.output):
            if name not in candidate_values:
                unmatched += 1
            elif _both_tensors(reference_values[name], candidate_values[name]):
                compared.append(_compare_layer(node, name, reference_values[name], candidate_values[name],
                                               rtol, atol))
    return PerLayerResult(tuple(compared), unmatched)


def _with_node_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also list every top-level node output."""
    return with_outputs(model, (name for node in model.graph.node for name in node.output if name))


def _both_tensors(reference: Any, candidate: Any) -> bool:
    return isinstance(reference, np.ndarray) and isinstance(candidate, np.ndarray)


def _compare_layer(node: onnx.NodeProto, name: str, reference: np.ndarray, candidate: np.ndarray,
                   rtol: float, atol: float) -> LayerComparison:
    """Float tensors by tolerance; every other type exactly (zero tolerance)."""
    if reference.dtype.kind != "f":
        rtol, atol = 0.0, 0.0
    result = compare_tensor(name, reference, candidate, rtol, atol)
    return LayerComparison(name, node.name, node.op_type, result.max_abs_error, result.max_rel_error,
                           result.cosine, result.within_tolerance)
