"""prune-channels: structured channel pruning of Conv, ConvTranspose, Gemm and MatMul layers, directly on ONNX.

Whole output channels are removed, together with the matching input channels of every consumer and the
per-channel parameters in between, so the pruned model computes less (smaller weights, fewer MACs); nothing is
masked. Which channels go together, and what blocks a group, is ``graphopt.pruning.groups``; how channels are
ranked and how many go, ``graphopt.pruning.selection``; the edits, ``graphopt.pruning.removal``.

Math. Removing output channel ``c`` of a producer ``y = W x + b`` deletes row ``c`` of ``W`` and ``b`` (the
output-channel axis of the weight); a consumer ``z = V y`` then reads ``y`` without it and loses the matching
slice of ``V`` along its input-channel axis. ``z`` changes by ``-V[:, c] y_c``: nothing when ``y_c`` is
always 0 (a channel whose weights and bias are zero and whose path maps 0 to 0), otherwise the error
reconstruction reduces. With calibration data (``reconstruct=auto``, the default, or ``true``) every layer
that lost input channels is re-fitted by ridge least squares to the unpruned model's outputs, with a bias
correction (``graphopt.pruning.reconstruction``).

Declines. Whole pass: ``ratio=0`` changes nothing. Per group (``skipped.group_<reason>`` and an info
diagnostic naming its producers and the reason): ``blocked`` (a graph output, a subgraph, an op without a
pruning rule, a layout the analysis cannot follow such as a channel shuffle), ``excluded`` (a producer named
in ``exclude``), ``no_score`` (``criterion=bn-scale`` and no producer followed by a BatchNormalization),
``constraints`` (keeping grouped convolutions' groups equal gave every channel back). Per
layer that could not be re-fitted: ``skipped.reconstruction`` with a diagnostic. Only the main graph is
pruned; channels read inside If/Loop/Scan bodies block their group.

Channel counts. ``round_to=8`` by default: onnxruntime's CPU convolutions run channels in blocks (8 with
AVX2, 16 with AVX-512) and fall back to much slower kernels otherwise: measured here (AVX-512), a chain of
3x3 convolutions runs at 34-42 GMAC/s with 16 or 32 channels and 19-21 GMAC/s with 20, 23 or 31, so
the small MobileNetV2 pruned at ratio 0.3 to unrounded counts ran at 0.31x the original's speed, and 1.33x
rounded to 8.

Errors (exit 2): a ratio outside [0, 1); an unknown criterion or scope; ``criterion=activation`` or
``reconstruct=true`` without calibration data.
"""

from __future__ import annotations

import collections
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.errors import UsageError
from graphopt.fidelity import export_with_gs
from graphopt.pass_base import Diagnostic, Invariant, Option, Pass, PassContext, PassResult
from graphopt.pruning.groups import Analysis, analyse
from graphopt.pruning.reconstruction import Refit, reconstruct
from graphopt.pruning.removal import remove_channels
from graphopt.pruning.selection import CRITERIA, SCOPES, channel_scores, choose, group_scores, kept_count


