"""graphopt.optimize end to end: validate-each, dump-dir, skip, plugins, external data, the shipped models."""

from __future__ import annotations

import json
import os
from importlib import metadata

import jsonschema
import numpy as np
import onnx
import pytest
from conftest import assert_same_outputs, parse_model

import graphopt
from graphopt import model as model_io
from graphopt.data import load_data
from graphopt.errors import PassError, ValidationFailure
from graphopt.pass_base import Pass, PassResult
from graphopt.registry import Registry, default_registry, registry_from
from graphopt.validate import report as validation_report

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MODELS = os.path.join(os.path.dirname(__file__), "..", "models")

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
chain (float[N,4] x) => (float[N,4] y) {
    a = Identity(x)
    b = Relu(a)
    c = Identity(b)
    y = Sigmoid(c)
}
"""


class NegateRelu(Pass):
    """A deliberately wrong pass: turns Relu into Neg (changes numerics)."""

    name = "negate-relu"
    summary = "test pass that breaks numerics"

    def run(self, graph, ctx):
        nodes = [n for n in graph.nodes if n.op == "Relu"]
        for node in nodes:
            node.op = "Neg"
        return PassResult(bool(nodes), {"rewrites.negate": len(nodes)})


def test_validate_each_names_the_first_pass_that_changes_outputs():
    model = parse_model(CHAIN)
    passes = [default_registry().create("eliminate-identity"), NegateRelu(),
              default_registry().create("eliminate-dead-nodes")]
    with pytest.raises(ValidationFailure) as caught:
        graphopt.optimize(model, passes=passes, validate_each=True)
    assert caught.value.exit_code == 1
    assert "pass negate-relu changed output 'y'" in str(caught.value)


def test_validate_each_passes_for_lossless_passes():
    model = parse_model(CHAIN)
    optimized, report = graphopt.optimize(model, passes="cleanup", validate_each=True, check_changed=True)
    assert [n.op_type for n in optimized.graph.node] == ["Relu", "Sigmoid"]
    assert report.output.nodes == 2


def test_validate_before_writing_refuses_changed_outputs_and_writes_nothing(tmp_path):
    source, output = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(parse_model(CHAIN), source)
    with pytest.raises(ValidationFailure, match="outputs differ beyond.*'y'.*nothing was written"):
        graphopt.optimize(str(source), str(output), passes=[NegateRelu()], validate=True)
    assert not output.exists()


def test_validate_puts_outputs_accuracy_and_latency_in_the_report(tmp_path):
    digits = os.path.join(MODELS, "digits_cnn.onnx")
    _, report = graphopt.optimize(digits, str(tmp_path / "out.onnx"), data=os.path.join(MODELS, "digits_test.npz"),
                                  validate=True)
    (cpu,) = report.validation.providers
    assert cpu.outputs_agree and cpu.accuracy.drop_points == 0 and cpu.latency.speedup > 0
    schema = os.path.join(os.path.dirname(validation_report.__file__), "validation.schema.json")
    jsonschema.validate(report.to_dict()["validation"], json.load(open(schema)))
    assert "| cpu | agree |" in report.to_markdown()
    assert graphopt.optimize(digits, passes="cleanup").report.to_dict()["validation"] is None


def test_dump_dir_writes_model_after_each_changing_pass(tmp_path):
    model = parse_model(CHAIN)
    graphopt.optimize(model, passes="eliminate-identity,eliminate-dead-nodes", dump_dir=str(tmp_path / "dump"))
    dumped = sorted(os.listdir(tmp_path / "dump"))
    assert dumped == ["01-eliminate-identity.onnx"]  # eliminate-dead-nodes found nothing left to remove
    assert len(onnx.load(tmp_path / "dump" / dumped[0]).graph.node) == 2


def test_skip_switches_a_pass_off():
    model = parse_model(CHAIN)
    optimized, report = graphopt.optimize(model, passes="cleanup", skip=["eliminate-identity"])
    assert len(optimized.graph.node) == 4
    skipped = [r for r in report.passes if r.skipped]
    assert [r.name for r in skipped] == ["eliminate-identity"]


def test_input_model_proto_is_not_modified():
    model = parse_model(CHAIN)
    before = model.SerializeToString()
    graphopt.optimize(model, passes="cleanup")
    assert model.SerializeToString() == before


def test_plugin_from_entry_point(monkeypatch):
    entry_point = metadata.EntryPoint(name="thirdparty", value="test_optimizer:NegateRelu",
                                      group="graphopt.passes")
    broken = metadata.EntryPoint(name="broken", value="no_such_module_xyz:Pass", group="graphopt.passes")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [entry_point, broken])
    default_registry.cache_clear()
    try:
        registry = default_registry()
        assert registry.create("negate-relu").name == "negate-relu"
        assert "eliminate-identity" in registry.passes  # built-ins still there; the broken plugin skipped
    finally:
        default_registry.cache_clear()


def test_registry_from_module_with_presets():
    class Module:
        PASSES = (NegateRelu,)
        ALIASES = {"neg": "negate-relu"}
        PRESETS = {"breakit": "neg,neg"}

    registry = registry_from(Module)
    pipeline = graphopt.parse_pipeline("breakit", registry)
    assert graphopt.format_pipeline(pipeline) == "negate-relu,negate-relu"
    with pytest.raises(ValueError, match="two passes are named"):
        Registry([NegateRelu, type("Other", (NegateRelu,), {})])


def test_large_model_saved_with_external_data(tmp_path, monkeypatch):
    weights = np.arange(4096, dtype=np.float32).reshape(64, 64)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.numpy_helper.from_array(weights, "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1000)  # stand-in for 2 GB
    out = tmp_path / "big.onnx"
    optimized, _ = graphopt.optimize(model, str(out), passes="cleanup")
    assert (tmp_path / "big.onnx.data").stat().st_size >= weights.nbytes
    assert out.stat().st_size < weights.nbytes
    reloaded = graphopt.load(str(out))
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(reloaded.graph.initializer[0]), weights)
    # the returned model still holds its weights in memory
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(optimized.graph.initializer[0]), weights)


class Fail(Pass):
    """A pass that raises."""

    name = "fail"
    summary = "test pass that raises"

    def run(self, graph, ctx):
        raise RuntimeError("boom")


def _sources(tmp_path, model: onnx.ModelProto) -> dict[str, object]:
    path = tmp_path / "in.onnx"
    onnx.save(model, path)
    return {"path": str(path), "bytes": model.SerializeToString(), "model": model}


@pytest.mark.parametrize("kind", ["path", "bytes", "model"])
def test_every_kind_of_input_gives_the_same_result_and_report(tmp_path, kind):
    model = graphopt.load(os.path.join(MODELS, "resnet_small.onnx"))
    optimized, report = graphopt.optimize(_sources(tmp_path, model)[kind], passes="lossless", validate_each=True)
    expected, expected_report = graphopt.optimize(model, passes="lossless")
    assert optimized.SerializeToString() == expected.SerializeToString()
    assert report.input.bytes == expected_report.input.bytes == model.ByteSize()
    assert report.output.bytes == optimized.ByteSize()


@pytest.mark.parametrize("kind", ["path", "bytes", "model"])
def test_the_reproducer_holds_the_whole_input(tmp_path, kind):
    model = graphopt.load(os.path.join(MODELS, "resnet_small.onnx"))
    passes = [default_registry().create("fuse-conv-bn"), Fail()]  # fails once weights were replaced
    with pytest.raises(PassError):
        graphopt.optimize(_sources(tmp_path, model)[kind], passes=passes, reproducer_dir=str(tmp_path / "repro"))
    assert (tmp_path / "repro" / "input.onnx").read_bytes() == model.SerializeToString()


@pytest.mark.parametrize("name", ["digits_cnn", "resnet_small", "mobilenetv2_small"])
def test_shipped_models_keep_their_outputs_and_accuracy(name, tmp_path):
    manifest = tomllib.loads(open(os.path.join(MODELS, "manifest.toml"), encoding="utf-8").read())
    path = os.path.join(MODELS, f"{name}.onnx")
    original = graphopt.load(path)
    optimized, report = graphopt.optimize(path, str(tmp_path / "out.onnx"), passes="lossless",
                                          check_changed=True)
    data = load_data(os.path.join(MODELS, "digits_test.npz"), original)
    assert_same_outputs(original, optimized, [data.head(64)], rtol=1e-4, atol=1e-5)  # BN folding rounds
    from graphopt.validate.numerics import run_model

    logits = run_model(optimized, {"input": data.arrays["input"]})["logits"]
    accuracy = float(np.mean(np.argmax(logits, axis=1) == data.extras["label"]))
    assert accuracy == pytest.approx(manifest["models"][name]["test_accuracy"], abs=1e-4)
    assert report.output.nodes <= report.input.nodes
    # the exporter leaves Identity nodes (with no domain field set) in the ResNet; lossless removes them
    assert "Identity" not in report.output.ops
    assert report.input.ops.get("Identity", 0) == (2 if name == "resnet_small" else 0)
