"""quantize-qdq's auto mode (``graphopt.quantize.auto``): the pieces (split, ranking, search, budget, decision)
with fakes, then the pass on models built to need a fallback, on the digits models, and on generated graphs.

No test depends on timing: the pass's latency probe is replaced in a subclass (``with_speedup``) or the
target's provider is missing (TensorRT), except on the real models, where the decision may go either way
and only its consistency and the accuracy are checked.
"""

from __future__ import annotations

import functools
import pathlib
import re

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx.printer
import onnxruntime
import pytest
from conftest import op_counts, parse_model, random_feeds
from graph_strategies import GeneratedModel, models
from hypothesis import HealthCheck, given, note, settings

import graphopt
from graphopt.data import Dataset
from graphopt.pipeline import format_pipeline, parse_pipeline
from graphopt.quantize import auto
from graphopt.validate.gate import Verdict
from graphopt.validate.latency import Timing
from graphopt.validate.numerics import compare_outputs, cpu_session
from graphopt.validate.providers import ProviderUnavailable
from graphopt.validate.validation import Latency
from passes.quantize_qdq import QuantizeQDQ

MODELS_DIR = pathlib.Path(__file__).resolve().parents[1] / "models"
CALIBRATION = str(MODELS_DIR / "digits_calib.npz")
OUTLIER_CHANNEL = 3


def fake_latency(speedup: float) -> auto.LatencyProbe:
    """A latency probe that times nothing: the int8 model runs ``speedup`` times as fast as float (1 ms)."""
    def probe(reference, candidate, feeds, provider) -> Latency:
        return Latency(Timing("reference", (1e-3,), 1), Timing("candidate", (1e-3 / speedup,), 1), speedup, {})
    return probe


def with_speedup(speedup: float, **options) -> QuantizeQDQ:
    """quantize-qdq (auto mode unless ``options`` say otherwise) whose latency probe reports ``speedup``."""
    class Timed(QuantizeQDQ):
        measure_latency = staticmethod(fake_latency(speedup))
    return Timed(**options)


def record(report):
    return next(r for r in report.passes if r.name == "quantize-qdq")


# ---------------------------------------------------------------------------------------------------------
# A model where quantization must fall back: an outlier input channel


