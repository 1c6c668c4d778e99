"""Dynamic quantization: int8 weights, activations quantized at run time, for MatMul-heavy models (transformer
encoders) when no calibration data exists. ``quantize_dynamic(graph, ...)`` edits a gs graph in place; the
quantize-qdq pass calls it for ``mode=dynamic``.

Math. ``DynamicQuantizeLinear(x)`` computes, on every run, over the whole tensor ``x``:
``lo = min(0, min x)``, ``hi = max(0, max x)``, ``s_x = (hi - lo) / 255`` (onnxruntime: 1 when ``hi = lo``),
``z_x = saturate(round(-lo / s_x))`` and ``x_q = saturate(round(x / s_x) + z_x)`` in uint8 (round half to even).
A constant weight ``W`` [K, N] is int8, symmetric, per output column n (``graphopt.quantize.weights``):
``s_w[n] = max_k |W[k, n]| / 127``, ``W_q = round(W / s_w)`` in [-127, 127], zero point 0 (one scale for the
whole weight with ``per_channel=False``). Then ``x ~ s_x (x_q - z_x)`` and ``W ~ W_q s_w``, so

    x @ W  ~  (s_x * s_w[n]) * sum_k (x_q[., k] - z_x) W_q[k, n]  =  (s_x * s_w) * MatMulInteger(x_q, W_q, z_x)

and the graph computes exactly that, in standard ONNX (opset 11+)::

    x_q, s_x, z_x = DynamicQuantizeLinear(x)               # once per tensor x, shared by all its readers
    y_int32 = MatMulInteger(x_q, W_q, z_x)                 # W_q int8 initializer; its zero point 0 is implied
    y = Mul(Cast(y_int32, to=FLOAT), Mul(s_x, s_w))        # s_w: [N] per channel, or a scalar

Gemm(A, B, C; alpha, beta, transA=0, transB) becomes the same with ``W = alpha * (B^T if transB else B)``
quantized (so ``W_q`` is stored [K, N]) and, when C is given, ``Add(y, beta * C)`` (a new constant when
beta != 1); the Add stays float. The bias Add after a MatMul is left as it is, in float.

Why this form. It is what onnxruntime's ``quantize_dynamic`` writes (``quantization/operators/matmul.py``,
``MatMulInteger``; it also rewrites Gemm as MatMul + Add) and what onnxruntime's level-2 optimizer fuses for
its CPU provider: ``MatMulIntegerToFloatFusion`` turns MatMulInteger -> Cast -> Mul(., Mul(s_x, s_w)), with the
constant bias Add after it, into ``com.microsoft.MatMulIntegerToFloat`` (the operands of the scale Mul must be
in this order: A's scale, then B's), and ``DynamicQuantizeMatMulFusion`` folds a DynamicQuantizeLinear read by
one such node into ``DynamicQuantizeMatMul``. Both kernels take a per-column B scale (MLAS's per-column output
processor) and prepack the constant int8 B. Without onnxruntime's optimizations (``ORT_DISABLE_ALL``) the same
graph runs on the standard kernels. The QDQ form (DynamicQuantizeLinear -> DequantizeLinear -> MatMul <-
DequantizeLinear(W_q)) is also fused by onnxruntime's QDQ selectors into MatMulIntegerToFloat, but without the
bias Add, which then runs apart. onnxruntime merges identical DynamicQuantizeLinear nodes itself (common
subexpressions); writing one per tensor also keeps the ``ORT_DISABLE_ALL`` graph cheap.
Measured (2026-11-29; BERT-base of ``models/build_standard.py`` after ``lossless``; batch 1, sequence 128; one
thread; ORT_ENABLE_ALL; this machine's AVX-512 VNNI CPU; 30 interleaved rounds): float 206 ms, this form 75 ms
(2.74x), per tensor 77 ms, onnxruntime's ``quantize_dynamic`` on the same model 77 ms (all three within noise
of each other); cosine to float over 8 inputs 0.9997 (per tensor and onnxruntime's, which is per tensor by
default: 0.9996); file 418 -> 105 MiB. The QDQ form, in an earlier run: 2.45x where this form made 2.65x.

Gather on a constant float32 table [V, D] along axis 0 (an embedding lookup) reads an int8 table and writes
``DequantizeLinear(Gather(T_q, indices), s_t)``: per column d of the table (``axis=-1``, opset 13+; per tensor
below opset 13 or with ``per_channel=False``). Only the gathered rows are dequantized; the file shrinks by 3/4
of the table (BERT-base: 94 MB of embeddings). onnxruntime's ``quantize_dynamic`` does the same, per tensor.
(A per-axis DequantizeLinear is slower than a per-tensor one, 0.16 ms against 0.02 ms for [128, 768] on one
thread: under 0.5% of BERT-base's time.)

Declines. Conv stays float (``conv_integer_slow``): ConvInteger has no fast kernel on onnxruntime's CPU
provider and no fusion makes one (onnxruntime's dynamic Conv, measured here: MobileNetV2 10x and ResNet-50
6.6x slower than float). The whole graph, with a warning: ``already_quantized`` (it holds quantization ops, so
a second run changes nothing) and ``opset_below_11`` (DynamicQuantizeLinear is opset 11). Per node, with
``skipped.<reason>`` and an info diagnostic (``REASONS``): ``excluded_node``, ``excluded_op_type``,
``weight_not_constant`` (attention's Q K^T and probabilities x V), ``not_float32``, ``weight_rank``,
``constant_operand``, ``gemm_trans_a``, ``gemm_beta``, ``gather_axis``, ``conv_integer_slow``. Names in
``exclude_nodes`` that name no node are not reported here (the calling pass does that). Only the main graph
is quantized; If/Loop/Scan bodies stay float. A weight read by several nodes is quantized once.

The graph stays topologically sorted: new nodes take the place of the node they replace, and a tensor's
DynamicQuantizeLinear goes before its first quantized reader. Graph inputs and outputs keep their names and
types: the last new node writes the replaced node's output tensor.

Limitation: int8 weights with uint8 activations (U8S8) run without saturation on CPUs with VNNI (AVX512-VNNI,
AVX-VNNI); on AVX2 CPUs without it, onnxruntime's U8S8 kernel adds pairs of products in int16 and can saturate
(onnxruntime's answer is ``reduce_range``: 7-bit weights; not offered here).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.pass_base import Diagnostic
from graphopt.quantize.weights import quantize, weight_params
from graphopt.rewrite import NameAllocator, constant_array, constant_value, is_standard_op, release_values

logger = logging.getLogger(__name__)

# Ops that mean the graph is already quantized (standard, and onnxruntime's com.microsoft fused forms).
QUANTIZATION_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearMatMul", "QLinearConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm",
})

REASONS = {
    "excluded_node": "named in exclude_nodes",
    "excluded_op_type": "its op type is in exclude_op_types",
    "weight_not_constant": "its weight (input 1) is not a constant",
    "not_float32": "its weight is not float32",
    "weight_rank": "its weight is not a matrix (2-D)",
    "constant_operand": "its activation operand is a constant",
    "gemm_trans_a": "Gemm with transA=1",
    "gemm_beta": "Gemm whose bias is computed and beta != 1",
    "gather_axis": "Gather along an axis other than 0 (not an embedding lookup)",
    "conv_integer_slow": "ConvInteger is much slower than float Conv on onnxruntime's CPU provider",
}


@dataclasses.dataclass(frozen=True)
class DynamicResult:
    """What ``quantize_dynamic`` did: ``stats`` counts ``quantized.<op>`` and ``skipped.<reason>``."""

    changed: bool
    stats: dict[str, int]
    diagnostics: tuple[Diagnostic, ...]


def quantize_dynamic(graph: gs.Graph, *, exclude_op_types: Sequence[str] = (), exclude_nodes: Sequence[str] = (),
                     per_channel: bool = True, names: NameAllocator | None = None) -> DynamicResult:
    """Quantize the MatMul and Gemm nodes with constant weights and the embedding Gathers of ``graph`` (not of
    its subgraphs) in place, as the module docstring describes. ``graph`` must be topologically sorted; it
    stays so. ``names``: the allocator for new names (one is made from ``graph`` when None)."""
    declined = _decline(graph)
    if declined is not None:
        reason, message = declined
        return DynamicResult(False, {f"skipped.{reason}": 1}, (Diagnostic("warning", message),))
    rewriter = _Rewriter(per_channel, graph.opset, names or NameAllocator(graph))
    stats: collections.Counter[str] = collections.Counter()
    diagnostics = []
    for node in [node for node in graph.nodes if _is_candidate(node)]:
        reason = _exclusion(node, exclude_op_types, exclude_nodes) or _reason(node)
        if reason is None:
            stats[f"quantized.{node.op}"] += 1
            rewriter.rewrite(node)
        else:
            stats[f"skipped.{reason}"] += 1
            diagnostics.append(_skipped_diagnostic(node, reason))
    graph.nodes[:] = [new for node in graph.nodes for new in rewriter.replacements.get(id(node), [node])]
    logger.debug("dynamic quantization: %s", dict(stats))
    return DynamicResult(bool(rewriter.replacements), dict(stats), tuple(diagnostics))


def _decline(graph: gs.Graph) -> tuple[str, str] | None:
    """(reason, message) when the whole graph is left as it is."""
    if any(node.op in QUANTIZATION_OPS for node in graph.nodes):
        return "already_quantized", "dynamic quantization: the graph already holds quantization ops; left as it is"
    if (graph.opset or 0) < 11:
        return "opset_below_11", (f"dynamic quantization: the model's opset is {graph.opset}; DynamicQuantizeLinear "
                                   "needs opset 11 or later (convert the model first)")
    return None


def _is_candidate(node: gs.Node) -> bool:
    """MatMul, Gemm and Conv, and Gather from a constant float32 table: the nodes quantized or reported."""
    if is_standard_op(node, "Gather"):
        return isinstance(node.inputs[0], gs.Constant) and node.inputs[0].dtype == np.float32
    return is_standard_op(node, "MatMul", "Gemm", "Conv")


def _exclusion(node: gs.Node, exclude_op_types: Sequence[str], exclude_nodes: Sequence[str]) -> str | None:
    if node.name and node.name in exclude_nodes:
        return "excluded_node"
    return "excluded_op_type" if node.op in exclude_op_types else None


def _reason(node: gs.Node) -> str | None:
    """Why a candidate stays float; None when it is quantized."""
    if node.op == "Conv":
        return "conv_integer_slow"
    if node.op == "Gather":
        if node.attrs.get("axis", 0) != 0:
            return "gather_axis"
        return None if len(node.inputs[0].shape) == 2 else "weight_rank"
    return _weight_reason(node.inputs[1]) or _operand_reason(node)


def _weight_reason(weight: gs.Tensor) -> str | None:
    if not isinstance(weight, gs.Constant):
        return "weight_not_constant"
    if weight.dtype != np.float32:
        return "not_float32"
    return None if len(weight.shape) == 2 else "weight_rank"


def _operand_reason(node: gs.Node) -> str | None:
    """Why the activation operand or the attributes of a MatMul/Gemm keep it float."""
    operand = node.inputs[0]
    if isinstance(operand, gs.Constant) or constant_value(operand) is not None:
        return "constant_operand"
    if node.op != "Gemm":
        return None
    if node.attrs.get("transA", 0):
        return "gemm_trans_a"
    bias = _gemm_bias(node)
    if bias is not None and not isinstance(bias, gs.Constant) and node.attrs.get("beta", 1.0) != 1.0:
        return "gemm_beta"
    return None


def _gemm_bias(node: gs.Node) -> gs.Tensor | None:
    return node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None


def _skipped_diagnostic(node: gs.Node, reason: str) -> Diagnostic:
    label = node.name or node.outputs[0].name
    return Diagnostic("info", f"{node.op} left in float ({reason}): {REASONS[reason]}", node=label)


class _Rewriter:
    """Builds the nodes that replace each quantized node (``replacements``: by the replaced node's id, the
    nodes in its place, in order). Quantized weights and activations are made once and reused."""

    def __init__(self, per_channel: bool, opset: int, names: NameAllocator):
        self.per_channel, self.opset, self.names = per_channel, opset, names
        self.weights: dict[tuple, tuple[gs.Constant, gs.Constant]] = {}
        self.activations: dict[int, list[gs.Variable]] = {}
        self.replacements: dict[int, list[gs.Node]] = {}

    def rewrite(self, node: gs.Node) -> None:
        if node.op == "Gather":
            self._gather(node)
        elif node.op == "Gemm":
            self._gemm(node)
        else:
            self._matmul(node)

    def _matmul(self, node: gs.Node) -> None:
        operand, weight = node.inputs[0], node.inputs[1]
        output = node.outputs[0]
        _detach(node)
        nodes = self._integer_matmul(node.name, operand, self._weight(weight, 1), output)
        self.replacements[id(node)] = nodes
        _release_if_unread(weight)

    def _gemm(self, node: gs.Node) -> None:
        """Gemm = MatMul of A by ``alpha * B`` (transposed to [K, N] when transB), then ``Add(., beta * C)``."""
        operand, weight, bias = node.inputs[0], node.inputs[1], _gemm_bias(node)
        output = node.outputs[0]
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        _detach(node)
        quantized = self._weight(weight, 1, transposed=bool(node.attrs.get("transB", 0)), alpha=alpha)
        product = output if bias is None else self._variable(f"{output.name}_matmul", np.float32, output.shape)
        nodes = self._integer_matmul(node.name, operand, quantized, product)
        if bias is not None:
            if beta != 1.0:
                bias = gs.Constant(self.names.fresh(f"{bias.name}_scaled"),
                                   (np.float32(beta) * constant_array(bias)).astype(np.float32))
            nodes.append(gs.Node("Add", self.names.fresh(f"{node.name or output.name}_bias"),
                                 inputs=[product, bias], outputs=[output]))
        self.replacements[id(node)] = nodes
        _release_if_unread(weight)

    def _gather(self, node: gs.Node) -> None:
        """The Gather reads the int8 table; a DequantizeLinear after it writes the Gather's output."""
        table, output = node.inputs[0], node.outputs[0]
        quantized, scale = self._weight(table, 1 if self.opset >= 13 else None)  # per-axis DequantizeLinear: 13
        gathered = self._variable(f"{output.name}_quantized", np.int8, output.shape)
        node.inputs[0], node.outputs[0] = quantized, gathered
        attrs = {"axis": -1} if scale.shape else {}  # the table's columns are the gathered tensor's last axis
        dequantize = gs.Node("DequantizeLinear", self.names.fresh(f"{node.name or output.name}_DequantizeLinear"),
                             attrs, inputs=[gathered, scale], outputs=[output])
        self.replacements[id(node)] = [node, dequantize]
        _release_if_unread(table)

    def _integer_matmul(self, name: str, operand: gs.Tensor, weight: tuple[gs.Constant, gs.Constant],
                        output: gs.Variable) -> list[gs.Node]:
        """``output = Mul(Cast(MatMulInteger(x_q, W_q, z_x)), Mul(s_x, s_w))``, preceded by the operand's
        DynamicQuantizeLinear when this is its first quantized reader. The MatMulInteger takes ``name``."""
        nodes: list[gs.Node] = []
        quantized_operand, operand_scale, operand_zero_point = self._dynamic_quantized(operand, nodes)
        quantized_weight, weight_scale = weight
        label = name or self.names.fresh(f"{output.name}_MatMulInteger")
        accumulated = self._variable(f"{output.name}_int32", np.int32, output.shape)
        unscaled = self._variable(f"{output.name}_unscaled", np.float32, output.shape)
        scale = self._variable(f"{output.name}_scale", np.float32, list(weight_scale.shape))
        nodes += [
            gs.Node("MatMulInteger", label, inputs=[quantized_operand, quantized_weight, operand_zero_point],
                    outputs=[accumulated]),
            gs.Node("Cast", self.names.fresh(f"{label}_Cast"), {"to": onnx.TensorProto.FLOAT},
                    inputs=[accumulated], outputs=[unscaled]),
            gs.Node("Mul", self.names.fresh(f"{label}_scale"), inputs=[operand_scale, weight_scale], outputs=[scale]),
            gs.Node("Mul", self.names.fresh(f"{label}_rescale"), inputs=[unscaled, scale], outputs=[output]),
        ]
        return nodes

    def _dynamic_quantized(self, tensor: gs.Tensor, nodes: list[gs.Node]) -> list[gs.Variable]:
        """[x_q, s_x, z_x] of ``tensor``; the first call appends its DynamicQuantizeLinear to ``nodes``."""
        if id(tensor) not in self.activations:
            outputs = [self._variable(f"{tensor.name}_quantized", np.uint8, tensor.shape),
                       self._variable(f"{tensor.name}_scale", np.float32, []),
                       self._variable(f"{tensor.name}_zero_point", np.uint8, [])]
            nodes.append(gs.Node("DynamicQuantizeLinear", self.names.fresh(f"{tensor.name}_DynamicQuantizeLinear"),
                                 inputs=[tensor], outputs=outputs))
            self.activations[id(tensor)] = outputs
        return self.activations[id(tensor)]

    def _weight(self, weight: gs.Constant, axis: int | None, *, transposed: bool = False,
                alpha: float = 1.0) -> tuple[gs.Constant, gs.Constant]:
        """The int8 initializer and scale of ``alpha * weight`` (transposed when asked), per channel along
        ``axis`` unless ``per_channel`` is off; made once per weight and arguments."""
        axis = axis if self.per_channel else None
        key = (id(weight), axis, transposed, alpha)
        if key not in self.weights:
            values = constant_array(weight)
            values = (np.float32(alpha) * values).astype(np.float32) if alpha != 1.0 else values
            # A transposed matrix is quantized as stored, per row where its transpose is per column (the same
            # numbers: quantization is elementwise), and the int8 result is transposed: no float copy is made.
            params = weight_params(values, 1 - axis if transposed and axis is not None else axis)
            quantized = quantize(values, params)
            del values
            quantized = np.ascontiguousarray(quantized.T) if transposed else quantized
            self.weights[key] = (gs.Constant(self.names.fresh(f"{weight.name}_quantized"), quantized),
                                 gs.Constant(self.names.fresh(f"{weight.name}_scale"), params.scale))
        return self.weights[key]

    def _variable(self, name: str, dtype: type, shape: Sequence | None) -> gs.Variable:
        return gs.Variable(self.names.fresh(name), dtype, shape)


def _detach(node: gs.Node) -> None:
    """Disconnect ``node`` from its tensors (it is replaced), so that new nodes can write its outputs."""
    node.inputs.clear()
    node.outputs.clear()


def _release_if_unread(weight: gs.Constant) -> None:
    """Free the float values of a weight that no node reads any more (see ``release_values``)."""
    if not weight.outputs:
        release_values(weight)
