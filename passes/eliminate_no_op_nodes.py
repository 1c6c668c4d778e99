"""eliminate-no-op-nodes: remove nodes whose output provably equals one of their inputs (or, for a Concat
that reassembles a tensor, that tensor), bit for bit.

Algebra: each removal below is exact, for every input on which the original node succeeds; consumers of the
output read that input instead (``graphopt.rewrite.bypass``, which keeps graph output names).

* ``Cast(x, to=T)`` when x already has type T, and ``CastLike(x, like)`` when x and ``like`` have the same
  type: a conversion to the same type copies.
* ``Reshape(x, shape)`` when the output shape provably equals x's: every entry of the constant ``shape`` is
  x's static dimension there, or 0 (copy the dimension, unless ``allowzero``), or one -1 whose partner
  dimensions are static and non-zero (then -1 can only be x's dimension); or, for a shape that is not
  constant, when shape inference gives static, equal input and output shapes (not in models whose
  initializers are also graph inputs, see Constants); or ``Reshape(x, Shape(x))``, dynamic dimensions
  included, whatever ``allowzero`` (each entry is x's dimension there; a 0 is x's 0, copied or literal).
  Reshape keeps the element order.
* ``Expand(x, shape)`` when broadcasting x's shape with ``shape`` gives x's shape: ``shape`` has no more
  dimensions than x and each is 1 or x's static dimension (or, as for Reshape, inferred static shapes agree).
* ``Transpose(x, perm)`` with perm = [0, 1, ..., r-1], or without perm on a tensor of rank 0 or 1.
* ``Pad(x, pads)`` with all pads 0 (in any mode: nothing is added).
* ``Slice`` that takes every element: on each sliced axis step 1, start 0 (or <= -dim), and end
  INT64_MAX or >= the static dimension. INT32_MAX counts as "to the end" only where the dimension is static.
* ``Concat`` of one input; ``Split`` into one output (its one part must be the whole tensor, or the node
  fails).
* ``Concat`` (axis 0) that puts a 1-D tensor s of static length n back together from its elements, taken in
  order: each input is ``Unsqueeze(Gather(s, k), [0])`` (the 1-element tensor [s[k]]), ``Gather(s, ks)``
  with constant 1-D indices ks (the tensor [s[k] for k in ks]) or ``Slice(s, [a], [b])`` with constant
  bounds, step 1 (the elements range(n)[a:b]), and the indices, concatenated and taken modulo n where
  negative, are exactly 0, 1, ..., n-1. The output is then s itself (it is not an input of the Concat, but
  is computed before its inputs, so it is available wherever the output is used). Exporters write this for
  a tensor's shape on dynamic dimensions: ``Concat(Unsqueeze(Gather(Shape(x), 0)), ...)``.
* ``Where(c, x, y)`` with a constant condition c: all true gives x, all false gives y, when neither c nor the
  other operand broadcasts the chosen one to a larger shape (as for the neutral constants below). One
  exception, for the signed-zero rule below: onnxruntime's CPU Where (1.32, float16/float/double) returns
  +0.0 where it picks a -0.0 of x (it keeps y's; only when c and y are both scalars does it keep x's), so
  for an x that may hold -0.0 (not known to be of an integer, boolean or string type) the all-true case is
  kept unless ``ignore_signed_zeros``.
* ``Mul(x, 1)``, ``Mul(1, x)``, ``Div(x, 1)``, ``Add(x, 0)``, ``Add(0, x)``, ``Sub(x, 0)``, where the
  constant (an initializer or a Constant node) holds only the neutral element, has x's type, and does not
  broadcast x to a larger shape (it is a scalar, or has no more dimensions than x and each is 1 or x's
  static dimension), so the output has x's shape and type.

IEEE 754 (round to nearest, which ONNX assumes): ``x * 1``, ``x / 1`` and ``x - (+0.0)`` equal x for every
x, including -0.0, infinities and NaN (sign and payload kept), and ``x + (-0.0)`` equals x for every x. But
``x + (+0.0)`` turns -0.0 into +0.0 (and ``x - (-0.0)`` likewise): removing such a node would keep -0.0 where
the model produced +0.0. The two zeros compare equal, yet differ observably (``1/x``, ``atan2``, ``copysign``,
bitwise), so by default these nodes are kept (``skipped.signed_zero``); ``ignore_signed_zeros=true`` removes
them too. Integer types have no such case. One difference remains, which we accept as compilers do (LLVM
folds ``x * 1.0`` to x): arithmetic quiets a *signaling* NaN input (onnxruntime's ``x * 1`` sets its quiet
bit) and the removal keeps it signaling; ONNX arithmetic never produces one (it can only come in through an
input or a constant), and it is a NaN either way. Likewise, under onnxruntime's non-default
``set_denormal_as_zero`` a subnormal ``x * 1`` flushes to zero, and the removal keeps the subnormal.

Constants: an initializer that is also an input of the main graph (every initializer of an IR < 4 model) is
a default a caller may override, so its value is never used here.

Declines (``skipped.<reason>``): ``signed_zero`` (above, and Where's all-true case); ``broadcast``: a
neutral constant, or Where's condition or other operand, that may broadcast x to a larger shape;
``shape_unknown``: a non-scalar neutral constant and x's rank is unknown, or a Where operand whose rank is
unknown; ``dim_not_static``: a Slice ending at INT32_MAX on a dimension that is not static;
``dtype_unknown``: a Cast or CastLike whose input type is unknown; ``dtype_mismatch``: a neutral constant of
another type than x; ``shape_from_default_values``: a Where or a reassembling Concat in a model whose
initializers are also graph inputs (see Constants: the inferred shapes it rests on may hold only for the
defaults); and what ``bypass`` declines, to keep graph output names: ``graph_output_from_input_or_constant``,
``graph_output_is_also_input_of_node``, ``source_from_outer_scope``. Nodes that are simply not no-ops are
not counted. What fed only removed nodes (a constant, a Constant node, the Gathers of a reassembling Concat)
is left for eliminate-dead-nodes.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.fusion import producer
from graphopt.pass_base import Invariant, Option, Pass, PassContext, PassResult
from graphopt.rewrite import all_graphs, bypass, is_standard_op
from passes.deduplicate_initializers import constant_array, element_type, is_dense

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
# op -> (neutral element, input positions it may take)
_NEUTRAL = {"Add": (0, (1, 0)), "Sub": (0, (1,)), "Mul": (1, (1, 0)), "Div": (1, (1,))}

Verdict = gs.Tensor | str | None  # the input the output equals, a reason to decline, or None: not a no-op


class EliminateNoOpNodes(Pass):
    name = "eliminate-no-op-nodes"
    summary = ("remove nodes that return an input unchanged: same-type Cast, identity Reshape, Expand, "
               "Transpose, Pad, Slice, one-input Concat, one-output Split, x*1, x/1, x+0, x-0, Where with a "
               "constant condition, Concat of a tensor's own elements")
    options = (Option("ignore_signed_zeros", bool, False,
                      "also remove Add(x, +0.0) and Sub(x, -0.0), which turn -0.0 into +0.0"),)
    requires = frozenset({Invariant.SHAPES_INFERRED})
    preserves = frozenset({Invariant.TOPOLOGICALLY_SORTED, Invariant.SHAPES_INFERRED, Invariant.INFERENCE_MODE})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: collections.Counter[str] = collections.Counter()
        overridable = {id(t) for t in graph.inputs if isinstance(t, gs.Constant)}
        for scope in all_graphs(graph):
            known = Known(scope.opset, overridable)
            for node in list(scope.nodes):
                verdict = self.no_op_source(node, known)
                if isinstance(verdict, gs.Tensor):
                    verdict = bypass(scope, node, verdict, node.outputs[0])
                    if verdict is None:
                        stats[f"removed.{node.op.lower()}"] += 1
                if verdict:
                    stats[f"skipped.{verdict}"] += 1
        changed = any(key.startswith("removed.") for key in stats)
        return PassResult(changed, stats)

    def no_op_source(self, node: gs.Node, known: Known) -> Verdict:
        """The input that ``node``'s only output equals, a reason to decline, or None."""
        if len(node.outputs) != 1 or not node.outputs[0].name or not node.inputs or not node.inputs[0].name:
            return None
        if is_standard_op(node, *_NEUTRAL):
            return self._neutral_operand(node, known)
        if is_standard_op(node, "Where"):
            return self._chosen_operand(node, known)
        check = _CHECKS.get(node.op)
        if check is None or not is_standard_op(node, node.op):
            return None
        return check(node, known)

    def _neutral_operand(self, node: gs.Node, known: Known) -> Verdict:
        if len(node.inputs) != 2:
            return None
        neutral, positions = _NEUTRAL[node.op]
        for position in positions:
            constant = known.value(node.inputs[position])
            if constant is None or constant.dtype.kind in "cObSU" or constant.dtype == object:
                continue
            try:
                values = constant.astype(np.float64)
            except (TypeError, ValueError):
                continue
            if not np.all(values == neutral):
                continue
            operand = node.inputs[1 - position]
            return self._why_not_neutral(node, constant, values, operand) or operand
        return None

    def _why_not_neutral(self, node: gs.Node, constant: np.ndarray, values: np.ndarray,
                         operand: gs.Tensor) -> str | None:
        operand_type = tensor_element_type(operand)
        if operand_type is not None and operand_type != _onnx_type(constant.dtype):
            return "dtype_mismatch"
        if constant.dtype.kind not in "iub" and node.op in ("Add", "Sub") and not self.values["ignore_signed_zeros"]:
            negative = np.signbit(values)
            # x + (-0.0) and x - (+0.0) are exact; x + (+0.0) and x - (-0.0) turn -0.0 into +0.0
            if (node.op == "Add" and not negative.all()) or (node.op == "Sub" and negative.any()):
                return "signed_zero"
        if constant.ndim == 0:
            return None
        shape = tensor_shape(operand)
        if shape is None:
            return "shape_unknown"
        return None if _broadcast_keeps(shape, constant.shape) else "broadcast"

    def _chosen_operand(self, node: gs.Node, known: Known) -> Verdict:
        """Where(c, x, y) with a constant c all true (x) or all false (y), unless it broadcasts."""
        if len(node.inputs) != 3:
            return None
        condition = known.value(node.inputs[0])
        if condition is None or condition.dtype != np.bool_ or (condition.any() and not condition.all()):
            return None
        x, y = node.inputs[1:]
        chosen, other = (x, y) if condition.all() else (y, x)
        if chosen is x and _has_signed_zeros(x) and not self.values["ignore_signed_zeros"]:
            return "signed_zero"  # onnxruntime's Where turns a chosen -0.0 of x into +0.0
        shape, other_shape = tensor_shape(chosen), tensor_shape(other)
        if shape is None or other_shape is None:
            return "shape_unknown"
        if not (_broadcast_keeps(shape, condition.shape) and _broadcast_keeps(shape, other_shape)):
            return "broadcast"
        return chosen if known.shapes_from_values else "shape_from_default_values"


