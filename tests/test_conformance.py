"""Conformance: graphopt's lossless pipeline keeps the outputs of every case of the ONNX backend test corpus.

Cases: the backend test data shipped in the onnx package (``light``, ``simple``, ``pytorch-converted``,
``pytorch-operator``; the ``real`` entries point at the ``light`` models and give them their tolerances), and
the per-operator ``node`` cases (with the model cases missing from ``simple``, as ``simple-generated``) that
onnx builds from ``onnx.backend.test.case``. Those are serialized once per onnx version into pytest's cache
folder (``pytest --cache-clear`` regenerates them; without pytest's cache, a temporary folder is used). Case
ids are ``<corpus>/<name>``, as in the shared conformance harness (run_corpus.py), whose approach this follows.

Per case: onnxruntime (CPU, ``ORT_DISABLE_ALL``) runs the ORIGINAL model on the reference inputs; if it cannot
load or run it, or does not reproduce the reference outputs, the case is skipped with the reason. Otherwise
``graphopt.optimize(model, passes="lossless", check_changed=True)`` must give a model that passes the ONNX
checker, loads in onnxruntime, keeps the graph outputs and reproduces the reference outputs. Outputs are
compared like ``onnx.backend.test.runner.Runner.assert_similar_outputs``: rtol/atol 1e-3/1e-7 unless the
case says otherwise (data.json); bfloat16 gets rtol >= 2**-6. Tensors whose element type numpy cannot
exchange with onnxruntime (bfloat16, float8, 4- and 2-bit types) pass through OrtValues as raw bytes.
One onnxruntime session per model and phase.
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import json
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphopt

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-7
DATA_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
LIGHT_URL_PREFIX = "onnx/backend/test/data/light/"
SHIPPED_CORPORA = ("simple", "pytorch-converted", "pytorch-operator")
GENERATED_CORPORA = ("node", "simple-generated")
CACHE_FORMAT = 1  # bump when the layout of the generated cases changes

# Element types numpy cannot exchange with onnxruntime's Python API (their ml_dtypes arrays are passed as raw
# bytes); 4- and 2-bit ones are packed two or four to a byte, low bits first.
EXOTIC_DTYPES = {"bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                 "float8_e8m0fnu", "float4_e2m1fn", "int4", "uint4", "int2", "uint2"}
EXOTIC_ORT_TYPES = {"bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz", "float8e8m0",
                    "float4e2m1", "int4", "uint4", "int2", "uint2"}
PACKED_BITS = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.FLOAT4E2M1: 4,
               onnx.TensorProto.INT2: 2, onnx.TensorProto.UINT2: 2}


@dataclasses.dataclass(frozen=True)
class Case:
    """One corpus case: a model, its data sets (input and reference output files), and tolerances. A light
    model has no input files: its inputs are generated like onnx's runner does (``dummy_inputs``)."""

    id: str
    model_path: str
    data_sets: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    dummy_inputs: bool = False


# ---------------------------------------------------------------------------------------------------------
# Discovery


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = discover_cases(_cache_root(metafunc.config))
        metafunc.parametrize("case", cases, ids=[case.id for case in cases])


