"""quantize-qdq: static post-training int8 quantization, written as QuantizeLinear/DequantizeLinear (QDQ) pairs
placed where the target runtime fuses them into int8 kernels, and by default (``mode=auto``, see Modes) kept
only where it stays within a fidelity budget and runs faster than float.

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

Placement. Q/DQ go only where the target has an int8 kernel for the node and its neighbours, so that no pair is
left for the runtime to run standalone around a float kernel (what makes int8 slower than float):

* ``cpu`` (onnxruntime's QDQ selectors, ``core/optimizer/qdq_transformer/selectors_actions``): Conv (QLinearConv),
  Gemm (QGemm) and MatMul (QLinearMatMul / MatMulIntegerToFloat) with constant weights are quantized: their
  activation inputs, weights and biases go through DequantizeLinear and their output through a Q/DQ pair.
  Gemm and MatMul that no int8 node reads keep a float output (QGemm and MatMulIntegerToFloat write float,
  so no DequantizeLinear runs standalone after them: a classifier's last Gemm, a transformer's
  MatMul -> Add(bias)). A Relu or Clip (constant bounds) that is the only reader of a quantized output is
  absorbed: the Q/DQ pair goes after it, none between (onnxruntime drops the Relu/Clip
  when the quantized range lies within its bounds: ReluQuantFusion/ClipQuantFusion, or the selectors'
  redundant-clip check; a Relu output's range starts at 0, so z = 0 = the uint8 minimum).
  Nodes next to a quantized node stay int8 when onnxruntime has a selector for them: the data-movement
  "drop" rules (MaxPool, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Slice, Gather, GatherElements,
  Expand, Tile, Resize, Split), whose DequantizeLinear and QuantizeLinear must carry the same scale and zero
  point (so their outputs reuse their input's), and the QLinear kernels with their own output range (Add,
  Mul, Concat, AveragePool, GlobalAveragePool, LeakyRelu, Sigmoid, Softmax). Such a node is quantized only
  when one of its inputs comes from a quantized node (a Q/DQ pair around it alone would not pay), and not
  when no int8 node reads its output and its quantized inputs all come from Gemm/MatMul that would write
  float without it (it would only move the standalone DequantizeLinear past itself).
  Three rules answer to onnxruntime's CPU kernels rather than to its selectors. A Conv on fewer than 8 input
  channels per group (a network's first layer on 1 to 7 channels; counted after the SpaceToDepth rewrite
  below, which gives an RGB stride-2 stem 12), unless it is depthwise (one input channel per group, several
  groups; its int8 kernel is its own), is quantized, but auto mode also tries the variant it chose with such
  Convs in float (reported as ``shallow_conv`` when that one is kept): onnxruntime's QLinearConv is slower
  than its float Conv there (measured at batch 64 on 32x32 inputs, 3x3 kernels to 16 channels: 4.3x slower
  on 1 input channel, 1.7x on 4, even on 8), but in float the layer needs a QuantizeLinear on its output,
  larger than its input, and a layout change, which can cost more at batch 1 (MobileNetV2-style net of
  ``models/``: 1.13x faster than float with the stem in int8, 0.94x with it in float). A first layer's
  rounding is also the largest of a small net's: keeping the small ResNet's stem float halves its logits'
  error. When the output of a float MaxPool
  is quantized and its input is written by a float Relu/Clip read by nothing else, the two trade places
  (``max`` commutes with any non-decreasing function, exactly: ``f(max(a, b)) = max(f(a), f(b))``; padding
  and dilation only choose which values are compared): onnxruntime moves a QuantizeLinear back across a
  MaxPool (its QDQPropagationTransformer) and would run that MaxPool on uint8 in NCHW, 25x slower than the
  float one (measured on the digits CNN: 6.5 ms against 0.24 ms); a Relu/Clip before the QuantizeLinear
  stops the move, and costs a quarter of what it did before a 2x2 pool. An int8 Conv with a stride ``s >= 2``
  on a number of input channels that is no multiple of 4 but becomes one times ``s^2`` (an RGB stem) reads
  its input through a float SpaceToDepth(s), quantized after it, as a stride-1 Conv
  (``graphopt.quantize.space_to_depth``: exactly the same products; ``rewrites.space_to_depth`` in the
  stats): QLinearConv's fast kernels need channels in multiples of 4 (ResNet-50's stem: 2.1 -> 1.1 ms).
* ``tensorrt`` (explicit quantization): Q/DQ on the activation input and the weight of Conv, ConvTranspose,
  Gemm and MatMul only; TensorRT fuses the rest (activations, pooling, the next layer's input quantization)
  itself. Everything is signed int8 with zero point 0, the result passes ``lint_tensorrt`` without errors.

Graph inputs and outputs keep their names. A quantized tensor produced by a quantized node is taken over by
the DequantizeLinear (the producer writes a new tensor ``<name>_float``), so its readers, a graph output of
that name included, read the dequantized value (the int8 kernel writes int8 only). Any other quantized
tensor (a graph input, a float node's output) keeps its readers; only the quantized nodes read the new
``<name>_dequantized``. A weight shared by several quantized nodes is quantized once per axis; a node that
keeps reading it in float keeps the float initializer.

Calibration runs ``graphopt.quantize.calibration.calibrate`` on ``ctx.data`` over the graph as the earlier
passes left it, exported with ``graphopt.fidelity.export_with_gs`` (as analyses export it). That export lacks
only what ``graphopt.fidelity`` restores from the original model when ``optimize`` writes the result: model
fields, doc strings and metadata (no effect on values), value types gs cannot hold (optional, map, opaque:
onnxruntime infers them) and node attributes gs cannot hold. Of the standard ops' attributes these are
Constant's ``sparse_value`` and Optional's ``type`` (and empty lists, which mean what an absent attribute
means for the ops that take them); a Constant left without its value makes onnxruntime refuse the model, so
calibration fails loudly rather than measure other values. Without data the pass declines, unless
``synthetic=true``: random inputs from the declared shapes (``graphopt.data.synthetic_dataset``), with a
warning that the ranges say little about real data.

Modes. ``static`` quantizes every node the placement allows, calibrated on all the data. ``dynamic`` hands the
graph to ``graphopt.quantize.dynamic`` (int8 weights, activations quantized at run time; no data; its own
placement and declines; ``target``, ``method`` and the calibration and budget options do not apply). ``auto`` (the
default, "faithful by construction") holds out ``holdout_fraction`` of the data, calibrates once on the rest
(every tensor any variant may quantize: those of the full placement, see ``place``), and lets
``graphopt.quantize.auto`` search the variants, each the static quantization of a copy of the graph with
some nodes kept in float (``keep_float``): the most sensitive nodes stay float until the held-out outputs
meet the budget (``max_accuracy_drop`` with labels, else ``min_cosine`` and ``min_top1_agreement``), and the
variant found is kept only when it runs at least ``min_speedup`` times as fast as float on the target's
provider. The graph is then quantized as that variant was (same placement), with the ranges calibrated on all
the data when that refit still meets the budget (``graphopt.quantize.auto``, "Refit"; the calibration is fed
the held-out samples after the others, so both sets of ranges cost one pass), else with the variant's own;
or, when no int8 variant is within the budget and fast enough, left as it is (``changed`` false) with a
warning. Stats ``auto.variants``, ``auto.holdout_samples`` and ``auto.refitted``; one info diagnostic per
variant tried, with its verdicts, one for the refit and one for the decision, with the latency.

Declines. The whole pass, with a warning and ``skipped.<reason>``: ``no_data``; ``opset_below_13`` (per-axis
Q/DQ needs opset 13); ``already_quantized`` (the graph holds Q/DQ nodes: running the pass twice changes
nothing); in auto mode ``over_budget`` (no int8 variant met the budget) and ``not_faster`` (the one that did
is slower than ``min_speedup`` allows). Per node, with ``skipped.<reason>`` and an info diagnostic naming the
node (only nodes that compute a float tensor are listed; the reasons are in ``REASONS``): ``sensitive`` (auto
mode kept it in float; the diagnostic gives its error), ``excluded_node``, ``excluded_op_type``,
``no_int8_kernel`` (``left_to_tensorrt`` for target ``tensorrt``), ``no_quantized_input``, ``not_float32``,
``float_neighbours``, ``constant_operand``, ``weight_not_constant``, ``weight_rank``,
``bias_not_constant_vector``, ``gemm_beta``, ``not_fusable`` and ``after_float_output`` (a Relu/Clip that
cannot be absorbed). Only the main graph is
quantized; If/Loop/Scan bodies stay float.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.data import Dataset, synthetic_dataset
from graphopt.fidelity import export_with_gs
from graphopt.pass_base import Diagnostic, Invariant, Option, Pass, PassContext, PassResult
from graphopt.quantize import auto, space_to_depth
from graphopt.quantize.calibration import METHODS, Calibration
from graphopt.quantize.dynamic import quantize_dynamic
from graphopt.quantize.weights import QuantParams, positive_scale, quantize, weight_params
from graphopt.rewrite import NameAllocator, constant_array, constant_value, is_standard_op

logger = logging.getLogger(__name__)

MODES = ("auto", "static", "dynamic")
_QUANTIZATION_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_ACTIVATIONS = frozenset({"Relu", "Clip"})
_MULTI_INPUT_OPS = {"Add": (0, 1), "Mul": (0, 1)}  # data inputs of followers; Concat: all; others: input 0
Ranges = dict[str, tuple[float, float]]  # calibrated (low, high) by tensor name


@dataclasses.dataclass(frozen=True)
class TargetRules:
    """What a target runs in int8. ``weighted``: ops with a quantized weight; ``same_range``: ops whose
    output must reuse their input's scale and zero point; ``own_range``: ops with a calibrated output range;
    ``quantize_outputs``: outputs of quantized nodes get Q/DQ (the int8 kernel writes int8);
    ``quantize_bias``: biases become int32; ``signed``: activations are symmetric int8 (else uint8);
    ``unlisted_reason``: the reason reported for a node of any other op type; ``provider``: the onnxruntime
    provider (short name) the target runs on, where auto mode times the result; ``min_int8_conv_channels``:
    auto mode also tries a Conv on fewer input channels per group (not depthwise) in float;
    ``shield_float_max_pool``: a float Relu/Clip -> MaxPool whose output is quantized becomes MaxPool ->
    Relu/Clip; ``space_to_depth_stems``: a strided int8 Conv on a few input channels reads them through
    SpaceToDepth (both: see the module docstring)."""

    weighted: frozenset[str]
    same_range: frozenset[str]
    own_range: frozenset[str]
    quantize_outputs: bool
    quantize_bias: bool
    signed: bool
    unlisted_reason: str
    provider: str
    min_int8_conv_channels: int = 0
    shield_float_max_pool: bool = False
    space_to_depth_stems: bool = False

    def followers(self) -> frozenset[str]:
        return self.same_range | self.own_range


TARGETS = {
    "cpu": TargetRules(
        weighted=frozenset({"Conv", "Gemm", "MatMul"}),
        same_range=frozenset({"MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice",
                              "Gather", "GatherElements", "Expand", "Tile", "Resize", "Split"}),
        own_range=frozenset({"Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "LeakyRelu",
                             "Sigmoid", "Softmax"}),
        quantize_outputs=True, quantize_bias=True, signed=False, unlisted_reason="no_int8_kernel", provider="cpu",
        min_int8_conv_channels=8, shield_float_max_pool=True, space_to_depth_stems=True),
    "tensorrt": TargetRules(
        weighted=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"}), same_range=frozenset(),
        own_range=frozenset(), quantize_outputs=False, quantize_bias=False, signed=True,
        unlisted_reason="left_to_tensorrt", provider="tensorrt"),
}

REASONS = {
    "excluded_node": "named in exclude_nodes",
    "excluded_op_type": "its op type is in exclude_op_types",
    "sensitive": "mode=auto kept it in float to stay within the budget",
    "no_int8_kernel": "the target has no int8 kernel for it",
    "left_to_tensorrt": "Q/DQ go only on the inputs of Conv, ConvTranspose, Gemm and MatMul; TensorRT picks "
                        "this node's precision itself",
    "no_quantized_input": "no quantized node feeds it, so Q/DQ around it would run standalone",
    "not_float32": "an input or output is not float32",
    "constant_operand": "an activation operand is a constant",
    "weight_not_constant": "its weight is not a constant",
    "weight_rank": "its weight has a rank the int8 kernel does not take",
    "bias_not_constant_vector": "its bias is not a constant vector with one value per output channel",
    "gemm_beta": "Gemm with a bias and beta != 1 (the int8 kernel adds the bias unscaled)",
    "shallow_conv": "it reads few input channels per group: the target's int8 convolution is slower than its "
                    "float one there, and mode=auto found the model faster with it in float",
    "not_fusable": "it cannot be fused into the quantized node before it (that node's output has other readers "
                   "or is a graph output, or its bounds are not constant)",
    "after_float_output": "it follows a Gemm/MatMul that writes float (no int8 node reads its result)",
    "float_neighbours": "no int8 node reads its output and its int8 inputs come from Gemm/MatMul that can write "
                        "float: quantized, it would only move a standalone DequantizeLinear",
}


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


# ---------------------------------------------------------------------------------------------------------
# Placement


@dataclasses.dataclass
class QuantizedTensor:
    """An activation tensor that gets a Q/DQ pair. ``owned``: an int8 node writes it, so the DequantizeLinear
    takes it over and every reader reads the dequantized value; otherwise only ``readers`` (int8 nodes) do.
    ``same_as``: the tensor whose parameters it must reuse (the input of a same-range node), else None."""

    tensor: gs.Variable
    readers: list[gs.Node] = dataclasses.field(default_factory=list)
    owned: bool = False
    same_as: gs.Variable | None = None


@dataclasses.dataclass
class Placement:
    """Which nodes run in int8 (``quantized``, in graph order), which stay float and why (``skipped``), the
    Relu/Clip absorbed after an int8 node's output (by the output's id) and the tensors that get Q/DQ."""

    quantized: list[gs.Node] = dataclasses.field(default_factory=list)
    skipped: list[tuple[gs.Node, str]] = dataclasses.field(default_factory=list)
    absorbed: dict[int, gs.Node] = dataclasses.field(default_factory=dict)
    tensors: dict[int, QuantizedTensor] = dataclasses.field(default_factory=dict)

    def calibrated(self) -> list[gs.Variable]:
        """The tensors whose range calibration measures (the others reuse another tensor's parameters)."""
        return [entry.tensor for entry in self.tensors.values() if entry.same_as is None]

    def final(self, tensor: gs.Tensor) -> gs.Tensor:
        """``tensor``, or the output of the Relu/Clip absorbed after it."""
        activation = self.absorbed.get(id(tensor))
        return activation.outputs[0] if activation is not None else tensor


def place(graph: gs.Graph, rules: TargetRules, exclude_op_types=(), exclude_nodes=(), keep_float=(),
          faster_in_float=()) -> Placement:
    """Decide which nodes of ``graph`` (not of its subgraphs) run in int8 and which tensors get Q/DQ (see the
    module docstring). ``keep_float``: nodes auto mode keeps in float for fidelity (``sensitive``), by
    ``node_key``; ``faster_in_float``: those it keeps in float for speed (``shallow_conv``). ``graph`` must be
    topologically sorted; it is not modified.

    Keeping more nodes in float never quantizes another one: a follower needs an int8 input, an absorbed
    Relu/Clip an int8 producer, and fewer int8 nodes only demote more dead ends. So the tensors of a
    placement with more nodes kept float are among this one's ``tensors``."""
    kept = {key: "shallow_conv" for key in faster_in_float} | {key: "sensitive" for key in keep_float}
    return _Placer(graph, rules, frozenset(exclude_op_types), frozenset(exclude_nodes), kept).run()


def node_key(node: gs.Node) -> str:
    """The name of a node's first output: unique in the graph and kept by ``Graph.copy`` (node names need not
    be either)."""
    return node.outputs[0].name


class _Placer:
    def __init__(self, graph: gs.Graph, rules: TargetRules, exclude_op_types: frozenset[str],
                 exclude_nodes: frozenset[str], keep_float: dict[str, str]):
        self.graph, self.rules = graph, rules
        self.exclude_op_types, self.exclude_nodes, self.keep_float = exclude_op_types, exclude_nodes, keep_float
        self.placement = Placement()
        self.int8: set[int] = set()  # ids of the nodes in placement.quantized
        self.int8_outputs: set[int] = set()  # tensors int8 nodes write (through absorbed activations)
        self.absorbing: set[int] = set()  # outputs of int8 nodes a Relu/Clip may be absorbed into

    def run(self) -> Placement:
        for node in self.graph.nodes:
            if _computes_float(node):
                self._visit(node)
        while self._demote_dead_ends():  # each round demotes at least one node: bounded by their number
            pass
        for node in self.placement.quantized:
            self._choose_tensors(node)
        order = {id(node): index for index, node in enumerate(self.graph.nodes)}
        self.placement.skipped.sort(key=lambda skipped: order[id(skipped[0])])
        return self.placement

    def _visit(self, node: gs.Node) -> None:
        reason = self._exclusion(node) or self._reason(node)
        if reason is not None:
            self.placement.skipped.append((node, reason))
            return
        if node.op in _ACTIVATIONS:
            self.placement.absorbed[id(node.inputs[0])] = node
        else:
            self.placement.quantized.append(node)
            self.int8.add(id(node))
            if node.op not in self.rules.same_range:
                self.absorbing.update(id(t) for t in node.outputs)
        self.int8_outputs.update(id(t) for t in node.outputs)

    def _exclusion(self, node: gs.Node) -> str | None:
        if node.name and node.name in self.exclude_nodes:
            return "excluded_node"
        if node.op in self.exclude_op_types:
            return "excluded_op_type"
        return self.keep_float.get(node_key(node))

    def _reason(self, node: gs.Node) -> str | None:
        """Why ``node`` stays float; None when it runs in int8 (or, a Relu/Clip, is absorbed)."""
        if not is_standard_op(node, node.op):
            return self.rules.unlisted_reason
        if node.op in self.rules.weighted:
            return _data_reason(node, (0,)) or _weight_reason(node, self.rules)
        if node.op in _ACTIVATIONS:
            return self._activation_reason(node)
        if node.op in self.rules.followers():
            return _data_reason(node, _data_inputs(node)) or self._follower_reason(node)
        return self.rules.unlisted_reason

    def _activation_reason(self, node: gs.Node) -> str | None:
        """A Relu/Clip is absorbed when it is the only reader of a weighted or own-range int8 node's output,
        that output is no graph output, and its bounds are constants."""
        source = node.inputs[0]
        if id(source) not in self.absorbing:
            return "no_quantized_input"
        if len(source.outputs) != 1 or source in self.graph.outputs:
            return "not_fusable"
        if any(bound.name and constant_value(bound) is None for bound in node.inputs[1:]):
            return "not_fusable"
        return None

    def _follower_reason(self, node: gs.Node) -> str | None:
        if not any(id(node.inputs[i]) in self.int8_outputs for i in _data_inputs(node) if i < len(node.inputs)):
            return "no_quantized_input"
        if not all(_is_float32(t) for t in node.outputs if t.name):
            return "not_float32"
        return None

    def _demote_dead_ends(self) -> bool:
        """Put back in float the followers whose output no int8 node reads and whose quantized inputs all
        come from Gemm/MatMul that could write float otherwise: int8, they would only move a standalone
        DequantizeLinear past them and cost the Gemm/MatMul its float output. Later nodes first, so that a
        chain of them goes at once; returns whether any was demoted (the caller repeats until none is)."""
        demoted = False
        for node in reversed(self.placement.quantized):
            if node.op in self.rules.followers() and self._is_dead_end(node):
                self.int8.discard(id(node))
                self.placement.skipped.append((node, "float_neighbours"))
                for output in node.outputs:
                    activation = self.placement.absorbed.pop(id(output), None)
                    if activation is not None:
                        self.placement.skipped.append((activation, "no_quantized_input"))
                demoted = True
        self.placement.quantized = [node for node in self.placement.quantized if id(node) in self.int8]
        return demoted

    def _is_dead_end(self, node: gs.Node) -> bool:
        if self._has_int8_reader(node):
            return False
        for index in _data_inputs(node):
            producer = self._int8_producer(node.inputs[index]) if index < len(node.inputs) else None
            if producer is not None and (producer.op not in ("Gemm", "MatMul")
                                         or self._has_int8_reader(producer, besides=node)):
                return False
        return True

    def _int8_producer(self, tensor: gs.Tensor) -> gs.Node | None:
        """The int8 node that writes ``tensor``, directly or through the Relu/Clip absorbed after it."""
        writer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        if writer is not None and writer.op in _ACTIVATIONS and id(writer.inputs[0]) in self.placement.absorbed:
            writer = writer.inputs[0].inputs[0]
        return writer if writer is not None and id(writer) in self.int8 else None

    def _has_int8_reader(self, node: gs.Node, besides: gs.Node | None = None) -> bool:
        """Whether an int8 node (other than ``besides``) reads an output of ``node`` (after an absorbed
        Relu/Clip)."""
        return any(id(reader) in self.int8 and reader is not besides
                   for output in node.outputs for reader in self.placement.final(output).outputs)

    def _choose_tensors(self, node: gs.Node) -> None:
        """Q/DQ on the data inputs of an int8 node and, when the target quantizes outputs, on its outputs
        (after an absorbed Relu/Clip), except for a Gemm/MatMul that no int8 node reads: it writes float."""
        indices = (0,) if node.op in self.rules.weighted else _data_inputs(node)
        for index in indices:
            if index < len(node.inputs) and node.inputs[index].name:
                entry = self._entry(node.inputs[index])
                if not any(reader is node for reader in entry.readers):
                    entry.readers.append(node)
        if not self.rules.quantize_outputs:
            return
        if node.op in ("Gemm", "MatMul") and not self._has_int8_reader(node):
            for output in node.outputs:  # the kernel writes float: a Relu/Clip after it stays float
                activation = self.placement.absorbed.pop(id(output), None)
                if activation is not None:
                    self.placement.skipped.append((activation, "after_float_output"))
            return
        for output in (t for t in node.outputs if t.name):
            final = self.placement.final(output)
            entry = self._entry(final)
            entry.owned = True
            if node.op in self.rules.same_range:
                entry.same_as = node.inputs[0]

    def _entry(self, tensor: gs.Variable) -> QuantizedTensor:
        return self.placement.tensors.setdefault(id(tensor), QuantizedTensor(tensor))


def _computes_float(node: gs.Node) -> bool:
    """Whether ``node`` computes (it is no Constant) a float tensor of any width, or one of unknown type."""
    return not is_standard_op(node, "Constant") and any(_may_be_float(t) for t in node.outputs if t.name)


def _may_be_float(tensor: gs.Tensor) -> bool:
    if tensor.dtype is None:
        return True
    if isinstance(tensor.dtype, int):  # gs keeps the ONNX element type where numpy has none (bfloat16, float8)
        return "FLOAT" in onnx.TensorProto.DataType.Name(tensor.dtype)
    return np.dtype(tensor.dtype).kind == "f"


def _is_float32(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and not isinstance(tensor.dtype, int) and np.dtype(tensor.dtype) == np.float32


def _data_inputs(node: gs.Node) -> tuple[int, ...]:
    """Indices of a follower's inputs that carry activations (the others are shapes, indices, scales...)."""
    if node.op == "Concat":
        return tuple(range(len(node.inputs)))
    return _MULTI_INPUT_OPS.get(node.op, (0,))


def _data_reason(node: gs.Node, indices: tuple[int, ...]) -> str | None:
    for index in indices:
        tensor = node.inputs[index] if index < len(node.inputs) else None
        if tensor is None or not tensor.name:
            continue
        if constant_value(tensor) is not None:
            return "constant_operand"
        if not _is_float32(tensor):
            return "not_float32"
    return None


def _weight_reason(node: gs.Node, rules: TargetRules) -> str | None:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(weight, gs.Constant):
        return "weight_not_constant"
    if not _is_float32(weight) or not all(_is_float32(t) for t in node.outputs if t.name):
        return "not_float32"
    rank_ok = len(weight.shape) == 2 if node.op in ("Gemm", "MatMul") else len(weight.shape) >= 3
    if not rank_ok:
        return "weight_rank"
    bias = _bias(node) if rules.quantize_bias else None
    if bias is None:
        return None
    if not isinstance(bias, gs.Constant) or not _is_float32(bias) \
            or tuple(bias.shape) != (weight.shape[output_channel_axis(node)],):
        return "bias_not_constant_vector"
    if node.op == "Gemm" and node.attrs.get("beta", 1.0) != 1.0:
        return "gemm_beta"
    return None


def _shallow_conv_reason(node: gs.Node, rules: TargetRules) -> str | None:
    """``shallow_conv`` for a Conv with a constant weight, not depthwise, on fewer than
    ``rules.min_int8_conv_channels`` input channels per group (its weight's dimension 1), counted after the
    SpaceToDepth rewrite when the target makes it."""
    if node.op != "Conv" or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return None
    channels, group = node.inputs[1].shape[1], node.attrs.get("group", 1)
    if channels == 1 and group > 1:  # depthwise
        return None
    rewrite = _space_to_depth_plan(node) if rules.space_to_depth_stems else None
    channels = rewrite.weight.shape[1] if rewrite is not None else channels
    return "shallow_conv" if channels < rules.min_int8_conv_channels else None


def _space_to_depth_plan(node: gs.Node) -> space_to_depth.SpaceToDepthConv | None:
    """``space_to_depth.plan`` for a Conv with a constant weight and explicit (or VALID) padding."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    return space_to_depth.plan(constant_array(node.inputs[1]), node.inputs[0].shape, node.attrs.get("strides"),
                               node.attrs.get("pads") if auto_pad == "NOTSET" else None,
                               node.attrs.get("group", 1), node.attrs.get("dilations"))


def _bias(node: gs.Node) -> gs.Tensor | None:
    """The bias input of a Conv, ConvTranspose or Gemm; None when absent (and for MatMul)."""
    if node.op == "MatMul" or len(node.inputs) < 3 or not node.inputs[2].name:
        return None
    return node.inputs[2]


def output_channel_axis(node: gs.Node) -> int:
    """The output-channel axis of the weight (input 1) of a Conv, ConvTranspose, Gemm or 2-D MatMul."""
    if node.op in ("ConvTranspose", "MatMul"):
        return 1
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return 0


# ---------------------------------------------------------------------------------------------------------
# Rewriting


class _Rewriter:
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
        bias = _bias(node) if self.rules.quantize_bias else None
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
            rewrite = _space_to_depth_plan(node)
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
            done.append(Diagnostic("info", f"Conv reads its {source.shape[1]} input channels through "
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


def _shield_float_max_pools(graph: gs.Graph, placement: Placement, names: NameAllocator) -> None:
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
        if activation is None or activation.op not in _ACTIVATIONS or not is_standard_op(activation, activation.op) \
                or id(activation) in int8 or len(before.outputs) != 1 or before in graph.outputs:
            continue
        between = gs.Variable(names.fresh(f"{pooled.name}_before_{activation.op}"), pooled.dtype, pooled.shape)
        pool.inputs[0], pool.outputs[0] = activation.inputs[0], between
        activation.inputs[0], activation.outputs[0] = between, pooled


# ---------------------------------------------------------------------------------------------------------
# The pass


class QuantizeQDQ(Pass):
    name = "quantize-qdq"
    summary = ("int8 quantization: calibrated Q/DQ pairs where the target fuses them into int8 kernels; by default "
               "kept only within a fidelity budget and when faster than float")
    lossy = True
    options = (
        Option("mode", str, "auto", "auto: static, with the most sensitive nodes kept float until a budget holds "
               "on held-out data, and float kept unless int8 is faster; static: every node the placement allows; "
               "dynamic: int8 weights, activations quantized at run time (no data)", choices=MODES),
        Option("method", str, "minmax", "how calibration turns observed values into a range", choices=METHODS),
        Option("percentile", float, 99.999, "method=percentile: the percentage of values the range covers "
               "(the rest saturates)", minimum=50.0, maximum=100.0),
        Option("target", str, "cpu", "cpu: onnxruntime's CPU int8 kernels (uint8 activations); tensorrt: "
               "TensorRT explicit quantization (int8, zero point 0)", choices=tuple(TARGETS)),
        Option("per_channel", bool, True, "one weight scale per output channel (else one per weight)"),
        Option("exclude_op_types", list, (), "op types left in float, e.g. [Gemm,Add]"),
        Option("exclude_nodes", list, (), "node names left in float"),
        Option("synthetic", bool, False, "without data, calibrate on random inputs (inaccurate; for trying out)"),
        Option("calibration_batch_size", int, 16, "samples per calibration run", minimum=1),
        Option("max_accuracy_drop", float, 0.5, "mode=auto, data with a label array: top-1 accuracy points the "
               "int8 model may lose on the held-out samples", minimum=0.0, maximum=100.0),
        Option("min_cosine", float, 0.99, "mode=auto, without labels: least cosine of every output with the "
               "float output", minimum=-1.0, maximum=1.0),
        Option("min_top1_agreement", float, 0.99, "mode=auto, without labels: least share of samples whose top-1 "
               "class (outputs shaped [N, classes]) is the float model's", minimum=0.0, maximum=1.0),
        Option("min_speedup", float, 1.0, "mode=auto: least float / int8 latency on the target (1: never "
               "slower; 0: any)", minimum=0.0),
        Option("latency_batch", int, 1, "mode=auto: samples per call when timing int8 against float (the batch "
               "size you deploy with; at most the held-out samples)", minimum=1),
        Option("holdout_fraction", float, 0.2, "mode=auto: share of the data held out of calibration to check "
               "the budget on (at least 8 samples, at most half)", minimum=0.01, maximum=0.5),
        Option("max_fallback_steps", int, 8, "mode=auto: steps of the search, each doubling the nodes kept in "
               "float (1, 2, 4, ...)", minimum=0),
    )
    requires = frozenset({Invariant.SHAPES_INFERRED, Invariant.TOPOLOGICALLY_SORTED})
    establishes = frozenset({Invariant.TOPOLOGICALLY_SORTED})
    preserves = frozenset({Invariant.INFERENCE_MODE})
    # How auto mode times the int8 model against float; a subclass may replace it (tests inject timings).
    measure_latency: ClassVar[auto.LatencyProbe] = staticmethod(auto.measure_latency)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        if self.values["mode"] == "dynamic":
            return self._run_dynamic(graph)
        declined = _decline(graph, ctx, self.values["synthetic"])
        if declined is not None:
            reason, message = declined
            return PassResult(False, {f"skipped.{reason}": 1}, (Diagnostic("warning", message),))
        rules = TARGETS[self.values["target"]]
        placement = self._place(graph, rules)
        unknown = self._unknown_exclusions(graph)
        if not placement.quantized:
            return _result(placement, False, {}, unknown)
        model = export_with_gs(graph)
        data, warnings = _data_or_synthetic(ctx.data, model)
        if self.values["mode"] == "static":
            ranges = self._calibration(model, placement.calibrated(), rules).feed(data).ranges()
            rewrites = self._rewrite(graph, placement, ranges, rules)
            return _result(placement, True, {"calibrated_tensors": len(ranges), **_rewrite_stats(rewrites)},
                           unknown, [*warnings, *rewrites])
        return self._run_auto(graph, model, data, rules, placement, unknown, warnings)

    def _run_auto(self, graph: gs.Graph, model: onnx.ModelProto, data: Dataset, rules: TargetRules,
                  placement: Placement, unknown: list[Diagnostic], warnings: list[Diagnostic]) -> PassResult:
        """Calibrate every tensor any variant may quantize (by ``place``'s docstring, those of ``placement``)
        on all but the held-out samples, and then on all of them; let ``graphopt.quantize.auto`` choose the
        variant (offering the shallow convolutions as layers that may run faster in float), and quantize
        ``graph`` as that variant was quantized (or leave it, when it chose float)."""
        preferred = tuple(layer for node, layer in zip(placement.quantized, _layers(placement), strict=True)
                          if _shallow_conv_reason(node, rules))
        split = auto.split_holdout(data, self.values["holdout_fraction"], auto.fixes_batch(model))
        tensors = [entry.tensor for entry in placement.tensors.values()]
        ranges, all_ranges = self._split_ranges(model, tensors, split, rules)
        budget = auto.Budget(self.values["max_accuracy_drop"], self.values["min_cosine"],
                             self.values["min_top1_agreement"], self.values["min_speedup"],
                             self.values["latency_batch"])

        def builder(chosen: Ranges) -> Callable[[tuple[str, ...]], auto.Variant]:
            return lambda fallback: self._variant(graph, rules, chosen, fallback)

        outcome = auto.choose_variant(builder(ranges), model, split, budget, self.values["max_fallback_steps"],
                                      rules.provider, self.measure_latency,
                                      refit=None if all_ranges is None else builder(all_ranges), preferred=preferred)
        diagnostics = [*warnings, *outcome.diagnostics(budget)]
        if outcome.variant is None:
            return PassResult(False, outcome.stats(), [*unknown, *diagnostics])
        sensitive = outcome.sensitivities()
        final = self._place(graph, rules, tuple(sensitive),
                            tuple(key for key in outcome.variant.fallback if key not in sensitive))
        rewrites = self._rewrite(graph, final, all_ranges if outcome.refitted else ranges, rules)
        return _result(final, True, {"calibrated_tensors": len(ranges), **outcome.stats(), **_rewrite_stats(rewrites)},
                       [*unknown, *rewrites], diagnostics, outcome.sensitivities())

    def _split_ranges(self, model: onnx.ModelProto, tensors: list[gs.Variable], split: auto.Split,
                      rules: TargetRules) -> tuple[Ranges, Ranges | None]:
        """The ranges on the calibration samples and, when samples were held out, on all of them (the
        calibration, and its onnxruntime session exposing every activation, end here)."""
        calibration = self._calibration(model, tensors, rules).feed(split.calibration)
        ranges = calibration.ranges()
        return ranges, calibration.feed(split.holdout).ranges() if split.separate else None

    def _run_dynamic(self, graph: gs.Graph) -> PassResult:
        """``graphopt.quantize.dynamic.quantize_dynamic``, which declines by itself what it cannot quantize."""
        unknown = self._unknown_exclusions(graph)
        result = quantize_dynamic(graph, exclude_op_types=self.values["exclude_op_types"],
                                  exclude_nodes=self.values["exclude_nodes"], per_channel=self.values["per_channel"])
        return PassResult(result.changed, result.stats, [*unknown, *result.diagnostics])

    def _variant(self, graph: gs.Graph, rules: TargetRules, ranges: Ranges,
                 fallback: tuple[str, ...]) -> auto.Variant:
        """The quantization of a copy of ``graph`` (sharing its weights) with the nodes ``fallback`` in float."""
        copy = graph.copy()
        placement = self._place(copy, rules, fallback)
        layers = _layers(placement)
        self._rewrite(copy, placement, ranges, rules)
        return auto.Variant(fallback, export_with_gs(copy), layers)

    def _place(self, graph: gs.Graph, rules: TargetRules, keep_float: tuple[str, ...] = (),
               faster_in_float: tuple[str, ...] = ()) -> Placement:
        return place(graph, rules, self.values["exclude_op_types"], self.values["exclude_nodes"], keep_float,
                     faster_in_float)

    def _calibration(self, model: onnx.ModelProto, tensors: list[gs.Variable], rules: TargetRules) -> Calibration:
        """The calibration of ``tensors`` by this pass's method, to be fed data (``model`` is the graph
        exported)."""
        names = [tensor.name for tensor in tensors]
        logger.debug("calibrating %d tensors by %s", len(names), self.values["method"])
        return Calibration(model, names, self.values["method"], batch_size=self.values["calibration_batch_size"],
                           percentile=self.values["percentile"], symmetric=rules.signed)

    def _rewrite(self, graph: gs.Graph, placement: Placement, ranges: Ranges,
                 rules: TargetRules) -> list[Diagnostic]:
        """Write the Q/DQ nodes and quantized constants of ``placement`` into ``graph``; one diagnostic per
        Conv rewritten to read its input through SpaceToDepth."""
        params = _parameters(placement, ranges, rules.signed)
        rewriter = _Rewriter(graph, rules, self.values["per_channel"])
        if rules.shield_float_max_pool:
            _shield_float_max_pools(graph, placement, rewriter.names)
        rewrites = rewriter.space_to_depth_stems(placement, params) if rules.space_to_depth_stems else []
        for node in placement.quantized:
            if node.op in rules.weighted:
                rewriter.weighted(node, params[id(node.inputs[0])])
        for key, entry in placement.tensors.items():
            rewriter.activation(entry, params[key])
        graph.nodes.extend(rewriter.nodes)
        graph.toposort(recurse_functions=False, mode="nodes")
        return rewrites

    def _unknown_exclusions(self, graph: gs.Graph) -> list[Diagnostic]:
        names = {node.name for node in graph.nodes}
        return [Diagnostic("warning", f"exclude_nodes names no node of the main graph: {name!r}")
                for name in self.values["exclude_nodes"] if name not in names]


def _rewrite_stats(rewrites: Sequence[Diagnostic]) -> dict[str, int]:
    return {"rewrites.space_to_depth": len(rewrites)} if rewrites else {}


def _result(placement: Placement, changed: bool, extra_stats: dict[str, int], before: Sequence[Diagnostic],
            after: Sequence[Diagnostic] = (), sensitivities: dict[str, auto.Sensitivity] | None = None) -> PassResult:
    """Stats (``quantized.<op>``, ``skipped.<reason>`` and ``extra_stats``) and diagnostics (``before``, one
    per node left in float, ``after``) of a run that placed ``placement``."""
    stats = collections.Counter(f"quantized.{node.op}" for node in placement.quantized)
    stats.update(f"skipped.{reason}" for _, reason in placement.skipped)
    stats.update(extra_stats)
    skipped = [_skipped_diagnostic(node, reason, sensitivities or {}) for node, reason in placement.skipped]
    return PassResult(changed, stats, [*before, *skipped, *after])


def _data_or_synthetic(data: Dataset | None, model: onnx.ModelProto) -> tuple[Dataset, list[Diagnostic]]:
    """``data``, or random inputs for ``model`` with a warning (the pass declined already unless
    ``synthetic=true``)."""
    if data is not None:
        return data, []
    return synthetic_dataset(model), [Diagnostic("warning", "calibrated on random inputs (synthetic=true): the "
                                                            "ranges, and so the accuracy, say little about real data")]


def _layers(placement: Placement) -> tuple[auto.Layer, ...]:
    """The int8 nodes of ``placement`` as auto mode scores them: the tensors they read through Q/DQ and their
    outputs after an absorbed Relu/Clip, named as before rewriting (the DequantizeLinear takes the name over,
    so in the quantized model that name holds what the int8 node computes)."""
    read: dict[int, list[str]] = collections.defaultdict(list)
    for entry in placement.tensors.values():
        for reader in entry.readers:
            read[id(reader)].append(entry.tensor.name)
    return tuple(auto.Layer(node_key(node), node.name or node_key(node), node.op, tuple(read[id(node)]),
                            tuple(placement.final(output).name for output in node.outputs if output.name))
                 for node in placement.quantized)


def _parameters(placement: Placement, ranges: Ranges,
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


def _decline(graph: gs.Graph, ctx: PassContext, synthetic: bool) -> tuple[str, str] | None:
    """(reason, message) when the pass leaves the whole graph as it is."""
    if any(is_standard_op(node, *_QUANTIZATION_OPS) for node in graph.nodes):
        return "already_quantized", "quantize-qdq: the graph already holds quantization nodes; left as it is"
    if (graph.opset or 0) < 13:
        return "opset_below_13", (f"quantize-qdq: the model's opset is {graph.opset}; per-channel QDQ needs "
                                   "opset 13 or later (convert the model first)")
    if ctx.data is None and not synthetic:
        return "no_data", ("quantize-qdq needs calibration data: pass --data (or data=...), or set "
                           "synthetic=true to calibrate on random inputs")
    return None


def _skipped_diagnostic(node: gs.Node, reason: str, sensitivities: dict[str, auto.Sensitivity]) -> Diagnostic:
    """Why ``node`` stays float; for a node auto mode kept in float, with its sensitivity."""
    detail = f": {sensitivities[node_key(node)]}" if reason == "sensitive" else ""
    return Diagnostic("info", f"{node.op} left in float ({reason}): {REASONS[reason]}{detail}",
                      node=node.name or node_key(node))
