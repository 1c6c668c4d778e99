"""Model I/O: loading from paths, bytes and ModelProtos; refusing what is not a usable model (one line, exit
code 2); external data resolved beside the model and never outside it; atomic, verified saves; optimize's
refusal to overwrite its input; and the gs round trip keeping what gs drops."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper as numpy_helper
import pytest
from conftest import TINY_TEXT, assert_same_outputs, parse_model, random_feeds

import graphopt
from graphopt import model as model_io
from graphopt.errors import ModelError, OutputModelError, UsageError
from graphopt.validate.numerics import run_model

REAL_MODEL = Path(__file__).resolve().parent.parent / "models" / "digits_cnn.onnx"

WEIGHTED_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N,4] x) => (float[N,4] y) {
    t = Add(x, w)
    y = Relu(t)
}
"""


def weighted_model(size: int = 4) -> onnx.ModelProto:
    """y = Relu(x + w) with w a float32[4] initializer; with ``size`` > 4 also a second weight ``big`` of
    ``size`` elements, copied to an extra graph output ``big_copy``."""
    model = parse_model(WEIGHTED_TEXT, check=False)
    model.graph.initializer.append(numpy_helper.from_array(np.arange(4, dtype=np.float32) - 1.5, "w"))
    if size > 4:
        model.graph.initializer.append(numpy_helper.from_array(np.linspace(0, 1, size, dtype=np.float32), "big"))
        model.graph.node.append(onnx.helper.make_node("Identity", ["big"], ["big_copy"], name="keep_big"))
        model.graph.output.append(onnx.helper.make_tensor_value_info("big_copy", onnx.TensorProto.FLOAT, [size]))
    onnx.checker.check_model(model)
    return model


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def assert_one_line_model_error(raised: pytest.ExceptionInfo, *fragments: str) -> None:
    error = raised.value
    assert type(error) is ModelError
    assert error.exit_code == 2
    message = str(error)
    assert "\n" not in message and message.strip() == message and message
    for fragment in fragments:
        assert fragment in message


# ---------------------------------------------------------------------------------------------------------
# Loading


def test_load_from_path_bytes_and_model_proto(tiny_model_path, tiny_text_model):
    from_path = graphopt.load(tiny_model_path)
    from_pathlib = graphopt.load(Path(tiny_model_path))
    from_bytes = graphopt.load(tiny_text_model.SerializeToString())
    from_bytearray = graphopt.load(bytearray(tiny_text_model.SerializeToString()))
    assert from_path == from_pathlib == from_bytes == from_bytearray == tiny_text_model
    assert graphopt.load(tiny_text_model) is tiny_text_model


def test_load_a_real_model():
    model = graphopt.load(REAL_MODEL)
    assert model.graph.input[0].name == "input"
    assert len(model.graph.node) == 10


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _model_with(**fields) -> onnx.ModelProto:
    model = parse_model(TINY_TEXT)
    for key, value in fields.items():
        setattr(model, key, value)
    return model


def _unchecked(text: str) -> bytes:
    return parse_model(text, check=False).SerializeToString()


