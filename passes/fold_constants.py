"""fold-constants: replace every node whose value is known before the model runs by a constant.

What is folded, in the graph and in every If/Loop/Scan body (outer graph first, so a body sees the outer
constants; a body's own inputs and loop-carried state are never constant):

- ``Constant`` nodes become initializers (``folded.constant_nodes``), under their output's name.
- ``If`` with a constant condition is inlined: the chosen branch's nodes move into the enclosing graph (their
  outer-scope references become direct ones; names that would collide are made unique), branch outputs are
  renamed to the If's outputs, and the other branch is dropped (``rewrites.if_inlined``).
- every standard-domain node whose inputs are all constant is evaluated by onnxruntime (CPU, graph
  optimizations off, one thread: bitwise what ORT computes for that node when the model runs), all of a
  graph's foldable nodes in one session, or, when their constant inputs pass 32 MiB, in several sessions of
  whole independent groups of nodes (node by node only if a session fails) (``folded.nodes``).
- with ``fold_shapes``: ``Shape`` (its ``start``/``end`` applied) and ``Size`` of a tensor whose inferred
  shape is fully static, and ``Gather``/``Slice`` (axis 0, constant indices, positive steps) of a ``Shape``
  output that pick only static dims, e.g. the channel count of an ``[N, 3, H, W]`` tensor; and ``Equal`` of
  a ``Shape`` output and a constant integer tensor c (either order, broadcast) when every comparison is
  decided: a static dim compares by value, and any other dim, being a size (>= 0 whatever the input), is
  unequal to a negative c. PyTorch exports ``expand`` to a size on dynamic dims as
  ``Where(Equal(shape, -1), 1, shape)``: that Equal is all false. These values come from the inferred
  shapes, not from ORT (``folded.static_shapes``, also counted in ``folded.nodes``).
  ``Shape`` nodes of the same graph left without consumers by that are removed (``removed.unused_shape_nodes``).
The pass repeats this until nothing changes (inlining and folding feed each other; shapes are inferred again
after an If was inlined or while a Shape is left dynamic), so a second run changes nothing. A folded tensor
that is a graph output stays an output, as an initializer under the same name. An initializer that is also
a graph input is not a constant from IR version 4 on (the caller may override it; onnxruntime's rule).

Size guard: a node is folded only if every output is at most ``max_growth`` times the bytes of its inputs,
or at most ``guard_min_bytes``. The default 2 lets widening casts (float16 -> float32, int32 -> int64) and
layout ops (Transpose, Reshape, Concat, Slice: ratio <= 1) fold, and refuses what grows with a shape value
rather than with stored data (ConstantOfShape, Expand, Tile, Range, outer-product MatMul) and int8 ->
float32 casts of stored weights (x4). ``guard_min_bytes`` (4096) lets small tables such as shape vectors or
``Range(0, 512)`` fold whatever their inputs. ``max_growth=inf`` lifts the guard. The guard is checked on
the inferred output shape before evaluation when it is known (so a blow-up is never even computed), and on
the computed value always.

Declines, counted as ``skipped.<reason>`` for nodes whose inputs are all constant (each with an info
diagnostic naming the tensor, except ``dynamic_shape``):
``size_guard`` (the diagnostic gives the would-be size), ``nondeterministic`` (Random*, Multinomial,
Bernoulli, Dropout in training mode), ``non_standard_domain`` (custom ops, ai.onnx.ml: ORT may not have them
and we cannot know their semantics), ``quantization_op`` (QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear: folding them destroys the QDQ form ORT and TensorRT select int8 kernels from),
``control_flow`` (Loop, Scan, and If whose condition is constant but not a single value: not evaluated;
their bodies are folded inside), ``evaluation_failed`` (onnxruntime cannot build or run the node; the
diagnostic has its error), ``unsupported_dtype`` (string, bfloat16, float8, int4 results: onnxruntime's
Python API or onnx-graphsurgeon cannot carry them), ``not_a_tensor`` (sequence or optional results),
``unsupported_constant`` (a Constant node with no attribute we know, e.g. ``sparse_value``, which gs drops
on import), ``dynamic_shape`` (Shape or Size of a tensor whose shape is not fully static, a Gather or Slice
of a Shape that picks a dim that is not, an Equal of a Shape and a constant that such a dim leaves
undecided; counted although their inputs are not all constant: they are where shape arithmetic on dynamic
dims stops folding, and what is computed from them is left with them), ``unknown_opset``
(static-shape rules on a default-domain opset newer than the installed onnx knows), ``float16_arithmetic``
(a float16 result computed, not moved: onnxruntime's CPU provider runs float16 ops it has no kernel for in
float32 and drops the float32 -> float16 -> float32 cast pairs between them, so at run time the consumer may
see a value the float16 constant would round; only ops in ``_VALUE_PRESERVING`` fold to float16).

Why not ``onnx_graphsurgeon.Graph.fold_constants``: it rewrites Cast(int -> float) -> op -> Cast(float ->
int) chains (changes integer division and large values), ignores ``Shape``'s ``start``/``end``, runs ORT with
its own optimizations on, folds random ops, loses If branch outputs that are outer-scope values or constants,
and reports nothing per node. Functions (``model.functions``) are left untouched.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphopt.analysis import infer_shapes
from graphopt.pass_base import Diagnostic, Invariant, Option, Pass, PassContext, PassResult
from graphopt.rewrite import NameAllocator, all_graphs, is_standard_op
from graphopt.validate.numerics import cpu_session

logger = logging.getLogger(__name__)

_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}
_QUANTIZATION = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# ops whose outputs are values of their inputs (moved, selected, sign-flipped): exact in float16 whatever
# precision onnxruntime computes them in
_VALUE_PRESERVING = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
                     "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "ConstantOfShape",
                     "Where", "Neg", "Abs", "Max", "Min", "Relu"}
# dtypes onnxruntime's Python API hands over as numpy arrays
_PLAIN_DTYPES = frozenset(np.dtype(name) for name in ("float16", "float32", "float64", "bool", "int8", "int16",
                                                      "int32", "int64", "uint8", "uint16", "uint32", "uint64"))
_NEWEST_KNOWN_OPSET = onnx.defs.onnx_opset_version()


class FoldConstants(Pass):
    name = "fold-constants"
    summary = "evaluate constant nodes with onnxruntime, fold static shapes, inline If with a constant condition"
    options = (
        Option("max_growth", float, 2.0, "fold a node only if each output is at most this many times the bytes "
                                         "of its inputs (inf: no size guard)", minimum=1.0),
        Option("guard_min_bytes", int, 4096, "outputs up to this many bytes fold whatever their growth",
               minimum=0),
        Option("fold_shapes", bool, True, "fold Shape/Size (and Gather/Slice of a Shape) from static shapes"),
    )
    requires = frozenset({Invariant.SHAPES_INFERRED, Invariant.TOPOLOGICALLY_SORTED})
    preserves = frozenset({Invariant.TOPOLOGICALLY_SORTED, Invariant.INFERENCE_MODE})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        done: collections.Counter[str] = collections.Counter()
        # a changing round removes a node or an If; inlining adds at most one Identity per If output
        bound = sum(len(n.outputs) if n.op == "If" else 1 for g in all_graphs(graph) for n in g.nodes) + 2
        warning = []
        folding = None
        for _ in range(bound):
            if folding is not None and folding.skipped["skipped.dynamic_shape"]:
                infer_shapes(graph)  # the values folded last round may make those shapes static
            folding = _Round(graph, self.values)
            if not folding.run():
                break
            done.update(folding.done)
        else:
            warning = [Diagnostic("warning", f"fold-constants stopped after {bound} rounds without converging")]
        stats = {**done, **folding.skipped}
        return PassResult(bool(done), stats, (*folding.diagnostics, *warning))


class _Round:
    """One round: lower Constant nodes, inline constant Ifs, fold every graph. Counts what it did (``done``)
    and what it declined (``skipped``, ``diagnostics``: the last round's are the final graph's)."""

    def __init__(self, root: gs.Graph, values: dict[str, Any]):
        self.root, self.values = root, values
        self.opset = root.opset
        # From IR 4 on, an initializer also listed as a graph input is a default the caller may override
        # (onnxruntime: Graph::CanOverrideInitializer); before, it is a constant.
        overridable = root.ir_version is None or root.ir_version >= 4
        self.overridable = {id(t) for t in root.inputs if isinstance(t, gs.Constant)} if overridable else set()
        self.done: collections.Counter[str] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()
        self.diagnostics: list[Diagnostic] = []

    def run(self) -> bool:
        for graph in list(all_graphs(self.root)):
            self._lower_constants(graph)
        if self._inline_ifs(self.root) and self.values["fold_shapes"]:
            infer_shapes(self.root)
        for graph in list(all_graphs(self.root)):
            self._fold(graph)
        return bool(self.done)

    def constant(self, tensor: gs.Tensor) -> bool:
        """True if ``tensor`` holds a value known now (an omitted optional input counts as known)."""
        return not tensor.name or (isinstance(tensor, gs.Constant) and id(tensor) not in self.overridable)

    def _skip(self, node: gs.Node, reason: str, detail: str = "") -> None:
        self.skipped[f"skipped.{reason}"] += 1
        if reason != "dynamic_shape":
            what = ", ".join(t.name for t in node.outputs if t.name) or node.name
            self.diagnostics.append(Diagnostic("info", f"not folded: '{what}' ({reason}){detail}",
                                               node=node.name or None))

    # -- Constant nodes -----------------------------------------------------------------------------------

    def _lower_constants(self, graph: gs.Graph) -> None:
        lowered = set()
        for node in graph.nodes:
            if not is_standard_op(node, "Constant") or len(node.outputs) != 1:
                continue
            values = _constant_attribute_value(node)
            if values is None:
                self._skip(node, "unsupported_constant")
                continue
            tensor = node.outputs[0]
            node.outputs.clear()
            tensor.to_constant(values)
            lowered.add(id(node))
        if lowered:
            graph.nodes = [n for n in graph.nodes if id(n) not in lowered]
            self.done["folded.constant_nodes"] += len(lowered)

    # -- If with a constant condition ---------------------------------------------------------------------

    def _inline_ifs(self, graph: gs.Graph) -> bool:
        inlined, index = False, 0
        while index < len(graph.nodes):
            node = graph.nodes[index]
            condition = node.inputs[0] if is_standard_op(node, "If") and node.inputs else None
            if condition is not None and condition.name and self.constant(condition) and _inlinable(node):
                self._inline_if(graph, index)
                self.done["rewrites.if_inlined"] += 1
                inlined = True
                continue  # the branch's nodes now start at ``index``; nested Ifs are visited next
            for value in node.attrs.values():
                if isinstance(value, gs.Graph):
                    inlined |= self._inline_ifs(value)
            index += 1
        return inlined

    def _inline_if(self, graph: gs.Graph, index: int) -> None:
        node = graph.nodes[index]
        take_then = bool(np.asarray(node.inputs[0].values).reshape(-1)[0])
        branch = node.attrs["then_branch" if take_then else "else_branch"]
        dropped = node.attrs["else_branch" if take_then else "then_branch"]
        self._make_names_unique(branch, skip={id(branch), id(dropped)})
        for subgraph in _graphs_under(dropped):  # its references to outer tensors must not keep them alive
            for dropped_node in subgraph.nodes:
                dropped_node.inputs.clear()
        if_outputs = list(node.outputs)
        node.inputs.clear()
        node.outputs.clear()
        produced_here = {id(t) for n in branch.nodes for t in n.outputs}
        names = NameAllocator(self.root)
        moved, renamed = list(branch.nodes), {}
        for if_output, branch_output in zip(if_outputs, branch.outputs, strict=True):
            if id(branch_output) in produced_here and id(branch_output) not in renamed:
                for consumer in list(branch_output.outputs):
                    for i, tensor in enumerate(consumer.inputs):
                        if tensor is branch_output:
                            consumer.inputs[i] = if_output
                producer = branch_output.inputs[0]
                producer.outputs[[id(t) for t in producer.outputs].index(id(branch_output))] = if_output
                if if_output.dtype is None:
                    if_output.dtype = branch_output.dtype
                if if_output.shape is None:
                    if_output.shape = branch_output.shape
                renamed[id(branch_output)] = if_output
            else:  # an outer-scope value, a constant, or a value already bound to another If output
                source = renamed.get(id(branch_output), branch_output)
                moved.append(gs.Node("Identity", name=names.fresh(f"{if_output.name}_inlined"), inputs=[source],
                                     outputs=[if_output]))
        graph.nodes[index:index + 1] = moved

    def _make_names_unique(self, branch: gs.Graph, skip: set[int]) -> None:
        """Rename the branch's own tensors and nodes whose names another object uses anywhere in the model."""
        owners: dict[str, set[int]] = collections.defaultdict(set)
        for graph in _graphs_under(self.root, skip):
            for item in [*graph.tensors().values(), *graph.nodes]:
                owners[item.name].add(id(item))
        names = NameAllocator(self.root)
        for item in [*branch.tensors().values(), *branch.nodes]:
            if item.name and owners.get(item.name, set()) - {id(item)}:
                item.name = names.fresh(item.name)

    # -- evaluation ---------------------------------------------------------------------------------------

    def _fold(self, graph: gs.Graph) -> None:
        static: dict[str, np.ndarray] = {}
        candidates, pending = [], set()
        for node in graph.nodes:
            if is_standard_op(node, "Constant") or not node.outputs:
                continue  # Constant nodes left by _lower_constants are counted there
            if not all(self.constant(t) or id(t) in pending for t in node.inputs):
                value = self._static_shape_value(node) if self.values["fold_shapes"] else None
                if value is not None:
                    static[node.outputs[0].name] = value
                    candidates.append(node)
                    pending.add(id(node.outputs[0]))
                continue
            reason, detail = self._decline_before(node)
            if reason:
                self._skip(node, reason, detail)
                continue
            candidates.append(node)
            pending.update(id(t) for t in node.outputs)
        if not candidates:
            return
        values, failures = _evaluate([n for n in candidates if n.outputs[0].name not in static], static,
                                     self.opset)
        folded, known = [], set()
        for node in candidates:
            from_shapes = node.outputs[0].name in static
            if not from_shapes and not all(self.constant(t) or id(t) in known for t in node.inputs):
                continue  # an input was declined
            reason, detail = ("evaluation_failed", f": {failures[id(node)]}") if id(node) in failures \
                else self._decline_after(node, values)
            if reason:
                self._skip(node, reason, detail)
                continue
            folded.append(node)
            known.update(id(t) for t in node.outputs)
            if from_shapes:
                self.done["folded.static_shapes"] += 1
        if folded:
            self._replace(graph, folded, values)

    def _replace(self, graph: gs.Graph, folded: list[gs.Node], values: dict[str, Any]) -> None:
        members = {id(n) for n in folded}
        graph_outputs = {id(t) for t in graph.outputs}
        frontier = [t for n in folded for t in n.outputs if t.name and
                    (id(t) in graph_outputs or any(id(c) not in members for c in t.outputs))]
        local = {id(n) for n in graph.nodes}  # a Shape in an enclosing graph is left for eliminate-dead-nodes
        shape_producers = [shape for n in folded for t in n.inputs
                           if (shape := _shape_producer(t)) is not None and id(shape) in local]
        for node in folded:
            node.inputs.clear()
            node.outputs.clear()
        for tensor in frontier:
            tensor.to_constant(values[tensor.name])
        removed = set(members)
        for shape in shape_producers:  # Shape nodes whose every consumer was folded from static dims
            if id(shape) not in removed and not any(t.outputs or id(t) in graph_outputs for t in shape.outputs):
                shape.inputs.clear()
                shape.outputs.clear()
                removed.add(id(shape))
                self.done["removed.unused_shape_nodes"] += 1
        graph.nodes = [n for n in graph.nodes if id(n) not in removed]
        self.done["folded.nodes"] += len(folded)

    def _decline_before(self, node: gs.Node) -> tuple[str | None, str]:
        if not is_standard_op(node, node.op):
            return "non_standard_domain", f": domain '{node.domain}'"
        if node.op in _NONDETERMINISTIC or _is_training_dropout(node):
            return "nondeterministic", ""
        if node.op in _QUANTIZATION:
            return "quantization_op", ""
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return "control_flow", ""
        for tensor in node.outputs:
            if tensor.dtype is not None and _plain_dtype(tensor.dtype) is None:
                return "unsupported_dtype", f": {tensor.name} is {tensor.dtype}"
            if tensor.dtype is not None and _float16_arithmetic(node, tensor.dtype):
                return "float16_arithmetic", ""
        predicted = [_predicted_bytes(t) for t in node.outputs if t.name]
        inputs = [_predicted_bytes(t) for t in node.inputs if t.name]
        if None not in predicted and None not in inputs:
            return self._size_guard(predicted, sum(inputs))
        return None, ""

    def _decline_after(self, node: gs.Node, values: dict[str, Any]) -> tuple[str | None, str]:
        results = [values.get(t.name) for t in node.outputs if t.name]
        if any(not isinstance(r, np.ndarray) for r in results):
            return "not_a_tensor", ""
        for tensor, result in zip([t for t in node.outputs if t.name], results, strict=True):
            if _plain_dtype(result.dtype) is None:
                return "unsupported_dtype", f": {tensor.name} is {result.dtype}"
            if _float16_arithmetic(node, result.dtype):
                return "float16_arithmetic", ""
        inputs = sum(_value_bytes(t, values) for t in node.inputs if t.name)
        return self._size_guard([r.nbytes for r in results], inputs)

    def _size_guard(self, outputs: list[int], inputs: int) -> tuple[str | None, str]:
        limit = max(self.values["guard_min_bytes"], self.values["max_growth"] * inputs)
        largest = max(outputs, default=0)
        if largest <= limit:
            return None, ""
        return "size_guard", (f": would be {largest} bytes from {inputs} bytes of inputs (limit {limit:.0f}: "
                              f"max_growth={self.values['max_growth']:g}, guard_min_bytes="
                              f"{self.values['guard_min_bytes']}); max_growth=inf folds it")

    def _static_shape_value(self, node: gs.Node) -> np.ndarray | None:
        """Shape/Size of a statically shaped tensor, Gather/Slice of static dims of a Shape, Equal of a Shape
        and a constant that the dims decide, else None."""
        if not _is_static_rule(node):
            return None
        if self.opset > _NEWEST_KNOWN_OPSET:
            self._skip(node, "unknown_opset", f": opset {self.opset} is newer than onnx knows")
            return None
        if node.op in ("Shape", "Size"):
            dims = _shape_output(node) if node.op == "Shape" else node.inputs[0].shape
            if dims is None or not all(_is_static(d) for d in dims):
                self._skip(node, "dynamic_shape")
                return None
            return np.array(dims if node.op == "Shape" else math.prod(dims), np.int64)
        if node.op == "Equal":
            return self._shape_equality(node)
        dims = _shape_output(_shape_producer(node.inputs[0]))
        if dims is None:
            return None
        ints = [_ints(t) if t.name and self.constant(t) else None for t in node.inputs[1:5]]
        picked = _gather_dims(node, dims, ints) if node.op == "Gather" else _slice_dims(node, dims, ints)
        if picked is None:
            return None
        if not all(_is_static(d) for d in np.ravel(picked)):
            self._skip(node, "dynamic_shape")
            return None
        return np.asarray(picked, dtype=object).astype(np.int64)

    def _shape_equality(self, node: gs.Node) -> np.ndarray | None:
        """Equal(Shape(x), c) or Equal(c, Shape(x)) for a constant integer c, when every comparison is
        decided (``_equal_dims``), else None."""
        if len(node.inputs) != 2:
            return None
        shape_side = 0 if _shape_producer(node.inputs[0]) is not None else 1
        dims = _shape_output(_shape_producer(node.inputs[shape_side]))
        other = node.inputs[1 - shape_side]
        values = _ints(other) if other.name and self.constant(other) else None
        if dims is None or values is None:
            return None
        equal = _equal_dims(dims, values)
        if equal is None:
            self._skip(node, "dynamic_shape")
        return equal


