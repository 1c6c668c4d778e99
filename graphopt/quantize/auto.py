"""quantize-qdq's auto mode, "faithful by construction": which nodes to keep in float so that the int8 model
stays within a fidelity budget, and whether the int8 model is worth writing at all.

The pass gives this module a way to build a variant, ``build(fallback) -> Variant`` (its static quantization
with the nodes named in ``fallback`` kept in float, exported as a model), and the float model; this module
measures, searches and decides (``choose_variant``). Everything is measured on samples held out from
calibration (``split_holdout``): the ranges are calibrated on the rest.

Budget (``budget_verdicts``): each variant runs on the held-out samples on the CPU, in a session made as
deployed (``graphopt.validate.providers.open_session``: onnxruntime's optimizations on, so the int8 kernels
run; one thread), and its outputs are compared with the float model's (computed once) by the measures
``graphopt validate`` and ``gate`` use (``numerics.compare_outputs``, ``validation``'s accuracy):

- with labels (a ``label`` array among the data's extras) and an output of class scores ([N, C], C > 1): the
  top-1 accuracy drop, in percentage points, is at most ``max_accuracy_drop``;
- otherwise: the cosine of every output with the float one is at least ``min_cosine``, and the top-1
  agreement of every class-score output is at least ``min_top1_agreement`` -- judged only when the held-out
  samples can resolve it (``n * (1 - min_top1_agreement) >= 1``: with 8 samples and 0.99, one near-tied
  flip would read as 12.5% disagreement and keep sound layers in float; cosine decides then).

(``validate`` itself is not called: it would run the float model again for every variant, and it batches
by the first fixed input dimension, which fails on data without one sample axis, e.g. inputs [1] and [2, 1].)

Sensitivity (``rank_layers``): the float model and the variant run once on a few held-out samples with the
int8 layers' tensors exposed (``numerics.with_outputs``; optimizations off, so every tensor keeps its name).
The error of a tensor is its relative error ``e = ||t_int8 - t_float|| / ||t_float||`` over the flattened
batch (``relative_error``). An int8 layer (a quantized node, with the Relu/Clip absorbed after it) is scored
by the error it adds, ``e(outputs) - e(inputs)``: the largest error among its outputs minus the largest
among its quantized data inputs (a graph input has none). The Q/DQ pair on an int8 node's output belongs to
that node, one on a tensor no int8 node writes (a graph input, a float node's output) to its int8 readers,
so each rounding is charged to the layers it enters. One run scores every layer; keeping the top one in
float and scoring again is what ``search`` does. (``per_layer.compare_layers`` would give the same tensors'
cosines, but it exposes every tensor and computes allclose and max errors in float64 for each: three
quarters of its time on ResNet-50, 15 s for 4 samples.) A limitation: error that a float node amplifies
(a float layer with large weights on a channel an int8 layer before it rounded) shows in no int8 layer's
score.

Search (``search``): variant 0 quantizes everything the placement allows. While a variant is over budget,
its int8 layers are ranked and the most sensitive join the ordered fallback list until it holds ``2**step``
nodes (1, 2, 4, 8, ...), ranked anew at each step, since a node kept in float moves the errors after it.
Once a variant meets the budget after one that did not, the shortest prefix of the fallback list that meets
it is found by bisection between the two sizes (assuming that more float nodes do not cost fidelity). At
most ``max_steps`` steps, so at most ``2 * max_steps + 1`` variants are built and judged. A variant left
without int8 nodes is the float model: it ends the search, unjudged.

Decision (``choose_variant``): the variant found is timed against the float model (``measure_latency``:
sessions with all of onnxruntime's optimizations, one thread, on the target's provider; a batch of
``latency_batch`` held-out samples, or as many as were held out (all the data when nothing was held out): a
small net can be slower in int8 at batch 1 and faster at batch 64, so the decision is made at the batch size
the model is deployed with; warm-up, then rounds in which the two alternate,
``graphopt.validate.latency.measure_interleaved``, at most ``LATENCY_ROUNDS`` rounds and about
``LATENCY_BUDGET_SECONDS``). It is kept when its speedup (median over rounds of float / int8 time) is at
least ``min_speedup``; otherwise, and when no variant met the budget, the float model is kept. Only the
variant with the fewest float nodes is timed: the others keep more in float, so none is expected to be
faster, and one comparison bounds the time the pass spends timing. The exception is the layers the pass
names as ``preferred``, those the target may run faster in float (the pass's shallow convolutions): when
the variant found runs some of them in int8, the same variant with them in float too is judged, and if
within the budget timed against float as well. The faster of the two is kept when it is at least
``ALTERNATIVE_MARGIN`` times as fast as the other; closer than that (within this machine's noise), the one
whose outputs are closer to float's on the held-out samples (``output_error``) is. When the target's
provider cannot run on this machine (TensorRT without a GPU), the latency is not measured and the variant
found is kept on fidelity alone, with a warning.

Refit (``choose_variant``'s ``refit``): the variant kept was calibrated without the held-out samples, which
judged it. The pass can build the same variant (the same nodes in float) from ranges calibrated on all the
data; that refit is judged on the held-out samples once more and written instead when it too meets the
budget, else the variant as judged is written. More samples make better ranges (on the small ResNet of
``models/``, calibrating on the held-out fifth too turned a 0.56-point test accuracy drop into 0.28); the
refit's own judgement is on samples it was calibrated on, so what vouches for it is the first judgement,
of the same placement on samples it had not seen, and the refit's check only guards against a refit that
breaks the budget outright. Its latency is not measured again: the two differ only in scales and zero
points.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import onnx

from graphopt.data import Dataset, model_inputs
from graphopt.errors import UsageError
from graphopt.pass_base import Diagnostic
from graphopt.validate.gate import Verdict
from graphopt.validate.latency import measure_interleaved
from graphopt.validate.numerics import compare_outputs, run_model, with_outputs
from graphopt.validate.providers import ProviderUnavailable, open_session
from graphopt.validate.validation import Latency, top1_accuracy

MIN_HOLDOUT = 8  # samples held out at least (when the data has twice as many)
SENSITIVITY_SAMPLES = 4  # samples the per-layer errors are measured on (every intermediate tensor is held)
JUDGE_BATCH = 32  # held-out samples per run when judging the budget
LATENCY_ROUNDS = 15
LATENCY_WARMUP_ROUNDS = 2
LATENCY_BUDGET_SECONDS = 2.0
ALTERNATIVE_MARGIN = 1.05  # speed ratio under which two variants count as equally fast
LABELS = "label"


@dataclasses.dataclass(frozen=True)
class Budget:
    """What an int8 variant must keep (see the module docstring); ``max_accuracy_drop`` in points."""

    max_accuracy_drop: float
    min_cosine: float
    min_top1_agreement: float
    min_speedup: float
    latency_batch: int = 1  # held-out samples per call when timing: the batch the model is deployed with


@dataclasses.dataclass(frozen=True)
class Layer:
    """An int8 node of a variant. ``key``: the name of its first output (unique in the graph), what ``build``
    takes; ``label``: its name, else ``key``; ``inputs``: its quantized data inputs; ``outputs``: its outputs,
    after the Relu/Clip absorbed into it."""

    key: str
    label: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """A layer's relative errors against float: the largest of its inputs' and of its outputs'."""

    layer: Layer
    input_error: float
    output_error: float

    @property
    def added_error(self) -> float:
        return self.output_error - self.input_error

    def __str__(self) -> str:
        return (f"on held-out samples its output's relative error was {self.output_error:.3g} against "
                f"{self.input_error:.3g} at its inputs")


