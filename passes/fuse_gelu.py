"""fuse-gelu: replace the decomposed GELU that exporters write with Gelu (opset 20).

Algebra. Gelu(x) = 0.5 * x * (1 + erf(x / sqrt(2)))                                  (approximate='none')
         Gelu(x) = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))          (approximate='tanh')
The outer product is matched in any association and operand order: ``(0.5 * x) * s``, ``(x * s) * 0.5``,
``(0.5 * s) * x``, ..., with the half also written as a division by 2 (``(x * s) / 2``, ``(x / 2) * s``);
``s = 1 + erf(...)`` or ``1 + tanh(...)`` with the Add either way round. Inside, ``x / sqrt(2)`` is
``Div(x, 1.4142135)`` or ``Mul(x, 0.70710678)``; ``x^3`` is ``Pow(x, 3)``, ``x * (x * x)`` or
``(x * x) * x``; every Mul and Add is matched with its operands in either order. Constants may be
initializers or Constant nodes, and must be one-element tensors (that do not raise the rank of x); their
values are compared with a relative tolerance of max(1e-6, machine epsilon of the dtype), so float32
roundings of the constants match and float16 ones do too.

Declines (``skipped.gelu.<reason>``): ``opset_below_20`` (Gelu needs default-domain opset 20; the model's
opset is never raised); ``unsupported_dtype`` (not float16/float32/float64); ``constant_mismatch`` (the
shape of a GELU with a constant of another value, e.g. 0.05 instead of 0.044715); ``constant_not_scalar``;
``rank_unknown`` (a constant of rank >= 1 and x of unknown rank, so broadcasting cannot be ruled out); and
what the fusion driver refuses for every rule (an intermediate that is a graph output or has consumers
outside the match).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.fusion import FusionPass, FusionRule, Match, both_orders, producer
from graphopt.rewrite import NameAllocator, constant_value, is_standard_op, replace_nodes

logger = logging.getLogger(__name__)

_FLOATS = (np.float16, np.float32, np.float64)
MIN_OPSET = 20
RELATIVE_TOLERANCE = 1e-6
SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
KAPPA = 0.044715


@dataclasses.dataclass
class GeluMatch(Match):
    """The matched nodes plus ``x``, the ``approximate`` mode, and the constants with the values they must
    have: ``(tensor, expected)`` pairs."""

    x: gs.Tensor | None = None
    approximate: str = "none"
    constants: list[tuple[gs.Tensor, float]] = dataclasses.field(default_factory=list)


class GeluRule(FusionRule):
    name = "gelu"

    def match(self, node: gs.Node) -> GeluMatch | None:
        """Anchored on the outer Mul (or Div by 2); the structure is matched here, the constants' values in
        ``check``."""
        if not is_standard_op(node, "Mul", "Div") or len(node.inputs) != 2:
            return None
        for outer_nodes, half, x, s in _outer_forms(node):
            inner = _match_inner(s, x)
            if inner is not None:
                inner_nodes, approximate, constants = inner
                nodes = [*inner_nodes, *outer_nodes, node]
                if len({id(n) for n in nodes}) == len(nodes):
                    return GeluMatch(nodes, x=x, approximate=approximate, constants=[half, *constants])
        return None

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        assert isinstance(match, GeluMatch)
        if (graph.opset or 0) < MIN_OPSET:
            return f"opset_below_{MIN_OPSET}"
        dtype = _float_dtype(match.x.dtype if match.x.dtype is not None
                             else constant_value(match.constants[0][0]).dtype)
        if dtype is None:
            return "unsupported_dtype"
        tolerance = max(RELATIVE_TOLERANCE, float(np.finfo(dtype).eps))
        for tensor, expected in match.constants:
            value = constant_value(tensor)
            if value.size != 1:
                return "constant_not_scalar"
            if value.ndim > 0 and match.x.shape is None:
                return "rank_unknown"
            if match.x.shape is not None and value.ndim > len(match.x.shape):
                return "constant_not_scalar"
            if not math.isclose(float(value.reshape(-1)[0]), expected, rel_tol=tolerance):
                return "constant_mismatch"
        return None

    def rewrite(self, match: Match, graph: gs.Graph, names: NameAllocator) -> None:
        assert isinstance(match, GeluMatch)
        output = match.last.outputs[0]
        gelu = gs.Node("Gelu", names.fresh(f"{output.name}_gelu"), attrs={"approximate": match.approximate},
                       inputs=[match.x], outputs=[output])
        replace_nodes(graph, match.nodes, gelu)
        logger.debug("fused gelu (%s) into %s", match.approximate, output.name)


Outer = tuple[list[gs.Node], tuple[gs.Tensor, float], gs.Tensor, gs.Tensor]


def _outer_forms(node: gs.Node) -> Iterator[Outer]:
    """Ways to read ``node`` as half * x * s: ``(other outer nodes, (half constant, its value), x, s)``."""
    if node.op == "Div":
        product = producer(node.inputs[0], "Mul")
        if product is not None and _is_constant(node.inputs[1]):
            for x, s in both_orders(product.inputs):
                yield [product], (node.inputs[1], 2.0), x, s
        return
    for first, second in both_orders(node.inputs):
        inner = producer(first, "Mul", "Div")
        if inner is None or len(inner.inputs) != 2:
            continue
        if inner.op == "Div":  # (x / 2) * s
            if _is_constant(inner.inputs[1]):
                yield [inner], (inner.inputs[1], 2.0), inner.inputs[0], second
            continue
        for half, x, s in itertools.permutations([*inner.inputs, second]):
            if _is_constant(half):
                yield [inner], (half, 0.5), x, s


def _match_inner(s: gs.Tensor, x: gs.Tensor):
    """``s = 1 + erf(x / sqrt 2)`` or ``1 + tanh(...)``: (nodes, approximate, constants) or None."""
    add = producer(s, "Add")
    if add is None:
        return None
    for one, activated in both_orders(add.inputs):
        function = producer(activated, "Erf", "Tanh")
        if function is None or not _is_constant(one):
            continue
        argument = _match_erf_argument if function.op == "Erf" else _match_tanh_argument
        found = argument(function.inputs[0], x)
        if found is not None:
            nodes, constants = found
            approximate = "none" if function.op == "Erf" else "tanh"
            return [*nodes, function, add], approximate, [(one, 1.0), *constants]
    return None


def _match_erf_argument(tensor: gs.Tensor, x: gs.Tensor):
    """``x / sqrt(2)`` as Div(x, 1.414...) or Mul(x, 0.7071...) in either order."""
    node = producer(tensor, "Div", "Mul")
    if node is None or len(node.inputs) != 2:
        return None
    if node.op == "Div":
        if node.inputs[0] is x and _is_constant(node.inputs[1]):
            return [node], [(node.inputs[1], SQRT_2)]
        return None
    for data, constant in both_orders(node.inputs):
        if data is x and _is_constant(constant):
            return [node], [(constant, 1.0 / SQRT_2)]
    return None


def _match_tanh_argument(tensor: gs.Tensor, x: gs.Tensor):
    """``sqrt(2/pi) * (x + 0.044715 * x^3)``, every Mul and Add in either order."""
    scale_node = producer(tensor, "Mul")
    if scale_node is None:
        return None
    for scale, polynomial in both_orders(scale_node.inputs):
        add = producer(polynomial, "Add")
        if add is None or not _is_constant(scale):
            continue
        for linear, cubic_term in both_orders(add.inputs):
            kappa_node = producer(cubic_term, "Mul")
            if linear is not x or kappa_node is None:
                continue
            for kappa, cube in both_orders(kappa_node.inputs):
                found = _match_cube(cube, x) if _is_constant(kappa) else None
                if found is not None:
                    cube_nodes, cube_constants = found
                    return ([*cube_nodes, kappa_node, add, scale_node],
                            [(scale, SQRT_2_OVER_PI), (kappa, KAPPA), *cube_constants])
    return None


def _match_cube(tensor: gs.Tensor, x: gs.Tensor):
    """``x^3`` as Pow(x, 3), Mul(x, Mul(x, x)) or Mul(Mul(x, x), x)."""
    node = producer(tensor, "Pow", "Mul")
    if node is None or len(node.inputs) != 2:
        return None
    if node.op == "Pow":
        if node.inputs[0] is x and _is_constant(node.inputs[1]):
            return [node], [(node.inputs[1], 3.0)]
        return None
    for linear, square in both_orders(node.inputs):
        square_node = producer(square, "Mul")
        if linear is x and square_node is not None and all(t is x for t in square_node.inputs) \
                and len(square_node.inputs) == 2:
            return [square_node, node], []
    return None


def _float_dtype(dtype) -> np.dtype | None:
    """``dtype`` as a numpy float dtype we fuse, or None (gs gives onnx type numbers for types numpy lacks)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return None
    return dtype if dtype.type in _FLOATS else None


def _is_constant(tensor: gs.Tensor) -> bool:
    return constant_value(tensor) is not None


class FuseGelu(FusionPass):
    name = "fuse-gelu"
    summary = "replace the decomposed erf or tanh GELU with Gelu (opset 20+)"
    rules = (GeluRule(),)
