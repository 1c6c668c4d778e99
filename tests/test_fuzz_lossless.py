"""Fuzzing the ``lossless`` preset: random valid models (``fuzz_strategies.fuzz_models``: about fifty ops, random
static shapes, float32, float16, int64, int32 and bool values, the patterns the passes look for) go through
``graphopt.optimize(passes="lossless", check_changed=True)``, which must

1. not crash, and keep every pass's ``changed`` honest (the manager's structural check raises otherwise);
2. return a model that passes ``onnx.checker.check_model(full_check=True)`` and runs in onnxruntime, with the
   same graph inputs and outputs (names, element types, shapes); the input ModelProto is left as it was;
3. compute the same outputs: bit for bit for every integer and bool output and for every float output the
   strategy knows to be exact (no lossless pass may change its arithmetic; see the fuzz_strategies docstring),
   the other float32 outputs within ``rtol=1e-4`` and ``atol=1e-5`` (times the output's largest magnitude when
   that exceeds 1), the other float16 outputs within ``rtol=atol=5e-3`` (float16's resolution is 1e-3).

How many examples. In CI (the default) ``test_lossless_on_fuzzed_models`` runs ``CI_EXAMPLES`` (500) examples,
derandomized: the same models on every run, about 20 s on one core (the whole file about 40 s). A release runs
many more, random:

    GRAPHOPT_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz_lossless.py    # about 15 min on one core

(with the environment variable set, examples are drawn at random; add ``--hypothesis-seed=N`` to repeat a run,
and a failure prints the ``@reproduce_failure`` blob and the model as ONNX text). The settings are hypothesis
profiles registered here (``graphopt-fuzz-ci``, ``graphopt-fuzz-release``), applied per test, so the other
property tests keep their own.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import numpy as np
import onnx
import onnx.parser
import onnx.printer
import pytest
from fuzz_strategies import DTYPES, ELEMENT_TYPE, NEW_OPS, ONNX_OPS, FuzzModel, fuzz_models
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis.control import currently_in_test_context

import graphopt
from graphopt.validate.numerics import run_model

CI_EXAMPLES = 500
RELEASE_EXAMPLES = int(os.environ.get("GRAPHOPT_FUZZ_EXAMPLES", "0") or 0)
settings.register_profile("graphopt-fuzz-ci", max_examples=CI_EXAMPLES, deadline=None, derandomize=True,
                          database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("graphopt-fuzz-release", settings.get_profile("graphopt-fuzz-ci"),
                          max_examples=max(RELEASE_EXAMPLES, 1), derandomize=False)
FUZZ_SETTINGS = settings.get_profile("graphopt-fuzz-release" if RELEASE_EXAMPLES else "graphopt-fuzz-ci")

FLOAT32_RTOL, FLOAT32_ATOL = 1e-4, 1e-5
FLOAT16_TOL = 5e-3


def _interface(model: onnx.ModelProto) -> tuple:
    def describe(values):
        return [(v.name, v.type.SerializeToString(deterministic=True)) for v in values]
    return describe(model.graph.input), describe(model.graph.output)


def assert_outputs_kept(case: FuzzModel, expected: dict, actual: dict) -> None:
    assert list(actual) == list(expected), "the outputs differ"
    for name, want in expected.items():
        got = actual[name]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        if name in case.exact_outputs or want.dtype.kind in "biu":
            if got.tobytes() != want.tobytes():
                error = np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0)
                pytest.fail(f"output {name!r} ({want.dtype}) must be bit-exact; max abs error {error:.3g}")
            continue
        magnitude = max(1.0, float(np.max(np.abs(want.astype(np.float64)), initial=0.0)))
        if want.dtype == np.float16:
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=FLOAT16_TOL,
                                       atol=FLOAT16_TOL * magnitude, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL * magnitude, err_msg=name)


def check_lossless(case: FuzzModel) -> None:
    original = case.model
    pristine = original.SerializeToString()
    expected = run_model(original, case.feeds)
    optimized, report = graphopt.optimize(original, passes="lossless", check_changed=True)  # (1)
    if currently_in_test_context():  # under @given: the optimized model is printed with a failure
        note(f"optimized:\n{onnx.printer.to_text(optimized)}")
        for record in report.passes:
            for key in record.result.stats if record.result else ():
                event(f"{record.name} {key}")
    assert original.SerializeToString() == pristine, "optimize modified its input ModelProto"
    onnx.checker.check_model(optimized, full_check=True)  # (2)
    assert _interface(optimized) == _interface(original), "graph inputs or outputs changed"
    assert_outputs_kept(case, expected, run_model(optimized, case.feeds))  # (3)


@FUZZ_SETTINGS
@given(case=fuzz_models())
def test_lossless_on_fuzzed_models(case):
    check_lossless(case)


@settings(FUZZ_SETTINGS, max_examples=min(FUZZ_SETTINGS.max_examples, 60))
@given(case=fuzz_models())
def test_fuzzed_models_are_valid(case):
    """The strategy itself: checker (full, strict shape inference), onnxruntime, declared output shapes and
    element types, finite float outputs."""
    onnx.checker.check_model(case.model, full_check=True)
    outputs = run_model(case.model, case.feeds)
    for value in case.model.graph.output:
        declared = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
        got = outputs[value.name]
        assert got.shape == declared, value.name
        assert onnx.helper.np_dtype_to_tensor_dtype(got.dtype) == value.type.tensor_type.elem_type, value.name
        if got.dtype.kind == "f":
            assert np.all(np.isfinite(got)), value.name


@functools.cache
def _sample(count: int) -> tuple[FuzzModel, ...]:
    """``count`` generated models, the same on every run."""
    cases: list[FuzzModel] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzz_models())
    def collect(case):
        cases.append(case)

    collect()
    return tuple(cases)


class _Found(Exception):
    pass


def _reachable(condition, max_examples: int = 500) -> bool:
    """True if the strategy generates a model meeting ``condition`` in a deterministic search (generation only:
    a hit is not shrunk)."""
    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(fuzz_models())
    def search(case):
        if condition(case):
            raise _Found

    try:
        search()
    except _Found:
        return True
    return False


def _exact_types(case: FuzzModel) -> set[int]:
    return {v.type.tensor_type.elem_type for v in case.model.graph.output if v.name in case.exact_outputs}


def test_strategy_reaches_every_op_and_element_type():
    """The fuzzer is not vacuous: it generates every op of ``ONNX_OPS`` and every new op of ``NEW_OPS``, graph
    outputs of every element type, and exact outputs of every element type (in a fixed sample of 200
    models, or else by a deterministic search)."""
    ops, new, outputs, exact = set(), set(), set(), set()
    for case in _sample(200):
        ops |= case.op_types()
        new |= set(case.patterns)
        outputs |= {v.type.tensor_type.elem_type for v in case.model.graph.output}
        exact |= _exact_types(case)
    missing = [op for op in sorted(ONNX_OPS - ops) if not _reachable(lambda c, op=op: op in c.op_types())]
    missing += [op for op in sorted(set(NEW_OPS) - new) if not _reachable(lambda c, op=op: op in c.patterns)]
    for t in {ELEMENT_TYPE[d] for d in DTYPES} - outputs:
        if not _reachable(lambda c, t=t: t in {v.type.tensor_type.elem_type for v in c.model.graph.output}):
            missing.append(f"output of type {t}")
    for t in {ELEMENT_TYPE[d] for d in DTYPES} - exact:
        if not _reachable(lambda c, t=t: t in _exact_types(c)):
            missing.append(f"exact output of type {t}")
    assert not missing, f"the strategy never generates {missing}"


SABOTAGE_BASE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x, int64[2,3] i) => (float[2,3] y, int64[2,3] j, float[2,3] z) {{
    one = Constant<value=int64 {{1}}>()
    two = Constant<value=int64 {{2}}>()
    ulp = Constant<value=float {{1.0000001}}>()
    percent = Constant<value=float {{1.01}}>()
    r = Relu(x)
    y = {y}
    j = Add(i, {j})
    s = Sigmoid(x)
    z = {z}
}}"""
SABOTAGE_DEFAULTS = {"y": "Identity(r)", "j": "one", "z": "Identity(s)"}


def _sabotage_model(**changes) -> onnx.ModelProto:
    model = onnx.parser.parse_model(SABOTAGE_BASE.format(**{**SABOTAGE_DEFAULTS, **changes}))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("change, caught", [
    ({"y": "Mul(r, ulp)"}, True),  # an exact float output moved by an ulp
    ({"j": "two"}, True),  # an integer output changed
    ({"z": "Mul(s, percent)"}, True),  # an inexact output beyond the tolerance
    ({"z": "Mul(s, ulp)"}, False),  # an inexact output within it
])
def test_the_check_catches_what_a_wrong_pass_would_do(monkeypatch, change, caught):
    """check_lossless itself: a stand-in for ``graphopt.optimize`` returns the model with one change; the check
    fails exactly when the change breaks property 3 for that output's kind (y and j exact, z not)."""
    changed = _sabotage_model(**change)
    case = FuzzModel(_sabotage_model(), {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
                                         "i": np.arange(6, dtype=np.int64).reshape(2, 3)}, (), frozenset({"y"}))
    monkeypatch.setattr(graphopt, "optimize", lambda *a, **k: graphopt.OptimizeResult(changed, SimpleNamespace(
        passes=())))
    if caught:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check_lossless(case)
    else:
        check_lossless(case)
