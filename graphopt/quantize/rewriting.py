"""Writing a placement (``graphopt.quantize.placement``) into the graph: the quantization parameters of
calibrated ranges, the QuantizeLinear/DequantizeLinear nodes and quantized constants, and the rewrites the
CPU target asks for around them.

Math. QuantizeLinear computes ``q = saturate(round(x / s) + z)`` and DequantizeLinear ``x' = (q - z) * s``;
``round`` is round-half-to-even, ``saturate`` clamps to the type's range (uint8 [0, 255], int8 [-128, 127],
int32 [-2^31, 2^31 - 1]). From a calibrated range [lo, hi] (widened to include 0, so that 0 is exact):

* activations, asymmetric uint8 (target ``cpu``): ``s = (hi - lo) / 255``, ``z = saturate(round(-lo / s))``;
* activations, symmetric int8 (target ``tensorrt``): ``s = max(|lo|, |hi|) / 127``, ``z = 0``;
* a range [0, 0] (a tensor that is always 0) gets ``s = 1``: any positive scale represents it exactly.

Weights are int8, symmetric, per output channel c (``per_channel=true``) along the weight's output-channel
axis: 0 for Conv ([C_out, C_in/g, k...]), 1 for ConvTranspose ([C_in, C_out/g, k...]), 0 for Gemm with
``transB=1`` ([N, K]) and 1 otherwise ([K, N]), the last axis for MatMul ([K, N]);
``s_w[c] = max|W[c]| / 127``, ``z_w = 0``, so ``W_q[c] = round(W[c] / s_w[c])`` lies in [-127, 127]. With
``per_channel=false`` one scale covers the whole weight. Biases (target ``cpu``) are int32 with
``s_b[c] = s_x * s_w[c]`` (s_x: the scale of the layer's input) and ``z_b = 0``: ``b_q[c] = round(b[c] / s_b[c])``,
which is exactly what the int8 kernel adds to its int32 accumulator ``sum(x_q - z_x) * W_q``. Where
``|b[c]| / s_b[c]`` would overflow int32 (a channel whose weights are all but zero, e.g. after folding a
BatchNormalization with gamma ~ 0), the weight scale is widened to ``s_w[c] = |b[c]| / (s_x * (2^31 - 1))``;
a channel with zero weights and zero bias gets ``s_w[c] = 1``. Scales are stored as float32 and every
quantized value is computed from the stored float32 scale, so the model's DequantizeLinear gives back exactly
the values quantization chose. TensorRT keeps biases float (its parser rejects int32 DequantizeLinear input;
``graphopt.validate.tensorrt_lint``), so for ``target=tensorrt`` biases stay float32.

Graph inputs and outputs keep their names. A quantized tensor produced by a quantized node is taken over by
the DequantizeLinear (the producer writes a new tensor ``<name>_float``), so its readers, a graph output of
that name included, read the dequantized value (the int8 kernel writes int8 only). Any other quantized
tensor (a graph input, a float node's output) keeps its readers; only the quantized nodes read the new
``<name>_dequantized``. A weight shared by several quantized nodes is quantized once per axis; a node that
keeps reading it in float keeps the float initializer.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.pass_base import Diagnostic
from graphopt.quantize import space_to_depth
from graphopt.quantize.placement import (
    ACTIVATIONS,
    Placement,
    QuantizedTensor,
    TargetRules,
    bias_input,
    node_key,
    output_channel_axis,
    space_to_depth_plan,
)
from graphopt.quantize.weights import QuantParams, positive_scale, quantize, weight_params
from graphopt.rewrite import NameAllocator, constant_array, is_standard_op

Ranges = dict[str, tuple[float, float]]  # calibrated (low, high) by tensor name


# ---------------------------------------------------------------------------------------------------------
# Quantization parameters: the math of the module docstring (weights: graphopt.quantize.weights)


def activation_params(low: float, high: float, signed: bool) -> QuantParams:
    """Per-tensor parameters of a calibrated range: asymmetric uint8, or symmetric int8 when ``signed``."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if signed:
        scale = positive_scale(np.float32(max(-low, high) / 127))
        return QuantParams(scale, np.array(0, np.int8))
    scale = positive_scale(np.float32((high - low) / 255))
    zero_point = np.clip(np.rint(-low / np.float64(scale)), 0, 255)
    return QuantParams(scale, np.array(zero_point, np.uint8))


