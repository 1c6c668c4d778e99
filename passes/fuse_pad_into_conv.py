"""fuse-pad-into-conv: fold a zero constant Pad on the spatial axes into the ``pads`` of the Conv or
AveragePool that reads it.

Algebra. Conv with ``pads`` reads its input as if surrounded by zeros; so does AveragePool, and with
``count_include_pad=1`` it also counts those zeros in each window's divisor, exactly as it counts explicit
zeros. Hence, for non-negative pads p on the spatial axes only (axes 2...),
    Conv(Pad(x, p, mode=constant, value=0), pads=q) = Conv(x, pads=q + p)
    AveragePool(Pad(x, p, ...), pads=q, count_include_pad=1) = AveragePool(x, pads=q + p, count_include_pad=1)
An AveragePool with ``count_include_pad=0`` and no pads of its own counts the explicit zeros, so it becomes
``count_include_pad=1`` with the pads. ``auto_pad=VALID`` means no padding and becomes ``NOTSET`` with the
pads. The values computed are the same sums of the same products: outputs are bitwise equal.

Pad forms: ``pads`` and ``value`` attributes before opset 11 (``paddings`` in opset 1); from opset 11 the
``pads`` and optional ``constant_value`` inputs, which must be constant (initializers or Constant nodes); from
opset 18 an optional constant ``axes`` input (mapping it onto all axes needs the rank: from the Pad's input
shape or the consumer's kernel).

Rule ``pad_conv`` (stats ``rewrites.pad_conv`` / ``skipped.pad_conv.<reason>``). Declines:
``pad_mode_not_constant`` (reflect, edge, wrap); ``pads_not_constant``; ``pad_value_not_constant``;
``pad_value_not_zero`` (including -0.0, whose sign could reach the output); ``axes_not_constant``; ``rank_unknown``
(an ``axes`` input and no known rank, or pads or axes that do not fit the rank); ``negative_pads`` (cropping);
``pads_on_non_spatial_axes`` (batch or channel padded); ``auto_pad_not_notset`` (SAME_UPPER/SAME_LOWER);
``pool_excludes_padding`` (AveragePool with ``count_include_pad=0`` and pads of its own, or before opset 7, where
it has no ``count_include_pad`` to count the pads); ``pool_ceil_mode`` (with ``ceil_mode=1`` a window starting in
the padding is dropped, one starting on explicit zeros is not: the output shape could change);
``pool_pads_exceed_kernel`` (a pool's pads must stay smaller than its kernel, as ORT requires);
``padded_tensor_used_as_weight`` (the Conv also reads the padded tensor as weight or bias); and what the fusion
driver refuses for every rule (``intermediate_is_graph_output``, ``intermediate_has_other_consumers``).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.fusion import FusionPass, FusionRule, Match
from graphopt.rewrite import NameAllocator, constant_value, remove_node


def _pad_amounts(pad: gs.Node, rank: int | None, opset: int) -> np.ndarray | str:
    """Pads for every axis as [begin_0, ..., begin_r-1, end_0, ..., end_r-1], or the reason they are not
    usable (not constant, not zero-valued constant padding, ...)."""
    if pad.attrs.get("mode", "constant") != "constant":
        return "pad_mode_not_constant"
    if opset < 11:
        pads = pad.attrs.get("pads", pad.attrs.get("paddings"))
        value = np.asarray(pad.attrs.get("value", 0.0))
        if pads is None:
            return "pads_not_constant"
        pads = np.asarray(pads, np.int64)
    else:
        inputs = list(pad.inputs) + [gs.Variable.empty()] * (4 - len(pad.inputs))
        pads_input, value_input, axes_input = inputs[1], inputs[2], inputs[3]
        pads = constant_value(pads_input)
        if pads is None:
            return "pads_not_constant"
        pads = pads.astype(np.int64).reshape(-1)
        value = constant_value(value_input) if value_input.name else np.zeros(())
        if value is None:
            return "pad_value_not_constant"
        if axes_input.name:
            pads = _pads_over_all_axes(pads, axes_input, rank)
            if isinstance(pads, str):
                return pads
    if value.size != 1 or value.reshape(-1)[0] != 0 or np.signbit(value.reshape(-1)[0]):
        return "pad_value_not_zero"
    if (pads < 0).any():
        return "negative_pads"
    return pads


def _pads_over_all_axes(pads: np.ndarray, axes_input: gs.Tensor, rank: int | None) -> np.ndarray | str:
    axes = constant_value(axes_input)
    if axes is None:
        return "axes_not_constant"
    if rank is None:
        return "rank_unknown"
    axes = axes.astype(np.int64).reshape(-1)
    if pads.size != 2 * axes.size or ((axes < -rank) | (axes >= rank)).any():
        return "rank_unknown"
    full = np.zeros(2 * rank, np.int64)
    for index, axis in enumerate(axes % rank):
        full[axis], full[rank + axis] = pads[index], pads[len(axes) + index]
    return full


def _consumer_rank(layer: gs.Node) -> int | None:
    """The rank of the tensor the Conv or AveragePool reads, from its kernel (weight or kernel_shape)."""
    if "kernel_shape" in layer.attrs:
        return len(layer.attrs["kernel_shape"]) + 2
    if layer.op == "Conv" and len(layer.inputs) > 1 and layer.inputs[1].shape is not None:
        return len(layer.inputs[1].shape)
    return None


def _merged_pads(layer: gs.Node, pads: np.ndarray) -> np.ndarray:
    """The layer's own spatial pads plus the Pad's spatial pads, in the layer's layout."""
    rank = len(pads) // 2
    existing = np.asarray(layer.attrs.get("pads", [0] * (2 * rank - 4)), np.int64)
    return existing + np.concatenate([pads[2:rank], pads[rank + 2:]])


