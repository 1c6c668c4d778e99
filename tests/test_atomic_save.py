"""Nothing lost: a process killed (SIGKILL) while it writes a model leaves the target as it was, and graphopt
never modifies the model it optimizes.

Each test starts a real child process (``atomic_save_child.py``) that saves a model of about 24 MB, with
``graphopt.save`` or with ``graphopt optimize``, to a path where an older valid model (of the same structure,
other weights) already exists, or to a fresh path. The child stops at a point the test names through the
environment (mid-write of the model or of its external data file, after a file was completely written, before
or after each rename), and the test kills it there with SIGKILL. Then:

- the target is byte-identical to the previous model (and its external data file too, so that it still loads
  as the previous model), or, where there was none, absent; never a truncated or mixed file. Only a kill
  after the final rename may leave the new model, complete;
- no file the killed process left anywhere in the folder is loadable as a model other than the previous or
  the new one (``graphopt.load`` refuses a truncated file; a complete staged copy of the new model may load);
- the input of ``graphopt optimize`` is byte-identical before and after (hash of every file of its folder),
  killed or not, and with its weights in an external data file; with ``--in-place`` it is the previous or
  the new model, never a partial one.

The last tests cover what the kills found: with external data, the data file used to be renamed over the
previous one before the model was (a kill in between left the previous model reading the new weights: a
valid model that computes something else), and a data file of another model that happened to have the
target's data file name was overwritten.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest

import graphopt
from graphopt.errors import ModelError

CHILD = Path(__file__).with_name("atomic_save_child.py")
ROWS, COLUMNS = 1536, 2048  # two float32 weights of 12 MiB each
MIB = 2**20


def big_model(seed: int) -> onnx.ModelProto:
    """x[1, ROWS] -> MatMul(W1[ROWS, COLUMNS]) -> Relu -> MatMul(W2[COLUMNS, ROWS]) -> y, about 24 MiB, and an
    Identity that ``cleanup`` removes (so that optimizing changes the model)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((ROWS, COLUMNS)) / np.sqrt(ROWS)).astype(np.float32)
    w2 = (rng.standard_normal((COLUMNS, ROWS)) / np.sqrt(COLUMNS)).astype(np.float32)
    nodes = [oh.make_node("Identity", ["x"], ["xi"]), oh.make_node("MatMul", ["xi", "w1"], ["h"]),
             oh.make_node("Relu", ["h"], ["r"]), oh.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = oh.make_graph(nodes, f"big{seed}", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, ROWS])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, ROWS])],
                          [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def weights_of(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def run_child(args: list[str], pause: str, tmp_path: Path, kill: bool = True) -> str:
    """Run the child until it stops at ``pause``, SIGKILL it, and return what it was doing when it stopped."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    env = {**os.environ, "GRAPHOPT_TEST_PAUSE": pause, "GRAPHOPT_TEST_READY": str(ready),
           "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(CHILD), *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            if child.poll() is not None:
                out, err = child.communicate()
                pytest.fail(f"the child exited with {child.returncode} before reaching {pause!r}:\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"the child did not reach {pause!r} within 180 s")
            time.sleep(0.02)
        if kill:
            os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    return ready.read_text()


def assert_no_wrong_model(folder: Path, allowed: list[onnx.ModelProto], skip: set[Path] = frozenset()) -> None:
    """Every file under ``folder`` (but ``skip``) either is refused by ``graphopt.load`` or loads as one of the
    ``allowed`` models (compared by weights and nodes)."""
    expected = [(weights_of(m), [n.op_type for n in m.graph.node]) for m in allowed]
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path in skip or path.name.startswith("ready-"):
            continue
        try:
            loaded = graphopt.load(path)
        except ModelError:
            continue
        found = (weights_of(loaded), [n.op_type for n in loaded.graph.node])
        assert found in expected, f"{path} (left by the killed process) loads as a model that is neither " \
                                  f"the previous nor the new one"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """``old``, ``new`` (big models with other weights) and ``new_ext`` (``new`` with its weights in
    ``new_ext.onnx.data``), written once."""
    folder = tmp_path_factory.mktemp("sources")
    paths = {"old": folder / "old.onnx", "new": folder / "new.onnx", "new_ext": folder / "new_ext.onnx"}
    onnx.save_model(big_model(0), paths["old"])
    onnx.save_model(big_model(1), paths["new"])
    graphopt.save(big_model(1), paths["new_ext"], external_data=True)
    return paths


def _previous(target: Path, models: dict[str, Path], external: bool) -> dict[str, str]:
    """Put the previous (old) model at ``target`` (with external data if asked); return the folder's hashes."""
    if external:
        graphopt.save(graphopt.load(models["old"]), target, external_data=True)
    else:
        target.write_bytes(models["old"].read_bytes())
    return snapshot(target.parent)


# Where to stop a save (see atomic_save_child.py): mid-write at 1 MiB and 16 MiB into a file, after the model
# (and its data file) were written, before and after each rename.
INLINE_PAUSES = ["write:1048576", "write:16777216", "fsync:1", "replace:1"]
EXTERNAL_PAUSES = ["write:1048576", "write:16777216", "fsync:1", "fsync:2", "replace:1", "replace-after:1"]


@pytest.mark.parametrize("pause", INLINE_PAUSES)
def test_killed_save_leaves_the_previous_model(tmp_path, models, pause):
    """graphopt.save over an existing model, killed before the rename: the previous file, byte for byte."""
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    before = _previous(target, models, external=False)
    what = run_child(["save", str(models["new"]), str(target)], pause, tmp_path)
    assert digest(target) == before["model.onnx"], f"killed at {what!r}: the target changed"
    assert_no_wrong_model(target.parent, [big_model(0), big_model(1)])
    assert weights_of(graphopt.load(target)) == weights_of(big_model(0))


@pytest.mark.parametrize("pause", EXTERNAL_PAUSES)
def test_killed_save_with_external_data_leaves_the_previous_model(tmp_path, models, pause):
    """graphopt.save(external_data=True) over a model saved the same way, killed at every step before the
    model is renamed: the previous model and its data file, byte for byte, still loading as the previous
    model."""
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    before = _previous(target, models, external=True)
    assert set(before) == {"model.onnx", "model.onnx.data"}
    what = run_child(["save", str(models["new"]), str(target), "--external"], pause, tmp_path)
    after = snapshot(target.parent)
    for name, value in before.items():
        assert after.get(name) == value, f"killed at {what!r}: {name} changed"
    assert weights_of(graphopt.load(target)) == weights_of(big_model(0)), f"killed at {what!r}"
    assert_no_wrong_model(target.parent, [big_model(0), big_model(1)])


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_killed_after_the_last_rename_leaves_the_new_model_complete(tmp_path, models, external):
    """The one point where the new model is in place: after the rename of the model file; it is whole."""
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    _previous(target, models, external=external)
    pause = "replace-after:2" if external else "replace-after:1"
    args = ["save", str(models["new"]), str(target)] + (["--external"] if external else [])
    run_child(args, pause, tmp_path)
    assert weights_of(graphopt.load(target)) == weights_of(big_model(1))
    assert_no_wrong_model(target.parent, [big_model(0), big_model(1)])


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
@pytest.mark.parametrize("pause", ["write:16777216", "fsync:1"])
def test_killed_save_to_a_new_path_leaves_nothing_loadable_there(tmp_path, models, pause, external):
    """A fresh target: after the kill it does not exist, and nothing left in the folder loads as a wrong
    model."""
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    args = ["save", str(models["new"]), str(target)] + (["--external"] if external else [])
    run_child(args, pause, tmp_path)
    assert not target.exists()
    assert_no_wrong_model(target.parent, [big_model(1)])


@pytest.mark.parametrize("pause", ["write:1048576", "write:16777216", "fsync:1", "replace:1"])
def test_killed_cli_leaves_output_and_input_as_they_were(tmp_path, models, pause):
    """``graphopt optimize in.onnx out.onnx`` over an existing out.onnx, killed while writing: out.onnx is the
    previous file and in.onnx is untouched."""
    folder = tmp_path / "work"
    folder.mkdir()
    source, target = folder / "in.onnx", folder / "out.onnx"
    source.write_bytes(models["new"].read_bytes())
    _previous(target, models, external=False)
    before = snapshot(folder)
    what = run_child(["cli", "optimize", str(source), str(target), "--passes", "cleanup", "-q"], pause, tmp_path)
    after = snapshot(folder)
    assert after["in.onnx"] == before["in.onnx"], f"killed at {what!r}: the input changed"
    assert after["out.onnx"] == before["out.onnx"], f"killed at {what!r}: the previous output changed"
    optimized = graphopt.optimize(big_model(1), passes="cleanup").model
    assert_no_wrong_model(folder, [big_model(0), big_model(1), optimized])


@pytest.mark.parametrize("pause", ["write:16777216", "replace:1", "replace-after:1"])
def test_killed_cli_in_place_leaves_the_input_whole(tmp_path, models, pause):
    """``graphopt optimize m.onnx m.onnx --in-place`` killed while writing: m.onnx is the input, byte for
    byte, or (killed after the rename) the optimized model, whole."""
    source = tmp_path / "m.onnx"
    source.write_bytes(models["new"].read_bytes())
    before = digest(source)
    run_child(["cli", "optimize", str(source), str(source), "--passes", "cleanup", "--in-place", "-q"], pause,
              tmp_path)
    optimized = graphopt.optimize(big_model(1), passes="cleanup").model
    if pause.startswith("replace-after"):
        assert weights_of(graphopt.load(source)) == weights_of(optimized)
        assert [n.op_type for n in graphopt.load(source).graph.node] == ["MatMul", "Relu", "MatMul"]
    else:
        assert digest(source) == before
    assert_no_wrong_model(tmp_path, [big_model(1), optimized])


@pytest.mark.parametrize("external_input", [False, True], ids=["inline", "external-data"])
def test_optimize_never_modifies_its_input(tmp_path, models, external_input):
    """The CLI and the library, run to the end (and once refused for overwriting without --in-place): every
    file of the input's folder (the model and its external data) is byte-identical afterwards."""
    folder = tmp_path / "in"
    folder.mkdir()
    source = folder / "model.onnx"
    if external_input:
        graphopt.save(big_model(1), source, external_data=True)
    else:
        source.write_bytes(models["new"].read_bytes())
    before = snapshot(folder)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(source), str(out / "cli.onnx"),
                           "--passes", "lossless", "-q"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    graphopt.optimize(str(source), str(out / "lib.onnx"), passes="lossless")
    refused = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(source), str(source), "-q"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2, refused.stderr
    assert snapshot(folder) == before
    for name in ("cli.onnx", "lib.onnx"):
        assert [n.op_type for n in graphopt.load(out / name).graph.node] == ["MatMul", "Relu", "MatMul"]


def test_save_with_external_data_never_overwrites_a_data_file_it_did_not_write(tmp_path, models):
    """Another model in the folder keeps its weights in a file named like the target's data file
    (``model.onnx.data``); saving ``model.onnx`` with external data leaves that file alone."""
    other = tmp_path / "other.onnx"
    graphopt.save(big_model(0), other, external_data=True)
    os.rename(tmp_path / "other.onnx.data", tmp_path / "model.onnx.data")
    stored = onnx.load_model(other, load_external_data=False)
    for tensor in stored.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "model.onnx.data"
    onnx.save_model(stored, other)
    before = snapshot(tmp_path)
    graphopt.save(big_model(1), tmp_path / "model.onnx", external_data=True)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert weights_of(graphopt.load(other)) == weights_of(big_model(0))
    assert weights_of(graphopt.load(tmp_path / "model.onnx")) == weights_of(big_model(1))


def test_saving_again_with_external_data_leaves_one_data_file(tmp_path):
    """Saving over a model graphopt saved with external data replaces its data file: no stale data files
    pile up, and the folder holds the model and one data file."""
    target = tmp_path / "model.onnx"
    for seed in (0, 1, 2):
        graphopt.save(big_model(seed), target, external_data=True)
        files = sorted(p.name for p in tmp_path.iterdir())
        assert len(files) == 2 and files[0] == "model.onnx" and files[1].endswith(".data"), files
        assert weights_of(graphopt.load(target)) == weights_of(big_model(seed))