@functools.cache
def outlier_model() -> onnx.ModelProto:
    """Conv(a) -> Relu -> Conv(b) -> Relu -> Conv(c) -> Relu -> GlobalAveragePool, 3x3 convolutions with 4, 8,
    8 input channels. Input channel 3 carries values ~1000 times smaller than the others (``outlier_data``) and
    conv_a weighs it ~1000 times more (the pattern of activation outliers compensated by weights): its
    contribution to conv_a's output is as large as the others'. In int8 the per-tensor input scale rounds that
    channel to 0 and the per-output-channel weight scales, set by the outlier weights, round every other weight
    of conv_a to 0: conv_a's output is lost. conv_b and conv_c quantize well."""
    rng = np.random.default_rng(0)
    nodes, weights = [], []
    for name, source, channels in (("conv_a", "x", 4), ("conv_b", "relu_a", 8), ("conv_c", "relu_b", 8)):
        weight = rng.standard_normal((8, channels, 3, 3)) / np.sqrt(9 * channels)
        if name == "conv_a":
            weight[:, OUTLIER_CHANNEL] *= 1e3
        weights += [onnx.numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"),
                    onnx.numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), f"{name}_b")]
        relu = name.replace("conv", "relu")
        nodes += [oh.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [name], name=name, pads=[1, 1, 1, 1]),
                  oh.make_node("Relu", [name], [relu], name=relu)]
    nodes.append(oh.make_node("GlobalAveragePool", ["relu_c"], ["y"], name="pool"))
    graph = oh.make_graph(nodes, "outlier", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 1, 1])], weights)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def outlier_data(samples: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((samples, 4, 8, 8)).astype(np.float32)
    x[:, OUTLIER_CHANNEL] *= 1e-3
    return {"x": x}


def deployed_cosine(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds) -> float:
    """Cosine of the output ``y`` of both models on ``feeds``, on onnxruntime as deployed (int8 kernels)."""
    outputs = [cpu_session(model, optimize=True).run(["y"], feeds)[0] for model in (reference, candidate)]
    return compare_outputs({"y": outputs[0]}, {"y": outputs[1]}, 1e-4, 1e-5)[0].cosine


def weight_readers(model: onnx.ModelProto) -> dict[str, str]:
    """Conv name -> the op type that produces its weight input (DequantizeLinear when it runs in int8)."""
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    return {node.name: producers.get(node.input[1], "initializer") for node in model.graph.node
            if node.op_type == "Conv"}


def test_fully_quantized_outlier_model_breaks_the_budget():
    """The premise of the next tests: static quantization puts the output far outside min_cosine=0.99."""
    model = outlier_model()
    quantized, _ = graphopt.optimize(model, passes="quantize-qdq(mode=static)", data=outlier_data())
    assert deployed_cosine(model, quantized, outlier_data(seed=1)) < 0.95


def test_exactly_the_sensitive_layer_stays_float_and_the_budget_holds():
    model = outlier_model()
    quantized, report = graphopt.optimize(model, passes=with_speedup(2.0), data=outlier_data(), check_changed=True)
    result = record(report).result
    assert record(report).changed
    assert weight_readers(quantized) == {"conv_a": "initializer", "conv_b": "DequantizeLinear",
                                         "conv_c": "DequantizeLinear"}
    assert result.stats["skipped.sensitive"] == 1 and result.stats["quantized.Conv"] == 2
    assert result.stats["auto.variants"] == 2 and result.stats["auto.holdout_samples"] == 13  # ceil(0.2 * 64)
    assert result.stats["auto.refitted"] == 1  # calibrated on all 64 samples
    (sensitive,) = [str(d) for d in result.diagnostics if "(sensitive)" in str(d)]
    assert sensitive.startswith("info [conv_a]: Conv left in float (sensitive)") and "relative error" in sensitive
    summary = str(result.diagnostics[-1])
    assert summary.startswith("info") and "1 node(s) kept in float" in summary and "2.00x" in summary
    assert deployed_cosine(model, quantized, outlier_data(seed=1)) >= 0.99  # on data it has never seen


def test_each_variant_tried_is_reported_with_its_verdicts():
    _, report = graphopt.optimize(outlier_model(), passes=with_speedup(2.0), data=outlier_data())
    diagnostics = [str(d) for d in record(report).result.diagnostics]
    trials = [line for line in diagnostics if "(mode=auto) variant" in line]
    assert len(trials) == 2
    assert "variant 0 (4 int8 layers, 0 kept in float): over budget: min_cosine" in trials[0] and "FAIL" in trials[0]
    assert "variant 1 (3 int8 layers, 1 kept in float: conv_a): within budget" in trials[1]
    (refit,) = [line for line in diagnostics if "calibrated on all the data" in line]
    assert "(held-out samples included): within budget: min_cosine" in refit and refit.endswith("it is written")


def test_no_variant_within_budget_keeps_the_float_model():
    model = outlier_model()
    optimized, report = graphopt.optimize(model, passes=with_speedup(2.0, max_fallback_steps=0), data=outlier_data(),
                                          check_changed=True)
    result = record(report).result
    assert not record(report).changed and op_counts(optimized) == op_counts(model)
    assert dict(result.stats) == {"skipped.over_budget": 1, "auto.variants": 1, "auto.holdout_samples": 13}
    assert str(result.diagnostics[-1]).startswith("warning: quantize-qdq (mode=auto) kept the float model: no int8 "
                                                  "variant of 1 stayed within the budget")


def test_int8_that_is_not_faster_keeps_the_float_model():
    """A tiny model that quantizes faithfully, but the probe says int8 runs at half the speed of float."""
    model = outlier_model()
    optimized, report = graphopt.optimize(model, passes=with_speedup(0.5, exclude_nodes=["conv_a"]),
                                          data=outlier_data(), check_changed=True)
    result = record(report).result
    assert not record(report).changed
    assert optimized.graph.node == model.graph.node and optimized.graph.initializer == model.graph.initializer
    assert dict(result.stats) == {"skipped.not_faster": 1, "auto.variants": 1, "auto.holdout_samples": 13}
    summary = str(result.diagnostics[-1])
    assert summary.startswith("warning: quantize-qdq (mode=auto) kept the float model: no int8 model within the "
                              "budget is faster")
    assert "(0.50x), below min_speedup 1" in summary


def test_min_speedup_zero_accepts_a_slower_int8_model():
    _, report = graphopt.optimize(outlier_model(), passes=with_speedup(0.5, min_speedup=0.0), data=outlier_data())
    assert record(report).changed and record(report).result.stats["skipped.sensitive"] == 1


def test_exclusions_are_respected():
    """conv_c named in exclude_nodes stays float for that reason; conv_a still falls back as sensitive."""
    quantized, report = graphopt.optimize(outlier_model(), passes=with_speedup(2.0, exclude_nodes=["conv_c"]),
                                          data=outlier_data(), check_changed=True)
    assert weight_readers(quantized) == {"conv_a": "initializer", "conv_b": "DequantizeLinear",
                                         "conv_c": "initializer"}
    stats = record(report).result.stats
    assert stats["skipped.excluded_node"] == 1 and stats["skipped.sensitive"] == 1
    diagnostics = [str(d) for d in record(report).result.diagnostics]
    assert any(d.startswith("info [conv_c]: Conv left in float (excluded_node)") for d in diagnostics)


def test_exclude_op_types_leaves_nothing_to_search():
    model = outlier_model()
    optimized, report = graphopt.optimize(model, passes=with_speedup(2.0, exclude_op_types=["Conv"]),
                                          data=outlier_data(), check_changed=True)
    assert not record(report).changed and "auto.variants" not in record(report).result.stats
    assert op_counts(optimized) == op_counts(model)


def test_unavailable_target_provider_keeps_int8_on_fidelity_with_a_warning():
    """target=tensorrt on a machine without TensorRT: the real latency probe cannot time it."""
    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("TensorRT is installed here")
    _, report = graphopt.optimize(outlier_model(), passes="quantize-qdq(target=tensorrt)", data=outlier_data(),
                                  check_changed=True)
    assert record(report).changed and record(report).result.stats["skipped.sensitive"] == 1
    warnings = [str(d) for d in record(report).result.diagnostics if str(d).startswith("warning")]
    assert len(warnings) == 1 and "latency not measured, int8 kept on fidelity alone" in warnings[0]


def test_one_sample_is_judged_on_the_calibration_data_with_a_warning():
    _, report = graphopt.optimize(outlier_model(), passes=with_speedup(2.0), data=outlier_data(samples=1))
    result = record(report).result
    assert result.stats["auto.holdout_samples"] == 1
    assert any("no sample could be held out" in str(d) and str(d).startswith("warning") for d in result.diagnostics)


def test_few_held_out_samples_are_warned_about():
    _, report = graphopt.optimize(outlier_model(), passes=with_speedup(2.0), data=outlier_data(samples=10))
    result = record(report).result
    assert result.stats["auto.holdout_samples"] == 5  # at most half
    assert "warning: quantize-qdq (mode=auto): the budget was checked on 5 held-out samples only, a weak check" in \
        [str(d) for d in result.diagnostics]


def test_default_mode_is_auto_and_options_round_trip():
    assert QuantizeQDQ().values["mode"] == "auto"
    text = ("quantize-qdq(mode=auto,max_accuracy_drop=1,min_cosine=0.999,min_top1_agreement=0.95,min_speedup=1.5,"
            "holdout_fraction=0.3,max_fallback_steps=3)")
    pipeline = parse_pipeline(text)
    assert format_pipeline(parse_pipeline(format_pipeline(pipeline))) == format_pipeline(pipeline)
    assert pipeline.children()[0].values["min_speedup"] == 1.5


# ---------------------------------------------------------------------------------------------------------
# The digits models, with labels: accuracy on the test split


@functools.cache
def digits_test() -> dict[str, np.ndarray]:
    with np.load(MODELS_DIR / "digits_test.npz") as loaded:
        return {name: loaded[name] for name in loaded.files}


def accuracy(model: onnx.ModelProto) -> float:
    data = digits_test()
    (logits,) = cpu_session(model, optimize=True).run(["logits"], {"input": data["input"]})
    return float(np.mean(logits.argmax(axis=1) == data["label"]) * 100)


@pytest.mark.parametrize("name", ["digits_cnn", "resnet_small", "mobilenetv2_small"])
def test_digits_models_within_budget_with_real_latency(name):
    """Judged by accuracy on 52 held-out calibration samples (labels in digits_calib.npz), with real latency.
    Measured on the 360 test samples (2026-11-29, this machine): digits_cnn's int8 model runs at 0.93-1.05x
    float, so the machine's noise decides whether it is kept (no accuracy lost either way); resnet_small is
    kept in int8 (1.6-1.7x) at a drop of 0.56 points (2 samples); mobilenetv2_small in int8 (1.2x) at 0.28. 52
    held-out samples cannot resolve half a point (one sample is 1.9 points), so on the test split the drop
    may exceed the budget by a test sample: the bound here allows one."""
    path = str(MODELS_DIR / f"{name}.onnx")
    optimized, report = graphopt.optimize(path, passes="lossless,quantize-qdq", data=CALIBRATION, check_changed=True)
    result = record(report).result
    trials = [str(d) for d in result.diagnostics if "(mode=auto) variant" in str(d)]
    assert trials and all("max_accuracy_drop" in trial and "min_cosine" not in trial for trial in trials)
    summary = str(result.diagnostics[-1])
    assert "ms float ->" in summary  # the real probe ran
    if record(report).changed:
        assert "within budget" in trials[-1] and "judged by accuracy on 52 samples" in summary
    else:
        assert result.stats.get("skipped.not_faster", 0) + result.stats.get("skipped.over_budget", 0) == 1
    reference = graphopt.optimize(path, passes="lossless").model
    drop = accuracy(reference) - accuracy(optimized)
    assert drop <= 0.5 + 100 / len(digits_test()["label"]), f"{name}: {drop:.2f} points"


# ---------------------------------------------------------------------------------------------------------
# A first layer on one input channel: onnxruntime's int8 convolution may be slower there than float

def stem_model(channels: int) -> onnx.ModelProto:
    """Conv(stem, ``channels`` -> 16, 3x3) -> Relu -> Conv(16 -> 16, 3x3) -> Relu -> GlobalAveragePool."""
    rng = np.random.default_rng(0)

    def values(count: int, scale: float) -> str:
        return ",".join(f"{v:.4f}" for v in rng.standard_normal(count) * scale)
    return parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,{channels},8,8] x) => (float[N,16,1,1] y)
      <float[16,{channels},3,3] w_stem = {{{values(144 * channels, 0.3 / channels)}}},
       float[16,16,3,3] w_body = {{{values(2304, 0.08)}}}> {{
       s = Conv <pads = [1, 1, 1, 1]> (x, w_stem)
       r = Relu (s)
       b = Conv <pads = [1, 1, 1, 1]> (r, w_body)
       rb = Relu (b)
       y = GlobalAveragePool (rb)
    }}
    """)


def with_stem_speedups(stem_float: float, stem_int8: float) -> QuantizeQDQ:
    """quantize-qdq (auto) whose probe reports ``stem_float`` for a candidate whose stem Conv reads its float
    weight, else ``stem_int8``."""
    def probe(reference, candidate, feeds, provider) -> Latency:
        float_stem = any(node.op_type == "Conv" and node.input[1] == "w_stem" for node in candidate.graph.node)
        return fake_latency(stem_float if float_stem else stem_int8)(reference, candidate, feeds, provider)

    class Timed(QuantizeQDQ):
        measure_latency = staticmethod(probe)
    return Timed()


@pytest.mark.parametrize(("stem_float", "stem_int8"), [(2.0, 1.5), (1.2, 1.5), (1.55, 1.5), (1.5, 1.55)])
def test_a_shallow_conv_is_tried_in_float_and_the_faster_or_closer_variant_kept(stem_float, stem_int8):
    """The faster variant is kept when at least 5% faster; closer than that, the one whose outputs are closer
    to float's, here the one with the stem in float (one rounding less)."""
    model = stem_model(1)
    optimized, report = graphopt.optimize(model, passes=with_stem_speedups(stem_float, stem_int8),
                                          data=random_feeds(model, seed=1, batch=40), check_changed=True)
    result = record(report).result
    tied = max(stem_float, stem_int8) < auto.ALTERNATIVE_MARGIN * min(stem_float, stem_int8)
    kept_float = tied or stem_float > stem_int8
    readers = {node.output[0]: node.input[1] for node in optimized.graph.node if node.op_type == "Conv"}
    assert (readers.get("s") == "w_stem") == kept_float and "w_body" not in readers.values()
    assert result.stats.get("skipped.shallow_conv", 0) == int(kept_float)
    assert result.stats["quantized.Conv"] == (1 if kept_float else 2)
    diagnostics = [str(d) for d in result.diagnostics]
    assert any("kept in float too (s): within budget" in line for line in diagnostics)
    kept, other = (stem_float, stem_int8) if kept_float else (stem_int8, stem_float)
    assert f"({kept:.2f}x) (the other variant within the budget:" in diagnostics[-1]
    assert f"({other:.2f}x))" in diagnostics[-1]
    tie = re.search(r"output relative error ([0-9.e-]+) against ([0-9.e-]+)\)$", diagnostics[-1])
    assert (tie is not None) == tied and (not tied or float(tie[1]) < float(tie[2]))
    if kept_float:
        assert any(line.startswith("info [s]: Conv left in float (shallow_conv)") for line in diagnostics)


