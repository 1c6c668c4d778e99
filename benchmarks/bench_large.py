"""graphopt on a model over 2 GB (weights in an external data file): time, peak memory, and a check of the result.

    python benchmarks/bench_large.py                        # builds a 2.2 GiB model in a temporary folder
    python benchmarks/bench_large.py --model big.onnx       # an existing model
    python benchmarks/bench_large.py --gigabytes 3 --work-dir /tmp/large --keep
    python benchmarks/bench_large.py --variants lossless --out /tmp/large.md

Issue 7 asks that graphopt optimize models over protobuf's 2 GB limit, writing the result with its external
data beside it, with a peak resident set at most 1.5x the model's size. Steps, each in a fresh process
(``isolated.py``: the process's own ``ru_maxrss`` from ``os.wait4``, a timeout that kills it):

1. **Build** (unless ``--model``): ``models/build_large.py`` writes ``large.onnx`` + ``large.onnx.data``
   (``--gigabytes`` GiB of float32 weights, default 2.2: 18 residual MLP blocks of hidden 4096 with
   BatchNormalization, MatMul + Add, a foldable Mul and a written-out LayerNorm for ``lossless`` to fold).
2. **Reference**: onnxruntime runs the input model on ``--batch`` (8) standard-normal samples (seed 0).
3. **Optimize**, per variant: ``graphopt.optimize(model, out, passes=...)``, exactly what ``graphopt optimize
   model out --passes ...`` runs: ``lossless`` and ``quantize-qdq(mode=dynamic)`` (``--variants``; also
   ``lossless+dynamic`` = ``lossless,quantize-qdq(mode=dynamic)``). Recorded: the call's wall time (load,
   passes, export, save with the checker and onnxruntime's load check: everything), the process's peak RSS,
   its RSS after imports (the interpreter, onnx, onnxruntime, numpy: not the model's), and, from a process
   sampling its RSS every 10 ms, the peak within each phase: ``load`` (until the first pass starts),
   ``passes``, ``write`` (export, save, checks: after the last pass).
4. **Check**, per variant: the files written next to the output (external data or not), ``onnx.checker`` on
   the path, an onnxruntime session (ORT_ENABLE_ALL, CPU, as deployed) and its outputs on the same samples
   against the reference: largest absolute difference divided by the reference's largest magnitude
   (``lossless``: at most 1e-4, float32 rounding of the folded BatchNorms and fused LayerNorms) and the
   cosine of each output with the reference (quantized variants: above 0.99).

The peak-RSS ratio is the process's peak over the model's size on disk (``.onnx`` + external data).
Writes ``--out`` (``benchmarks/results/large.md``) and the raw numbers next to it (``large.json``). The
work folder (``bench_large_*``, made in ``--work-dir`` or the system's temporary folder) is deleted at the end
unless ``--keep``: it holds the model (when built), every output and the workers' logs, about 2.3 + 2.3 + 0.6
GB at the default size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_lossless  # noqa: E402
import corpus  # noqa: E402
import isolated  # noqa: E402

VARIANTS = {"lossless": "lossless", "dynamic": "quantize-qdq(mode=dynamic)",
            "lossless+dynamic": "lossless,quantize-qdq(mode=dynamic)"}
DEFAULT_VARIANTS = ["lossless", "dynamic"]
TARGET_RATIO = 1.5
LOSSLESS_TOLERANCE = 1e-4  # largest |difference| / largest |reference|, as bench_lossless's MISMATCH
MIN_COSINE = 0.99
DEFAULT_OUT = HERE / "results" / "large.md"
BUILDER = corpus.SMALL_DIR / "build_large.py"
MIB, GIB = 2**20, 2**30


# ============================================================================================ worker side


def _builder():
    spec = importlib.util.spec_from_file_location("build_large", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(path: str, gigabytes: float) -> dict[str, Any]:
    start = time.perf_counter()
    info = _builder().build(path, gigabytes=gigabytes)
    return {**info, "seconds": time.perf_counter() - start}


_SAMPLER = """
import os, sys, time
pid, interval, page = int(sys.argv[1]), float(sys.argv[2]), os.sysconf("SC_PAGE_SIZE")
out = open(sys.argv[3], "w")
while True:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            rss = int(statm.read().split()[1]) * page
    except (OSError, ValueError, IndexError):
        break
    out.write(f"{time.monotonic()} {rss}\\n")
    out.flush()
    time.sleep(interval)