# -- helpers ------------------------------------------------------------------------------------------------


def _graphs_under(graph: gs.Graph, skip: set[int] = frozenset()) -> Iterator[gs.Graph]:
    """``graph`` and its nested subgraphs, leaving out the subtrees of the graphs whose ids are in ``skip``."""
    if id(graph) in skip:
        return
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from _graphs_under(value, skip)


def _constant_attribute_value(node: gs.Node) -> np.ndarray | LazyValues | None:
    attrs = node.attrs
    if len(attrs) != 1:
        return None
    key, value = next(iter(attrs.items()))
    if key == "value" and isinstance(value, gs.Constant):
        return value._values  # LazyValues keep the TensorProto: any dtype (strings, bfloat16) exports as is
    if key in ("value_float", "value_floats"):
        return np.array(value, np.float32)
    if key in ("value_int", "value_ints"):
        return np.array(value, np.int64)
    if key in ("value_string", "value_strings"):
        strings = [value] if key == "value_string" else list(value)
        dims = [] if key == "value_string" else [len(strings)]
        return LazyValues(onnx.helper.make_tensor(node.outputs[0].name, onnx.TensorProto.STRING, dims, strings))
    return None


def _inlinable(node: gs.Node) -> bool:
    """An If whose constant condition holds one value and whose branches match its outputs."""
    branches = [node.attrs.get("then_branch"), node.attrs.get("else_branch")]
    return int(np.prod(node.inputs[0].shape)) == 1 and all(
        isinstance(b, gs.Graph) and len(b.outputs) == len(node.outputs) for b in branches)


