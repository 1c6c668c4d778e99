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

from graphopt.errors import EXIT_INTERNAL, EXIT_USAGE, GraphoptError, one_line

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
                                 dump_dir=dump_dir, validate_each=validate_each, check_changed=check_changed,
                                 reproducer_dir=reproducer_dir, progress=progress if not quiet else None)
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
