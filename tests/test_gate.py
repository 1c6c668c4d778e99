"""The gate: verdicts from thresholds (with injected measurements), its TOML configuration, and the CLI
end to end on the digits CNN: a lossless optimization passes; perturbed, slower and larger candidates fail."""

from __future__ import annotations

import json
import math
import os

import jsonschema
import numpy as np
import pytest
import validate_models as vm

import graphopt.validate.report as validation_report
from graphopt.cli import main
from graphopt.errors import UsageError
from graphopt.validate.gate import Thresholds, evaluate, load_config
from graphopt.validate.latency import Timing
from graphopt.validate.numerics import OutputComparison
from graphopt.validate.tensorrt_lint import LintFinding
from graphopt.validate.validation import (
    Accuracy,
    DataInfo,
    Latency,
    ModelInfo,
    ProviderResult,
    Validation,
)

SCHEMA = json.load(open(os.path.join(os.path.dirname(validation_report.__file__), "validation.schema.json")))


def measured(provider="cpu", *, ref_ms=10.0, cand_ms=5.0, cosine=0.9999, max_abs=1e-3, accuracy=(0.95, 0.94),
             problem=None) -> ProviderResult:
    """A provider result with injected measurements: latency samples, output errors, accuracy."""
    timing = Latency(Timing("reference", (ref_ms / 1e3,) * 5, 1), Timing("candidate", (cand_ms / 1e3,) * 5, 1),
                     ref_ms / cand_ms, {"reference": 0.01, "candidate": 0.01})
    output = OutputComparison("y", max_abs < 1e-2, max_abs, max_abs * 10, cosine, 0.99, problem)
    return ProviderResult(provider, outputs=(output,), accuracy=Accuracy("y", 100, *accuracy), latency=timing)


def validation(*providers: ProviderResult, ref_bytes=1000, cand_bytes=900, lint=None) -> Validation:
    return Validation(ModelInfo("ref.onnx", 10, ref_bytes, 100, 1000), ModelInfo("cand.onnx", 8, cand_bytes, 100, 900),
                      DataInfo("eval.npz", 100, False, "label"),
                      {"rtol": 1e-4, "atol": 1e-5, "optimization": "all", "threads": 1, "batch_size": 1,
                       "rounds": 5, "warmup_rounds": 2},
                      providers, tensorrt_lint=lint)


def by_check(verdicts):
    return {(v.check, v.provider): v for v in verdicts}


def test_each_threshold_passes_and_fails_at_its_limit():
    result = validation(measured())
    limits = Thresholds(max_accuracy_drop=1.0, min_cosine=0.9999, max_abs_error=1e-3, min_speedup=2.0,
                        max_size_ratio=0.9)
    verdicts = by_check(evaluate(result, limits))
    assert all(v.passed for v in verdicts.values()) and len(verdicts) == 5  # limits are inclusive
    assert verdicts[("max_accuracy_drop", "cpu")].value == pytest.approx(1.0)
    assert verdicts[("max_size_ratio", None)].value == pytest.approx(0.9)
    stricter = Thresholds(max_accuracy_drop=0.5, min_cosine=0.99999, max_abs_error=1e-4, min_speedup=2.5,
                          max_size_ratio=0.8)
    verdicts = by_check(evaluate(result, stricter))
    assert not any(v.passed for v in verdicts.values())
    assert "10.000 ms -> 5.000 ms" in verdicts[("min_speedup", "cpu")].detail


def test_slower_candidate_fails_min_speedup_per_provider():
    result = validation(measured("cpu", ref_ms=10, cand_ms=8), measured("cuda", ref_ms=1, cand_ms=1.25))
    verdicts = by_check(evaluate(result, Thresholds(min_speedup=1.0)))
    assert verdicts[("min_speedup", "cpu")].passed
    assert not verdicts[("min_speedup", "cuda")].passed and verdicts[("min_speedup", "cuda")].value == 0.8


def test_skipped_provider_gets_no_verdict_and_missing_measurements_fail():
    skipped = ProviderResult("tensorrt", skipped="no TensorrtExecutionProvider")
    unmeasured = ProviderResult("cpu", outputs=measured().outputs)  # no accuracy, no latency
    verdicts = by_check(evaluate(validation(unmeasured, skipped), Thresholds(max_accuracy_drop=1, min_speedup=1)))
    assert set(verdicts) == {("max_accuracy_drop", "cpu"), ("min_speedup", "cpu")}
    assert not any(v.passed for v in verdicts.values())
    assert verdicts[("min_speedup", "cpu")].value is None


def test_a_missing_output_fails_error_thresholds():
    broken = measured(problem="output 'y' is missing", max_abs=math.inf, cosine=0.0)
    verdicts = by_check(evaluate(validation(broken), Thresholds(min_cosine=-1, max_abs_error=1e9)))
    assert not verdicts[("min_cosine", "cpu")].passed and "missing" in verdicts[("min_cosine", "cpu")].detail
    assert not verdicts[("max_abs_error", "cpu")].passed


