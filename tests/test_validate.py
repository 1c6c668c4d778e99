"""graphopt.validate: outputs, accuracy, latency, placement per provider; skipped providers; bad input."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
import validate_models as vm

from graphopt.errors import DataError, ModelError, UsageError, ValidationFailure
from graphopt.validate.providers import SessionSettings, parse_providers, unavailable_reason
from graphopt.validate.validation import check_signatures, validate


def test_lossless_candidate_agrees_and_keeps_accuracy(candidates):
    result = validate(vm.DIGITS, candidates["optimized"], vm.DIGITS_DATA, labels="label", rounds=3)
    (cpu,) = result.providers
    assert cpu.provider == "cpu" and cpu.skipped is None
    assert cpu.outputs_agree and [o.name for o in cpu.outputs] == ["logits"]
    assert cpu.outputs[0].cosine > 0.999999 and cpu.outputs[0].top1_agreement == 1.0
    assert cpu.accuracy.samples == 360
    assert cpu.accuracy.reference == pytest.approx(0.9778, abs=1e-4)  # the manifest's accuracy
    assert cpu.accuracy.drop_points == 0
    assert cpu.latency.speedup > 0 and len(cpu.latency.reference.samples) == 3
    assert set(cpu.latency.session_seconds) == {"reference", "candidate"}
    assert cpu.placement["candidate"].provider_nodes == {"CPUExecutionProvider": sum(
        cpu.placement["candidate"].provider_nodes.values())}
    assert cpu.placement["candidate"].int8_kernels == 0
    assert not result.data.synthetic and result.data.samples == 360
    assert result.candidate.nodes <= result.reference.nodes and result.reference.macs > 0
    assert result.tensorrt_lint is None  # no Q/DQ in the candidate


def test_perturbed_candidate_differs_and_per_layer_names_the_node(candidates):
    result = validate(vm.DIGITS, candidates["perturbed"], vm.DIGITS_DATA, labels="label", latency=False,
                      placement=False, per_layer=True)
    (cpu,) = result.providers
    assert not cpu.outputs_agree and cpu.latency is None and cpu.placement is None
    assert result.per_layer.first_divergence.op_type == "Conv"
    assert "conv2" in result.per_layer.first_divergence.node.lower()


def test_without_data_inputs_are_generated_and_said_so(candidates):
    result = validate(vm.DIGITS, candidates["optimized"], latency=False, placement=False)
    assert result.data.synthetic and result.data.samples == 8
    shaped = validate(vm.DIGITS, candidates["optimized"], latency=False, placement=False,
                      shapes={"input": [3, 1, 32, 32]})
    assert shaped.data.samples == 3 and shaped.providers[0].outputs_agree


def test_model_protos_work_like_paths(candidates):
    result = validate(onnx.load(vm.DIGITS), onnx.load(candidates["optimized"]), latency=False, placement=False)
    assert result.reference.path is None and result.providers[0].outputs_agree


def test_missing_provider_is_skipped_with_reason_or_fails_when_required(candidates):
    result = validate(vm.DIGITS, candidates["optimized"], providers="cpu,cuda,tensorrt", latency=False,
                      placement=False)
    skipped = {p.provider: p.skipped for p in result.providers if p.skipped}
    if not skipped:
        pytest.skip("this machine has CUDA and TensorRT")
    assert "CUDAExecutionProvider" in skipped["cuda"] and "onnxruntime-gpu" in skipped["cuda"]
    assert [p.provider for p in result.ran()] == ["cpu"]
    with pytest.raises(ValidationFailure, match="provider cuda is required"):
        validate(vm.DIGITS, candidates["optimized"], providers="cpu,cuda", require_providers=True,
                 latency=False, placement=False)


def test_provider_selection():
    assert parse_providers("cpu, CUDA,cpu") == ["cpu", "cuda"]
    assert parse_providers(["tensorrt"]) == ["tensorrt"]
    for bad in ("gpu", "", "cpu,,"):
        with pytest.raises(UsageError, match="unknown provider"):
            parse_providers(bad)
    installed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert unavailable_reason("cuda", installed) is None and unavailable_reason("cpu", installed) is None
    assert "TensorrtExecutionProvider" in unavailable_reason("tensorrt", installed)
    assert "onnxruntime-gpu" in unavailable_reason("cuda", ["CPUExecutionProvider"])


def test_session_settings_are_checked():
    with pytest.raises(UsageError, match="optimization level"):
        SessionSettings(optimization="max")
    with pytest.raises(UsageError, match="threads"):
        SessionSettings(threads=-1)


SIGNATURE = """
<ir_version: 8, opset_import: ["" : 17]>
m ({in_type}[N,4] {in_name}) => (float[N,4] {out_name}) {{
    {out_name} = Relu({in_name})
}}
"""


def _model(in_name="x", out_name="y", in_type="float"):
    return onnx.parser.parse_model(SIGNATURE.format(in_name=in_name, out_name=out_name, in_type=in_type))


@pytest.mark.parametrize("candidate, message", [
    (dict(in_name="z"), "the candidate has no input 'x'"),
    (dict(in_type="double"), "input 'x' is float32 of rank 2 in the reference but float64"),
    (dict(out_name="w"), "different outputs"),
])
def test_different_signatures_are_a_usage_error(candidate, message):
    with pytest.raises(UsageError, match=message):
        check_signatures(_model(), _model(**candidate))


def test_bad_data_and_options_are_usage_errors(candidates, tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(DataError, match="no array for model input 'input'"):
        validate(vm.DIGITS, candidates["optimized"], str(wrong))
    with pytest.raises(DataError, match="no label array 'labels'"):
        validate(vm.DIGITS, candidates["optimized"], vm.DIGITS_DATA, labels="labels")
    with pytest.raises(UsageError, match="labels need data"):
        validate(vm.DIGITS, candidates["optimized"], labels="label")
    with pytest.raises(UsageError, match="not an input"):
        validate(vm.DIGITS, candidates["optimized"], shapes={"image": [1, 1, 32, 32]})
    with pytest.raises(UsageError, match="does not fit"):
        validate(vm.DIGITS, candidates["optimized"], shapes={"input": [1, 32, 32]})
    with pytest.raises(UsageError, match="rounds must be positive"):
        validate(vm.DIGITS, candidates["optimized"], rounds=0)


def test_random_data_too_large_to_make_is_a_usage_error():
    huge = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
        g (float[1048576, 1048576] x) => (float[1048576, 1048576] y) { y = Relu(x) }""")
    with pytest.raises(UsageError, match=r"input 'x' of shape \[1048576, 1048576\] would take 4.1e\+03 GiB"):
        validate(huge, huge, latency=False)


def test_a_model_onnxruntime_cannot_run_is_a_model_error():
    custom = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 17, "my.domain": 1]>
        g (float[2] x) => (float[2] y) { y = my.domain.Frobnicate(x) }""")
    with pytest.raises(ModelError, match="onnxruntime cannot run the model on cpu") as raised:
        validate(custom, custom, latency=False)
    assert raised.value.exit_code == 2


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_a_provider_onnxruntime_falls_back_from_is_unavailable(monkeypatch):
    """onnxruntime-gpu lists CUDA even without the CUDA libraries, then quietly runs on the CPU: simulated
    by a build that claims CUDA; the session must be refused, not timed as CUDA."""
    import onnxruntime as ort

    from graphopt.validate import providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers.unavailable_reason("cuda") is None
    with pytest.raises(providers.ProviderUnavailable, match="could not start CUDAExecutionProvider.*fell back"):
        providers.open_session(_model(), "cuda")
    assert providers.open_session(_model(), "cpu").get_providers() == ["CPUExecutionProvider"]
    assert providers.provider_chain("tensorrt") == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                   "CPUExecutionProvider"]
