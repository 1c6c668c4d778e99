"""Hypothesis strategies for random small, valid ONNX models, for the property tests (test_properties.py).

``models()`` draws a ``GeneratedModel``: an ``onnx.ModelProto`` that is valid by construction (it passes
``onnx.checker.check_model(full_check=True)`` and runs on onnxruntime's CPU provider), the feeds to run it
on, and the names of the patterns that were injected into it.

What a model holds:
- 1-3 float32 graph inputs of static shape (rank 1-4, batch 1-3, other dims 1-8), now and then an unused
  input or an int64 input;
- a random sequence of steps over about twenty common ops (``OPS``): Identity, Relu, Sigmoid, Tanh, Neg,
  Abs, Exp (of a Tanh, so bounded), Add, Sub, Mul, Div (by constants bounded away from 0), MatMul, Gemm,
  Conv, ConvTranspose, BatchNormalization, Transpose, Reshape, Flatten, Concat, Split, Slice, Pad,
  ReduceMean, Softmax, Cast, Dropout; operands are constants (initializers or Constant nodes, sometimes
  shared by several nodes or duplicated under another name) or earlier tensors, so tensors fan out;
- patterns the passes look for, injected with some probability (``PATTERNS``): Conv->BatchNormalization
  (also twice in a row), Gemm/MatMul->BatchNormalization, Conv->Mul->Add per channel, MatMul->Add,
  LayerNormalization written out (ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add), GELU in its erf form,
  Transpose pairs that cancel, Reshape chains (after an Unsqueeze pair now and then), a Reshape whose
  target is computed from its input's own dimensions (Shape, Gather, Unsqueeze, Slice, Concat: attention's
  head split and merge as PyTorch exports them), a zero Pad before a Conv, nodes that return their input
  (x*1, x+0 with -0.0 in x, same-type Cast, zero Pad, full Slice, identity Transpose and Reshape, one-input
  Concat, one-output Split, Where with a constant condition, a Concat that reassembles Shape(x) from its
  elements), operands computed from constants only, weights passed through such a node;
- several graph outputs: the last tensor, sometimes intermediates (so some fusions must decline), a
  graph input passed through Identity, a constant through Identity, a graph input listed directly as an
  output, a Dropout mask; what is not an output is a dead branch.

Opset 17 or 20, half each (Gelu exists from opset 20, so only there can a GELU fusion fire). Shapes are
computed here and declared on the graph outputs; the checker's full check (strict shape inference) confirms
them.

Magnitudes are kept small: every tensor carries a rough bound of its values, and an operand whose bound
grew past ``MAX_SCALE`` goes through Tanh first. Float32 rounding differences of rewrites that reassociate
arithmetic then stay far below the tolerance the properties allow, and nothing overflows. Weight values come
from a numpy generator seeded by a drawn integer, so structure shrinks through hypothesis and values stay
reproducible.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx.printer
from hypothesis import strategies as st

FLOAT = onnx.TensorProto.FLOAT
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
MAX_SCALE = 8.0  # operands whose values may exceed this go through Tanh first
MAX_ELEMENTS = 768  # no tensor grows beyond this many elements
MAX_DIM = 16

OPS = (
    "Relu", "Identity", "Sigmoid", "Tanh", "Neg", "Abs", "Exp", "Add", "Sub", "Mul", "Div", "MatMul", "Gemm",
    "Conv", "ConvTranspose", "BatchNormalization", "Transpose", "Reshape", "Flatten", "Concat", "Split",
    "Slice", "Pad", "ReduceMean", "Softmax", "Cast", "Dropout", "Constant",
)
PATTERNS = (
    "conv_bn", "conv_bn_bn", "gemm_bn", "matmul_bn", "conv_mul_add", "matmul_add", "layernorm", "gelu_erf",
    "transpose_pair", "reshape_chain", "reshape_own_dims", "pad_conv", "no_op", "constant_expression",
    "computed_weight",
)


@dataclasses.dataclass(frozen=True)
class Value:
    """A float32 tensor available as an operand: its static shape and a rough bound of its values."""

    name: str
    shape: tuple[int, ...]
    scale: float

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class GeneratedModel:
    """A drawn model, the feeds to run it on, and the patterns injected into it. Not a dataclass: hypothesis
    pretty-prints dataclasses field by field, and the point of ``repr`` is the model as ONNX text."""

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], patterns: tuple[str, ...]):
        self.model, self.feeds, self.patterns = model, feeds, patterns

    def __repr__(self) -> str:  # hypothesis prints this for a falsifying example
        feeds = ", ".join(f"{name}: {a.dtype}{list(a.shape)}" for name, a in self.feeds.items())
        return (f"GeneratedModel(patterns={list(self.patterns)}, feeds {{{feeds}}} drawn with the seed in the "
                f"doc_string (graph_strategies.feeds_for), model=\n{onnx.printer.to_text(self.model)}\n)")

    def op_types(self) -> set[str]:
        return {node.op_type for node in self.model.graph.node}


def feeds_for(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """Standard-normal float32 feeds (small integers for int64 inputs) for the model's inputs."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == FLOAT:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            feeds[value.name] = rng.integers(-3, 4, size=shape).astype(np.int64)
    return feeds


