"""``validate(reference, candidate, ...)``: does the candidate compute what the reference does, and faster?

Per execution provider (``providers.py``), both models run in sessions made the same way
(``SessionSettings``: onnxruntime's optimizations on by default, as deployed; one intra-op thread by default,
so timings are reproducible on shared machines):

- **outputs** on every sample (in batches; the first ``max_samples`` when given; outputs of all samples are
  held, so bound it for models with large outputs): max abs / rel error, cosine similarity,
  top-1 agreement for class-score outputs (``numerics.compare_outputs``); agreement means numpy's
  ``allclose`` rule with ``rtol``/``atol``;
- **accuracy** when the data holds labels (``labels`` names the array): top-1 accuracy of the first output
  shaped ``[N, classes]`` for both models, and the drop in percentage points;
- **session creation** (median of ``session_rounds``, reference and candidate alternating) and **latency**
  on one batch of ``batch_size`` samples: warm-up, then ``rounds`` rounds in which both models run in an
  order that alternates (``latency.measure_interleaved``), so machine drift cancels out of the speedup,
  which is the median over rounds of reference time / candidate time; medians and p90s are kept;
- **placement**: which nodes ran on which provider after onnxruntime's own fusions, and how many Q/DQ nodes
  became int8 kernels (``placement.py``).

Once, on the CPU: ``per_layer`` compares every intermediate tensor the two models share by name and names
the first node whose output diverges (``per_layer.py``); when ``tensorrt`` is among the providers (installed
or not), a candidate with Q/DQ nodes is linted against TensorRT's explicit-quantization rules
(``tensorrt_lint.py``). A provider this machine cannot run is
reported as skipped, with the reason; with ``require_providers`` that is an error (``ValidationFailure``).
Without data, inputs are generated from the declared shapes (``shapes`` fixes the symbolic ones) and the
report says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import onnx

from graphopt import model as model_io
from graphopt.data import Dataset, DataSource, load_data, model_inputs, synthetic_dataset
from graphopt.errors import DataError, UsageError, ValidationFailure
from graphopt.inspection import describe
from graphopt.validate.latency import Timing, measure_interleaved, time_interleaved_once
from graphopt.validate.numerics import OutputComparison, compare_outputs
from graphopt.validate.per_layer import PerLayerResult, compare_layers
from graphopt.validate.placement import Placement, node_placement
from graphopt.validate.providers import (
    DEFAULT_SETTINGS,
    OPTIMIZATION_LEVELS,
    ProviderUnavailable,
    SessionSettings,
    open_session,
    parse_providers,
    provider_chain,
)
from graphopt.validate.tensorrt_lint import LintFinding, lint_tensorrt

SYNTHETIC_SAMPLES = 8


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    path: str | None
    nodes: int
    bytes: int
    parameters: int
    macs: int

    @staticmethod
    def of(model: onnx.ModelProto, path: str | None) -> ModelInfo:
        summary = describe(model)
        return ModelInfo(path, summary.nodes, model_io.serialized_size(model), summary.parameters, summary.macs)


@dataclasses.dataclass(frozen=True)
class DataInfo:
    source: str
    samples: int
    synthetic: bool
    labels: str | None


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy (fractions) of ``output`` against the labels, over ``samples`` samples."""

    output: str
    samples: int
    reference: float
    candidate: float

    @property
    def drop_points(self) -> float:
        """Percentage points lost; rounded to 1e-9 so that a drop of exactly a limit is not 1e-15 above it."""
        return round((self.reference - self.candidate) * 100, 9)


@dataclasses.dataclass(frozen=True)
class Latency:
    """Per-call times on one batch; ``speedup`` = median over rounds of reference / candidate (> 1: faster)."""

    reference: Timing
    candidate: Timing
    speedup: float
    session_seconds: dict[str, float]


@dataclasses.dataclass(frozen=True)
class ProviderResult:
    provider: str
    skipped: str | None = None                       # why it did not run
    outputs: tuple[OutputComparison, ...] = ()
    accuracy: Accuracy | None = None
    latency: Latency | None = None
    placement: dict[str, Placement] | None = None    # "reference"/"candidate" -> what ran where

    @property
    def outputs_agree(self) -> bool:
        return all(o.within_tolerance for o in self.outputs)


@dataclasses.dataclass(frozen=True)
class Validation:
    reference: ModelInfo
    candidate: ModelInfo
    data: DataInfo
    settings: dict[str, Any]
    providers: tuple[ProviderResult, ...]
    per_layer: PerLayerResult | None = None
    tensorrt_lint: tuple[LintFinding, ...] | None = None

    def ran(self) -> list[ProviderResult]:
        return [p for p in self.providers if p.skipped is None]