def test_a_deep_first_conv_is_not_offered_in_float():
    """A stem on 8 input channels sums 8 x 9 = 72 products: one variant is timed, no alternative."""
    model = stem_model(8)
    _, report = graphopt.optimize(model, passes=with_stem_speedups(2.0, 1.5), data=random_feeds(model, batch=40))
    diagnostics = [str(d) for d in record(report).result.diagnostics]
    assert not any("kept in float too" in line or "the other variant" in line for line in diagnostics)


# ---------------------------------------------------------------------------------------------------------
# The pieces


def test_fallback_sizes_double():
    assert [auto.fallback_size(step) for step in range(5)] == [1, 2, 4, 8, 16]


def layer(key: str, inputs=(), outputs=None) -> auto.Layer:
    return auto.Layer(key, key, "Conv", tuple(inputs), tuple(outputs or (key,)))


def test_rank_layers_by_added_error():
    layers = [layer("a", ["x"]), layer("b", ["a"]), layer("c", ["b", "x"], ["c", "c2"])]
    errors = {"a": 0.01, "b": 0.5, "c": 0.505, "c2": 0.1}  # x, a graph input, has no error
    ranking = auto.rank_layers(layers, errors)
    assert [s.layer.key for s in ranking] == ["b", "a", "c"]
    assert ranking[0].added_error == pytest.approx(0.49) and ranking[2].input_error == 0.5
    assert ranking[2].output_error == 0.505