class _Builder:
    """Accumulates nodes, initializers, inputs and outputs; every draw goes through ``self.draw``."""

    def __init__(self, draw, opset: int, seed: int):
        self.draw, self.opset = draw, opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.values: list[Value] = []  # float32 activations, in creation order
        self.weights: dict[tuple, list[tuple[str, np.ndarray]]] = {}  # sharing key (see const) -> initializers
        self.patterns: list[str] = []
        self.count = 0
        self.wrap_next_weight: str | None = None  # see _pattern_computed_weight

    # -- drawing helpers ---------------------------------------------------------------------------------

    # st.integers favours values near its lower bound; sampled_from draws (nearly) uniformly, so the
    # probabilities written here are the ones generation sees. Both shrink towards the first element.

    def chance(self, p: float) -> bool:
        """True with probability ``p``; shrinks to False."""
        return self.draw(st.sampled_from(range(100))) >= round(100 * (1 - p))

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.sampled_from(range(low, high + 1)))

    def choice(self, options):
        return self.draw(st.sampled_from(list(options)))

    def pick(self, values: list[Value]) -> Value:
        """One of ``values``, preferring (and shrinking towards) the most recent."""
        return values[-1 - self.integer(0, len(values) - 1)]

    def subset(self, items, low: int, high: int) -> list:
        """A sorted subset of ``low`` to ``high`` of ``items`` (st.sets would reject duplicate draws)."""
        items = list(items)
        order = self.draw(st.permutations(items))
        return sorted(order[:self.integer(low, high)])

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    # -- graph pieces ------------------------------------------------------------------------------------

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> list[str]:
        names = [self.fresh("t") for _ in range(outputs)] if isinstance(outputs, int) else outputs
        name = self.fresh("n") if self.chance(0.9) else ""
        self.nodes.append(oh.make_node(op, inputs, names, name=name, **attrs))
        return names

    def value(self, name: str, shape, scale: float) -> Value:
        value = Value(name, tuple(int(d) for d in shape), float(scale))
        self.values.append(value)
        return value

    def const(self, array: np.ndarray, kind: str = "any", node_ok: bool = True, exact: bool = False) -> str:
        """A constant: an initializer (possibly shared with earlier nodes, or a duplicate of an earlier one
        under a new name) or a Constant node. Only constants of the same ``kind`` and shape are shared:
        kinds separate constants that are not interchangeable (divisors stay away from zero, variances
        positive, ...); with ``exact``, only constants with the same values are (shape vectors, 0.5, eps)."""
        array = np.asarray(array)
        key = (kind, array.dtype.str, array.shape, array.tobytes() if exact else None)
        earlier = self.weights.get(key, [])
        if earlier and self.chance(0.15):
            return self.choice([name for name, _ in earlier])  # shared weight
        if earlier and self.chance(0.1):
            array = earlier[self.integer(0, len(earlier) - 1)][1]  # the same values under another name
        if node_ok and self.chance(0.12):
            name = self.fresh("k")
            tensor = onnx.numpy_helper.from_array(array, name + "_value")
            self.node("Constant", [], [name], value=tensor)
            return name
        name = self.fresh("w")
        self.initializers.append(onnx.numpy_helper.from_array(array, name))
        self.weights.setdefault(key, []).append((name, array))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), exact=True)

    def floats(self, shape, low: float = -1.0, high: float = 1.0, kind: str = "any", **kw) -> str:
        return self.const(self.rng.uniform(low, high, shape).astype(np.float32), kind=kind, **kw)

    def divisor(self, shape) -> str:
        magnitude = self.rng.uniform(0.5, 2.0, shape)
        sign = np.where(self.rng.random(shape) < 0.5, -1.0, 1.0)
        return self.const((magnitude * sign).astype(np.float32), kind="nonzero")

    def weight(self, shape, fan_in: int, **kw) -> str:
        scale = 1.0 / math.sqrt(max(fan_in, 1))
        name = self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), kind="weight", **kw)
        wrap, self.wrap_next_weight = self.wrap_next_weight, None
        return self.wrapped(name, tuple(shape), wrap) if wrap else name

    def wrapped(self, name: str, shape: tuple[int, ...], wrap: str) -> str:
        """``name`` passed through a node that returns it unchanged."""
        if wrap == "Identity":
            return self.node("Identity", [name])[0]
        if wrap == "Dropout":
            return self.node("Dropout", [name])[0]
        if wrap == "Cast":
            return self.node("Cast", [name], to=FLOAT)[0]
        if wrap == "Reshape":
            return self.node("Reshape", [name, self.ints(shape)])[0]
        if wrap == "Mul":
            return self.node("Mul", [name, self.const(np.asarray(1.0, np.float32), exact=True)])[0]
        perm = list(self.draw(st.permutations(range(len(shape)))))
        inverse = [perm.index(i) for i in range(len(shape))]
        return self.node("Transpose", [self.node("Transpose", [name], perm=perm)[0]], perm=inverse)[0]

    # -- operand helpers ---------------------------------------------------------------------------------

    def operand(self, rank: tuple[int, ...] | None = None) -> Value:
        """A recent value (of one of the ranks, reshaped to one when none has it), bounded in magnitude."""
        candidates = [v for v in self.values if rank is None or v.rank in rank]
        value = self.pick(candidates) if candidates else self.as_rank(self.pick(self.values), rank)
        return self.bounded(value)

    def bounded(self, value: Value, limit: float = MAX_SCALE) -> Value:
        if value.scale <= limit:
            return value
        return self.value(self.node("Tanh", [value.name])[0], value.shape, 1.0)

    def reshape_to(self, value: Value, shape) -> Value:
        if tuple(shape) == value.shape:
            return value
        out = self.node("Reshape", [value.name, self.ints(shape)])[0]
        return self.value(out, shape, value.scale)

    def as_rank(self, value: Value, ranks: tuple[int, ...]) -> Value:
        if value.rank in ranks:
            return value
        return self.reshape_to(value, _factor_shape(value.size, ranks[-1], channels_first=True))


