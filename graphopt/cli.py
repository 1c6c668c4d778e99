"""The ``graphopt`` command. Thin: it parses arguments, calls the library with the same keyword names,
prints, and exits with the documented code.

Exit codes: 0 success; 1 a gate or validation threshold failed; 2 bad usage or an input that is not a
usable model (one line on stderr, no traceback); 3 an internal error (traceback, and the folder where a
reproducer was written).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from typing import Annotated

import typer
from rich.console import Console

from graphopt.errors import EXIT_INTERNAL, EXIT_USAGE, GraphoptError, UsageError, one_line

app = typer.Typer(
    name="graphopt",
    help="Make ONNX models smaller and faster without breaking them: fold, clean up, fuse, prune, quantize.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False)


@app.command()
def optimize(
    model: Annotated[str, typer.Argument(help="input ONNX model")],
    output: Annotated[str, typer.Argument(help="where to write the optimized model")],
    passes: Annotated[str, typer.Option("--passes", "-p", help="pipeline text, e.g. 'cleanup' or "
                                        "'fixed-point(eliminate-identity,eliminate-dead-nodes)'")] = "lossless",
    data: Annotated[str | None, typer.Option(help=".npz file or folder of calibration data")] = None,
    report: Annotated[str | None, typer.Option(help="write the report as JSON to this file")] = None,
    report_md: Annotated[str | None, typer.Option("--report-md", help="write the report as Markdown")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="allow OUTPUT to be the input file")] = False,
    skip: Annotated[list[str] | None, typer.Option(help="switch a pass off by name (repeatable)")] = None,
    dump_dir: Annotated[str | None, typer.Option(help="write the model after each pass that changed it")] = None,
    validate_each: Annotated[bool, typer.Option("--validate-each", help="compare outputs with the original "
                                                "after every pass; name the first that changes them")] = False,
    validate: Annotated[bool, typer.Option("--validate", help="before writing, compare the result with the "
                                           "input (outputs, accuracy if --data has 'label', latency); exit 1 "
                                           "and write nothing if outputs differ")] = False,
    check_changed: Annotated[bool, typer.Option("--check-changed", help="verify each pass's changed bit")] = False,
    reproducer_dir: Annotated[str | None, typer.Option(help="where to write a reproducer on failure "
                                                          "(default: a new folder in the temp dir)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print no summary table")] = False,
) -> None:
    """Optimize MODEL with a pipeline of passes and write OUTPUT (atomically, only if it is valid)."""
    from graphopt.optimizer import optimize as run_optimize

    reproducer_dir = reproducer_dir or os.path.join(tempfile.gettempdir(),
                                                    f"graphopt-reproducer-{os.getpid()}-{int(time.time())}")
    with stderr.status("optimizing", spinner="dots") as status:
        def progress(record):
            status.update(f"{record.path}: {record.nodes_before} -> {record.nodes_after} nodes")

        _, result = run_optimize(model, output, passes=passes, data=data, in_place=in_place, skip=skip or (),
                                 dump_dir=dump_dir, validate_each=validate_each, validate=validate,
                                 check_changed=check_changed, reproducer_dir=reproducer_dir,
                                 progress=progress if not quiet else None)
    if report:
        _write_text(report, result.to_json() + "\n")
    if report_md:
        _write_text(report_md, result.to_markdown())
    if not quiet:
        result.render(stdout)
        stdout.print(f"wrote {output}")


@app.command("passes")
def list_passes() -> None:
    """List the passes with their summaries and options, and the aliases and presets."""
    from rich.table import Table

    from graphopt.pipeline import COMPOSITES, format_value
    from graphopt.registry import default_registry

    registry = default_registry()
    table = Table(title="passes", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("summary")
    table.add_column("options (default)")
    for cls in [*sorted(registry.passes.values(), key=lambda c: c.name), *COMPOSITES.values()]:
        options = "\n".join(f"{o.name}={format_value(o.default)}: {o.help} ({o.describe_allowed()})"
                            for o in cls.options)
        table.add_row(cls.name, cls.summary, options or "-")
    stdout.print(table)
    for name, target in sorted(registry.aliases.items()):
        stdout.print(f"alias  {name} = {target}")
    for name, text in sorted(registry.presets.items()):
        stdout.print(f"preset {name} = {text}")


@app.command("inspect")
def inspect_model(
    model: Annotated[str, typer.Argument(help="ONNX model to describe")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Describe MODEL: IR and opsets, inputs and outputs, op histogram, parameters, size, MACs."""
    from graphopt.inspection import describe
    from graphopt.model import load

    summary = describe(load(model), model)
    if as_json:
        stdout.print_json(json.dumps(summary.to_dict()))
        return
    stdout.print(f"[bold]{model}[/bold]  {summary.file_bytes:,} bytes, IR {summary.ir_version}, opsets "
                 + ", ".join(f"{d} {v}" for d, v in summary.opsets.items())
                 + (f", producer {summary.producer}" if summary.producer else ""))
    for label, values in (("inputs", summary.inputs), ("outputs", summary.outputs)):
        stdout.print(f"{label}: " + "; ".join(map(str, values)), markup=False)
    stdout.print(f"nodes: {summary.nodes}  parameters: {summary.parameters:,}  MACs: {summary.macs:,}"
                 + (f" (+{summary.macs_unknown} nodes with unknown shapes)" if summary.macs_unknown else "")
                 + "  (symbolic dimensions counted as 1)")
    stdout.print("ops: " + ", ".join(f"{op} {count}" for op, count in summary.ops.items()), markup=False)


