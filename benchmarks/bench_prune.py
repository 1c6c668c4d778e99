"""Structured channel pruning (prune-channels): what it removes, what it costs in accuracy, what it gains in speed.

    python benchmarks/bench_prune.py [--rounds 15] [--latency-budget 20] [--out benchmarks/results/prune.md]

The proof issue 5 asks for, in one run:

1. The trained classifiers in ``models/`` (digits CNN: Flatten -> Dense; small ResNet: residual; MobileNetV2:
   depthwise) at ratios 0.3 and 0.5, each pruned twice from the same input:
   ``lossless,prune-channels(ratio=R,reconstruct=false),lossless`` (no data) and
   ``lossless,prune-channels(ratio=R),lossless`` with ``models/digits_calib.npz`` (256 training images), so
   reconstruction is on. Every other option is the pass's default (criterion l1, scope local). Reported:
   MACs and parameters (``graphopt.inspection.describe``) as a fraction of the original's, test accuracy on
   ``models/digits_test.npz`` (360 images) without and with reconstruction, and CPU latency at batch 1 and
   batch 64. Both pruned models have the same structure, so latency is measured once per ratio. A third
   variant keeps channel counts multiples of 16 (``round_to=16``, onnxruntime's channel block on AVX-512
   machines such as this one) instead of the default 8.
2. The whole pipeline ``lossless,prune-channels(ratio=0.5),quantize-qdq(latency_batch=64)`` on the digits CNN
   (calibration data as above; quantize-qdq in its default auto mode, deciding int8 or float by timing at batch
   64, the batch the targets are read at): accuracy and latency against the original fp32 model.
3. The ``onnx`` package's light models (weights made by ConstantOfShape, so the pipeline starts with
   ``fold(max_growth=inf)`` to make them initializers): ``...,prune-channels(ratio=0.5),lossless`` without
   data. Checked: the result passes the ONNX checker, loads and runs in onnxruntime, its outputs keep their
   shapes; reported: groups pruned and declined, with the reasons of the declines, MACs before and after.

Latency: onnxruntime CPU, ORT_ENABLE_ALL, 1 intra-op thread, as deployed; original, lossless and pruned
models interleaved in rotated rounds (``graphopt.validate.latency.measure_interleaved``): warm-up, then up to
``--rounds`` rounds, stopping after the round that passes ``--latency-budget`` seconds. A speedup is the median
over rounds of original / pruned time in the same round. The machine is shared: the load average is recorded.

Writes ``<out>`` (Markdown, also printed) and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import graphopt  # noqa: E402
from graphopt.inspection import describe  # noqa: E402
from graphopt.validate.latency import measure_interleaved  # noqa: E402
from graphopt.validate.numerics import run_model  # noqa: E402
from graphopt.validate.providers import SessionSettings, open_session  # noqa: E402

MODELS = ("digits_cnn", "resnet_small", "mobilenetv2_small")
RATIOS = (0.3, 0.5)
BATCHES = (1, 64)
LIGHT = ("resnet50", "densenet121", "shufflenet", "inception_v1", "inception_v2", "squeezenet", "vgg19")
CALIBRATION = ROOT / "models" / "digits_calib.npz"
TEST = ROOT / "models" / "digits_test.npz"


def _accuracy(path: str, test: dict) -> float:
    (logits,) = run_model(path, {"input": test["input"]}).values()
    return float((logits.argmax(axis=1) == test["label"]).mean() * 100)


def _size(path: str) -> dict[str, Any]:
    summary = describe(onnx.load(path), path)
    return {"macs": summary.macs, "parameters": summary.parameters, "bytes": summary.file_bytes,
            "nodes": summary.nodes}


def _stats(result, name: str = "prune-channels") -> dict[str, int]:
    stats: dict[str, int] = {}
    for record in result.report.passes:
        if record.name == name and record.result is not None:
            for key, value in record.result.stats.items():
                stats[key] = stats.get(key, 0) + value
    return stats


def _latency(paths: dict[str, str], test: dict, args: argparse.Namespace) -> dict[str, Any]:
    sessions = {name: open_session(path, "cpu", SessionSettings("all", 1)) for name, path in paths.items()}
    results = {}
    for batch in BATCHES:
        feed = {"input": test["input"][:batch]}
        run = measure_interleaved({name: (lambda s=s, f=feed: s.run(None, f)) for name, s in sessions.items()},
                                  rounds=args.rounds, warmup_rounds=2, min_block_seconds=0.05,
                                  budget_seconds=args.latency_budget, min_rounds=3)
        results[str(batch)] = {"median_ms": {n: t.median * 1000 for n, t in run.timings.items()},
                               "speedup_vs_original": {n: run.paired_ratio("original", n) for n in paths},
                               "rounds": run.rounds, "load_average": os.getloadavg()}
        print(f"    batch {batch}: " + ", ".join(f"{n} {results[str(batch)]['median_ms'][n]:.3g} ms" for n in paths),
              flush=True)
    return results


def bench_trained(name: str, work: Path, test: dict, args: argparse.Namespace) -> dict[str, Any]:
    source = str(ROOT / "models" / f"{name}.onnx")
    lossless = str(work / f"{name}_lossless.onnx")
    graphopt.optimize(source, lossless, passes="lossless")
    record: dict[str, Any] = {"original": {**_size(source), "accuracy": _accuracy(source, test)},
                              "lossless": {**_size(lossless), "accuracy": _accuracy(lossless, test)}, "ratios": {}}
    for ratio in RATIOS:
        entry = {}
        for label, options, data in (("plain", ",reconstruct=false", None), ("reconstructed", "", str(CALIBRATION)),
                                     ("round16", ",round_to=16", str(CALIBRATION))):
            path = str(work / f"{name}_{ratio}_{label}.onnx")
            start = time.perf_counter()
            result = graphopt.optimize(source, path, passes=f"lossless,prune-channels(ratio={ratio}{options}),lossless",
                                       data=data)
            entry[label] = {**_size(path), "accuracy": _accuracy(path, test), "stats": _stats(result),
                            "seconds": time.perf_counter() - start, "path": path}
            print(f"  {name} ratio {ratio} {label}: accuracy {entry[label]['accuracy']:.2f}%, MACs "
                  f"{entry[label]['macs'] / record['original']['macs']:.3f}x", flush=True)
        entry["latency"] = _latency({"original": source, "lossless": lossless, "pruned": entry["reconstructed"]["path"],
                                     "round16": entry["round16"]["path"]}, test, args)
        record["ratios"][str(ratio)] = entry
    return record


def bench_pipeline(work: Path, test: dict, args: argparse.Namespace) -> dict[str, Any]:
    source = str(ROOT / "models" / "digits_cnn.onnx")
    path = str(work / "digits_pipeline.onnx")
    pipeline = "lossless,prune-channels(ratio=0.5),quantize-qdq(latency_batch=64)"
    start = time.perf_counter()
    result = graphopt.optimize(source, path, passes=pipeline, data=str(CALIBRATION))
    seconds = time.perf_counter() - start
    quantize = _stats(result, "quantize-qdq")
    print(f"  pipeline: accuracy {_accuracy(path, test):.2f}%", flush=True)
    return {"pipeline": pipeline, "seconds": seconds, "accuracy": _accuracy(path, test),
            "original_accuracy": _accuracy(source, test), **_size(path), "original": _size(source),
            "prune": _stats(result), "quantize": quantize,
            "latency": _latency({"original": source, "optimized": path}, test, args)}


def bench_light(name: str, work: Path) -> dict[str, Any]:
    source = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    folded = str(work / f"light_{name}_folded.onnx")
    path = str(work / f"light_{name}_pruned.onnx")
    graphopt.optimize(str(source), folded, passes="fold(max_growth=inf),lossless")
    start = time.perf_counter()
    try:
        result = graphopt.optimize(folded, path, passes="prune-channels(ratio=0.5),lossless")
    except graphopt.GraphoptError as error:
        return {"error": str(error)}
    seconds = time.perf_counter() - start
    pruned = onnx.load(path)
    onnx.checker.check_model(pruned, full_check=True)
    model = onnx.load(folded)
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feeds = {model.graph.input[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    before, after = run_model(folded, feeds), run_model(path, feeds)
    record = next(r for r in result.report.passes if r.name == "prune-channels")
    declines = sorted({reason for d in record.result.diagnostics if ": not pruned: " in str(d)
                       for reason in str(d).split(": not pruned: ", 1)[1].split("; ")})
    return {"seconds": seconds, "stats": dict(record.result.stats), "declines": declines,
            "shapes_kept": all(before[k].shape == after[k].shape for k in before) and before.keys() == after.keys(),
            "runs": True, "checker": True, "before": _size(folded), "after": _size(path)}


def render(results: dict[str, Any]) -> str:
    lines = ["# Channel pruning benchmark (prune-channels)", "",
             f"Run {results['date']}, {results['seconds']:.0f} s; onnxruntime {results['onnxruntime']}, "
             f"load average at start {results['load_average'][0]:.2f}. Command: `python benchmarks/bench_prune.py`.",
             "Latency: CPU, ORT_ENABLE_ALL, 1 thread, original / lossless / pruned interleaved in rotated rounds; "
             "speedup = median over rounds of original / pruned time.", "",
             "## Trained classifiers (test accuracy on digits_test, 360 images)", "",
             "| model | ratio | round_to | MACs | params | accuracy original | no reconstruction | "
             "with reconstruction | batch 1 speedup | batch 64 speedup | batch 64 vs lossless |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, record in results["trained"].items():
        original = record["original"]
        for ratio, entry in record["ratios"].items():
            latency = entry["latency"]
            for variant, round_to, plain in (("pruned", "8 (default)", entry["plain"]), ("round16", "16", None)):
                refit = entry["reconstructed" if variant == "pruned" else variant]
                vs_lossless = latency["64"]["median_ms"]["lossless"] / latency["64"]["median_ms"][variant]
                no_refit = (f"{plain['accuracy']:.2f}% ({plain['accuracy'] - original['accuracy']:+.2f})"
                            if plain else "-")
                lines.append(
                    f"| {name} | {ratio} | {round_to} | {refit['macs'] / original['macs']:.3f}x | "
                    f"{refit['parameters'] / original['parameters']:.3f}x | {original['accuracy']:.2f}% | "
                    f"{no_refit} | {refit['accuracy']:.2f}% ({refit['accuracy'] - original['accuracy']:+.2f}) | "
                    f"{latency['1']['speedup_vs_original'][variant]:.2f}x | "
                    f"{latency['64']['speedup_vs_original'][variant]:.2f}x | {vs_lossless:.2f}x |")
    pipeline = results["pipeline"]
    lines += ["", f"## Whole pipeline on the digits CNN: `{pipeline['pipeline']}`", "",
              f"Accuracy {pipeline['original_accuracy']:.2f}% -> {pipeline['accuracy']:.2f}% "
              f"({pipeline['accuracy'] - pipeline['original_accuracy']:+.2f} points); latency speedup vs the "
              f"original fp32 model: batch 1 {pipeline['latency']['1']['speedup_vs_original']['optimized']:.2f}x, "
              f"batch 64 {pipeline['latency']['64']['speedup_vs_original']['optimized']:.2f}x; file "
              f"{pipeline['original']['bytes']:,} -> {pipeline['bytes']:,} bytes.",
              "", "## onnx light models: `fold(max_growth=inf),lossless`, then "
              "`prune-channels(ratio=0.5),lossless`", "",
              "| model | valid, runs, output shapes kept | groups | pruned | declined | MACs | declined because |",
              "|---|---|---|---|---|---|---|"]
    for name, record in results["light"].items():
        if "error" in record:
            lines.append(f"| {name} | error: {record['error']} | | | | | |")
            continue
        stats = record["stats"]
        declines = sorted({_shorten(r) for r in record["declines"]})
        reasons = "; ".join(declines[:4]) + (" ..." if len(declines) > 4 else "")
        lines.append(f"| {name} | {'yes' if record['shapes_kept'] else 'NO'} | {stats.get('groups', 0)} | "
                     f"{stats.get('groups.pruned', 0)} | "
                     f"{stats.get('skipped.group_blocked', 0) + stats.get('skipped.group_constraints', 0)} | "
                     f"{record['after']['macs'] / max(record['before']['macs'], 1):.3f}x | {reasons} |")
    return "\n".join(lines) + "\n"


def _shorten(reason: str) -> str:
    """A decline reason without the node name, so the same rule reads once per model."""
    parts = reason.split("'")
    return parts[0] + "'...'" + "'".join(parts[2:]) if len(parts) >= 3 else reason


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--latency-budget", type=float, default=20.0)
    parser.add_argument("--out", default=str(HERE / "results" / "prune.md"))
    args = parser.parse_args(argv)
    import onnxruntime

    start = time.perf_counter()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "onnxruntime": onnxruntime.__version__,
                               "load_average": os.getloadavg(), "trained": {}, "light": {}}
    test = dict(np.load(TEST))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name in MODELS:
            print(f"{name}", flush=True)
            results["trained"][name] = bench_trained(name, work, test, args)
        print("pipeline", flush=True)
        results["pipeline"] = bench_pipeline(work, test, args)
        for name in LIGHT:
            print(f"light {name}", flush=True)
            results["light"][name] = bench_light(name, work)
    results["seconds"] = time.perf_counter() - start
    text = render(results)
    Path(args.out).write_text(text)
    for entry in results["trained"].values():
        for ratio in entry["ratios"].values():
            for variant in ("plain", "reconstructed", "round16"):
                ratio[variant].pop("path")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