"""


class _RssSampler:
    """Samples a process's RSS every ``interval`` seconds from a process of its own (a thread of the sampled
    process would need the GIL, which onnx's checker and other long native calls hold: their peaks would be
    missed); ``marks`` are named instants of the sampled process, on the same (monotonic) clock."""

    def __init__(self, path: str, interval: float = 0.01) -> None:
        self.path, self.interval, self.marks = path, interval, {}
        self.samples: list[tuple[float, int]] = []

    def mark(self, name: str) -> None:
        self.marks[name] = (time.monotonic(), isolated.current_rss_bytes())

    def __enter__(self) -> _RssSampler:
        import subprocess

        self._process = subprocess.Popen([sys.executable, "-S", "-c", _SAMPLER, str(os.getpid()),
                                          str(self.interval), self.path])
        return self

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        self._process.wait()
        with open(self.path) as lines:
            for line in lines:
                parts = line.split()
                if len(parts) == 2:
                    self.samples.append((float(parts[0]), int(parts[1])))

    def peak_between(self, start: str, end: str) -> int | None:
        lo, hi = self.marks[start][0], self.marks[end][0]
        inside = [rss for t, rss in self.samples if lo <= t <= hi]
        return max([*inside, self.marks[start][1], self.marks[end][1]])


def _optimize(model_path: str, out_path: str, passes: str) -> dict[str, Any]:
    """One graphopt.optimize call (what the CLI runs), with its RSS per phase."""
    import resource

    import graphopt
    from graphopt.instruments import Instrument

    sampler = _RssSampler(f"{out_path}.rss")

    class Phases(Instrument):
        def should_run(self, pass_, ctx) -> bool:
            if "passes_start" not in sampler.marks:
                sampler.mark("passes_start")
            return True

        def after(self, pass_, graph, record, ctx) -> None:
            sampler.mark("passes_end")

    rss_imports = isolated.current_rss_bytes()
    with sampler:
        sampler.mark("start")
        start = time.perf_counter()
        model, report = graphopt.optimize(model_path, out_path, passes=passes, instruments=[Phases()])
        seconds = time.perf_counter() - start
        sampler.mark("end")
    os.unlink(sampler.path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del model
    phases = {}
    if "passes_start" in sampler.marks:
        phases = {"load": sampler.peak_between("start", "passes_start"),
                  "passes": sampler.peak_between("passes_start", "passes_end"),
                  "write": sampler.peak_between("passes_end", "end")}
        phase_seconds = {"load": sampler.marks["passes_start"][0] - sampler.marks["start"][0],
                         "passes": sampler.marks["passes_end"][0] - sampler.marks["passes_start"][0],
                         "write": sampler.marks["end"][0] - sampler.marks["passes_end"][0]}
    else:
        phase_seconds = {}
    return {"seconds": seconds, "rss_after_imports_bytes": rss_imports, "peak_rss_after_call_bytes": peak,
            "phase_peak_rss_bytes": phases, "phase_seconds": phase_seconds, "pipeline": report.pipeline,
            "input_bytes": report.input.bytes, "output_bytes": report.output.bytes,
            "passes": [{"name": row.name, "runs": row.runs, "seconds": row.seconds, "node_delta": row.node_delta,
                        "stats": row.stats} for row in report.summary()],
            "diagnostics": list(report.diagnostics)[:20], "graphopt": graphopt.__version__}


def _session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _feeds(model_path: str, batch: int) -> dict[str, Any]:
    import onnx

    return corpus.random_feeds(onnx.load(model_path, load_external_data=False), seed=0, batch_size=batch)


def _reference(model_path: str, outputs_path: str, batch: int) -> dict[str, Any]:
    import numpy as np

    start = time.perf_counter()
    session = _session(model_path)
    session_seconds = time.perf_counter() - start
    names = [output.name for output in session.get_outputs()]
    start = time.perf_counter()
    outputs = session.run(names, _feeds(model_path, batch))
    run_seconds = time.perf_counter() - start
    np.savez(outputs_path, **dict(zip(names, outputs, strict=True)))
    finite = all(bool(np.isfinite(o).all()) for o in outputs if o.dtype.kind == "f")
    return {"session_seconds": session_seconds, "run_seconds": run_seconds, "finite": finite,
            "outputs": {n: list(o.shape) for n, o in zip(names, outputs, strict=True)}}


def _check(model_path: str, candidate_path: str, reference_path: str, batch: int) -> dict[str, Any]:
    import numpy as np
    import onnx

    candidate = Path(candidate_path)
    files = {p.name: p.stat().st_size for p in sorted(candidate.parent.iterdir())
             if p.name == candidate.name or p.name.startswith(candidate.name + ".")}
    stored = onnx.load(candidate_path, load_external_data=False)
    locations = sorted({entry.value for tensor in onnx.external_data_helper._get_all_tensors(stored)
                        if tensor.data_location == onnx.TensorProto.EXTERNAL
                        for entry in tensor.external_data if entry.key == "location"})
    record: dict[str, Any] = {"files": files, "external_data": locations,
                              "external_data_beside": all((candidate.parent / loc).is_file() for loc in locations)}
    try:
        onnx.checker.check_model(candidate_path)
        record["checker"] = "ok"
    except Exception as error:  # noqa: BLE001 - reported, not raised
        record["checker"] = f"rejected: {str(error).strip().splitlines()[0][:200]}"
    try:
        start = time.perf_counter()
        session = _session(candidate_path)
        record["session_seconds"] = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001
        record["loads"] = False
        record["load_error"] = str(error).strip().splitlines()[0][:300]
        return record
    record["loads"] = True
    reference = dict(np.load(reference_path))
    names = [output.name for output in session.get_outputs()]
    start = time.perf_counter()
    outputs = dict(zip(names, session.run(names, _feeds(model_path, batch)), strict=True))
    record["run_seconds"] = time.perf_counter() - start
    comparison = {}
    for name, ref in reference.items():
        got = outputs.get(name)
        if got is None or got.shape != ref.shape:
            comparison[name] = {"problem": "missing" if got is None else f"shape {list(got.shape)}"}
            continue
        ref64, got64 = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        diff = float(np.abs(ref64 - got64).max()) if ref64.size else 0.0
        scale = float(np.abs(ref64).max()) if ref64.size else 0.0
        norms = float(np.linalg.norm(ref64) * np.linalg.norm(got64))
        per_sample = [float(np.dot(r, g) / (np.linalg.norm(r) * np.linalg.norm(g)))
                      for r, g in zip(ref.reshape(len(ref), -1).astype(np.float64),
                                      got.reshape(len(got), -1).astype(np.float64), strict=True)] if ref.ndim else []
        comparison[name] = {"max_abs_diff": diff, "max_rel_diff": diff / scale if scale else diff,
                            "cosine": float(np.dot(ref64, got64) / norms) if norms else 1.0,
                            "min_sample_cosine": min(per_sample) if per_sample else None,
                            "finite": bool(np.isfinite(got64).all())}
    record["comparison"] = comparison
    return record


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["build", "reference", "optimize", "check"])
    parser.add_argument("--result", required=True)
    parser.add_argument("--model")
    parser.add_argument("--output")
    parser.add_argument("--passes")
    parser.add_argument("--reference")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gigabytes", type=float, default=2.2)
    args = parser.parse_args(argv)
    work = {
        "build": lambda: _build(args.model, args.gigabytes),
        "reference": lambda: _reference(args.model, args.reference, args.batch),
        "optimize": lambda: _optimize(args.model, args.output, args.passes),
        "check": lambda: _check(args.model, args.output, args.reference, args.batch),
    }[args.kind]
    return isolated.worker_main(args.result, work)


# ============================================================================================ parent side


def _run(arguments: list[str], work_dir: Path, label: str, timeout: float) -> isolated.IsolatedResult:
    result_path, log_path = work_dir / f"{label}.json", work_dir / f"{label}.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", *arguments, "--result", str(result_path)]
    print(f"  {label} ...", end=" ", flush=True)
    outcome = isolated.run_isolated(argv, result_path, log_path, timeout)
    print(f"{outcome.wall_seconds:.1f} s, peak RSS {outcome.peak_rss_bytes / GIB:.2f} GiB"
          + ("" if outcome.ok else f", FAILED: {outcome.error}"), flush=True)
    return outcome


def _outcome(outcome: isolated.IsolatedResult) -> dict[str, Any]:
    return {"ok": outcome.ok, "error": outcome.error, "payload": outcome.payload,
            "process_seconds": outcome.wall_seconds, "peak_rss_bytes": outcome.peak_rss_bytes,
            "log": outcome.log_path, "load_average_after": os.getloadavg()[0]}


def model_size(path: Path) -> int:
    """The model file plus the external data files it refers to."""
    return bench_lossless._files_size(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.work_dir:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="bench_large_", dir=args.work_dir)).resolve()  # removed at the end
    record: dict[str, Any] = {"environment": bench_lossless.environment(), "complete": False,
                              "batch": args.batch, "variants": {}, "work_dir": str(work_dir)}
    record["environment"]["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        if args.model:
            model = Path(args.model).resolve()
        else:
            model = work_dir / "large.onnx"
            print(f"building a {args.gigabytes} GiB model into {work_dir}", flush=True)
            built = _run(["build", "--model", str(model), "--gigabytes", str(args.gigabytes)], work_dir, "build",
                         args.timeout)
            record["build"] = _outcome(built)
            if not built.ok:
                raise SystemExit(f"building the model failed: {built.error} (log: {built.log_path})")
        record["model"] = {"path": str(model), "bytes": model_size(model), "file_bytes": model.stat().st_size}
        print(f"model {model}: {record['model']['bytes'] / GIB:.2f} GiB on disk", flush=True)
        reference_path = work_dir / "reference.npz"
        reference = _run(["reference", "--model", str(model), "--reference", str(reference_path),
                          "--batch", str(args.batch)], work_dir, "reference", args.timeout)
        record["reference"] = _outcome(reference)
        for name in args.variants:
            output = work_dir / f"out_{name.replace('+', '_')}.onnx"
            entry: dict[str, Any] = {"passes": VARIANTS[name], "output": str(output)}
            record["variants"][name] = entry
            entry["optimize"] = _outcome(_run(["optimize", "--model", str(model), "--output", str(output),
                                               "--passes", VARIANTS[name]], work_dir, f"optimize_{name}",
                                              args.timeout))
            if entry["optimize"]["ok"] and reference.ok:
                entry["check"] = _outcome(_run(["check", "--model", str(model), "--output", str(output),
                                                "--reference", str(reference_path), "--batch", str(args.batch)],
                                               work_dir, f"check_{name}", args.timeout))
            _save_json(record, args.out)
        record["complete"] = True
    finally:
        _save_json(record, args.out)
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    return record


def _save_json(record: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str) + "\n")


# ------------------------------------------------------------------------------------------ rendering


def _gib(size: float | None) -> str:
    if size is None:
        return "-"
    if size < MIB:
        return f"{size / 1024:.0f} KiB"
    return f"{size / GIB:.2f} GiB" if size >= GIB / 4 else f"{size / MIB:.1f} MiB"


def _verdict(name: str, check: dict[str, Any]) -> tuple[str, bool]:
    payload = check.get("payload") or {}
    if not check.get("ok") or not payload.get("loads"):
        return f"does not load: {check.get('error') or payload.get('load_error')}", False
    comparison = payload.get("comparison", {})
    quantized = "dynamic" in name
    parts, ok = [], True
    for output, values in comparison.items():
        if "problem" in values:
            parts.append(f"`{output}` {values['problem']}")
            ok = False
            continue
        if quantized:
            good = values["cosine"] > MIN_COSINE and values["finite"]
            parts.append(f"cosine {values['cosine']:.5f} (lowest per sample {values['min_sample_cosine']:.5f})")
        else:
            good = values["max_rel_diff"] <= LOSSLESS_TOLERANCE and values["finite"]
            parts.append(f"max abs diff {values['max_abs_diff']:.2e} (relative {values['max_rel_diff']:.2e})")
        ok = ok and good
    return "; ".join(parts) + (" **ok**" if ok else " **MISMATCH**"), ok


def render(record: dict[str, Any]) -> str:
    env, model = record["environment"], record.get("model", {})
    size = model.get("bytes")
    lines = [
        "# graphopt on a model over 2 GB",
        "",
        f"Run {env['date']} on {env['cpu']} ({env['cpu_count']} cores, {_gib(env.get('memory_bytes'))} RAM), "
        f"Python {env['python']}; graphopt {env['graphopt']} ({env['graphopt_commit']}), onnx {env['onnx']}, "
        f"onnxruntime {env['onnxruntime']}. `python benchmarks/bench_large.py` (see `benchmarks/README.md`).",
        "",
    ]
    build = (record.get("build") or {}).get("payload")
    if build:
        lines.append(f"Model: `models/build_large.py`, {build['layers']} residual MLP blocks of hidden "
                     f"{build['hidden']} (seed {build['seed']}), {_gib(build['weight_bytes'])} of float32 weights; "
                     f"built in {build['seconds']:.0f} s with a peak RSS of "
                     f"{_gib(record['build']['peak_rss_bytes'])}.")
    else:
        lines.append(f"Model: `{model.get('path')}`.")
    lines += [f"On disk: {_gib(size)} (`.onnx` {model.get('file_bytes', 0) / 1024:.0f} KiB + external data). "
              f"Target (issue 7): peak RSS at most {TARGET_RATIO}x the model's size on disk.", ""]
    reference = record.get("reference") or {}
    if reference.get("ok"):
        payload = reference["payload"]
        lines += [f"Reference: onnxruntime (ORT_ENABLE_ALL, 2 threads) runs the input on {record['batch']} "
                  f"standard-normal samples: session {payload['session_seconds']:.1f} s, run "
                  f"{payload['run_seconds']:.2f} s, peak RSS {_gib(reference['peak_rss_bytes'])}; outputs finite: "
                  f"{payload['finite']}.", ""]
    else:
        lines += [f"Reference run failed: {reference.get('error')}", ""]
    loads = [entry["optimize"]["load_average_after"] for entry in record["variants"].values()
             if "load_average_after" in entry["optimize"]]
    if loads:
        lines += [f"The machine is shared: 1-minute load average {min(loads):.1f}-{max(loads):.1f} after the "
                  "optimize runs (2 cores), so wall times vary by ~30 % between runs; memory does not.", ""]
    lines += ["| passes | wall time | peak RSS | peak / model size | target | RSS after imports | peak RSS by "
              "phase: load / passes / write | output files | loads in onnxruntime | outputs vs input |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in record["variants"].items():
        optimize = entry["optimize"]
        if not optimize["ok"]:
            lines.append(f"| `{entry['passes']}` | failed: {optimize['error']} | {_gib(optimize['peak_rss_bytes'])} "
                         "| | | | | | | |")
            continue
        payload = optimize["payload"]
        peak = optimize["peak_rss_bytes"]
        ratio = peak / size if size else float("nan")
        phases = payload.get("phase_peak_rss_bytes") or {}
        seconds = payload.get("phase_seconds") or {}
        phase_text = " / ".join(f"{_gib(phases.get(p))} ({seconds.get(p, 0):.0f} s)"
                                for p in ("load", "passes", "write"))
        check = entry.get("check") or {}
        check_payload = check.get("payload") or {}
        files = ", ".join(f"`{Path(n).name}` {_gib(s)}" for n, s in (check_payload.get("files") or {}).items())
        if check_payload.get("external_data"):
            beside = "beside it" if check_payload.get("external_data_beside") else "**missing**"
            files += f" (external data {beside})"
        elif check_payload:
            files += " (no external data)"
        loads = (f"yes ({check_payload['session_seconds']:.1f} s; checker {check_payload.get('checker')})"
                 if check_payload.get("loads") else f"**no**: {check_payload.get('load_error') or check.get('error')}")
        agreement = _verdict(name, check)[0] if check else "-"
        lines.append(f"| `{entry['passes']}` | {payload['seconds']:.1f} s | {_gib(peak)} | {ratio:.2f}x | "
                     f"{'met' if ratio <= TARGET_RATIO else '**above**'} | {_gib(payload['rss_after_imports_bytes'])} "
                     f"| {phase_text} | {files} | {loads} | {agreement} |")
    lines += ["", "Wall time: the `graphopt.optimize(model, out, passes=...)` call (what `graphopt optimize` runs), "
              "loading, passes, export and the atomic save with its checks (ONNX checker, onnxruntime load) "
              "included. Peak RSS: the optimizing process's `ru_maxrss` (its interpreter and imports included; "
              "the RSS after imports is given). By phase: the largest RSS sampled every 10 ms while loading "
              "(until the first pass starts), while passes run, and while writing (export, save, checks), with "
              "each phase's duration."]
    for entry in record["variants"].values():
        payload = entry["optimize"].get("payload")
        if payload:
            stats = "; ".join(f"{row['name']} {row['stats']}" for row in payload["passes"] if row["stats"])
            lines += ["", f"`{entry['passes']}` ran `{payload['pipeline']}`: {stats or 'no stats'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an existing model (default: build one with models/build_large.py)")
    parser.add_argument("--gigabytes", type=float, default=2.2, help="GiB of weights of the built model (2.2)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    parser.add_argument("--batch", type=int, default=8, help="samples compared (default 8)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process (default 1800)")
    parser.add_argument("--work-dir", help="folder in which the work folder (model, outputs, logs) is made "
                        "(default: the system's temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--render", type=Path, help="rewrite the Markdown from a run's JSON without measuring")
    args = parser.parse_args(argv)
    if args.render:
        record = json.loads(args.render.read_text())
    else:
        args.out = args.out.resolve()
        record = run(args)
    markdown = render(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    print(markdown)
    failed = [name for name, entry in record["variants"].items()
              if not entry["optimize"]["ok"] or not _verdict(name, entry.get("check") or {})[1]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
