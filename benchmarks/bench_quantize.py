"""graphopt's int8 quantization side by side with onnxruntime.quantization, on the same models and data in one run.

    python benchmarks/bench_quantize.py [--models NAME|GROUP|PATTERN ...] [--rounds 10] [--no-latency]
                                        [--out benchmarks/results/quantize.md]

The proof issue 4 asks for. Variants, each made in its own fresh process (``isolated.py``: wall time of the
call, the process's peak RSS, crashes and timeouts contained), one after the other:

- ``graphopt``: ``graphopt.optimize(path, out, passes="lossless,quantize-qdq", data=<calibration .npz>)`` with
  quantize-qdq's defaults (``mode=auto`` when the installed graphopt has it); the pipeline text that ran and
  the pass's stats and diagnostics (its decision) are recorded.
- ``graphopt-dynamic`` (transformers only): ``passes="lossless,quantize-qdq(mode=dynamic)"``, no data;
  "not available" when the installed graphopt does not accept that text.
- ``ort-minmax``, ``ort-entropy``: ``quant_pre_process`` then ``quantize_static`` (QDQ, per-channel, int8
  weights, uint8 activations; MinMax or Entropy calibration), fed the same calibration samples, one per call,
  by a ``CalibrationDataReader``. If ``quant_pre_process`` raises (BERT: its symbolic shape inference stops
  on the exported shape arithmetic), it is retried with ``auto_merge=True``, as its error suggests, and the
  table says so.
- ``ort-dynamic`` (transformers only): ``quant_pre_process`` then ``quantize_dynamic`` (int8 weights).

Quantize times are of that call, path in and file out, for every tool (graphopt's auto mode includes its own
fidelity checks and latency measurement; onnxruntime's includes ``quant_pre_process``).

Models (``corpus.py``): the trained classifiers (group ``small``: calibration ``models/digits_calib.npz``,
whose ``label`` array lets graphopt's auto mode judge accuracy on the samples it holds out; evaluation
``models/digits_test.npz``: top-1 accuracy) and the random-weight ``standard`` nets (ResNet-50 and BERT-base
by default): ``--samples`` random inputs to calibrate on (``corpus.random_feeds``, seed 1: standard-normal
images; token ids in [0, 1000) with the last eighth masked) and as many others (seed 2) to evaluate on: the
cosine of each output with the float model's over all evaluation samples, and top-1 agreement of outputs
shaped like class scores ([N, C]; for BERT that is pooler_output's argmax, not a class).

Measurement, in one more process per model holding float and every variant: file size; outputs on the
evaluation data (onnxruntime ORT_ENABLE_ALL, 2 threads, batches of 64); then latency with
``graphopt.validate.latency.measure_interleaved``: per (intra-op threads, batch) in ``CONFIGS`` (classifiers:
1 and 2 threads x batch 1 and 64; random-weight nets: batch 1), sessions as deployed (ORT_ENABLE_ALL, CPU,
inter-op 1, sequential), warm-up, then up to ``--rounds`` rounds in which float and every variant run once
in rotating order (each sample: a block of calls lasting at least 100 ms), stopping after the round that
passes ``--latency-budget`` seconds. The speedup is the median over rounds of float / variant time in the
same round; every pair's paired ratio is kept in the JSON.

Writes ``<out>.md`` (also printed) and ``<out>.json`` (rewritten after each model, so an interrupted run
keeps what it measured). ``--render run.json`` rewrites the Markdown from a run's JSON without measuring.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
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

FLOAT = "float"
GRAPHOPT = {"graphopt": "lossless,quantize-qdq", "graphopt-dynamic": "lossless,quantize-qdq(mode=dynamic)"}
ORT_STATIC = {"ort-minmax": "MinMax", "ort-entropy": "Entropy"}
STATIC_VARIANTS = ("graphopt", *ORT_STATIC)
DYNAMIC_VARIANTS = ("graphopt-dynamic", "ort-dynamic")
TRANSFORMERS = frozenset({"bert_base"})
DEFAULT_MODELS = ["small", "resnet50", "bert_base"]
CALIBRATION = corpus.SMALL_DIR / "digits_calib.npz"
EVALUATION = corpus.SMALL_DIR / "digits_test.npz"
LABELS = "label"
CONFIGS = {"trained": ((1, 1), (2, 1), (1, 64), (2, 64)), "random": ((1, 1), (2, 1))}
EVALUATION_THREADS = 2
EVALUATION_BATCH = 64
NOISE = 0.05  # latency ratios within 5 % of each other are not a difference on this shared machine
MIN_BLOCK_SECONDS = 0.1  # a latency sample averages calls lasting this long: other processes' bursts average out
DEFAULT_OUT = HERE / "results" / "quantize.md"
MIB = 2**20


def variants_for(model: corpus.BenchModel) -> list[str]:
    return [*STATIC_VARIANTS, *(DYNAMIC_VARIANTS if model.name in TRANSFORMERS else ())]


def kind_of(model: corpus.BenchModel) -> str:
    """``trained`` (accuracy on labelled test data) or ``random`` (random weights: agreement with float)."""
    return "trained" if model.group == "small" else "random"


def config_key(threads: int, batch: int) -> str:
    return f"{threads}t-b{batch}"


# ============================================================================================ worker side


def _quantize(spec: dict[str, Any]) -> dict[str, Any]:
    """One variant of one model (runs in its own process)."""
    if spec["variant"] in GRAPHOPT:
        return _quantize_graphopt(spec)
    return _quantize_onnxruntime(spec)


def _quantize_graphopt(spec: dict[str, Any]) -> dict[str, Any]:
    import graphopt
    from graphopt.errors import UsageError

    passes = GRAPHOPT[spec["variant"]]
    try:
        graphopt.parse_pipeline(passes)
    except UsageError as error:  # an option the installed graphopt does not have (yet)
        return {"unavailable": str(error)}
    data = None if spec["variant"] == "graphopt-dynamic" else spec["calibration"]
    rss_imports = isolated.current_rss_bytes()
    start = time.perf_counter()
    _, report = graphopt.optimize(spec["model"], spec["output"], passes=passes, data=data)
    seconds = time.perf_counter() - start
    runs = [record.result for record in report.passes if record.name == "quantize-qdq" and record.result]
    return {"seconds": seconds, "rss_after_imports_bytes": rss_imports, "version": graphopt.__version__,
            "pipeline": report.pipeline, "stats": dict(runs[-1].stats) if runs else {},
            "diagnostics": [str(diagnostic) for diagnostic in runs[-1].diagnostics] if runs else []}


def _quantize_onnxruntime(spec: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    variant, output = spec["variant"], spec["output"]
    preprocessed = f"{output}.pre.onnx"
    rss_imports = isolated.current_rss_bytes()
    start = time.perf_counter()
    note = _preprocess(spec["model"], preprocessed)
    if variant == "ort-dynamic":
        quantize_dynamic(preprocessed, output, weight_type=QuantType.QInt8)
    else:
        quantize_static(preprocessed, output, _calibration_reader(spec["calibration"], spec["inputs"]),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, ORT_STATIC[variant]))
    seconds = time.perf_counter() - start
    Path(preprocessed).unlink()
    return {"seconds": seconds, "rss_after_imports_bytes": rss_imports, "version": onnxruntime.__version__,
            "preprocess": note}


def _preprocess(model_path: str, output_path: str) -> str | None:
    """``quant_pre_process`` with its defaults; when that raises, again with ``auto_merge=True`` (returns why)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(model_path, output_path)
        return None
    except Exception as error:  # noqa: BLE001 - any failure of the defaults is retried once, and reported
        quant_pre_process(model_path, output_path, auto_merge=True)
        return f"quant_pre_process failed with its defaults ({_first_line(error)}); ran with auto_merge=True"