def validate(
    reference: model_io.ModelSource,
    candidate: model_io.ModelSource,
    data: DataSource | None = None,
    *,
    labels: str | None = None,
    providers: str | Sequence[str] = ("cpu",),
    require_providers: bool = False,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    settings: SessionSettings = DEFAULT_SETTINGS,
    shapes: Mapping[str, Sequence[int]] | None = None,
    max_samples: int | None = None,
    batch_size: int = 1,
    rounds: int = 20,
    warmup_rounds: int = 2,
    session_rounds: int = 3,
    latency: bool = True,
    placement: bool = True,
    per_layer: bool = False,
) -> Validation:
    """Compare ``candidate`` with ``reference`` on each provider (see the module docstring)."""
    names = parse_providers(providers)
    _check_counts(rtol=rtol, atol=atol, max_samples=max_samples or 1, batch_size=batch_size, rounds=rounds)
    ref, cand = _load(reference), _load(candidate)
    check_signatures(ref.model, cand.model)
    dataset, info = _dataset(data, ref.model, labels, shapes, max_samples)
    results = []
    for name in names:
        try:
            results.append(_run_provider(name, ref, cand, dataset, labels, rtol, atol, settings,
                                         batch_size, latency, placement, rounds, warmup_rounds, session_rounds))
        except ProviderUnavailable as unavailable:
            if require_providers:
                raise ValidationFailure(f"provider {name} is required but unavailable: {unavailable}") from None
            results.append(ProviderResult(name, skipped=str(unavailable)))
    lint = "tensorrt" in names and any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                                       for n in cand.model.graph.node)
    return Validation(
        reference=ModelInfo.of(ref.model, ref.source if isinstance(ref.source, str) else None),
        candidate=ModelInfo.of(cand.model, cand.source if isinstance(cand.source, str) else None),
        data=info,
        settings={"rtol": rtol, "atol": atol, "optimization": settings.optimization, "threads": settings.threads,
                  "batch_size": batch_size, "rounds": rounds, "warmup_rounds": warmup_rounds},
        providers=tuple(results),
        per_layer=(compare_layers(ref.model, cand.model, _first_batch(dataset, batch_size), rtol, atol)
                   if per_layer else None),
        tensorrt_lint=tuple(lint_tensorrt(cand.model)) if lint else None,
    )