# Options shared by ``validate`` and ``gate`` (and their keyword names in ``graphopt.validate.validate``).
Data = Annotated[str | None, typer.Option(help=".npz file or folder of evaluation data (default: random inputs "
                                               "from the declared shapes)")]
Labels = Annotated[str | None, typer.Option(help="name of the label array in the data (enables accuracy)")]
Providers = Annotated[str | None, typer.Option(help="comma-separated: cpu, cuda, tensorrt [default: cpu]")]
RequireProvider = Annotated[bool, typer.Option("--require-provider", help="fail (exit 1) when a provider is "
                                               "not available here instead of skipping it")]
Rtol = Annotated[float, typer.Option(help="relative tolerance for output agreement")]
Atol = Annotated[float, typer.Option(help="absolute tolerance for output agreement")]
Threads = Annotated[int, typer.Option(help="onnxruntime intra-op threads (0: its default)")]
Shape = Annotated[list[str] | None, typer.Option("--shape", help="shape of an input for generated data, "
                                                 "e.g. input=1x3x224x224 (repeatable)")]
Rounds = Annotated[int, typer.Option(help="interleaved latency rounds")]
BatchSize = Annotated[int, typer.Option(help="samples per call when timing")]
PerLayer = Annotated[bool, typer.Option("--per-layer", help="compare intermediate tensors; name the first "
                                        "node whose output diverges")]
NoLatency = Annotated[bool, typer.Option("--no-latency", help="skip latency and session-creation timing")]
ReportJson = Annotated[str | None, typer.Option("--report", help="write the report as JSON to this file")]
ReportMd = Annotated[str | None, typer.Option("--report-md", help="write the report as Markdown")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print no table")]


@app.command("validate")
def validate_command(
    reference: Annotated[str, typer.Argument(help="reference ONNX model")],
    candidate: Annotated[str, typer.Argument(help="candidate ONNX model (e.g. the optimized one)")],
    data: Data = None, labels: Labels = None, providers: Providers = None,
    require_provider: RequireProvider = False, rtol: Rtol = 1e-4, atol: Atol = 1e-5, threads: Threads = 1,
    shape: Shape = None, rounds: Rounds = 20, batch_size: BatchSize = 1, per_layer: PerLayer = False,
    no_latency: NoLatency = False, report: ReportJson = None, report_md: ReportMd = None, quiet: Quiet = False,
) -> None:
    """Compare CANDIDATE with REFERENCE per provider: outputs, accuracy, latency, placement. Exit 1 when
    outputs differ beyond --rtol/--atol."""
    from graphopt.errors import ValidationFailure

    validation = _validate(reference, candidate, data, labels, providers, require_provider, rtol, atol, threads,
                           shape, rounds, batch_size, per_layer, not no_latency)
    _write_reports(validation, (), None, report, report_md, quiet)
    differing = [f"{p.provider}: '{o.name}'" for p in validation.ran() for o in p.outputs if not o.within_tolerance]
    if differing:
        raise ValidationFailure(f"outputs differ beyond rtol={rtol}, atol={atol}: " + ", ".join(differing))


@app.command("gate")
def gate_command(
    reference: Annotated[str, typer.Argument(help="reference ONNX model")],
    candidate: Annotated[str, typer.Argument(help="candidate ONNX model")],
    config: Annotated[str | None, typer.Option(help="TOML file with a [gate] table of thresholds")] = None,
    optimization_report: Annotated[str | None, typer.Option(help="the JSON report of the graphopt optimize "
                                                            "run that made CAND (its passes and stats go "
                                                            "into --report)")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="percentage points (needs --labels)")] = None,
    min_cosine: Annotated[float | None, typer.Option(help="lowest cosine similarity of any output")] = None,
    max_abs_error: Annotated[float | None, typer.Option(help="largest absolute error of any output")] = None,
    min_speedup: Annotated[float | None, typer.Option(help="reference / candidate latency, at least")] = None,
    max_size_ratio: Annotated[float | None, typer.Option(help="candidate / reference file size, at most")] = None,
    data: Data = None, labels: Labels = None, providers: Providers = None,
    require_provider: RequireProvider = False, rtol: Rtol = 1e-4, atol: Atol = 1e-5, threads: Threads = 1,
    shape: Shape = None, rounds: Rounds = 20, batch_size: BatchSize = 1, per_layer: PerLayer = False,
    report: ReportJson = None, report_md: ReportMd = None, quiet: Quiet = False,
) -> None:
    """Check CANDIDATE against REFERENCE with thresholds: PASS/FAIL per threshold and provider, exit 1 on
    any FAIL. Thresholds come from the options and/or --config (options win)."""
    from graphopt.errors import ValidationFailure
    from graphopt.validate.gate import Thresholds, evaluate, load_config

    thresholds, settings = load_config(config) if config else (Thresholds(), {})
    thresholds = thresholds.merged({"max_accuracy_drop": max_accuracy_drop, "min_cosine": min_cosine,
                                    "max_abs_error": max_abs_error, "min_speedup": min_speedup,
                                    "max_size_ratio": max_size_ratio})
    thresholds.require_any()
    optimization = _read_optimization_report(optimization_report) if optimization_report else None
    labels = labels or settings.get("labels")
    if thresholds.max_accuracy_drop is not None and not labels:
        raise UsageError("--max-accuracy-drop needs --labels (and --data holding that label array)")
    validation = _validate(reference, candidate, data, labels, providers or settings.get("providers"),
                           require_provider or bool(settings.get("require_provider")), rtol, atol, threads,
                           shape, rounds, batch_size, per_layer, thresholds.min_speedup is not None)
    verdicts = evaluate(validation, thresholds)
    _write_reports(validation, verdicts, optimization, report, report_md, quiet)
    failed = [v for v in verdicts if not v.passed]
    if failed:
        raise ValidationFailure("gate FAILED: " + "; ".join(
            f"{v.check}{f'[{v.provider}]' if v.provider else ''} {_format(v.value)} vs limit {_format(v.limit)}"
            for v in failed))


