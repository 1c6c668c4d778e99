"""Channel importance and the choice of which channels to remove.

Importance of a prunable channel (a connected component of coupled producer channels, ``groups.Group``) is
the sum over its member channels of:

* ``l1`` / ``l2``: the norm of the producers' weight slices for that output channel (summed over the
  coupled members) times the norm of the consumers' weight slices for it as an input channel: what writes the
  channel times what reads it, about the size of its contribution downstream (a channel nobody writes or
  nobody reads scores 0);
* ``bn-scale``: ``|gamma|`` of the BatchNormalization that alone reads the producer's output (network
  slimming); a group where no producer is followed by one cannot be ranked this way and is not pruned (run
  ``prune-channels`` before ``lossless`` folds BatchNorms into the convolutions);
* ``activation``: the mean ``|x|`` of the channel over calibration data, averaged over every position where a
  consumer reads it (after the activation function and pooling, as the next layer sees it).

Members without a value (a producer without a BatchNormalization; a coupled producer whose channels reach
consumers only through the residual Add, which carries its first operand's ids) do not count.

Choice. ``scope=local`` removes ``floor(C * ratio)`` of each group's ``C`` channels, the least important
first. ``scope=global`` divides each group's scores by the group's mean score (so layers of different scale
compare) and removes the least important ``ratio`` of all prunable channels wherever they are, but never more
than ``max_group_ratio`` of one group (a layer pruned to almost nothing is a bottleneck no re-fit repairs,
and ties, as in a model whose weights are all alike, would otherwise empty the first groups): a group at its
cap is passed over for the next least important channel elsewhere. Either way a
group keeps at least ``min_channels`` channels (and at least one), and its kept count is rounded *up* to a
multiple of ``round_to`` (efficient kernels like channel counts that are multiples of 8). A Split or Slice
piece of the channel axis never becomes empty: its most important channel stays; the groups of a grouped
Conv keep equally many channels: each keeps the most important of what it lost until it has as many as the
group that kept most.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.data import Dataset
from graphopt.fidelity import export_with_gs
from graphopt.pruning.groups import Analysis, Group
from graphopt.validate.numerics import cpu_session, with_outputs

CRITERIA = ("l1", "l2", "bn-scale", "activation")
SCOPES = ("local", "global")


def channel_scores(analysis: Analysis, criterion: str, graph: gs.Graph, data: Dataset | None,
                   batch_size: int = 32, samples: int = 256) -> np.ndarray:
    """Importance per channel id (``analysis.channel_count`` values; NaN where the criterion has no value),
    or for ``l1``/``l2`` two rows: the norms of what writes each channel and of what reads it."""
    scores = np.full(analysis.channel_count, np.nan)
    if criterion in ("l1", "l2"):
        order = 1 if criterion == "l1" else 2
        writes = _norms([p for group in analysis.groups for p in group.producers], order, analysis.channel_count)
        reads = _norms(analysis.edits.consumers, order, analysis.channel_count)
        return np.stack([writes, reads])
    elif criterion == "bn-scale":
        for group in analysis.groups:
            for producer in group.producers:
                readers = producer.node.outputs[0].outputs
                if len(readers) == 1 and readers[0].op == "BatchNormalization" \
                        and isinstance(readers[0].inputs[1], gs.Constant):
                    scores[producer.ids] = np.abs(np.asarray(readers[0].inputs[1].values, np.float64))
    else:
        scores = _activation_scores(analysis, graph, data, batch_size, samples)
    return scores


def _norms(layers, order: int, count: int) -> np.ndarray:
    """Per channel id, the summed norms of the layers' weight slices along their ``weight_axis`` (for a
    grouped Conv consumer, input column ``j`` of group ``g``'s rows is channel ``ids[g * C_in/G + j]``)."""
    norms = np.zeros(count)
    for layer in layers:
        weight = np.asarray(layer.node.inputs[1].values, np.float64)
        groups = getattr(layer, "groups", 1)
        blocks = np.split(weight, groups, axis=0) if groups > 1 else [weight]
        moved = np.concatenate([np.moveaxis(b, layer.weight_axis, 0).reshape(b.shape[layer.weight_axis], -1)
                                for b in blocks])
        norms += np.bincount(layer.ids, weights=np.linalg.norm(moved, ord=order, axis=1), minlength=count)
    return norms