def test_relative_error():
    reference = np.array([3.0, 4.0], np.float32)
    assert auto.relative_error(reference, reference) == 0
    assert auto.relative_error(reference, np.array([3.0, 3.0], np.float32)) == pytest.approx(0.2)
    assert np.isfinite(auto.relative_error(np.zeros(2), np.ones(2)))


def test_layer_errors_of_the_outlier_model():
    """Only conv_a's output (and what follows it) is off; x, the graph input, is left out."""
    model = outlier_model()
    quantized, _ = graphopt.optimize(model, passes="quantize-qdq(mode=static)", data=outlier_data())
    layers = [layer("conv_a", ["x"], ["relu_a"]), layer("conv_b", ["relu_a"], ["relu_b"])]
    errors = auto.layer_errors(model, quantized, layers, {"x": outlier_data(samples=4, seed=1)["x"]})
    assert set(errors) == {"relu_a", "relu_b"} and errors["relu_a"] > 0.3
    assert [s.layer.key for s in auto.rank_layers(layers, errors)] == ["conv_a", "conv_b"]


def fake_search(sensitive: set[str], layers: list[str], max_steps: int = 8):
    """``auto.search`` where a variant is within budget once every layer of ``sensitive`` is in float, and the
    ranking puts the sensitive layers first."""
    def build(fallback):
        return auto.Variant(fallback, None, tuple(layer(key) for key in layers if key not in fallback))

    def judge(variant):
        passed = sensitive <= set(variant.fallback)
        return [Verdict("min_cosine", "cpu", 1.0 if passed else 0.5, 0.99, passed, "")]

    def rank(variant):
        return sorted((auto.Sensitivity(item, 0.0, 1.0 if item.key in sensitive else 0.0)
                       for item in variant.layers), key=lambda s: -s.added_error)
    return auto.search(build, judge, rank, max_steps)