def _calibration_reader(npz_path: str, inputs: list[str]):
    """onnxruntime's ``CalibrationDataReader`` over the model inputs of an .npz, one sample per call."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    class NpzReader(CalibrationDataReader):
        def __init__(self) -> None:
            with np.load(npz_path) as data:
                self.arrays = {name: data[name] for name in inputs}
            self.samples = iter(range(len(next(iter(self.arrays.values())))))

        def get_next(self) -> dict | None:
            index = next(self.samples, None)
            return None if index is None else {name: array[index:index + 1] for name, array in self.arrays.items()}

    return NpzReader()


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Sizes, outputs on the evaluation data and interleaved latency of float and every variant."""
    import numpy as np

    with np.load(spec["evaluation"]) as data:
        feeds = {name: data[name] for name in spec["inputs"]}
        labels = data[LABELS] if LABELS in data else None
    variants: dict[str, dict[str, Any]] = {name: {"bytes": Path(path).stat().st_size}
                                           for name, path in spec["paths"].items()}
    outputs = {}
    for name, path in spec["paths"].items():
        try:
            outputs[name] = _evaluate(path, feeds)
        except Exception as error:  # noqa: BLE001 - a variant onnxruntime cannot run is reported, the rest go on
            variants[name]["error"] = f"onnxruntime: {type(error).__name__}: {_first_line(error)}"
    if FLOAT not in outputs:
        raise RuntimeError(f"the float model does not run: {variants[FLOAT]['error']}")
    for name, result in outputs.items():
        variants[name].update(_fidelity(outputs[FLOAT], result, labels))
    paths = {name: spec["paths"][name] for name in outputs}
    latency = _latency(paths, feeds, spec) if spec["latency"] else {}
    return {"variants": variants, "latency": latency, "evaluation_samples": len(next(iter(feeds.values())))}