class Variant(NamedTuple):
    """The static quantization with the nodes ``fallback`` (keys, in the order they fell back) kept in float:
    the exported ``model`` and its int8 ``layers``."""

    fallback: tuple[str, ...]
    model: onnx.ModelProto
    layers: tuple[Layer, ...]


@dataclasses.dataclass(frozen=True)
class Trial:
    """One variant judged: its fallback keys, how many int8 layers it has, and the budget's verdicts."""

    fallback: tuple[str, ...]
    int8_layers: int
    verdicts: tuple[Verdict, ...]

    @property
    def within_budget(self) -> bool:
        return all(verdict.passed for verdict in self.verdicts)


@dataclasses.dataclass(frozen=True)
class Search:
    """What ``search`` found: the variant that meets the budget with the fewest float nodes (None: none did),
    every trial in order, and the fallback list with each node's sensitivity when it joined it."""

    variant: Variant | None
    trials: tuple[Trial, ...]
    order: tuple[Sensitivity, ...]


class Split(NamedTuple):
    """Calibration and held-out samples. ``separate`` is False when nothing could be held out: both are then
    all the data, which runs as one feed."""

    calibration: Dataset
    holdout: Dataset
    separate: bool

    def feeds(self, samples: int) -> dict[str, np.ndarray]:
        """The first ``samples`` held-out samples (all the data when nothing was held out)."""
        return next(self.batches(samples))

    def batches(self, samples: int) -> Iterator[dict[str, np.ndarray]]:
        """All held-out samples, ``samples`` at a time (all the data at once when nothing was held out)."""
        if self.separate:
            yield from self.holdout.batches(samples)
        else:
            yield self.holdout.arrays


