"""fuse-conv-mul-add: fold per-channel constant Mul, Add, Sub and Div after a Conv or ConvTranspose into its
weight and bias.

Algebra. A Conv computes, per output channel c, y[c] = (W * x)[c] + b[c] (b = 0 when absent). A following
per-channel constant step keeps it of that form:
    y * s  ->  W'[c] = s[c] W[c],   b'[c] = s[c] b[c]          y / d  ->  the same with s = 1 / d
    y + a  ->  b'[c] = b[c] + a[c]                              y - a  ->  b'[c] = b[c] - a[c]
(Mul and Add in either operand order; Sub and Div only with the Conv side first). The new weight and bias
are computed in float64 and stored in the weight's dtype (the weight without a float64 copy of it, as in
fuse-conv-bn: ``passes.fuse_conv_bn.scale_output_channels``).
Output channel c is axis 0 of a Conv weight [C_out, C_in/g, k...]; for ConvTranspose (weight
[C_in, C_out/g, k...]) it is index (i // (C_in/g)) * (C_out/g) + j of weight [i, j]. A constant is
per-channel when, right-aligned on the output rank r (the weight's rank), it is [1, C or 1, 1, ...]: a
scalar, [1], [C, 1, 1], [1, C, 1, 1], ...; anything else (a vector along the last axis, a batch or spatial
dimension, a rank above r, which would enlarge the output) is not. Folding reassociates float arithmetic:
outputs agree within float rounding.

Rule ``conv_mul_add`` (stats ``rewrites.conv_mul_add`` / ``skipped.conv_mul_add.<reason>``). A match is a Conv
and one step reading its output; the Conv is kept (it absorbs the step), so the driver matches it again with
the next step in the same sweep and a whole chain folds in one run (one rewrite per step). A constant operand
is an initializer or a Constant node (``graphopt.rewrite.constant_value``); the weight and bias must be
initializers, since they are replaced.

Declines: ``weight_not_constant``; ``bias_not_constant``; ``unsupported_dtype`` (not float32/float64);
``operand_not_constant`` (e.g. a residual Add of another tensor); ``operand_not_per_channel``;
``operand_not_finite`` (an inf or NaN, or a Div by zero, would not fold exactly); and what the fusion driver
refuses for every rule (``intermediate_is_graph_output``, ``intermediate_has_other_consumers``,
``shared_weight`` for the Conv's bias, or its weight when the step scales).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.fusion import FusionPass, FusionRule, Match, absorb_with_bias, producer
from graphopt.rewrite import NameAllocator, constant_array, constant_value, is_standard_op
from passes.fuse_conv_bn import scale_output_channels

_FLOATS = (np.float32, np.float64)
_LAYERS = ("Conv", "ConvTranspose")
_STEPS = ("Mul", "Add", "Sub", "Div")
_COMMUTATIVE = ("Mul", "Add")


def _layer_output(step: gs.Node) -> gs.Tensor | None:
    """The operand of ``step`` that a Conv or ConvTranspose produces, or None. Of two (a residual Add of two
    Convs), the one read by this step only is preferred."""
    if len(step.inputs) != 2:
        return None
    candidates = step.inputs if step.op in _COMMUTATIVE else step.inputs[:1]
    for tensor in sorted(candidates, key=lambda tensor: len(tensor.outputs) != 1):  # stable otherwise
        layer = producer(tensor, *_LAYERS)
        if layer is not None and layer.outputs[0] is tensor:
            return tensor
    return None


def _operand(step: gs.Node, layer_output: gs.Tensor) -> gs.Tensor:
    first, second = step.inputs
    return second if first is layer_output else first


def _layer_geometry(layer: gs.Node) -> tuple[int, int] | None:
    """(output channels, output rank) from a constant weight, or None."""
    weight = layer.inputs[1] if len(layer.inputs) > 1 else None
    if not isinstance(weight, gs.Constant) or len(weight.shape) < 3:
        return None
    shape = tuple(weight.shape)
    channels = shape[0] if layer.op == "Conv" else shape[1] * layer.attrs.get("group", 1)
    return channels, len(shape)


def _per_channel(values: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``values`` as one number per output channel, or None if it is not per-channel for an output of
    ``rank`` with ``channels`` channels."""
    if values.ndim > rank:
        return None
    padded = values.reshape((1,) * (rank - values.ndim) + values.shape)
    if any(d != 1 for axis, d in enumerate(padded.shape) if axis != 1) or padded.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(padded.reshape(-1).astype(np.float64), (channels,))


def _step_reason(step: gs.Node, layer_output: gs.Tensor, channels: int, rank: int) -> str | None:
    operand = constant_value(_operand(step, layer_output))
    if operand is None:
        return "operand_not_constant"
    vector = _per_channel(operand, channels, rank)
    if vector is None:
        return "operand_not_per_channel"
    with np.errstate(divide="ignore"):
        if not np.isfinite(vector).all() or (step.op == "Div" and not np.isfinite(1.0 / vector).all()):
            return "operand_not_finite"
    return None


class ConvMulAddRule(FusionRule):
    name = "conv_mul_add"
    pattern = ("Conv|ConvTranspose", "Mul|Add|Sub|Div")

    def match(self, node: gs.Node) -> Match | None:
        if not is_standard_op(node, *_STEPS):
            return None
        layer_output = _layer_output(node)
        if layer_output is None:
            return None
        layer = layer_output.inputs[0]
        # The rewrite replaces the bias, and the weight only when the step scales.
        weights = [t for t in layer.inputs[1 if node.op in ("Mul", "Div") else 2:3] if isinstance(t, gs.Constant)]
        return Match([layer, node], weights)

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        layer = match.nodes[0]
        geometry = _layer_geometry(layer)
        if geometry is None:
            return "weight_not_constant"
        if len(layer.inputs) > 2 and layer.inputs[2].name and not isinstance(layer.inputs[2], gs.Constant):
            return "bias_not_constant"
        if not any(layer.inputs[1].dtype == dtype for dtype in _FLOATS):
            return "unsupported_dtype"
        return _step_reason(match.last, layer.outputs[0], *geometry)

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        layer, step = match.nodes
        channels, rank = _layer_geometry(layer)
        weight = layer.inputs[1]
        dtype = weight.dtype
        has_bias = len(layer.inputs) > 2 and layer.inputs[2].name
        bias = constant_array(layer.inputs[2]).astype(np.float64) if has_bias else np.zeros(channels)
        vector = _per_channel(constant_value(_operand(step, layer.outputs[0])), channels, rank)
        scale = {"Mul": vector, "Div": 1.0 / vector}.get(step.op)
        if scale is not None:
            new_weight = scale_output_channels(layer, constant_array(weight), scale)
            layer.inputs[1] = gs.Constant(names.fresh(f"{weight.name}_scaled"), new_weight)
            bias = bias * scale
        else:
            bias = bias + vector if step.op == "Add" else bias - vector
        new_bias = gs.Constant(names.fresh(f"{step.outputs[0].name}_bias"), bias.astype(dtype))
        absorb_with_bias(graph, layer, step, new_bias)


class FuseConvMulAdd(FusionPass):
    name = "fuse-conv-mul-add"
    summary = "fold per-channel constant Mul/Add/Sub/Div after a Conv or ConvTranspose into its weight and bias"
    rules = (ConvMulAddRule(),)
