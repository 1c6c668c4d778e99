"""One report schema for everything graphopt did, rendered as a rich table, JSON or Markdown.

JSON schema ``graphopt.report/1`` (``Report.to_dict``)::

    {
      "schema": "graphopt.report/1",
      "graphopt_version": str,
      "pipeline": str,                       # canonical pipeline text that ran
      "seconds": float,                      # wall time of the whole optimization
      "input":  {"path": str|null, "nodes": int, "bytes": int, "ops": {op_type: count}},
      "output": {"path": str|null, "nodes": int, "bytes": int, "ops": {op_type: count}},
      "passes": [{"path": str, "name": str, "seconds": float, "nodes_before": int, "nodes_after": int,
                  "changed": bool, "skipped": bool, "stats": {str: int}, "diagnostics": [str]}],
      "diagnostics": [str],                  # from the pipeline and the model I/O layer
      "validation": graphopt.validation/1 | null   # with --validate (see graphopt/validate/report.py)
    }

``nodes`` and ``ops`` count top-level nodes; ``bytes`` is the serialized size (weights included).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

import onnx

from graphopt.instruments import PassRecord
from graphopt.model import serialized_size

SCHEMA = "graphopt.report/1"


@dataclasses.dataclass(frozen=True)
class ModelStats:
    path: str | None
    nodes: int
    bytes: int
    ops: dict[str, int]

    @staticmethod
    def of(model: onnx.ModelProto, path: str | None = None) -> ModelStats:
        ops = Counter(node.op_type for node in model.graph.node)
        return ModelStats(path, len(model.graph.node), serialized_size(model), dict(sorted(ops.items())))


@dataclasses.dataclass(frozen=True)
class PassSummary:
    """All runs of one pass name added up (a pass inside a fixed point runs several times)."""

    name: str
    runs: int
    seconds: float
    node_delta: int
    stats: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Report:
    pipeline: str
    seconds: float
    input: ModelStats
    output: ModelStats
    passes: tuple[PassRecord, ...]
    diagnostics: tuple[str, ...] = ()
    validation: Any = None  # a graphopt.validate.validation.Validation, with --validate

    def summary(self) -> list[PassSummary]:
        """One row per pass name, in the order each first ran."""
        rows: dict[str, PassSummary] = {}
        for record in self.passes:
            row = rows.get(record.name, PassSummary(record.name, 0, 0.0, 0, {}))
            stats = Counter(row.stats)
            stats.update(dict(record.result.stats) if record.result else {})
            rows[record.name] = PassSummary(record.name, row.runs + (not record.skipped),
                                            row.seconds + record.seconds,
                                            row.node_delta + record.nodes_after - record.nodes_before,
                                            dict(sorted(stats.items())))
        return list(rows.values())

    def to_dict(self) -> dict[str, Any]:
        from graphopt import __version__

        return {
            "schema": SCHEMA,
            "graphopt_version": __version__,
            "pipeline": self.pipeline,
            "seconds": round(self.seconds, 6),
            "input": dataclasses.asdict(self.input),
            "output": dataclasses.asdict(self.output),
            "passes": [_record_dict(record) for record in self.passes],
            "diagnostics": list(self.diagnostics),
            "validation": _validation_dict(self.validation),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"**graphopt** `{self.pipeline}`: {self.input.nodes} -> {self.output.nodes} nodes, "
            f"{_size(self.input.bytes)} -> {_size(self.output.bytes)}, {self.seconds:.2f} s",
            "",
            "| pass | runs | time (s) | nodes | stats |",
            "|---|---:|---:|---:|---|",
        ]
        for row in self.summary():
            lines.append(f"| {row.name} | {row.runs} | {row.seconds:.3f} | {row.node_delta:+d} | {_stats(row.stats)} |")
        lines += [f"- {d}" for d in self.diagnostics]
        text = "\n".join(lines) + "\n"
        if self.validation is not None:
            from graphopt.validate.report import to_markdown

            text += "\n" + to_markdown(self.validation)
        return text

    def render(self, console: Any) -> None:
        """Print the summary table on a ``rich.console.Console``."""
        from rich.table import Table

        table = Table(title=f"graphopt: {self.pipeline}", title_justify="left")
        for column, justify in (("pass", "left"), ("runs", "right"), ("time (s)", "right"),
                                ("nodes", "right"), ("stats", "left")):
            table.add_column(column, justify=justify, overflow="fold")
        for row in self.summary():
            table.add_row(row.name, str(row.runs), f"{row.seconds:.3f}", f"{row.node_delta:+d}", _stats(row.stats))
        console.print(table)
        console.print(f"nodes {self.input.nodes} -> {self.output.nodes}, size {_size(self.input.bytes)} -> "
                      f"{_size(self.output.bytes)}, {self.seconds:.2f} s")
        for diagnostic in self.diagnostics:
            console.print(f"  {diagnostic}", markup=False)
        if self.validation is not None:
            from graphopt.validate.report import render

            render(self.validation, console)


def _validation_dict(validation: Any) -> dict[str, Any] | None:
    if validation is None:
        return None
    from graphopt.validate.report import to_dict

    return to_dict(validation)


def _record_dict(record: PassRecord) -> dict[str, Any]:
    result = record.result
    return {
        "path": record.path,
        "name": record.name,
        "seconds": round(record.seconds, 6),
        "nodes_before": record.nodes_before,
        "nodes_after": record.nodes_after,
        "changed": record.changed,
        "skipped": record.skipped,
        "stats": dict(result.stats) if result else {},
        "diagnostics": [str(d) for d in result.diagnostics] if result else [],
    }


def _stats(stats: dict[str, int]) -> str:
    return ", ".join(f"{key}={value}" for key, value in stats.items()) or "-"


def _size(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} GiB"
