"""fuse-matmul-add-into-gemm: turn MatMul(A, B) followed by Add(., C) into Gemm(A, B, C).

Algebra. For 2-D A [M, K] and B [K, N], Gemm(A, B, C) = A @ B + C with C broadcast unidirectionally to
[M, N] (alpha = beta = 1, no transposes). So Add(MatMul(A, B), C) = Gemm(A, B, C) (either Add operand may be
the MatMul) when C can be broadcast to [M, N] without enlarging it: a scalar, [N], [1, N], [M, 1], [1, 1] or
[M, N], where each dimension of C is provably 1 or equal to the output's (a known number, or the same
symbolic name). ORT's Gemm may add C in a different order than a separate Add: results agree within float
rounding. B and C may be constants or computed tensors; nothing is modified but the two nodes.

Rule ``matmul_add`` (stats ``rewrites.matmul_add`` / ``skipped.matmul_add.<reason>``). Declines:
``opset_too_old`` (before opset 7 Gemm and Add broadcast by attribute); ``unsupported_dtype`` (Gemm is fused
for float32 and float64 only, the types ORT's CPU Gemm runs); ``operand_rank_unknown`` (A's or B's rank not
known from shapes); ``operand_not_2d`` (A or B not rank 2: a batched or vector MatMul);
``bias_not_broadcastable`` (C's shape unknown, of rank > 2, or not provably broadcastable to [M, N]);
``bias_is_matmul_output`` (Add(h, h)); and what the fusion driver refuses for every rule
(``intermediate_is_graph_output``, ``intermediate_has_other_consumers``).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.fusion import FusionPass, FusionRule, Match, absorb_with_bias, single_producer
from graphopt.rewrite import NameAllocator, is_standard_op

_FLOATS = (np.float32, np.float64)


def _bias(match: Match) -> gs.Tensor:
    """The Add operand that is not the MatMul's output."""
    matmul, add = match.nodes
    return add.inputs[1] if add.inputs[0] is matmul.outputs[0] else add.inputs[0]


def _dtype(match: Match) -> np.dtype | None:
    matmul, add = match.nodes
    for tensor in (*matmul.inputs, add.outputs[0]):
        if tensor.dtype is not None:
            return np.dtype(tensor.dtype)
    return None


def _broadcasts_to(shape: list, target: list) -> bool:
    """True when every dimension of ``shape`` (right-aligned on ``target``) is provably 1 or equal."""
    if len(shape) > len(target):
        return False
    for dim, out in zip(reversed(shape), reversed(target), strict=False):
        if dim == 1:
            continue
        if dim is None or out is None or dim != out:
            return False
    return True


class MatMulAddRule(FusionRule):
    name = "matmul_add"
    pattern = ("MatMul", "Add")

    def match(self, node: gs.Node) -> Match | None:
        if not is_standard_op(node, "Add") or len(node.inputs) != 2:
            return None
        for operand in node.inputs:
            producer = single_producer(operand)
            if producer is not None and is_standard_op(producer, "MatMul") and producer.outputs[0] is operand:
                return Match([producer, node])
        return None

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        matmul, add = match.nodes
        if graph.opset < 7:
            return "opset_too_old"
        dtype = _dtype(match)
        if dtype is None or dtype.type not in _FLOATS:
            return "unsupported_dtype"
        a, b = matmul.inputs
        if a.shape is None or b.shape is None:
            return "operand_rank_unknown"
        if len(a.shape) != 2 or len(b.shape) != 2:
            return "operand_not_2d"
        if add.inputs[0] is add.inputs[1]:
            return "bias_is_matmul_output"
        bias = _bias(match)
        if bias.shape is None or not _broadcasts_to(list(bias.shape), [a.shape[0], b.shape[1]]):
            return "bias_not_broadcastable"
        return None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        matmul, add = match.nodes
        bias = _bias(match)
        matmul.op, matmul.attrs = "Gemm", {}
        absorb_with_bias(graph, matmul, add, bias)


class FuseMatMulAddIntoGemm(FusionPass):
    name = "fuse-matmul-add-into-gemm"
    summary = "turn a 2-D MatMul followed by an Add of a broadcastable bias into a Gemm"
    rules = (MatMulAddRule(),)
