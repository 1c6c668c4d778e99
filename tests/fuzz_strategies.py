"""Hypothesis strategy for the lossless fuzz test (test_fuzz_lossless.py): random valid DAGs over about fifty ops
and five element types.

``fuzz_models()`` extends ``graph_strategies.models``: the same builder (``graph_strategies._Builder``), the same
float32 ops (``graph_strategies.OPS``) and the patterns the passes look for (``graph_strategies.PATTERNS``), plus
the ops of ``NEW_OPS`` and values of other element types:

- float32: Sqrt of Abs, Log of (Abs + 1), Max, Min (2-3 operands), Where, Clip (min and max, only one, or
  none), LeakyRelu, HardSigmoid, Softplus, Erf, Pow (of Abs + 0.5, exponents 2, 3, 0.5, -1), ReduceSum,
  ReduceMax, Squeeze, Unsqueeze, Expand, Tile, Gather (constant indices of any rank, negative too), MaxPool,
  AveragePool (count_include_pad either way), GlobalAveragePool, Resize (nearest and linear, scales 0.5-2);
- float16, int32, int64 and bool values: graph inputs of those types, Casts between every pair (float to int
  only from values in [-8, 8], so no cast overflows), comparisons (Equal, Less, Greater, LessOrEqual) into
  bool, Not/And/Or/Xor, Where with a bool condition over any type, integer Add/Sub/Mul/Neg/Abs/Max/Min and
  ReduceSum/ReduceMax, float16 unary and binary arithmetic, and the data-movement ops (Transpose, Reshape,
  Squeeze, Unsqueeze, Expand, Tile, Gather, Slice, Concat, Identity) over every type;
- graph outputs of every type.

Shapes are static and computed here; every graph output is declared with its shape, and the checker's full
check (strict shape inference) confirms them (``test_fuzz_models_are_valid``).

Exactness. Each value records whether the lossless passes may change its bits (``exact``). A value is exact
when it is a graph input, a constant, or computed by an op that no lossless pass rewrites into other arithmetic
(data movement, elementwise float32 ops, comparisons, integer ops, casts, reductions, pooling) from exact
operands. MatMul, Gemm, Conv, ConvTranspose, BatchNormalization and every op of the ``graph_strategies``
emitters and patterns are inexact (fusions fold or reassociate them), and so is float16 arithmetic (onnxruntime
runs float16 ops without a float16 kernel in float32, and whether it keeps the rounding casts between them
depends on the graph's structure). Comparisons and float-to-integer casts take exact operands only, so every
bool and integer value is exact: an ulp of reassociation can never flip a comparison. The test compares exact
outputs bit for bit and the others within a tolerance.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx.printer
from graph_strategies import (
    EMITTERS,
    INT64_MAX,
    MAX_ELEMENTS,
    MAX_SCALE,
    OPS,
    PATTERN_EMITTERS,
    PATTERNS,
    Value,
    _broadcastable,
    _Builder,
    _choose_outputs,
    _factor_shape,
    _slice_length,
)
from hypothesis import strategies as st

DTYPES = ("float32", "float16", "int64", "int32", "bool")
ELEMENT_TYPE = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16,
                "int64": onnx.TensorProto.INT64, "int32": onnx.TensorProto.INT32, "bool": onnx.TensorProto.BOOL}
FLOATS = ("float32", "float16")
INTS = ("int64", "int32")
MAX_INT_SCALE = 2**20  # integer products stay far from overflow

# New ops and the element types each takes (the dtype of its main operand).
NEW_OPS = {
    "SqrtAbs": FLOATS, "LogAbs1": FLOATS, "Max": (*FLOATS, *INTS), "Min": (*FLOATS, *INTS), "Where": (*FLOATS, *INTS),
    "Clip": ("float32",), "LeakyRelu": FLOATS, "HardSigmoid": FLOATS, "Softplus": FLOATS, "Erf": FLOATS,
    "Pow": ("float32",), "ReduceSum": ("float32", *INTS), "ReduceMax": (*FLOATS, *INTS), "Squeeze": DTYPES,
    "Unsqueeze": DTYPES, "Expand": DTYPES, "Tile": DTYPES, "Gather": DTYPES, "MaxPool": FLOATS,
    "AveragePool": ("float32",), "GlobalAveragePool": FLOATS, "Resize": ("float32",), "Compare": ("float32", *INTS),
    "Logical": ("bool",), "Not": ("bool",), "CastTo": DTYPES, "IntArith": INTS, "Float16Arith": ("float16",),
    "TransposeAny": DTYPES, "ReshapeAny": DTYPES, "SliceAny": DTYPES, "ConcatAny": DTYPES, "IdentityAny": DTYPES,
}


@dataclasses.dataclass(frozen=True)
class Typed(Value):
    """A value of any element type: ``Value``'s name, static shape and bound of |value|, plus the dtype name
    (``DTYPES``) and whether it is computed exactly."""

    dtype: str = "float32"
    exact: bool = False


class FuzzModel:
    """A drawn model, its feeds, the patterns and new ops in it, and which outputs must be bit-exact."""

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], patterns: tuple[str, ...],
                 exact_outputs: frozenset[str]):
        self.model, self.feeds, self.patterns, self.exact_outputs = model, feeds, patterns, exact_outputs

    def __repr__(self) -> str:  # hypothesis prints this for a falsifying example
        feeds = ", ".join(f"{name}: {a.dtype}{list(a.shape)}" for name, a in self.feeds.items())
        return (f"FuzzModel(patterns={list(self.patterns)}, exact outputs {sorted(self.exact_outputs)}, "
                f"feeds {{{feeds}}} (seed in the doc_string, fuzz_strategies.fuzz_feeds), model=\n"
                f"{onnx.printer.to_text(self.model)}\n)")

    def op_types(self) -> set[str]:
        return {node.op_type for node in self.model.graph.node}

    def element_types(self) -> set[int]:
        values = [*self.model.graph.input, *self.model.graph.output]
        return {v.type.tensor_type.elem_type for v in values}


def fuzz_feeds(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """Feeds for every input: standard-normal floats, integers in [-3, 3], random bools."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if dtype.kind == "f":
            feeds[value.name] = np.asarray(rng.standard_normal(shape)).astype(dtype)
        elif dtype.kind == "b":
            feeds[value.name] = np.asarray(rng.integers(0, 2, size=shape)).astype(bool)
        else:
            feeds[value.name] = np.asarray(rng.integers(-3, 4, size=shape)).astype(dtype)
    return feeds


