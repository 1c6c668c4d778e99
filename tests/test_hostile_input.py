"""Hostile and damaged input through the real CLI: every file of ``hostile_corpus`` gets the exit code it
should, one line of error without a traceback, no output, no temporary file, an untouched input, and no read
of a file outside the model's folder. The two it can work on are written: custom ops pass through unchanged
with a diagnostic, and If nodes nested as deep as protobuf parses are no problem. inspect, lint and validate
refuse the damaged files as optimize does."""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import hostile_corpus
import onnx
import pytest
from hostile_corpus import EXIT_OK, EXIT_USAGE, UNKNOWN_DOMAIN, Case

from graphopt.cli import main

CASE_NAMES = hostile_corpus.case_names()
REFUSED = [name for name in CASE_NAMES if name not in ("unknown-domain", "nested-ifs-legal")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Case]:
    """The corpus, built once for this module; each test leaves it as it found it (which the tests check)."""
    return {case.name: case for case in hostile_corpus.build(tmp_path_factory.mktemp("hostile"))}


@pytest.fixture(scope="module")
def valid_model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("valid") / "valid.onnx"
    onnx.save_model(hostile_corpus.valid_model(), path)
    return path


class OpenWatch:
    """Notices every open of the watched files, from Python or C++, by this process or another (Linux inotify):
    onnx opens external data in C++, which a patched ``open`` would not see."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, paths) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip(f"inotify is not available: {os.strerror(ctypes.get_errno())}")
        self.paths = {}
        for path in paths:
            watch = self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN | self.IN_ACCESS)
            assert watch >= 0, f"cannot watch {path}: {os.strerror(ctypes.get_errno())}"
            self.paths[watch] = str(path)

    def opened(self) -> set[str]:
        """The watched files opened or read since the watch began (or since the last call)."""
        found = set()
        while True:
            try:
                events = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            position = 0
            while position < len(events):  # struct inotify_event: int wd; uint32 mask, cookie, len; char name[len]
                watch, _, _, length = struct.unpack_from("iIII", events, position)
                found.add(self.paths[watch])
                position += struct.calcsize("iIII") + length

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def watch():
    """``watch(paths)`` starts an ``OpenWatch`` of ``paths``, closed after the test."""
    watches = []

    def start(paths) -> OpenWatch:
        watches.append(OpenWatch(paths))
        return watches[-1]

    yield start
    for started in watches:
        started.close()


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: a file's bytes, a link's target (links are not followed)."""
    entries: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        entries[key] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes() if path.is_file() else "/"
    return entries


def run_cli(capfd, *args) -> tuple[int, str, str]:
    """The CLI in this process; stdout and stderr captured at the file descriptors, so that what onnx or
    onnxruntime print from C++ counts too."""
    code = main([str(a) for a in args])
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, case: Case) -> None:
    assert code == case.exit_code, f"{case.name}: exit {code}\n{out}\n{err}"
    assert "Traceback" not in out + err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("graphopt: error: ")
    assert case.message in lines[0]


# ---------------------------------------------------------------------------------------------------------
# graphopt optimize


@pytest.mark.parametrize("name", CASE_NAMES)
def test_optimize(corpus, name, tmp_path, capfd, watch):
    """optimize exits as the case says: with 2, one line naming the problem and nothing written (no output,
    no temporary file, no reproducer, no report) and the input untouched; with 0, the output written. Never
    a file outside the model's folder read."""
    case = corpus[name]
    before = snapshot(case.path.parent)
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    output, report, reproducer = out_folder / "out.onnx", tmp_path / "report.json", tmp_path / "reproducer"
    guarded = watch(case.guarded)
    code, out, err = run_cli(capfd, "optimize", case.path, output, "-q", "--report", report,
                             "--reproducer-dir", reproducer)
    assert guarded.opened() == set()
    assert snapshot(case.path.parent) == before
    assert not reproducer.exists()
    if case.exit_code == EXIT_USAGE:
        assert_one_line_error(code, out, err, case)
        assert str(case.path) in err
        assert os.listdir(out_folder) == [] and not report.exists()
        return
    assert code == EXIT_OK, err
    assert "Traceback" not in out + err
    assert os.listdir(out_folder) == ["out.onnx"]
    onnx.checker.check_model(str(output), full_check=True)
    diagnostics = json.loads(report.read_text())["diagnostics"]
    if case.message:
        assert any(case.message in d for d in diagnostics), diagnostics


def test_optimize_passes_custom_ops_through_unchanged(corpus, tmp_path, capfd):
    """The ops of an unknown domain reach the output as they were (attributes and wiring), the domain stays
    imported, the passes still remove what is dead around them, and the summary names them."""
    case = corpus["unknown-domain"]
    output = tmp_path / "out.onnx"
    code, out, err = run_cli(capfd, "optimize", case.path, output, "--reproducer-dir", tmp_path / "reproducer")
    assert code == EXIT_OK, err
    original, optimized = onnx.load(case.path), onnx.load(output)
    assert list(optimized.graph.node) == [n for n in original.graph.node if n.name != "dead"]
    assert [n.op_type for n in optimized.graph.node] == ["Frobnicate", "Frobnicate", "Add", "Relu"]
    assert {(o.domain, o.version) for o in optimized.opset_import} == {("", hostile_corpus.OPSET), (UNKNOWN_DOMAIN, 1)}
    assert list(optimized.graph.initializer) == list(original.graph.initializer)
    assert f"custom ops of domain '{UNKNOWN_DOMAIN}' (Frobnicate)" in out
    assert f"wrote {output}" in out