def test_search_grows_by_doubling_then_bisects_to_the_fewest_float_layers():
    found = fake_search({"a", "c", "e"}, list("abcdefgh"))
    assert [len(trial.fallback) for trial in found.trials] == [0, 1, 2, 4, 3]
    assert [trial.within_budget for trial in found.trials] == [False, False, False, True, True]
    assert found.variant.fallback == ("a", "c", "e")


def test_search_stops_at_the_first_variant_within_budget():
    found = fake_search(set(), list("abc"))
    assert len(found.trials) == 1 and found.variant.fallback == ()


def test_search_gives_up_after_max_steps_or_when_nothing_is_left():
    assert fake_search(set("abcdefgh"), list("abcdefgh"), max_steps=2).variant is None
    exhausted = fake_search({"z"}, list("ab"))  # z is no layer: no int8 variant meets the budget
    assert exhausted.variant is None and [len(t.fallback) for t in exhausted.trials] == [0, 1]  # 2: all float


def labelled(samples: int) -> Dataset:
    return Dataset({"x": np.arange(samples, dtype=np.float32)[:, None]}, {"label": np.arange(samples)})


@pytest.mark.parametrize("samples, held", [(100, 20), (20, 8), (10, 5), (3, 1)])
def test_split_holdout_sizes(samples, held):
    """ceil(0.2 n), at least 8, at most half."""
    split = auto.split_holdout(labelled(samples), 0.2)
    assert (len(split.holdout), len(split.calibration)) == (held, samples - held) and split.separate
    np.testing.assert_array_equal(split.holdout.arrays["x"][:, 0], split.holdout.extras["label"])
    together = np.sort(np.concatenate([split.holdout.arrays["x"][:, 0], split.calibration.arrays["x"][:, 0]]))
    np.testing.assert_array_equal(together, np.arange(samples))