# ---------------------------------------------------------------------------------------------------------
# One check per op: (node, known) -> Verdict


def _cast(node: gs.Node, known: Known) -> Verdict:
    source_type = tensor_element_type(node.inputs[0])
    if source_type is None:
        return "dtype_unknown"
    return node.inputs[0] if source_type == node.attrs.get("to") else None


def _cast_like(node: gs.Node, known: Known) -> Verdict:
    if len(node.inputs) != 2:
        return None
    source_type, target_type = (tensor_element_type(t) for t in node.inputs)
    if source_type is None or target_type is None:
        return "dtype_unknown"
    return node.inputs[0] if source_type == target_type else None


def _reshape(node: gs.Node, known: Known) -> Verdict:
    data = node.inputs[0]
    if known.opset < 5:
        target = node.attrs.get("shape")
    else:
        target = known.value(node.inputs[1]) if len(node.inputs) > 1 else None
        if len(node.inputs) > 1 and _is_whole_shape_of(node.inputs[1], data):
            return data
    shape = tensor_shape(data)
    if target is not None and shape is not None and _reshape_keeps(shape, [int(t) for t in np.ravel(target)],
                                                                    node.attrs.get("allowzero", 0)):
        return data
    return data if known.shapes_from_values and _static_and_equal(shape, tensor_shape(node.outputs[0])) else None


