"""quantize-qdq: static post-training int8 quantization, written as QuantizeLinear/DequantizeLinear (QDQ) pairs
placed where the target runtime fuses them into int8 kernels, and by default (``mode=auto``, see Modes) kept
only where it stays within a fidelity budget and runs faster than float.

What is placed where, and why, is ``graphopt.quantize.placement``; the quantization math and how the Q/DQ
nodes are written, ``graphopt.quantize.rewriting``; the faithful search of auto mode,
``graphopt.quantize.auto``.

Calibration runs ``graphopt.quantize.calibration.calibrate`` on ``ctx.data`` over the graph as the earlier
passes left it, exported with ``graphopt.fidelity.export_with_gs`` (as analyses export it). That export lacks
only what ``graphopt.fidelity`` restores from the original model when ``optimize`` writes the result: model
fields, doc strings and metadata (no effect on values), value types gs cannot hold (optional, map, opaque:
onnxruntime infers them) and node attributes gs cannot hold. Of the standard ops' attributes these are
Constant's ``sparse_value`` and Optional's ``type`` (and empty lists, which mean what an absent attribute
means for the ops that take them); a Constant left without its value makes onnxruntime refuse the model, so
calibration fails loudly rather than measure other values. Without data the pass declines, unless
``synthetic=true``: random inputs from the declared shapes (``graphopt.data.synthetic_dataset``), with a
warning that the ranges say little about real data.

Modes. ``static`` quantizes every node the placement allows, calibrated on all the data. ``dynamic`` hands the
graph to ``graphopt.quantize.dynamic`` (int8 weights, activations quantized at run time; no data; its own
placement and declines; ``target``, ``method`` and the calibration and budget options do not apply). ``auto`` (the
default, "faithful by construction") holds out ``holdout_fraction`` of the data, calibrates once on the rest
(every tensor any variant may quantize: those of the full placement, see ``place``), and lets
``graphopt.quantize.auto`` search the variants, each the static quantization of a copy of the graph with
some nodes kept in float (``keep_float``): the most sensitive nodes stay float until the held-out outputs
meet the budget (``max_accuracy_drop`` with labels, else ``min_cosine`` and ``min_top1_agreement``), and the
variant found is kept only when it runs at least ``min_speedup`` times as fast as float on the target's
provider. The graph is then quantized as that variant was (same placement), with the ranges calibrated on all
the data when that refit still meets the budget (``graphopt.quantize.auto``, "Refit"; the calibration is fed
the held-out samples after the others, so both sets of ranges cost one pass), else with the variant's own;
or, when no int8 variant is within the budget and fast enough, left as it is (``changed`` false) with a
warning. Stats ``auto.variants``, ``auto.holdout_samples`` and ``auto.refitted``; one info diagnostic per
variant tried, with its verdicts, one for the refit and one for the decision, with the latency.

Declines. The whole pass, with a warning and ``skipped.<reason>``: ``no_data``; ``opset_below_13`` (per-axis
Q/DQ needs opset 13); ``already_quantized`` (the graph holds Q/DQ nodes: running the pass twice changes
nothing); in auto mode ``over_budget`` (no int8 variant met the budget) and ``not_faster`` (the one that did
is slower than ``min_speedup`` allows). Per node, with ``skipped.<reason>`` and an info diagnostic naming the
node (only nodes that compute a float tensor are listed; the reasons are in ``REASONS``): ``sensitive`` (auto
mode kept it in float; the diagnostic gives its error), ``shallow_conv`` (auto mode found the model faster
with it in float), ``excluded_node``, ``excluded_op_type``,
``no_int8_kernel`` (``left_to_tensorrt`` for target ``tensorrt``), ``no_quantized_input``, ``not_float32``,
``float_neighbours``, ``constant_operand``, ``weight_not_constant``, ``weight_rank``,
``bias_not_constant_vector``, ``gemm_beta``, ``not_fusable`` and ``after_float_output`` (a Relu/Clip that
cannot be absorbed). Only the main graph is quantized; If/Loop/Scan bodies stay float.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import ClassVar

import onnx
import onnx_graphsurgeon as gs

from graphopt.data import Dataset, synthetic_dataset
from graphopt.fidelity import export_with_gs
from graphopt.pass_base import Diagnostic, Invariant, Option, Pass, PassContext, PassResult
from graphopt.quantize import auto
from graphopt.quantize.calibration import METHODS, Calibration
from graphopt.quantize.dynamic import quantize_dynamic
from graphopt.quantize.placement import REASONS, TARGETS, Placement, TargetRules, node_key, place, shallow_conv_reason
from graphopt.quantize.rewriting import Ranges, Rewriter, parameters, shield_float_max_pools
from graphopt.rewrite import is_standard_op

logger = logging.getLogger(__name__)

MODES = ("auto", "static", "dynamic")
_QUANTIZATION_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


# ---------------------------------------------------------------------------------------------------------
# The pass


class QuantizeQDQ(Pass):
    name = "quantize-qdq"
    summary = ("int8 quantization: calibrated Q/DQ pairs where the target fuses them into int8 kernels; by default "
               "kept only within a fidelity budget and when faster than float")
    lossy = True
    options = (
        Option("mode", str, "auto", "auto: static, with the most sensitive nodes kept float until a budget holds "
               "on held-out data, and float kept unless int8 is faster; static: every node the placement allows; "
               "dynamic: int8 weights, activations quantized at run time (no data)", choices=MODES),
        Option("method", str, "minmax", "how calibration turns observed values into a range", choices=METHODS),
        Option("percentile", float, 99.999, "method=percentile: the percentage of values the range covers "
               "(the rest saturates)", minimum=50.0, maximum=100.0),
        Option("target", str, "cpu", "cpu: onnxruntime's CPU int8 kernels (uint8 activations); tensorrt: "
               "TensorRT explicit quantization (int8, zero point 0)", choices=tuple(TARGETS)),
        Option("per_channel", bool, True, "one weight scale per output channel (else one per weight)"),
        Option("exclude_op_types", list, (), "op types left in float, e.g. [Gemm,Add]"),
        Option("exclude_nodes", list, (), "node names left in float"),
        Option("synthetic", bool, False, "without data, calibrate on random inputs (inaccurate; for trying out)"),
        Option("calibration_batch_size", int, 16, "samples per calibration run", minimum=1),
        Option("max_accuracy_drop", float, 0.5, "mode=auto, data with a label array: top-1 accuracy points the "
               "int8 model may lose on the held-out samples", minimum=0.0, maximum=100.0),
        Option("min_cosine", float, 0.99, "mode=auto, without labels: least cosine of every output with the "
               "float output", minimum=-1.0, maximum=1.0),
        Option("min_top1_agreement", float, 0.99, "mode=auto, without labels: least share of samples whose top-1 "
               "class (outputs shaped [N, classes]) is the float model's", minimum=0.0, maximum=1.0),
        Option("min_speedup", float, 1.0, "mode=auto: least float / int8 latency on the target (1: never "
               "slower; 0: any)", minimum=0.0),
        Option("latency_batch", int, 1, "mode=auto: samples per call when timing int8 against float (the batch "
               "size you deploy with; at most the held-out samples)", minimum=1),
        Option("holdout_fraction", float, 0.2, "mode=auto: share of the data held out of calibration to check "
               "the budget on (at least 8 samples, at most half)", minimum=0.01, maximum=0.5),
        Option("max_fallback_steps", int, 8, "mode=auto: steps of the search, each doubling the nodes kept in "
               "float (1, 2, 4, ...)", minimum=0),
    )
    requires = frozenset({Invariant.SHAPES_INFERRED, Invariant.TOPOLOGICALLY_SORTED})
    establishes = frozenset({Invariant.TOPOLOGICALLY_SORTED})
    preserves = frozenset({Invariant.INFERENCE_MODE})
    # How auto mode times the int8 model against float; a subclass may replace it (tests inject timings).
    measure_latency: ClassVar[auto.LatencyProbe] = staticmethod(auto.measure_latency)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        if self.values["mode"] == "dynamic":
            return self._run_dynamic(graph)
        declined = _decline(graph, ctx, self.values["synthetic"])
        if declined is not None:
            reason, message = declined
            return PassResult(False, {f"skipped.{reason}": 1}, (Diagnostic("warning", message),))
        rules = TARGETS[self.values["target"]]
        placement = self._place(graph, rules)
        unknown = self._unknown_exclusions(graph)
        if not placement.quantized:
            return _result(placement, False, {}, unknown)
        model = export_with_gs(graph)
        data, warnings = _data_or_synthetic(ctx.data, model)
        if self.values["mode"] == "static":
            ranges = self._calibration(model, placement.calibrated(), rules).feed(data).ranges()
            rewrites = self._rewrite(graph, placement, ranges, rules)
            return _result(placement, True, {"calibrated_tensors": len(ranges), **_rewrite_stats(rewrites)},
                           unknown, [*warnings, *rewrites])
        return self._run_auto(graph, model, data, rules, placement, unknown, warnings)

    def _run_auto(self, graph: gs.Graph, model: onnx.ModelProto, data: Dataset, rules: TargetRules,
                  placement: Placement, unknown: list[Diagnostic], warnings: list[Diagnostic]) -> PassResult:
        """Calibrate every tensor any variant may quantize (by ``place``'s docstring, those of ``placement``)
        on all but the held-out samples, and then on all of them; let ``graphopt.quantize.auto`` choose the
        variant (offering the shallow convolutions as layers that may run faster in float), and quantize
        ``graph`` as that variant was quantized (or leave it, when it chose float)."""
        preferred = tuple(layer for node, layer in zip(placement.quantized, _layers(placement), strict=True)
                          if shallow_conv_reason(node, rules))
        split = auto.split_holdout(data, self.values["holdout_fraction"], auto.fixes_batch(model))
        tensors = [entry.tensor for entry in placement.tensors.values()]
        ranges, all_ranges = self._split_ranges(model, tensors, split, rules)
        budget = auto.Budget(self.values["max_accuracy_drop"], self.values["min_cosine"],
                             self.values["min_top1_agreement"], self.values["min_speedup"],
                             self.values["latency_batch"])

        def builder(chosen: Ranges) -> Callable[[tuple[str, ...]], auto.Variant]:
            return lambda fallback: self._variant(graph, rules, chosen, fallback)

        outcome = auto.choose_variant(builder(ranges), model, split, budget, self.values["max_fallback_steps"],
                                      rules.provider, self.measure_latency,
                                      refit=None if all_ranges is None else builder(all_ranges), preferred=preferred)
        diagnostics = [*warnings, *outcome.diagnostics(budget)]
        if outcome.variant is None:
            return PassResult(False, outcome.stats(), [*unknown, *diagnostics])
        sensitive = outcome.sensitivities()
        final = self._place(graph, rules, tuple(sensitive),
                            tuple(key for key in outcome.variant.fallback if key not in sensitive))
        rewrites = self._rewrite(graph, final, all_ranges if outcome.refitted else ranges, rules)
        return _result(final, True, {"calibrated_tensors": len(ranges), **outcome.stats(), **_rewrite_stats(rewrites)},
                       [*unknown, *rewrites], diagnostics, outcome.sensitivities())

    def _split_ranges(self, model: onnx.ModelProto, tensors: list[gs.Variable], split: auto.Split,
                      rules: TargetRules) -> tuple[Ranges, Ranges | None]:
        """The ranges on the calibration samples and, when samples were held out, on all of them (the
        calibration, and its onnxruntime session exposing every activation, end here)."""
        calibration = self._calibration(model, tensors, rules).feed(split.calibration)
        ranges = calibration.ranges()
        return ranges, calibration.feed(split.holdout).ranges() if split.separate else None

    def _run_dynamic(self, graph: gs.Graph) -> PassResult:
        """``graphopt.quantize.dynamic.quantize_dynamic``, which declines by itself what it cannot quantize."""
        unknown = self._unknown_exclusions(graph)
        result = quantize_dynamic(graph, exclude_op_types=self.values["exclude_op_types"],
                                  exclude_nodes=self.values["exclude_nodes"], per_channel=self.values["per_channel"])
        return PassResult(result.changed, result.stats, [*unknown, *result.diagnostics])

    def _variant(self, graph: gs.Graph, rules: TargetRules, ranges: Ranges,
                 fallback: tuple[str, ...]) -> auto.Variant:
        """The quantization of a copy of ``graph`` (sharing its weights) with the nodes ``fallback`` in float."""
        copy = graph.copy()
        placement = self._place(copy, rules, fallback)
        layers = _layers(placement)
        self._rewrite(copy, placement, ranges, rules)
        return auto.Variant(fallback, export_with_gs(copy), layers)

    def _place(self, graph: gs.Graph, rules: TargetRules, keep_float: tuple[str, ...] = (),
               faster_in_float: tuple[str, ...] = ()) -> Placement:
        return place(graph, rules, self.values["exclude_op_types"], self.values["exclude_nodes"], keep_float,
                     faster_in_float)

    def _calibration(self, model: onnx.ModelProto, tensors: list[gs.Variable], rules: TargetRules) -> Calibration:
        """The calibration of ``tensors`` by this pass's method, to be fed data (``model`` is the graph
        exported)."""
        names = [tensor.name for tensor in tensors]
        logger.debug("calibrating %d tensors by %s", len(names), self.values["method"])
        return Calibration(model, names, self.values["method"], batch_size=self.values["calibration_batch_size"],
                           percentile=self.values["percentile"], symmetric=rules.signed)

    def _rewrite(self, graph: gs.Graph, placement: Placement, ranges: Ranges,
                 rules: TargetRules) -> list[Diagnostic]:
        """Write the Q/DQ nodes and quantized constants of ``placement`` into ``graph``; one diagnostic per
        Conv rewritten to read its input through SpaceToDepth."""
        params = parameters(placement, ranges, rules.signed)
        rewriter = Rewriter(graph, rules, self.values["per_channel"])
        if rules.shield_float_max_pool:
            shield_float_max_pools(graph, placement, rewriter.names)
        rewrites = rewriter.space_to_depth_stems(placement, params) if rules.space_to_depth_stems else []
        for node in placement.quantized:
            if node.op in rules.weighted:
                rewriter.weighted(node, params[id(node.inputs[0])])
        for key, entry in placement.tensors.items():
            rewriter.activation(entry, params[key])
        graph.nodes.extend(rewriter.nodes)
        graph.toposort(recurse_functions=False, mode="nodes")
        return rewrites

    def _unknown_exclusions(self, graph: gs.Graph) -> list[Diagnostic]:
        names = {node.name for node in graph.nodes}
        return [Diagnostic("warning", f"exclude_nodes names no node of the main graph: {name!r}")
                for name in self.values["exclude_nodes"] if name not in names]


def _rewrite_stats(rewrites: Sequence[Diagnostic]) -> dict[str, int]:
    return {"rewrites.space_to_depth": len(rewrites)} if rewrites else {}


def _result(placement: Placement, changed: bool, extra_stats: dict[str, int], before: Sequence[Diagnostic],
            after: Sequence[Diagnostic] = (), sensitivities: dict[str, auto.Sensitivity] | None = None) -> PassResult:
    """Stats (``quantized.<op>``, ``skipped.<reason>`` and ``extra_stats``) and diagnostics (``before``, one
    per node left in float, ``after``) of a run that placed ``placement``."""
    stats = collections.Counter(f"quantized.{node.op}" for node in placement.quantized)
    stats.update(f"skipped.{reason}" for _, reason in placement.skipped)
    stats.update(extra_stats)
    skipped = [_skipped_diagnostic(node, reason, sensitivities or {}) for node, reason in placement.skipped]
    return PassResult(changed, stats, [*before, *skipped, *after])


def _data_or_synthetic(data: Dataset | None, model: onnx.ModelProto) -> tuple[Dataset, list[Diagnostic]]:
    """``data``, or random inputs for ``model`` with a warning (the pass declined already unless
    ``synthetic=true``)."""
    if data is not None:
        return data, []
    return synthetic_dataset(model), [Diagnostic("warning", "calibrated on random inputs (synthetic=true): the "
                                                            "ranges, and so the accuracy, say little about real data")]


def _layers(placement: Placement) -> tuple[auto.Layer, ...]:
    """The int8 nodes of ``placement`` as auto mode scores them: the tensors they read through Q/DQ and their
    outputs after an absorbed Relu/Clip, named as before rewriting (the DequantizeLinear takes the name over,
    so in the quantized model that name holds what the int8 node computes)."""
    read: dict[int, list[str]] = collections.defaultdict(list)
    for entry in placement.tensors.values():
        for reader in entry.readers:
            read[id(reader)].append(entry.tensor.name)
    return tuple(auto.Layer(node_key(node), node.name or node_key(node), node.op, tuple(read[id(node)]),
                            tuple(placement.final(output).name for output in node.outputs if output.name))
                 for node in placement.quantized)


def _decline(graph: gs.Graph, ctx: PassContext, synthetic: bool) -> tuple[str, str] | None:
    """(reason, message) when the pass leaves the whole graph as it is."""
    if any(is_standard_op(node, *_QUANTIZATION_OPS) for node in graph.nodes):
        return "already_quantized", "quantize-qdq: the graph already holds quantization nodes; left as it is"
    if (graph.opset or 0) < 13:
        return "opset_below_13", (f"quantize-qdq: the model's opset is {graph.opset}; per-channel QDQ needs "
                                   "opset 13 or later (convert the model first)")
    if ctx.data is None and not synthetic:
        return "no_data", ("quantize-qdq needs calibration data: pass --data (or data=...), or set "
                           "synthetic=true to calibrate on random inputs")
    return None


def _skipped_diagnostic(node: gs.Node, reason: str, sensitivities: dict[str, auto.Sensitivity]) -> Diagnostic:
    """Why ``node`` stays float; for a node auto mode kept in float, with its sensitivity."""
    detail = f": {sensitivities[node_key(node)]}" if reason == "sensitive" else ""
    return Diagnostic("info", f"{node.op} left in float ({reason}): {REASONS[reason]}{detail}",
                      node=node.name or node_key(node))
