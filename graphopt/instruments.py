"""Instruments observe the pass manager: they may skip a pass and are told after each pass ran.

Built in: ``SkipPasses`` (switch any pass off by name), ``DumpAfterPass`` (write the model after each pass
that changed it), ``ValidateEach`` (compare outputs with the original after each pass that changed the
graph, so the first pass that changes numerics is named), and ``ProgressCallback``. The manager records a
``PassRecord`` per leaf pass run; ``verify_structure`` is its cheap structural check between passes;
``write_reproducer`` saves what is needed to replay a failure.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.errors import ValidationFailure

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.pass_base import Pass, PassContext, PassResult


@dataclasses.dataclass(frozen=True)
class PassRecord:
    """One leaf pass run: where it ran (``path`` includes enclosing pipelines), time, node counts, result."""

    path: str
    name: str
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    result: PassResult | None = None
    skipped: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.result and self.result.changed)


class Instrument:
    """Base class: override the hooks you need."""

    def should_run(self, pass_: Pass, ctx: PassContext) -> bool:
        return True

    def after(self, pass_: Pass, graph: gs.Graph, record: PassRecord, ctx: PassContext) -> None:
        return None


class SkipPasses(Instrument):
    """Skips every leaf pass whose name is in ``names``."""

    def __init__(self, names: Iterable[str]):
        self.names = frozenset(names)

    def should_run(self, pass_: Pass, ctx: PassContext) -> bool:
        return pass_.name not in self.names


class ProgressCallback(Instrument):
    """Calls ``callback(record)`` after every leaf pass (the CLI uses it to drive its progress display)."""

    def __init__(self, callback: Callable[[PassRecord], None]):
        self.callback = callback

    def after(self, pass_: Pass, graph: gs.Graph, record: PassRecord, ctx: PassContext) -> None:
        self.callback(record)


class DumpAfterPass(Instrument):
    """Writes ``NN-<pass>.onnx`` into ``directory`` after each pass that changed the graph."""

    def __init__(self, directory: str, export: Callable[[gs.Graph], onnx.ModelProto]):
        self.directory, self.export, self.count = directory, export, 0
        os.makedirs(directory, exist_ok=True)

    def after(self, pass_: Pass, graph: gs.Graph, record: PassRecord, ctx: PassContext) -> None:
        if record.changed:
            self.count += 1
            path = os.path.join(self.directory, f"{self.count:02d}-{pass_.name}.onnx")
            onnx.save_model(self.export(graph), path)


class ValidateEach(Instrument):
    """After each pass that changed the graph, runs it on ``feeds`` and compares with ``reference``
    outputs; raises ``ValidationFailure`` naming the first pass whose outputs differ beyond tolerance."""

    def __init__(self, export: Callable[[gs.Graph], onnx.ModelProto], feeds: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], rtol: float, atol: float):
        self.export, self.feeds, self.reference, self.rtol, self.atol = export, feeds, reference, rtol, atol

    def after(self, pass_: Pass, graph: gs.Graph, record: PassRecord, ctx: PassContext) -> None:
        from graphopt.validate.numerics import compare_outputs, run_model

        if not record.changed:
            return
        outputs = run_model(self.export(graph), self.feeds)
        for comparison in compare_outputs(self.reference, outputs, self.rtol, self.atol):
            if not comparison.within_tolerance:
                raise ValidationFailure(f"pass {record.path} changed output '{comparison.name}' beyond "
                                        f"tolerance (rtol={self.rtol:g}, atol={self.atol:g}): {comparison}")


def verify_structure(graph: gs.Graph) -> None:
    """Raise AssertionError if the top-level graph is not well-formed: a tensor with two producers, a node
    input or graph output that nothing produces, or two tensors that share a name. (Subgraphs may read
    outer-scope tensors, so only the top level is checked.)"""
    graph.tensors(check_duplicates=True)
    graph_inputs = {id(t) for t in graph.inputs}
    for node in graph.nodes:
        for tensor in node.outputs:
            if len(tensor.inputs) > 1:
                raise AssertionError(f"tensor '{tensor.name}' has {len(tensor.inputs)} producers")
    for tensor in [*(t for n in graph.nodes for t in n.inputs), *graph.outputs]:
        produced = isinstance(tensor, gs.Constant) or tensor.inputs or id(tensor) in graph_inputs
        if not produced and tensor.name:  # '' marks an omitted optional input
            raise AssertionError(f"tensor '{tensor.name}' is used but nothing produces it")


def write_reproducer(directory: str, model: onnx.ModelProto, pipeline_text: str, error: BaseException) -> str:
    """Save the input model, the pipeline text and the error into ``directory``; return the folder."""
    os.makedirs(directory, exist_ok=True)
    onnx.save_model(model, os.path.join(directory, "input.onnx"))
    with open(os.path.join(directory, "pipeline.txt"), "w", encoding="utf-8") as handle:
        handle.write(pipeline_text + "\n")
    with open(os.path.join(directory, "error.txt"), "w", encoding="utf-8") as handle:
        handle.write(f"{type(error).__name__}: {error}\n")
    with open(os.path.join(directory, "README.txt"), "w", encoding="utf-8") as handle:
        handle.write(f"Replay with:\n  graphopt optimize input.onnx output.onnx --passes \"{pipeline_text}\"\n")
    return directory