def _factor_shape(size: int, rank: int, channels_first: bool = False) -> tuple[int, ...]:
    """A shape of ``rank`` dims with ``size`` elements: the prime factors dealt out round-robin (from the
    last axis, or from axis 1 with ``channels_first`` so that a [1, C, ...] layout gets channels)."""
    factors = _prime_factors(size)
    dims = [1] * rank
    order = list(range(1, rank)) + [0] if channels_first and rank > 1 else list(range(rank - 1, -1, -1))
    for index, factor in enumerate(sorted(factors, reverse=True)):
        dims[order[index % rank]] *= factor
    return tuple(dims)


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1 and p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _broadcastable(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    """True if ``small`` broadcasts to ``big`` without changing ``big``."""
    if len(small) > len(big):
        return False
    return all(s in (1, b) for s, b in zip(reversed(small), reversed(big), strict=False))


def _slice_length(dim: int, start: int, end: int, step: int) -> int:
    """Elements ONNX Slice keeps along one axis (its clamping is Python's slice rule)."""
    start = max(min(start, 2**62), -(2**62))
    end = max(min(end, 2**62), -(2**62))
    return len(range(*slice(start, end, step).indices(dim)))


# ---------------------------------------------------------------------------------------------------------
# Ops. Each emitter takes the builder, adds nodes, and returns the new value (None: not applicable here).


def _unary(op: str, scale=None):
    def emit(b: _Builder) -> Value:
        x = b.operand()
        return b.value(b.node(op, [x.name])[0], x.shape, x.scale if scale is None else scale)
    return emit


def _emit_exp(b: _Builder) -> Value:
    x = b.bounded(b.operand(), limit=1.0)  # Exp of a value in [-1, 1]: no overflow, no precision cliff
    return b.value(b.node("Exp", [x.name])[0], x.shape, math.e)


def _other_operand(b: _Builder, x: Value) -> tuple[str, float]:
    """The second operand of an elementwise binary op on ``x``: x itself, another value that broadcasts to
    x's shape, or a constant that does (full shape, per-axis, scalar)."""
    same = [v for v in b.values if _broadcastable(v.shape, x.shape) and v.scale <= MAX_SCALE]
    if b.chance(0.4) and same:
        other = b.pick(same)
        return other.name, other.scale
    rank = b.integer(0, x.rank)
    shape = tuple(d if b.chance(0.6) else 1 for d in x.shape[x.rank - rank:])
    return b.floats(shape), 1.0


def _binary(op: str):
    def emit(b: _Builder) -> Value:
        x = b.operand()
        other, other_scale = _other_operand(b, x)
        inputs = [other, x.name] if b.chance(0.3) else [x.name, other]
        scale = x.scale * other_scale if op == "Mul" else x.scale + other_scale
        return b.value(b.node(op, inputs)[0], x.shape, scale)
    return emit


def _emit_div(b: _Builder) -> Value:
    x = b.operand()
    rank = b.integer(0, x.rank)
    shape = tuple(d if b.chance(0.5) else 1 for d in x.shape[x.rank - rank:])
    return b.value(b.node("Div", [x.name, b.divisor(shape)])[0], x.shape, 2 * x.scale)


def _emit_matmul(b: _Builder, x: Value | None = None) -> Value:
    x = x or b.operand()
    k = x.shape[-1]
    square = (*x.shape[:-1], x.shape[-2]) if x.rank >= 2 else ()
    if x.rank >= 2 and math.prod(square) <= MAX_ELEMENTS and b.chance(0.15):  # x @ x^T: x on both sides
        perm = list(range(x.rank))
        perm[-1], perm[-2] = perm[-2], perm[-1]
        xt = b.node("Transpose", [x.name], perm=perm)[0]
        return b.value(b.node("MatMul", [x.name, xt])[0], square, x.scale * x.scale * math.sqrt(k))
    n = b.integer(1, 8)
    shape = (*x.shape[:-1], n)
    if math.prod(shape) > MAX_ELEMENTS:
        n, shape = 1, (*x.shape[:-1], 1)
    w = b.weight((k, n), k)
    return b.value(b.node("MatMul", [x.name, w])[0], shape, 1.5 * x.scale)


def _emit_gemm(b: _Builder, x: Value | None = None, plain: bool = False) -> Value:
    x = x or b.operand()
    if x.rank != 2:
        axis = b.integer(0, x.rank)
        flat = (math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
        x = b.value(b.node("Flatten", [x.name], axis=axis)[0], flat, x.scale)
    trans_a = 0 if plain else int(b.chance(0.2))
    trans_b = int(b.chance(0.4))
    m, k = (x.shape[1], x.shape[0]) if trans_a else x.shape
    n = b.integer(1, 8)
    attrs = {"transA": trans_a, "transB": trans_b}
    if not plain and b.chance(0.2):
        attrs["alpha"] = b.choice([0.5, 2.0])
    if not plain and b.chance(0.2):
        attrs["beta"] = b.choice([0.5, 2.0])
    inputs = [x.name, b.weight((n, k) if trans_b else (k, n), k)]
    if b.chance(0.7):
        bias_shape = (n,) if plain else b.choice([(n,), (n,), (1, n), (m, n), (m, 1), ()])
        inputs.append(b.floats(bias_shape))
    return b.value(b.node("Gemm", inputs, **attrs)[0], (m, n), 2 * x.scale * attrs.get("alpha", 1.0) + 2)


def _emit_conv(b: _Builder, x: Value | None = None) -> Value:
    x = b.as_rank(x or b.operand(), (3, 4))
    channels, spatial = x.shape[1], x.shape[2:]
    group = 1 if b.chance(0.7) else b.choice(_divisors(channels))
    out_channels = group * b.integer(1, max(1, 8 // group))
    kernel = [b.integer(1, 3) for _ in spatial]
    strides = [b.integer(1, 2) for _ in spatial]
    dilations = [2 if b.chance(0.1) else 1 for _ in spatial]
    pads_begin = [b.integer(0, k - 1) for k in kernel]
    pads_end = [b.integer(0, k - 1) for k in kernel]
    out_spatial = []
    for i, dim in enumerate(spatial):
        extent = dilations[i] * (kernel[i] - 1) + 1
        if dim + pads_begin[i] + pads_end[i] < extent:  # kernel larger than the padded input: shrink it
            kernel[i], dilations[i], extent = 1, 1, 1
        out_spatial.append((dim + pads_begin[i] + pads_end[i] - extent) // strides[i] + 1)
    shape = (x.shape[0], out_channels, *out_spatial)
    fan_in = channels // group * math.prod(kernel)
    inputs = [x.name, b.weight((out_channels, channels // group, *kernel), fan_in)]
    if b.chance(0.6):
        inputs.append(b.floats((out_channels,), -0.5, 0.5))
    attrs = {"kernel_shape": kernel, "pads": pads_begin + pads_end}
    if any(s != 1 for s in strides) or b.chance(0.3):
        attrs["strides"] = strides
    if any(d != 1 for d in dilations):
        attrs["dilations"] = dilations
    if group != 1 or b.chance(0.2):
        attrs["group"] = group
    return b.value(b.node("Conv", inputs, **attrs)[0], shape, 1.5 * x.scale + 0.5)


def _emit_conv_transpose(b: _Builder) -> Value:
    x = b.as_rank(b.operand(), (3, 4))
    channels, spatial = x.shape[1], x.shape[2:]
    group = 1 if b.chance(0.7) else b.choice(_divisors(channels))
    out_per_group = b.integer(1, max(1, 6 // group))
    kernel = [b.integer(1, 3) for _ in spatial]
    strides = [b.integer(1, 2) for _ in spatial]
    begin = [b.integer(0, k - 1) for k in kernel]
    pads = begin + [b.integer(0, k - 1 - p) for k, p in zip(kernel, begin, strict=True)]  # so outputs are >= 1
    out_spatial = [s * (d - 1) + k - pads[i] - pads[i + len(spatial)]
                   for i, (d, k, s) in enumerate(zip(spatial, kernel, strides, strict=True))]
    shape = (x.shape[0], group * out_per_group, *out_spatial)
    if math.prod(shape) > MAX_ELEMENTS:  # too large: the plainest ConvTranspose, no larger than its input
        group, out_per_group, out_spatial = 1, 1, list(spatial)
        kernel, strides, pads = [1] * len(spatial), [1] * len(spatial), [0] * (2 * len(spatial))
        shape = (x.shape[0], 1, *spatial)
    inputs = [x.name, b.weight((channels, out_per_group, *kernel), channels // group)]
    if b.chance(0.5):
        inputs.append(b.floats((group * out_per_group,), -0.5, 0.5))
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads}
    if group != 1:
        attrs["group"] = group
    return b.value(b.node("ConvTranspose", inputs, **attrs)[0], shape, 2 * x.scale + 0.5)


def _emit_batch_norm(b: _Builder, x: Value | None = None) -> Value:
    x = b.as_rank(x or b.operand(), (2, 3, 4))
    c = (x.shape[1],)
    params = [b.const(b.rng.uniform(0.5, 1.5, c).astype(np.float32), kind="bn_scale"),
              b.floats(c, -0.5, 0.5, kind="bn_bias"), b.floats(c, -0.5, 0.5, kind="bn_mean"),
              b.const(b.rng.uniform(0.5, 2.0, c).astype(np.float32), kind="bn_var")]
    attrs = {"epsilon": b.choice([1e-5, 1e-3, 0.1])} if b.chance(0.5) else {}
    if b.chance(0.2):
        attrs["momentum"] = 0.9
    return b.value(b.node("BatchNormalization", [x.name, *params], **attrs)[0], x.shape, 2 * x.scale + 1)


def _permutation(b: _Builder, rank: int) -> list[int]:
    return list(b.draw(st.permutations(range(rank))))


def _emit_transpose(b: _Builder, x: Value | None = None) -> Value:
    x = x or b.operand()
    attrs = {}
    if b.chance(0.15):
        perm = list(range(x.rank - 1, -1, -1))  # the default: reverse the axes
    else:
        perm = list(range(x.rank)) if b.chance(0.2) else _permutation(b, x.rank)
        attrs["perm"] = perm
    shape = tuple(x.shape[p] for p in perm)
    return b.value(b.node("Transpose", [x.name], **attrs)[0], shape, x.scale)


def _emit_reshape(b: _Builder, x: Value | None = None) -> Value:
    x = x or b.operand()
    rank = b.integer(1, 4)
    shape = list(_factor_shape(x.size, rank))
    if b.chance(0.5):
        shape = list(b.draw(st.permutations(shape)))
    spec = list(shape)
    if b.chance(0.3):
        spec[b.integer(0, rank - 1)] = -1
    for i in range(min(rank, x.rank)):
        if spec[i] == x.shape[i] and b.chance(0.2):
            spec[i] = 0  # copy the input's dimension
    out = b.node("Reshape", [x.name, b.ints(spec)])[0]
    return b.value(out, shape, x.scale)


def _emit_flatten(b: _Builder) -> Value:
    x = b.operand()
    axis = b.integer(-x.rank, x.rank)
    split = axis % x.rank if axis < 0 else axis
    shape = (math.prod(x.shape[:split]), math.prod(x.shape[split:]))
    attrs = {} if axis == 1 and b.chance(0.5) else {"axis": axis}
    return b.value(b.node("Flatten", [x.name], **attrs)[0], shape, x.scale)


def _emit_concat(b: _Builder) -> Value:
    x = b.operand()
    axis = b.integer(0, x.rank - 1)
    parts = [x]
    candidates = [v for v in b.values if v.rank == x.rank and v.scale <= MAX_SCALE
                  and all(v.shape[i] == x.shape[i] for i in range(x.rank) if i != axis)]
    for _ in range(b.integer(1, 2)):
        if b.chance(0.4):
            parts.append(b.pick(candidates))
        else:
            shape = list(x.shape)
            shape[axis] = b.integer(1, 3)
            parts.append(Value(b.floats(shape), tuple(shape), 1.0))
    shape = list(x.shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    if shape[axis] > MAX_DIM or math.prod(shape) > MAX_ELEMENTS:
        return None
    names = [p.name for p in parts]
    out = b.node("Concat", names, axis=axis - x.rank if b.chance(0.3) else axis)[0]
    return b.value(out, shape, max(p.scale for p in parts))


def _emit_split(b: _Builder) -> Value:
    x = b.operand()
    axes = [i for i, d in enumerate(x.shape) if d >= 2]
    if not axes:
        return None
    axis = b.choice(axes)
    parts = b.integer(2, min(3, x.shape[axis]))
    cuts = b.subset(range(1, x.shape[axis]), parts - 1, parts - 1)
    sizes = [hi - lo for lo, hi in zip([0, *cuts], [*cuts, x.shape[axis]], strict=True)]
    outs = b.node("Split", [x.name, b.ints(sizes)], len(sizes), axis=axis)
    values = []
    for name, size in zip(outs, sizes, strict=True):
        shape = list(x.shape)
        shape[axis] = size
        values.append(b.value(name, shape, x.scale))
    return b.choice(values)


def _emit_slice(b: _Builder) -> Value:
    x = b.operand()
    axes = b.subset(range(x.rank), 1, x.rank)
    starts, ends, steps, shape = [], [], [], list(x.shape)
    for axis in axes:
        dim = x.shape[axis]
        kind = b.choice(["full", "range", "reverse", "negative"])
        if kind == "full":
            start, end, step = 0, b.choice([INT64_MAX, dim, 2**31 - 1]), 1
        elif kind == "reverse":
            start, end, step = -1, INT64_MIN, -1
        else:
            step = b.choice([1, 1, 2]) * (-1 if kind == "negative" else 1)
            start, end = b.integer(-dim, dim - 1), b.integer(-dim - 1, dim + 1)
            if step < 0:
                start, end = max(start, end), min(start, end)
        if _slice_length(dim, start, end, step) < 1:
            start, end, step = 0, dim, 1
        starts.append(start)
        ends.append(end)
        steps.append(step)
        shape[axis] = _slice_length(dim, start, end, step)
    named_axes = [a - x.rank if b.chance(0.3) else a for a in axes]
    inputs = [x.name, b.ints(starts), b.ints(ends)]
    if named_axes != list(range(len(axes))) or any(s != 1 for s in steps) or b.chance(0.5):
        inputs.append(b.ints(named_axes))
        if any(s != 1 for s in steps) or b.chance(0.5):
            inputs.append(b.ints(steps))
    return b.value(b.node("Slice", inputs)[0], shape, x.scale)


def _emit_pad(b: _Builder) -> Value:
    x = b.operand()
    mode = b.choice(["constant", "constant", "edge", "reflect"])
    zero = b.chance(0.25)
    limit = [0 if zero else (min(2, d - 1) if mode == "reflect" else 2) for d in x.shape]
    pads = [b.integer(0, m) for m in limit] + [b.integer(0, m) for m in limit]
    shape = [d + pads[i] + pads[i + x.rank] for i, d in enumerate(x.shape)]
    if math.prod(shape) > MAX_ELEMENTS:
        return None
    inputs = [x.name, b.ints(pads)]
    if mode == "constant" and b.chance(0.4):
        inputs.append(b.floats((), -1.0, 1.0))
    attrs = {} if mode == "constant" and b.chance(0.5) else {"mode": mode}
    return b.value(b.node("Pad", inputs, **attrs)[0], shape, max(x.scale, 1.0))


def _reduce_mean(b: _Builder, x: Value, axes: list[int] | None, keepdims: int | None) -> str:
    attrs = {} if keepdims is None else {"keepdims": keepdims}
    if axes is None:
        return b.node("ReduceMean", [x.name], **attrs)[0]
    if b.opset >= 18:
        return b.node("ReduceMean", [x.name, b.ints(axes)], **attrs)[0]
    return b.node("ReduceMean", [x.name], axes=axes, **attrs)[0]


def _emit_reduce_mean(b: _Builder) -> Value:
    x = b.operand()
    if b.chance(0.15):
        return b.value(_reduce_mean(b, x, None, None), [1] * x.rank, x.scale)  # all axes, keepdims default 1
    axes = b.subset(range(x.rank), 1, x.rank)
    keepdims = 1 if len(axes) == x.rank else b.choice([0, 1])
    shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keepdims else \
        [d for i, d in enumerate(x.shape) if i not in axes]
    named = [a - x.rank if b.chance(0.3) else a for a in axes]
    return b.value(_reduce_mean(b, x, named, keepdims if b.chance(0.8) or not keepdims else None), shape, x.scale)


def _emit_softmax(b: _Builder) -> Value:
    x = b.operand()
    attrs = {} if b.chance(0.2) else {"axis": b.integer(-x.rank, x.rank - 1)}
    return b.value(b.node("Softmax", [x.name], **attrs)[0], x.shape, 1.0)


def _emit_cast(b: _Builder) -> Value:
    x = b.operand()
    # No float16 round trip: a rewrite's last-bit difference would flip fp16 rounding (1e-3 relative).
    via = b.choice([FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64, onnx.TensorProto.INT32])
    out = b.node("Cast", [x.name], to=via)[0]
    if via != FLOAT:
        out = b.node("Cast", [out], to=FLOAT)[0]
    return b.value(out, x.shape, x.scale)


def _emit_dropout(b: _Builder) -> Value:
    x = b.operand()
    inputs = [x.name]
    if b.chance(0.5):
        inputs.append(b.const(np.asarray(b.choice([0.1, 0.5]), np.float32), exact=True))
        if b.chance(0.5):
            inputs.append(b.const(np.asarray(False), exact=True))
    outputs = [b.fresh("t"), b.fresh("mask")] if b.chance(0.25) else [b.fresh("t")]
    b.node("Dropout", inputs, outputs)
    if len(outputs) == 2 and b.chance(0.3):
        b.outputs.append(oh.make_tensor_value_info(outputs[1], onnx.TensorProto.BOOL, x.shape))
    return b.value(outputs[0], x.shape, x.scale)


def _emit_identity(b: _Builder) -> Value:
    if b.chance(0.15):  # Identity of a constant
        shape = tuple(b.integer(1, 4) for _ in range(b.integer(1, 3)))
        return b.value(b.node("Identity", [b.floats(shape)])[0], shape, 1.0)
    x = b.operand()
    return b.value(b.node("Identity", [x.name])[0], x.shape, x.scale)


def _emit_constant(b: _Builder) -> Value:
    """A constant joins the operand pool (through Identity when it is an initializer, so it is an activation)."""
    x = b.operand()
    if b.chance(0.5):
        name = b.fresh("k")
        if b.chance(0.3):
            b.node("Constant", [], [name], value_float=float(b.rng.uniform(-1, 1)))
            const = Value(name, (), 1.0)
        else:
            array = b.rng.uniform(-1, 1, x.shape).astype(np.float32)
            b.node("Constant", [], [name], value=onnx.numpy_helper.from_array(array, name + "_value"))
            const = Value(name, x.shape, 1.0)
    else:
        const = Value(b.floats(x.shape), x.shape, 1.0)
    return b.value(b.node("Add", [x.name, const.name])[0], x.shape, x.scale + 1.0)


EMITTERS = {
    "Relu": _unary("Relu"), "Sigmoid": _unary("Sigmoid", 1.0), "Tanh": _unary("Tanh", 1.0),
    "Neg": _unary("Neg"), "Abs": _unary("Abs"), "Exp": _emit_exp, "Identity": _emit_identity,
    "Add": _binary("Add"), "Sub": _binary("Sub"), "Mul": _binary("Mul"), "Div": _emit_div,
    "MatMul": _emit_matmul, "Gemm": _emit_gemm, "Conv": _emit_conv, "ConvTranspose": _emit_conv_transpose,
    "BatchNormalization": _emit_batch_norm, "Transpose": _emit_transpose, "Reshape": _emit_reshape,
    "Flatten": _emit_flatten, "Concat": _emit_concat, "Split": _emit_split, "Slice": _emit_slice,
    "Pad": _emit_pad, "ReduceMean": _emit_reduce_mean, "Softmax": _emit_softmax, "Cast": _emit_cast,
    "Dropout": _emit_dropout, "Constant": _emit_constant,
}
assert set(EMITTERS) == set(OPS)


# ---------------------------------------------------------------------------------------------------------
# Patterns that passes target.


def _pattern_conv_bn(b: _Builder) -> Value:
    return _emit_batch_norm(b, _emit_conv(b))


def _pattern_conv_bn_bn(b: _Builder) -> Value:
    return _emit_batch_norm(b, _emit_batch_norm(b, _emit_conv(b)))


def _pattern_gemm_bn(b: _Builder) -> Value:
    return _emit_batch_norm(b, _emit_gemm(b, plain=b.chance(0.7)))


def _pattern_matmul_bn(b: _Builder) -> Value:
    x = b.operand((2,))
    return _emit_batch_norm(b, _emit_matmul(b, x))


def _pattern_conv_mul_add(b: _Builder) -> Value:
    y = _emit_conv(b)
    per_channel = (y.shape[1],) + (1,) * (y.rank - 2)
    if b.chance(0.2):
        per_channel = (1, *per_channel)
    scaled = b.node("Mul", [y.name, b.floats(per_channel, 0.5, 1.5)])[0]
    out = b.node("Add", [scaled, b.floats(per_channel, -0.5, 0.5)])[0]
    return b.value(out, y.shape, 1.5 * y.scale + 0.5)


def _pattern_matmul_add(b: _Builder) -> Value:
    y = _emit_matmul(b, b.operand((2,)) if b.chance(0.7) else None)
    bias = b.floats((y.shape[-1],) if b.chance(0.8) else y.shape, -0.5, 0.5)
    inputs = [bias, y.name] if b.chance(0.2) else [y.name, bias]
    return b.value(b.node("Add", inputs)[0], y.shape, y.scale + 0.5)


def _pattern_layernorm(b: _Builder) -> Value:
    """y = (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma + beta over the last axis."""
    x = b.operand()
    axis = [-1] if b.chance(0.7) else [x.rank - 1]
    mean = _reduce_mean(b, x, axis, None)
    centered = b.node("Sub", [x.name, mean])[0]
    if b.chance(0.7):
        square = b.node("Pow", [centered, b.const(np.asarray(2.0, np.float32), exact=True)])[0]
    else:
        square = b.node("Mul", [centered, centered])[0]
    if b.chance(0.1):  # the centered tensor escapes the pattern: a fusion must decline
        b.value(centered, x.shape, 2 * x.scale)
    variance = _reduce_mean(b, Value(square, x.shape, x.scale**2), axis, None)
    eps = np.asarray(b.choice([1e-5, 1e-6, 1e-12]), np.float32)
    std = b.node("Sqrt", [b.node("Add", [variance, b.const(eps, exact=True)])[0]])[0]
    normed = b.node("Div", [centered, std])[0]
    out = normed
    if b.chance(0.9):
        out = b.node("Mul", [out, b.floats((x.shape[-1],), 0.5, 1.5)])[0]
        if b.chance(0.9):
            out = b.node("Add", [out, b.floats((x.shape[-1],), -0.5, 0.5)])[0]
    return b.value(out, x.shape, 1.5 * math.sqrt(x.shape[-1]) + 0.5)


def _pattern_gelu_erf(b: _Builder) -> Value:
    """y = x * 0.5 * (1 + erf(x / sqrt(2))), in the orders exporters write it."""
    x = b.operand()
    if b.chance(0.7):
        scaled = b.node("Div", [x.name, b.const(np.asarray(math.sqrt(2), np.float32), exact=True)])[0]
    else:
        scaled = b.node("Mul", [x.name, b.const(np.asarray(1 / math.sqrt(2), np.float32), exact=True)])[0]
    one_plus = b.node("Add", [b.node("Erf", [scaled])[0], b.const(np.asarray(1.0, np.float32), exact=True)])[0]
    half = b.const(np.asarray(0.5, np.float32), exact=True)
    if b.chance(0.5):
        out = b.node("Mul", [b.node("Mul", [x.name, one_plus])[0], half])[0]
    else:
        out = b.node("Mul", [b.node("Mul", [x.name, half])[0], one_plus])[0]
    return b.value(out, x.shape, x.scale)


def _pattern_transpose_pair(b: _Builder) -> Value:
    x = b.operand()
    perm = _permutation(b, x.rank)
    inverse = [perm.index(i) for i in range(x.rank)]
    first = b.value(b.node("Transpose", [x.name], perm=perm)[0], [x.shape[p] for p in perm], x.scale)
    return b.value(b.node("Transpose", [first.name], perm=inverse)[0], x.shape, x.scale)


def _pattern_reshape_chain(b: _Builder) -> Value:
    """Reshapes in a row, now and then after two Unsqueezes in a row (axes of either sign)."""
    value = _unsqueeze_pair(b) if b.chance(0.3) else _emit_reshape(b)
    for _ in range(b.integer(1, 2)):
        value = _emit_reshape(b, value)
    return value


def _unsqueeze_pair(b: _Builder) -> Value:
    value = b.operand()
    for _ in range(2):
        rank = value.rank + 1
        axis = b.integer(0, rank - 1)
        shape = value.shape[:axis] + (1,) + value.shape[axis:]
        signed = axis - rank if b.chance(0.5) else axis
        value = b.value(b.node("Unsqueeze", [value.name, b.ints([signed])])[0], shape, value.scale)
    return value


def _pattern_reshape_own_dims(b: _Builder) -> Value:
    """``Reshape(x, Concat(pieces))``: x's leading dimensions picked from Shape(x) (``_shape_piece``), then
    constants that split or merge the rest (one may be -1). Now and then what the rule must decline:
    ``allowzero=1``, the Shape of another tensor of x's shape, x's dimension at a position where x has an
    equal one."""
    x = b.as_rank(b.operand(), (2, 3, 4))
    kept = b.integer(1, x.rank - 1)
    rest = math.prod(x.shape[kept:])
    tail = [rest] if b.chance(0.4) else list(_factor_shape(rest, b.integer(1, 3)))
    if b.chance(0.2):
        tail[b.integer(0, len(tail) - 1)] = -1
    measured = x.name if b.chance(0.85) else b.node("Relu", [x.name])[0]
    shape = b.node("Shape", [measured])[0]
    axes = list(range(kept))
    swaps = [(p, q) for p in axes for q in range(x.rank) if q != p and x.shape[q] == x.shape[p]]
    if swaps and b.chance(0.15):
        position, axis = b.choice(swaps)
        axes[position] = axis
    pieces = []
    while axes:
        width = b.integer(1, len(axes))
        pieces.append(_shape_piece(b, shape, axes[:width], x.rank))
        axes = axes[width:]
    pieces += [b.ints([d]) for d in tail] if b.chance(0.5) else [b.ints(tail)]
    attrs = {"allowzero": 1} if b.chance(0.1) else {}
    out = b.node("Reshape", [x.name, b.node("Concat", pieces, axis=0)[0]], **attrs)[0]
    known = math.prod(d for d in tail if d != -1)
    return b.value(out, (*x.shape[:kept], *(rest // known if d == -1 else d for d in tail)), x.scale)


def _shape_piece(b: _Builder, shape: str, axes: list[int], rank: int) -> str:
    """A 1-D tensor holding the elements ``axes`` of ``shape`` (of length ``rank``), as exporters compute it:
    ``Unsqueeze(Gather(shape, i), [0])``, ``Gather(shape, [i, ...])`` or ``Slice(shape, [a], [b])`` for
    consecutive axes; indices and bounds of either sign."""
    signed = [a - rank if b.chance(0.3) else a for a in axes]
    consecutive = axes == list(range(axes[0], axes[0] + len(axes)))
    kind = b.choice(["Unsqueeze"] * (len(axes) == 1) + ["Gather"] + ["Slice"] * consecutive)
    if kind == "Unsqueeze":
        return b.node("Unsqueeze", [b.node("Gather", [shape, b.ints(signed[0])])[0], b.ints([0])])[0]
    if kind == "Gather":
        return b.node("Gather", [shape, b.ints(signed)])[0]
    end = axes[-1] + 1
    if b.chance(0.3):
        end = end - rank if end < rank else INT64_MAX
    return b.node("Slice", [shape, b.ints([signed[0]]), b.ints([end])])[0]


def _pattern_pad_conv(b: _Builder) -> Value:
    """A constant zero Pad on the spatial axes (now and then with a value or axis that forbids folding)."""
    x = b.as_rank(b.operand(), (3, 4))
    spatial = [0, 0] + [b.integer(0, 2) for _ in x.shape[2:]]
    end = [0, 0] + [b.integer(0, 2) for _ in x.shape[2:]]
    if b.chance(0.15):
        spatial[1] = 1  # a channel pad: not foldable
    inputs = [x.name, b.ints(spatial + end)]
    if b.chance(0.4):
        inputs.append(b.const(np.asarray(b.choice([0.0, 0.0, -0.0, 0.5]), np.float32), exact=True))
    shape = [d + p + q for d, p, q in zip(x.shape, spatial, end, strict=True)]
    padded = b.value(b.node("Pad", inputs, **({"mode": "constant"} if b.chance(0.3) else {}))[0], shape, x.scale)
    return _emit_conv(b, padded)


def _pattern_no_op(b: _Builder) -> Value:
    """A node that returns its input: x*1, x/1, x+0, x-0 (with -0.0 in x now and then), a same-type Cast,
    zero Pad, full Slice, identity Transpose or Reshape, Concat of one input, Split into one output, Where with
    a constant condition, a Reshape to x's shape reassembled from its elements."""
    x = b.operand()
    if b.chance(0.3):  # Neg(Relu(x)) holds -0.0 wherever x <= 0
        x = b.value(b.node("Neg", [b.node("Relu", [x.name])[0]])[0], x.shape, x.scale)
    kind = b.choice(["Mul", "Div", "Add", "Sub", "Cast", "Pad", "Slice", "Transpose", "Reshape", "Concat", "Split",
                     "Where", "ShapeConcat"])
    rank = b.integer(0, x.rank)
    shape = tuple(d if b.chance(0.5) else 1 for d in x.shape[x.rank - rank:])
    if kind in ("Mul", "Div"):
        out = b.node(kind, [x.name, b.const(np.ones(shape, np.float32), exact=True)])[0]
    elif kind in ("Add", "Sub"):
        zero = b.choice([0.0, -0.0])
        out = b.node(kind, [x.name, b.const(np.full(shape, zero, np.float32), exact=True)])[0]
    elif kind == "Cast":
        out = b.node("Cast", [x.name], to=FLOAT)[0]
    elif kind == "Pad":
        out = b.node("Pad", [x.name, b.ints([0] * (2 * x.rank))])[0]
    elif kind == "Slice":
        axes = b.subset(range(x.rank), 1, x.rank)
        ends = [b.choice([INT64_MAX, x.shape[a], x.shape[a] + 3]) for a in axes]
        out = b.node("Slice", [x.name, b.ints([0] * len(axes)), b.ints(ends), b.ints(axes)])[0]
    elif kind == "Transpose":
        out = b.node("Transpose", [x.name], perm=list(range(x.rank)))[0]
    elif kind == "Reshape":
        spec = [0 if b.chance(0.3) else d for d in x.shape]
        if b.chance(0.3):
            spec[b.integer(0, x.rank - 1)] = -1
        out = b.node("Reshape", [x.name, b.ints(spec)])[0]
    elif kind == "Concat":
        out = b.node("Concat", [x.name], axis=b.integer(0, x.rank - 1))[0]
    elif kind == "Where":  # Where(false, other, x); Where(true, x, other) is kept (signed zeros)
        take_x = b.chance(0.3)
        condition = b.const(np.full(shape, take_x, bool), exact=True)
        other = b.floats(tuple(d if b.chance(0.5) else 1 for d in x.shape[x.rank - b.integer(0, x.rank):]))
        out = b.node("Where", [condition, x.name, other] if take_x else [condition, other, x.name])[0]
    elif kind == "ShapeConcat":  # Reshape(x, Concat(Unsqueeze(Gather(Shape(x), k)) for each k)): x
        size = b.node("Shape", [x.name])[0]
        pieces = [b.node("Unsqueeze", [b.node("Gather", [size, b.ints(k)])[0], b.ints([0])])[0]
                  for k in range(x.rank)]
        out = b.node("Reshape", [x.name, b.node("Concat", pieces, axis=0)[0]])[0]
    else:
        axis = b.integer(0, x.rank - 1)
        out = b.node("Split", [x.name, b.ints([x.shape[axis]])], 1, axis=axis)[0]
    return b.value(out, x.shape, x.scale)


def _pattern_constant_expression(b: _Builder) -> Value:
    """An operand computed from constants only (a transposed weight, a product of two constants, a reshaped
    constant), as exporters leave them: constant folding's target."""
    x = b.operand()
    kind = b.choice(["transposed_weight", "product", "reshaped"])
    if kind == "transposed_weight":
        n = b.integer(1, 8)
        weight = b.weight((n, x.shape[-1]), x.shape[-1])
        transposed = b.node("Transpose", [weight], perm=[1, 0])[0]
        return b.value(b.node("MatMul", [x.name, transposed])[0], (*x.shape[:-1], n), 1.5 * x.scale)
    rank = b.integer(0, x.rank)
    shape = tuple(d if b.chance(0.6) else 1 for d in x.shape[x.rank - rank:])
    if kind == "product":
        operand = b.node(b.choice(["Mul", "Add", "Sub"]), [b.floats(shape), b.floats(shape)])[0]
    else:
        flat = b.floats((math.prod(shape),))
        operand = b.node("Reshape", [flat, b.ints(shape)])[0]
    return b.value(b.node(b.choice(["Add", "Mul"]), [x.name, operand])[0], x.shape, 2 * x.scale + 2)


def _pattern_computed_weight(b: _Builder) -> Value:
    """A MatMul, Gemm or Conv whose weight passes through a node that returns it unchanged (PyTorch exports tied
    weights through Identity). Once a pass removes that node, the weight is an initializer, which onnxruntime
    prepacks: see test_properties.run_exact."""
    b.wrap_next_weight = b.choice(["Identity", "Dropout", "Cast", "Reshape", "Mul", "Transpose"])
    emit = b.choice([_emit_matmul, _emit_gemm, _emit_conv])
    value = emit(b)
    b.wrap_next_weight = None
    return value


PATTERN_EMITTERS = {
    "computed_weight": _pattern_computed_weight,
    "pad_conv": _pattern_pad_conv, "no_op": _pattern_no_op, "constant_expression": _pattern_constant_expression,
    "conv_bn": _pattern_conv_bn, "conv_bn_bn": _pattern_conv_bn_bn, "gemm_bn": _pattern_gemm_bn,
    "matmul_bn": _pattern_matmul_bn, "conv_mul_add": _pattern_conv_mul_add, "matmul_add": _pattern_matmul_add,
    "layernorm": _pattern_layernorm, "gelu_erf": _pattern_gelu_erf, "transpose_pair": _pattern_transpose_pair,
    "reshape_chain": _pattern_reshape_chain, "reshape_own_dims": _pattern_reshape_own_dims,
}
assert set(PATTERN_EMITTERS) == set(PATTERNS)


# ---------------------------------------------------------------------------------------------------------
# The strategy.


@st.composite
def models(draw, max_steps: int = 10, opsets=(17, 20)) -> GeneratedModel:
    """A random small valid model (see the module docstring)."""
    opset = opsets[0] if len(opsets) == 1 else draw(st.sampled_from(opsets))
    seed = draw(st.integers(0, 2**32 - 1))
    b = _Builder(draw, opset, seed)
    for _ in range(b.integer(1, 3)):
        rank = b.integer(1, 4)
        shape = [b.integer(1, 3)] + [b.integer(1, 8) for _ in range(rank - 1)]
        name = b.fresh("x")
        b.inputs.append(oh.make_tensor_value_info(name, FLOAT, shape))
        b.value(name, shape, 1.0)
    graph_inputs = list(b.values)
    if b.chance(0.1):  # an input nobody reads
        b.inputs.append(oh.make_tensor_value_info(b.fresh("unused"), FLOAT, [b.integer(1, 3), 2]))
    if b.chance(0.1):  # an int64 input, cast into the float pool or passed through
        name = b.fresh("ix")
        shape = [b.integer(1, 3), b.integer(1, 8)]
        b.inputs.append(oh.make_tensor_value_info(name, onnx.TensorProto.INT64, shape))
        if b.chance(0.5):
            b.value(b.node("Cast", [name], to=FLOAT)[0], shape, 3.0)
        else:
            b.outputs.append(oh.make_tensor_value_info(b.node("Identity", [name])[0], onnx.TensorProto.INT64, shape))

    for _ in range(b.integer(1, max_steps)):
        if b.chance(0.35):
            pattern = b.choice(PATTERNS)
            before = len(b.values)
            value = PATTERN_EMITTERS[pattern](b)
            if b.chance(0.8):  # the pattern's intermediates stay private (no later consumers): it can fuse
                b.values[before:] = [v for v in b.values[before:] if v is value]
            if pattern == "gelu_erf" and opset < 20:
                pattern = "gelu_erf(opset<20)"
            b.patterns.append(pattern)
        else:
            value = EMITTERS[b.choice(OPS)](b)
        if value is None:  # the op did not fit (too large, no axis to split, ...): something simple instead
            EMITTERS["Relu"](b)

    _choose_outputs(b, graph_inputs)
    graph = oh.make_graph(b.nodes, "generated", b.inputs, b.outputs, b.initializers)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8 if opset <= 17 else 9,
                          producer_name="graph_strategies")
    model.doc_string = f"feeds seed {seed}"
    return GeneratedModel(model, feeds_for(model, seed), tuple(b.patterns))


def _choose_outputs(b: _Builder, graph_inputs: list[Value]) -> None:
    chosen = [b.values[-1]]
    for _ in range(b.integer(0, 2)):  # intermediates that are outputs too (the rest is dead)
        value = b.pick(b.values)
        if value not in chosen and value not in graph_inputs:
            chosen.append(value)
    if b.chance(0.2):  # a graph input passed straight to an output through Identity
        x = b.pick(graph_inputs)
        chosen.append(Value(b.node("Identity", [x.name])[0], x.shape, x.scale))
    if b.chance(0.1):  # a constant through Identity to an output
        shape = (b.integer(1, 3),)
        chosen.append(Value(b.node("Identity", [b.floats(shape)])[0], shape, 1.0))
    if b.chance(0.05):  # a graph input listed directly as an output
        chosen.append(b.pick(graph_inputs))
    names = {o.name for o in b.outputs}
    for value in chosen:
        if value.name not in names:
            names.add(value.name)
            b.outputs.append(oh.make_tensor_value_info(value.name, FLOAT, list(value.shape)))