def _is_training_dropout(node: gs.Node) -> bool:
    if node.op != "Dropout" or len(node.inputs) < 3 or not node.inputs[2].name:
        return False
    return bool(np.asarray(node.inputs[2].values).any())


def _float16_arithmetic(node: gs.Node, dtype: Any) -> bool:
    """True if ``node`` computes a float16 result that onnxruntime may keep in float32 when the model runs."""
    return _plain_dtype(dtype) == np.float16 and node.op not in _VALUE_PRESERVING


def _plain_dtype(dtype: Any) -> np.dtype | None:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return None
    return dtype if dtype in _PLAIN_DTYPES else None


def _predicted_bytes(tensor: gs.Tensor) -> int | None:
    """Bytes of ``tensor`` from its (inferred) shape and dtype, or None when either is unknown."""
    shape, dtype = tensor.shape, _plain_dtype(tensor.dtype) if tensor.dtype is not None else None
    if shape is None or dtype is None or not all(_is_static(d) for d in shape):
        return None
    return math.prod(shape) * dtype.itemsize


def _value_bytes(tensor: gs.Tensor, values: dict[str, Any]) -> int:
    if tensor.name in values:
        return values[tensor.name].nbytes
    return _predicted_bytes(tensor) or 0


def _is_static(dim: Any) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0


