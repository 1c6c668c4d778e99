"""graphopt's ``lossless`` preset side by side with onnxsim and onnxslim, on the same models in the same run.

    python benchmarks/bench_lossless.py [--models NAME|GROUP|PATTERN ...] [--tools graphopt onnxsim onnxslim]
                                        [--rounds 20] [--out benchmarks/results/lossless.md]
                                        [--no-latency] [--repeat N]

Models (``corpus.py``): ``small`` (models/*.onnx), ``light`` (the onnx package's light models) and
``standard`` (ResNet-50, MobileNetV2, BERT-base from ``models/build_standard.py``, built first if missing).

Per model:

1. Optimize, each tool in its own fresh process (``isolated.py``), one after the other:
   ``graphopt.optimize(path, passes="lossless")`` (whatever ``lossless`` means in the installed graphopt at
   run time; the pipeline text that ran is recorded), ``onnxsim.simplify(path)`` and ``onnxslim.slim(path)``,
   all with their defaults. Recorded: wall time of that call (path in, ModelProto out: loading is
   included for every tool; imports are not, graphopt's pass modules included, which it imports on first
   use), the process's peak RSS (``ru_maxrss``) when the call returned (before the
   result is saved), and the same for a process that only does ``onnx.load`` (the ``original`` column).
   A tool that raises, crashes or times out is recorded as ``failed: <reason>`` and the run goes on.
2. Measure, in one more process holding the original and every optimized model: top-level node count,
   file size, whether ``onnx.checker`` accepts it; then outputs on the same random inputs
   (``corpus.random_feeds``, batch 1, sequence 128) with onnxruntime's optimizations off, against the
   original's: the largest absolute difference, divided by the original output's largest magnitude, over
   1e-4 is a MISMATCH (ints, bools: exact); then, for ORT_ENABLE_BASIC and ORT_ENABLE_ALL, with
   intra_op=1, inter_op=1, sequential execution on the CPU provider: session-creation time (median of
   ``--session-rounds`` interleaved creations) and latency (``timing.py``: warm-up, then rounds in which
   original, graphopt, onnxsim, onnxslim each run once in rotating order; per-round sample = mean of a
   block of calls lasting at least ``--min-block-ms``; median, p90, and the paired ratio
   original / optimized = median over rounds of the two samples' ratio, > 1 = faster than the original).

Writes ``<out>.md`` (the tables, also printed) and ``<out>.json`` (every raw number, samples included).
Defaults keep a full run at 12 minutes on a lightly shared 2-core machine (22 under heavy load): 20 rounds
per level, but a model stops after the round that passes ``--latency-budget`` seconds (60) per level, never
before 5 rounds (only VGG-19 can get there); the tables say how many rounds each model got.
``--render run.json`` rewrites the Markdown from a run's JSON without measuring.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import isolated  # noqa: E402

TOOLS = ("graphopt", "onnxsim", "onnxslim")
ORIGINAL = "original"
LEVELS = ("ORT_ENABLE_BASIC", "ORT_ENABLE_ALL")
LEVEL_LABEL = {"ORT_ENABLE_BASIC": "BASIC", "ORT_ENABLE_ALL": "ALL"}
MISMATCH_TOLERANCE = 1e-4
DEFAULT_OUT = HERE / "results" / "lossless.md"
MIB = 2**20


# ============================================================================================ worker side


def _optimize(tool: str, model_path: str, out_path: str) -> dict[str, Any]:
    """One tool on one model (runs in its own process). Loading the model is inside the timed call."""
    import onnx

    extra: dict[str, Any] = {}
    if tool == ORIGINAL:
        rss_imports = isolated.current_rss_bytes()
        start = time.perf_counter()
        model = onnx.load(model_path)
        seconds = time.perf_counter() - start
    elif tool == "graphopt":
        import graphopt
        from graphopt.registry import default_registry

        default_registry()  # graphopt imports its pass modules on first use: an import, like the others' above
        rss_imports = isolated.current_rss_bytes()
        start = time.perf_counter()
        model, report = graphopt.optimize(model_path, passes="lossless")
        seconds = time.perf_counter() - start
        extra = {"pipeline": report.pipeline, "version": graphopt.__version__,
                 "passes": [{"name": row.name, "runs": row.runs, "seconds": row.seconds, "node_delta": row.node_delta,
                             "stats": row.stats} for row in report.summary()],
                 "diagnostics": list(report.diagnostics)}
    elif tool == "onnxsim":
        import onnxsim

        rss_imports = isolated.current_rss_bytes()
        start = time.perf_counter()
        model, check_ok = onnxsim.simplify(model_path)
        seconds = time.perf_counter() - start
        if not check_ok:
            raise RuntimeError("onnxsim reports that its own check failed")
        extra = {"version": onnxsim.__version__}
    elif tool == "onnxslim":
        import onnxslim

        rss_imports = isolated.current_rss_bytes()
        start = time.perf_counter()
        model = onnxslim.slim(model_path)
        seconds = time.perf_counter() - start
        if model is None:
            raise RuntimeError("onnxslim returned no model")
        extra = {"version": onnxslim.__version__}
    else:
        raise ValueError(f"unknown tool {tool}")
    import resource

    peak_after_call = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    save_seconds = None
    if tool != ORIGINAL:
        start = time.perf_counter()
        _save(model, out_path)
        save_seconds = time.perf_counter() - start
    return {"seconds": seconds, "save_seconds": save_seconds, "rss_after_imports_bytes": rss_imports,
            "peak_rss_after_call_bytes": peak_after_call, **extra}


def _save(model, path: str) -> None:
    import onnx

    try:
        small = model.ByteSize() < 2**31 - 2**20
    except ValueError:  # protobuf refuses to size a message over 2 GB
        small = False
    if small:
        onnx.save_model(model, path)
    else:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(path).name + ".data")


def _files_size(path: Path) -> int:
    """The model file plus any external-data files it refers to."""
    import onnx

    size = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations |= {entry.value for entry in tensor.external_data if entry.key == "location"}
    return size + sum((path.parent / location).stat().st_size for location in locations)


def _session(path: str, level: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _compare(reference: dict, candidate: dict) -> dict[str, Any]:
    """Largest |difference| and that divided by the reference's largest magnitude, over all outputs."""
    import numpy as np

    worst_abs, worst_rel, problems = 0.0, 0.0, []
    for name, ref in reference.items():
        got = candidate.get(name)
        if got is None:
            problems.append(f"output '{name}' missing")
            continue
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape or ref.dtype != got.dtype:
            problems.append(f"output '{name}' is {got.dtype}{list(got.shape)}, expected {ref.dtype}{list(ref.shape)}")
            continue
        if ref.dtype.kind not in "fc":
            if not np.array_equal(ref, got):
                problems.append(f"output '{name}' differs (exact comparison)")
            continue
        if not np.array_equal(np.isnan(ref), np.isnan(got)):
            problems.append(f"output '{name}' has NaN where the original has not, or the reverse")
            continue
        finite = np.isfinite(ref) & np.isfinite(got)
        if not np.array_equal(ref[~finite], got[~finite]):
            problems.append(f"output '{name}' differs in its infinities")
        if not finite.any():
            continue
        diff = float(np.abs(got[finite].astype(np.float64) - ref[finite]).max())
        scale = float(np.abs(ref[finite]).max())
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))
    mismatch = bool(problems) or worst_rel > MISMATCH_TOLERANCE
    return {"max_abs_diff": worst_abs, "max_rel_diff": worst_rel, "mismatch": mismatch, "problems": problems}


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Node counts, sizes, output check and interleaved latency of the original and its optimized versions."""
    import onnx

    from graphopt.validate.latency import measure_interleaved, time_interleaved_once

    paths: dict[str, str] = spec["paths"]  # variant -> file; ORIGINAL first
    result: dict[str, Any] = {"variants": {}, "levels": {}}
    variants: dict[str, dict[str, Any]] = result["variants"]
    original = onnx.load(paths[ORIGINAL], load_external_data=False)
    feeds = corpus.random_feeds(original, seed=spec["seed"])
    result["feeds"] = {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in feeds.items()}
    input_names = {}
    for name, path in paths.items():
        model = onnx.load(path, load_external_data=False)
        info: dict[str, Any] = {"nodes": len(model.graph.node), "bytes": _files_size(Path(path)),
                                "ops": dict(sorted(_histogram(model).items()))}
        input_names[name] = [value.name for value in corpus.model_inputs(model)]
        del model
        try:
            onnx.checker.check_model(path)
            info["checker"] = "ok"
        except Exception as error:  # noqa: BLE001 - recorded, not fatal: onnxruntime may still run it
            info["checker"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
        variants[name] = info

    def feeds_for(name: str) -> dict:
        missing = [n for n in input_names[name] if n not in feeds]
        if missing:
            raise ValueError(f"input '{missing[0]}' is not an input of the original")
        return {n: feeds[n] for n in input_names[name]}

    # output check with onnxruntime's own optimizations off: the graphs themselves are compared
    reference = None
    usable = []
    for name, path in paths.items():
        try:
            session = _session(path, "ORT_DISABLE_ALL")
            names = [o.name for o in session.get_outputs()]
            outputs = dict(zip(names, session.run(names, feeds_for(name)), strict=True))
            del session
        except Exception as error:  # noqa: BLE001
            variants[name]["error"] = f"onnxruntime: {type(error).__name__}: {_first_line(error)}"
            if name == ORIGINAL:
                return result
            continue
        if name == ORIGINAL:
            reference = outputs
        else:
            variants[name]["check"] = _compare(reference, outputs)
        usable.append(name)

    for level in LEVELS if spec.get("latency", True) else ():
        level_result: dict[str, Any] = {"errors": {}}
        result["levels"][level] = level_result
        def create(name: str, level: str = level):
            try:
                return _session(paths[name], level)
            except Exception as error:  # noqa: BLE001 - reported below, the variant is left out
                return error

        creation, sessions = time_interleaved_once({name: (lambda name=name: create(name)) for name in usable},
                                                   rounds=spec["session_rounds"])
        runnable = []
        for name in usable:  # a variant that cannot be created or run at this level is left out
            try:
                if isinstance(sessions[name], Exception):
                    raise sessions[name]
                sessions[name].run(None, feeds_for(name))
                runnable.append(name)
            except Exception as error:  # noqa: BLE001
                level_result["errors"][name] = f"onnxruntime: {type(error).__name__}: {_first_line(error)}"
        level_result["session_seconds"] = {name: statistics.median(creation[name]) for name in runnable}
        level_result["session_samples_s"] = {name: creation[name] for name in runnable}
        if ORIGINAL not in runnable:
            continue
        candidates = {}
        for name in runnable:
            session, feed = sessions[name], feeds_for(name)
            candidates[name] = lambda session=session, feed=feed: session.run(None, feed)
        run = measure_interleaved(candidates, rounds=spec["rounds"], warmup_rounds=spec["warmup_rounds"],
                                  min_block_seconds=spec["min_block_seconds"], budget_seconds=spec["budget_seconds"],
                                  min_rounds=spec["min_rounds"])
        level_result["latency"] = run.to_dict(reference=ORIGINAL)
        del sessions, candidates
    return result


def _histogram(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else ""


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["optimize", "measure"])
    parser.add_argument("--result", required=True)
    parser.add_argument("--tool")
    parser.add_argument("--model")
    parser.add_argument("--output")
    parser.add_argument("--spec")
    args = parser.parse_args(argv)
    if args.kind == "optimize":
        return isolated.worker_main(args.result, lambda: _optimize(args.tool, args.model, args.output))
    return isolated.worker_main(args.result, lambda: _measure(json.loads(Path(args.spec).read_text())))


# ============================================================================================ parent side


def _run_worker(arguments: list[str], work_dir: Path, label: str, timeout: float) -> isolated.IsolatedResult:
    result_path, log_path = work_dir / f"{label}.json", work_dir / f"{label}.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", *arguments, "--result", str(result_path)]
    return isolated.run_isolated(argv, result_path, log_path, timeout)


def bench_model(model: corpus.BenchModel, tools: list[str], args: argparse.Namespace, work_dir: Path) -> dict:
    record: dict[str, Any] = {"group": model.group, "path": str(model.path), "optimize": {}, "measure": None,
                              "original_bytes": model.path.stat().st_size}
    paths = {ORIGINAL: str(model.path)}
    for tool in [ORIGINAL, *tools]:
        output = work_dir / f"{model.name}.{tool}.onnx"
        runs = []
        for _ in range(args.repeat):  # each in a fresh process; the run with the median time is kept
            runs.append(_run_worker(["optimize", "--tool", tool, "--model", str(model.path), "--output",
                                     str(output)], work_dir, f"{model.name}.{tool}.optimize", args.timeout))
            if not runs[-1].ok:
                break
        outcome = runs[-1]
        if outcome.ok and len(runs) > 1:
            runs.sort(key=lambda run: run.payload["seconds"])
            outcome = runs[len(runs) // 2]
        entry: dict[str, Any] = {"process_wall_seconds": outcome.wall_seconds,
                                 "process_peak_rss_bytes": outcome.peak_rss_bytes}
        if outcome.ok:
            entry.update(outcome.payload)
            if len(runs) > 1:
                entry["seconds_runs"] = [run.payload["seconds"] for run in runs]
                entry["peak_rss_after_call_bytes_runs"] = [run.payload["peak_rss_after_call_bytes"] for run in runs]
            if tool != ORIGINAL:
                paths[tool] = str(output)
            print(f"    {tool:9s} {entry['seconds']:8.2f} s  peak {entry['peak_rss_after_call_bytes'] / MIB:7.0f} MiB",
                  flush=True)
        else:
            entry["error"] = outcome.error
            entry["log"] = outcome.log_path
            print(f"    {tool:9s} failed: {outcome.error}", flush=True)
        record["optimize"][tool] = entry
    if ORIGINAL not in paths or "error" in record["optimize"][ORIGINAL]:
        record["error"] = record["optimize"][ORIGINAL].get("error", "cannot load")
        return record
    spec = {"paths": paths, "seed": args.seed, "rounds": args.rounds, "warmup_rounds": args.warmup_rounds,
            "min_rounds": min(args.min_rounds, args.rounds), "min_block_seconds": args.min_block_ms / 1000,
            "budget_seconds": args.latency_budget, "session_rounds": args.session_rounds,
            "latency": not args.no_latency}
    spec_path = work_dir / f"{model.name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    outcome = _run_worker(["measure", "--spec", str(spec_path)], work_dir, f"{model.name}.measure",
                          args.timeout * 3)
    if outcome.ok:
        record["measure"] = outcome.payload
        record["measure"]["process_wall_seconds"] = outcome.wall_seconds
        record["measure"]["process_peak_rss_bytes"] = outcome.peak_rss_bytes
    else:
        record["error"] = f"measurement failed: {outcome.error}"
        record["measure_log"] = outcome.log_path
    return record


def environment() -> dict[str, Any]:
    def version(module: str) -> str:
        try:
            completed = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__version__)"],
                                       capture_output=True, text=True, timeout=120)
            return completed.stdout.strip() or f"unavailable ({_tail(completed.stderr)})"
        except (OSError, subprocess.SubprocessError) as error:
            return f"unavailable ({error})"

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "-C", str(corpus.REPO), "describe", "--always", "--dirty"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "graphopt_commit": commit,
            **{name: version(name) for name in ("graphopt", "onnx", "onnxruntime", "onnxsim", "onnxslim")}}


def _tail(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else "no output"


# ------------------------------------------------------------------------------------------ rendering


def _fmt_size(size: float | None) -> str:
    if size is None:
        return "-"
    if size < 1024:
        return f"{size:.0f} B"
    if size < MIB:
        return f"{size / 1024:.1f} KiB"
    return f"{size / MIB:.1f} MiB"


def _fmt_ms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    ms = seconds * 1000
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None or not math.isfinite(ratio) else f"{ratio:.2f}x"


def _short(reason: str, width: int = 48) -> str:
    reason = reason.replace("|", "/").replace("\n", " ")
    return reason if len(reason) <= width else reason[: width - 1] + "…"


class Table:
    """Rows of model x variant cells: each cell is rendered by a function of (model record, variant)."""

    def __init__(self, results: dict[str, dict], variants: list[str]) -> None:
        self.results, self.variants = results, variants

    def failure(self, record: dict, variant: str, measured: bool = True) -> str | None:
        """Why there is no number for this variant, or None; ``measured=False``: only the optimizer's run."""
        entry = record["optimize"].get(variant, {})
        if "error" in entry:
            return f"failed: {_short(entry['error'])}"
        if not measured:
            return None if entry else "-"
        if record.get("error"):
            return f"failed: {_short(record['error'])}" if variant == ORIGINAL else "-"
        info = (record.get("measure") or {}).get("variants", {}).get(variant)
        if info is None:
            return "-"
        if "error" in info:
            return f"failed: {_short(info['error'])}"
        return None

    def render(self, title: str, cell, note: str = "", extra_columns=(), measured: bool = True) -> str:
        header = ["model", *(name for name, _ in extra_columns), *self.variants]
        lines = [f"### {title}", ""]
        if note:
            lines += [note, ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for model, record in self.results.items():
            cells = [model, *(fn(record) for _, fn in extra_columns)]
            for variant in self.variants:
                reason = self.failure(record, variant, measured)
                if reason is None:
                    text = cell(record, variant)
                    if variant != ORIGINAL and _mismatch(record, variant):
                        text += " ⚠"
                    cells.append(text)
                else:
                    cells.append(reason)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _mismatch(record: dict, variant: str) -> bool:
    check = (record.get("measure") or {}).get("variants", {}).get(variant, {}).get("check")
    return bool(check and check["mismatch"])


def _variant(record: dict, variant: str) -> dict:
    return record["measure"]["variants"][variant]


def _latency(record: dict, level: str) -> dict | None:
    return (record.get("measure") or {}).get("levels", {}).get(level, {}).get("latency")


def render_markdown(results: dict[str, dict], tools: list[str], env: dict, settings: dict, total: float) -> str:
    variants = [ORIGINAL, *tools]
    table = Table(results, variants)
    out = [
        "# Lossless optimization: graphopt vs onnxsim vs onnxslim",
        "",
        f"Run {env['date']} on {env['cpu']} ({env['cpu_count']} cores, shared), Python {env['python']}; "
        f"graphopt {env['graphopt']} ({env['graphopt_commit']}), onnx {env['onnx']}, onnxruntime "
        f"{env['onnxruntime']}, onnxsim {env['onnxsim']}, onnxslim {env['onnxslim']}. "
        f"graphopt pipeline: `{_pipeline(results)}`. Whole run: {total / 60:.1f} min. "
        f"Made by `python benchmarks/bench_lossless.py` (see benchmarks/README.md); raw numbers in the JSON "
        f"next to this file.",
        "",
    ]
    mismatches = [(model, variant, _variant(record, variant)["check"]) for model, record in results.items()
                  for variant in tools if _mismatch(record, variant)]
    if mismatches:
        out += ["**OUTPUT MISMATCHES** (largest |difference| over 1e-4 of the output's largest magnitude, "
                "ORT optimizations off):", ""]
        out += [f"- **{model} / {variant}**: max abs diff {c['max_abs_diff']:.3g}, relative {c['max_rel_diff']:.3g}"
                + (f"; {'; '.join(c['problems'])}" if c["problems"] else "") for model, variant, c in mismatches]
        out.append("")
    else:
        out += ["No output mismatches: every optimized model that ran agrees with its original within 1e-4 of "
                "the output's scale.", ""]
    out += [_summary(results, tools), ""]
    out.append(table.render(
        "Node count (top-level nodes)",
        lambda r, v: str(_variant(r, v)["nodes"]) if v == ORIGINAL
        else f"{_variant(r, v)['nodes']} ({_variant(r, v)['nodes'] - _variant(r, ORIGINAL)['nodes']:+d})"))
    out.append(table.render("File size", lambda r, v: _fmt_size(_variant(r, v)["bytes"]),
                            note="Light models store no weights (ConstantOfShape makes them at run time); a "
                                 "tool that folds those nodes writes the weights into the file."))

    repeat = settings.get("repeat", 1)
    out.append(table.render(
        "Optimizer wall time (s)", lambda r, v: f"{r['optimize'][v]['seconds']:.3g}",
        note="Each tool runs in a fresh process; the time is of the one call, path in, ModelProto out "
             "(loading included, saving not). The original column is a process that only runs `onnx.load`."
             + (f" Median of {repeat} runs (peak RSS below: of that run)." if repeat > 1 else ""),
        measured=False))

    def memory_cell(record: dict, variant: str) -> str:
        entry = record["optimize"][variant]
        peak = entry["peak_rss_after_call_bytes"]
        size = record["original_bytes"]
        return (f"{peak / MIB:.0f} ({(peak - entry['rss_after_imports_bytes']) / MIB:+.0f}) "
                f"[{peak / size:.3g}x]")

    out.append(table.render(
        "Optimizer peak RSS, MiB: peak (+ over the process after its imports) [peak / original file size]",
        memory_cell,
        note="Peak RSS is the tool process's ru_maxrss when the call returned; it includes the interpreter and "
             "the tool's imports (onnxsim's alone hold ~320 MiB), hence the increase over the RSS measured "
             "just before the call.", measured=False))

    def session_cell(record: dict, variant: str) -> str:
        parts = []
        for level in LEVELS:
            seconds = record["measure"]["levels"].get(level, {}).get("session_seconds", {}).get(variant)
            parts.append(_fmt_ms(seconds))
        return " / ".join(parts)

    if settings.get("no_latency"):
        out += ["Session creation and latency were not measured (`--no-latency`).", ""]
    else:
        out.append(table.render(f"Session creation (ms, median of {settings['session_rounds']}): BASIC / ALL",
                                session_cell))
    for level in () if settings.get("no_latency") else LEVELS:
        def latency_cell(record: dict, variant: str, level: str = level) -> str:
            latency = _latency(record, level)
            error = (record.get("measure") or {}).get("levels", {}).get(level, {}).get("errors", {}).get(variant)
            if error:
                return f"failed: {_short(error)}"
            if latency is None or variant not in latency["timings"]:
                return "-"
            timing = latency["timings"][variant]
            text = f"{_fmt_ms(timing['median_s'])} ({_fmt_ms(timing['p90_s'])})"
            if variant != ORIGINAL:
                text += f" **{_fmt_ratio(latency['paired_ratio_vs_original'].get(variant))}**"
            return text

        def rounds_cell(record: dict, level: str = level) -> str:
            latency = _latency(record, level)
            return str(latency["rounds"]) if latency else "-"

        out.append(table.render(
            f"CPU latency at {level} (ms: median (p90); original / optimized)", latency_cell,
            extra_columns=[("rounds", rounds_cell)],
            note="1 thread (intra_op=1, inter_op=1, sequential), batch 1, rounds interleaved in rotating order "
                 "after warm-up. The ratio is the median over rounds of original / optimized time in the same "
                 "round: above 1.00x the optimized model is faster."))

    def check_cell(record: dict, variant: str) -> str:
        if variant == ORIGINAL:
            return "reference"
        check = _variant(record, variant).get("check")
        if check is None:
            return "-"
        text = f"{check['max_abs_diff']:.2g} ({check['max_rel_diff']:.2g})"
        return f"**MISMATCH** {text}" if check["mismatch"] else text

    out.append(table.render("Outputs vs the original: max abs diff (relative to output scale)", check_cell,
                            note="Same random inputs, ORT_DISABLE_ALL. Over 1e-4 relative is a MISMATCH."))
    checker = [(m, v, _variant(r, v)["checker"]) for m, r in results.items() for v in variants
               if r.get("measure") and v in r["measure"]["variants"] and _variant(r, v).get("checker") != "ok"]
    if checker:
        out += ["### onnx.checker complaints", ""] + [f"- {m} / {v}: {c}" for m, v, c in checker] + [""]
    failures = [(m, v, e["error"]) for m, r in results.items() for v, e in r["optimize"].items() if "error" in e]
    failures += [(m, "measure", r["error"]) for m, r in results.items() if r.get("error")]
    if failures:
        out += ["### Failures (full reasons)", ""] + [f"- {m} / {v}: {e}" for m, v, e in failures] + [""]
    out += [f"Settings: {json.dumps(settings)}", ""]
    return "\n".join(out)


def _pipeline(results: dict[str, dict]) -> str:
    for record in results.values():
        pipeline = record["optimize"].get("graphopt", {}).get("pipeline")
        if pipeline:
            return pipeline
    return "lossless (no successful graphopt run)"


def _geomean(values: list[float]) -> float:
    values = [v for v in values if v and math.isfinite(v) and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def _summary(results: dict[str, dict], tools: list[str]) -> str:
    lines = ["### Summary", "",
             "| tool | optimized | failed | mismatched | nodes (sum) | fewest nodes (of models all tools ran) "
             "| geo-mean speedup BASIC | geo-mean speedup ALL | optimizer time (sum) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    complete = [r for r in results.values() if r.get("measure")
                and all(v in r["measure"]["variants"] and "error" not in r["measure"]["variants"][v]
                        for v in [ORIGINAL, *tools])]
    original_nodes = sum(r["measure"]["variants"][ORIGINAL]["nodes"] for r in results.values() if r.get("measure"))
    lines.append(f"| original | {len(results)} | - | - | {original_nodes} | - | 1.00x | 1.00x | - |")
    for tool in tools:
        ok = [r for r in results.values() if r.get("measure") and tool in r["measure"]["variants"]
              and "error" not in r["measure"]["variants"][tool]]
        failed = sum(1 for r in results.values() if "error" in r["optimize"].get(tool, {})
                     or (r.get("measure") and "error" in r["measure"]["variants"].get(tool, {})))
        mismatched = sum(1 for r in results.values() if _mismatch(r, tool))
        nodes = sum(r["measure"]["variants"][tool]["nodes"] for r in ok)
        fewest = sum(1 for r in complete if r["measure"]["variants"][tool]["nodes"]
                     == min(r["measure"]["variants"][t]["nodes"] for t in tools))
        speedups = []
        for level in LEVELS:
            ratios = [(_latency(r, level) or {}).get("paired_ratio_vs_original", {}).get(tool) for r in ok]
            speedups.append(_fmt_ratio(_geomean([x for x in ratios if x is not None])))
        seconds = sum(r["optimize"][tool]["seconds"] for r in ok)
        lines.append(f"| {tool} | {len(ok)} | {failed} | {mismatched} | {nodes} | {fewest} / {len(complete)} "
                     f"| {speedups[0]} | {speedups[1]} | {seconds:.1f} s |")
    return "\n".join(lines)


# ================================================================================================ main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", metavar="NAME", help="model names, groups (small, light, "
                        "standard) or shell patterns; default: all")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--rounds", type=int, default=20, help="latency rounds per level, at most (default 20)")
    parser.add_argument("--min-rounds", type=int, default=5, help="rounds a model gets even past the budget")
    parser.add_argument("--warmup-rounds", type=int, default=2)
    parser.add_argument("--latency-budget", type=float, default=60.0,
                        help="seconds of latency rounds per model and level before stopping early (default 60)")
    parser.add_argument("--min-block-ms", type=float, default=10.0,
                        help="each latency sample averages calls lasting at least this long (default 10 ms)")
    parser.add_argument("--session-rounds", type=int, default=3, help="session creations timed per level")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip session-creation and latency measurement (optimizer time and memory, node "
                             "counts, sizes and the output check only)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each optimizer N times (fresh processes) and keep the run with the median "
                             "time (default 1); all times and peaks are in the JSON")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per optimizer run (default 900)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Markdown output (default {DEFAULT_OUT}); "
                        "the JSON goes next to it")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep the optimized models (in <out stem>_models/) instead of deleting them")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the Markdown from an earlier run's JSON (no measuring)")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        markdown = render_markdown(saved["models"], saved["settings"]["tools"], saved["environment"],
                                   saved["settings"], saved.get("seconds", math.nan))
        args.out.write_text(markdown)
        print(markdown)
        return 0

    start = time.perf_counter()
    models = corpus.select(corpus.discover(), args.models)
    build_problems = corpus.ensure_standard(models)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    if args.keep_models:
        work_dir = args.out.parent / f"{args.out.stem}_models"
        work_dir.mkdir(exist_ok=True)
    else:
        work_dir = Path(tempfile.mkdtemp(prefix="bench_lossless_", dir=args.out.parent))
    env = environment()
    settings = {key: getattr(args, key) for key in ("rounds", "min_rounds", "warmup_rounds", "latency_budget",
                                                    "min_block_ms", "session_rounds", "timeout", "seed",
                                                    "no_latency", "repeat")}
    settings["tools"] = args.tools
    print(f"{len(models)} models, tools {', '.join(args.tools)}; work folder {work_dir}", flush=True)
    results: dict[str, dict] = {}
    try:
        for index, model in enumerate(models, 1):
            print(f"[{index}/{len(models)}] {model.name} ({model.group}) "
                  f"[{(time.perf_counter() - start) / 60:.1f} min]", flush=True)
            if model.name in build_problems or not model.path.exists():
                reason = build_problems.get(model.name, f"{model.path} does not exist")
                results[model.name] = {"group": model.group, "path": str(model.path),
                                       "optimize": {ORIGINAL: {"error": reason}}, "measure": None, "error": reason}
                continue
            results[model.name] = bench_model(model, args.tools, args, work_dir)
            _print_latency(results[model.name], args.tools)
            if not args.keep_models:
                for path in work_dir.glob(f"{model.name}.*.onnx*"):
                    path.unlink()
            json_path.write_text(json.dumps({"environment": env, "settings": settings, "models": results,
                                             "complete": False}, indent=1, default=str))
    finally:
        if not args.keep_models:
            shutil.rmtree(work_dir, ignore_errors=True)
    total = time.perf_counter() - start
    json_path.write_text(json.dumps({"environment": env, "settings": settings, "models": results,
                                     "seconds": total, "complete": True}, indent=1, default=str))
    markdown = render_markdown(results, args.tools, env, settings, total)
    args.out.write_text(markdown)
    print()
    print(markdown)
    print(f"wrote {args.out} and {json_path} in {total / 60:.1f} min")
    return 0


def _print_latency(record: dict, tools: list[str]) -> None:
    if record.get("error"):
        print(f"    error: {record['error']}", flush=True)
        return
    for level in LEVELS:
        latency = _latency(record, level)
        if not latency:
            continue
        parts = [f"orig {_fmt_ms(latency['timings'][ORIGINAL]['median_s'])} ms"]
        parts += [f"{t} {_fmt_ratio(latency['paired_ratio_vs_original'].get(t))}" for t in tools
                  if t in latency["timings"]]
        print(f"    {LEVEL_LABEL[level]:5s} ({latency['rounds']} rounds): " + ", ".join(parts), flush=True)


if __name__ == "__main__":
    sys.exit(main())