BAD_BYTES = {
    "zero bytes": (b"", "empty"),
    "random bytes": (np.random.default_rng(1234).bytes(4096), "not an ONNX model"),
    "truncated model": (REAL_MODEL.read_bytes()[: REAL_MODEL.stat().st_size // 2], "not an ONNX model"),
    "text file": (b"name,value\nrelu,1\n# not a model at all\n", "not an ONNX model"),
    "serialized TensorProto": (numpy_helper.from_array(np.ones((3, 3), np.float32), "w").SerializeToString(),
                               "not an ONNX model"),
    "serialized GraphProto": (parse_model(TINY_TEXT).graph.SerializeToString(), "not an ONNX model"),
    "unknown op": (_unchecked(TINY_TEXT.replace("Relu", "NoSuchOp")), "No Op registered for NoSuchOp"),
    "missing input": (_unchecked(TINY_TEXT.replace("Relu(t)", "Relu(nowhere)")), "nowhere"),
    "wrong attribute type": (_unchecked(TINY_TEXT.replace("Relu(t)", "Transpose <perm = 1.5> (t)")),
                             "Mismatched attribute type"),
    "IR version too new": (_model_with(ir_version=onnx.IR_VERSION + 1).SerializeToString(),
                           f"IR version {onnx.IR_VERSION + 1} is newer"),
}


@pytest.mark.parametrize("case", sorted(BAD_BYTES))
def test_bad_model_file_is_a_one_line_model_error(tmp_path, case):
    data, fragment = BAD_BYTES[case]
    path = _write(tmp_path, "bad.onnx", data)
    with pytest.raises(ModelError) as raised:
        graphopt.load(path)
    assert_one_line_model_error(raised, path, fragment)


@pytest.mark.parametrize("case", sorted(set(BAD_BYTES) - {"zero bytes"}))
def test_bad_model_bytes_are_a_one_line_model_error(case):
    data, fragment = BAD_BYTES[case]
    with pytest.raises(ModelError) as raised:
        graphopt.load(data)
    assert_one_line_model_error(raised, "the given bytes", fragment)


def test_empty_bytes_are_a_model_error():
    with pytest.raises(ModelError) as raised:
        graphopt.load(b"")
    assert_one_line_model_error(raised, "not an ONNX model")


@pytest.mark.parametrize("fields", [{"ir_version": onnx.IR_VERSION + 1}])
def test_model_proto_with_newer_ir_is_a_model_error(fields):
    with pytest.raises(ModelError) as raised:
        graphopt.load(_model_with(**fields))
    assert_one_line_model_error(raised, "newer than this onnx supports")


def test_model_proto_failing_the_checker_is_a_model_error():
    with pytest.raises(ModelError) as raised:
        graphopt.load(parse_model(TINY_TEXT.replace("Relu", "NoSuchOp"), check=False))
    assert_one_line_model_error(raised, "not a valid ONNX model")


def test_missing_file_is_a_model_error(tmp_path):
    path = str(tmp_path / "nope.onnx")
    with pytest.raises(ModelError) as raised:
        graphopt.load(path)
    assert_one_line_model_error(raised, path, "no such file")


def test_folder_is_a_model_error(tmp_path):
    with pytest.raises(ModelError) as raised:
        graphopt.load(tmp_path)
    assert_one_line_model_error(raised, "is a folder")


# ---------------------------------------------------------------------------------------------------------
# Loading with the weights as messages of their own

UNKNOWN_FIELD = b"\xc0\x3e\x01"  # field 1000 (no ONNX message has it), varint 1
UNKNOWN_GROUP = b"\xcb\x3e\xcc\x3e"  # an empty group, field 1001: a wire type the layout scan does not take


def _with_subgraph_initializers() -> onnx.ModelProto:
    """An If whose branches hold initializers of their own, beside the main graph's weights."""
    model = weighted_model(10)
    for branch in ("then", "else"):
        body = onnx.helper.make_graph(
            [onnx.helper.make_node("Add", ["y", f"{branch}_c"], [f"{branch}_out"])], branch, [],
            [onnx.helper.make_tensor_value_info(f"{branch}_out", onnx.TensorProto.FLOAT, ["N", 4])],
            [numpy_helper.from_array(np.full(4, 2.0 if branch == "then" else -2.0, np.float32), f"{branch}_c")])
        model.graph.node.append(onnx.helper.make_node("If", ["flag"], [f"{branch}_if"], name=f"if_{branch}",
                                                      then_branch=body, else_branch=body))
    model.graph.input.append(onnx.helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, []))
    model.graph.output.extend(onnx.helper.make_tensor_value_info(f"{b}_if", onnx.TensorProto.FLOAT, ["N", 4])
                              for b in ("then", "else"))
    return model


def _unknown_fields_everywhere() -> bytes:
    """weighted_model(10) with a field onnx does not know in the model, its graph and its first weight."""
    model = weighted_model(10)
    weight = model.graph.initializer[0]
    weight.MergeFromString(UNKNOWN_FIELD)
    model.graph.MergeFromString(UNKNOWN_FIELD)
    return model.SerializeToString() + UNKNOWN_FIELD


def _graph_in_two_fields() -> bytes:
    """weighted_model(10) with its graph given as two ``graph`` fields, which the parser merges: the first
    without the initializers, the second with only them."""
    model = weighted_model(10)
    first, second = onnx.GraphProto(), onnx.GraphProto()
    first.CopyFrom(model.graph)
    del first.initializer[:]
    second.initializer.extend(model.graph.initializer)
    model.ClearField("graph")
    return b"".join(m.SerializeToString() for m in (model, onnx.ModelProto(graph=first), onnx.ModelProto(graph=second)))


SPLIT_SOURCES = {
    "digits_cnn": lambda: REAL_MODEL.read_bytes(),
    "two weights": lambda: weighted_model(10).SerializeToString(),
    "subgraph initializers": lambda: _with_subgraph_initializers().SerializeToString(),
    "ir3 initializer inputs": lambda: parse_model(IR3_TEXT).SerializeToString(),
    "unknown fields": _unknown_fields_everywhere,
    "graph in two fields": _graph_in_two_fields,
}


def _without_values(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """What a stand-in holds: the tensor without its values (and without fields onnx does not know)."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.DiscardUnknownFields()
    for field in ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data"):
        copy.ClearField(field)
    return copy


@pytest.mark.parametrize("case", sorted(SPLIT_SOURCES))
@pytest.mark.parametrize("from_path", [True, False], ids=["path", "bytes"])
def test_load_split_is_load_with_each_weight_a_message_of_its_own(tmp_path, case, from_path):
    data = SPLIT_SOURCES[case]()
    source = _write(tmp_path, "m.onnx", data) if from_path else data
    whole = graphopt.load(source)
    split = model_io.load_split(source)
    assert len(split.weights) == len(whole.graph.initializer) > 0
    assert model_io.joined(split).SerializeToString() == whole.SerializeToString()
    for stand_in, weight, initializer in zip(split.model.graph.initializer, split.weights, whole.graph.initializer,
                                             strict=True):
        assert weight == initializer
        assert stand_in == _without_values(initializer)
    assert model_io.serialized_size(split.model, split.weights) == whole.ByteSize()


def test_load_split_of_a_model_proto_keeps_it_whole(tiny_text_model):
    split = model_io.load_split(tiny_text_model)
    assert split.model is tiny_text_model and split.weights is None
    assert model_io.joined(split) is tiny_text_model


def test_load_split_parses_whole_what_the_layout_scan_does_not_take():
    data = weighted_model(10).SerializeToString() + UNKNOWN_GROUP
    split = model_io.load_split(data)
    assert split.weights is None
    assert split.model.SerializeToString() == graphopt.load(data).SerializeToString()


@pytest.mark.parametrize("case", sorted(BAD_BYTES))
def test_bad_model_file_is_the_same_model_error_when_split(tmp_path, case):
    data, fragment = BAD_BYTES[case]
    path = _write(tmp_path, "bad.onnx", data)
    with pytest.raises(ModelError) as raised:
        model_io.load_split(path)
    assert_one_line_model_error(raised, path, fragment)


def test_serialized_size_without_serializing_raw_data_counts_every_field():
    tensor = numpy_helper.from_array(np.arange(70_000, dtype=np.float32), "w")  # large: raw_data not serialized
    tensor.doc_string = "doc"
    tensor.metadata_props.add(key="k", value="v")
    with_unknown = onnx.TensorProto.FromString(tensor.SerializeToString() + UNKNOWN_FIELD)
    for weight in (tensor, with_unknown, numpy_helper.from_array(np.array(["a", "bc"], dtype=object), "s")):
        model = weighted_model()
        model.graph.initializer.append(weight)
        assert model_io.serialized_size(model) == model.ByteSize()


# ---------------------------------------------------------------------------------------------------------
# External data


def _save_with_external_data(folder: Path, model: onnx.ModelProto, location: str = "w.data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save_model converts the proto it is given to external data in place
    onnx.save_model(copy, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)
    return path


def _load_split_and_join(source) -> onnx.ModelProto:
    return model_io.joined(model_io.load_split(source))


LOADERS = pytest.mark.parametrize("load", [graphopt.load, _load_split_and_join], ids=["load", "load_split"])


@LOADERS
def test_external_data_is_resolved_beside_the_model_not_the_cwd(tmp_path, monkeypatch, load):
    model = weighted_model()
    expected = weights(model)
    path = _save_with_external_data(tmp_path / "store", model)
    assert (tmp_path / "store" / "w.data").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load(path)
    for tensor in loaded.graph.initializer:
        assert tensor.data_location == onnx.TensorProto.DEFAULT
    assert weights(loaded).keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(weights(loaded)[name], array)
    assert_same_outputs(model, loaded, [random_feeds(model)])


def _point_external_data_at(path: Path, location: str) -> None:
    model = onnx.load_model(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


@pytest.fixture
def opened_paths(monkeypatch):
    """Real paths of every file opened through Python's open() while the test runs."""
    opened = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            opened.append(os.path.realpath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    return opened


@pytest.fixture
def outside_secret(tmp_path) -> Path:
    """A file outside the model's folder holding valid-looking weight bytes."""
    secret = tmp_path / "outside" / "secret.data"
    secret.parent.mkdir()
    secret.write_bytes(np.arange(64, dtype=np.float32).tobytes())
    return secret


def _location_cases(model_folder: Path, secret: Path) -> dict[str, str]:
    return {
        "dot-dot": os.path.relpath(secret, model_folder),
        "etc-passwd": "../../etc/passwd",
        "absolute": str(secret),
    }


@LOADERS
@pytest.mark.parametrize("case", ["dot-dot", "etc-passwd", "absolute"])
def test_external_data_outside_the_model_folder_is_refused_and_never_read(tmp_path, outside_secret, opened_paths,
                                                                          case, load):
    path = _save_with_external_data(tmp_path / "store", weighted_model())
    location = _location_cases(tmp_path / "store", outside_secret)[case]
    _point_external_data_at(path, location)
    opened_paths.clear()
    with pytest.raises(ModelError) as raised:
        load(path)
    assert_one_line_model_error(raised, "outside the model's folder", repr(location))
    assert str(outside_secret) not in opened_paths
    assert "/etc/passwd" not in opened_paths


def test_external_data_symlink_pointing_outside_is_refused_and_never_read(tmp_path, outside_secret, opened_paths):
    path = _save_with_external_data(tmp_path / "store", weighted_model())
    (tmp_path / "store" / "w.data").unlink()
    (tmp_path / "store" / "w.data").symlink_to(outside_secret)
    opened_paths.clear()
    with pytest.raises(ModelError) as raised:
        graphopt.load(path)
    assert_one_line_model_error(raised, "outside the model's folder", "'w.data'")
    assert str(outside_secret) not in opened_paths


@LOADERS
def test_missing_external_data_file_is_a_model_error(tmp_path, load):
    path = _save_with_external_data(tmp_path / "store", weighted_model())
    (tmp_path / "store" / "w.data").unlink()
    with pytest.raises(ModelError) as raised:
        load(path)
    assert_one_line_model_error(raised, "'w.data'", "missing")


# ---------------------------------------------------------------------------------------------------------
# Saving


def test_save_writes_the_model_and_leaves_no_temporary_files(tmp_path, tiny_text_model):
    target = tmp_path / "out.onnx"
    graphopt.save(tiny_text_model, target)
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]
    assert graphopt.load(target) == tiny_text_model


def test_save_replaces_an_existing_file(tmp_path, tiny_text_model):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old contents")
    graphopt.save(tiny_text_model, str(target))
    assert target.read_bytes() == tiny_text_model.SerializeToString()
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


INVALID_OUTPUTS = {
    "fails the checker": (TINY_TEXT.replace("Relu", "NoSuchOp"), "fails the ONNX checker"),
    "wrong attribute type": (TINY_TEXT.replace("Relu(t)", "Transpose <perm = 1.5> (t)"), "fails the ONNX checker"),
    "does not load in onnxruntime": ("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2] x, int64[2] z) => (float[2] y) { y = Add(x, z) }
        """, "does not load in onnxruntime"),
}


@pytest.mark.parametrize("case", sorted(INVALID_OUTPUTS))
def test_saving_an_invalid_model_writes_nothing(tmp_path, case):
    text, fragment = INVALID_OUTPUTS[case]
    target = tmp_path / "out.onnx"
    previous = parse_model(TINY_TEXT).SerializeToString()
    target.write_bytes(previous)
    with pytest.raises(OutputModelError) as raised:
        graphopt.save(parse_model(text, check=False), target)
    assert raised.value.exit_code == 3
    assert fragment in str(raised.value) and "nothing was written" in str(raised.value)
    assert target.read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_save_with_external_data_writes_data_beside_and_loads_back_equal(tmp_path, monkeypatch):
    model = weighted_model(size=2048)
    expected = weights(model)
    monkeypatch.chdir(tmp_path)  # a relative target: data must still land beside the model
    (tmp_path / "out").mkdir()
    graphopt.save(model, os.path.join("out", "m.onnx"), external_data=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "out" / "m.onnx.data").stat().st_size >= 2048 * 4
    stored = onnx.load_model(tmp_path / "out" / "m.onnx", load_external_data=False)
    big = next(t for t in stored.graph.initializer if t.name == "big")
    assert big.data_location == onnx.TensorProto.EXTERNAL
    loaded = graphopt.load(tmp_path / "out" / "m.onnx")
    for name, array in expected.items():
        np.testing.assert_array_equal(weights(loaded)[name], array)
        np.testing.assert_array_equal(weights(model)[name], array)  # the caller's model keeps its weights
    assert [n.op_type for n in loaded.graph.node] == [n.op_type for n in model.graph.node]
    assert_same_outputs(model, loaded, [random_feeds(model)])


def test_save_with_external_data_of_a_model_with_only_small_weights(tmp_path):
    model = weighted_model()
    graphopt.save(model, tmp_path / "m.onnx", external_data=True)
    np.testing.assert_array_equal(weights(graphopt.load(tmp_path / "m.onnx"))["w"], weights(model)["w"])


def test_failed_save_with_external_data_leaves_the_callers_model_intact(tmp_path):
    model = parse_model(INVALID_OUTPUTS["does not load in onnxruntime"][0])
    model.graph.initializer.append(numpy_helper.from_array(np.arange(1024, dtype=np.float32), "big"))
    before = model.SerializeToString()
    with pytest.raises(OutputModelError):
        graphopt.save(model, tmp_path / "m.onnx", external_data=True)
    assert os.listdir(tmp_path) == []
    assert model.SerializeToString() == before


@pytest.mark.parametrize("target", ["missing-folder/out.onnx", "a/b/c.onnx"])
def test_save_into_a_missing_folder_is_a_usage_error(tmp_path, tiny_text_model, target):
    with pytest.raises(UsageError) as raised:
        graphopt.save(tiny_text_model, tmp_path / target)
    assert raised.value.exit_code == 2
    assert "does not exist" in str(raised.value)
    assert os.listdir(tmp_path) == []


def test_save_onto_a_folder_is_a_usage_error(tmp_path, tiny_text_model):
    (tmp_path / "out.onnx").mkdir()
    with pytest.raises(UsageError, match="it is a folder"):
        graphopt.save(tiny_text_model, tmp_path / "out.onnx")


# ---------------------------------------------------------------------------------------------------------
# optimize and its input file


def test_optimize_refuses_to_overwrite_its_input(tiny_model_path):
    before = Path(tiny_model_path).read_bytes()
    with pytest.raises(UsageError) as raised:
        graphopt.optimize(tiny_model_path, tiny_model_path, passes="lossless", check_changed=True)
    assert raised.value.exit_code == 2
    assert "refusing to overwrite the input" in str(raised.value)
    assert Path(tiny_model_path).read_bytes() == before


def test_optimize_refuses_to_overwrite_its_input_through_a_link(tmp_path, tiny_model_path):
    link = tmp_path / "link.onnx"
    link.symlink_to(tiny_model_path)
    with pytest.raises(UsageError, match="refusing to overwrite"):
        graphopt.optimize(tiny_model_path, link, passes="lossless", check_changed=True)


def test_optimize_in_place_overwrites_its_input(tiny_model_path, tiny_text_model):
    before = Path(tiny_model_path).read_bytes()
    model, _ = graphopt.optimize(tiny_model_path, tiny_model_path, passes="lossless", in_place=True,
                                 check_changed=True)
    after = Path(tiny_model_path).read_bytes()
    assert after != before
    assert [n.op_type for n in onnx.load_model(tiny_model_path).graph.node] == ["Relu"]
    assert_same_outputs(tiny_text_model, onnx.load_model(tiny_model_path), [random_feeds(tiny_text_model)])
    assert sorted(os.listdir(Path(tiny_model_path).parent)) == ["tiny.onnx"]


def test_optimize_writes_a_different_output(tmp_path, tiny_model_path):
    graphopt.optimize(tiny_model_path, tmp_path / "out.onnx", passes="lossless", check_changed=True)
    assert [n.op_type for n in onnx.load_model(tmp_path / "out.onnx").graph.node] == ["Relu"]


# ---------------------------------------------------------------------------------------------------------
# The gs round trip keeps what gs drops


RICH_TEXT = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1, "custom.extra" : 3], producer_name: "exporter",
 producer_version: "4.5.6", domain: "org.example", model_version: 42, doc_string: "the model's doc",
 metadata_props: ["author" : "tests", "licence" : "none"]>
graph_name (float[N,4] x) => (float[N,4] y, float[N,4] z) {
    t = local.Twice(x)
    y = Relu(t)
    z = Identity(t)
}
<domain: "local", opset_import: ["" : 17]>
Twice (a) => (b) {
    b = Add(a, a)
}
"""


def rich_model() -> onnx.ModelProto:
    model = parse_model(RICH_TEXT)
    model.graph.doc_string = "the graph's doc"
    for node, name in zip(model.graph.node, ["call", "relu", "copy"], strict=True):
        node.name = name
    model.graph.node[1].doc_string = "the relu's doc"
    if hasattr(model.graph.node[1], "metadata_props"):
        entry = model.graph.node[1].metadata_props.add()
        entry.key, entry.value = "origin", "layer1.relu"
    if hasattr(model.graph, "metadata_props"):
        entry = model.graph.metadata_props.add()
        entry.key, entry.value = "graph-key", "graph-value"
    onnx.checker.check_model(model)
    return model


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _props(entries):
    return [(entry.key, entry.value) for entry in entries]


ROUND_TRIP_FIELDS = {
    "metadata_props": lambda m: _props(m.metadata_props),
    "producer_name": lambda m: m.producer_name,
    "producer_version": lambda m: m.producer_version,
    "model doc_string": lambda m: m.doc_string,
    "domain": lambda m: m.domain,
    "model_version": lambda m: m.model_version,
    "ir_version": lambda m: m.ir_version,
    "opset imports": lambda m: sorted((o.domain, o.version) for o in m.opset_import),
    "local functions": lambda m: [f.SerializeToString() for f in m.functions],
    "function call node": lambda m: [(n.op_type, n.domain, list(n.input), list(n.output)) for n in m.graph.node
                                     if n.name == "call"],
    "graph name": lambda m: m.graph.name,
    "graph doc_string": lambda m: m.graph.doc_string,
    "node doc_string": lambda m: _node(m, "relu").doc_string,
    "graph output types": lambda m: [(o.name, o.type.SerializeToString()) for o in m.graph.output],
    "graph input types": lambda m: [(i.name, i.type.SerializeToString()) for i in m.graph.input],
}
if hasattr(onnx.NodeProto(), "metadata_props"):
    ROUND_TRIP_FIELDS["node metadata_props"] = lambda m: _props(_node(m, "relu").metadata_props)
if hasattr(onnx.GraphProto(), "metadata_props"):
    ROUND_TRIP_FIELDS["graph metadata_props"] = lambda m: _props(m.graph.metadata_props)


@pytest.mark.parametrize("field", sorted(ROUND_TRIP_FIELDS))
def test_gs_round_trip_keeps(field):
    original = rich_model()
    get = ROUND_TRIP_FIELDS[field]
    expected = get(original)
    assert expected not in (None, "", [], 0)
    exported = model_io.to_model(model_io.to_graph(original), original)
    assert get(exported) == expected
    onnx.checker.check_model(exported)


def test_gs_round_trip_keeps_node_metadata_after_a_pass_removed_other_nodes():
    original = rich_model()
    optimized, _ = graphopt.optimize(original, passes="lossless", check_changed=True)
    assert [n.name for n in optimized.graph.node] == ["call", "relu"]
    assert _node(optimized, "relu").doc_string == "the relu's doc"
    assert _props(optimized.metadata_props) == _props(original.metadata_props)
    assert len(optimized.functions) == 1
    assert_same_outputs(original, optimized, [random_feeds(original)])


IR3_TEXT = """
<ir_version: 3, opset_import: ["" : 8]>
agraph (float[2,4] x, float[4] w, float[4] b) => (float[2,4] y) <float[4] w = {1, 2, 3, 4}, float[4] b = {0, 0, 1, 1}> {
    t = Mul(x, w)
    u = Add(t, b)
    y = Relu(u)
}
"""


def test_gs_round_trip_keeps_ir3_initializer_inputs():
    original = parse_model(IR3_TEXT)
    exported = model_io.to_model(model_io.to_graph(original), original)
    assert [i.name for i in exported.graph.input] == ["x", "w", "b"]
    assert sorted(t.name for t in exported.graph.initializer) == ["b", "w"]
    assert exported.ir_version == 3
    onnx.checker.check_model(exported)
    assert_same_outputs(original, exported, [random_feeds(original)])


def test_optimize_keeps_external_data_when_the_input_had_it(tmp_path):
    """A small model whose weights were in an external data file gets its output's weights in one too."""
    weight = onnx.numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]), onnx.helper.make_node("Identity", ["h"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [weight])
    source = tmp_path / "in" / "m.onnx"
    source.parent.mkdir()
    onnx.save_model(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), source,
                    save_as_external_data=True, location="m.weights", size_threshold=0)
    target = tmp_path / "out" / "o.onnx"
    target.parent.mkdir()
    graphopt.optimize(str(source), str(target), passes="lossless")
    written = onnx.load(str(target), load_external_data=False)
    assert [t.data_location for t in written.graph.initializer] == [onnx.TensorProto.EXTERNAL]
    assert sorted(p.name for p in target.parent.iterdir()) == ["o.onnx", "o.onnx.data"]
    feeds = {"x": np.ones((1, 64), np.float32)}
    np.testing.assert_array_equal(run_model(str(target), feeds)["y"], run_model(str(source), feeds)["y"])