# ---------------------------------------------------------------------------------------------------------
# Data


def fixes_batch(model: onnx.ModelProto) -> bool:
    """Whether an input of ``model`` has a fixed first dimension: its data (``Dataset.check_against``) is then
    exactly one batch, which cannot be split."""
    return any(shape and isinstance(shape[0], int) and shape[0] > 0 for _, shape in model_inputs(model).values())


def split_holdout(data: Dataset, fraction: float, fixed_batch: bool = False, seed: int = 0) -> Split:
    """Hold out ``ceil(fraction * n)`` of the ``n`` samples, but at least ``MIN_HOLDOUT`` and at most half,
    chosen by a permutation seeded with ``seed``; the others calibrate. Samples keep their order; extras with
    one row per sample (labels) are split with them. Nothing is held out (``separate`` False) from fewer than
    two samples, data of a ``fixed_batch``, or arrays that do not share one sample axis (first dimensions
    that differ)."""
    samples = len(data)
    if samples < 2 or fixed_batch or any(array.ndim and len(array) != samples for array in data.arrays.values()):
        return Split(data, data, False)
    held = min(samples // 2, max(math.ceil(fraction * samples), MIN_HOLDOUT))
    order = np.random.default_rng(seed).permutation(samples)
    return Split(_rows(data, order[held:]), _rows(data, order[:held]), True)


def _rows(data: Dataset, rows: np.ndarray) -> Dataset:
    rows, samples = np.sort(rows), len(data)
    return Dataset({name: array[rows] if array.ndim else array for name, array in data.arrays.items()},
                   {name: array[rows] for name, array in data.extras.items() if array.ndim and len(array) == samples},
                   data.synthetic)


# ---------------------------------------------------------------------------------------------------------
# Measuring: budget, sensitivity, latency


def run_deployed(model: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output of ``model`` over ``feeds``, concatenated on the first axis (the last run's value for a
    scalar), in a CPU session made as deployed."""
    session = open_session(model, "cpu")
    names = [output.name for output in session.get_outputs()]
    runs = [session.run(names, dict(feed)) for feed in feeds]
    return {name: np.concatenate([run[index] for run in runs]) if runs[0][index].ndim else runs[-1][index]
            for index, name in enumerate(names)}


def accuracy_labels(reference_outputs: Mapping[str, np.ndarray], holdout: Dataset) -> np.ndarray | None:
    """The held-out labels when the float outputs include class scores to measure accuracy on (the output
    ``validate`` would take), else None: the budget is then judged by fidelity."""
    labels = holdout.extras.get(LABELS)
    if labels is None:
        return None
    try:
        top1_accuracy(reference_outputs, reference_outputs, labels)
    except UsageError:
        return None
    return labels


def budget_verdicts(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                    labels: np.ndarray | None, budget: Budget) -> list[Verdict]:
    """The budget's verdicts on ``candidate``'s outputs against ``reference``'s: the accuracy drop with
    ``labels``, else the least cosine over all outputs and the least top-1 agreement over class-score ones."""
    if labels is not None:
        accuracy = top1_accuracy(reference, candidate, labels)
        return [Verdict("max_accuracy_drop", "cpu", accuracy.drop_points, budget.max_accuracy_drop,
                        accuracy.drop_points <= budget.max_accuracy_drop,
                        f"{accuracy.reference:.2%} -> {accuracy.candidate:.2%} on '{accuracy.output}'")]
    comparisons = compare_outputs(reference, candidate, rtol=0.0, atol=0.0)
    worst = min(comparisons, key=lambda comparison: comparison.cosine)
    verdicts = [Verdict("min_cosine", "cpu", worst.cosine, budget.min_cosine, worst.cosine >= budget.min_cosine,
                        f"worst output '{worst.name}'")]
    scored = [comparison for comparison in comparisons if comparison.top1_agreement is not None]
    if scored:
        worst = min(scored, key=lambda comparison: comparison.top1_agreement)
        samples = len(reference[worst.name])
        resolvable = samples * (1 - budget.min_top1_agreement) >= 1
        verdicts.append(Verdict("min_top1_agreement", "cpu", worst.top1_agreement, budget.min_top1_agreement,
                                not resolvable or worst.top1_agreement >= budget.min_top1_agreement,
                                f"worst output '{worst.name}'" if resolvable else
                                f"not judged: one changed prediction among {samples} held-out samples is more "
                                f"than 1 - {budget.min_top1_agreement}; cosine decides"))
    return verdicts


def layer_errors(reference: onnx.ModelProto, candidate: onnx.ModelProto, layers: Sequence[Layer],
                 feeds: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``relative_error`` of each input and output of ``layers`` that is no graph input (those are the
    same in both models), by tensor name, on ``feeds``."""
    inputs = {value.name for value in reference.graph.input}
    names = [name for layer in layers for name in (*layer.inputs, *layer.outputs) if name not in inputs]
    expected = run_model(with_outputs(reference, names), feeds)
    actual = run_model(with_outputs(candidate, names), feeds)
    return {name: relative_error(expected[name], actual[name]) for name in names}


def output_error(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> float:
    """The largest ``relative_error`` of ``candidate``'s outputs against ``reference``'s."""
    return max(relative_error(expected, candidate[name]) for name, expected in reference.items())


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """``||candidate - reference|| / (||reference|| + 1e-12)`` over the flattened tensors, in float64 (the
    1e-12 keeps a reference of zeros finite)."""
    reference, candidate = reference.astype(np.float64).ravel(), candidate.astype(np.float64).ravel()
    return float(np.linalg.norm(candidate - reference) / (np.linalg.norm(reference) + 1e-12))


def rank_layers(layers: Sequence[Layer], errors: Mapping[str, float]) -> list[Sensitivity]:
    """The layers by the error they add, ``e(outputs) - e(inputs)``, largest first (graph order among equals);
    a tensor without an error (a graph input) counts 0."""
    def worst(names: tuple[str, ...]) -> float:
        return max((errors.get(name, 0.0) for name in names), default=0.0)

    scored = [Sensitivity(layer, worst(layer.inputs), worst(layer.outputs)) for layer in layers]
    return sorted(scored, key=lambda sensitivity: -sensitivity.added_error)


def measure_latency(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                    provider: str) -> Latency:
    """Both models timed on ``feeds`` in interleaved rounds (see the module docstring); ``speedup`` is the
    median over rounds of reference / candidate time. Raises ``ProviderUnavailable``."""
    sessions = {"reference": open_session(reference, provider), "candidate": open_session(candidate, provider)}
    feeds = dict(feeds)
    run = measure_interleaved({role: (lambda session=session: session.run(None, feeds))
                               for role, session in sessions.items()},
                              rounds=LATENCY_ROUNDS, warmup_rounds=LATENCY_WARMUP_ROUNDS,
                              budget_seconds=LATENCY_BUDGET_SECONDS)
    return Latency(run.timings["reference"], run.timings["candidate"], run.paired_ratio("reference", "candidate"),
                   {})


# ---------------------------------------------------------------------------------------------------------
# Search and decision


def fallback_size(step: int) -> int:
    """How many nodes the fallback list holds after growth step ``step`` (0-based): 1, 2, 4, 8, ..."""
    return 2**step


def search(build: Callable[[tuple[str, ...]], Variant], judge_variant: Callable[[Variant], Sequence[Verdict]],
           rank: Callable[[Variant], list[Sensitivity]], max_steps: int) -> Search:
    """The greedy search of the module docstring: ``build`` makes a variant from fallback keys,
    ``judge_variant`` gives its verdicts, ``rank`` its int8 layers, most sensitive first."""
    order: list[Sensitivity] = []
    trials: list[Trial] = []

    def attempt(size: int) -> tuple[Variant, bool]:
        """Build and judge a variant; one without int8 layers is the float model: not judged, not passed
        (and, having no layers, it ranks none: the search ends)."""
        variant = build(tuple(sensitivity.layer.key for sensitivity in order[:size]))
        if not variant.layers:
            return variant, False
        trials.append(Trial(variant.fallback, len(variant.layers), tuple(judge_variant(variant))))
        return variant, trials[-1].within_budget

    variant, passed = attempt(0)
    failed = 0  # the size of the largest fallback prefix known to miss the budget
    for step in range(max_steps):
        ranking = [] if passed else rank(variant)
        if not ranking:
            break
        failed = len(order)
        order.extend(ranking[:fallback_size(step) - len(order)])
        variant, passed = attempt(len(order))
    if not passed:
        return Search(None, tuple(trials), tuple(order))
    while len(variant.fallback) - failed > 1:
        shorter, shorter_passed = attempt((failed + len(variant.fallback)) // 2)
        if shorter_passed:
            variant = shorter
        else:
            failed = len(shorter.fallback)
    return Search(variant, tuple(trials), tuple(order))


LatencyProbe = Callable[[onnx.ModelProto, onnx.ModelProto, Mapping[str, np.ndarray], str], Latency]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What auto mode decided: the variant to write (None: keep the float model, for ``reason``
    ``over_budget`` or ``not_faster``), the search, the latency of the variant found against float (None
    when not measured: ``latency_problem`` says why), the number of held-out samples, and whether the
    budget was judged by accuracy."""

    variant: Variant | None
    reason: str | None
    search: Search
    latency: Latency | None
    latency_problem: str | None
    holdout_samples: int
    separate: bool
    accuracy: bool
    refit: Trial | None = None  # the judgement of the variant calibrated on all the data (None: not built)
    preferred: tuple[Layer, ...] = ()  # the layers the target may run faster in float
    alternative: Trial | None = None  # the variant found with the preferred layers in float too (None: none)
    other_latency: Latency | None = None  # of the variant not chosen of the two, when both were timed
    tie_errors: tuple[float, float] | None = None  # output errors (chosen, other) when their speeds tied

    @property
    def refitted(self) -> bool:
        """Whether ``variant`` is the refit (calibrated on all the data, held-out samples included)."""
        return self.refit is not None and self.refit.within_budget

    def stats(self) -> dict[str, int]:
        stats = {"auto.variants": len(self.search.trials), "auto.holdout_samples": self.holdout_samples}
        if self.refit is not None:
            stats["auto.refitted"] = int(self.refitted)
        if self.reason is not None:
            stats[f"skipped.{self.reason}"] = 1
        return stats

    def sensitivities(self) -> dict[str, Sensitivity]:
        """Each node of the chosen variant's fallback, by key: its sensitivity when it fell back."""
        keys = set(self.variant.fallback) if self.variant is not None else set()
        return {s.layer.key: s for s in self.search.order if s.layer.key in keys}

    def diagnostics(self, budget: Budget) -> list[Diagnostic]:
        """One info line per trial, a warning when the budget was checked on few or no held-out samples or
        the latency could not be measured, and the decision (info when int8 is kept, else a warning)."""
        labels = {layer.key: layer.label for layer in self.preferred} | {s.layer.key: s.layer.label
                                                                           for s in self.search.order}
        lines = [Diagnostic("info", f"quantize-qdq (mode=auto) {_trial_text(index, trial, labels)}")
                 for index, trial in enumerate(self.search.trials)]
        if self.alternative is not None:
            lines.append(Diagnostic("info", f"quantize-qdq (mode=auto) the same variant with the layers the target "
                                            f"may run faster in float kept in float too "
                                            f"({_names(self.alternative.fallback, labels)}): "
                                            f"{_trial_status(self.alternative)}"))
        if self.refit is not None:
            written = ("it is written" if self.refitted else
                       "the variant calibrated without the held-out samples is written")
            lines.append(Diagnostic("info", f"quantize-qdq (mode=auto) the same variant calibrated on all the data "
                                            f"(held-out samples included): {_trial_status(self.refit)}; {written}"))
        if not self.separate:
            lines.append(Diagnostic("warning", "quantize-qdq (mode=auto): no sample could be held out (too few, "
                                               "one fixed batch, or inputs without a common sample axis): the "
                                               "budget was checked on the calibration data, a weak check"))
        elif self.holdout_samples < MIN_HOLDOUT:
            lines.append(Diagnostic("warning", f"quantize-qdq (mode=auto): the budget was checked on "
                                               f"{self.holdout_samples} held-out samples only, a weak check"))
        if self.latency_problem is not None:
            lines.append(Diagnostic("warning", f"quantize-qdq (mode=auto): latency not measured, int8 kept on "
                                               f"fidelity alone: {self.latency_problem}"))
        lines.append(Diagnostic("info" if self.variant is not None else "warning", self._summary(budget)))
        return lines

    def _summary(self, budget: Budget) -> str:
        criterion = "accuracy" if self.accuracy else "output fidelity"
        judged = f"judged by {criterion} on {self.holdout_samples} samples"
        if self.reason == "over_budget":
            return (f"quantize-qdq (mode=auto) kept the float model: no int8 variant of "
                    f"{len(self.search.trials)} stayed within the budget ({judged})")
        speed = _latency_text(self.latency) if self.latency is not None else "latency not measured"
        if self.other_latency is not None:
            speed += f" (the other variant within the budget: {_latency_text(self.other_latency)})"
        if self.tie_errors is not None:
            speed += (f"; as fast within {ALTERNATIVE_MARGIN - 1:.0%}, the one closer to float was kept (output "
                      f"relative error {self.tie_errors[0]:.3g} against {self.tie_errors[1]:.3g})")
        if self.reason == "not_faster":
            return (f"quantize-qdq (mode=auto) kept the float model: no int8 model within the budget is faster: "
                    f"{speed}, below min_speedup {budget.min_speedup:g}")
        return (f"quantize-qdq (mode=auto): int8 with {len(self.variant.fallback)} node(s) kept in float, within "
                f"the budget ({judged}), {speed}")


def _names(keys: Sequence[str], labels: Mapping[str, str]) -> str:
    return ", ".join(labels[key] for key in keys)


def _trial_text(index: int, trial: Trial, labels: Mapping[str, str]) -> str:
    names = f": {_names(trial.fallback, labels)}" if trial.fallback else ""
    return (f"variant {index} ({trial.int8_layers} int8 layers, {len(trial.fallback)} kept in float{names}): "
            f"{_trial_status(trial)}")


def _trial_status(trial: Trial) -> str:
    status = "within budget" if trial.within_budget else "over budget"
    return f"{status}: {'; '.join(map(_verdict_text, trial.verdicts))}"


def _verdict_text(verdict: Verdict) -> str:
    value = "not measured" if verdict.value is None else f"{verdict.value:.6g}"
    return f"{verdict.check} {value} ({'ok' if verdict.passed else 'FAIL'}, limit {verdict.limit:g})"


def _latency_text(latency: Latency) -> str:
    return (f"{latency.reference.median * 1e3:.3f} ms float -> {latency.candidate.median * 1e3:.3f} ms int8 "
            f"({latency.speedup:.2f}x)")


def choose_variant(build: Callable[[tuple[str, ...]], Variant], reference: onnx.ModelProto, split: Split,
                   budget: Budget, max_steps: int, provider: str,
                   latency: LatencyProbe = measure_latency,
                   refit: Callable[[tuple[str, ...]], Variant] | None = None,
                   preferred: Sequence[Layer] = ()) -> Outcome:
    """Search for the variant within ``budget`` with the fewest float nodes and, when it runs some of
    ``preferred`` in int8, also try it with those in float (kept instead if within the budget and faster, or
    as fast and closer to float); keep the variant if it is at least ``min_speedup`` times as fast as
    ``reference`` on ``provider`` (measured by ``latency``);
    then, given ``refit`` (``build`` from ranges calibrated on all the data), the refit of the variant kept
    replaces it if it meets the budget too. See the module docstring."""
    reference_outputs = run_deployed(reference, split.batches(JUDGE_BATCH))
    labels = accuracy_labels(reference_outputs, split.holdout)
    sensitivity_feeds = split.feeds(SENSITIVITY_SAMPLES)

    def judge(variant: Variant) -> list[Verdict]:
        return budget_verdicts(reference_outputs, run_deployed(variant.model, split.batches(JUDGE_BATCH)), labels,
                               budget)

    def error(variant: Variant) -> float:
        return output_error(reference_outputs, run_deployed(variant.model, split.batches(JUDGE_BATCH)))

    def rank(variant: Variant) -> list[Sensitivity]:
        return rank_layers(variant.layers, layer_errors(reference, variant.model, variant.layers, sensitivity_feeds))

    found = search(build, judge, rank, max_steps)
    outcome = Outcome(found.variant, None, found, None, None, len(split.holdout), split.separate, labels is not None,
                      preferred=tuple(preferred))
    if found.variant is None:
        return dataclasses.replace(outcome, reason="over_budget")
    candidates = [found.variant]
    extra = tuple(layer.key for layer in preferred if layer.key not in found.variant.fallback)
    variant = build(found.variant.fallback + extra) if extra else None
    if variant is not None and variant.layers:
        alternative = Trial(variant.fallback, len(variant.layers), tuple(judge(variant)))
        outcome = dataclasses.replace(outcome, alternative=alternative)
        if alternative.within_budget:
            candidates.append(variant)
    feeds = split.feeds(budget.latency_batch)
    try:
        timed = [(latency(reference, variant.model, feeds, provider), variant) for variant in candidates]
    except ProviderUnavailable as unavailable:
        return _refitted(dataclasses.replace(outcome, latency_problem=str(unavailable)), refit, judge)
    tie_errors = None
    if len(timed) > 1:
        timed, tie_errors = _faster_or_closer(timed, error)
    (measured, variant), *others = timed
    outcome = dataclasses.replace(outcome, variant=variant, latency=measured,
                                  other_latency=others[0][0] if others else None, tie_errors=tie_errors)
    if measured.speedup >= budget.min_speedup:
        return _refitted(outcome, refit, judge)
    return dataclasses.replace(outcome, variant=None, reason="not_faster")


def _faster_or_closer(timed: list[tuple[Latency, Variant]], error: Callable[[Variant], float]
                      ) -> tuple[list[tuple[Latency, Variant]], tuple[float, float] | None]:
    """The two timed variants, the one to keep first (see the module docstring), and their output errors
    (in the same order) when their speeds were within ``ALTERNATIVE_MARGIN`` of each other."""
    (first, _), (second, _) = timed
    if second.speedup >= ALTERNATIVE_MARGIN * first.speedup:
        return timed[::-1], None
    if first.speedup >= ALTERNATIVE_MARGIN * second.speedup:
        return timed, None
    errors = [error(variant) for _, variant in timed]
    return (timed[::-1], (errors[1], errors[0])) if errors[1] < errors[0] else (timed, (errors[0], errors[1]))


def _refitted(outcome: Outcome, refit: Callable[[tuple[str, ...]], Variant] | None,
              judge: Callable[[Variant], Sequence[Verdict]]) -> Outcome:
    """``outcome`` with the refit of its variant judged, and kept in its place when within the budget."""
    if refit is None:
        return outcome
    variant = refit(outcome.variant.fallback)
    trial = Trial(variant.fallback, len(variant.layers), tuple(judge(variant)))
    return dataclasses.replace(outcome, variant=variant if trial.within_budget else outcome.variant, refit=trial)