class PruneChannels(Pass):
    name = "prune-channels"
    lossy = True
    summary = "remove whole output channels of Conv/Gemm/MatMul layers and re-fit what reads them (lossy)"
    options: ClassVar = (
        Option("ratio", float, 0.3, "fraction of each group's channels to remove, in [0, 1)", minimum=0.0,
               maximum=1.0),
        Option("criterion", str, "l1", "how channels are ranked", choices=CRITERIA),
        Option("scope", str, "local", "local: ratio per group; global: one ranking over all groups (scores "
               "relative to the group's mean)", choices=SCOPES),
        Option("max_group_ratio", float, 0.8, "scope=global: the most of one group's channels removed",
               minimum=0.0, maximum=1.0),
        Option("min_channels", int, 1, "channels each group keeps at least", minimum=1),
        Option("round_to", int, 8, "kept channel counts are rounded up to a multiple of this (8: what blocked "
               "CPU kernels and tensor cores take; 16 on AVX-512 machines; 1: none)", minimum=1),
        Option("exclude", list, (), "producer node names whose groups are not pruned"),
        Option("reconstruct", str, "auto", "re-fit layers on calibration data: auto (when data is given), "
               "true, false", choices=("auto", "true", "false")),
        Option("ridge", float, 1e-3, "ridge penalty of the re-fit, relative to the mean input energy",
               minimum=0.0),
        Option("samples", int, 256, "calibration samples used for scores and the re-fit", minimum=1),
        Option("batch_size", int, 32, "samples per calibration batch", minimum=1),
    )
    requires = frozenset({Invariant.TOPOLOGICALLY_SORTED, Invariant.SHAPES_INFERRED})
    preserves = frozenset({Invariant.TOPOLOGICALLY_SORTED, Invariant.INFERENCE_MODE})

    def __init__(self, **options):
        super().__init__(**options)
        if self.values["ratio"] >= 1.0:
            raise UsageError(f"{self.name}: option 'ratio' must be in [0, 1), got {self.values['ratio']!r}")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        values = self.values
        refit = values["reconstruct"] == "true" or (values["reconstruct"] == "auto" and ctx.data is not None)
        for needed, what in ((values["criterion"] == "activation", "criterion=activation"),
                             (values["reconstruct"] == "true", "reconstruct=true")):
            if needed and ctx.data is None:
                raise UsageError(f"{self.name}: {what} needs calibration data (--data)")
        if values["ratio"] == 0.0:
            return PassResult(False, {"skipped.ratio_zero": 1})
        analysis = ctx.analyses.get(analyse, graph)
        scores = channel_scores(analysis, values["criterion"], graph, ctx.data, values["batch_size"],
                                values["samples"])
        stats: collections.Counter[str] = collections.Counter(groups=len(analysis.groups))
        diagnostics: list[Diagnostic] = []
        ranked = self._rank(analysis, scores, stats, diagnostics)
        keep = choose(analysis.groups, ranked, analysis.channel_count, values["ratio"], values["scope"],
                      values["min_channels"], values["round_to"], analysis.edits.non_empty,
                      values["max_group_ratio"], analysis.edits.equal)
        self._summarize(analysis, ranked, keep, stats, diagnostics)
        if keep.all():
            return PassResult(False, dict(stats), tuple(diagnostics))
        original = export_with_gs(graph) if refit else None
        stats["constants.shrunk"] = remove_channels(graph, analysis, keep)
        if refit:
            layers = _layers_to_refit(graph, analysis, keep)
            skipped = reconstruct(graph, original, layers, ctx.data, values["ridge"], values["batch_size"],
                                  values["samples"])
            stats["rewrites.reconstructed"] = len(layers) - len(skipped)
            for node_name, reason in skipped.items():
                stats["skipped.reconstruction"] += 1
                diagnostics.append(Diagnostic("info", f"not re-fitted: {reason}", node_name))
        return PassResult(True, dict(stats), tuple(diagnostics))

    def _summarize(self, analysis: Analysis, ranked: dict[int, np.ndarray], keep: np.ndarray, stats,
                   diagnostics) -> None:
        """Per ranked group: the channels it keeps, or why it kept them all."""
        values = self.values
        for index in ranked:
            group = analysis.groups[index]
            kept = sum(bool(keep[channel].all()) for channel in group.channels)
            if kept < len(group.channels):
                stats["groups.pruned"] += 1
                stats["channels.removed"] += len(group.channels) - kept
                diagnostics.append(Diagnostic("info", f"kept {kept} of {len(group.channels)} channels",
                                              group.name))
            elif kept_count(len(group.channels), values["ratio"], values["min_channels"], values["round_to"]) \
                    < kept:
                stats["skipped.group_constraints"] += 1
                diagnostics.append(Diagnostic("info", "not pruned: keeping the groups of the grouped convolutions "
                                              "that read it equal (and Split/Slice pieces non-empty) gave back "
                                              "every channel it would have lost", group.name))

    def _rank(self, analysis: Analysis, scores: np.ndarray, stats, diagnostics) -> dict[int, np.ndarray]:
        ranked = {}
        for index, group in enumerate(analysis.groups):
            excluded = [p.node.name for p in group.producers if p.node.name in self.values["exclude"]]
            if group.blocked or excluded:
                stats["skipped.group_blocked" if group.blocked else "skipped.group_excluded"] += 1
                reasons = [*group.blocked, *([f"excluded: {', '.join(excluded)}"] if excluded else [])]
                diagnostics.append(Diagnostic("info", "not pruned: " + "; ".join(reasons), group.name))
                continue
            values = group_scores(group, scores)
            if values is None:
                stats["skipped.group_no_score"] += 1
                diagnostics.append(Diagnostic("info", f"not pruned: criterion {self.values['criterion']} ranks "
                                              "none of its producers (bn-scale needs a BatchNormalization that "
                                              "alone reads one; run prune-channels before lossless folds them)",
                                              group.name))
                continue
            ranked[index] = values
        return ranked


def _layers_to_refit(graph: gs.Graph, analysis: Analysis, keep: np.ndarray) -> list[Refit]:
    """Every consumer that lost input channels and every depthwise Conv that lost channels, in graph order,
    with the output channels each keeps."""
    lost = {id(c.node): c for c in analysis.edits.consumers + analysis.edits.depthwise if not keep[c.ids].all()}
    outputs = {id(p.node): p for group in analysis.groups for p in group.producers}
    depthwise = {id(c.node) for c in analysis.edits.depthwise}
    layers = []
    for node in graph.nodes:
        if id(node) not in lost:
            continue
        producer = outputs.get(id(node))
        if producer is not None:
            layers.append(Refit(node, keep[producer.ids], analysis.edits.carriers[node.outputs[0].name].axis))
        elif id(node) in depthwise:
            layers.append(Refit(node, keep[lost[id(node)].ids], 1))
        else:
            layers.append(Refit(node, None, -1))
    return layers
