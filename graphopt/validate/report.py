"""The validation and gate report: one JSON schema, a Markdown rendering for CI comments, a rich table.

JSON schema ``graphopt.validation/1`` (the JSON Schema is ``validation.schema.json`` beside this module)::

    {
      "schema": "graphopt.validation/1",
      "graphopt_version": str,
      "passed": bool,                       # no verdict failed (true when there are no verdicts)
      "reference": ModelInfo, "candidate": ModelInfo,   # {path, nodes, bytes, parameters, macs}
      "delta": {"nodes": int, "bytes": int, "size_ratio": float, "macs_ratio": float|null},
      "data": {"source": str, "samples": int, "synthetic": bool, "labels": str|null},
      "settings": {"rtol", "atol", "optimization", "threads", "batch_size", "rounds", "warmup_rounds"},
      "providers": [{
          "provider": "cpu"|"cuda"|"tensorrt", "status": "ran"|"skipped", "reason": str|null,
          "outputs": [{"name", "within_tolerance", "max_abs_error", "max_rel_error", "cosine",
                       "top1_agreement", "problem"}],
          "accuracy": {"output", "samples", "reference", "candidate", "drop_points"}|null,
          "latency": {"speedup": float, "session_seconds": {"reference", "candidate"},
                      "reference": Timing, "candidate": Timing}|null,   # Timing: median_s, p90_s, ...
          "placement": {"reference": Placement, "candidate": Placement}|null}],
      "per_layer": PerLayerResult|null,      # with first_divergence
      "tensorrt_lint": [LintFinding]|null,   # null: the candidate has no Q/DQ nodes
      "optimization": graphopt.report/1|null,   # passes applied with their stats, when graphopt made the candidate
      "verdicts": [{"check", "provider", "value", "limit", "passed", "detail"}]
    }

Numbers that are not finite (an error of a missing output) are written as null: JSON has no infinity.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from graphopt.validate.gate import Verdict
from graphopt.validate.validation import ProviderResult, Validation

SCHEMA = "graphopt.validation/1"


def to_dict(validation: Validation, verdicts: Sequence[Verdict] = (),
            optimization: dict[str, Any] | None = None) -> dict[str, Any]:
    from graphopt import __version__

    ref, cand = validation.reference, validation.candidate
    return _finite({
        "schema": SCHEMA,
        "graphopt_version": __version__,
        "passed": all(v.passed for v in verdicts),
        "reference": dataclasses.asdict(ref),
        "candidate": dataclasses.asdict(cand),
        "delta": {"nodes": cand.nodes - ref.nodes, "bytes": cand.bytes - ref.bytes,
                  "size_ratio": cand.bytes / max(ref.bytes, 1),
                  "macs_ratio": cand.macs / ref.macs if ref.macs else None},
        "data": dataclasses.asdict(validation.data),
        "settings": dict(validation.settings),
        "providers": [_provider_dict(p) for p in validation.providers],
        "per_layer": validation.per_layer.to_dict() if validation.per_layer else None,
        "tensorrt_lint": ([f.to_dict() for f in validation.tensorrt_lint]
                          if validation.tensorrt_lint is not None else None),
        "optimization": optimization,
        "verdicts": [v.to_dict() for v in verdicts],
    })


def to_json(validation: Validation, verdicts: Sequence[Verdict] = (),
            optimization: dict[str, Any] | None = None) -> str:
    return json.dumps(to_dict(validation, verdicts, optimization), indent=2, allow_nan=False)


def _provider_dict(result: ProviderResult) -> dict[str, Any]:
    latency = result.latency
    return {
        "provider": result.provider,
        "status": "skipped" if result.skipped else "ran",
        "reason": result.skipped,
        "outputs": [dataclasses.asdict(o) for o in result.outputs],
        "accuracy": ({**dataclasses.asdict(result.accuracy), "drop_points": result.accuracy.drop_points}
                     if result.accuracy else None),
        "latency": ({"speedup": latency.speedup, "session_seconds": dict(latency.session_seconds),
                     "reference": latency.reference.to_dict(), "candidate": latency.candidate.to_dict()}
                    if latency else None),
        "placement": ({role: p.to_dict() for role, p in result.placement.items()} if result.placement else None),
    }


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def rows(validation: Validation) -> list[list[str]]:
    """The summary table, one row per provider: what a user reads first."""
    table = []
    for result in validation.providers:
        if result.skipped:
            table.append([result.provider, "skipped (see below)", "", "", "", "", ""])
            continue
        worst_cos = min((o.cosine for o in result.outputs), default=math.nan)
        worst_abs = max((o.max_abs_error for o in result.outputs), default=math.nan)
        accuracy = (f"{result.accuracy.reference:.2%} -> {result.accuracy.candidate:.2%}"
                    if result.accuracy else "-")
        latency = result.latency
        table.append([
            result.provider,
            "agree" if result.outputs_agree else "DIFFER",
            f"{worst_abs:.3g}", f"{worst_cos:.6f}", accuracy,
            f"{latency.reference.median * 1e3:.3f} -> {latency.candidate.median * 1e3:.3f}" if latency else "-",
            f"{latency.speedup:.2f}x" if latency else "-",
        ])
    return table


_HEADER = ["provider", "outputs", "max abs err", "min cosine", "accuracy", "latency ms (median)", "speedup"]


def to_markdown(validation: Validation, verdicts: Sequence[Verdict] = ()) -> str:
    ref, cand = validation.reference, validation.candidate
    lines = [f"**graphopt validate**: {_verdict_line(verdicts)}", "",
             f"{ref.nodes} -> {cand.nodes} nodes, {ref.bytes:,} -> {cand.bytes:,} bytes, "
             f"data: {validation.data.source} ({validation.data.samples} samples)", "",
             "| " + " | ".join(_HEADER) + " |", "|---|---|---:|---:|---|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(validation)]
    if verdicts:
        lines += ["", "| check | provider | value | limit | verdict |", "|---|---|---:|---:|---|"]
        lines += [f"| {v.check} | {v.provider or '-'} | {_number(v.value)} | {_number(v.limit)} | "
                  f"{'PASS' if v.passed else 'FAIL'}: {v.detail} |" for v in verdicts]
    lines += [f"- {line}" for line in _notes(validation)]
    return "\n".join(lines) + "\n"


def render(validation: Validation, console: Any, verdicts: Sequence[Verdict] = ()) -> None:
    """Print the summary (and verdicts) on a ``rich.console.Console``."""
    from rich.table import Table

    ref, cand = validation.reference, validation.candidate
    table = Table(title=f"validate: {ref.nodes} -> {cand.nodes} nodes, {ref.bytes:,} -> {cand.bytes:,} bytes; "
                        f"data: {validation.data.source} ({validation.data.samples} samples)",
                  title_justify="left")
    for column in _HEADER:
        table.add_column(column, overflow="fold")
    for row in rows(validation):
        table.add_row(*row)
    console.print(table)
    if verdicts:
        checks = Table(title="gate", title_justify="left")
        for column in ("check", "provider", "value", "limit", "verdict"):
            checks.add_column(column, overflow="fold")
        for v in verdicts:
            verdict = "[green]PASS[/green]: " if v.passed else "[red]FAIL[/red]: "
            checks.add_row(v.check, v.provider or "-", _number(v.value), _number(v.limit),
                           verdict + v.detail.replace("[", r"\["))
        console.print(checks)
        console.print(_verdict_line(verdicts), markup=False)
    for line in _notes(validation):
        console.print(f"  {line}", markup=False)


def _notes(validation: Validation) -> list[str]:
    notes = [f"{p.provider} skipped: {p.skipped}" for p in validation.providers if p.skipped]
    if validation.data.synthetic:
        notes.append("inputs were generated from the declared shapes (no --data): accuracy is unknown")
    for result in validation.ran():
        for o in result.outputs:
            if not o.within_tolerance:
                notes.append(f"{result.provider}: output '{o.name}' beyond rtol/atol: {o}")
        for role, placement in (result.placement or {}).items():
            if placement.model_q or placement.model_dq:
                notes.append(f"{result.provider} {role}: {placement.int8_kernels} int8 kernels; "
                             f"{placement.float_q} QuantizeLinear and {placement.float_dq} DequantizeLinear "
                             f"ran standalone")
    if validation.per_layer is not None:
        first = validation.per_layer.first_divergence
        notes.append(f"first divergent node: {first.node} ({first.op_type}), tensor '{first.tensor}': "
                     f"max abs error {first.max_abs_error:.3g}" if first else
                     f"per layer: all {len(validation.per_layer.compared)} shared tensors within tolerance")
    for finding in validation.tensorrt_lint or ():
        notes.append(f"tensorrt lint {finding.severity} [{finding.rule}] {finding.node}: {finding.message}")
    return notes


def _verdict_line(verdicts: Sequence[Verdict]) -> str:
    if not verdicts:
        return "no thresholds checked"
    failed = [v for v in verdicts if not v.passed]
    return (f"FAIL ({len(failed)} of {len(verdicts)} checks failed: "
            + ", ".join(f"{v.check}" + (f"[{v.provider}]" if v.provider else "") for v in failed) + ")"
            if failed else f"PASS ({len(verdicts)} checks)")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
