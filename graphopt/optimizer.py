"""``optimize``: load -> passes -> export -> check -> atomic save, with a report. The CLI calls exactly this.

Returns ``OptimizeResult(model, report)`` (a named tuple: ``model, report = graphopt.optimize(...)``):
``model`` is the optimized ``onnx.ModelProto``, ``report`` a ``graphopt.report.Report``.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import onnx

from graphopt import model as model_io
from graphopt.analysis import AnalysisCache
from graphopt.data import Dataset, DataSource, load_data, synthetic_dataset
from graphopt.errors import GraphoptError, OutputModelError, PassError, UsageError, ValidationFailure
from graphopt.instruments import (
    DumpAfterPass,
    Instrument,
    PassRecord,
    ProgressCallback,
    SkipPasses,
    ValidateEach,
    write_reproducer,
)
from graphopt.pass_base import Invariant, Pass, PassContext
from graphopt.pipeline import as_pipeline, check_requirements, format_pipeline, run_pass
from graphopt.report import ModelStats, Report
from graphopt.validate.numerics import run_model

DEFAULT_PASSES = "lossless"
# A full garbage collection takes tens of milliseconds in a process that imported onnx, onnxruntime and numpy:
# worth it to free the weights of models from this size on, not for small ones.
_COLLECT_FROM_BYTES = 16 * 2**20


class OptimizeResult(NamedTuple):
    model: onnx.ModelProto
    report: Report


def optimize(
    model: model_io.ModelSource,
    output: str | os.PathLike | None = None,
    passes: str | Pass | Sequence[str | Pass] = DEFAULT_PASSES,
    data: DataSource | None = None,
    *,
    in_place: bool = False,
    skip: Sequence[str] = (),
    dump_dir: str | None = None,
    validate_each: bool = False,
    validate: bool = False,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    check_changed: bool = False,
    reproducer_dir: str | None = None,
    progress: Callable[[PassRecord], None] | None = None,
    instruments: Sequence[Instrument] = (),
) -> OptimizeResult:
    """Optimize ``model`` (a path, bytes or ModelProto) with ``passes`` and write ``output`` if given.

    ``passes``: pipeline text (``"fold,cleanup"``), a Pass, or a sequence of either. ``data``: calibration
    data (see ``graphopt.data``). ``skip``: pass names to switch off. ``dump_dir``: write the model after
    each pass that changed it. ``validate_each``: compare outputs with the original after every such pass
    (on ``data``, or synthetic inputs) and raise ``ValidationFailure`` naming the first pass whose outputs
    leave ``rtol``/``atol``. ``validate``: before writing, run ``graphopt.validate.validation.validate`` of
    the result against the input on the CPU (outputs on ``data`` or synthetic inputs, accuracy if the data
    holds a ``label`` array, latency) and put it in the report; outputs beyond ``rtol``/``atol`` raise
    ``ValidationFailure`` and nothing is written. ``check_changed``: verify each pass's ``changed`` bit.
    ``reproducer_dir``: where to write the input model and pipeline text when a pass fails. ``in_place``:
    allow ``output`` to be the input file. Raises ``GraphoptError`` subclasses, each with the CLI's exit code.
    """
    start = time.perf_counter()
    pipeline = as_pipeline(passes)
    pipeline_text = format_pipeline(pipeline)
    held = {Invariant.INFERENCE_MODE}
    check_requirements(pipeline, held)
    input_path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if output is not None:
        _check_output_path(input_path, os.fspath(output), in_place)
    # The input's weights are messages of their own (``SplitModel``): each is freed once the graph no longer
    # reads it (replaced by a pass, or copied into the optimized model), not only with the whole input.
    original, weights, kept_external = model_io.load_split(model)
    input_stats = dataclasses.replace(ModelStats.of(original, input_path),
                                      bytes=model_io.serialized_size(original, weights))
    dataset = load_data(data, original) if data is not None else None
    reference = model_io.joined(model_io.SplitModel(original, weights)) if validate_each else None
    graph = model_io.to_graph(original, weights)
    del weights

    def export(g):
        return model_io.to_model(g, original)

    ctx = PassContext(AnalysisCache(), data=dataset, check_changed=check_changed, held=held)
    ctx.instruments.extend(instruments)
    if skip:
        ctx.instruments.append(SkipPasses(skip))
    if progress:
        ctx.instruments.append(ProgressCallback(progress))
    if dump_dir:
        ctx.instruments.append(DumpAfterPass(dump_dir, export))
    if reference is not None:
        ctx.instruments.append(_validate_each(reference, dataset, export, rtol, atol))
        del reference
    try:
        result = run_pass(pipeline, graph, ctx)
        # What passes cut out of the graph (replaced constants, with the weights they read) sits in reference
        # cycles (gs's nodes and tensors point at each other), which only a full collection frees; on a large
        # model the cycle collector may never run one by itself. Free it before the model is written; each
        # constant left is let go of as it is written (``release``: the graph then reads the optimized model).
        if input_stats.bytes >= _COLLECT_FROM_BYTES:
            gc.collect()
        optimized = model_io.to_model(graph, original, release=True)
        # Sizing the result and saving it (the checker and onnxruntime each load a copy) need memory: let go
        # of the graph and of the input model (neither holds weights any more) first.
        del graph
        original = None
        ctx.analyses.invalidate()
        output_stats = ModelStats.of(optimized, os.fspath(output) if output is not None else None)
        validation = _validation(model, optimized, data, dataset, rtol, atol) if validate else None
        if output is not None:
            # the size is known: saving need not measure it again (a second or more on a large model). A model
            # whose weights were in external data keeps them there, whatever its new size: its users expect
            # that layout, and the output check then maps the weights rather than loading a second copy.
            external = kept_external or output_stats.bytes > model_io.EXTERNAL_DATA_THRESHOLD
            model_io.save(optimized, output, external_data=external)
    except (PassError, OutputModelError) as error:
        replacement = _with_reproducer(error, model, pipeline_text, reproducer_dir)
        if replacement is error:
            raise
        raise replacement from error.__cause__ or error
    except GraphoptError:
        raise
    except Exception as error:
        raise _with_reproducer(OutputModelError(f"exporting the optimized graph failed: {error}"), model,
                               pipeline_text, reproducer_dir) from error
    report = Report(
        pipeline=pipeline_text,
        seconds=time.perf_counter() - start,
        input=input_stats,
        output=output_stats,
        passes=tuple(ctx.records),
        diagnostics=tuple(str(d) for d in result.diagnostics) + model_io.custom_op_diagnostics(optimized),
        validation=validation,
    )
    return OptimizeResult(optimized, report)


def _check_output_path(input_path: str | None, output: str, in_place: bool) -> None:
    if input_path is not None and model_io.same_file(input_path, output) and not in_place:
        raise UsageError(f"refusing to overwrite the input {input_path}; pass --in-place to allow it")
    model_io.check_writable(output)


def _validate_each(original: onnx.ModelProto, dataset, export, rtol: float, atol: float) -> ValidateEach:
    feeds = (dataset or synthetic_dataset(original, samples=2)).head(8)
    return ValidateEach(export, feeds, run_model(original, feeds), rtol, atol)


def _validation(original: model_io.ModelSource, optimized: onnx.ModelProto, data: DataSource | None,
                dataset: Dataset | None, rtol: float, atol: float):
    """Validate the optimized model against the input on ``data`` (loaded: ``dataset``), with accuracy when
    it holds a ``label`` array; outputs beyond tolerance: ValidationFailure."""
    from graphopt.validate.validation import validate

    labels = "label" if dataset is not None and "label" in dataset.extras else None
    validation = validate(original, optimized, data, labels=labels, rtol=rtol, atol=atol)
    differing = [f"'{o.name}' ({o})" for p in validation.ran() for o in p.outputs if not o.within_tolerance]
    if differing:
        raise ValidationFailure(f"the optimized model's outputs differ beyond rtol={rtol}, atol={atol}: "
                                + "; ".join(differing) + "; nothing was written")
    return validation


def _with_reproducer(error: GraphoptError, source: model_io.ModelSource, pipeline_text: str,
                     directory: str | None) -> GraphoptError:
    """``error`` naming the reproducer written into ``directory`` (if given). ``source``: what the input model
    was loaded from (loaded again here: the optimizer lets go of the input's weights as it goes)."""
    if directory is None:
        return error
    path = write_reproducer(directory, model_io.load(source), pipeline_text, error)
    if isinstance(error, PassError):
        return PassError(error.detail, pass_path=error.pass_path, history=error.history,
                         reproducer=path)
    return type(error)(f"{error}; reproducer written to {path}")
