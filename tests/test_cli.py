"""The CLI: exit codes, one-line errors, no output file on failure, the summary and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import pytest

from graphopt.cli import main

TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N,4] x) => (float[N,4] y) {
    t = Identity(x)
    u = Relu(t)
    dead = Sigmoid(x)
    y = Identity(u)
}
"""


@pytest.fixture
def tiny_model(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save_model(onnx.parser.parse_model(TINY), path)
    return path


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_optimize_writes_output_and_prints_summary(tiny_model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    code, stdout, _ = run_cli(capsys, "optimize", tiny_model, out, "--passes", "cleanup", "--report", report)
    assert code == 0
    assert "eliminate-identity" in stdout and "nodes 4 -> 1" in stdout
    optimized = onnx.load(out)
    assert [n.op_type for n in optimized.graph.node] == ["Relu"]
    assert optimized.graph.output[0].name == "y"
    data = json.loads(report.read_text())
    assert data["schema"] == "graphopt.report/1"
    assert data["input"]["nodes"] == 4 and data["output"]["nodes"] == 1
    stats = {p["name"]: p["stats"] for p in data["passes"]}
    assert stats["eliminate-identity"] == {"removed.identity": 2}
    assert stats["eliminate-dead-nodes"] == {"removed.nodes": 1}


def test_report_markdown(tiny_model, tmp_path, capsys):
    markdown = tmp_path / "report.md"
    code, _, _ = run_cli(capsys, "optimize", tiny_model, tmp_path / "o.onnx", "-p", "cleanup", "--report-md",
                         markdown, "-q")
    assert code == 0
    text = markdown.read_text()
    assert "| eliminate-identity | 1 |" in text and "removed.identity=2" in text


def test_refuses_to_overwrite_input_without_in_place(tiny_model, capsys):
    before = tiny_model.read_bytes()
    code, _, err = run_cli(capsys, "optimize", tiny_model, tiny_model, "-p", "cleanup")
    assert code == 2
    assert "refusing to overwrite the input" in err and "--in-place" in err
    assert tiny_model.read_bytes() == before
    code, _, _ = run_cli(capsys, "optimize", tiny_model, tiny_model, "-p", "cleanup", "--in-place", "-q")
    assert code == 0
    assert len(onnx.load(tiny_model).graph.node) == 1


def _bad_inputs(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    real = tiny_model.read_bytes()
    cases = {
        "missing": None,
        "empty": b"",
        "random": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated": real[: len(real) // 2],
        "text": b"this is a README, not a model\nsecond line\n",
        "tensor-proto": onnx.numpy_helper.from_array(np.ones((3, 3), np.float32), "w").SerializeToString(),
    }
    paths = {}
    for name, content in cases.items():
        path = tmp_path / f"{name}.onnx"
        if content is not None:
            path.write_bytes(content)
        paths[name] = path
    return paths


@pytest.mark.parametrize("case", ["missing", "empty", "random", "truncated", "text", "tensor-proto"])
def test_bad_model_input_gives_one_line_and_exit_2(case, tiny_model, tmp_path, capsys):
    path = _bad_inputs(tmp_path, tiny_model)[case]
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "optimize", path, out, "-p", "cleanup")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphopt: error: ") and str(path) in lines[0]
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("passes, message", [
    ("no-such-pass", "unknown pass 'no-such-pass'"),
    ("eliminate-dead-nodes(initializer_inputs=maybe)", "option 'initializer_inputs' must be true or false"),
    ("fixed-point(cleanup,max_iterations=0)", "option 'max_iterations' must be an integer in [1, 1000]"),
    ("cleanup(", "expected"),
])
def test_bad_pipeline_gives_exit_2(passes, message, tiny_model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "optimize", tiny_model, out, "--passes", passes)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_pass_lists_known_names(tiny_model, tmp_path, capsys):
    _, _, err = run_cli(capsys, "optimize", tiny_model, tmp_path / "o.onnx", "--passes", "elminate-identity")
    assert "did you mean 'eliminate-identity'" in err and "eliminate-dead-nodes" in err


def test_unwritable_output_folder(tiny_model, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "folder" / "out.onnx"
    code, _, err = run_cli(capsys, "optimize", tiny_model, out)
    assert code == 2 and "does not exist" in err
    assert not out.parent.exists()


def test_output_that_is_a_folder(tiny_model, tmp_path, capsys):
    code, _, err = run_cli(capsys, "optimize", tiny_model, tmp_path)
    assert code == 2 and "it is a folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder(tiny_model, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, _, err = run_cli(capsys, "optimize", tiny_model, folder / "out.onnx")
    finally:
        folder.chmod(0o700)
    assert code == 2 and "permission denied" in err


def test_usage_error_from_typer_exits_2(capsys):
    code, _, err = run_cli(capsys, "optimize", "--no-such-option")
    assert code == 2


def test_passes_lists_names_options_and_presets(capsys):
    code, stdout, _ = run_cli(capsys, "passes")
    assert code == 0
    for text in ("eliminate-dead-nodes", "eliminate-identity", "fixed-point", "max_iterations=10",
                 "preset lossless", "alias  dce = eliminate-dead-nodes"):
        assert text in stdout


def test_inspect(tiny_model, capsys):
    code, stdout, _ = run_cli(capsys, "inspect", tiny_model, "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["nodes"] == 4 and summary["ops"] == {"Identity": 2, "Relu": 1, "Sigmoid": 1}
    assert summary["inputs"] == [{"name": "x", "dtype": "float", "shape": ["N", 4]}]


def test_inspect_counts_macs(tmp_path, capsys):
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] x, float[1,16] a) => (float[1,4,8,8] y, float[1,5] z) {
            w = Constant <value = float[4,3,3,3] {""" + ",".join(["0.1"] * 108) + """}> ()
            y = Conv <pads = [1,1,1,1]> (x, w)
            b = Constant <value = float[16,5] {""" + ",".join(["0.5"] * 80) + """}> ()
            z = MatMul (a, b)
        }""")
    path = tmp_path / "macs.onnx"
    onnx.save_model(model, path)
    code, stdout, _ = run_cli(capsys, "inspect", path, "--json")
    summary = json.loads(stdout)
    # Conv: 1*4*8*8 outputs x (3 * 3*3) = 6912; MatMul: 1*5 outputs x 16 = 80
    assert summary["macs"] == 6912 + 80 and summary["macs_unknown"] == 0
    assert summary["parameters"] == 108 + 80


def test_internal_error_exit_3_with_reproducer(tiny_model, tmp_path, monkeypatch, capsys):
    from passes.eliminate_identity import EliminateIdentity

    def broken(self, graph, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(EliminateIdentity, "run", broken)
    repro = tmp_path / "repro"
    out = tmp_path / "out.onnx"
    passes = "eliminate-identity,eliminate-dead-nodes"
    code, _, err = run_cli(capsys, "optimize", tiny_model, out, "-p", passes, "--reproducer-dir", repro)
    assert code == 3
    assert "pass eliminate-identity failed: RuntimeError: boom" in err and str(repro) in err
    assert (repro / "pipeline.txt").read_text().strip() == "eliminate-identity,eliminate-dead-nodes"
    assert onnx.load(repro / "input.onnx") == onnx.load(tiny_model)
    assert not out.exists()


def test_console_script_and_module_entry_points(tiny_model, tmp_path):
    out = tmp_path / "out.onnx"
    result = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(tiny_model), str(out), "-q"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert out.exists()
    result = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(tmp_path / "nope.onnx"),
                             str(tmp_path / "x.onnx")], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and result.stderr.strip().startswith("graphopt: error:")