def _evaluate(path: str, feeds: dict) -> dict:
    """All outputs of the model on ``feeds``, in batches, concatenated by output name."""
    import numpy as np

    from graphopt.validate.providers import SessionSettings, open_session

    session = open_session(path, "cpu", SessionSettings("all", EVALUATION_THREADS))
    names = [output.name for output in session.get_outputs()]
    samples = len(next(iter(feeds.values())))
    chunks = [session.run(names, {key: value[start:start + EVALUATION_BATCH] for key, value in feeds.items()})
              for start in range(0, samples, EVALUATION_BATCH)]
    return {name: np.concatenate([chunk[index] for chunk in chunks]) for index, name in enumerate(names)}


def _fidelity(reference: dict, candidate: dict, labels) -> dict[str, Any]:
    """Cosine and top-1 agreement with float per output (``graphopt validate``'s measures); with labels, the
    top-1 accuracy (%) of the first output."""
    import numpy as np

    from graphopt.validate.numerics import compare_outputs

    comparisons = compare_outputs(reference, candidate, rtol=0.0, atol=0.0)
    result: dict[str, Any] = {"outputs": {c.name: {"cosine": c.cosine, "top1_agreement": c.top1_agreement,
                                                   "max_abs_error": c.max_abs_error, "problem": c.problem}
                                          for c in comparisons}}
    if labels is not None:
        scores = next(iter(candidate.values()))
        result["accuracy"] = float(np.mean(np.argmax(scores, axis=1) == labels) * 100)
    return result


def _latency(paths: dict[str, str], feeds: dict, spec: dict[str, Any]) -> dict[str, Any]:
    from graphopt.validate.latency import measure_interleaved
    from graphopt.validate.providers import SessionSettings, open_session

    results = {}
    for threads in sorted({threads for threads, _ in spec["configs"]}):
        sessions = {name: open_session(path, "cpu", SessionSettings("all", threads)) for name, path in paths.items()}
        for batch in [batch for t, batch in spec["configs"] if t == threads]:
            feed = {key: value[:batch] for key, value in feeds.items()}
            run = measure_interleaved(
                {name: _runner(session, feed) for name, session in sessions.items()}, rounds=spec["rounds"],
                warmup_rounds=spec["warmup_rounds"], min_block_seconds=spec["min_block_seconds"],
                budget_seconds=spec["budget_seconds"], min_rounds=min(3, spec["rounds"]))
            names = list(sessions)
            results[config_key(threads, batch)] = {
                **run.to_dict(), "load_average": os.getloadavg(),
                "paired_ratio": {ref: {cand: run.paired_ratio(ref, cand) for cand in names if cand != ref}
                                 for ref in names}}
            print(f"    {threads} thread(s), batch {batch}: float {run.timings[FLOAT].median * 1000:.3g} ms; "
                  + ", ".join(f"{name} {results[config_key(threads, batch)]['paired_ratio'][FLOAT][name]:.2f}x"
                              for name in names if name != FLOAT), flush=True)
        del sessions
    return results


def _runner(session, feed: dict):
    return lambda: session.run(None, feed)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["quantize", "measure"])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    work = _quantize if args.kind == "quantize" else _measure
    return isolated.worker_main(args.result, lambda: work(spec))


# ============================================================================================ parent side


def _run_worker(kind: str, spec: dict, work_dir: Path, label: str, timeout: float) -> isolated.IsolatedResult:
    spec_path, result_path, log_path = (work_dir / f"{label}.{suffix}" for suffix in ("spec.json", "json", "log"))
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", str(spec_path),
            "--result", str(result_path)]
    # in the work folder: quant_pre_process leaves sym_shape_infer_temp.onnx and <uuid>.data files (BERT: 418 MiB
    # each) in the current folder when it fails
    return isolated.run_isolated(argv, result_path, log_path, timeout, cwd=work_dir)