def _is_whole_shape_of(tensor: gs.Tensor, data: gs.Tensor) -> bool:
    """True if ``tensor`` is ``Shape(data)``, without start or end."""
    shape = producer(tensor, "Shape")
    return shape is not None and shape.inputs[0] is data and shape.attrs.get("start", 0) == 0 and \
        "end" not in shape.attrs


def _reshape_keeps(shape: Sequence, target: list[int], allowzero: int) -> bool:
    if len(target) != len(shape):
        return False
    inferred = None
    for axis, (dim, wanted) in enumerate(zip(shape, target, strict=True)):
        if wanted == 0 and not allowzero:
            continue  # copies the input dimension
        if wanted == -1 and inferred is None:
            inferred = axis
        elif not (_is_static(dim) and dim == wanted):
            return False
    if inferred is None:
        return True
    # -1 becomes size / (product of the other dimensions), which are x's: it is x's dimension when they are
    # provably non-zero
    return all(_is_static(dim) and dim > 0 for axis, dim in enumerate(shape) if axis != inferred)


def _expand(node: gs.Node, known: Known) -> Verdict:
    if len(node.inputs) != 2:
        return None
    data, target = node.inputs[0], known.value(node.inputs[1])
    shape = tensor_shape(data)
    if target is not None and shape is not None and _broadcast_keeps(shape, tuple(int(t) for t in np.ravel(target))):
        return data
    return data if known.shapes_from_values and _static_and_equal(shape, tensor_shape(node.outputs[0])) else None