def _is_static_rule(node: gs.Node) -> bool:
    if is_standard_op(node, "Shape", "Size"):
        return True
    if is_standard_op(node, "Equal"):
        return any(_shape_producer(t) is not None for t in node.inputs)
    return is_standard_op(node, "Gather", "Slice") and bool(node.inputs) and \
        _shape_producer(node.inputs[0]) is not None


def _shape_producer(tensor: gs.Tensor) -> gs.Node | None:
    """The Shape node that computes ``tensor``, or None."""
    producers = [] if isinstance(tensor, gs.Constant) else tensor.inputs
    return producers[0] if len(producers) == 1 and is_standard_op(producers[0], "Shape") else None


def _shape_output(shape_node: gs.Node) -> list | None:
    """What a Shape node outputs, as dims (ints or symbols): its input's shape sliced by ``start``/``end``
    (Python slicing clamps exactly as ONNX specifies)."""
    shape = shape_node.inputs[0].shape
    if shape is None:
        return None
    return list(shape)[shape_node.attrs.get("start", 0):shape_node.attrs.get("end", None)]


def _equal_dims(dims: list, values: np.ndarray) -> np.ndarray | None:
    """Equal(dims, values), broadcast as ONNX does, when every comparison is decided: a static dim compares by
    value; any other dim is a size, at least 0 whatever it turns out to be, so it differs from a negative
    value. None when a comparison is not decided (a dim that is not static against a value >= 0), or the
    operands do not broadcast (the node fails)."""
    column = np.empty(len(dims), dtype=object)
    column[:] = dims
    try:
        left, right = np.broadcast_arrays(column, values)
    except ValueError:
        return None
    decided = []
    for dim, value in zip(left.flat, right.flat, strict=True):
        if _is_static(dim):
            decided.append(dim == value)
        elif value < 0:
            decided.append(False)
        else:
            return None
    return np.array(decided, dtype=bool).reshape(left.shape)