def test_tensorrt_lint_errors_fail_only_when_tensorrt_is_asked_for():
    lint = (LintFinding("zero-point-not-zero", "error", "q1", "zero point 3; TensorRT needs 0"),)
    trt = ProviderResult("tensorrt", skipped="not installed")
    verdicts = by_check(evaluate(validation(measured(), trt, lint=lint), Thresholds(min_cosine=0.9)))
    assert not verdicts[("tensorrt_lint", "tensorrt")].passed
    assert "TensorRT needs 0" in verdicts[("tensorrt_lint", "tensorrt")].detail
    assert ("tensorrt_lint", "tensorrt") not in by_check(evaluate(validation(measured(), lint=lint),
                                                                  Thresholds(min_cosine=0.9)))


@pytest.mark.parametrize("field, value", [("max_accuracy_drop", -1), ("max_accuracy_drop", 101), ("min_cosine", 1.5),
                                          ("max_abs_error", -0.1), ("min_speedup", 0), ("max_size_ratio", -2),
                                          ("min_cosine", math.nan), ("min_speedup", True), ("min_speedup", "fast")])
def test_thresholds_out_of_range_are_usage_errors(field, value):
    with pytest.raises(UsageError, match=f"threshold {field} must be"):
        Thresholds(**{field: value})


def test_no_thresholds_is_a_usage_error():
    with pytest.raises(UsageError, match="no thresholds"):
        evaluate(validation(measured()), Thresholds())


def test_report_json_matches_schema_and_has_no_infinities():
    broken = measured(problem="output 'y' is missing", max_abs=math.inf)
    result = validation(broken, ProviderResult("cuda", skipped="no CUDA"))
    verdicts = evaluate(result, Thresholds(max_abs_error=1, max_size_ratio=2))
    data = json.loads(validation_report.to_json(result, verdicts))
    jsonschema.validate(data, SCHEMA)
    assert data["passed"] is False and data["providers"][0]["outputs"][0]["max_abs_error"] is None
    assert data["providers"][1] == {"provider": "cuda", "status": "skipped", "reason": "no CUDA", "outputs": [],
                                    "accuracy": None, "latency": None, "placement": None}
    markdown = validation_report.to_markdown(result, verdicts)
    assert "FAIL (1 of 2 checks failed: max_abs_error[cpu])" in markdown
    assert "| cuda | skipped (see below) |" in markdown