def prepare_data(model: corpus.BenchModel, work_dir: Path, samples: int) -> dict[str, Any]:
    """The model's input names and its calibration and evaluation .npz files (written for random-weight nets)."""
    import numpy as np
    import onnx

    proto = onnx.load(str(model.path))
    data: dict[str, Any] = {"inputs": [value.name for value in corpus.model_inputs(proto)]}
    if kind_of(model) == "trained":
        return {**data, "calibration": str(CALIBRATION), "evaluation": str(EVALUATION)}
    for role, seed in (("calibration", 1), ("evaluation", 2)):
        path = work_dir / f"{model.name}.{role}.npz"
        np.savez(path, **corpus.random_feeds(proto, seed=seed, batch_size=samples))
        data[role] = str(path)
    return data


def quantize_all(model: corpus.BenchModel, data: dict, args: argparse.Namespace, work_dir: Path) -> dict[str, dict]:
    """Every variant of ``model``, each in its own process: what each run reported, by variant."""
    entries = {}
    for variant in variants_for(model):
        spec = {"variant": variant, "model": str(model.path), "output": str(work_dir / f"{model.name}.{variant}.onnx"),
                "calibration": data["calibration"], "inputs": data["inputs"]}
        outcome = _run_worker("quantize", spec, work_dir, f"{model.name}.{variant}", args.timeout)
        entry: dict[str, Any] = {"process_wall_seconds": outcome.wall_seconds,
                                 "process_peak_rss_bytes": outcome.peak_rss_bytes, "output": spec["output"]}
        if outcome.ok:
            entry.update(outcome.payload)
        else:
            entry.update(error=outcome.error, log=outcome.log_path)
        entries[variant] = entry
        print(f"    {variant:16s} {_outcome_text(entry)}", flush=True)
    return entries


def _outcome_text(entry: dict) -> str:
    if "error" in entry:
        return f"failed: {entry['error']}"
    if "unavailable" in entry:
        return f"not available: {entry['unavailable']}"
    return f"{entry['seconds']:7.1f} s, peak {entry['process_peak_rss_bytes'] / MIB:.0f} MiB"


