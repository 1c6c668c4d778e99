"""Static checks of a QDQ-quantized ONNX model against TensorRT's explicit-quantization (Q/DQ) rules, with no
TensorRT installed (onnx, onnx-graphsurgeon and numpy only): why TensorRT would reject the model, compute
something other than the ONNX graph, or run parts of it in float.

``lint_tensorrt(model)`` returns one ``LintFinding`` per problem, in graph order: the main graph's nodes in
order, then the If/Loop/Scan bodies in the order ``graphopt.rewrite.all_graphs`` visits them (every rule
applies inside subgraphs too); a node's findings come in the order of ``RULES``. An empty list means nothing
was found. The input model is not modified; types come from the model and onnx's shape inference.

Severity ``error``: TensorRT's ONNX parser or builder rejects the model, or TensorRT computes something other
than the graph says. ``warning``: it builds, but runs that part in float or with extra layers.

Sources, cited per rule below:

* [API]: TensorRT's IQuantizeLayer / IDequantizeLayer reference (the Python binding docstrings in the
  TensorRT repository): signed int8 only; zero point int8 and all zeros ("only symmetric quantization is
  supported"); scale a scalar (per-tensor) or 1-D (per-axis) of the axis' size; "The subgraph which
  terminates with the scale tensor must be a build-time constant. The same restrictions apply to the zeroPt."
* [GUIDE]: TensorRT Developer Guide, "Working with INT8" / "Explicit Quantization" (8.x, and the 10.x page
  "Explicit Quantization"): "Per-Tensor and Per-Channel Quantization" (activations per-tensor only; weights
  per-tensor or per-channel along the output-channel axis; scales all positive), "ONNX Support" (the axis
  attribute needs opset 13; the Gemm ``transB`` note: PyTorch's ``(K, C)`` weights quantize along axis 0,
  TensorFlow's ``(C, K)`` along axis 1; QLinearConv/QLinearMatMul/ConvInteger/MatMulInteger are an import
  error), "TensorRT Processing of Q/DQ Networks" ("TensorRT expects a Q/DQ layer pair on each of the inputs
  of quantizable layers"; layers commute with dequantization when ``Op(DQ(x)) == DQ(Op(x))``) and "Q/DQ
  Layer-Placement Recommendations" ("quantize all inputs of weighted operations").
* [PARSER]: onnx-tensorrt, ``QuantDequantLinearHelper`` in ``onnxOpImporters.cpp`` (TensorRT 10.x) and
  ``docs/operators.md`` (the ONNX operator support matrix).

Rules (id, severity: what is checked; basis):

* ``unsupported-quantized-operator``, error: QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger,
  DynamicQuantizeLinear. [GUIDE] "ONNX Support"; [PARSER] matrix marks them unsupported.
* ``quantize-input-not-float``, error: a QuantizeLinear whose input is not float32/float16/bfloat16 (ONNX
  also allows int32). [API] the input is floating point; [PARSER] matrix: QuantizeLinear FP32, FP16, BF16.
* ``quantize-type-not-int8``, error: a QuantizeLinear whose output type (its zero point's type;
  ``output_dtype``; else ONNX's default uint8) is not int8. [PARSER] uint8 is imported as int8 off DLA (with
  a warning) and int16/uint16/int32/uint4 "will use INT8 instead": a different range, so different results.
* ``dq-input-not-int8``, error: a DequantizeLinear whose input is not int8, where that input is not made by a
  QuantizeLinear (whose type the previous rule checks): a uint8 or int32 initializer (onnxruntime's
  quantized bias), a graph input, or another node's output. [PARSER] rejects uint8 input off DLA, and other
  types with "only activation types allowed as input to this layer"; [API] the input is signed int8.
* ``zero-point-not-zero``, error: a zero point with a non-zero value. [API]; [PARSER] "Non-zero zero point is
  not supported".
* ``scale-not-constant`` / ``zero-point-not-constant``, error: a scale or zero point that is not a
  build-time constant (an initializer, a Constant, or computed from those only). [API].
* ``scale-not-positive-finite``, error: a scale value <= 0, NaN or infinite. [PARSER] "Scale coefficients
  must all be positive" (NaN fails that test too); [GUIDE] positive coefficients; an infinite scale passes
  the parser but quantizes everything to 0 and dequantizes to inf/NaN.
* ``per-channel-activation``, error: a per-channel (1-D, more than one value) scale on a tensor that is not
  a build-time constant. [GUIDE] "activations can only be quantized per-tensor".
* ``per-channel-axis``, error: a per-channel weight DequantizeLinear whose axis is not the output-channel
  axis of the Conv (0), ConvTranspose (1), Gemm (0 with ``transB=1``, else 1) or MatMul (the weight's last
  axis) that reads it as its weight (input 1). [GUIDE] "the quantization axis must be the output-channel
  axis", and the Gemm note.
* ``per-channel-before-opset-13``, error: a per-channel scale in a model whose default opset is below 13.
  [GUIDE] the axis attribute came with opset 13 (before it the ONNX spec allows only a scalar scale);
  [PARSER] assumes axis 0 there, while onnxruntime takes axis 1 (and fails on a Conv weight at run time).
* ``dangling-quantize``, error: a QuantizeLinear whose output is read by anything but a DequantizeLinear,
  or is a graph output. [PARSER] matrix: int8 is a "quantized type", supported "only through quantization
  from a floating-point type"; no other importer takes int8 tensors.
* ``partially-quantized-op``, warning: a Conv, ConvTranspose, Gemm or MatMul where exactly one of input 0
  (data) and input 1 (weight) is dequantized. [GUIDE] a quantizable layer needs Q/DQ on each input to run in
  int8; otherwise it runs in float and the lone DequantizeLinear is a layer of its own.
* ``quantized-bias``, warning: the bias (input 2) of a Conv, ConvTranspose or Gemm comes from a
  DequantizeLinear. [GUIDE] TensorRT fuses Q/DQ into the data and weight inputs only; the bias stays a float
  computation (an int32 bias is even rejected: ``dq-input-not-int8`` on its DequantizeLinear).

Looking for the DequantizeLinear behind an input or after a QuantizeLinear, the checks see through ops that
only move data (Identity, Reshape, Transpose, Flatten, Squeeze, Unsqueeze): they commute with quantization
and dequantization in [GUIDE]'s sense.

Not checked, and why:

* FP8, INT4 and FP4 Q/DQ (TensorRT supports them with rules of their own): such nodes are skipped, and a
  weight dequantized from them does not count as a half-quantized layer (INT4 is weight-only by design).
* Block quantization (a scale of rank > 1, opset 21 ``block_size``): not treated as per-channel.
* Values of scales and zero points computed by constant subgraphs are not evaluated (run ``fold-constants``
  first); only initializers and Constant nodes are read. Types that shape inference cannot tell are not
  judged.
* Q/DQ inside If/Loop/Scan bodies: the TensorRT documentation found states no rule of its own for them, so
  they get the same checks as the main graph rather than a finding of their own.
* "A DequantizeLinear feeding an op TensorRT cannot run in int8": the current support matrix no longer lists
  int8 per operator (quantized types exist only through Q/DQ), and which layers TensorRT fuses with Q/DQ is
  decided by its optimizer, per version; a static rule would guess. ``partially-quantized-op`` covers the
  weighted layers, where the documentation is explicit.
* A per-channel weight that reaches its layer through other ops is not checked for its axis.
* That scale, zero point and axis agree in shape: ONNX itself requires it (``onnx.checker`` with
  ``full_check`` and onnxruntime reject such nodes).
* Custom-domain quantization ops (``com.microsoft``) and pre-opset-10 models are not recognized.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from graphopt.analysis import infer_shapes
from graphopt.fusion import producer, single_producer
from graphopt.model import to_graph
from graphopt.rewrite import all_graphs, constant_value, is_standard_op

ERROR = "error"
WARNING = "warning"

_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})
_OUT_OF_SCOPE_TYPES = frozenset(getattr(TensorProto, name) for name in (
    "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "INT4", "FLOAT4E2M1")
    if hasattr(TensorProto, name))
_UNSUPPORTED_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_BIASED_OPS = ("Conv", "ConvTranspose", "Gemm")
_DATA_MOVEMENT_OPS = ("Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")


@dataclasses.dataclass(frozen=True)
class LintFinding:
    """One problem: the rule broken, its severity, the node (or tensor) it is about, and a one-line message
    saying what is wrong and what TensorRT expects."""

    rule: str
    severity: str
    node: str
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Scope:
    """What a check needs beyond its node: the (sub)graph holding the node, the model's default-domain opset
    and the ids of the tensors that are build-time constants."""

    graph: gs.Graph
    opset: int
    constants: frozenset[int]

    def is_constant(self, tensor: gs.Tensor) -> bool:
        return isinstance(tensor, gs.Constant) or id(tensor) in self.constants


_Check = Callable[[gs.Node, _Scope], Iterator[str]]


def lint_tensorrt(model: onnx.ModelProto) -> list[LintFinding]:
    """The TensorRT explicit-quantization findings for ``model`` (see the module docstring), in graph order;
    empty when there are none. Raises ``graphopt.errors.ModelError`` when the graph cannot be imported."""
    graph = to_graph(model)
    infer_shapes(graph)
    constants = _build_time_constants(graph)
    findings = []
    for subgraph in all_graphs(graph):
        scope = _Scope(subgraph, graph.opset, constants)
        for node in subgraph.nodes:
            findings += [LintFinding(rule.id, rule.severity, _label(node), message)
                         for rule in _RULES if rule.applies(node) for message in rule.check(node, scope)]
    return findings


# ---------------------------------------------------------------------------------------------------------
# The checks: each yields the messages of one rule for one node its rule applies to


def _unsupported_operator(node: gs.Node, scope: _Scope) -> Iterator[str]:
    yield (f"{node.op} is a quantized operator TensorRT cannot import; express it in QDQ form "
           "(QuantizeLinear/DequantizeLinear around the float operator)")


def _quantize_input_not_float(node: gs.Node, scope: _Scope) -> Iterator[str]:
    element_type = _element_type(node.inputs[0])
    if element_type is not None and element_type not in _FLOAT_TYPES:
        yield (f"its input is {_type_name(element_type)}; TensorRT quantizes only float32, float16 and bfloat16 "
               "tensors")


def _quantize_type_not_int8(node: gs.Node, scope: _Scope) -> Iterator[str]:
    element_type = _quantized_type(node)
    if element_type not in (TensorProto.INT8, None):
        default = "" if _input(node, 2) is not None else " (ONNX's default without a zero point)"
        yield (f"quantizes to {_type_name(element_type)}{default}; TensorRT's parser turns it into int8, which "
               "clamps to another range: give it an int8 zero point")


def _dq_input_not_int8(node: gs.Node, scope: _Scope) -> Iterator[str]:
    element_type = _quantized_type(node)
    if element_type in (TensorProto.INT8, None) or _made_by(node.inputs[0], "QuantizeLinear") is not None:
        return
    bias = " (a quantized bias: keep biases float)" if element_type == TensorProto.INT32 else ""
    yield (f"its input is {_type_name(element_type)}{bias}; TensorRT's DequantizeLinear takes only int8 input "
           "and rejects this node")


def _zero_point_not_zero(node: gs.Node, scope: _Scope) -> Iterator[str]:
    zero_point = constant_value(_input(node, 2))
    if zero_point is not None and np.any(zero_point != 0):
        yield (f"zero point {_offending(zero_point, zero_point != 0)} is not 0; TensorRT supports only "
               "symmetric quantization (zero point 0)")


def _not_constant(index: int, what: str) -> _Check:
    """The check that input ``index`` (the ``what``) of a Q/DQ node, when present, is a build-time constant."""
    def check(node: gs.Node, scope: _Scope) -> Iterator[str]:
        tensor = _input(node, index)
        if tensor is not None and not scope.is_constant(tensor):
            yield (f"{what} {tensor.name!r} is computed at run time; TensorRT needs it to be a build-time "
                   "constant (an initializer or Constant, or computed from them only)")
    return check


def _scale_not_positive_finite(node: gs.Node, scope: _Scope) -> Iterator[str]:
    scale = constant_value(node.inputs[1])
    if scale is None:
        return
    scale = np.asarray(scale, dtype=np.float64)
    bad = ~(np.isfinite(scale) & (scale > 0))
    if bad.any():
        yield (f"scale {_offending(scale, bad)} is not positive and finite; TensorRT's parser rejects scales "
               "that are not > 0, and an infinite one quantizes everything to 0")


def _per_channel_activation(node: gs.Node, scope: _Scope) -> Iterator[str]:
    if _is_per_channel(node) and not scope.is_constant(node.inputs[0]):
        yield (f"per-channel scale ({_scale_size(node)} values) on activation {node.inputs[0].name!r}; "
               "TensorRT quantizes activations per-tensor only: use a scalar scale")


def _per_channel_axis(node: gs.Node, scope: _Scope) -> Iterator[str]:
    if not _is_per_channel(node) or not scope.is_constant(node.inputs[0]):
        return
    rank = _rank(node.inputs[0])
    axis = _axis(node, scope.opset, rank)
    for consumer, index in _readers(node.outputs[0]):
        expected = _output_channel_axis(consumer, index, rank)
        if axis is not None and expected is not None and axis != expected:
            yield (f"per-channel axis {axis}, but the output-channel axis of the weight of {consumer.op} "
                   f"{_label(consumer)!r} is {expected}; TensorRT quantizes weights per output channel only")


def _per_channel_before_opset_13(node: gs.Node, scope: _Scope) -> Iterator[str]:
    if _is_per_channel(node) and scope.opset < 13:
        yield (f"per-channel scale at opset {scope.opset}; the axis attribute needs opset 13 (before it the "
               "scale must be a scalar, and TensorRT assumes axis 0): export with opset 13 or later")


def _dangling_quantize(node: gs.Node, scope: _Scope) -> Iterator[str]:
    readers, pending = [], [node.outputs[0]]
    while pending:
        tensor = pending.pop()
        readers += ["the graph output"] if tensor in scope.graph.outputs else []
        for reader, _ in _readers(tensor):
            if is_standard_op(reader, *_DATA_MOVEMENT_OPS):
                pending.append(reader.outputs[0])
            elif not is_standard_op(reader, "DequantizeLinear"):
                readers.append(repr(_label(reader)))
    if readers:
        yield (f"its quantized output is read by {', '.join(dict.fromkeys(readers))}; TensorRT takes quantized "
               "tensors only through a DequantizeLinear: follow every QuantizeLinear by a DequantizeLinear")


def _partially_quantized(node: gs.Node, scope: _Scope) -> Iterator[str]:
    sources = [_made_by(tensor, "DequantizeLinear") for tensor in node.inputs[:2]]
    if any(source is not None and _out_of_scope(source) for source in sources):
        return
    if (sources[0] is None) != (sources[1] is None):
        float_index = 0 if sources[0] is None else 1
        yield (f"input {float_index} is float while input {1 - float_index} is dequantized; TensorRT runs "
               f"{node.op} in float unless both its data and weight inputs come through Q/DQ")


def _quantized_bias(node: gs.Node, scope: _Scope) -> Iterator[str]:
    bias = _input(node, 2)
    if bias is not None and _made_by(bias, "DequantizeLinear") is not None:
        yield ("the bias comes from a DequantizeLinear; TensorRT fuses Q/DQ only on the data and weight inputs "
               "and expects a float bias: keep the bias float")


# ---------------------------------------------------------------------------------------------------------
# Which nodes a rule applies to


def _is_quantize(node: gs.Node) -> bool:
    return is_standard_op(node, "QuantizeLinear") and not _out_of_scope(node)


def _is_dequantize(node: gs.Node) -> bool:
    return is_standard_op(node, "DequantizeLinear") and not _out_of_scope(node)


def _is_quantize_or_dequantize(node: gs.Node) -> bool:
    return _is_quantize(node) or _is_dequantize(node)


def _is_op(*op_types: str) -> Callable[[gs.Node], bool]:
    return lambda node: is_standard_op(node, *op_types)


@dataclasses.dataclass(frozen=True)
class _Rule:
    id: str
    severity: str
    description: str
    applies: Callable[[gs.Node], bool]
    check: _Check


_RULES = (
    _Rule("unsupported-quantized-operator", ERROR,
          "QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger and DynamicQuantizeLinear cannot be imported",
          _is_op(*_UNSUPPORTED_OPS), _unsupported_operator),
    _Rule("quantize-input-not-float", ERROR, "QuantizeLinear input must be float32, float16 or bfloat16",
          _is_quantize, _quantize_input_not_float),
    _Rule("quantize-type-not-int8", ERROR, "QuantizeLinear must quantize to int8 (an int8 zero point)",
          _is_quantize, _quantize_type_not_int8),
    _Rule("dq-input-not-int8", ERROR,
          "DequantizeLinear input must be int8 (a QuantizeLinear output or an int8 initializer)",
          _is_dequantize, _dq_input_not_int8),
    _Rule("zero-point-not-zero", ERROR, "Q/DQ zero points must be 0 (symmetric quantization only)",
          _is_quantize_or_dequantize, _zero_point_not_zero),
    _Rule("scale-not-constant", ERROR, "Q/DQ scales must be build-time constants",
          _is_quantize_or_dequantize, _not_constant(1, "scale")),
    _Rule("zero-point-not-constant", ERROR, "Q/DQ zero points must be build-time constants",
          _is_quantize_or_dequantize, _not_constant(2, "zero point")),
    _Rule("scale-not-positive-finite", ERROR, "Q/DQ scales must be positive and finite",
          _is_quantize_or_dequantize, _scale_not_positive_finite),
    _Rule("per-channel-activation", ERROR, "activations must be quantized per-tensor (scalar scale)",
          _is_quantize_or_dequantize, _per_channel_activation),
    _Rule("per-channel-axis", ERROR,
          "per-channel weight scales must run along the output-channel axis of the layer reading the weight",
          _is_dequantize, _per_channel_axis),
    _Rule("per-channel-before-opset-13", ERROR, "per-channel quantization needs opset 13 or later",
          _is_quantize_or_dequantize, _per_channel_before_opset_13),
    _Rule("dangling-quantize", ERROR, "every QuantizeLinear output must be read by DequantizeLinear nodes only",
          _is_quantize, _dangling_quantize),
    _Rule("partially-quantized-op", WARNING,
          "Conv/ConvTranspose/Gemm/MatMul with only one of data and weight quantized runs in float",
          _is_op(*_WEIGHTED_OPS), _partially_quantized),
    _Rule("quantized-bias", WARNING, "Conv/ConvTranspose/Gemm biases should be float, not dequantized",
          _is_op(*_BIASED_OPS), _quantized_bias),
)

RULES: dict[str, str] = {rule.id: rule.description for rule in _RULES}


# ---------------------------------------------------------------------------------------------------------
# Graph and type helpers


def _build_time_constants(graph: gs.Graph) -> frozenset[int]:
    """Ids of the tensors TensorRT can compute while building: outputs of Constant nodes and of nodes whose
    inputs all are constants or such outputs (gs.Constant initializers are constants by type). Walks the
    graph, then its subgraphs, each in topological order, so outer values are known before the subgraphs
    that read them. Nodes holding subgraphs never count, nor nodes without inputs but Constant (random
    generators)."""
    known: set[int] = set()
    for subgraph in all_graphs(graph):
        for node in subgraph.nodes:
            inputs = [tensor for tensor in node.inputs if tensor.name]
            holds_graph = any(isinstance(value, gs.Graph) for value in node.attrs.values())
            if (not holds_graph and (inputs or is_standard_op(node, "Constant"))
                    and all(isinstance(tensor, gs.Constant) or id(tensor) in known for tensor in inputs)):
                known.update(id(tensor) for tensor in node.outputs)
    return frozenset(known)


def _input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` of ``node``, or None when it is absent or left empty (an omitted optional input)."""
    return node.inputs[index] if index < len(node.inputs) and node.inputs[index].name else None


