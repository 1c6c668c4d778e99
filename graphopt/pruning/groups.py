"""Channel groups: which output channels of which layers must be removed together, and what else changes.

A *producer* is a layer whose output channels may be removed: Conv and ConvTranspose with ``group=1``, Gemm
(``transA=0``) and MatMul, each with a constant weight. Every output channel of every producer gets an id.
Walking the graph in topological order, each tensor that carries producer channels gets ``Channels``:
position ``i`` along ``axis`` holds channel ``ids[i]``. Nodes map channels from inputs to outputs:

* elementwise unary ops, pooling, Resize, Pad, Cast, BatchNormalization and InstanceNormalization keep them
  (per-channel parameters are sliced alike); depthwise Conv (``group = C_in = C_out``) keeps them too, its
  weight, bias and ``group`` shrink with them;
* binary elementwise ops (Add, Sub, Mul, Div, Max, Min, Sum, Mean, PRelu) between two channel-carrying
  tensors *couple* them position by position: channel ``a[i]`` and ``b[i]`` are removed together (a residual
  Add prunes all of its producers alike). A constant operand with one value per channel is sliced; one that
  broadcasts along the channel axis is left alone;
* Concat on the channel axis concatenates the id lists (offsets map to the producers); on another axis it
  couples its inputs. Split and Slice (step 1) on the channel axis take sub-lists and get new sizes and
  bounds; on other axes they keep the list;
* Flatten, and a Reshape that flattens the channel axis with the dimensions after it into one, map channel
  ``c`` to the block ``[c * inner, (c + 1) * inner)`` of the new axis (``inner`` = the product of the flattened
  dimensions after the channel axis, static); a Gemm or MatMul reading it loses whole blocks of weight rows.
  A Reshape that only merges dimensions after the channel axis keeps the list (an explicit channel count in
  its target is recomputed);
* Transpose moves the axis; Squeeze, Unsqueeze and reductions over other axes keep the list on the shifted axis;
  Softmax over another axis keeps it.

A *consumer* (Conv with ``group=1``, ConvTranspose with ``group=1``, Gemm, MatMul with a constant weight)
reading channels loses the matching input slices of its weight. A grouped Conv that is not depthwise is a
consumer and a producer whose groups keep equally many input and output channels (``group`` stays; each
group's weight rows lose the columns of its own removed inputs). A grouped ConvTranspose blocks the channels
it reads. Anything else that
reads channels, a graph output that carries them, a subgraph that reads them, or a layout the rules cannot
follow (a Reshape that splits or mixes the channel axis, as a channel shuffle does; a Transpose of an unknown
rank) *blocks* them: the producers coupled with them form a group that is not pruned, reported with the
reasons.

Coupling is a graph over channel ids (networkx): a connected component is one prunable channel; the
producers whose channels share components form one ``Group``. ``analyse`` returns the groups and the edits
that removing any set of components requires (``Edits``); ``graphopt.pruning.prune`` applies them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.rewrite import NameAllocator, all_graphs, constant_value, is_standard_op

_KEEPS_CHANNELS = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Identity", "Dropout", "Neg", "Abs", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Cast",
})
_POOLING = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu"})
_REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
                         "ReduceProd", "ReduceSumSquare", "ReduceLogSumExp"})
_NORMALIZATION_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}


@dataclasses.dataclass
class Channels:
    """Which producer channel each position along ``axis`` of a tensor holds."""

    axis: int
    ids: np.ndarray


@dataclasses.dataclass(frozen=True)
class SliceRole:
    """Constant input ``index`` of ``node`` loses the positions along ``axis`` whose channel is removed."""

    node: gs.Node
    index: int
    axis: int
    ids: np.ndarray


@dataclasses.dataclass(frozen=True)
class Producer:
    """A layer whose output channels ``ids`` may be removed; ``weight_axis`` is its output-channel axis."""

    node: gs.Node
    weight_axis: int
    ids: np.ndarray


@dataclasses.dataclass(frozen=True)
class Consumer:
    """A layer reading channels ``ids`` of its input 0; ``weight_axis`` is its weight's input-channel axis
    (of a grouped Conv, ``groups`` blocks of rows each read their own block of ``ids``)."""

    node: gs.Node
    weight_axis: int
    ids: np.ndarray
    groups: int = 1


@dataclasses.dataclass
class Group:
    """Producers whose channels are coupled. ``channels`` lists each prunable channel as the ids removed
    together (one per coupled producer, typically); ``blocked`` gives why the group cannot be pruned."""

    producers: list[Producer]
    channels: list[np.ndarray]
    blocked: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return "+".join(p.node.name for p in self.producers)


@dataclasses.dataclass
class Edits:
    """Everything that changes when channels go: constants to slice, attributes and shape constants to
    recompute (``adjustments``, each called with the boolean keep mask over all channel ids and a name
    allocator for the constants it makes), the consumers whose inputs lose channels and the depthwise Convs
    that channels pass through (the layers reconstruction re-fits), and the constraints on what is kept:
    lists of ids that must keep at least one (``non_empty``: Split and Slice pieces), and blocks of ids that
    must keep equally many (``equal``: the groups of a grouped Conv)."""

    slices: list[SliceRole] = dataclasses.field(default_factory=list)
    adjustments: list[Callable[[np.ndarray, NameAllocator], None]] = dataclasses.field(default_factory=list)
    consumers: list[Consumer] = dataclasses.field(default_factory=list)
    depthwise: list[Consumer] = dataclasses.field(default_factory=list)
    carriers: dict[str, Channels] = dataclasses.field(default_factory=dict)
    non_empty: list[np.ndarray] = dataclasses.field(default_factory=list)
    equal: list[list[np.ndarray]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Analysis:
    groups: list[Group]
    edits: Edits
    channel_count: int


def analyse(graph: gs.Graph) -> Analysis:
    """The channel groups of ``graph`` (topologically sorted, shapes inferred) and the edits pruning needs.
    An analysis in ``graphopt.analysis``'s sense: passes get it cached with ``ctx.analyses.get(analyse, graph)``
    and must not change it."""
    walk = _Walk(graph)
    for node in graph.nodes:
        walk.visit(node)
    for tensor in graph.outputs:
        walk.block(tensor, f"graph output '{tensor.name}' carries its channels")
    for name in _names_read_in_subgraphs(graph):
        if name in walk.edits.carriers:
            walk.block_ids(walk.edits.carriers[name].ids, f"a subgraph reads '{name}'")
    return Analysis(walk.groups(), walk.edits, walk.next_id)


def _names_read_in_subgraphs(graph: gs.Graph) -> set[str]:
    names = set()
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                for subgraph in all_graphs(value):
                    names |= {t.name for n in subgraph.nodes for t in n.inputs}
    return names


class _Walk:
    def __init__(self, graph: gs.Graph):
        import networkx  # imported on first use: it costs every other pipeline ~16 MiB and 0.1 s

        self.graph = graph
        self.next_id = 0
        self.producers: list[Producer] = []
        self.coupling = networkx.Graph()
        self.blocked: dict[int, list[str]] = {}
        self.edits = Edits()

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def channels(self, tensor: gs.Tensor) -> Channels | None:
        return self.edits.carriers.get(tensor.name) if tensor.name else None

    def carry(self, tensor: gs.Tensor, channels: Channels) -> None:
        self.edits.carriers[tensor.name] = channels

    def fresh(self, count: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + count)
        self.coupling.add_nodes_from(ids.tolist())
        self.next_id += count
        return ids

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        self.coupling.add_edges_from(zip(a.tolist(), b.tolist(), strict=True))

    def block_ids(self, ids: np.ndarray, reason: str) -> None:
        for channel in np.unique(ids).tolist():
            reasons = self.blocked.setdefault(channel, [])
            if reason not in reasons:
                reasons.append(reason)

    def block(self, tensor: gs.Tensor, reason: str) -> None:
        channels = self.channels(tensor)
        if channels is not None:
            self.block_ids(channels.ids, reason)

    def block_inputs(self, node: gs.Node, reason: str) -> None:
        for tensor in node.inputs:
            self.block(tensor, reason)

    def slice(self, node: gs.Node, index: int, axis: int, ids: np.ndarray) -> None:
        self.edits.slices.append(SliceRole(node, index, axis, ids))

    def groups(self) -> list[Group]:
        import networkx as nx

        owner = {}
        for index, producer in enumerate(self.producers):
            for channel in producer.ids.tolist():
                owner[channel] = index
        linked = nx.Graph()
        linked.add_nodes_from(range(len(self.producers)))
        components = [np.array(sorted(c)) for c in nx.connected_components(self.coupling)]
        for component in components:
            members = sorted({owner[c] for c in component.tolist()})
            linked.add_edges_from(zip(members, members[1:], strict=False))
        linked_sets = sorted(nx.connected_components(linked), key=min)
        by_group = {member: number for number, members in enumerate(linked_sets) for member in members}
        groups = [Group([self.producers[m] for m in sorted(members)], []) for members in linked_sets]
        for component in sorted(components, key=lambda c: int(c[0])):
            group = groups[by_group[owner[int(component[0])]]]
            group.channels.append(component)
            reasons = [r for c in component.tolist() for r in self.blocked.get(c, ())]
            group.blocked.extend(r for r in dict.fromkeys(reasons) if r not in group.blocked)
        return groups

    # -- the walk ------------------------------------------------------------------------------------------
    def visit(self, node: gs.Node) -> None:
        carried = [self.channels(t) for t in node.inputs]
        if not is_standard_op(node, node.op):
            self.block_inputs(node, f"{node.domain}.{node.op} '{node.name}' is not a standard op")
            return
        handler = _HANDLERS.get(node.op)
        if handler is None:
            if any(c is not None for c in carried):
                self.block_inputs(node, f"{node.op} '{node.name}' reads channels and has no pruning rule")
            return
        handler(self, node, carried)


# -- node rules -------------------------------------------------------------------------------------------------
def _weight(node: gs.Node, index: int = 1) -> np.ndarray | None:
    tensor = node.inputs[index] if len(node.inputs) > index else None
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def _bias(node: gs.Node, index: int) -> gs.Constant | None:
    tensor = node.inputs[index] if len(node.inputs) > index else None
    return tensor if isinstance(tensor, gs.Constant) else None


def _add_producer(walk: _Walk, node: gs.Node, weight_axis: int, count: int, output_axis: int,
                  bias_index: int | None) -> None:
    ids = walk.fresh(count)
    walk.producers.append(Producer(node, weight_axis, ids))
    walk.slice(node, 1, weight_axis, ids)
    if bias_index is not None:
        walk.slice(node, bias_index, _bias(node, bias_index).values.ndim - 1, ids)
    walk.carry(node.outputs[0], Channels(output_axis, ids))


def _conv(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    weight = _weight(node)
    source = carried[0]
    if weight is None or weight.ndim < 3 or (len(node.inputs) > 2 and node.inputs[2].name
                                             and _bias(node, 2) is None):
        walk.block_inputs(node, f"{node.op} '{node.name}' has a weight or bias that is not constant")
        return
    transposed = node.op == "ConvTranspose"
    group = int(node.attrs.get("group", 1))
    c_in = weight.shape[0] if transposed else weight.shape[1] * group
    c_out = weight.shape[1] * group if transposed else weight.shape[0]
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
    if group == 1:
        if source is not None:
            if source.axis != 1 or len(source.ids) != c_in:
                walk.block(node.inputs[0], f"{node.op} '{node.name}' reads channels off its channel axis")
            else:
                walk.slice(node, 1, 0 if transposed else 1, source.ids)
                walk.edits.consumers.append(Consumer(node, 0 if transposed else 1, source.ids))
        _add_producer(walk, node, 1 if transposed else 0, c_out, 1, 2 if has_bias else None)
        return
    depthwise = not transposed and weight.shape[1] == 1 and c_out == c_in == group
    if transposed:  # not pruned: neither the channels it reads nor its own
        walk.block(node.inputs[0], f"ConvTranspose '{node.name}' with group={group}")
        return
    if not depthwise:
        _grouped_conv(walk, node, source, group, c_in, c_out, has_bias)
        return
    if source is None:
        return
    if source.axis != 1 or len(source.ids) != c_in:
        walk.block(node.inputs[0], f"{node.op} '{node.name}' reads channels off its channel axis")
        return
    walk.slice(node, 1, 0, source.ids)
    walk.edits.depthwise.append(Consumer(node, 0, source.ids))
    if has_bias:
        walk.slice(node, 2, 0, source.ids)
    walk.edits.adjustments.append(lambda keep, names, n=node, ids=source.ids: n.attrs.__setitem__(
        "group", int(keep[ids].sum())))
    walk.carry(node.outputs[0], Channels(1, source.ids))


def _grouped_conv(walk: _Walk, node: gs.Node, source: Channels | None, group: int, c_in: int, c_out: int,
                  has_bias: bool) -> None:
    """A grouped Conv keeps ``group``: each group must keep as many input channels as the others (and as many
    output channels), so its input and output channel lists are split into ``group`` blocks of equal kept
    counts (``Edits.equal``). Input channel ``j`` of group ``g`` is column ``j`` of the weight rows of group
    ``g`` only, so the input side is sliced per group (an adjustment, after the rows were)."""
    if source is not None:
        if source.axis != 1 or len(source.ids) != c_in:
            walk.block(node.inputs[0], f"Conv '{node.name}' reads channels off its channel axis")
        else:
            blocks = np.split(source.ids, group)
            walk.edits.equal.append(blocks)
            walk.edits.consumers.append(Consumer(node, 1, source.ids, group))
            walk.edits.adjustments.append(lambda keep, names, n=node, b=blocks: _slice_group_inputs(n, b, keep, names))
    _add_producer(walk, node, 0, c_out, 1, 2 if has_bias else None)
    walk.edits.equal.append(np.split(walk.producers[-1].ids, group))


def _slice_group_inputs(node: gs.Node, blocks: list[np.ndarray], keep: np.ndarray, names: NameAllocator) -> None:
    weight = node.inputs[1]
    values = np.asarray(weight.values)
    rows = len(values) // len(blocks)
    if all(keep[block].all() for block in blocks):
        return
    parts = [np.compress(keep[block], values[g * rows:(g + 1) * rows], axis=1) for g, block in enumerate(blocks)]
    node.inputs[1] = gs.Constant(names.fresh(f"{weight.name}_pruned"), np.ascontiguousarray(np.concatenate(parts)))


def _gemm(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    weight = _weight(node)
    source = carried[0]
    bias = _bias(node, 2)
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
    if weight is None or weight.ndim != 2 or node.attrs.get("transA", 0) or (has_bias and bias is None):
        walk.block_inputs(node, f"Gemm '{node.name}' has a non-constant weight or bias, or transA=1")
        return
    trans_b = bool(node.attrs.get("transB", 0))
    if source is not None:
        if source.axis != 1 or len(source.ids) != weight.shape[1 if trans_b else 0]:
            walk.block(node.inputs[0], f"Gemm '{node.name}' reads channels off its feature axis")
        else:
            walk.slice(node, 1, 1 if trans_b else 0, source.ids)
            walk.edits.consumers.append(Consumer(node, 1 if trans_b else 0, source.ids))
    count = weight.shape[0 if trans_b else 1]
    if has_bias and bias.values.ndim and bias.values.shape[-1] == count and bias.values.size == count:
        _add_producer(walk, node, 0 if trans_b else 1, count, 1, 2)
    elif not has_bias or bias.values.size == 1:
        _add_producer(walk, node, 0 if trans_b else 1, count, 1, None)


def _matmul(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    weight = _weight(node)
    source = carried[0]
    if weight is None or weight.ndim != 2 or carried[1] is not None:
        walk.block_inputs(node, f"MatMul '{node.name}' has no constant 2-D weight")
        return
    rank = _rank(node.inputs[0])
    if source is not None:
        if rank is None or source.axis != rank - 1 or len(source.ids) != weight.shape[0]:
            walk.block(node.inputs[0], f"MatMul '{node.name}' reads channels off its last axis")
        else:
            walk.slice(node, 1, 0, source.ids)
            walk.edits.consumers.append(Consumer(node, 0, source.ids))
    out_rank = _rank(node.outputs[0])
    if out_rank is not None and out_rank >= 1:
        _add_producer(walk, node, 1, weight.shape[1], out_rank - 1, None)


def _keep(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    source = carried[0]
    if source is None:
        if any(c is not None for c in carried[1:]):
            walk.block_inputs(node, f"{node.op} '{node.name}' reads channels as a parameter")
        return
    if any(c is not None for c in carried[1:]):
        walk.block_inputs(node, f"{node.op} '{node.name}' reads channels as a parameter")
        return
    if node.op in _POOLING and (len(node.outputs) > 1 and node.outputs[1].name or source.axis != 1):
        walk.block_inputs(node, f"{node.op} '{node.name}' pools off the channel axis or returns indices")
        return
    if node.op == "Pad" and not _pads_spare(node, source.axis):
        walk.block_inputs(node, f"Pad '{node.name}' pads the channel axis")
        return
    for output in node.outputs:
        if output.name:
            walk.carry(output, source)


def _pads_spare(node: gs.Node, axis: int) -> bool:
    pads = constant_value(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("pads", []))
    rank = _rank(node.inputs[0])
    axes = constant_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    if pads is None or rank is None or (len(node.inputs) > 3 and node.inputs[3].name and axes is None):
        return False
    axes = [int(a) % rank for a in axes] if axes is not None else list(range(rank))
    if axis not in axes:
        return True
    where = axes.index(axis)
    return pads[where] == 0 and pads[where + len(axes)] == 0


def _normalization(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    source = carried[0]
    params = _NORMALIZATION_PARAMS[node.op]
    if source is None:
        return
    if source.axis != 1 or not all(isinstance(node.inputs[i], gs.Constant) for i in params) \
            or any(c is not None for c in carried[1:]) or any(t.name for t in node.outputs[1:]):
        walk.block_inputs(node, f"{node.op} '{node.name}' is not a per-channel inference normalization")
        return
    for index in params:
        walk.slice(node, index, 0, source.ids)
    walk.carry(node.outputs[0], source)


def _elementwise(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    rank = _rank(node.outputs[0])
    if rank is None:
        walk.block_inputs(node, f"{node.op} '{node.name}' has an output of unknown rank")
        return
    present = [(i, c) for i, c in enumerate(carried) if c is not None]
    if not present:
        return
    axes = {c.axis + rank - _rank(node.inputs[i]) for i, c in present}
    lengths = {len(c.ids) for _, c in present}
    if len(axes) != 1 or len(lengths) != 1:
        walk.block_inputs(node, f"{node.op} '{node.name}' combines channels on different axes")
        return
    axis = axes.pop()
    first = present[0][1]
    for _, other in present[1:]:
        walk.couple(first.ids, other.ids)
    for index, tensor in enumerate(node.inputs):
        if carried[index] is not None:
            continue
        shape = tensor.values.shape if isinstance(tensor, gs.Constant) else tensor.shape
        if shape is None:
            walk.block_inputs(node, f"{node.op} '{node.name}' has an operand of unknown shape")
            return
        own_axis = axis - (rank - len(shape))
        if own_axis < 0 or shape[own_axis] == 1:
            continue
        if not isinstance(tensor, gs.Constant) or shape[own_axis] != len(first.ids):
            walk.block_inputs(node, f"{node.op} '{node.name}' has a computed operand with per-channel values")
            return
        walk.slice(node, index, own_axis, first.ids)
    walk.carry(node.outputs[0], Channels(axis, first.ids))


def _concat(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    rank = _rank(node.outputs[0])
    if not any(c is not None for c in carried):
        return
    if rank is None or any(c is None for c in carried):
        walk.block_inputs(node, f"Concat '{node.name}' joins channels with tensors that carry none")
        return
    axis = int(node.attrs.get("axis", 0)) % rank
    if any(c.axis != carried[0].axis for c in carried):
        walk.block_inputs(node, f"Concat '{node.name}' joins channels on different axes")
        return
    if axis == carried[0].axis:
        walk.carry(node.outputs[0], Channels(axis, np.concatenate([c.ids for c in carried])))
        return
    for other in carried[1:]:
        if len(other.ids) != len(carried[0].ids):
            walk.block_inputs(node, f"Concat '{node.name}' joins channel lists of different lengths")
            return
        walk.couple(carried[0].ids, other.ids)
    walk.carry(node.outputs[0], carried[0])


def _split(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    source = carried[0]
    if source is None:
        return
    rank = _rank(node.inputs[0])
    axis = int(node.attrs.get("axis", 0)) % rank if rank else None
    if axis != source.axis:
        for output in node.outputs:
            walk.carry(output, source)
        return
    sizes = _split_sizes(node, len(source.ids))
    if sizes is None:
        walk.block_inputs(node, f"Split '{node.name}' has sizes that are not constant")
        return
    offsets = np.cumsum([0, *sizes])
    pieces = [source.ids[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
    for output, piece in zip(node.outputs, pieces, strict=True):
        walk.carry(output, Channels(axis, piece))
        walk.edits.non_empty.append(piece)
    walk.edits.adjustments.append(
        lambda keep, names, n=node, p=pieces: _set_split_sizes(n, [int(keep[i].sum()) for i in p], names))


def _split_sizes(node: gs.Node, length: int) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1].name:
        sizes = constant_value(node.inputs[1])
        return None if sizes is None else [int(s) for s in sizes]
    if "split" in node.attrs:
        return [int(s) for s in node.attrs["split"]]
    count = len(node.outputs)
    chunk = -(-length // count)
    return [min(chunk, length - i * chunk) for i in range(count)]


def _set_split_sizes(node: gs.Node, sizes: list[int], names: NameAllocator) -> None:
    node.attrs.pop("num_outputs", None)
    if "split" in node.attrs:
        node.attrs["split"] = sizes
        return
    values = np.array(sizes, np.int64)
    constant = gs.Constant(names.fresh(f"{node.name or node.outputs[0].name}_split"), values)
    if len(node.inputs) > 1:
        node.inputs[1] = constant
    else:
        node.inputs.append(constant)


def _slice(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    source = carried[0]
    if source is None:
        return
    if any(c is not None for c in carried[1:]):
        walk.block_inputs(node, f"Slice '{node.name}' reads channels as bounds")
        return
    rank = _rank(node.inputs[0])
    bounds = [constant_value(t) if t.name else None for t in node.inputs[1:5]]
    starts, ends = bounds[0], bounds[1]
    if rank is None or starts is None or ends is None:
        walk.block_inputs(node, f"Slice '{node.name}' has bounds that are not constant")
        return
    axes = [int(a) % rank for a in (bounds[2] if len(bounds) > 2 and bounds[2] is not None else range(len(starts)))]
    steps = bounds[3] if len(bounds) > 3 and bounds[3] is not None else np.ones(len(starts), np.int64)
    if source.axis not in axes:
        walk.carry(node.outputs[0], source)
        return
    where = axes.index(source.axis)
    if steps[where] != 1:
        walk.block_inputs(node, f"Slice '{node.name}' steps over channels")
        return
    start, end, _ = slice(int(starts[where]), int(ends[where])).indices(len(source.ids))
    end = max(start, end)
    walk.carry(node.outputs[0], Channels(source.axis, source.ids[start:end]))
    walk.edits.non_empty.append(source.ids[start:end])

    def adjust(keep: np.ndarray, names: NameAllocator, n=node, ids=source.ids, s=start, e=end, w=where) -> None:
        new_start = int(keep[ids[:s]].sum())
        new_end = new_start + int(keep[ids[s:e]].sum())
        for index, value in ((1, new_start), (2, new_end)):
            values = np.array(constant_value(n.inputs[index]), copy=True)
            values[w] = value
            n.inputs[index] = gs.Constant(names.fresh(f"{n.inputs[index].name}_pruned"), values)
    walk.edits.adjustments.append(adjust)


def _flatten_like(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    """Flatten, or a Reshape whose output is the input with dims k.. merged into one (k <= channel axis)."""
    source = carried[0]
    if source is None:
        return
    if node.op == "Reshape" and constant_value(node.inputs[1]) is None:
        walk.block_inputs(node, f"Reshape '{node.name}' has a computed target shape")
        return
    before = node.inputs[0].shape
    start = _merged_from(node, before)
    if start is None or any(not isinstance(d, int) for d in before[min(start, source.axis):]):
        walk.block_inputs(node, f"{node.op} '{node.name}' splits, moves or mixes the channel axis")
        return
    if start > source.axis:  # only dims after the channel axis merge: the channels stay where they are
        walk.carry(node.outputs[0], source)
        if node.op == "Reshape":
            walk.edits.adjustments.append(lambda keep, names, n=node, i=source.ids, k=source.axis: _set_reshape_dim(
                n, k, int(keep[i].sum()), names))
        return
    inner = math.prod(before[source.axis + 1:])
    outer = math.prod(before[start:source.axis])
    ids = np.tile(np.repeat(source.ids, inner), outer)
    walk.carry(node.outputs[0], Channels(start, ids))
    if node.op == "Reshape":
        walk.edits.adjustments.append(
            lambda keep, names, n=node, i=ids, k=start: _set_reshape_dim(n, k, int(keep[i].sum()), names))


def _merged_from(node: gs.Node, before) -> int | None:
    """The first input axis merged into the last output axis; the dims before it stay (a Reshape target
    entry of 0 copies the input dim, and its one -1 can only stand for the input dim there)."""
    if before is None:
        return None
    if node.op == "Flatten":
        return 1 if int(node.attrs.get("axis", 1)) % (len(before) + 1) == 1 else None
    target = constant_value(node.inputs[1])
    start = len(target) - 1
    tail = before[start:]
    if node.attrs.get("allowzero", 0) or start > len(before) or not all(isinstance(d, int) for d in tail):
        return None
    if any(t not in (0, -1) and t != d for t, d in zip(target[:start], before[:start], strict=False)):
        return None
    return start if target[start] in (-1, math.prod(tail)) else None


def _set_reshape_dim(node: gs.Node, axis: int, size: int, names: NameAllocator) -> None:
    shape = np.array(constant_value(node.inputs[1]), copy=True)
    if shape[axis] in (0, -1):  # copied from the input, or inferred: right by itself
        return
    shape[axis] = size
    node.inputs[1] = gs.Constant(names.fresh(f"{node.inputs[1].name}_pruned"), shape)


def _transpose(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    source = carried[0]
    if source is None:
        return
    rank = _rank(node.inputs[0])
    if rank is None:
        walk.block_inputs(node, f"Transpose '{node.name}' of unknown rank")
        return
    perm = [int(p) for p in node.attrs.get("perm", range(rank - 1, -1, -1))]
    walk.carry(node.outputs[0], Channels(perm.index(source.axis), source.ids))


def _axes_of(node: gs.Node, rank: int) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1].name:
        axes = constant_value(node.inputs[1])
        return None if axes is None else [int(a) % rank for a in np.atleast_1d(axes)]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) % rank for a in axes]


def _squeeze(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    source = carried[0]
    if source is None:
        return
    in_rank, out_rank = _rank(node.inputs[0]), _rank(node.outputs[0])
    axes = _axes_of(node, out_rank if node.op == "Unsqueeze" else in_rank) if in_rank and out_rank else None
    if axes is None or (node.op == "Squeeze" and source.axis in axes):
        walk.block_inputs(node, f"{node.op} '{node.name}' has unknown axes or removes the channel axis")
        return
    if node.op == "Squeeze":
        axis = _after_removing(source.axis, axes)
    else:
        kept = [a for a in range(out_rank) if a not in axes]
        axis = kept[source.axis]
    walk.carry(node.outputs[0], Channels(axis, source.ids))


def _reduce(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    source = carried[0]
    if source is None:
        return
    rank = _rank(node.inputs[0])
    axes = _axes_of(node, rank) if rank else None
    if axes is None or source.axis in axes:
        walk.block_inputs(node, f"{node.op} '{node.name}' reduces over the channel axis")
        return
    keepdims = int(node.attrs.get("keepdims", 1))
    axis = source.axis if keepdims else _after_removing(source.axis, axes)
    walk.carry(node.outputs[0], Channels(axis, source.ids))


def _after_removing(axis: int, removed: list[int]) -> int:
    """Where ``axis`` (not itself removed) is once the axes ``removed`` are gone."""
    return axis - sum(a < axis for a in removed)


def _softmax(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    source = carried[0]
    if source is None:
        return
    rank = _rank(node.inputs[0])
    if rank is None or int(node.attrs.get("axis", -1)) % rank == source.axis:
        walk.block_inputs(node, f"{node.op} '{node.name}' normalizes over the channel axis")
        return
    walk.carry(node.outputs[0], source)


def _resize(walk: _Walk, node: gs.Node, carried: list[Channels | None]) -> None:
    source = carried[0]
    if source is None:
        return
    scales = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    sizes = constant_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    if scales is not None and scales.size and scales[source.axis] == 1:
        walk.carry(node.outputs[0], source)
    elif sizes is not None and sizes.size:
        walk.carry(node.outputs[0], source)

        def adjust(keep: np.ndarray, names: NameAllocator, n=node, ids=source.ids, axis=source.axis) -> None:
            values = np.array(constant_value(n.inputs[3]), copy=True)
            values[axis] = int(keep[ids].sum())
            n.inputs[3] = gs.Constant(names.fresh(f"{n.inputs[3].name}_pruned"), values)
        walk.edits.adjustments.append(adjust)
    else:
        walk.block_inputs(node, f"Resize '{node.name}' scales the channel axis or has computed sizes")


def _rank(tensor: gs.Tensor) -> int | None:
    if isinstance(tensor, gs.Constant):
        return tensor.values.ndim
    return None if tensor.shape is None else len(tensor.shape)


_HANDLERS: dict[str, Callable[[_Walk, gs.Node, list[Channels | None]], None]] = {
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "MatMul": _matmul,
    **{op: _keep for op in _KEEPS_CHANNELS | _POOLING | {"Pad"}},
    **{op: _normalization for op in _NORMALIZATION_PARAMS},
    **{op: _elementwise for op in _ELEMENTWISE},
    **{op: _reduce for op in _REDUCTIONS},
    "Concat": _concat, "Split": _split, "Slice": _slice, "Flatten": _flatten_like, "Reshape": _flatten_like,
    "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _squeeze, "Softmax": _softmax,
    "LogSoftmax": _softmax, "Resize": _resize,
}
