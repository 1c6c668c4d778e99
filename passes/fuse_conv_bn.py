"""fuse-conv-bn: fold an inference BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul before it.

Algebra. BatchNormalization computes, per channel c,
    y = gamma[c] * (x - mean[c]) / sqrt(var[c] + eps) + beta[c]  =  s[c] * x + (beta[c] - s[c] * mean[c]),
with s = gamma / sqrt(var + eps). When x = W * in + b is linear in the layer's weights with channel c in
output-channel position, the BatchNormalization is absorbed:
    W'[c] = s[c] * W[c]        b'[c] = s[c] * (b[c] - mean[c]) + beta[c]        (b = 0 when absent)
Output channel c is axis 0 of a Conv weight [C_out, C_in/g, k...]; for ConvTranspose (weight
[C_in, C_out/g, k...]) it is index (i // (C_in/g)) * (C_out/g) + j of weight [i, j]; for Gemm it is column c
of B (row c when transB=1); for MatMul with a constant 2-D weight [K, N] and a rank-2 output it is column c,
and the pair becomes a Gemm with bias. s and b' are computed in float64; each element of W' is the float64
product of W[c] and s[c], rounded once to the weight's dtype (no float64 copy of the weight is made: numpy
multiplies in float64 and casts into the result a buffer at a time). The bias is stored in the weight's dtype.

Declines (``skipped.conv_bn.<reason>``): weights or BatchNormalization parameters not constant; a float type
other than float32/float64; BatchNormalization in training mode or with its running statistics used, or
with parameters that are not one value per channel (``spatial=0`` before opset 9);
a MatMul whose output is not rank 2 (the BatchNormalization channel would not be the MatMul's feature axis)
or whose first input's rank is unknown; Gemm with a bias that is not a constant vector of length N or with
alpha/beta other than 1; and what the fusion driver refuses for every rule (shared weights, escaping
intermediates).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.fusion import FusionPass, FusionRule, Match, absorb_with_bias
from graphopt.rewrite import NameAllocator, constant_array

_FLOATS = (np.float32, np.float64)


class ConvBatchNormRule(FusionRule):
    name = "conv_bn"
    pattern = ("Conv|ConvTranspose|Gemm|MatMul", "BatchNormalization")

    def match(self, node: gs.Node) -> Match | None:
        match = super().match(node)
        if match is None:
            return None
        layer = match.nodes[0]
        match.weights = [t for t in layer.inputs[1:3] if isinstance(t, gs.Constant)]
        return match

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        layer, norm = match.nodes
        if len(layer.inputs) < 2 or not isinstance(layer.inputs[1], gs.Constant):
            return "weight_not_constant"
        if len(layer.inputs) > 2 and layer.inputs[2].name and not isinstance(layer.inputs[2], gs.Constant):
            return "bias_not_constant"
        if not all(isinstance(t, gs.Constant) for t in norm.inputs[1:5]):
            return "bn_params_not_constant"
        if norm.attrs.get("training_mode", 0) or any(t.name for t in norm.outputs[1:]):
            return "bn_training_mode"
        if any(len(t.shape) != 1 for t in norm.inputs[1:5]):  # spatial=0 in opset < 9
            return "bn_params_not_per_channel"
        if not any(layer.inputs[1].dtype == dtype for dtype in _FLOATS):
            return "unsupported_dtype"
        return _check_layer(layer, norm)

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        layer, norm = match.nodes
        gamma, beta, mean, var = (constant_array(t).astype(np.float64) for t in norm.inputs[1:5])
        scale = gamma / np.sqrt(var + norm.attrs.get("epsilon", 1e-5))
        weight = layer.inputs[1]
        has_bias = len(layer.inputs) > 2 and layer.inputs[2].name
        old_bias = constant_array(layer.inputs[2]).astype(np.float64) if has_bias else np.zeros_like(scale)
        new_weight = scale_output_channels(layer, constant_array(weight), scale)
        new_bias = scale * (old_bias - mean) + beta
        layer.inputs[1] = gs.Constant(names.fresh(f"{weight.name}_bn"), new_weight)
        bias = gs.Constant(names.fresh(f"{norm.outputs[0].name}_bias"), new_bias.astype(new_weight.dtype))
        if layer.op == "MatMul":
            layer.op, layer.attrs = "Gemm", {}
        absorb_with_bias(graph, layer, norm, bias)


def _check_layer(layer: gs.Node, norm: gs.Node) -> str | None:
    shape = tuple(layer.inputs[1].shape)
    if layer.op in ("Conv", "ConvTranspose"):
        return None if len(shape) >= 3 else "weight_rank"
    if len(shape) != 2:
        return "weight_rank"
    if layer.op == "Gemm":
        if layer.attrs.get("alpha", 1.0) != 1.0 or layer.attrs.get("beta", 1.0) != 1.0 or layer.attrs.get("transA", 0):
            return "gemm_attributes"
        columns = shape[0] if layer.attrs.get("transB", 0) else shape[1]
        if len(layer.inputs) > 2 and layer.inputs[2].name and tuple(layer.inputs[2].shape) != (columns,):
            return "gemm_bias_not_vector"
        return None
    data = layer.inputs[0]
    if data.shape is None or len(data.shape) != 2:
        return "matmul_output_not_2d"
    return None


def scale_output_channels(layer: gs.Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``weight`` of ``layer`` (Conv, ConvTranspose, Gemm or MatMul) with output channel c multiplied by the
    float64 ``scale[c]``: each product computed in float64 and rounded once to the weight's dtype, without a
    float64 copy of the weight. The weight is viewed as rows whose last axis is long and contiguous, so that
    numpy's inner loop runs over whole rows rather than over kernel positions."""
    rows, factors = _channel_rows(layer, weight, scale)
    result = np.empty(weight.shape, weight.dtype)
    np.multiply(rows, factors, out=result.reshape(rows.shape), dtype=np.float64, casting="unsafe")
    return result


def _channel_rows(layer: gs.Node, weight: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` reshaped (a view) and ``scale`` laid out so that they broadcast channel against channel."""
    if layer.op == "Conv":
        return weight.reshape(weight.shape[0], -1), scale[:, None]
    if layer.op == "ConvTranspose":  # weight [C_in, C_out/g, k...]: input i of group i // (C_in/g)
        group = layer.attrs.get("group", 1)
        in_per_group, out_per_group = weight.shape[0] // group, weight.shape[1]
        per_input = scale.reshape(group, 1, out_per_group).repeat(in_per_group, axis=1).reshape(-1, out_per_group)
        return weight.reshape(*weight.shape[:2], -1), per_input[:, :, None]
    if layer.op == "Gemm" and layer.attrs.get("transB", 0):
        return weight, scale[:, None]
    return weight, scale[None, :]


class FuseConvBatchNorm(FusionPass):
    name = "fuse-conv-bn"
    summary = "fold inference BatchNormalization into the preceding Conv, ConvTranspose, Gemm or MatMul"
    rules = (ConvBatchNormRule(),)