def _activation_scores(analysis: Analysis, graph: gs.Graph, data: Dataset, batch_size: int,
                       samples: int) -> np.ndarray:
    read = {c.node.inputs[0].name: analysis.edits.carriers[c.node.inputs[0].name]
            for c in analysis.edits.consumers}
    names = list(read)
    session = cpu_session(with_outputs(export_with_gs(graph), names))
    sums = {name: np.zeros(len(read[name].ids)) for name in names}
    counts = dict.fromkeys(names, 0)
    for batch in data.batches(batch_size, samples):
        for name, value in zip(names, session.run(names, batch), strict=True):
            axis = read[name].axis
            moved = np.moveaxis(np.abs(value.astype(np.float64)), axis, 0).reshape(value.shape[axis], -1)
            sums[name] += moved.sum(axis=1)
            counts[name] += moved.shape[1]
    total = np.zeros(analysis.channel_count)
    occurrences = np.zeros(analysis.channel_count)
    for name in names:
        ids = read[name].ids
        total += np.bincount(ids, weights=sums[name] / max(counts[name], 1), minlength=analysis.channel_count)
        occurrences += np.bincount(ids, minlength=analysis.channel_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(occurrences > 0, total / occurrences, np.nan)


def group_scores(group: Group, scores: np.ndarray) -> np.ndarray | None:
    """Importance of each of the group's channels: the sum over its coupled member channels that have a
    value; None when the criterion has no value for any member of some channel."""
    if scores.ndim == 2:  # weight norms: what writes the channel times what reads it
        return np.array([scores[0, c].sum() * scores[1, c].sum() for c in group.channels])
    if any(np.isnan(scores[channel]).all() for channel in group.channels):
        return None
    return np.array([np.nansum(scores[channel]) for channel in group.channels])


def kept_count(channels: int, ratio: float, min_channels: int, round_to: int) -> int:
    """How many of ``channels`` stay at ``ratio``: the rest after removing ``floor(channels * ratio)``,
    rounded up to a multiple of ``round_to``, at least ``min_channels`` and 1, at most ``channels``."""
    keep = channels - math.floor(channels * ratio + 1e-9)
    keep = round_to * math.ceil(keep / round_to)
    return min(channels, max(keep, min_channels, 1))


def choose(groups: list[Group], ranked: dict[int, np.ndarray], channel_count: int, ratio: float, scope: str,
           min_channels: int, round_to: int, non_empty: list[np.ndarray], max_group_ratio: float = 1.0,
           equal: list[list[np.ndarray]] = ()) -> np.ndarray:
    """The keep mask over channel ids. ``ranked`` maps the index of each group to prune to its channel
    scores; the channels of every other group are kept."""
    keep = np.ones(channel_count, bool)
    removed: dict[int, list[int]] = {}
    if scope == "local":
        for index, scores in ranked.items():
            count = len(scores) - kept_count(len(scores), ratio, min_channels, round_to)
            removed[index] = list(np.argsort(scores, kind="stable")[:count])
    else:
        pool = sorted((scores[c] / (scores.mean() or 1.0), index, c) for index, scores in ranked.items()
                      for c in range(len(scores)))
        caps = {index: len(scores) - kept_count(len(scores), max_group_ratio, min_channels, 1)
                for index, scores in ranked.items()}
        wanted = math.floor(len(pool) * ratio + 1e-9)
        for _, index, channel in pool:
            if wanted == 0:
                break
            if len(removed.setdefault(index, [])) < caps[index]:
                removed[index].append(channel)
                wanted -= 1
        for index, channels in removed.items():
            count = len(ranked[index])
            del channels[count - kept_count(count, len(channels) / count, min_channels, round_to):]
    owner = {}
    for index, channels in removed.items():
        for channel in channels:
            ids = groups[index].channels[channel]
            keep[ids] = False
            owner.update(dict.fromkeys(ids.tolist(), (index, channel)))
    def restore(ids: np.ndarray, count: int) -> None:
        """Keep again the ``count`` most important removed channels among ``ids``."""
        removed_here = {owner[i] for i in ids.tolist() if not keep[i]}
        for index, channel in sorted(removed_here, key=lambda o: -ranked[o[0]][o[1]])[:count]:
            keep[groups[index].channels[channel]] = True

    for _ in range(len(equal) + 1):  # restoring a channel can unbalance another constraint: until none does
        for piece in [*non_empty, *(block for blocks in equal for block in blocks)]:
            if len(piece) and not keep[piece].any():
                restore(piece, 1)
        unbalanced = False
        for blocks in equal:
            target = max(int(keep[block].sum()) for block in blocks)
            for block in blocks:
                if keep[block].sum() < target:
                    restore(block, target - int(keep[block].sum()))
                    unbalanced = True
        if not unbalanced:
            break
    return keep
