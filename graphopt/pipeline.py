"""The pass manager: ``run_pass`` (the per-pass loop), ``Pipeline`` and ``FixedPoint`` (passes themselves, so
they nest), and the text form of a pipeline with its parser.

Per leaf pass, ``run_pass`` does: should-run hooks -> run -> honesty check of ``changed`` (optional) -> if
changed: invalidate analyses and verify the graph's structure -> after hooks -> a ``PassRecord``.

Text form (round-trips exactly: ``format_pipeline(parse_pipeline(t))`` parses back to an equal pipeline)::

    pipeline := item ("," item)*
    item     := NAME | NAME "(" [arg ("," arg)*] ")"
    arg      := KEY "=" value          an option of the pass
              | item                   a nested pass (only inside fixed-point(...) and pipeline(...))
    value    := WORD | "'...'" | '"..."' | "[" [value ("," value)*] "]"

Names are pass names, aliases or presets from the registry; presets expand to their pipelines when parsed,
so printing shows what will actually run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import onnx_graphsurgeon as gs

from graphopt.analysis import exact_digests, infer_shapes, structural_fingerprint
from graphopt.errors import DataError, GraphoptError, PassError, UsageError
from graphopt.instruments import PassRecord, verify_structure
from graphopt.pass_base import Diagnostic, Invariant, Option, Pass, PassContext, PassResult
from graphopt.registry import Registry, default_registry


def _toposort(graph: gs.Graph) -> None:
    """gs's toposort, nodes and local functions; only nodes when the graph has both subgraphs and local
    functions, where sorting the functions recurses forever in gs 0.6 (RecursionError)."""
    has_subgraph = next(graph.subgraphs(), None) is not None
    graph.toposort(mode="nodes" if graph.functions and has_subgraph else "full")


# Invariants that describe how the model is used rather than the graph: no rewrite can undo them.
_ABOUT_THE_RUN = frozenset({Invariant.INFERENCE_MODE})

_ESTABLISHERS = {
    Invariant.TOPOLOGICALLY_SORTED: _toposort,
    Invariant.SHAPES_INFERRED: infer_shapes,
}


def run_pass(pass_: Pass, graph: gs.Graph, ctx: PassContext) -> PassResult:
    """Run one pass (leaf or composite) on ``graph`` in place, with hooks, checks and bookkeeping. With
    ``ctx.check_changed``, constant values are hashed afresh every time (``exact_digests``)."""
    with exact_digests(ctx.check_changed):
        return _run_pass(pass_, graph, ctx)


def _run_pass(pass_: Pass, graph: gs.Graph, ctx: PassContext) -> PassResult:
    if pass_.children():
        return pass_.run(graph, ctx)
    path = "/".join([*ctx.scope, pass_.name])
    if not all(instrument.should_run(pass_, ctx) for instrument in ctx.instruments):
        ctx.records.append(PassRecord(path, pass_.name, skipped=True))
        return PassResult(False)
    nodes_before = len(graph.nodes)
    start = time.perf_counter()
    try:
        _establish(pass_.requires, graph, ctx)
        fingerprint = structural_fingerprint(graph) if ctx.check_changed else None
        result = pass_.run(graph, ctx)
        if fingerprint is not None:
            _check_honesty(result, fingerprint, graph)
        if result.changed:
            ctx.analyses.invalidate()
            ctx.held = (ctx.held & (pass_.preserves | _ABOUT_THE_RUN)) | pass_.establishes
            verify_structure(graph)
    except PassError:
        raise
    except (UsageError, DataError) as error:  # the request or the data is wrong, not the pass: exit 2
        raise type(error)(f"pass {path}: {error}") from error
    except GraphoptError as error:
        raise PassError(str(error), pass_path=path, history=tuple(ctx.history)) from error
    except Exception as error:
        raise PassError(f"{type(error).__name__}: {error}", pass_path=path, history=tuple(ctx.history)) from error
    record = PassRecord(path, pass_.name, seconds=time.perf_counter() - start, nodes_before=nodes_before,
                        nodes_after=len(graph.nodes), result=result)
    ctx.history.append(pass_.name)
    ctx.records.append(record)
    for instrument in ctx.instruments:
        instrument.after(pass_, graph, record, ctx)
    return result


def _establish(required: frozenset[Invariant], graph: gs.Graph, ctx: PassContext) -> None:
    for invariant in sorted(required - ctx.held, key=lambda i: i.value):
        _ESTABLISHERS[invariant](graph)
        ctx.held.add(invariant)


def check_requirements(pipeline: Pass, held: set[Invariant]) -> None:
    """Before anything runs: every leaf pass requires only invariants the manager can establish on demand
    (topological order, inferred shapes) or that hold for the whole run (inference mode)."""
    if pipeline.children():
        for child in pipeline.children():
            check_requirements(child, held)
        return
    for invariant in sorted(pipeline.requires - held - set(_ESTABLISHERS), key=lambda i: i.value):
        raise UsageError(f"pass {pipeline.name} requires the model to be in {invariant.value}, which this "
                         f"run does not provide")


def _check_honesty(result: PassResult, before: str, graph: gs.Graph) -> None:
    actually_changed = structural_fingerprint(graph) != before
    if actually_changed != result.changed:
        raise AssertionError(f"reported changed={result.changed} but the graph "
                             f"{'changed' if actually_changed else 'did not change'}")


class Pipeline(Pass):
    """Runs its passes in order, once. ``changed`` if any of them changed the graph; stats are summed."""

    name = "pipeline"
    summary = "run passes in order"

    def __init__(self, passes: Sequence[Pass], **options: Any):
        super().__init__(**options)
        self.passes = tuple(passes)

    def children(self) -> tuple[Pass, ...]:
        return self.passes

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return PassResult.merge([run_pass(p, graph, ctx) for p in self.passes])


class FixedPoint(Pipeline):
    """Repeats its passes until an iteration changes nothing, at most ``max_iterations`` times.

    Stops early, with a warning diagnostic, when an iteration reproduces the graph of an earlier one (a
    cycle: two rewrites undoing each other) or when the bound is reached; never silently.
    """

    name = "fixed-point"
    summary = "repeat passes until the graph stops changing (bounded, with cycle detection)"
    options = (Option("max_iterations", int, 10, "upper bound on iterations", minimum=1, maximum=1000),)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        limit = self.values["max_iterations"]
        seen = {structural_fingerprint(graph): 0}
        results: list[PassResult] = []
        warning: Diagnostic | None = None
        for iteration in range(1, limit + 1):
            ctx.scope.append(f"{self.name}[{iteration}]")
            try:
                result = super().run(graph, ctx)
            finally:
                ctx.scope.pop()
            results.append(result)
            if not result.changed:
                break
            fingerprint = structural_fingerprint(graph)
            if fingerprint in seen:
                warning = Diagnostic("warning", f"fixed-point cycle: iteration {iteration} reproduced the "
                                                f"graph of iteration {seen[fingerprint]}; stopped")
                break
            seen[fingerprint] = iteration
        else:
            warning = Diagnostic("warning", f"fixed-point did not converge in {limit} iterations; stopped")
        merged = PassResult.merge(results, iterations=len(results))
        if warning is None:
            return merged
        return PassResult(merged.changed, merged.stats, (*merged.diagnostics, warning))


COMPOSITES: dict[str, type[Pipeline]] = {Pipeline.name: Pipeline, FixedPoint.name: FixedPoint}


# ---------------------------------------------------------------------------------------------------------
# Text form


def format_pipeline(pass_: Pass) -> str:
    """The canonical text of a pass or pipeline; a top-level ``Pipeline`` prints as its items."""
    if type(pass_) is Pipeline and not pass_.non_default_options():
        return ",".join(_format_item(p) for p in pass_.children())
    return _format_item(pass_)


def _format_item(pass_: Pass) -> str:
    args = [_format_item(p) for p in pass_.children()]
    args += [f"{key}={format_value(value)}" for key, value in pass_.non_default_options().items()]
    return f"{pass_.name}({','.join(args)})" if args else pass_.name


def format_value(value: Any) -> str:
    """An option value as pipeline text: quoted when it holds special characters."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if text and not any(c in _SPECIAL or c.isspace() for c in text) and text.lower() not in ("true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_SPECIAL = set(",()[]='\" \\")