def _transpose(node: gs.Node, known: Known) -> Verdict:
    perm = node.attrs.get("perm")
    if perm is None:
        shape = tensor_shape(node.inputs[0])
        return node.inputs[0] if shape is not None and len(shape) <= 1 else None
    return node.inputs[0] if list(perm) == list(range(len(perm))) else None


def _pad(node: gs.Node, known: Known) -> Verdict:
    if known.opset >= 11:
        pads = known.value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
    else:
        pads = node.attrs.get("pads", node.attrs.get("paddings"))
    return node.inputs[0] if pads is not None and not np.any(np.asarray(pads)) else None


def _slice(node: gs.Node, known: Known) -> Verdict:
    data = node.inputs[0]
    if known.opset >= 10:
        parts = [known.value(t) if t.name else None for t in node.inputs[1:5]]
        parts += [None] * (4 - len(parts))
        if any(part is None for part, t in zip(parts, node.inputs[1:5], strict=False) if t.name):
            return None  # an input that is given but not constant
        starts, ends, axes, steps = parts
    else:
        starts, ends, axes, steps = (node.attrs.get(k) for k in ("starts", "ends", "axes", "steps"))
    if starts is None or ends is None:
        return None
    starts, ends = [int(s) for s in np.ravel(starts)], [int(e) for e in np.ravel(ends)]
    axes = list(range(len(starts))) if axes is None else [int(a) for a in np.ravel(axes)]
    steps = [1] * len(starts) if steps is None else [int(s) for s in np.ravel(steps)]
    shape = tensor_shape(data)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        dim = None
        if shape is not None and -len(shape) <= axis < len(shape):
            dim = shape[axis]
        static = _is_static(dim)
        whole_start = start == 0 or (start < 0 and static and start + dim <= 0)
        whole_end = end >= INT64_MAX or (static and end >= dim)
        if step != 1 or not whole_start:
            return None
        if not whole_end:
            return "dim_not_static" if end >= INT32_MAX else None
    return data