def test_split_holdout_needs_two_samples_of_one_axis_and_no_fixed_batch():
    for data, fixed_batch in ((labelled(1), False), (labelled(40), True),
                              (Dataset({"x": np.zeros((40, 2)), "y": np.zeros((2, 2))}), False)):
        split = auto.split_holdout(data, 0.2, fixed_batch)
        assert not split.separate and split.holdout is data and split.calibration is data
        assert split.feeds(4) is data.arrays


TINY = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,3] y) <float[4,3] w = {1,0,0, 0,1,0, 0,0,1, 1,1,1}> { y = MatMul (x, w) }
"""


def test_fixes_batch():
    assert not auto.fixes_batch(parse_model(TINY))
    assert auto.fixes_batch(parse_model(TINY.replace("N,", "5,")))


def test_budget_by_accuracy_with_labels_else_by_fidelity():
    reference = parse_model(TINY)
    candidate = parse_model(TINY.replace("0,0,1, 1,1,1", "0,0,1, 1,1,0.8"))  # moves the argmax of some rows
    feeds = random_feeds(reference, batch=200)
    expected, actual = (auto.run_deployed(model, [feeds]) for model in (reference, candidate))
    budget = auto.Budget(max_accuracy_drop=0.5, min_cosine=0.99, min_top1_agreement=0.99, min_speedup=1.0)
    labels = auto.accuracy_labels(expected, Dataset(feeds, {"label": expected["y"].argmax(axis=1)}))
    (verdict,) = auto.budget_verdicts(expected, actual, labels, budget)
    assert verdict.check == "max_accuracy_drop" and verdict.value > 0.5 and not verdict.passed
    verdicts = auto.budget_verdicts(expected, actual, None, budget)
    assert [v.check for v in verdicts] == ["min_cosine", "min_top1_agreement"]
    assert verdicts[0].passed and verdicts[1].value < 0.99 and not verdicts[1].passed
    assert all(v.passed for v in auto.budget_verdicts(expected, expected, None, budget))


def test_top1_agreement_is_not_judged_on_too_few_samples():
    """With 50 held-out samples one changed prediction is 2%: a 0.99 agreement cannot be resolved, so a
    near-tied flip must not keep layers in float; cosine decides."""
    reference = parse_model(TINY)
    candidate = parse_model(TINY.replace("0,0,1, 1,1,1", "0,0,1, 1,1,0.8"))
    feeds = random_feeds(reference, batch=50)
    expected, actual = (auto.run_deployed(model, [feeds]) for model in (reference, candidate))
    budget = auto.Budget(max_accuracy_drop=0.5, min_cosine=0.99, min_top1_agreement=0.99, min_speedup=1.0)
    cosine, top1 = auto.budget_verdicts(expected, actual, None, budget)
    assert top1.value < 1 and top1.passed and top1.detail.startswith("not judged: one changed prediction among 50")
    loose = auto.Budget(max_accuracy_drop=0.5, min_cosine=0.99, min_top1_agreement=0.9, min_speedup=1.0)
    judged = auto.budget_verdicts(expected, actual, None, loose)[1]  # 50 * 0.1 >= 1: resolvable
    assert judged.detail == "worst output 'y'" and judged.passed == (judged.value >= 0.9)


def test_labels_without_class_scores_are_judged_by_fidelity():
    reference = parse_model(TINY.replace("float[4,3] w", "float[4,1] w").replace("float[N,3] y", "float[N,1] y")
                            .replace("1,0,0, 0,1,0, 0,0,1, 1,1,1", "1,2,3,4"))
    feeds = random_feeds(reference)
    assert auto.accuracy_labels(auto.run_deployed(reference, [feeds]), Dataset(feeds, {"label": np.zeros(3)})) is None


def choose_on_tiny(latency: auto.LatencyProbe, provider: str = "cpu", latency_batch: int = 1) -> auto.Outcome:
    """``choose_variant`` where every variant is the float model itself (so within any budget) with one layer."""
    reference = parse_model(TINY)
    split = auto.split_holdout(Dataset(random_feeds(reference, batch=20)), 0.2)
    return auto.choose_variant(lambda fallback: auto.Variant(fallback, reference, (layer("y", ["x"]),)), reference,
                               split, auto.Budget(0.5, 0.99, 0.99, 1.0, latency_batch), 4, provider, latency)


@pytest.mark.parametrize(("latency_batch", "timed"), [(1, 1), (4, 4), (64, 8)])  # 8 samples are held out
def test_choose_variant_times_at_the_latency_batch(latency_batch, timed):
    batches = []

    def probe(reference, candidate, feeds, provider):
        batches.append(len(next(iter(feeds.values()))))
        return fake_latency(1.5)(reference, candidate, feeds, provider)
    choose_on_tiny(probe, latency_batch=latency_batch)
    assert batches == [timed]


@pytest.mark.parametrize("speedup, kept", [(1.2, True), (0.9, False)])
def test_choose_variant_keeps_int8_only_when_fast_enough(speedup, kept):
    outcome = choose_on_tiny(fake_latency(speedup))
    assert (outcome.variant is not None) == kept and outcome.latency.speedup == speedup
    assert outcome.reason == (None if kept else "not_faster")
    assert outcome.stats() == {"auto.variants": 1, "auto.holdout_samples": 8,
                               **({} if kept else {"skipped.not_faster": 1})}


def test_refit_within_budget_replaces_the_variant_and_one_over_budget_does_not():
    reference = parse_model(TINY)
    negated = parse_model(TINY.replace("1,0,0, 0,1,0, 0,0,1, 1,1,1", "-1,0,0, 0,-1,0, 0,0,-1, -1,-1,-1"))
    split = auto.split_holdout(Dataset(random_feeds(reference, batch=20)), 0.2)
    budget = auto.Budget(0.5, 0.99, 0.99, 1.0)

    def choose(refit_model: onnx.ModelProto) -> auto.Outcome:
        return auto.choose_variant(lambda fallback: auto.Variant(fallback, reference, (layer("y", ["x"]),)),
                                   reference, split, budget, 4, "cpu", fake_latency(1.5),
                                   refit=lambda fallback: auto.Variant(fallback, refit_model, (layer("y", ["x"]),)))
    good, bad = choose(reference), choose(negated)
    assert good.refitted and good.variant.model is reference and good.stats()["auto.refitted"] == 1
    assert not bad.refitted and bad.variant.model is reference and bad.stats()["auto.refitted"] == 0
    assert not bad.refit.within_budget and bad.refit.verdicts[0].value < 0  # the cosine of y and -y
    (line,) = [str(d) for d in bad.diagnostics(budget) if "calibrated on all the data" in str(d)]
    assert "over budget" in line and line.endswith("the variant calibrated without the held-out samples is written")


def test_choose_variant_without_the_provider_keeps_int8_and_says_why():
    def unavailable(*args):
        raise ProviderUnavailable("no TensorRT here")
    outcome = choose_on_tiny(unavailable, "tensorrt")
    assert outcome.variant is not None and outcome.latency is None and outcome.latency_problem == "no TensorRT here"


# ---------------------------------------------------------------------------------------------------------
# Generated models (tests/graph_strategies.py)


@pytest.mark.parametrize("min_cosine", [0.99, 0.99999])
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=models())
def test_generated_models_keep_float_or_meet_the_budget(min_cosine, case: GeneratedModel):
    """With int8 reported twice as fast, auto mode either leaves the graph alone (``changed`` honest) or
    writes a valid model whose outputs meet min_cosine and min_top1_agreement (0.99) on the data it judged
    (all the feeds: generated models fix their batch, so nothing can be held out). The stricter min_cosine
    makes the search keep nodes in float."""
    optimized, report = graphopt.optimize(case.model, passes=with_speedup(2.0, min_cosine=min_cosine),
                                          data=case.feeds, check_changed=True)
    note(onnx.printer.to_text(optimized))
    if not record(report).changed:
        return
    onnx.checker.check_model(optimized, full_check=True)
    expected, actual = (auto.run_deployed(model, [case.feeds]) for model in (case.model, optimized))
    for output in compare_outputs(expected, actual, 1e-4, 1e-5):
        assert output.cosine >= min_cosine and (output.top1_agreement is None or output.top1_agreement >= 0.99), \
            output