def test_config_file(tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text('[gate]\nproviders = ["cpu", "cuda"]\nlabels = "label"\nmax_accuracy_drop = 0.5\n'
                      'min_speedup = 1.0\n')
    thresholds, settings = load_config(config)
    assert thresholds == Thresholds(max_accuracy_drop=0.5, min_speedup=1.0)
    assert settings == {"providers": ["cpu", "cuda"], "labels": "label"}
    assert thresholds.merged({"min_speedup": 0.9, "min_cosine": None}).min_speedup == 0.9  # options win


@pytest.mark.parametrize("text, message", [
    ("[gate]\nmin_speed = 1.0\n", "unknown key 'min_speed'"),
    ("[gate]\nmin_cosine = 2.0\n", "threshold min_cosine must be between -1 and 1"),
    ("[checks]\nmin_cosine = 0.9\n", r"no \[gate\] table"),
    ("[gate\n", "not valid TOML"),
])
def test_bad_config_is_a_usage_error(tmp_path, text, message):
    config = tmp_path / "gate.toml"
    config.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_config(config)
    with pytest.raises(UsageError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


# --- the CLI, end to end on the digits CNN ---------------------------------------------------------------


def gate(capsys, candidate, *options):
    code = main(["gate", vm.DIGITS, candidate, "--data", vm.DIGITS_DATA, "--rounds", "5", *map(str, options)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_gate_passes_a_lossless_optimization(candidates, capsys, tmp_path):
    report, markdown = tmp_path / "gate.json", tmp_path / "gate.md"
    code, out, err = gate(capsys, candidates["optimized"], "--labels", "label", "--max-accuracy-drop", "0",
                          "--min-cosine", "0.99999", "--max-abs-error", "1e-4", "--max-size-ratio", "1.01",
                          "--report", report, "--report-md", markdown)
    assert code == 0, err
    assert "PASS (4 checks)" in out
    data = json.loads(report.read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["passed"] and {v["check"] for v in data["verdicts"]} == {
        "max_accuracy_drop", "min_cosine", "max_abs_error", "max_size_ratio"}
    assert data["providers"][0]["latency"] is None  # no speed threshold: not timed
    assert "PASS (4 checks)" in markdown.read_text()


def test_gate_report_carries_the_optimization_that_made_the_candidate(candidates, capsys, tmp_path):
    optimize_report, report = tmp_path / "optimize.json", tmp_path / "gate.json"
    assert main(["optimize", vm.DIGITS, str(tmp_path / "opt.onnx"), "-q", "--report", str(optimize_report)]) == 0
    code, _, err = gate(capsys, str(tmp_path / "opt.onnx"), "--min-cosine", "0.99999", "--optimization-report",
                        optimize_report, "--report", report)
    assert code == 0, err
    data = json.loads(report.read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["optimization"]["schema"] == "graphopt.report/1"
    assert {p["name"] for p in data["optimization"]["passes"]} >= {"fold-constants", "fuse-conv-bn"}
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text('{"schema": "something/1"}')
    code, _, err = gate(capsys, str(tmp_path / "opt.onnx"), "--min-cosine", "0.9", "--optimization-report",
                        not_a_report)
    assert code == 2 and "not a graphopt optimize report" in err


def test_gate_fails_perturbed_weights(candidates, capsys):
    code, out, err = gate(capsys, candidates["perturbed"], "--min-cosine", "0.9999")
    assert code == 1
    assert "FAIL" in out and "gate FAILED: min_cosine[cpu]" in err


def test_gate_fails_a_slower_candidate(candidates, capsys, tmp_path):
    report = tmp_path / "slow.json"
    code, _, err = gate(capsys, candidates["slower"], "--min-speedup", "0.9", "--max-abs-error", "0",
                        "--report", report)
    assert code == 1 and "min_speedup[cpu]" in err and "max_abs_error" not in err
    data = json.loads(report.read_text())
    assert data["providers"][0]["latency"]["speedup"] < 0.9  # tens of times the work: far below, on any machine


def test_gate_fails_a_larger_candidate(candidates, capsys):
    code, _, err = gate(capsys, candidates["larger"], "--max-size-ratio", "1.0", "--max-abs-error", "0")
    assert code == 1 and "gate FAILED: max_size_ratio" in err


def test_gate_reports_a_missing_provider_and_fails_only_when_required(candidates, capsys, tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text('[gate]\nproviders = ["cpu", "cuda"]\nmin_cosine = 0.99999\n')
    code, out, _ = gate(capsys, candidates["optimized"], "--config", config)
    if "skipped" not in out:
        pytest.skip("this machine has CUDA")
    assert code == 0 and "CUDAExecutionProvider" in out
    code, _, err = gate(capsys, candidates["optimized"], "--config", config, "--require-provider")
    assert code == 1 and "provider cuda is required" in err


@pytest.mark.parametrize("args, message", [
    (["--min-cosine", "2"], "threshold min_cosine must be between -1 and 1"),
    ([], "no thresholds"),
    (["--max-accuracy-drop", "1"], "--max-accuracy-drop needs --labels"),
    (["--min-cosine", "0.9", "--shape", "input=1x1x32"], "does not fit"),
    (["--min-cosine", "0.9", "--shape", "input"], "expected NAME=D1xD2"),
    (["--min-cosine", "0.9", "--providers", "gpu"], "unknown provider 'gpu'"),
])
def test_gate_usage_errors_exit_2(candidates, capsys, args, message):
    code = main(["gate", vm.DIGITS, candidates["optimized"], *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_gate_different_signatures_and_bad_data_exit_2(candidates, capsys, tmp_path):
    other = tmp_path / "other.onnx"
    import onnx
    import onnx.parser
    onnx.save(onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n'
                                      'm (float[N,1,32,32] image) => (float[N,1,32,32] logits) {\n'
                                      '    logits = Relu(image)\n}\n'), other)
    code = main(["gate", vm.DIGITS, str(other), "--min-cosine", "0.9"])
    assert code == 2 and "the candidate has no input 'input'" in capsys.readouterr().err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, input=np.zeros((2, 3, 32, 32), np.float32))
    code = main(["gate", vm.DIGITS, candidates["optimized"], "--min-cosine", "0.9", "--data", str(wrong)])
    assert code == 2 and "data for input 'input' has shape [2, 3, 32, 32]" in capsys.readouterr().err


def test_validate_command(candidates, capsys, tmp_path):
    report = tmp_path / "validate.json"
    code = main(["validate", vm.DIGITS, candidates["optimized"], "--data", vm.DIGITS_DATA, "--labels", "label",
                 "--rounds", "3", "--per-layer", "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0 and "agree" in out and "shared tensors within tolerance" in out
    data = json.loads(report.read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["verdicts"] == [] and data["providers"][0]["latency"]["speedup"] > 0
    code = main(["validate", vm.DIGITS, candidates["perturbed"], "--no-latency", "--per-layer"])
    captured = capsys.readouterr()
    assert code == 1 and "outputs differ beyond" in captured.err and "first divergent node" in captured.out