def _readers(tensor: gs.Tensor) -> Iterator[tuple[gs.Node, int]]:
    """(node, input index) for every place a node (of this graph or a subgraph) reads ``tensor``."""
    for reader in {id(node): node for node in tensor.outputs}.values():
        yield from ((reader, index) for index, read in enumerate(reader.inputs) if read is tensor)


def _made_by(tensor: gs.Tensor, op_type: str) -> gs.Node | None:
    """The ``op_type`` node that produces ``tensor``, looking through ops that only move data; else None."""
    node = single_producer(tensor)
    while node is not None and is_standard_op(node, *_DATA_MOVEMENT_OPS):
        node = single_producer(node.inputs[0])
    return node if node is not None and is_standard_op(node, op_type) else None


def _element_type(tensor: gs.Tensor | None) -> int | None:
    """The ONNX element type of ``tensor``, None when unknown (gs keeps types numpy lacks as ONNX enums)."""
    if tensor is None or tensor.dtype is None:
        return None
    if isinstance(tensor.dtype, int):
        return tensor.dtype
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))


def _quantized_type(node: gs.Node) -> int | None:
    """The element type a Q/DQ node quantizes to or dequantizes from: its zero point's type; for a
    QuantizeLinear without one, ``output_dtype`` or else ONNX's default uint8; for a DequantizeLinear
    without one, its QuantizeLinear's type or its input's."""
    zero_point = _input(node, 2)
    if zero_point is not None:
        return _element_type(zero_point)
    if is_standard_op(node, "QuantizeLinear"):
        return node.attrs.get("output_dtype") or TensorProto.UINT8
    source = _made_by(node.inputs[0], "QuantizeLinear")
    return _quantized_type(source) if source is not None else _element_type(node.inputs[0])