class FuzzBuilder(_Builder):
    """graph_strategies' builder (its float32 pool is ``values``) with pools of the other element types and the
    exactness of every value."""

    def __init__(self, draw, opset: int, seed: int):
        super().__init__(draw, opset, seed)
        self.typed: dict[str, list[Typed]] = {dtype: [] for dtype in DTYPES if dtype != "float32"}
        self.exact: set[str] = set()  # names of exact float32 values (the pool of graph_strategies.Value)
        self.new_ops: list[str] = []

    # -- pools -------------------------------------------------------------------------------------------

    def pool(self, dtype: str) -> list[Typed]:
        if dtype == "float32":
            return [Typed(v.name, v.shape, v.scale, "float32", v.name in self.exact) for v in self.values]
        return self.typed[dtype]

    def add(self, name: str, dtype: str, shape, scale: float, exact: bool) -> Typed:
        shape = tuple(int(d) for d in shape)
        if dtype == "float32":
            if not shape:  # graph_strategies' ops take ranks 1-4: a scalar joins the pool as [1]
                name, shape = self.node("Reshape", [name, self.ints([1])])[0], (1,)
            self.value(name, shape, scale)
            if exact:
                self.exact.add(name)
        else:
            self.typed[dtype].append(Typed(name, shape, float(scale), dtype, exact))
        return Typed(name, shape, float(scale), dtype, exact)

    def take(self, dtype: str, exact: bool = False, limit: float | None = None,
             ranks: tuple[int, ...] | None = None) -> Typed | None:
        """A recent value of ``dtype`` (exact only, bounded by ``limit``, of one of ``ranks``), or None."""
        candidates = [v for v in self.pool(dtype) if (v.exact or not exact)
                      and (limit is None or v.scale <= limit) and (ranks is None or v.rank in ranks)]
        if not candidates:
            return None
        return candidates[-1 - self.integer(0, len(candidates) - 1)]

    def constant_of(self, dtype: str, shape, low: float = -1.0, high: float = 1.0) -> str:
        """A constant of ``dtype`` (values in [low, high]; integers rounded; bools random)."""
        if dtype == "bool":
            array = np.asarray(self.rng.random(shape) < 0.5)
        elif dtype in INTS:
            array = self.rng.integers(int(math.floor(low)), int(math.ceil(high)) + 1, size=shape).astype(dtype)
        else:
            array = self.rng.uniform(low, high, shape).astype(dtype)
        return self.const(np.asarray(array), kind=f"typed_{dtype}")

    def broadcast_shape_to(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A shape that broadcasts to ``shape`` (a suffix of it, some dims 1)."""
        rank = self.integer(0, len(shape))
        return tuple(d if self.chance(0.6) else 1 for d in shape[len(shape) - rank:])

    def partner(self, x: Typed, exact: bool = False, limit: float = MAX_SCALE) -> tuple[str, float, bool]:
        """A second operand for an elementwise op on x: x itself, another value that broadcasts to x's shape,
        or a constant that does. Returns (name, scale, exact)."""
        same = [v for v in self.pool(x.dtype) if _broadcastable(v.shape, x.shape) and v.scale <= limit
                and (v.exact or not exact)]
        if same and self.chance(0.4):
            other = same[-1 - self.integer(0, len(same) - 1)]
            return other.name, other.scale, other.exact
        bound = 3 if x.dtype in INTS else 1.0
        return self.constant_of(x.dtype, self.broadcast_shape_to(x.shape), -bound, bound), bound, True


# ---------------------------------------------------------------------------------------------------------
# Emitters of the new ops: each takes the builder and the dtype of its main operand, and returns the value it
# made (None: not applicable here).


def _elementwise_unary(op: str, *, arithmetic: bool = True, scale=None, limit: float = MAX_SCALE, **attrs):
    """A unary float op; float16 arithmetic is inexact (see the module docstring)."""
    def emit(b: FuzzBuilder, dtype: str) -> Typed | None:
        x = b.take(dtype, limit=limit)
        if x is None:
            return None
        out = b.node(op, [x.name], **attrs)[0]
        exact = x.exact and not (arithmetic and dtype == "float16")
        return b.add(out, dtype, x.shape, x.scale if scale is None else scale(x.scale), exact)
    return emit


def _emit_sqrt_abs(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, limit=MAX_SCALE)
    if x is None:
        return None
    out = b.node("Sqrt", [b.node("Abs", [x.name])[0]])[0]
    return b.add(out, dtype, x.shape, math.sqrt(x.scale), x.exact and dtype == "float32")


def _emit_log_abs1(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, limit=MAX_SCALE)
    if x is None:
        return None
    one = b.const(np.asarray(1.0, dtype), exact=True)
    out = b.node("Log", [b.node("Add", [b.node("Abs", [x.name])[0], one])[0]])[0]
    return b.add(out, dtype, x.shape, math.log1p(x.scale), x.exact and dtype == "float32")


def _emit_max_min(op: str):
    def emit(b: FuzzBuilder, dtype: str) -> Typed | None:
        x = b.take(dtype, limit=MAX_SCALE if dtype in FLOATS else None)
        if x is None:
            return None
        names, scale, exact = [x.name], x.scale, x.exact
        for _ in range(b.integer(1, 2)):
            name, other_scale, other_exact = b.partner(x)
            names.append(name)
            scale, exact = max(scale, other_scale), exact and other_exact
        order = b.draw(st.permutations(names))
        return b.add(b.node(op, list(order))[0], dtype, x.shape, scale, exact and dtype != "float16")
    return emit


def _condition(b: FuzzBuilder, shape: tuple[int, ...]) -> Typed:
    """A bool value that broadcasts to ``shape``: from the bool pool, or a comparison of an exact value."""
    conditions = [v for v in b.pool("bool") if _broadcastable(v.shape, shape)]
    if conditions and b.chance(0.6):
        return conditions[-1 - b.integer(0, len(conditions) - 1)]
    cond_shape = b.broadcast_shape_to(shape)
    exact = [v for v in b.pool("float32") if v.exact and v.shape == cond_shape and v.scale <= MAX_SCALE]
    if exact:
        x = exact[-1]
        out = b.node(b.choice(["Less", "Greater"]), [x.name, b.const(np.asarray(0.0, np.float32), exact=True)])[0]
        return b.add(out, "bool", cond_shape, 1, True)
    return Typed(b.constant_of("bool", cond_shape), cond_shape, 1, "bool", True)


def _emit_where(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, limit=MAX_SCALE if dtype in FLOATS else None)
    if x is None:
        return None
    condition = _condition(b, x.shape)
    other, other_scale, other_exact = b.partner(x)
    inputs = [condition.name, x.name, other] if b.chance(0.5) else [condition.name, other, x.name]
    return b.add(b.node("Where", inputs)[0], dtype, x.shape, max(x.scale, other_scale), x.exact and other_exact)


def _emit_clip(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype)
    if x is None:
        return None
    low, high = sorted(float(v) for v in b.rng.uniform(-2, 2, 2))
    kind = b.choice(["both", "min", "max", "none"])
    inputs = [x.name]
    if kind in ("both", "min"):
        inputs.append(b.const(np.asarray(low, np.float32), exact=True))
    if kind == "max":
        inputs.append("")
    if kind in ("both", "max"):
        inputs.append(b.const(np.asarray(high, np.float32), exact=True))
    scale = x.scale if kind in ("min", "none") else min(x.scale, max(abs(low), abs(high)))
    return b.add(b.node("Clip", inputs)[0], dtype, x.shape, scale, x.exact)


def _emit_pow(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, limit=MAX_SCALE)
    if x is None:
        return None
    half = b.const(np.asarray(0.5, np.float32), exact=True)
    base = b.node("Add", [b.node("Abs", [x.name])[0], half])[0]  # >= 0.5
    exponent = b.choice([2.0, 3.0, 0.5, -1.0])
    out = b.node("Pow", [base, b.const(np.asarray(exponent, np.float32), exact=True)])[0]
    bound = max((x.scale + 0.5) ** exponent, 0.5 ** exponent)
    return b.add(out, dtype, x.shape, bound, x.exact)


def _axes(b: FuzzBuilder, x: Typed) -> tuple[list[int], list[int]]:
    """Some axes of x (sorted) and how they are written (some negative)."""
    axes = b.subset(range(x.rank), 1, x.rank)
    return axes, [a - x.rank if b.chance(0.3) else a for a in axes]


def _emit_reduce(op: str):
    def emit(b: FuzzBuilder, dtype: str) -> Typed | None:
        x = b.take(dtype, ranks=(1, 2, 3, 4))
        if x is None:
            return None
        axes, named = _axes(b, x)
        keepdims = b.choice([0, 1])
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keepdims else \
            [d for i, d in enumerate(x.shape) if i not in axes]
        as_input = op == "ReduceSum" or b.opset >= 18
        if as_input:
            out = b.node(op, [x.name, b.ints(named)], keepdims=keepdims)[0]
        else:
            out = b.node(op, [x.name], axes=named, keepdims=keepdims)[0]
        count = math.prod(x.shape[a] for a in axes)
        scale = x.scale * count if op == "ReduceSum" else x.scale
        if dtype in INTS and scale > MAX_INT_SCALE:
            return None
        exact = x.exact and not (dtype == "float16")
        return b.add(out, dtype, shape, scale, exact)
    return emit


def _emit_squeeze(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, ranks=(1, 2, 3, 4))
    if x is None:
        return None
    ones = [i for i, d in enumerate(x.shape) if d == 1]
    if not ones:
        return _emit_unsqueeze(b, dtype, x) if x.rank < 4 else None
    axes = b.subset(ones, 1, len(ones))
    inputs = [x.name]
    if len(axes) != len(ones) or b.chance(0.7):
        inputs.append(b.ints([a - x.rank if b.chance(0.3) else a for a in axes]))
    else:
        axes = ones  # no axes input: every size-1 axis
    shape = [d for i, d in enumerate(x.shape) if i not in axes]
    return b.add(b.node("Squeeze", inputs)[0], dtype, shape, x.scale, x.exact)


def _emit_unsqueeze(b: FuzzBuilder, dtype: str, x: Typed | None = None) -> Typed | None:
    x = x or b.take(dtype, ranks=(0, 1, 2, 3))
    if x is None:
        return None
    count = b.integer(1, min(2, 4 - x.rank))
    rank = x.rank + count
    axes = b.subset(range(rank), count, count)
    shape = list(x.shape)
    for axis in axes:
        shape.insert(axis, 1)
    named = [a - rank if b.chance(0.3) else a for a in axes]
    return b.add(b.node("Unsqueeze", [x.name, b.ints(named)])[0], dtype, shape, x.scale, x.exact)


def _emit_expand(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, ranks=(0, 1, 2, 3))
    if x is None:
        return None
    shape = [b.integer(2, 3) if d == 1 and b.chance(0.6) else d for d in x.shape]
    if b.chance(0.4):
        shape.insert(0, b.integer(1, 3))
    spec = list(shape)
    for i in range(len(spec) - x.rank, len(spec)):  # a dim given as 1 keeps the input's dim
        if spec[i] == x.shape[i - (len(spec) - x.rank)] and b.chance(0.3):
            spec[i] = 1
    if math.prod(shape) > MAX_ELEMENTS:
        return None
    return b.add(b.node("Expand", [x.name, b.ints(spec)])[0], dtype, shape, x.scale, x.exact)


def _emit_tile(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, ranks=(1, 2, 3, 4))
    if x is None:
        return None
    repeats = [b.choice([1, 1, 2, 3]) for _ in x.shape]
    shape = [d * r for d, r in zip(x.shape, repeats, strict=True)]
    if math.prod(shape) > MAX_ELEMENTS:
        return None
    return b.add(b.node("Tile", [x.name, b.ints(repeats)])[0], dtype, shape, x.scale, x.exact)


def _emit_gather(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, ranks=(1, 2, 3, 4))
    if x is None:
        return None
    axis = b.integer(0, x.rank - 1)
    dim = x.shape[axis]
    index_shape = tuple(b.integer(1, 3) for _ in range(b.integer(0, min(2, 5 - x.rank))))
    indices = b.rng.integers(-dim, dim, size=index_shape).astype(np.int64)
    shape = (*x.shape[:axis], *index_shape, *x.shape[axis + 1:])
    if math.prod(shape) > MAX_ELEMENTS:
        return None
    attrs = {"axis": axis - x.rank if b.chance(0.3) else axis} if axis or b.chance(0.5) else {}
    out = b.node("Gather", [x.name, b.const(indices, exact=True)], **attrs)[0]
    return b.add(out, dtype, shape, x.scale, x.exact)


def _pool_window(b: FuzzBuilder, spatial: tuple[int, ...]) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, strides, pads (begin + end, each < kernel), output spatial dims (ceil_mode 0)."""
    kernel = [b.integer(1, min(3, d)) for d in spatial]
    strides = [b.integer(1, 2) for _ in spatial]
    pads = [b.integer(0, k - 1) for k in kernel] + [b.integer(0, k - 1) for k in kernel]
    out = [(d + pads[i] + pads[i + len(spatial)] - kernel[i]) // strides[i] + 1 for i, d in enumerate(spatial)]
    return kernel, strides, pads, out


def _emit_pool(op: str):
    def emit(b: FuzzBuilder, dtype: str) -> Typed | None:
        x = b.take(dtype, ranks=(3, 4))
        if x is None:
            return None
        kernel, strides, pads, out = _pool_window(b, x.shape[2:])
        attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads}
        if op == "AveragePool" and b.chance(0.5):
            attrs["count_include_pad"] = 1
        shape = (*x.shape[:2], *out)
        exact = x.exact and dtype == "float32"
        return b.add(b.node(op, [x.name], **attrs)[0], dtype, shape, x.scale, exact)
    return emit


def _emit_global_average_pool(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, ranks=(3, 4))
    if x is None:
        return None
    shape = (*x.shape[:2], *(1 for _ in x.shape[2:]))
    return b.add(b.node("GlobalAveragePool", [x.name])[0], dtype, shape, x.scale, x.exact and dtype == "float32")


def _emit_resize(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, ranks=(3, 4))
    if x is None:
        return None
    scales = [1.0, 1.0] + [b.choice([1.0, 2.0, 0.5, 1.5]) for _ in x.shape[2:]]
    shape = [int(math.floor(d * s)) for d, s in zip(x.shape, scales, strict=True)]
    if min(shape) < 1 or math.prod(shape) > MAX_ELEMENTS:
        return None
    mode = b.choice(["nearest", "linear"])
    scales_name = b.const(np.asarray(scales, np.float32), exact=True)
    out = b.node("Resize", [x.name, "", scales_name], mode=mode)[0]
    return b.add(out, dtype, shape, x.scale, x.exact)


def _emit_compare(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, exact=True, limit=MAX_SCALE if dtype == "float32" else None)
    if x is None:
        return None
    other, _, _ = b.partner(x, exact=True)
    op = b.choice(["Equal", "Less", "Greater", "LessOrEqual"])
    inputs = [x.name, other] if b.chance(0.5) else [other, x.name]
    return b.add(b.node(op, inputs)[0], "bool", x.shape, 1, True)


def _emit_logical(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take("bool")
    if x is None:
        return None
    other, _, _ = b.partner(x)
    return b.add(b.node(b.choice(["And", "Or", "Xor"]), [x.name, other])[0], "bool", x.shape, 1, True)


def _emit_not(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take("bool")
    return None if x is None else b.add(b.node("Not", [x.name])[0], "bool", x.shape, 1, True)


def _emit_cast_to(b: FuzzBuilder, dtype: str) -> Typed | None:
    """A value of another type cast to ``dtype``: float to integer only from exact values in [-8, 8]."""
    sources = [s for s in DTYPES if s != dtype and b.pool(s)]
    if not sources:
        return None
    source = b.choice(sources)
    to_int = dtype in INTS and source in FLOATS
    x = b.take(source, exact=to_int, limit=MAX_SCALE if to_int else None)
    if x is None:
        return None
    if dtype in INTS and x.scale > MAX_INT_SCALE:
        return None
    if dtype == "float16" and x.scale > 2048:  # far from float16's range; integers exact up to 2048
        return None
    scale = 1.0 if dtype == "bool" else x.scale
    return b.add(b.node("Cast", [x.name], to=ELEMENT_TYPE[dtype])[0], dtype, x.shape, scale, x.exact)


def _emit_int_arith(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype)
    if x is None:
        return None
    op = b.choice(["Add", "Sub", "Mul", "Neg", "Abs"])
    if op in ("Neg", "Abs"):
        return b.add(b.node(op, [x.name])[0], dtype, x.shape, x.scale, True)
    other, other_scale, _ = b.partner(x)
    scale = x.scale * other_scale if op == "Mul" else x.scale + other_scale
    if scale > MAX_INT_SCALE:
        return None
    inputs = [x.name, other] if b.chance(0.7) else [other, x.name]
    return b.add(b.node(op, inputs)[0], dtype, x.shape, scale, True)


def _emit_float16_arith(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take("float16", limit=MAX_SCALE)
    if x is None:
        return None
    op = b.choice(["Add", "Sub", "Mul", "Relu", "Tanh", "Sigmoid", "Neg", "Abs"])
    if op in ("Add", "Sub", "Mul"):
        other, other_scale, _ = b.partner(x)
        scale = x.scale * other_scale if op == "Mul" else x.scale + other_scale
        return b.add(b.node(op, [x.name, other])[0], "float16", x.shape, scale, False)
    scale = 1.0 if op in ("Tanh", "Sigmoid") else x.scale
    return b.add(b.node(op, [x.name])[0], "float16", x.shape, scale, op in ("Neg", "Abs", "Relu") and x.exact)


def _emit_transpose_any(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, ranks=(1, 2, 3, 4))
    if x is None:
        return None
    perm = list(b.draw(st.permutations(range(x.rank))))
    shape = [x.shape[p] for p in perm]
    return b.add(b.node("Transpose", [x.name], perm=perm)[0], dtype, shape, x.scale, x.exact)


def _emit_reshape_any(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype)
    if x is None:
        return None
    shape = list(_factor_shape(x.size, b.integer(1, 4)))
    if b.chance(0.5):
        shape = list(b.draw(st.permutations(shape)))
    spec = list(shape)
    if b.chance(0.3):
        spec[b.integer(0, len(spec) - 1)] = -1
    return b.add(b.node("Reshape", [x.name, b.ints(spec)])[0], dtype, shape, x.scale, x.exact)


def _emit_slice_any(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, ranks=(1, 2, 3, 4))
    if x is None:
        return None
    axes = b.subset(range(x.rank), 1, x.rank)
    starts, ends, steps, shape = [], [], [], list(x.shape)
    for axis in axes:
        dim = x.shape[axis]
        step = b.choice([1, 1, 2, -1])
        start, end = b.integer(-dim, dim - 1), b.choice([b.integer(-dim - 1, dim + 1), INT64_MAX])
        if step < 0:
            end = -INT64_MAX if end == INT64_MAX else end
            start, end = max(start, end), min(start, end)
        if _slice_length(dim, start, end, step) < 1:
            start, end, step = 0, dim, 1
        starts.append(start)
        ends.append(end)
        steps.append(step)
        shape[axis] = _slice_length(dim, start, end, step)
    inputs = [x.name, b.ints(starts), b.ints(ends), b.ints(axes), b.ints(steps)]
    return b.add(b.node("Slice", inputs)[0], dtype, shape, x.scale, x.exact)


def _emit_concat_any(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype, ranks=(1, 2, 3, 4))
    if x is None:
        return None
    axis = b.integer(0, x.rank - 1)
    parts, exact = [x], x.exact
    fitting = [v for v in b.pool(dtype) if v.rank == x.rank
               and all(v.shape[i] == x.shape[i] for i in range(x.rank) if i != axis)]
    for _ in range(b.integer(1, 2)):
        if fitting and b.chance(0.5):
            parts.append(fitting[-1 - b.integer(0, len(fitting) - 1)])
        else:
            shape = list(x.shape)
            shape[axis] = b.integer(1, 3)
            parts.append(Typed(b.constant_of(dtype, shape), tuple(shape), 1.0, dtype, True))
        exact = exact and parts[-1].exact
    shape = list(x.shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    if math.prod(shape) > MAX_ELEMENTS:
        return None
    out = b.node("Concat", [p.name for p in parts], axis=axis)[0]
    return b.add(out, dtype, shape, max(p.scale for p in parts), exact)


def _emit_identity_any(b: FuzzBuilder, dtype: str) -> Typed | None:
    x = b.take(dtype)
    if x is None:
        return None
    return b.add(b.node(b.choice(["Identity", "Identity", "Dropout"]) if dtype in FLOATS else "Identity",
                        [x.name])[0], dtype, x.shape, x.scale, x.exact)


NEW_EMITTERS = {
    "SqrtAbs": _emit_sqrt_abs, "LogAbs1": _emit_log_abs1, "Max": _emit_max_min("Max"), "Min": _emit_max_min("Min"),
    "Where": _emit_where, "Clip": _emit_clip,
    "LeakyRelu": _elementwise_unary("LeakyRelu", alpha=0.1), "HardSigmoid": _elementwise_unary(
        "HardSigmoid", scale=lambda s: 1.0, alpha=0.3, beta=0.4),
    "Softplus": _elementwise_unary("Softplus", scale=lambda s: s + 1.0), "Erf": _elementwise_unary(
        "Erf", scale=lambda s: 1.0),
    "Pow": _emit_pow, "ReduceSum": _emit_reduce("ReduceSum"), "ReduceMax": _emit_reduce("ReduceMax"),
    "Squeeze": _emit_squeeze, "Unsqueeze": _emit_unsqueeze, "Expand": _emit_expand, "Tile": _emit_tile,
    "Gather": _emit_gather, "MaxPool": _emit_pool("MaxPool"), "AveragePool": _emit_pool("AveragePool"),
    "GlobalAveragePool": _emit_global_average_pool, "Resize": _emit_resize, "Compare": _emit_compare,
    "Logical": _emit_logical, "Not": _emit_not, "CastTo": _emit_cast_to, "IntArith": _emit_int_arith,
    "Float16Arith": _emit_float16_arith, "TransposeAny": _emit_transpose_any, "ReshapeAny": _emit_reshape_any,
    "SliceAny": _emit_slice_any, "ConcatAny": _emit_concat_any, "IdentityAny": _emit_identity_any,
}
assert set(NEW_EMITTERS) == set(NEW_OPS)
# every ONNX op type the strategy can write (the test checks that each one is generated)
ONNX_OPS = frozenset(OPS) | {
    "Sqrt", "Log", "Max", "Min", "Where", "Clip", "LeakyRelu", "HardSigmoid", "Softplus", "Erf", "Pow", "ReduceSum",
    "ReduceMax", "Squeeze", "Unsqueeze", "Expand", "Tile", "Gather", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Resize", "Less", "Greater", "LessOrEqual", "Equal", "And", "Or", "Xor", "Not"}


# ---------------------------------------------------------------------------------------------------------
# The strategy


def _add_input(b: FuzzBuilder, dtype: str) -> None:
    rank = b.integer(0 if dtype != "float32" else 1, 4)
    shape = [b.integer(1, 3)] + [b.integer(1, 6) for _ in range(rank - 1)] if rank else []
    name = b.fresh("x" if dtype == "float32" else dtype[0] + "x")
    b.inputs.append(oh.make_tensor_value_info(name, ELEMENT_TYPE[dtype], shape))
    scale = 3.0 if dtype in INTS else (1.0 if dtype == "bool" else 4.0)
    b.add(name, dtype, shape, scale, True)


@st.composite
def fuzz_models(draw, max_steps: int = 14, opsets=(17, 20)) -> FuzzModel:
    """A random valid model mixing graph_strategies' ops and patterns with ``NEW_OPS`` (module docstring)."""
    opset = draw(st.sampled_from(opsets))
    seed = draw(st.integers(0, 2**32 - 1))
    b = FuzzBuilder(draw, opset, seed)
    for _ in range(b.integer(1, 2)):
        _add_input(b, "float32")
    graph_inputs = list(b.values)
    for dtype in ("float16", "int64", "int32", "bool"):
        if b.chance(0.5):
            _add_input(b, dtype)

    for _ in range(b.integer(2, max_steps)):
        kind = b.choice(["pattern", "old", "new", "new", "new"])
        value = None
        if kind == "pattern":
            pattern = b.choice(PATTERNS)
            before = len(b.values)
            value = PATTERN_EMITTERS[pattern](b)
            if b.chance(0.8):  # the pattern's intermediates stay private: it can fuse
                b.values[before:] = [v for v in b.values[before:] if v is value]
            b.patterns.append(pattern)
        elif kind == "old":
            value = EMITTERS[b.choice(OPS)](b)
        else:  # the element type first (those with values, and any type to cast to), then an op for it
            dtype = b.choice([d for d in DTYPES if b.pool(d)] + ["cast"])
            if dtype == "cast":
                op, dtype = "CastTo", b.choice(DTYPES)
            else:
                op = b.choice([op for op in sorted(NEW_OPS) if dtype in NEW_OPS[op]])
            value = NEW_EMITTERS[op](b, dtype)
            if value is not None:
                b.new_ops.append(op)
        if value is None:
            EMITTERS["Relu"](b)

    _choose_outputs(b, graph_inputs)
    exact_outputs = {o.name for o in b.outputs if o.name in b.exact}
    names = {o.name for o in b.outputs}
    for dtype, pool in b.typed.items():
        fresh = [v for v in pool if v.name not in names and not any(v.name == i.name for i in b.inputs)]
        if fresh and b.chance(0.8):
            chosen = [fresh[-1]] + ([fresh[-1 - b.integer(0, len(fresh) - 1)]] if b.chance(0.3) else [])
            for v in chosen:
                if v.name not in names:
                    names.add(v.name)
                    b.outputs.append(oh.make_tensor_value_info(v.name, ELEMENT_TYPE[dtype], list(v.shape)))
                    if v.exact:
                        exact_outputs.add(v.name)
    graph = oh.make_graph(b.nodes, "fuzzed", b.inputs, b.outputs, b.initializers)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8 if opset <= 17 else 9,
                          producer_name="fuzz_strategies")
    model.doc_string = f"feeds seed {seed}"
    return FuzzModel(model, fuzz_feeds(model, seed), (*b.patterns, *b.new_ops), frozenset(exact_outputs))
