"""Where quantize-qdq puts Q/DQ pairs: which nodes of a graph run in int8 on a target, which tensors get a
Q/DQ pair, and why every other node stays float (``place``). ``graphopt.quantize.rewriting`` writes a
placement into the graph; ``passes/quantize_qdq.py`` is the pass.

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
  (``graphopt.quantize.rewriting`` makes these two rewrites when it writes the placement.)
* ``tensorrt`` (explicit quantization): Q/DQ on the activation input and the weight of Conv, ConvTranspose,
  Gemm and MatMul only; TensorRT fuses the rest (activations, pooling, the next layer's input quantization)
  itself. Everything is signed int8 with zero point 0, the result passes ``lint_tensorrt`` without errors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.quantize import space_to_depth
from graphopt.rewrite import constant_array, constant_value, is_standard_op

ACTIVATIONS = frozenset({"Relu", "Clip"})  # absorbed into the output range of the int8 node before them
_MULTI_INPUT_OPS = {"Add": (0, 1), "Mul": (0, 1)}  # data inputs of followers; Concat: all; others: input 0


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
        if node.op in ACTIVATIONS:
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
        if node.op in ACTIVATIONS:
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
        if writer is not None and writer.op in ACTIVATIONS and id(writer.inputs[0]) in self.placement.absorbed:
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
    bias = bias_input(node) if rules.quantize_bias else None
    if bias is None:
        return None
    if not isinstance(bias, gs.Constant) or not _is_float32(bias) \
            or tuple(bias.shape) != (weight.shape[output_channel_axis(node)],):
        return "bias_not_constant_vector"
    if node.op == "Gemm" and node.attrs.get("beta", 1.0) != 1.0:
        return "gemm_beta"
    return None


def shallow_conv_reason(node: gs.Node, rules: TargetRules) -> str | None:
    """``shallow_conv`` for a Conv with a constant weight, not depthwise, on fewer than
    ``rules.min_int8_conv_channels`` input channels per group (its weight's dimension 1), counted after the
    SpaceToDepth rewrite when the target makes it."""
    if node.op != "Conv" or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return None
    channels, group = node.inputs[1].shape[1], node.attrs.get("group", 1)
    if channels == 1 and group > 1:  # depthwise
        return None
    rewrite = space_to_depth_plan(node) if rules.space_to_depth_stems else None
    channels = rewrite.weight.shape[1] if rewrite is not None else channels
    return "shallow_conv" if channels < rules.min_int8_conv_channels else None


def space_to_depth_plan(node: gs.Node) -> space_to_depth.SpaceToDepthConv | None:
    """``space_to_depth.plan`` for a Conv with a constant weight and explicit (or VALID) padding."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    return space_to_depth.plan(constant_array(node.inputs[1]), node.inputs[0].shape, node.attrs.get("strides"),
                               node.attrs.get("pads") if auto_pad == "NOTSET" else None,
                               node.attrs.get("group", 1), node.attrs.get("dilations"))


def bias_input(node: gs.Node) -> gs.Tensor | None:
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