def _out_of_scope(node: gs.Node) -> bool:
    """True for Q/DQ nodes of FP8, INT4 or FP4 types, which this lint does not check."""
    return _quantized_type(node) in _OUT_OF_SCOPE_TYPES


def _scale_size(node: gs.Node) -> int | None:
    """The number of scale values of a Q/DQ node when its scale is 1-D of a known size, else None."""
    value = constant_value(node.inputs[1])
    shape = value.shape if value is not None else node.inputs[1].shape
    return shape[0] if shape is not None and len(shape) == 1 and isinstance(shape[0], int) else None


def _is_per_channel(node: gs.Node) -> bool:
    """True when the node's scale is 1-D with more than one value (per-axis quantization)."""
    size = _scale_size(node)
    return size is not None and size > 1


def _rank(tensor: gs.Tensor) -> int | None:
    """The rank of ``tensor``; for the output of a QuantizeLinear whose shape is unknown, its input's."""
    source = producer(tensor, "QuantizeLinear")
    shape = tensor.shape if tensor.shape is not None or source is None else source.inputs[0].shape
    return len(shape) if shape is not None else None


def _axis(node: gs.Node, opset: int, rank: int | None) -> int | None:
    """The quantization axis of a Q/DQ node, non-negative; None when it is negative and the rank unknown.
    Before opset 13 there is no attribute and TensorRT uses axis 0."""
    axis = node.attrs.get("axis", 1 if opset >= 13 else 0)
    if axis >= 0:
        return axis
    return axis + rank if rank is not None else None


def _output_channel_axis(reader: gs.Node, index: int, rank: int | None) -> int | None:
    """The output-channel axis of the weight that ``reader`` reads at input ``index``; None when that input is
    not a weight of a Conv, ConvTranspose, Gemm or MatMul (or the rank a MatMul needs is unknown)."""
    if index != 1:
        return None
    if is_standard_op(reader, "Conv"):
        return 0
    if is_standard_op(reader, "ConvTranspose"):
        return 1
    if is_standard_op(reader, "Gemm"):
        return 0 if reader.attrs.get("transB", 0) else 1
    if is_standard_op(reader, "MatMul") and rank is not None:
        return rank - 1
    return None


def _label(node: gs.Node) -> str:
    """The node's name, or its first output's name for an unnamed node."""
    return node.name or node.outputs[0].name


def _type_name(element_type: int) -> str:
    return TensorProto.DataType.Name(element_type).lower()


def _offending(values: np.ndarray, bad: np.ndarray) -> str:
    """The values of ``values`` where ``bad`` holds, for a message: the value of a scalar, else how many of
    how many, and the first."""
    if values.size == 1:
        return f"{values.item():.6g}"
    return f"({int(bad.sum())} of {values.size} values, first {values[bad].flat[0]:.6g})"