def bench_model(model: corpus.BenchModel, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    kind = kind_of(model)
    data = prepare_data(model, work_dir, args.samples)
    record: dict[str, Any] = {"group": model.group, "kind": kind, "path": str(model.path),
                              "quantize": quantize_all(model, data, args, work_dir), "measure": None}
    paths = {FLOAT: str(model.path)}
    paths.update({variant: entry["output"] for variant, entry in record["quantize"].items()
                  if "error" not in entry and "unavailable" not in entry})
    spec = {"paths": paths, "evaluation": data["evaluation"], "inputs": data["inputs"],
            "configs": CONFIGS[kind], "rounds": args.rounds, "warmup_rounds": 2,
            "min_block_seconds": MIN_BLOCK_SECONDS,
            "budget_seconds": args.latency_budget, "latency": not args.no_latency}
    outcome = _run_worker("measure", spec, work_dir, f"{model.name}.measure", args.timeout * 2)
    if outcome.ok:
        record["measure"] = outcome.payload
    else:
        record["error"] = f"measurement failed: {outcome.error}"
        record["measure_log"] = outcome.log_path
    return record


def environment() -> dict[str, Any]:
    """bench_lossless's machine and versions, with the CPU's int8 dot-product (VNNI) flags and numpy's version."""
    import numpy as np

    flags: set[str] = set()
    try:
        flags = {flag for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                 for flag in line.split(":", 1)[1].split()}
    except OSError:
        pass
    return {**bench_lossless.environment(), "numpy": np.__version__,
            "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags}


# ------------------------------------------------------------------------------------------ rendering


def _size(size: float) -> str:
    return f"{size / 1024:.0f} KiB" if size < MIB else f"{size / MIB:.1f} MiB"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def _geomean(values: list[float]) -> float:
    values = [value for value in values if value is not None and math.isfinite(value) and value > 0]
    return statistics.geometric_mean(values) if values else math.nan


def _ratio(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def _config_label(key: str) -> str:
    threads, batch = key.split("-")
    return f"{threads[:-1]} thr, batch {batch[1:]}"


def _speedup(record: dict, key: str, variant: str, reference: str = FLOAT) -> float | None:
    latency = (record.get("measure") or {}).get("latency", {}).get(key)
    return latency["paired_ratio"][reference].get(variant) if latency else None


def _measured(record: dict, variant: str) -> dict | None:
    """The measure worker's entry for a variant that ran, else None."""
    entry = (record.get("measure") or {}).get("variants", {}).get(variant)
    return entry if entry and "error" not in entry else None


def _accuracy_change(record: dict, variant: str) -> float:
    return _measured(record, variant)["accuracy"] - _measured(record, FLOAT)["accuracy"]


def _lowest(entry: dict, field: str) -> float | None:
    values = [output[field] for output in entry["outputs"].values() if output[field] is not None]
    return min(values) if values else None


def _why_missing(record: dict, variant: str) -> str:
    entry = record["quantize"].get(variant, {})
    if "unavailable" in entry:
        return "not available"
    if "error" in entry:
        return f"failed: {entry['error'][:80]}"
    measured = (record.get("measure") or {}).get("variants", {}).get(variant, {})
    return f"failed: {measured['error'][:80]}" if "error" in measured else "-"


def _model_table(name: str, record: dict) -> list[str]:
    keys = [config_key(*config) for config in CONFIGS[record["kind"]]]
    trained = record["kind"] == "trained"
    fidelity = ["accuracy % (change)"] if trained else ["cosine (lowest output)", "top-1 agreement"]
    header = ["variant", *fidelity, *(_config_label(key) for key in keys), "size (ratio)", "quantize time",
              "quantize peak RSS"]
    samples = (record.get("measure") or {}).get("evaluation_samples", "?")
    what = (f"trained; top-1 accuracy on the {samples} test images" if trained else
            f"random weights; agreement with float on {samples} random inputs, calibrated on as many others")
    lines = [f"### {name} ({what})", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    if record.get("error"):
        return [*lines, f"| {FLOAT} | {record['error']} |" + " |" * (len(header) - 2), ""]
    lines += [_variant_row(record, variant, keys, len(header)) for variant in [FLOAT, *record["quantize"]]]
    return lines + [""] + _model_notes(record, keys)


def _variant_row(record: dict, variant: str, keys: list[str], columns: int) -> str:
    entry, reference = _measured(record, variant), _measured(record, FLOAT)
    if entry is None:
        return f"| {variant} | {_why_missing(record, variant)} |" + " - |" * (columns - 2)
    cells = [variant, *_fidelity_cells(entry, reference, record["kind"] == "trained", variant == FLOAT)]
    for key in keys:
        timing = record["measure"]["latency"].get(key, {}).get("timings", {}).get(variant)
        ratio = "" if variant == FLOAT else f"**{_ratio(_speedup(record, key, variant))}** "
        cells.append(f"{ratio}{_ms(timing['median_s'])}" if timing else "-")
    cells.append(_size(entry["bytes"]) + ("" if variant == FLOAT else f" ({entry['bytes'] / reference['bytes']:.2f}x)"))
    run = record["quantize"].get(variant)
    cells += [f"{run['seconds']:.1f} s", f"{run['process_peak_rss_bytes'] / MIB:.0f} MiB"] if run else ["-", "-"]
    return "| " + " | ".join(cells) + " |"


def _fidelity_cells(entry: dict, reference: dict, trained: bool, is_float: bool) -> list[str]:
    if trained:
        accuracy = entry["accuracy"]
        return [f"{accuracy:.2f}" if is_float else f"{accuracy:.2f} ({accuracy - reference['accuracy']:+.2f})"]
    if is_float:
        return ["reference", "reference"]
    top1 = _lowest(entry, "top1_agreement")
    return [f"{_lowest(entry, 'cosine'):.4f}", "-" if top1 is None else f"{top1:.3f}"]


def _model_notes(record: dict, keys: list[str]) -> list[str]:
    notes = []
    for variant, run in record["quantize"].items():
        if run.get("pipeline"):
            notes.append(f"- {variant}: {_stats_text(run['stats'])}")
        if variant == "graphopt" and run.get("diagnostics"):  # auto mode's last diagnostic is its decision
            notes.append(f"- {variant}: {run['diagnostics'][-1]}")
        if run.get("preprocess"):
            notes.append(f"- {variant}: {run['preprocess']}")
        if run.get("unavailable") or len(run.get("error", "")) > 80:
            notes.append(f"- {variant}: {run.get('unavailable') or run['error']}")
    latency = (record.get("measure") or {}).get("latency", {})
    if latency:
        notes.append("- latency rounds: " + ", ".join(
            f"{_config_label(key)}: {latency[key]['rounds']} (load average {latency[key]['load_average'][0]:.1f})"
            for key in keys if key in latency))
    return [*notes, ""] if notes else []


def _stats_text(stats: dict[str, int]) -> str:
    """quantize-qdq's ``quantized.<op>`` and ``skipped.<reason>`` counts, in words."""
    def listed(prefix: str) -> str:
        return ", ".join(f"{key[len(prefix):]} {count}" for key, count in stats.items() if key.startswith(prefix))

    return f"int8: {listed('quantized.') or 'nothing'}; left in float: {listed('skipped.') or 'nothing'}"


def _variants(results: dict[str, dict]) -> list[str]:
    return list(dict.fromkeys(variant for record in results.values() for variant in record["quantize"]))


def _summary(results: dict[str, dict]) -> list[str]:
    keys = list(dict.fromkeys(config_key(*config) for record in results.values() for config in CONFIGS[record["kind"]]))
    header = ["variant", "ran", "failed / not available", *(f"geo-mean {_config_label(key)}" for key in keys),
              "geo-mean, all cells", "slowest cell", "size ratio (geo-mean)", "worst accuracy change (classifiers)",
              "lowest cosine (random-weight nets)", "quantize time (sum)"]
    lines = ["### Summary (speedup vs float; geo-means over the models each variant ran on)", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for variant in _variants(results):
        ran = {name: record for name, record in results.items() if _measured(record, variant)}
        missing = sum(1 for record in results.values() if variant in record["quantize"]) - len(ran)
        cells = {key: [_speedup(record, key, variant) for record in ran.values()] for key in keys}
        every = [value for values in cells.values() for value in values if value is not None]
        sizes = [_measured(r, variant)["bytes"] / _measured(r, FLOAT)["bytes"] for r in ran.values()]
        drops = [_accuracy_change(r, variant) for r in ran.values() if r["kind"] == "trained"]
        cosines = [_lowest(_measured(r, variant), "cosine") for r in ran.values() if r["kind"] == "random"]
        seconds = sum(record["quantize"][variant]["seconds"] for record in ran.values())
        lines.append("| " + " | ".join([
            variant, str(len(ran)), str(missing), *(_ratio(_geomean(cells[key])) for key in keys),
            _ratio(_geomean(every)), _ratio(min(every, default=math.nan)), _ratio(_geomean(sizes)),
            f"{min(drops):+.2f}" if drops else "-", f"{min(cosines):.4f}" if cosines else "-",
            f"{seconds:.0f} s"]) + " |")
    return [*lines, ""]


def _targets(results: dict[str, dict]) -> list[str]:
    """Issue 4's targets, judged on the ``graphopt`` variant (quantize-qdq's defaults)."""
    ran = {name: record for name, record in results.items() if _measured(record, "graphopt")}
    trained = {name: record for name, record in ran.items() if record["kind"] == "trained"}
    rows = [_accuracy_target(trained), _versus_static_target(trained), _resnet50_target(ran),
            _never_slower_target(ran), _int8_helps_target(ran), _size_target(ran)]
    lines = ["### Issue 4 targets, for `graphopt` (quantize-qdq's defaults)", "",
             f"A latency ratio less than {NOISE:.0%} below its threshold is \"within noise\" on this shared machine.",
             "", "| target | measured | met |", "|---|---|---|"]
    return lines + [f"| {target} | {measured} | {met} |" for target, measured, met in rows] + [""]


def _verdict(met: bool | None, near: bool = False) -> str:
    if met is None:
        return "not measured"
    return "yes" if met else "within noise" if near else "**no**"


def _cells(record: dict) -> list[str]:
    return list(record["measure"]["latency"])


def _accuracy_target(trained: dict[str, dict]) -> tuple[str, str, str]:
    drops = {name: _accuracy_change(record, "graphopt") for name, record in trained.items()}
    return ("accuracy drop <= 0.5 points on every trained classifier",
            ", ".join(f"{name} {drop:+.2f}" for name, drop in drops.items()),
            _verdict(min(drops.values()) >= -0.5 if drops else None))


def _versus_static_target(trained: dict[str, dict]) -> tuple[str, str, str]:
    """Per classifier and calibration: the geo-mean over its configurations of ORT time / graphopt time (paired
    within rounds); one noisy cell does not decide it."""
    ratios = {(name, other): _geomean([_speedup(r, key, "graphopt", reference=other) for key in _cells(r)])
              for name, r in trained.items() for other in ORT_STATIC if _measured(r, other)}
    ratios = {pair: ratio for pair, ratio in ratios.items() if math.isfinite(ratio)}
    lowest = min(ratios.values(), default=None)
    return ("at least as fast as quantize_static on the classifiers (per classifier: geo-mean over its "
            "configurations of ORT time / graphopt time)",
            ", ".join(f"{name} {_ratio(ratio)} vs {other}" for (name, other), ratio in ratios.items()),
            _verdict(None if lowest is None else lowest >= 1, lowest is not None and lowest >= 1 - NOISE))


def _resnet50_target(ran: dict[str, dict]) -> tuple[str, str, str]:
    speedup = _speedup(ran["resnet50"], config_key(1, 1), "graphopt") if "resnet50" in ran else None
    return ("ResNet-50, batch 1, 1 thread: >= 3.5x", _ratio(speedup),
            _verdict(None if speedup is None else speedup >= 3.5, speedup is not None and speedup >= 3.5 * (1 - NOISE)))


def _never_slower_target(ran: dict[str, dict]) -> tuple[str, str, str]:
    """Over the cells where graphopt wrote int8; where it kept the float model, its cells time float against
    itself: they show the noise, and are quoted as such."""
    int8 = [(name, key, _speedup(r, key, "graphopt")) for name, r in ran.items()
            if _wrote_int8(r["quantize"]["graphopt"]) for key in _cells(r)]
    kept = {name: [_speedup(r, key, "graphopt") for key in _cells(r)] for name, r in ran.items()
            if not _wrote_int8(r["quantize"]["graphopt"]) and _cells(r)}
    slowest = min(int8, key=lambda cell: cell[2], default=None)
    measured = (f"slowest {_ratio(slowest[2])} ({slowest[0]}, {_config_label(slowest[1])}) of {len(int8)} cells "
                "where it wrote int8" if slowest else "no cell where it wrote int8")
    measured += "".join(f"; kept the float model on {name} (float against itself: {_ratio(min(ratios))} to "
                        f"{_ratio(max(ratios))})" for name, ratios in kept.items())
    return ("never slower than float", measured,
            _verdict(None if slowest is None else slowest[2] >= 1, slowest is not None and slowest[2] >= 1 - NOISE))


def _int8_helps_target(ran: dict[str, dict]) -> tuple[str, str, str]:
    """"Where int8 can help": the cells where some int8 variant, of any tool, is clearly faster than float."""
    cells = [(name, key) for name, r in ran.items() for key in _cells(r)]
    helps = [_speedup(ran[name], key, "graphopt") for name, key in cells if _int8_helps(ran[name], key)]
    mean = _geomean(helps)
    return (f"geo-mean >= 1.6x where int8 can help (cells where some int8 variant reaches {1 + 2 * NOISE:.2f}x)",
            f"{_ratio(mean)} over {len(helps)} of {len(cells)} cells",
            _verdict(mean >= 1.6 if helps else None, mean >= 1.6 * (1 - NOISE)))


def _size_target(ran: dict[str, dict]) -> tuple[str, str, str]:
    """Fully quantized CNNs: the non-transformers where graphopt wrote int8 and kept no layer in float."""
    sizes = {name: _measured(r, "graphopt")["bytes"] / _measured(r, FLOAT)["bytes"] for name, r in ran.items()
             if name not in TRANSFORMERS and _wrote_int8(r["quantize"]["graphopt"])
             and not r["quantize"]["graphopt"]["stats"].get("skipped.sensitive")}
    return ("size <= 0.3x for fully quantized CNNs (graphopt wrote int8 and kept no layer in float)",
            ", ".join(f"{name} {ratio:.2f}x" for name, ratio in sizes.items()) or "no CNN fully quantized",
            _verdict(max(sizes.values()) <= 0.3 if sizes else None))


def _int8_helps(record: dict, key: str) -> bool:
    best = max((_speedup(record, key, v) or 0 for v in record["quantize"] if _measured(record, v)), default=0)
    return best >= 1 + 2 * NOISE


def _wrote_int8(run: dict) -> bool:
    return any(name.startswith("quantized.") for name in run.get("stats", {}))


def render_markdown(results: dict[str, dict], env: dict, settings: dict, seconds: float) -> str:
    pipelines = sorted({run["pipeline"] for record in results.values() for run in record["quantize"].values()
                        if run.get("pipeline")})
    vnni = f"AVX-512 VNNI {'yes' if env['avx512_vnni'] else 'no'}, AVX-VNNI {'yes' if env['avx_vnni'] else 'no'}"
    loads = [key_load for record in results.values() for key_load in _loads(record)]
    out = [
        "# int8 quantization: graphopt vs onnxruntime.quantization", "",
        f"Run {env['date']} on {env['cpu']} ({env['cpu_count']} cores; {vnni}), Python {env['python']}; graphopt "
        f"{env['graphopt']} ({env['graphopt_commit']}), onnx {env['onnx']}, onnxruntime {env['onnxruntime']}, "
        f"numpy {env['numpy']}. Whole run: {seconds / 60:.1f} min. Made by `python benchmarks/bench_quantize.py` "
        "(see benchmarks/README.md); raw numbers in the JSON next to this file.", "",
    ]
    if loads:
        out += ["The machine was shared with other engineers' test runs (1-minute load average while timing: "
                f"{min(loads):.1f} to {max(loads):.1f} on 2 cores), so latency ratios are noisier than on a quiet "
                "machine: the interleaved rounds cancel slow drift, not contention within a round.", ""]
    out += [
        "graphopt pipelines that ran: " + "; ".join(f"`{text}`" for text in pipelines) + ". "
        "onnxruntime: `quant_pre_process`, then `quantize_static` (QDQ, per-channel, int8 weights, uint8 "
        "activations, MinMax or Entropy, one calibration sample per `get_next`) or `quantize_dynamic` (int8 "
        "weights). Speedups are float time / variant time, median over interleaved rounds (ORT_ENABLE_ALL, CPU); "
        "**above 1.00x the variant is faster**. ResNet-50 and BERT-base have random weights: their numbers are "
        "agreement with the float model on random inputs, not accuracy.", "",
    ]
    out += _summary(results) + _targets(results)
    for name, record in results.items():
        out += _model_table(name, record)
    out += [f"Settings: {json.dumps(settings)}", ""]
    return "\n".join(out)


def _loads(record: dict) -> list[float]:
    return [entry["load_average"][0] for entry in (record.get("measure") or {}).get("latency", {}).values()]


# ================================================================================================ main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", metavar="NAME", default=DEFAULT_MODELS,
                        help="model names, groups (small, standard) or shell patterns "
                             "(default: small resnet50 bert_base)")
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds per configuration, at most (default 10)")
    parser.add_argument("--latency-budget", type=float, default=45.0,
                        help="seconds of latency rounds per model and configuration before stopping early (default 45)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--samples", type=int, default=32,
                        help="random-weight nets: random inputs to calibrate on, and as many others to evaluate "
                             "on (default 32)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per quantizer run (default 600)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"Markdown output (default {DEFAULT_OUT}); the JSON goes next to it")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the Markdown from an earlier run's JSON (no measuring)")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        markdown = render_markdown(saved["models"], saved["environment"], saved["settings"], saved["seconds"])
    else:
        markdown = run(args)
    args.out.write_text(markdown)
    print(markdown)
    print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> str:
    start = time.perf_counter()
    candidates = [model for model in corpus.discover() if model.group in ("small", "standard")]
    models = corpus.select(candidates, args.models)
    problems = corpus.ensure_standard(models)
    if problems:
        raise SystemExit("cannot build: " + "; ".join(f"{name}: {why}" for name, why in problems.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    work_dir = Path(tempfile.mkdtemp(prefix="bench_quantize_", dir=args.out.parent)).resolve()
    env = environment()
    settings = {key: getattr(args, key) for key in ("models", "rounds", "latency_budget", "no_latency", "samples",
                                                    "timeout")}
    results: dict[str, dict] = {}
    print(f"{len(models)} models; work folder {work_dir}", flush=True)
    try:
        for index, model in enumerate(models, 1):
            print(f"[{index}/{len(models)}] {model.name} [{(time.perf_counter() - start) / 60:.1f} min]", flush=True)
            results[model.name] = bench_model(model, args, work_dir)
            for path in work_dir.glob(f"{model.name}.*.onnx"):
                path.unlink()
            json_path.write_text(json.dumps({"environment": env, "settings": settings, "models": results,
                                             "seconds": time.perf_counter() - start, "complete": False},
                                            indent=1, default=str))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    seconds = time.perf_counter() - start
    json_path.write_text(json.dumps({"environment": env, "settings": settings, "models": results,
                                     "seconds": seconds, "complete": True}, indent=1, default=str))
    print(f"wrote {json_path}; whole run {seconds / 60:.1f} min", flush=True)
    return render_markdown(results, env, settings, seconds)


if __name__ == "__main__":
    sys.exit(main())