@pytest.mark.parametrize("failure", [
    "[ONNXRuntimeError] : 1 : FAIL : Type Error: Type (tensor(int64)) of input parameter (k) of operator (Add)",
    "[ONNXRuntimeError] : 1 : FAIL : Fatal error: com.microsoft:NoSuchOp(-1) is not a registered function/op",
], ids=["other-error", "missing-standard-kernel"])
def test_optimize_still_refuses_an_output_that_onnxruntime_rejects_for_other_reasons(corpus, tmp_path, capfd,
                                                                                     monkeypatch, failure):
    """Custom ops excuse onnxruntime's refusal to load the output only when it lacks one of their kernels:
    any other load failure of the output is still an internal error (exit 3) and nothing is written."""
    import graphopt.validate.numerics as numerics

    real_session = numerics.cpu_session

    def session(model, *args, **kwargs):
        if isinstance(model, str):  # the written output (the opset probes pass ModelProtos)
            raise RuntimeError(failure)
        return real_session(model, *args, **kwargs)

    monkeypatch.setattr(numerics, "cpu_session", session)
    output = tmp_path / "out.onnx"
    code, _, err = run_cli(capfd, "optimize", corpus["unknown-domain"].path, output, "-q",
                           "--reproducer-dir", tmp_path / "reproducer")
    assert code == 3
    assert "does not load in onnxruntime" in err and failure.split("FAIL : ")[1] in err
    assert os.listdir(tmp_path) == ["reproducer"]


# ---------------------------------------------------------------------------------------------------------
# The other commands that read a model


COMMANDS = {
    "inspect": lambda bad, good: ["inspect", bad],
    "lint": lambda bad, good: ["lint", bad],
    "validate-reference": lambda bad, good: ["validate", bad, good, "--no-latency"],
    "validate-candidate": lambda bad, good: ["validate", good, bad, "--no-latency"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", REFUSED)
def test_other_commands_refuse_with_one_line(corpus, valid_model_path, name, command, capfd, watch):
    """inspect, lint and validate (the damaged file as reference or candidate) refuse each damaged file as
    optimize does: exit 2, one line naming the file, no traceback, nothing written, no read outside."""
    case = corpus[name]
    before = snapshot(case.path.parent)
    guarded = watch(case.guarded)
    code, out, err = run_cli(capfd, *COMMANDS[command](case.path, valid_model_path))
    assert guarded.opened() == set()
    assert_one_line_error(code, out, err, case)
    assert str(case.path) in err
    assert snapshot(case.path.parent) == before


# ---------------------------------------------------------------------------------------------------------
# The corpus and the checks themselves


def test_the_watch_notices_external_data_being_read(tmp_path, capfd, watch):
    """Control for the never-read checks: the watch notices graphopt reading external data it may read (onnx
    reads it from C++), and does not notice a mere look at the file."""
    folder = tmp_path / "model"
    folder.mkdir()
    model = hostile_corpus.valid_model()
    onnx.save_model(model, folder / "model.onnx", save_as_external_data=True, location="w.data", size_threshold=0)
    data = folder / "w.data"
    watched = watch([data])
    assert data.stat().st_size > 0 and os.path.realpath(data) == str(data)
    assert watched.opened() == set()
    code, _, err = run_cli(capfd, "inspect", folder / "model.onnx")
    assert code == EXIT_OK, err
    assert watched.opened() == {str(data)}


def test_the_corpus_covers_the_issue_and_stays_small(corpus):
    """Every kind of input the issue lists is there, every file is at most 64 KB, and each case's message
    is a real fragment (empty only where no diagnostic is expected)."""
    assert {"empty", "random-bytes", "truncated", "text", "tensor-proto", "graph-proto", "cycle", "dangling-input",
            "duplicate-output", "external-missing", "external-dot-dot", "external-etc-passwd", "external-absolute",
            "external-symlink", "ir-version-too-new", "opset-too-new", "unknown-domain", "huge-initializer-dims",
            "huge-input-dims", "nested-ifs"} <= set(corpus)
    for case in corpus.values():
        assert case.path.stat().st_size <= 64 * 1024, case.name
        assert case.message or case.exit_code == EXIT_OK, case.name
    assert corpus["empty"].path.stat().st_size == 0
    valid = hostile_corpus.valid_model().SerializeToString()
    assert corpus["truncated"].path.read_bytes() == valid[: len(valid) // 2]


def test_the_nested_model_is_as_deep_as_it_claims():
    """The hand-serialized nesting parses (as far as protobuf goes) into If nodes inside If nodes."""
    model = onnx.ModelProto.FromString(hostile_corpus._nested_ifs(hostile_corpus.LEGAL_NESTING_DEPTH))
    onnx.checker.check_model(model, full_check=True)
    depth, graph = 0, model.graph
    while graph.node[0].op_type == "If":
        depth += 1
        graph = next(a.g for a in graph.node[0].attribute if a.name == "then_branch")
    assert depth == hostile_corpus.LEGAL_NESTING_DEPTH
    deep = hostile_corpus._nested_ifs(hostile_corpus.NESTING_DEPTH)
    assert deep.count(b"then_branch") == hostile_corpus.NESTING_DEPTH


def test_the_corpus_script_writes_and_lists_every_case(tmp_path):
    """``python tests/hostile_corpus.py OUTDIR`` writes the corpus and prints one line per case."""
    script = Path(hostile_corpus.__file__)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "corpus")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == CASE_NAMES
    for name in CASE_NAMES:
        assert any((tmp_path / "corpus" / name).iterdir())