def parse_pipeline(text: str, registry: Registry | None = None) -> Pipeline:
    """Parse pipeline text into a ``Pipeline``. Raises UsageError naming what is wrong, with known names."""
    registry = registry or default_registry()
    parser = _Parser(text, registry)
    items = parser.items(closing=None)
    if not items:
        raise UsageError("empty pipeline: name at least one pass (see `graphopt passes`)")
    return Pipeline([p for item in items for p in item])


class _Parser:
    def __init__(self, text: str, registry: Registry, expanding: frozenset[str] = frozenset()):
        self.text, self.registry, self.pos, self.expanding = text, registry, 0, expanding

    def error(self, message: str) -> UsageError:
        return UsageError(f"pipeline text {self.text!r}, at character {self.pos + 1}: {message}")

    def peek(self) -> str:
        self.skip_spaces()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected '{char}'")
        self.pos += 1

    def word(self) -> str:
        self.skip_spaces()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _SPECIAL and not self.text[self.pos].isspace():
            self.pos += 1
        return self.text[start:self.pos]

    def items(self, closing: str | None) -> list[list[Pass]]:
        """Comma-separated items up to ``closing`` (or the end); each item is a list of passes."""
        items: list[list[Pass]] = []
        if self.peek() == (closing or ""):
            return items
        while True:
            items.append(self.item())
            if self.peek() != ",":
                break
            self.pos += 1
        if self.peek() != (closing or ""):
            raise self.error(f"expected ',' or {repr(closing) if closing else 'end of text'}")
        return items

    def item(self) -> list[Pass]:
        name = self.word()
        if not name:
            raise self.error("expected a pass name")
        options: dict[str, Any] = {}
        nested: list[Pass] = []
        has_args = self.peek() == "("
        if has_args:
            self.pos += 1
            for arg in self.args():
                if isinstance(arg, tuple):
                    if arg[0] in options:
                        raise self.error(f"option '{arg[0]}' given twice")
                    options[arg[0]] = arg[1]
                else:
                    nested.extend(arg)
            self.expect(")")
        if name in COMPOSITES:
            return [COMPOSITES[name](nested, **options)]
        if nested:
            raise self.error(f"'{name}' takes options (key=value), not nested passes")
        if name in self.registry.presets:
            if has_args:
                raise self.error(f"preset '{name}' takes no options")
            if name in self.expanding:
                raise self.error(f"preset '{name}' refers to itself")
            preset = _Parser(self.registry.presets[name], self.registry, self.expanding | {name})
            return [p for item in preset.items(closing=None) for p in item]
        return [self.registry.create(name, **options)]

    def args(self) -> list[Any]:
        args: list[Any] = []
        if self.peek() == ")":
            return args
        while True:
            start = self.pos
            key = self.word()
            if key and self.peek() == "=":
                self.pos += 1
                args.append((key, self.value()))
            else:
                self.pos = start
                args.append(self.item())
            if self.peek() != ",":
                return args
            self.pos += 1

    def value(self) -> Any:
        char = self.peek()
        if char in ("'", '"'):
            return self.quoted(char)
        if char == "[":
            self.pos += 1
            values: list[Any] = []
            if self.peek() != "]":
                while True:
                    values.append(self.value())
                    if self.peek() != ",":
                        break
                    self.pos += 1
            self.expect("]")
            return values
        value = self.word()
        if not value:
            raise self.error("expected a value")
        return value

    def quoted(self, quote: str) -> str:
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                chars.append(self.text[self.pos])
                self.pos += 1
            elif char == quote:
                return "".join(chars)
            else:
                chars.append(char)
        raise self.error("unterminated quoted value")


def as_pipeline(passes: str | Pass | Sequence[str | Pass], registry: Registry | None = None) -> Pipeline:
    """Accept pipeline text, a pass, or a sequence of either, and return one ``Pipeline``."""
    if isinstance(passes, str):
        return parse_pipeline(passes, registry)
    if isinstance(passes, Pipeline) and type(passes) is Pipeline:
        return passes
    if isinstance(passes, Pass):
        return Pipeline([passes])
    items: list[Pass] = []
    for item in passes:
        items.extend(as_pipeline(item, registry).children())
    return Pipeline(items)