def bias_params(input_scale: np.float32, weight: QuantParams) -> QuantParams:
    """int32 parameters of a bias: ``s_b = s_x * s_w`` (per channel when the weight is), zero point 0."""
    scale = (np.float64(input_scale) * weight.scale.astype(np.float64)).astype(np.float32)
    return QuantParams(scale, np.zeros(scale.shape, np.int32), 0 if weight.axis is not None else None)


def parameters(placement: Placement, ranges: Ranges,
                signed: bool) -> dict[int, QuantParams]:
    """Quantization parameters of every tensor that gets Q/DQ (by id): from its calibrated range, or those of
    the tensor it shares them with (``placement.tensors`` is in graph order, so that one comes first)."""
    params: dict[int, QuantParams] = {}
    for key, entry in placement.tensors.items():
        if entry.same_as is not None:
            params[key] = params[id(entry.same_as)]
        else:
            params[key] = activation_params(*ranges[entry.tensor.name], signed)
    return params



# ---------------------------------------------------------------------------------------------------------
# Rewriting


class Rewriter:
    """Adds the Q/DQ nodes and quantized constants to the graph; a weight is quantized once per parameters."""

    def __init__(self, graph: gs.Graph, rules: TargetRules, per_channel: bool):
        self.rules, self.per_channel = rules, per_channel
        self.names = NameAllocator(graph)
        self.weights: dict[tuple, gs.Variable] = {}
        self.zero_points: dict[tuple, gs.Constant] = {}
        self.nodes: list[gs.Node] = []

    def weighted(self, node: gs.Node, input_params: QuantParams) -> None:
        """Weight (and, when the target quantizes biases, bias) of ``node`` through DequantizeLinear."""
        weight = node.inputs[1]
        values = constant_array(weight)
        axis = output_channel_axis(node) if self.per_channel else None
        bias = bias_input(node) if self.rules.quantize_bias else None
        bias_values = constant_array(bias) if bias is not None else None
        params = weight_params(values, axis, bias_values, input_params.scale)
        key = (id(weight), axis, params.scale.tobytes())
        if key not in self.weights:
            self.weights[key] = self._dequantized_constant(weight.name, quantize(values, params), params)
        node.inputs[1] = self.weights[key]
        if bias is not None:
            scales = bias_params(input_params.scale, params)
            node.inputs[2] = self._dequantized_constant(bias.name, quantize(bias_values, scales), scales)

    def space_to_depth_stems(self, placement: Placement, params: dict[int, QuantParams]) -> list[Diagnostic]:
        """Rewrite each int8 Conv that ``space_to_depth.plan`` takes and that is the only int8 reader of an
        input no int8 node writes (a graph input, a float node's output) to read it through a float
        SpaceToDepth, whose output is quantized instead with the input's parameters (the same values, moved);
        before the weights are quantized. Returns one diagnostic per Conv rewritten."""
        done = []
        for node in placement.quantized:
            source = node.inputs[0]
            entry = placement.tensors.get(id(source))
            if node.op != "Conv" or entry is None or entry.owned or len(entry.readers) != 1:
                continue
            rewrite = space_to_depth_plan(node)
            if rewrite is None:
                continue
            size = rewrite.blocksize
            shape = [source.shape[0], source.shape[1] * size * size, source.shape[2] // size, source.shape[3] // size]
            moved = gs.Variable(self.names.fresh(f"{source.name}_space_to_depth"), source.dtype, shape)
            self.nodes.append(gs.Node("SpaceToDepth", self.names.fresh(f"{node.name or source.name}_SpaceToDepth"),
                                      {"blocksize": size}, [source], [moved]))
            node.inputs[0] = moved
            node.inputs[1] = gs.Constant(self.names.fresh(f"{node.inputs[1].name}_space_to_depth"), rewrite.weight)
            node.attrs.pop("auto_pad", None)
            node.attrs.update(strides=[1, 1], pads=rewrite.pads, kernel_shape=rewrite.kernel_shape)
            del placement.tensors[id(source)]
            placement.tensors[id(moved)] = dataclasses.replace(entry, tensor=moved)
            params[id(moved)] = params[id(source)]
            channels = f"{source.shape[1]} input channel{'s' if source.shape[1] != 1 else ''}"
            done.append(Diagnostic("info", f"Conv reads its {channels} through "
                                           f"SpaceToDepth({size}) as {shape[1]} channels at stride 1: onnxruntime's "
                                           f"int8 convolution is fast on channels in multiples of "
                                           f"{space_to_depth.CHANNEL_MULTIPLE}", node.name or node_key(node)))
        return done

    def activation(self, entry: QuantizedTensor, params: QuantParams) -> None:
        """A Q/DQ pair on ``entry.tensor``: taken over by the DequantizeLinear when owned, else read by the
        int8 readers only."""
        tensor = entry.tensor
        if entry.owned:
            source = gs.Variable(self.names.fresh(f"{tensor.name}_float"), tensor.dtype, tensor.shape)
            producer = tensor.inputs[0]
            producer.outputs[next(i for i, t in enumerate(producer.outputs) if t is tensor)] = source
            dequantized = tensor
        else:
            source = tensor
            dequantized = gs.Variable(self.names.fresh(f"{tensor.name}_dequantized"), np.float32, tensor.shape)
            for reader in entry.readers:
                for index, read in enumerate(reader.inputs):
                    if read is tensor:
                        reader.inputs[index] = dequantized
        scale, zero_point = self._parameters(tensor.name, params)
        quantized = gs.Variable(self.names.fresh(f"{tensor.name}_quantized"), params.zero_point.dtype, tensor.shape)
        self._node("QuantizeLinear", tensor.name, [source, scale, zero_point], quantized, params)
        self._node("DequantizeLinear", tensor.name, [quantized, scale, zero_point], dequantized, params)

    def _dequantized_constant(self, name: str, values: np.ndarray, params: QuantParams) -> gs.Variable:
        """A quantized initializer ``values`` and the DequantizeLinear that reads it; returns its output."""
        quantized = gs.Constant(self.names.fresh(f"{name}_quantized"), values)
        scale, zero_point = self._parameters(name, params)
        dequantized = gs.Variable(self.names.fresh(f"{name}_dequantized"), np.float32, list(values.shape))
        self._node("DequantizeLinear", name, [quantized, scale, zero_point], dequantized, params)
        return dequantized

    def _parameters(self, name: str, params: QuantParams) -> tuple[gs.Constant, gs.Constant]:
        """The scale and zero-point constants; equal zero points (all zeros, mostly) are one constant."""
        zero_point = params.zero_point
        key = (zero_point.dtype.str, zero_point.shape, zero_point.tobytes())
        if key not in self.zero_points:
            self.zero_points[key] = gs.Constant(self.names.fresh(f"{name}_zero_point"), zero_point)
        return gs.Constant(self.names.fresh(f"{name}_scale"), params.scale), self.zero_points[key]

    def _node(self, op: str, name: str, inputs: list[gs.Tensor], output: gs.Variable, params: QuantParams) -> None:
        attrs = {"axis": params.axis} if params.axis is not None else {}
        self.nodes.append(gs.Node(op, self.names.fresh(f"{name}_{op}"), attrs, inputs, [output]))


def shield_float_max_pools(graph: gs.Graph, placement: Placement, names: NameAllocator) -> None:
    """Each float Relu/Clip -> MaxPool whose output is quantized becomes MaxPool -> Relu/Clip (see the module
    docstring): the quantized tensor keeps its name, its values and its readers; the Relu/Clip must be read
    by the MaxPool only and not be absorbed, the MaxPool must have no Indices output."""
    int8 = {id(node) for node in placement.quantized} | {id(node) for node in placement.absorbed.values()}
    for entry in placement.tensors.values():
        pooled = entry.tensor
        pool = pooled.inputs[0] if len(pooled.inputs) == 1 else None
        if pool is None or not is_standard_op(pool, "MaxPool") or id(pool) in int8 or len(pool.outputs) != 1:
            continue
        before = pool.inputs[0]
        activation = before.inputs[0] if len(before.inputs) == 1 else None
        if activation is None or activation.op not in ACTIVATIONS or not is_standard_op(activation, activation.op) \
                or id(activation) in int8 or len(before.outputs) != 1 or before in graph.outputs:
            continue
        between = gs.Variable(names.fresh(f"{pooled.name}_before_{activation.op}"), pooled.dtype, pooled.shape)
        pool.inputs[0], pool.outputs[0] = activation.inputs[0], between
        activation.inputs[0], activation.outputs[0] = between, pooled