def _cache_root(config) -> str:
    """pytest's cache folder; a temporary folder removed after the run when pytest runs without its cache
    (``-p no:cacheprovider``)."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return str(cache.mkdir(f"onnx-backend-cases-{onnx.__version__}"))
    folder = tempfile.mkdtemp(prefix="graphopt-conformance-")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    return folder


def discover_cases(cache_root: str) -> list[Case]:
    cases = _light_cases()
    for corpus in SHIPPED_CORPORA:
        cases += _folder_cases(os.path.join(DATA_DIR, corpus), corpus)
    _generate_cases(cache_root)
    for corpus in GENERATED_CORPORA:
        cases += _folder_cases(os.path.join(cache_root, corpus), corpus)
    return cases


def _folder_cases(root: str, corpus: str) -> list[Case]:
    cases = []
    for name in sorted(os.listdir(root)):
        model_path = os.path.join(root, name, "model.onnx")
        if os.path.isfile(model_path):
            rtol, atol = _tolerances(os.path.join(root, name, "data.json"))
            cases.append(Case(f"{corpus}/{name}", model_path, _data_sets(os.path.join(root, name)), rtol, atol))
    return cases


def _tolerances(data_json: str) -> tuple[float, float]:
    if not os.path.isfile(data_json):
        return DEFAULT_RTOL, DEFAULT_ATOL
    with open(data_json, encoding="utf-8") as handle:
        data = json.load(handle)
    return data.get("rtol", DEFAULT_RTOL), data.get("atol", DEFAULT_ATOL)


def _data_sets(case_dir: str) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    def numbered(folder: str, prefix: str) -> tuple[str, ...]:
        paths = glob.glob(os.path.join(folder, f"{prefix}_*.pb"))
        return tuple(sorted(paths, key=lambda p: int(re.search(r"_(\d+)\.pb$", p).group(1))))

    folders = glob.glob(os.path.join(case_dir, "test_data_set_*"))
    folders.sort(key=lambda p: int(p.rsplit("_", 1)[1]))
    return tuple((numbered(folder, "input"), numbered(folder, "output")) for folder in folders)


def _light_cases() -> list[Case]:
    """light/<stem>.onnx with <stem>_output_N.pb; tolerances from the real/ entry whose url points at it."""
    tolerances = {}
    for name in os.listdir(os.path.join(DATA_DIR, "real")):
        data_json = os.path.join(DATA_DIR, "real", name, "data.json")
        if os.path.isfile(data_json):
            with open(data_json, encoding="utf-8") as handle:
                url = json.load(handle).get("url", "")
            if url.startswith(LIGHT_URL_PREFIX):
                tolerances[os.path.basename(url)] = _tolerances(data_json)
    cases = []
    for path in sorted(glob.glob(os.path.join(DATA_DIR, "light", "*.onnx"))):
        stem = os.path.basename(path)[: -len(".onnx")]
        outputs = sorted(glob.glob(os.path.join(DATA_DIR, "light", f"{stem}_output_*.pb")),
                         key=lambda p: int(re.search(r"_output_(\d+)\.pb$", p).group(1)))
        rtol, atol = tolerances.get(os.path.basename(path), (DEFAULT_RTOL, DEFAULT_ATOL))
        cases.append(Case(f"light/{stem}", path, (((), tuple(outputs)),), rtol, atol, dummy_inputs=True))
    return cases


def _generate_cases(cache_root: str) -> None:
    """Serialize onnx's node cases (and model cases missing from data/simple) into ``cache_root``, once."""
    manifest_path = os.path.join(cache_root, "MANIFEST.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as handle:
            if json.load(handle) == _manifest():
                return
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        import onnx.backend.test.case.model as model_cases
        import onnx.backend.test.case.node as node_cases

        node_list = node_cases.collect_testcases()
        model_list = [case for case in model_cases.collect_testcases() if case.kind == "simple"]
    shipped_simple = set(os.listdir(os.path.join(DATA_DIR, "simple")))
    staging = tempfile.mkdtemp(prefix=".staging-", dir=cache_root)
    try:
        for corpus, testcases in (("node", node_list), ("simple-generated", model_list)):
            for testcase in testcases:
                if corpus == "node" or testcase.name not in shipped_simple:
                    _serialize_case(testcase, os.path.join(staging, corpus, testcase.name))
        for corpus in GENERATED_CORPORA:
            target = os.path.join(cache_root, corpus)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(os.path.join(staging, corpus), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(_manifest(), handle)


def _manifest() -> dict:
    return {"onnx_version": onnx.__version__, "format": CACHE_FORMAT}


def _serialize_case(testcase, folder: str) -> None:
    """The layout of onnx's backend test data (as onnx.backend.test.cmd_tools writes it)."""
    os.makedirs(folder)
    with open(os.path.join(folder, "model.onnx"), "wb") as handle:
        handle.write(testcase.model.SerializeToString())
    graph = testcase.model.graph
    for index, (inputs, outputs) in enumerate(testcase.data_sets):
        data_set = os.path.join(folder, f"test_data_set_{index}")
        os.makedirs(data_set)
        for kind, values, declared in (("input", inputs, graph.input), ("output", outputs, graph.output)):
            for position, value in enumerate(values):
                proto = _value_proto(value, declared[position].type, declared[position].name)
                with open(os.path.join(data_set, f"{kind}_{position}.pb"), "wb") as handle:
                    handle.write(proto.SerializeToString())
    if (testcase.rtol, testcase.atol) != (DEFAULT_RTOL, DEFAULT_ATOL):
        with open(os.path.join(folder, "data.json"), "w", encoding="utf-8") as handle:
            json.dump({"rtol": testcase.rtol, "atol": testcase.atol}, handle)


def _value_proto(value, type_proto: onnx.TypeProto, name: str):
    if type_proto.HasField("map_type"):
        return numpy_helper.from_dict(value, name)
    if type_proto.HasField("sequence_type"):
        return numpy_helper.from_list(value, name)
    if type_proto.HasField("optional_type"):
        return numpy_helper.from_optional(value, name)
    if isinstance(value, onnx.TensorProto):
        return value
    return numpy_helper.from_array(value, name)


# ---------------------------------------------------------------------------------------------------------
# Data


def load_data_sets(case: Case, model: onnx.ModelProto) -> list[tuple[dict, list]]:
    """(feeds by input name, reference outputs) per data set. Input files map onto the inputs that are not
    initializers when there are enough of those, else onto all inputs, in order."""
    initializers = {initializer.name for initializer in model.graph.initializer}
    real_inputs = [value for value in model.graph.input if value.name not in initializers]
    data_sets = []
    for input_files, output_files in case.data_sets:
        if case.dummy_inputs:
            feeds = {value.name: _dummy_input(value) for value in real_inputs}
        else:
            declared = real_inputs if len(input_files) <= len(real_inputs) else list(model.graph.input)
            feeds = {value.name: _load_value(path, value.type)
                     for path, value in zip(input_files, declared, strict=False)}
        outputs = model.graph.output
        references = [_load_value(path, outputs[index].type if index < len(outputs) else onnx.TypeProto())
                      for index, path in enumerate(output_files)]
        data_sets.append((feeds, references))
    return data_sets


def _dummy_input(value: onnx.ValueInfoProto) -> np.ndarray:
    """onnx.backend.test.runner.Runner.generate_dummy_data(random=False) for a float input."""
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim)
    count = int(np.prod(shape))
    return (np.arange(count).reshape(shape) / count).astype(np.float32)


def _load_value(path: str, type_proto: onnx.TypeProto):
    with open(path, "rb") as handle:
        data = handle.read()
    if type_proto.HasField("sequence_type"):
        return numpy_helper.to_list(onnx.SequenceProto.FromString(data))
    if type_proto.HasField("optional_type"):
        return numpy_helper.to_optional(onnx.OptionalProto.FromString(data))
    if type_proto.HasField("map_type"):
        return numpy_helper.to_dict(onnx.MapProto.FromString(data))
    return numpy_helper.to_array(onnx.TensorProto.FromString(data))


# ---------------------------------------------------------------------------------------------------------
# Running on onnxruntime


def make_session(model: str | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_session(session: ort.InferenceSession, feeds: dict, output_names: list[str]) -> list:
    """Run with the feeds the session declares (inputs or overridable initializers); raise KeyError when a
    declared input has no data."""
    declared = {value.name for value in session.get_inputs()}
    overridable = {value.name for value in session.get_overridable_initializers()}
    missing = sorted(declared - set(feeds))
    if missing:
        raise KeyError(f"the model requires inputs with no test data: {missing}")
    feeds = {name: value for name, value in feeds.items() if name in declared | overridable}
    if not _needs_ortvalues(session, feeds):
        return session.run(output_names, feeds)
    outputs = session.run_with_ort_values(output_names, {name: _to_ortvalue(v) for name, v in feeds.items()})
    return [_from_ortvalue(output) for output in outputs]


def _is_exotic(dtype: np.dtype) -> bool:
    return dtype.name in EXOTIC_DTYPES


def _needs_ortvalues(session: ort.InferenceSession, feeds: dict) -> bool:
    def exotic(type_text: str) -> bool:
        match = re.fullmatch(r"tensor\((\w+)\)", type_text or "")
        return bool(match) and match.group(1) in EXOTIC_ORT_TYPES

    return (any(isinstance(v, np.ndarray) and _is_exotic(v.dtype) for v in feeds.values())
            or any(exotic(value.type) for value in (*session.get_inputs(), *session.get_outputs())))


def _to_ortvalue(value: np.ndarray) -> ort.OrtValue:
    if not _is_exotic(value.dtype):
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
    element_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    codes = np.ascontiguousarray(value).view(np.uint8).ravel()
    bits = PACKED_BITS.get(element_type)
    if bits:
        per_byte = 8 // bits
        padded = np.concatenate([codes & ((1 << bits) - 1), np.zeros(-codes.size % per_byte, np.uint8)])
        columns = padded.reshape(-1, per_byte)
        codes = np.zeros(columns.shape[0], np.uint8)
        for k in range(per_byte):
            codes |= (columns[:, k] << (k * bits)).astype(np.uint8)
    raw = codes.tobytes()
    ortvalue = ort.OrtValue.ortvalue_from_shape_and_type(list(value.shape), element_type)
    assert ortvalue.tensor_size_in_bytes() == len(raw), f"packing a {value.dtype} tensor"
    if raw:
        ctypes.memmove(ortvalue.data_ptr(), raw, len(raw))
    return ortvalue


def _from_ortvalue(ortvalue: ort.OrtValue):
    if not ortvalue.is_tensor():
        return ortvalue.numpy()
    element_type = ortvalue.element_type()
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(element_type))
    except (KeyError, TypeError, ValueError):
        return ortvalue.numpy()
    if not _is_exotic(dtype):
        return ortvalue.numpy()
    shape = tuple(ortvalue.shape())
    size = ortvalue.tensor_size_in_bytes()
    raw = np.frombuffer(ctypes.string_at(ortvalue.data_ptr(), size), np.uint8) if size else np.zeros(0, np.uint8)
    bits = PACKED_BITS.get(element_type)
    if bits:
        count = int(np.prod(shape))
        codes = np.stack([(raw >> (k * bits)) & ((1 << bits) - 1) for k in range(8 // bits)], axis=1).ravel()
        return codes[:count].astype(np.uint8).view(dtype).reshape(shape)
    return raw.view(dtype).reshape(shape).copy()


# ---------------------------------------------------------------------------------------------------------
# Comparing


def compare(reference, actual, rtol: float, atol: float, where: str) -> str | None:
    """None when ``actual`` matches ``reference`` (onnx's assert_similar_outputs rules), else the problem."""
    if isinstance(reference, (list, tuple)):
        if not isinstance(actual, (list, tuple)):
            return f"{where}: expected a sequence, got {type(actual).__name__}"
        if len(actual) != len(reference):
            return f"{where}: sequence length {len(actual)}, expected {len(reference)}"
        pairs = enumerate(zip(reference, actual, strict=True))
        problems = (compare(r, a, rtol, atol, f"{where}[{i}]") for i, (r, a) in pairs)
        return next((p for p in problems if p), None)
    if reference is None:
        return None if actual is None else f"{where}: expected an empty optional, got {type(actual).__name__}"
    if isinstance(reference, dict):
        return None if actual == reference else f"{where}: maps differ"
    if actual is None or isinstance(actual, (list, tuple, dict)):
        return f"{where}: expected a tensor, got {type(actual).__name__}"
    actual, reference = np.asarray(actual), np.asarray(reference)
    if actual.shape != reference.shape:
        return f"{where}: shape {actual.shape}, expected {reference.shape}"
    if reference.dtype == object or reference.dtype.kind in "US":
        same = np.array_equal(_as_text(actual), _as_text(reference))
        return None if same else f"{where}: string elements differ"
    if actual.dtype != reference.dtype:
        return f"{where}: dtype {actual.dtype}, expected {reference.dtype}"
    if _is_exotic(reference.dtype):
        rtol = max(rtol, 2**-6) if reference.dtype.name == "bfloat16" else rtol
        actual, reference = actual.astype(np.float32), reference.astype(np.float32)
    try:
        np.testing.assert_allclose(actual, reference, rtol=rtol, atol=atol)
    except AssertionError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        details = "; ".join(line for line in lines if line.startswith(("Mismatched", "Max absolute", "Max relative")))
        return f"{where}: not close (rtol={rtol:g}, atol={atol:g}): {details}"
    return None


def _as_text(array: np.ndarray) -> np.ndarray:
    flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape)


def first_problem(references: list, outputs: list, names: list[str], rtol: float, atol: float) -> str | None:
    if len(outputs) != len(references):
        return f"{len(outputs)} outputs, the reference has {len(references)}"
    problems = (compare(r, o, rtol, atol, f"output '{n}'") for r, o, n in zip(references, outputs, names, strict=True))
    return next((p for p in problems if p), None)


# ---------------------------------------------------------------------------------------------------------
# The test


@pytest.mark.conformance
def test_lossless_pipeline_keeps_the_reference_outputs(case: Case):
    model = onnx.load(case.model_path)
    data_sets = load_data_sets(case, model)
    names = [output.name for output in model.graph.output]
    try:
        session = make_session(case.model_path)
    except Exception as error:  # onnxruntime raises its own exception types
        pytest.skip(f"onnxruntime cannot load the original model: {_first_line(error)}")
    for feeds, references in data_sets:
        try:
            outputs = run_session(session, feeds, names)
        except Exception as error:
            pytest.skip(f"onnxruntime cannot run the original model: {_first_line(error)}")
        problem = first_problem(references, outputs, names, case.rtol, case.atol)
        if problem:
            pytest.skip(f"onnxruntime does not reproduce the reference on the original model: {problem}")

    optimized = graphopt.optimize(model, passes="lossless", check_changed=True).model
    onnx.checker.check_model(optimized)
    session = make_session(optimized.SerializeToString())
    assert [output.name for output in session.get_outputs()] == names
    for index, (feeds, references) in enumerate(data_sets):
        outputs = run_session(session, feeds, names)
        problem = first_problem(references, outputs, names, case.rtol, case.atol)
        assert problem is None, f"data set {index}: {problem}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