@app.command("lint")
def lint_command(
    model: Annotated[str, typer.Argument(help="quantized (QDQ) ONNX model")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of lines")] = False,
) -> None:
    """Check MODEL's Q/DQ nodes against TensorRT's explicit-quantization rules (no TensorRT needed).
    Exit 1 when a rule that makes TensorRT reject the model or compute something else is broken."""
    from graphopt.errors import ValidationFailure
    from graphopt.model import load
    from graphopt.validate.tensorrt_lint import lint_tensorrt

    findings = lint_tensorrt(load(model))
    if as_json:
        stdout.print_json(json.dumps([f.to_dict() for f in findings]))
    else:
        for finding in findings:
            stdout.print(f"{finding.severity}: [{finding.rule}] {finding.node}: {finding.message}", markup=False)
        stdout.print(f"{len(findings)} finding(s) against TensorRT's QDQ rules")
    errors = sum(f.severity == "error" for f in findings)
    if errors:
        raise ValidationFailure(f"{errors} TensorRT QDQ error(s) in {model}")


@app.command("prune-sensitivity")
def prune_sensitivity_command(
    model: Annotated[str, typer.Argument(help="ONNX model (best after lossless, so BatchNorms are folded)")],
    data: Annotated[str, typer.Option(help=".npz file or folder of data to measure on")],
    labels: Labels = None,
    ratios: Annotated[str, typer.Option(help="comma-separated pruning ratios, each in (0, 1)")] = "0.25,0.5,0.75",
    criterion: Annotated[str, typer.Option(help="l1, l2, bn-scale or activation")] = "l1",
    reconstruct: Annotated[bool, typer.Option("--reconstruct", help="re-fit after pruning each group "
                                              "(slower; shows what reconstruction recovers)")] = False,
    samples: Annotated[int, typer.Option(help="samples measured (and used for the re-fit)", min=1)] = 256,
    round_to: Annotated[int, typer.Option(help="kept channel counts rounded up to a multiple of this",
                                          min=1)] = 8,
    as_json: Annotated[str | None, typer.Option("--json", help="write the table as JSON to this file")] = None,
    quiet: Quiet = False,
) -> None:
    """Prune each channel group of MODEL alone at each ratio and report the output error (and accuracy with
    --labels), so ratios can be chosen before pruning. Nothing is written but the optional JSON."""
    from graphopt.data import load_data
    from graphopt.errors import UsageError
    from graphopt.model import load
    from graphopt.pruning.selection import CRITERIA
    from graphopt.pruning.sensitivity import sensitivity

    try:
        values = [float(r) for r in ratios.split(",")]
    except ValueError:
        values = []
    if not values or not all(0 < r < 1 for r in values):
        raise UsageError(f"--ratios must be numbers in (0, 1) separated by commas, got {ratios!r}")
    if criterion not in CRITERIA:
        raise UsageError(f"--criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    loaded = load(model)
    dataset = load_data(data, loaded)
    if labels is not None and labels not in dataset.extras:
        raise UsageError(f"no array '{labels}' in the data (it has: {', '.join(sorted(dataset.extras)) or 'none'})")
    table = sensitivity(loaded, dataset, values, criterion, dataset.extras.get(labels) if labels else None,
                        reconstruct, samples, round_to)
    if as_json:
        _write_text(as_json, json.dumps(table.to_dict(), indent=2))
    if not quiet:
        _print_sensitivity(table, values)


def _print_sensitivity(table, ratios: list[float]) -> None:
    from rich.table import Table

    accuracy = table.baseline_accuracy is not None
    grid = Table(title=f"prune-sensitivity ({table.criterion}, {table.samples} samples"
                       + (f", baseline accuracy {table.baseline_accuracy:.2f}%" if accuracy else "") + ")")
    grid.add_column("group (producers)", overflow="fold", ratio=2)
    grid.add_column("channels", justify="right")
    for ratio in ratios:
        grid.add_column(f"ratio {ratio:g}: " + ("accuracy / " if accuracy else "") + "cosine", justify="right",
                        ratio=1)
    for group in table.groups:
        name = "+".join(group.producers)
        if group.declined:
            grid.add_row(name, str(group.channels), *[f"declined: {group.declined}"] + [""] * (len(ratios) - 1))
            continue
        grid.add_row(name, str(group.channels), *[
            (f"{c.accuracy:.2f}% / " if c.accuracy is not None else "") + f"{c.cosine:.4f}" for c in group.cells])
    stdout.print(grid)


def _validate(reference, candidate, data, labels, providers, require_provider, rtol, atol, threads, shape,
              rounds, batch_size, per_layer, latency):
    from graphopt.validate.providers import SessionSettings
    from graphopt.validate.validation import validate

    with stderr.status("validating", spinner="dots"):
        return validate(reference, candidate, data, labels=labels, providers=providers or "cpu",
                        require_providers=require_provider, rtol=rtol, atol=atol,
                        settings=SessionSettings(threads=threads), shapes=_parse_shapes(shape or ()),
                        rounds=rounds, batch_size=batch_size, latency=latency, per_layer=per_layer)


def _read_optimization_report(path: str) -> dict:
    """The ``graphopt.report/1`` JSON that ``optimize --report`` wrote; anything else is a UsageError."""
    from graphopt.report import SCHEMA

    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise UsageError(f"{path}: cannot read the optimization report ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not JSON ({error})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UsageError(f"{path}: not a graphopt optimize report (schema {SCHEMA})")
    return data


def _parse_shapes(texts: list[str]) -> dict[str, list[int]]:
    """``["input=1x3x224x224"]`` -> ``{"input": [1, 3, 224, 224]}``; a malformed one is a UsageError."""
    shapes = {}
    for text in texts:
        name, _, dims = text.rpartition("=")
        try:
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            name = ""
        if not name:
            raise UsageError(f"--shape {text}: expected NAME=D1xD2x..., e.g. input=1x3x224x224")
    return shapes


def _write_reports(validation, verdicts, optimization, report, report_md, quiet) -> None:
    from graphopt.validate import report as validation_report

    if report:
        _write_text(report, validation_report.to_json(validation, verdicts, optimization) + "\n")
    if report_md:
        _write_text(report_md, validation_report.to_markdown(validation, verdicts))
    if not quiet:
        validation_report.render(validation, stdout, verdicts)


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _write_text(path: str, text: str) -> None:
    from graphopt.model import check_writable

    check_writable(path)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: runs the app and maps errors to exit codes. Usage errors that
    typer catches itself (unknown option, missing argument) exit with 2 as well."""
    try:
        app(args=argv, prog_name="graphopt")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else EXIT_USAGE)
    except GraphoptError as error:
        if error.exit_code == EXIT_INTERNAL:
            traceback.print_exc()
        print(f"graphopt: error: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    except Exception:
        traceback.print_exc()
        print("graphopt: internal error (exit code 3); please report it with the traceback above",
              file=sys.stderr)
        return EXIT_INTERNAL
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