def check_signatures(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> None:
    """UsageError (exit 2) unless both models take the same inputs (names, types, ranks) and give the
    same outputs (names, types): otherwise there is nothing to compare."""
    ref_inputs, cand_inputs = model_inputs(reference), model_inputs(candidate)
    for name, (dtype, shape) in ref_inputs.items():
        if name not in cand_inputs:
            raise UsageError(f"the candidate has no input '{name}' (it has: {', '.join(cand_inputs) or 'none'})")
        cand_dtype, cand_shape = cand_inputs[name]
        if cand_dtype != dtype or len(cand_shape) != len(shape):
            raise UsageError(f"input '{name}' is {dtype} of rank {len(shape)} in the reference but "
                             f"{cand_dtype} of rank {len(cand_shape)} in the candidate")
    extra = [name for name in cand_inputs if name not in ref_inputs]
    if extra:
        raise UsageError(f"the candidate has an input the reference lacks: '{extra[0]}'")
    ref_outputs = {o.name: o.type.tensor_type.elem_type for o in reference.graph.output}
    cand_outputs = {o.name: o.type.tensor_type.elem_type for o in candidate.graph.output}
    if ref_outputs != cand_outputs:
        raise UsageError(f"the models have different outputs: reference {_signature(ref_outputs)}, "
                         f"candidate {_signature(cand_outputs)}")


def _signature(outputs: dict[str, int]) -> str:
    return "(" + ", ".join(f"{n}: {onnx.TensorProto.DataType.Name(t).lower()}" for n, t in outputs.items()) + ")"


def _check_counts(**values: float) -> None:
    for name, value in values.items():
        if not value > 0 and not (name == "atol" and value == 0):
            raise UsageError(f"{name} must be {'at least 0' if name == 'atol' else 'positive'}, not {value}")


class _Subject(NamedTuple):
    """A model to validate: what sessions are made from (its path, so external data resolves, or its
    bytes) and the loaded, checked model."""

    source: str | bytes
    model: onnx.ModelProto


def _load(source: model_io.ModelSource) -> _Subject:
    model = model_io.load(source)
    if isinstance(source, (str, bytes)):
        return _Subject(source, model)
    if not isinstance(source, onnx.ModelProto):
        return _Subject(str(source), model)
    if model_io.serialized_size(model) > model_io.EXTERNAL_DATA_THRESHOLD:
        raise UsageError("the model is over 2 GB, which onnxruntime only loads from a file with external data: "
                         "write it, then validate the file (graphopt validate REF OUT)")
    return _Subject(model.SerializeToString(), model)


def _dataset(data: DataSource | None, model: onnx.ModelProto, labels: str | None,
             shapes: Mapping[str, Sequence[int]] | None, max_samples: int | None) -> tuple[Dataset, DataInfo]:
    if data is None:
        if labels is not None:
            raise UsageError("labels need data: pass --data with the label array in it")
        dataset = _synthetic(model, shapes)
        return dataset, DataInfo("synthetic: random inputs from the declared shapes", len(dataset), True, None)
    dataset = load_data(data, model)
    if labels is not None and labels not in dataset.extras:
        raise DataError(f"the data has no label array '{labels}' (it has: "
                        f"{', '.join(sorted(dataset.extras)) or 'only model inputs'})")
    if max_samples is not None and len(dataset) > max_samples:
        dataset = Dataset(dataset.head(max_samples), {k: v[:max_samples] for k, v in dataset.extras.items()})
    source = os.fspath(data) if isinstance(data, (str, os.PathLike)) else f"{type(data).__name__} (in memory)"
    return dataset, DataInfo(source, len(dataset), False, labels)


def _synthetic(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None) -> Dataset:
    inputs = model_inputs(model)
    for name, shape in (shapes or {}).items():
        if name not in inputs:
            raise UsageError(f"--shape names '{name}', which is not an input (inputs: {', '.join(inputs)})")
        if len(shape) != len(inputs[name][1]) or any(d < 1 for d in shape):
            raise UsageError(f"--shape {name}={'x'.join(map(str, shape))} does not fit the declared "
                             f"{inputs[name][1]}")
    return synthetic_dataset(model, samples=SYNTHETIC_SAMPLES, shapes=shapes)


def _first_batch(dataset: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    return next(dataset.batches(batch_size))


def _run_provider(name: str, reference: _Subject, candidate: _Subject, dataset: Dataset,
                  labels: str | None, rtol: float, atol: float, settings: SessionSettings, batch_size: int,
                  with_latency: bool, with_placement: bool, rounds: int, warmup_rounds: int,
                  session_rounds: int) -> ProviderResult:
    times, sessions = time_interleaved_once(
        {"reference": lambda: open_session(reference.source, name, settings),
         "candidate": lambda: open_session(candidate.source, name, settings)},
        rounds=session_rounds if with_latency else 1)
    ref_outputs = _run_all(sessions["reference"], dataset)
    cand_outputs = _run_all(sessions["candidate"], dataset)
    feeds = _first_batch(dataset, batch_size)
    timing = None
    if with_latency:
        run = measure_interleaved(
            {"reference": lambda: sessions["reference"].run(None, feeds),
             "candidate": lambda: sessions["candidate"].run(None, feeds)},
            rounds=rounds, warmup_rounds=warmup_rounds)
        timing = Latency(run.timings["reference"], run.timings["candidate"],
                         run.paired_ratio("reference", "candidate"),
                         {key: float(np.median(values)) for key, values in times.items()})
    placement = None
    if with_placement:
        placement = {role: node_placement(subject.model, feeds, provider_chain(name),
                                          OPTIMIZATION_LEVELS[settings.optimization], settings.threads)
                     for role, subject in (("reference", reference), ("candidate", candidate))}
    return ProviderResult(
        name,
        outputs=tuple(compare_outputs(ref_outputs, cand_outputs, rtol, atol)),
        accuracy=top1_accuracy(ref_outputs, cand_outputs, dataset.extras[labels]) if labels else None,
        latency=timing,
        placement=placement,
    )


def _run_all(session, dataset: Dataset, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Every output over all samples, run ``batch_size`` samples at a time (one at a time when the model
    fixes its batch) and concatenated on the first axis."""
    names = [output.name for output in session.get_outputs()]
    fixed = [i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)]
    per_batch = [session.run(names, batch) for batch in dataset.batches(fixed[0] if fixed else batch_size)]
    return {name: np.concatenate([b[i] for b in per_batch]) if per_batch[0][i].ndim else per_batch[-1][i]
            for i, name in enumerate(names)}


def top1_accuracy(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                  labels: np.ndarray) -> Accuracy:
    """Top-1 accuracy of both models' first output shaped [samples, classes] against ``labels``."""
    scores = [name for name, value in reference.items() if value.ndim == 2 and value.shape[1] > 1
              and value.shape[0] == len(labels)]
    if not scores:
        raise UsageError("accuracy needs an output of shape [samples, classes] matching the labels; "
                         "the model has none")
    name = scores[0]
    truth = np.asarray(labels).reshape(-1)
    return Accuracy(name, len(truth), float(np.mean(reference[name].argmax(1) == truth)),
                    float(np.mean(candidate[name].argmax(1) == truth)))

