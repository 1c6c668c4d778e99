"""fuse-layer-norm: replace the decomposed layer normalization that exporters write with LayerNormalization.

Algebra. Over the trailing axes A = {axis, ..., rank-1} of x,
    mean = ReduceMean(x, A)      d = x - mean      var = ReduceMean(d * d, A)
    y    = d / sqrt(var + eps) * gamma + beta
is LayerNormalization(x, gamma, beta, axis, epsilon=eps). The pattern is the one PyTorch exports for
nn.LayerNorm below opset 17 (and for layer norms written out by hand, e.g. the old BertLayerNorm):
    ReduceMean(x) -> Sub(x, mean) -> Pow(d, 2) | Mul(d, d) -> ReduceMean -> Add(var, eps) -> Sqrt -> Div(d, .)
    [-> Mul(., gamma)] [-> Add(., beta)]
Add and Mul are matched with their operands in either order. ``d`` may feed both the square and the Div, or
be computed twice (a second Sub(x, mean), as exporters without common-subexpression elimination write).
Both ReduceMeans must keep dims and reduce the same trailing axes (the ``axes`` attribute before opset 18,
a constant input from 18 on; negative axes are normalized with the static rank of x). Constants may be
initializers or Constant nodes.

The affine tail is optional, and the fusion takes in only what fits: a Mul after the Div joins as
LayerNormalization's Scale when it is the Div's only consumer and its other operand is a constant that
broadcasts over the normalized axes only; the same for an Add as its B. Otherwise the tail stays as it was
and the core fuses alone (Scale = ones), which computes the same values. The new Scale/B are the constants
reshaped to the normalized shape (reused as they are when they already have it). One case is not split:
when the Div's output is also a graph output, the tail is still taken (a rule's ``match`` does not see the
graph) and the driver then declines the whole match as ``intermediate_is_graph_output``.

Declines (``skipped.layer_norm.<reason>``): ``opset_below_17`` (LayerNormalization needs default-domain
opset 17; the model's opset is never raised); ``unsupported_dtype`` (not float16/float32/float64);
``keepdims_not_1``; ``axes_not_constant``; ``axes_not_trailing`` (including an empty axes input);
``axes_differ`` (the two ReduceMeans reduce different axes); ``rank_unknown``; ``normalized_shape_not_static``;
``eps_not_scalar`` (eps not a one-element constant, or one that would broadcast the variance to a higher
rank); ``pow_exponent_not_2``; and what the fusion driver refuses for every rule (an intermediate that is a
graph output or has consumers outside the match, e.g. ``d`` or ``mean`` used elsewhere).

Numerics: LayerNormalization computes in float32 (``stash_type=1``) or wider, so the fused result agrees
with the decomposed one to float32 rounding (float16 models come out more accurate than before).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.fusion import FusionPass, FusionRule, Match, both_orders, producer
from graphopt.rewrite import NameAllocator, constant_value, is_standard_op, replace_nodes

logger = logging.getLogger(__name__)

_FLOATS = (np.float16, np.float32, np.float64)
MIN_OPSET = 17


@dataclasses.dataclass
class LayerNormMatch(Match):
    """The matched nodes plus their roles: the input ``x``, the ReduceMean computing the variance, the ``eps``
    tensor, the exponent of ``Pow`` (None for ``Mul(d, d)``), and the optional ``scale``/``bias`` tensors of
    the affine tail."""

    x: gs.Tensor | None = None
    var_mean: gs.Node | None = None
    eps: gs.Tensor | None = None
    exponent: gs.Tensor | None = None
    scale: gs.Tensor | None = None
    bias: gs.Tensor | None = None


class LayerNormRule(FusionRule):
    name = "layer_norm"

    def match(self, node: gs.Node) -> LayerNormMatch | None:
        """Anchored on the Div: the core is found upstream of it, then the affine tail downstream."""
        if not is_standard_op(node, "Div") or len(node.inputs) != 2:
            return None
        d, denominator = node.inputs
        sqrt = producer(denominator, "Sqrt")
        add_eps = producer(sqrt.inputs[0], "Add") if sqrt else None
        if add_eps is None:
            return None
        for var_tensor, eps in both_orders(add_eps.inputs):
            var_mean = producer(var_tensor, "ReduceMean")
            if var_mean is not None and constant_value(eps) is not None:
                break
        else:
            return None
        square = producer(var_mean.inputs[0], "Pow", "Mul")
        sub = producer(d, "Sub")
        if square is None or sub is None or len(square.inputs) != 2 or len(sub.inputs) != 2:
            return None
        x, mean_tensor = sub.inputs
        mean = producer(mean_tensor, "ReduceMean")
        if mean is None or mean.inputs[0] is not x:
            return None
        # The squared deviation reads d itself, or the same Sub(x, mean) computed a second time.
        squared = square.inputs[0]
        second_sub = None if squared is d else producer(squared, "Sub")
        if squared is not d and (second_sub is None or list(second_sub.inputs) != [x, mean_tensor]):
            return None
        if square.op == "Mul" and square.inputs[1] is not squared:
            return None
        exponent = square.inputs[1] if square.op == "Pow" else None
        if exponent is not None and constant_value(exponent) is None:
            return None
        nodes = [mean, sub, *([second_sub] if second_sub else []), square, var_mean, add_eps, sqrt, node]
        match = LayerNormMatch(nodes, x=x, eps=eps, exponent=exponent, var_mean=var_mean)
        self._extend_affine(match)
        return match

    def _extend_affine(self, match: LayerNormMatch) -> None:
        layout = _layout(match.x, match.nodes[0])
        if isinstance(layout, str):
            return
        _, normalized = layout
        tail = _sole_consumer(match.last)
        if tail is not None and is_standard_op(tail, "Mul"):
            scale = _affine_operand(tail, match.last.outputs[0], normalized)
            if scale is None:
                return
            match.nodes.append(tail)
            match.scale = scale
            tail = _sole_consumer(tail)
        if tail is not None and is_standard_op(tail, "Add"):
            bias = _affine_operand(tail, match.last.outputs[0], normalized)
            if bias is not None:
                match.nodes.append(tail)
                match.bias = bias

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        assert isinstance(match, LayerNormMatch)
        if (graph.opset or 0) < MIN_OPSET:
            return f"opset_below_{MIN_OPSET}"
        eps = constant_value(match.eps)
        if np.dtype(eps.dtype).type not in _FLOATS:
            return "unsupported_dtype"
        mean, var_mean = match.nodes[0], match.var_mean
        layout = _layout(match.x, mean)
        if isinstance(layout, str):
            return layout
        variance_layout = _layout(match.x, var_mean)
        if isinstance(variance_layout, str):
            return variance_layout
        if variance_layout != layout:
            return "axes_differ"
        if eps.size != 1 or eps.ndim > len(match.x.shape):
            return "eps_not_scalar"
        if match.exponent is not None:
            exponent = constant_value(match.exponent)
            if exponent.size != 1 or exponent.ndim > len(match.x.shape) or float(exponent.reshape(-1)[0]) != 2.0:
                return "pow_exponent_not_2"
        return None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        assert isinstance(match, LayerNormMatch)
        axis, normalized = _layout(match.x, match.nodes[0])
        eps = constant_value(match.eps)
        dtype = eps.dtype
        output = match.last.outputs[0]
        scale = _as_normalized(match.scale, normalized, dtype, names, f"{output.name}_scale")
        inputs = [match.x, scale]
        if match.bias is not None:
            inputs.append(_as_normalized(match.bias, normalized, dtype, names, f"{output.name}_bias"))
        replace_nodes(graph, match.nodes, gs.Node(
            "LayerNormalization", names.fresh(f"{output.name}_layer_norm"),
            attrs={"axis": axis, "epsilon": float(eps.reshape(-1)[0])}, inputs=inputs, outputs=[output]))
        logger.debug("fused layer norm into %s (axis %d)", output.name, axis)


def _layout(x: gs.Tensor, reduce: gs.Node) -> tuple[int, tuple[int, ...]] | str:
    """``(axis, normalized_shape)`` of the trailing axes ``reduce`` averages ``x`` over, or a decline reason."""
    if reduce.attrs.get("keepdims", 1) != 1:
        return "keepdims_not_1"
    if "axes" in reduce.attrs:
        axes = list(reduce.attrs["axes"])
    elif len(reduce.inputs) > 1 and reduce.inputs[1].name:
        value = constant_value(reduce.inputs[1])
        if value is None:
            return "axes_not_constant"
        axes = [int(a) for a in value.reshape(-1)]
        if not axes:  # an empty axes input reduces nothing (noop_with_empty_axes) or everything: neither is ours
            return "axes_not_trailing"
    elif reduce.attrs.get("noop_with_empty_axes", 0):
        return "axes_not_trailing"
    else:
        axes = None  # all axes
    if x.shape is None:
        return "rank_unknown"
    rank = len(x.shape)
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    count = len(axes)
    if count == 0 or sorted(axes) != list(range(rank - count, rank)):
        return "axes_not_trailing"
    normalized = tuple(x.shape[rank - count:])
    if not all(isinstance(dim, int) and dim > 0 for dim in normalized):
        return "normalized_shape_not_static"
    return rank - count, normalized


def _affine_operand(node: gs.Node, data: gs.Tensor, normalized: tuple[int, ...]) -> gs.Tensor | None:
    """The other operand of the binary ``node`` that reads ``data``, if it is a constant that broadcasts over
    the normalized axes only (so the product/sum keeps ``data``'s shape)."""
    if len(node.inputs) != 2 or node.inputs[0] is node.inputs[1] or data not in node.inputs:
        return None
    other = node.inputs[1] if node.inputs[0] is data else node.inputs[0]
    value = constant_value(other)
    if value is None or np.dtype(value.dtype).type not in _FLOATS:
        return None
    shape = value.shape
    leading, trailing = shape[:max(0, len(shape) - len(normalized))], shape[max(0, len(shape) - len(normalized)):]
    if any(dim != 1 for dim in leading):
        return None
    if any(dim not in (1, full) for dim, full in zip(reversed(trailing), reversed(normalized), strict=False)):
        return None
    return other


def _as_normalized(tensor: gs.Tensor | None, normalized: tuple[int, ...], dtype: np.dtype,
                   names: NameAllocator, base: str) -> gs.Constant:
    """``tensor``'s constant value as an array of exactly the normalized shape (ones when absent)."""
    if tensor is None:
        return gs.Constant(names.fresh(base), np.ones(normalized, dtype))
    if isinstance(tensor, gs.Constant) and tuple(tensor.shape) == normalized:
        return tensor
    value = constant_value(tensor)
    value = value.reshape(value.shape[max(0, value.ndim - len(normalized)):])
    return gs.Constant(names.fresh(base), np.ascontiguousarray(np.broadcast_to(value, normalized)))


def _sole_consumer(node: gs.Node) -> gs.Node | None:
    output = node.outputs[0]
    return output.outputs[0] if len(node.outputs) == 1 and len(output.outputs) == 1 else None


class FuseLayerNorm(FusionPass):
    name = "fuse-layer-norm"
    summary = "replace the decomposed ReduceMean/Sub/Pow/Sqrt/Div layer norm with LayerNormalization (opset 17+)"
    rules = (LayerNormRule(),)