def _ints(tensor: gs.Constant) -> np.ndarray | None:
    if _plain_dtype(tensor.dtype) is None or np.dtype(tensor.dtype).kind not in "iu":
        return None
    return np.asarray(tensor.values).astype(np.int64)


def _gather_dims(node: gs.Node, dims: list, ints: list) -> np.ndarray | None:
    """Gather (axis 0) of the dims a Shape outputs, at constant ``ints[0]``."""
    indices = ints[0] if ints else None
    if indices is None or node.attrs.get("axis", 0) not in (0, -1):
        return None
    if np.any(indices < -len(dims)) or np.any(indices >= len(dims)):
        return None
    return np.array([dims[i] for i in indices.ravel()], dtype=object).reshape(indices.shape)


def _slice_dims(node: gs.Node, dims: list, ints: list) -> list | None:
    """Slice (axis 0, positive step) of the dims a Shape outputs, by constant starts/ends/axes/steps."""
    if len(node.inputs) == 1:  # opset < 10: attributes
        parts = [node.attrs.get(k) for k in ("starts", "ends", "axes")] + [None]
        parts = [None if p is None else np.asarray(p, np.int64) for p in parts]
    else:
        if any(p is None for p, t in zip(ints, node.inputs[1:5], strict=True) if t.name):
            return None  # a non-constant or non-integer operand
        parts = ints + [None] * (4 - len(ints))
    starts, ends, axes, steps = parts
    if starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    if axes is not None and (axes.size != 1 or int(axes[0]) not in (0, -1)):
        return None
    step = 1 if steps is None else int(steps.reshape(-1)[0]) if steps.size == 1 else 0
    if step < 1:
        return None
    return dims[int(starts[0]):int(ends[0]):step]