def _concat(node: gs.Node, known: Known) -> Verdict:
    if len(node.inputs) == 1:
        return node.inputs[0]
    if node.attrs.get("axis") not in (0, -1):
        return None
    pieces = [picked_elements(tensor, known) for tensor in node.inputs]
    if any(isinstance(piece, str) for piece in pieces):
        return None
    source = pieces[0][0]
    if any(piece[0] is not source for piece in pieces):
        return None
    shape = tensor_shape(source)
    indices = [index for _, piece_indices in pieces for index in piece_indices]
    if shape is None or len(shape) != 1 or not _is_static(shape[0]) or indices != list(range(shape[0])):
        return None
    return source if known.shapes_from_values else "shape_from_default_values"


def picked_elements(tensor: gs.Tensor, known: Known) -> tuple[gs.Tensor, list[int]] | str:
    """``(s, ks)`` when the 1-D ``tensor`` equals ``[s[k] for k in ks]`` for a 1-D tensor s: it is
    ``Unsqueeze(Gather(s, k), [0])`` for a constant scalar k or ``Gather(s, ks)`` for constant 1-D ks (on axis
    0), or ``Slice(s, [a], [b])`` on axis 0 with step 1 and constant a, b (ks = range(n)[a:b]: ONNX clamps a
    and b as Python clamps slice bounds). Where s's length n is known (``_static_length``) the indices are
    returned in [0, n), negative ones counted from the end; where it is not, a Gather's nonnegative indices
    are returned as they are (the Gather fails unless they are < n). Else the reason: ``length_unknown`` (a
    negative index or a Slice, and n is not known) or ``not_picked``."""
    sliced = producer(tensor, "Slice")
    if sliced is not None:
        return _sliced_elements(sliced, known)
    gather, index_rank = _gather_behind(tensor, known)
    if gather is None or len(gather.inputs) != 2 or gather.attrs.get("axis", 0) not in (0, -1):
        return "not_picked"
    source, indices = gather.inputs[0], known.value(gather.inputs[1])
    if indices is None or indices.ndim != index_rank or indices.dtype.kind not in "iu":
        return "not_picked"
    indices = [int(k) for k in np.ravel(indices)]
    length = _static_length(source, known)
    if length is None:
        return (source, indices) if all(k >= 0 for k in indices) else "length_unknown"
    if not all(-length <= k < length for k in indices):
        return "not_picked"  # the Gather fails
    return source, [k % length for k in indices]


def _sliced_elements(node: gs.Node, known: Known) -> tuple[gs.Tensor, list[int]] | str:
    """``(s, range(n)[a:b])`` for ``Slice(s, [a], [b], [axis], [step])`` with axis 0 and step 1 (where given),
    all constant (inputs from opset 10 on); else the reason, as for ``picked_elements``."""
    if known.opset < 10 or not 3 <= len(node.inputs) <= 5:
        return "not_picked"
    values = [known.value(t) for t in node.inputs[1:]]
    if any(value is None or value.size != 1 or value.dtype.kind not in "iu" for value in values):
        return "not_picked"
    start, end, axis, step = [int(np.ravel(value)[0]) for value in values] + [0, 1][len(values) - 2:]
    if axis not in (0, -1) or step != 1:
        return "not_picked"
    length = _static_length(node.inputs[0], known)
    if length is None:
        return "length_unknown"
    return node.inputs[0], list(range(length))[start:end]


def _gather_behind(tensor: gs.Tensor, known: Known) -> tuple[gs.Node | None, int]:
    """The Gather that makes the 1-D ``tensor``, and the rank its indices must have for that: 0 when it is
    unsqueezed on axis 0 (``Unsqueeze(Gather(s, k), [0])``), 1 when it is ``tensor``'s producer."""
    unsqueeze = producer(tensor, "Unsqueeze")
    if unsqueeze is None:
        return producer(tensor, "Gather"), 1
    axes = known.value(unsqueeze.inputs[1]) if len(unsqueeze.inputs) > 1 else unsqueeze.attrs.get("axes")
    if axes is None or np.ravel(axes).tolist() not in ([0], [-1]):
        return None, 0
    return producer(unsqueeze.inputs[0], "Gather"), 0