def _pool_reason(pool: gs.Node, merged: np.ndarray, opset: int) -> str | None:
    if pool.attrs.get("ceil_mode", 0):
        return "pool_ceil_mode"
    if opset < 7 or (not pool.attrs.get("count_include_pad", 0) and any(pool.attrs.get("pads", []))):
        return "pool_excludes_padding"
    kernel = np.asarray(pool.attrs.get("kernel_shape", []), np.int64)
    if len(kernel) * 2 != len(merged) or (merged >= np.concatenate([kernel, kernel])).any():
        return "pool_pads_exceed_kernel"
    return None


class PadConvRule(FusionRule):
    name = "pad_conv"
    pattern = ("Pad", "Conv|AveragePool")

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        pad, layer = match.nodes
        if any(tensor is pad.outputs[0] for tensor in layer.inputs[1:]):
            return "padded_tensor_used_as_weight"
        pads = self._pads(match, graph)
        if isinstance(pads, str):
            return pads
        rank = len(pads) // 2
        spatial_pads = len(match.last.attrs.get("pads", [0] * (2 * rank - 4)))
        if len(pads) % 2 or rank < 3 or spatial_pads != 2 * rank - 4:
            return "rank_unknown"
        if pads[:2].any() or pads[rank:rank + 2].any():
            return "pads_on_non_spatial_axes"
        if layer.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return "auto_pad_not_notset"
        if layer.op == "AveragePool":
            return _pool_reason(layer, _merged_pads(layer, pads), graph.opset)
        return None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        pad, layer = match.nodes
        layer.attrs["pads"] = [int(p) for p in _merged_pads(layer, self._pads(match, graph))]
        if layer.attrs.get("auto_pad", "NOTSET") == "VALID":
            layer.attrs["auto_pad"] = "NOTSET"
        if layer.op == "AveragePool":
            layer.attrs["count_include_pad"] = 1
        layer.inputs[0] = pad.inputs[0]
        remove_node(graph, pad)

    @staticmethod
    def _pads(match: Match, graph: gs.Graph) -> np.ndarray | str:
        pad, layer = match.nodes
        shape = pad.inputs[0].shape
        rank = len(shape) if shape is not None else _consumer_rank(layer)
        return _pad_amounts(pad, rank, graph.opset)


class FusePadIntoConv(FusionPass):
    name = "fuse-pad-into-conv"
    summary = "fold a zero constant spatial Pad into the pads of the following Conv or AveragePool"
    rules = (PadConvRule(),)