def _evaluate(nodes: list[gs.Node], known: dict[str, np.ndarray], opset: int) -> tuple[dict[str, Any], dict[int, str]]:
    """``known`` and every output of ``nodes`` (topologically sorted, all inputs constant, known or produced
    among them) computed by onnxruntime in one session per batch (``_batches``); if any fails, node by node.
    Returns values by name and, for each node that onnxruntime cannot evaluate, the first line of its error."""
    values: dict[str, Any] = dict(known)
    if not nodes:
        return values, {}
    try:
        computed: dict[str, Any] = {}
        for batch in _batches(nodes, values):
            computed.update(_run(batch, values, opset))
        return {**values, **computed}, {}
    except Exception as error:  # onnxruntime raises its own types; fall back to find the nodes that fail
        logger.info("batch evaluation failed, evaluating node by node: %s", error)
    failures: dict[int, str] = {}
    for node in nodes:
        if not all(not t.name or isinstance(t, gs.Constant) or t.name in values for t in node.inputs):
            continue
        try:
            values.update(_run([node], values, opset))
        except Exception as error:  # one unrunnable node must not stop the others
            failures[id(node)] = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return values, failures


# Constant input bytes per onnxruntime session: a session holds its inputs three to four times over (the model
# proto, its serialization, onnxruntime's parse and tensors), so folding the weights of a large model (BERT's
# transposed weight matrices) in one session would cost several copies of them at once.
_BATCH_BYTES = 32 * 2**20


