"""Shared helpers for graphopt's tests: tiny models written as ONNX text, random feeds, and running models on
onnxruntime with its own graph optimizations off (``graphopt.validate.numerics.run_model``).

Test modules import the plain helpers (``from conftest import parse_model, ...``); pytest puts this folder
on ``sys.path`` (rootdir-relative "prepend" import mode), so ``conftest`` is importable as a module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx.parser
import pytest

from graphopt.data import model_inputs
from graphopt.validate.numerics import run_model

TINY_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N,4] x) => (float[N,4] y) {
    t = Identity(x)
    y = Relu(t)
}
"""


def parse_model(text: str, check: bool = True) -> onnx.ModelProto:
    """A model from ONNX text, checked with the ONNX checker unless ``check`` is false."""
    model = onnx.parser.parse_model(text)
    if check:
        onnx.checker.check_model(model)
    return model


def random_feeds(model: onnx.ModelProto, seed: int = 0, batch: int = 3) -> dict[str, np.ndarray]:
    """Random inputs for ``model``: symbolic dimensions take ``batch``; floats normal, ints small, bools."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (dtype, shape) in model_inputs(model).items():
        concrete = [d if isinstance(d, int) and d > 0 else batch for d in shape]
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.integers(0, 2, size=concrete).astype(bool)
        else:
            feeds[name] = rng.integers(1, 4, size=concrete).astype(dtype)
    return feeds


def assert_same_outputs(original: onnx.ModelProto, optimized: onnx.ModelProto,
                        feeds: Iterable[Mapping[str, np.ndarray]], *, rtol: float = 1e-6,
                        atol: float = 1e-6) -> None:
    """Both models give the same outputs (same names, dtypes, shapes, values) on every feed, on ORT.

    The default tolerance suits rewrites that do not change arithmetic (removing identities, dead nodes);
    a rewrite that changes float rounding (a fusion) should pass its own ``rtol``/``atol``."""
    for feed in feeds:
        expected = run_model(original, feed)
        actual = run_model(optimized, feed)
        assert sorted(actual) == sorted(expected)
        for name, value in expected.items():
            assert actual[name].dtype == value.dtype, name
            assert actual[name].shape == value.shape, name
            np.testing.assert_allclose(actual[name], value, rtol=rtol, atol=atol, err_msg=name)


def assert_identical_outputs(original: onnx.ModelProto, optimized: onnx.ModelProto,
                             feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
    """Same output names, dtypes, shapes and bytes on ORT (so -0.0 vs +0.0 and NaN payloads count); string
    outputs are compared as values."""
    for feed in feeds:
        expected, actual = run_model(original, feed), run_model(optimized, feed)
        assert list(actual) == list(expected)
        for name, value in expected.items():
            assert actual[name].dtype == value.dtype and actual[name].shape == value.shape, name
            np.testing.assert_array_equal(actual[name], value, err_msg=name)
            if value.dtype != object:
                assert actual[name].tobytes() == value.tobytes(), name


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Top-level node count per op type."""
    return dict(Counter(node.op_type for node in model.graph.node))


def total_stats(report) -> dict[str, int]:
    """The stats of every pass run recorded in an optimize report, summed."""
    stats: Counter[str] = Counter()
    for record in report.passes:
        if record.result is not None:
            stats.update(dict(record.result.stats))
    return dict(stats)


@pytest.fixture
def tiny_text_model() -> onnx.ModelProto:
    """x -> Identity -> Relu -> y, batch dimension symbolic."""
    return parse_model(TINY_TEXT)


@pytest.fixture
def tiny_model_path(tmp_path, tiny_text_model) -> str:
    path = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_text_model, path)
    return str(path)


@pytest.fixture(scope="session")
def candidates(tmp_path_factory):
    """The digits-CNN candidates of ``validate_models`` (optimized, perturbed, slower, larger), by name ->
    path, built once for the validation and gate tests."""
    import validate_models

    folder = tmp_path_factory.mktemp("candidates")
    paths = {name: str(folder / f"{name}.onnx") for name in ("optimized", "perturbed", "slower", "larger")}
    for name, path in paths.items():
        getattr(validate_models, name)(path)
    return paths
