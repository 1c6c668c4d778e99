"""compare_layers: the first divergence is named at the layer that changed, lossless rewrites agree layer by
layer, non-float tensors are compared exactly, and the caller's models are left alone."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from conftest import parse_model, random_feeds

import graphopt
from graphopt.validate.per_layer import compare_layers

MODELS = os.path.join(os.path.dirname(__file__), os.pardir, "models")


def _model(name: str) -> onnx.ModelProto:
    return onnx.load(os.path.join(MODELS, name))


@pytest.fixture(scope="module")
def digits_feeds() -> dict[str, np.ndarray]:
    with np.load(os.path.join(MODELS, "digits_test.npz")) as data:
        return {"input": data["input"][:4]}


def _with_perturbed_weight(model: onnx.ModelProto, node_index: int) -> onnx.ModelProto:
    """A copy of ``model`` with one element of the weight of node ``node_index`` changed by 0.05."""
    perturbed = onnx.ModelProto()
    perturbed.CopyFrom(model)
    weight_name = perturbed.graph.node[node_index].input[1]
    weight = next(i for i in perturbed.graph.initializer if i.name == weight_name)
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.05
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight_name))
    return perturbed


def test_perturbed_conv_weight_is_the_first_divergence(digits_feeds):
    reference = _model("digits_cnn.onnx")
    conv_indices = [i for i, node in enumerate(reference.graph.node) if node.op_type == "Conv"]
    second_conv = reference.graph.node[conv_indices[1]]
    result = compare_layers(reference, _with_perturbed_weight(reference, conv_indices[1]), digits_feeds)
    first = result.first_divergence
    assert first is not None
    assert (first.node, first.op_type, first.tensor) == (second_conv.name, "Conv", second_conv.output[0])
    before = result.compared[:result.compared.index(first)]
    assert before and all(c.within_tolerance for c in before)
    assert first.max_abs_error > 1e-3 and first.cosine < 1.0
    assert result.unmatched == 0


def test_identical_candidate_has_no_divergence(digits_feeds):
    reference = _model("digits_cnn.onnx")
    result = compare_layers(reference, _model("digits_cnn.onnx"), digits_feeds)
    assert result.first_divergence is None
    assert [c.tensor for c in result.compared] == [o for node in reference.graph.node for o in node.output]
    assert all(c.max_abs_error == 0.0 for c in result.compared)
    assert result.unmatched == 0


def test_lossless_optimization_agrees_layer_by_layer(digits_feeds):
    reference = _model("resnet_small.onnx")
    candidate = graphopt.optimize(os.path.join(MODELS, "resnet_small.onnx"), passes="lossless").model
    result = compare_layers(reference, candidate, digits_feeds)
    assert result.first_divergence is None
    assert result.unmatched > 0  # Conv outputs fused with their BatchNormalization, folded Identities
    assert len(result.compared) == len(candidate.graph.node)
    ops = {c.op_type for c in result.compared}
    assert {"BatchNormalization", "Relu", "Add", "Gemm"} <= ops


NON_FLOAT_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N,4] x) => (int64[N,4] j, bool[N,4] b) {{
    big = Constant<value = float[1] {{1000000.0}}>()
    scaled = Mul(x, big)
    [cast] i = Cast<to = 7>(scaled)
    {step_name} = Constant<value = int64[1] {{{step}}}>()
    [add] j = Add(i, {step_name})
    threshold = Constant<value = float[1] {{{threshold}}}>()
    [greater] b = Greater(x, threshold)
}}
"""


def _non_float_model(step: int, threshold: float) -> onnx.ModelProto:
    step_name = "one" if step == 1 else "other_step"
    return parse_model(NON_FLOAT_TEXT.format(step=step, step_name=step_name, threshold=threshold))


def test_integer_tensors_must_be_equal():
    """Values near 1e6 differ by 1: within rtol=1e-4 for floats, but an int64 tensor must be equal."""
    reference = _non_float_model(step=1, threshold=0.0)
    feeds = {"x": np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)}
    result = compare_layers(reference, _non_float_model(step=2, threshold=0.0), feeds)
    by_tensor = {c.tensor: c for c in result.compared}
    assert by_tensor["i"].within_tolerance and by_tensor["i"].op_type == "Cast"
    assert result.first_divergence == by_tensor["j"]
    assert (by_tensor["j"].node, by_tensor["j"].max_abs_error) == ("add", 1.0)
    assert by_tensor["b"].within_tolerance
    assert result.unmatched == 1  # the Constant 'one' is named 'other_step' in the candidate


def test_bool_tensors_must_be_equal():
    """Thresholds 0 and 1e-6 agree within atol=1e-5 as floats; the comparisons they give do not."""
    reference = _non_float_model(step=1, threshold=0.0)
    feeds = {"x": np.array([[-0.5, 5e-7, 0.5, 2.0]], dtype=np.float32)}
    result = compare_layers(reference, _non_float_model(step=1, threshold=1e-6), feeds)
    by_tensor = {c.tensor: c for c in result.compared}
    assert by_tensor["threshold"].within_tolerance
    first = result.first_divergence
    assert first is not None and (first.tensor, first.node, first.op_type) == ("b", "greater", "Greater")
    assert first.max_abs_error == 1.0


def test_outputs_without_inferred_type_are_compared():
    """onnx's shape inference does not know com.microsoft.Gelu; its output is still exposed and compared."""
    text = """
    <ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
    agraph (float[N,4] x) => (float[N,4] y) {
        t = Relu(x)
        g = com.microsoft.Gelu(t)
        y = Neg(g)
    }
    """
    reference = parse_model(text, check=False)
    result = compare_layers(reference, reference, random_feeds(reference))
    assert [c.tensor for c in result.compared] == ["t", "g", "y"]
    assert result.first_divergence is None


def test_models_passed_in_are_unchanged(digits_feeds):
    reference = _model("digits_cnn.onnx")
    candidate = _with_perturbed_weight(reference, 0)
    before = reference.SerializeToString(), candidate.SerializeToString()
    compare_layers(reference, candidate, digits_feeds)
    assert (reference.SerializeToString(), candidate.SerializeToString()) == before


def test_to_dict_is_json_ready(digits_feeds):
    reference = _model("digits_cnn.onnx")
    result = compare_layers(reference, _with_perturbed_weight(reference, 0), digits_feeds)
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["unmatched"] == 0
    assert len(as_dict["compared"]) == len(result.compared)
    assert as_dict["first_divergence"] == result.first_divergence.to_dict()
    assert set(as_dict["first_divergence"]) == {"tensor", "node", "op_type", "max_abs_error", "max_rel_error",
                                                "cosine", "within_tolerance"}