def _static_length(tensor: gs.Tensor, known: Known) -> int | None:
    """The length of a 1-D tensor, when its inferred shape gives it and can be trusted
    (``Known.shapes_from_values``); else None."""
    shape = tensor_shape(tensor)
    if not known.shapes_from_values or shape is None or len(shape) != 1 or not _is_static(shape[0]):
        return None
    return shape[0]


def _split(node: gs.Node, known: Known) -> Verdict:
    return node.inputs[0]  # no_op_source checked: exactly one output


_CHECKS = {"Cast": _cast, "CastLike": _cast_like, "Reshape": _reshape, "Expand": _expand,
           "Transpose": _transpose, "Pad": _pad, "Slice": _slice, "Concat": _concat, "Split": _split}


# ---------------------------------------------------------------------------------------------------------
# What is known about a tensor


class Known:
    """What is known in one graph: its opset, and the values of constants. ``overridable``: ids of constants
    that are also inputs of the main graph (IR < 4 models list their initializers as inputs, and a caller
    may feed other values), whose values are therefore not known. Shape inference reads their values all
    the same, so when there are any, an inferred shape may hold only for the default values:
    ``shapes_from_values`` is then false and no removal rests on inferred output shapes alone."""

    def __init__(self, opset: int, overridable: set[int]):
        self.opset, self.overridable = opset, overridable
        self.shapes_from_values = not overridable

    def value(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The value of an initializer or of a Constant node's output, or None."""
        if isinstance(tensor, gs.Constant):
            return constant_array(tensor) if is_dense(tensor) and id(tensor) not in self.overridable else None
        producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        if producer is None or not is_standard_op(producer, "Constant"):
            return None
        attrs = producer.attrs
        value = attrs.get("value")
        if isinstance(value, gs.Constant):
            return constant_array(value) if is_dense(value) else None
        for name, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                            ("value_int", np.int64), ("value_ints", np.int64)):
            if name in attrs:
                return np.array(attrs[name], dtype=dtype)
        return None


def tensor_element_type(tensor: gs.Tensor) -> int | None:
    """The ONNX element type of a tensor, or None when unknown."""
    if isinstance(tensor, gs.Constant):
        found = element_type(tensor)
        return found if isinstance(found, int) else None
    if getattr(tensor, "type", "tensor_type") != "tensor_type":
        return None
    return _onnx_type(tensor.dtype)


_WITHOUT_SIGNED_ZEROS = frozenset({
    onnx.TensorProto.BOOL, onnx.TensorProto.STRING, onnx.TensorProto.INT8, onnx.TensorProto.INT16,
    onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32, onnx.TensorProto.UINT64})


def _has_signed_zeros(tensor: gs.Tensor) -> bool:
    """True unless ``tensor`` is known to hold integers, booleans or strings."""
    return tensor_element_type(tensor) not in _WITHOUT_SIGNED_ZEROS


def _onnx_type(dtype) -> int | None:
    if dtype is None:
        return None
    if isinstance(dtype, int):  # gs keeps the ONNX type for types numpy has none for
        return dtype
    try:  # onnx's numpy mapping is one to one, so the ONNX type is exact
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (KeyError, TypeError, ValueError):
        return None


def tensor_shape(tensor: gs.Tensor) -> list | None:
    """The dimensions (int, or str/None when symbolic or unknown), or None when the rank is unknown."""
    shape = tensor.shape
    return None if shape is None else list(shape)


def _is_static(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0


def _static_and_equal(a: list | None, b: list | None) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(
        _is_static(x) and _is_static(y) and x == y for x, y in zip(a, b, strict=True))


def _broadcast_keeps(shape: Sequence, other: Sequence[int]) -> bool:
    """True if broadcasting ``shape`` with a tensor of shape ``other`` gives ``shape``."""
    if len(other) > len(shape):
        return False
    return all(o == 1 or (_is_static(d) and d == o) for d, o in zip(shape[len(shape) - len(other):], other,
                                                                      strict=True))