def _batches(nodes: list[gs.Node], values: dict[str, Any]) -> list[list[gs.Node]]:
    """``nodes`` in batches of whole connected groups (no tensor passes from one batch to another, so every
    node gets exactly the inputs it gets in a single session: constants, or values computed in its own
    session), each group added to the current batch while that stays within ``_BATCH_BYTES`` of constant
    inputs. Topological order is kept within a batch."""
    parent = list(range(len(nodes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {id(t): i for i, node in enumerate(nodes) for t in node.outputs}
    for i, node in enumerate(nodes):
        for tensor in node.inputs:
            j = producer.get(id(tensor))
            if j is not None:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(nodes)):
        groups.setdefault(root(i), []).append(i)
    batches: list[list[int]] = []
    size = 0
    for members in groups.values():  # ordered by each group's first node
        inputs = {id(t): t for i in members for t in nodes[i].inputs if id(t) not in producer}
        group_size = sum(_input_bytes(t, values) for t in inputs.values())
        if not batches or (size + group_size > _BATCH_BYTES and size > 0):
            batches.append([])
            size = 0
        batches[-1].extend(members)
        size += group_size
    return [[nodes[i] for i in sorted(batch)] for batch in batches]


def _input_bytes(tensor: gs.Tensor, values: dict[str, Any]) -> int:
    if isinstance(tensor, gs.Constant):
        return int(getattr(tensor._values, "nbytes", 0) or 0)
    value = values.get(tensor.name)
    return int(value.nbytes) if isinstance(value, np.ndarray) else 0


def _add_initializer(graph: onnx.GraphProto, tensor: gs.Constant) -> None:
    """Append the constant to ``graph``'s initializers: the TensorProto gs imported while its values are
    unread (copied straight into place: a weight is copied once), else encoded by onnx (gs's own encoder
    cannot write strings nor the ml_dtypes types)."""
    slot = graph.initializer.add()
    if isinstance(tensor._values, LazyValues):
        slot.CopyFrom(tensor._values.tensor)
        slot.name = tensor.name
    elif getattr(tensor, "_export_dtype", None) is not None:  # values gs converts on export (float32 -> bfloat16)
        slot.CopyFrom(OnnxExporter.export_tensor_proto(tensor))
    else:
        slot.CopyFrom(onnx.numpy_helper.from_array(np.asarray(tensor._values), tensor.name))


def _run(nodes: list[gs.Node], values: dict[str, Any], opset: int) -> dict[str, Any]:
    """Evaluate ``nodes`` in one onnxruntime session. The model is built in place (``make_graph`` and
    ``make_model`` would each copy every input weight once more), and dropped once the session holds it.
    The values are exactly what onnxruntime computes (copies of its arrays)."""
    inputs: dict[str, gs.Tensor] = {}
    for node in nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) or tensor.name in values:
                inputs[tensor.name] = tensor
    outputs = [t.name for n in nodes for t in n.outputs if t.name]
    graph = onnx.helper.make_graph([OnnxExporter.export_node(n) for n in nodes], "fold_constants", [],
                                   [onnx.helper.make_empty_tensor_value_info(name) for name in outputs])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    for name, tensor in inputs.items():
        if isinstance(tensor, gs.Constant):
            _add_initializer(model.graph, tensor)
        else:
            model.graph.initializer.add().CopyFrom(onnx.numpy_helper.from_array(values[name], name))
    session = cpu_session(model)
    del model
    # Arrays are copied out of onnxruntime's memory: they are views of the session's arena, and a view keeps
    # the arena's whole region (sized for the session's work, not for the output) alive with it.
    results = [np.array(value) if isinstance(value, np.ndarray) else value for value in session.run(outputs, {})]
    return dict(zip(outputs, results, strict=True))
