"""Calibration: each method on known distributions against exact numbers, streaming equal to one shot with a
growing range, exact re-binning, degenerate and non-finite tensors, and calibrate() on real and synthetic
models: names, types, the caller's model left alone, progress, and memory bounded by one batch."""

from __future__ import annotations

import logging
import math
import os
import re
import tracemalloc

import numpy as np
import onnx
import onnx.helper
import pytest
from conftest import parse_model

from graphopt.data import Dataset, load_data
from graphopt.errors import DataError, UsageError
from graphopt.quantize.calibration import (
    INT8_LEVELS,
    KL_LEVELS,
    METHODS,
    MIN_RANGE_WIDTH,
    UINT8_STEPS,
    Calibration,
    PowerOfTwoHistogram,
    _exponent_for,
    _kl_threshold_bins,
    calibrate,
    make_collector,
)
from graphopt.validate.numerics import run_model

MODELS = os.path.join(os.path.dirname(__file__), os.pardir, "models")
HISTOGRAM_METHODS = ("percentile", "entropy", "mse")
BINS = 2048


def _range(method: str, values: np.ndarray, **options) -> tuple[float, float]:
    collector = make_collector(method, **options)
    collector.update(values)
    return collector.range()


def _gaussian_with_outliers(samples: int = 1_000_000) -> np.ndarray:
    """Standard normal samples plus one outlier at +50 and one at -50."""
    values = np.random.default_rng(0).standard_normal(samples)
    return np.concatenate([values, [50.0, -50.0]])


def _uniform(samples: int = 1_000_000) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1.0, 3.0, samples)


# ---------------------------------------------------------------------------------------------------------
# Methods on known distributions


@pytest.mark.parametrize("values", [_uniform(), _gaussian_with_outliers()], ids=["uniform", "gaussian"])
def test_minmax_is_exact(values):
    assert _range("minmax", values) == (values.min(), values.max())
    magnitude = np.abs(values).max()
    assert _range("minmax", values, symmetric=True) == (-magnitude, magnitude)


@pytest.mark.parametrize("percentile", [99.0, 99.99, 100.0])
@pytest.mark.parametrize("values", [_uniform(), _gaussian_with_outliers()], ids=["uniform", "gaussian"])
def test_percentile_is_within_two_bins_of_numpy(values, percentile):
    """|error| <= 2 w, w <= max|x| / bins (the module docstring's bound)."""
    tolerance = 2 * np.abs(values).max() / BINS
    low, high = _range("percentile", values, percentile=percentile, symmetric=True)
    assert high == -low
    assert high == pytest.approx(np.percentile(np.abs(values), percentile), abs=tolerance)
    cut = (100 - percentile) / 2
    low, high = _range("percentile", values, percentile=percentile)
    expected_low, expected_high = np.percentile(values, [cut, 100 - cut])
    assert low == pytest.approx(min(expected_low, 0.0), abs=tolerance)
    assert high == pytest.approx(expected_high, abs=tolerance)


def test_histogram_methods_clip_outliers_and_minmax_keeps_them():
    values = _gaussian_with_outliers()
    assert _range("minmax", values) == (-50.0, 50.0)
    for symmetric in (False, True):
        percentile = _range("percentile", values, percentile=99.99, symmetric=symmetric)
        assert 3.0 < -percentile[0] < 5.0 and 3.0 < percentile[1] < 5.0
        entropy = _range("entropy", values, symmetric=symmetric)
        assert 3.0 < entropy[1] < 6.0 and entropy[0] == -entropy[1]
        mse = _range("mse", values, symmetric=symmetric)
        assert 8.0 < mse[1] < 20.0 and mse[0] == pytest.approx(-mse[1], rel=0.01)


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_exact_zeros_do_not_move_entropy_and_mse(method):
    """They quantize without error; with them, TensorRT's search cuts a ReLU output to its first 128 bins."""
    values = _gaussian_with_outliers()
    rectified = np.maximum(values, 0.0)
    assert np.count_nonzero(rectified == 0) > 400_000
    low, high = _range(method, rectified)
    assert (low, high) == _range(method, values[values > 0])
    assert high > 3.0


def _int8_error(values: np.ndarray, threshold: float) -> float:
    step = threshold / INT8_LEVELS
    return float(np.mean((values - step * np.clip(np.round(values / step), -INT8_LEVELS, INT8_LEVELS)) ** 2))


def _uint8_error(values: np.ndarray, low: float, high: float) -> float:
    step = (high - low) / UINT8_STEPS
    zero_point = np.round(-low / step)
    quantized = np.clip(np.round(values / step) + zero_point, 0, UINT8_STEPS)
    return float(np.mean((values - step * (quantized - zero_point)) ** 2))


def _least(error, low: float, high: float) -> float:
    """The least ``error(t)`` for ``t`` in ``[low, high]``: a grid of 0.25, then one of 0.005 around its best."""
    coarse = min(np.arange(low, high, 0.25), key=error)
    return min(error(t) for t in np.arange(coarse - 0.5, coarse + 0.5, 0.005))


def test_mse_threshold_is_the_exact_optimum_for_int8():
    """Against fake-quantizing every sample: the chosen threshold's true error is within 0.1% of the least."""
    values = _gaussian_with_outliers(200_000)
    _, threshold = _range("mse", values, symmetric=True)
    assert _int8_error(values, threshold) <= _least(lambda t: _int8_error(values, t), 2.0, 50.0) * 1.001


def test_mse_range_is_the_exact_optimum_for_uint8_after_relu():
    values = np.maximum(_gaussian_with_outliers(200_000), 0.0)
    low, high = _range("mse", values)
    assert low == 0.0
    assert _uint8_error(values, low, high) <= _least(lambda t: _uint8_error(values, 0.0, t), 2.0, 50.0) * 1.001


def _reference_divergences(counts: np.ndarray, levels: int = KL_LEVELS) -> list[float]:
    """TensorRT's published entropy calibration pseudocode with plain loops: KL(P || Q) for each candidate
    ``i`` from ``levels`` to the last occupied bin."""
    hist = [float(c) for c in counts]
    top = max(k for k, c in enumerate(hist) if c > 0) + 1
    divergences = []
    for i in range(levels, top + 1):
        reference = hist[:i]
        reference[i - 1] += sum(hist[i:])
        group = i // levels
        candidate = [0.0] * i
        for g in range(levels):
            start, end = g * group, (i if g == levels - 1 else (g + 1) * group)
            nonzero = [k for k in range(start, end) if reference[k] > 0]
            for k in nonzero:
                candidate[k] = sum(hist[start:end]) / len(nonzero)
        p_total, q_total = sum(reference), sum(candidate)
        divergence = 0.0
        for p, q in zip(reference, candidate, strict=True):
            if p > 0:
                divergence = math.inf if q == 0 else divergence + p / p_total * math.log(p / p_total / (q / q_total))
        divergences.append(divergence)
    return divergences


@pytest.mark.parametrize("case", ["gaussian", "laplace", "gap-then-outliers", "sparse", "one-bin"])
def test_entropy_search_matches_tensorrt_pseudocode(case):
    rng = np.random.default_rng(2)
    if case == "gaussian":
        counts = np.histogram(np.abs(rng.standard_normal(100_000)), bins=256)[0]
    elif case == "laplace":
        counts = np.histogram(np.abs(rng.laplace(size=100_000)), bins=384)[0]
    elif case == "gap-then-outliers":
        counts = np.zeros(256)
        counts[:100] = np.histogram(np.abs(rng.standard_normal(100_000)), bins=100)[0]
        counts[250] = 3
    elif case == "sparse":
        counts = (rng.random(300) < 0.1) * rng.integers(1, 100, 300)
    else:
        counts = np.zeros(200)
        counts[170] = 42
    divergences = _reference_divergences(counts)
    chosen = _kl_threshold_bins(counts.astype(np.float64))
    assert divergences[chosen - KL_LEVELS] <= min(divergences) * (1 + 1e-9)
    assert chosen == KL_LEVELS + int(np.argmin(divergences))


# ---------------------------------------------------------------------------------------------------------
# Streaming and re-binning


def _growing_batches() -> list[np.ndarray]:
    """Batches whose range grows by 3x, 40x and 1000x (and one that shrinks), with negatives and zeros."""
    rng = np.random.default_rng(3)
    return [scale * rng.standard_normal(size) + shift
            for scale, size, shift in [(0.01, 500, 0.0), (0.03, 5000, 0.02), (1.2, 20000, -0.5),
                                       (0.001, 300, 0.0), (1000.0, 50, 3.0)]] + [np.zeros(100)]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_streaming_equals_one_shot(method, symmetric):
    batches = _growing_batches()
    streamed = make_collector(method, symmetric=symmetric, percentile=99.9)
    for batch in batches:
        streamed.update(batch.reshape(-1, 10) if batch.size % 10 == 0 else batch)
    one_shot = make_collector(method, symmetric=symmetric, percentile=99.9)
    one_shot.update(np.concatenate(batches))
    assert streamed.range() == one_shot.range()
    if method != "minmax":
        for side in ("positive", "negative"):
            assert getattr(streamed, side).exponent == getattr(one_shot, side).exponent
            np.testing.assert_array_equal(getattr(streamed, side).counts, getattr(one_shot, side).counts)


def test_rebinning_gives_the_histogram_of_all_values_at_the_final_width():
    bins = 256
    histogram = PowerOfTwoHistogram(bins)
    magnitudes = [np.abs(batch) for batch in _growing_batches()]
    exponents = []
    for batch in magnitudes:
        histogram.add(batch)
        exponents.append(histogram.exponent)
    everything = np.concatenate(magnitudes)
    assert exponents == sorted(exponents) and len(set(exponents)) >= 3  # the range grew, bins were merged
    assert histogram.exponent == _exponent_for(everything.max(), bins)
    edges = np.arange(bins + 1) * 2.0 ** histogram.exponent
    assert everything.max() >= edges[bins // 2]  # the data spans more than half the bins
    np.testing.assert_array_equal(histogram.counts, np.histogram(everything, bins=edges)[0])
    assert histogram.counts.sum() == everything.size


def test_zeros_are_counted_before_the_width_is_known():
    histogram = PowerOfTwoHistogram(256)
    histogram.add(np.zeros(7))
    assert histogram.exponent is None and histogram.counts[0] == 7
    histogram.add(np.array([0.0, 0.5, 3.0]))
    assert histogram.exponent == -6  # 3 < 256 * 2**-6
    assert (histogram.counts[0], histogram.counts[32], histogram.counts[192]) == (8, 1, 1)
    assert histogram.counts.sum() == 10


@pytest.mark.parametrize("top", [1.0, 3.0, 2048.0, 2047.999, 1e-30, 3e38, 5e-324])
def test_exponent_is_the_smallest_that_covers(top):
    exponent = _exponent_for(top, BINS)
    assert top < math.ldexp(BINS, exponent)
    assert top >= math.ldexp(BINS, exponent - 1)


# ---------------------------------------------------------------------------------------------------------
# Degenerate and non-finite values


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_tensor_gets_the_minimum_range(method):
    assert _range(method, np.zeros((4, 5))) == (0.0, MIN_RANGE_WIDTH)
    assert _range(method, np.zeros(3), symmetric=True) == (-MIN_RANGE_WIDTH / 2, MIN_RANGE_WIDTH / 2)


@pytest.mark.parametrize("method", METHODS)
def test_ranges_include_zero_and_stay_finite(method):
    assert _range(method, np.full(100, 3.0)) == (0.0, 3.0)
    assert _range(method, np.full(100, -2.0)) == (-2.0, 0.0)
    low, high = _range(method, np.full(10, 1e-9))
    assert (low, high) == (0.0, MIN_RANGE_WIDTH)
    low, high = _range(method, np.linspace(5.0, 6.0, 1000))
    assert low == 0.0 and 5.0 < high <= 6.0


@pytest.mark.parametrize("method", METHODS)
def test_nan_and_inf_are_left_out_and_counted(method):
    values = _uniform(10_000)
    dirty = np.concatenate([values[:5000], [np.nan, np.inf, -np.inf], values[5000:], [np.nan]])
    collector = make_collector(method)
    collector.update(dirty.astype(np.float32))
    assert (collector.finite, collector.nonfinite) == (10_000, 4)
    assert collector.range() == _range(method, values.astype(np.float32))


@pytest.mark.parametrize("method", METHODS)
def test_only_non_finite_values_is_a_data_error(method):
    collector = make_collector(method)
    collector.update(np.array([np.nan, np.inf]))
    with pytest.raises(DataError, match="no finite values"):
        collector.range()


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="unknown calibration method 'kl'"):
        make_collector("kl")
    with pytest.raises(UsageError, match="percentile"):
        make_collector("percentile", percentile=0)
    with pytest.raises(UsageError, match="percentile"):
        make_collector("percentile", percentile=100.5)
    with pytest.raises(UsageError, match="at least 128 bins"):
        make_collector("entropy", bins=64)


# ---------------------------------------------------------------------------------------------------------
# calibrate() on models


CONV1 = "/conv1/Conv_output_0"


@pytest.fixture(scope="module")
def digits_model() -> onnx.ModelProto:
    return onnx.load(os.path.join(MODELS, "digits_cnn.onnx"))


@pytest.fixture(scope="module")
def digits_data(digits_model) -> Dataset:
    return load_data(os.path.join(MODELS, "digits_calib.npz"), digits_model)


def _exact_values(model: onnx.ModelProto, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    return run_model(exposed, feeds)[name]


def test_calibrate_digits_conv_output_and_input_minmax(digits_model, digits_data):
    calls = []
    ranges = calibrate(digits_model, [CONV1, "input"], digits_data, batch_size=100,
                       progress=lambda done, total: calls.append((done, total)))
    conv = _exact_values(digits_model, CONV1, digits_data.arrays)
    inputs = digits_data.arrays["input"]
    assert ranges[CONV1] == (float(conv.min()), float(conv.max()))
    assert ranges["input"] == (min(float(inputs.min()), 0.0), float(inputs.max()))
    assert calls == [(100, 256), (200, 256), (256, 256)]


@pytest.mark.parametrize("method", HISTOGRAM_METHODS)
def test_calibrate_digits_histogram_methods_match_the_collector(digits_model, digits_data, method):
    ranges = calibrate(digits_model, [CONV1, "input"], digits_data, method, batch_size=32)
    conv = _exact_values(digits_model, CONV1, digits_data.arrays)
    assert ranges[CONV1] == _range(method, conv)
    assert ranges["input"] == _range(method, digits_data.arrays["input"])
    minmax = calibrate(digits_model, [CONV1], digits_data)[CONV1]
    assert minmax[0] <= ranges[CONV1][0] <= 0.0 < ranges[CONV1][1] <= minmax[1]


@pytest.mark.parametrize("method", METHODS)
def test_calibration_fed_in_parts_gives_the_ranges_of_all_the_data(digits_model, digits_data, method):
    tensors = [CONV1, "/fc1/Gemm_output_0", "input", "conv1.weight"]
    first = Dataset({name: array[:200] for name, array in digits_data.arrays.items()})
    rest = Dataset({name: array[200:] for name, array in digits_data.arrays.items()})
    calibration = Calibration(digits_model, tensors, method, batch_size=48)
    part = calibration.feed(first).ranges()
    assert part == calibrate(digits_model, tensors, first, method, batch_size=48)
    assert calibration.feed(rest).ranges() == calibrate(digits_model, tensors, digits_data, method, batch_size=48)
    assert part != calibration.ranges()  # the 56 more samples moved some range


def test_calibrate_initializer_directly(digits_model, digits_data):
    weight = next(onnx.numpy_helper.to_array(i) for i in digits_model.graph.initializer if i.name == "conv1.weight")
    calls = []
    ranges = calibrate(digits_model, ["conv1.weight"], digits_data, progress=lambda *call: calls.append(call))
    assert ranges == {"conv1.weight": (float(weight.min()), float(weight.max()))}
    assert calls == []  # nothing to run


def test_calibrate_leaves_the_callers_model_unchanged(digits_model, digits_data):
    before = digits_model.SerializeToString()
    calibrate(digits_model, [CONV1, "/fc1/Gemm_output_0", "logits", "input", "fc1.bias"], digits_data, "entropy")
    assert digits_model.SerializeToString() == before


def test_unknown_tensor_names_are_usage_errors(digits_model, digits_data):
    with pytest.raises(UsageError, match=r"'nope', 'conv9'.*not a graph input, initializer or node output"):
        calibrate(digits_model, [CONV1, "nope", "conv9"], digits_data)
    with pytest.raises(UsageError, match="not one string"):
        calibrate(digits_model, CONV1, digits_data)


TYPED_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N,4] x, int64[N] ids) => (float[N,4] y) {
    shape = Shape(x)
    logs = Log(x)
    magnitude = Abs(x)
    negative = Neg(magnitude)
    nans = Sqrt(negative)
    y = Relu(x)
}
"""


@pytest.fixture
def typed_model() -> onnx.ModelProto:
    return parse_model(TYPED_TEXT)


def _typed_data(samples: int = 20) -> Dataset:
    rng = np.random.default_rng(4)
    return Dataset({"x": rng.standard_normal((samples, 4)).astype(np.float32),
                    "ids": np.arange(samples, dtype=np.int64)})


@pytest.mark.parametrize("name, type_name", [("shape", "tensor(int64)"), ("ids", "int64")])
def test_non_float_tensors_are_usage_errors(typed_model, name, type_name):
    with pytest.raises(UsageError, match=f"'{name}': it is {re.escape(type_name)}, and only float"):
        calibrate(typed_model, ["y", name], _typed_data())


def test_non_finite_activations_are_skipped_with_a_warning(typed_model, caplog):
    data = _typed_data()
    x = data.arrays["x"]
    with caplog.at_level(logging.WARNING, logger="graphopt.quantize.calibration"):
        ranges = calibrate(typed_model, ["logs", "y"], data, batch_size=7)
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.log(x)
    finite = logs[np.isfinite(logs)]
    assert ranges["logs"] == pytest.approx((min(finite.min(), 0.0), max(finite.max(), 0.0)), rel=1e-6)
    assert ranges["y"] == (0.0, float(x.max()))
    assert f"'logs': {np.count_nonzero(x < 0)} NaN/Inf values left out" in caplog.text
    assert "'y'" not in caplog.text


def test_a_tensor_with_only_non_finite_values_is_a_data_error(typed_model):
    with pytest.raises(DataError, match="tensor 'nans': no finite values to calibrate on \\(80 NaN/Inf\\)"):
        calibrate(typed_model, ["y", "nans"], _typed_data(), "mse")


def test_data_without_samples_is_a_data_error(typed_model):
    empty = Dataset({"x": np.zeros((0, 4), np.float32), "ids": np.zeros(0, np.int64)})
    with pytest.raises(DataError, match="no samples"):
        calibrate(typed_model, ["y"], empty)


# ---------------------------------------------------------------------------------------------------------
# Memory


FEATURES_IN, FEATURES_OUT = 16, 65536


def _expanding_model() -> onnx.ModelProto:
    """x [N, 16] -> MatMul to [N, 65536] -> Relu -> mean over features [N, 1]: small inputs and output, large
    intermediate activations (256 KiB per sample per tensor)."""
    weight = np.random.default_rng(5).standard_normal((FEATURES_IN, FEATURES_OUT)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["wide"]),
         onnx.helper.make_node("Relu", ["wide"], ["rectified"]),
         onnx.helper.make_node("ReduceMean", ["rectified"], ["y"], axes=[1], keepdims=1)],
        "expanding",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", FEATURES_IN])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1])],
        [onnx.numpy_helper.from_array(weight, "w")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


class _GeneratedData:
    """Dataset-like (``len`` and ``batches``): random inputs made batch by batch, never all at once."""

    def __init__(self, samples: int):
        self.samples = samples

    def __len__(self) -> int:
        return self.samples

    def batches(self, batch_size: int):
        rng = np.random.default_rng(6)
        for start in range(0, self.samples, batch_size):
            yield {"x": rng.standard_normal((min(batch_size, self.samples - start), FEATURES_IN), dtype=np.float32)}


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_memory_is_bounded_by_one_batch():
    """1024 samples x 2 tensors x 256 KiB = 512 MiB of activations; batches of 16 hold 8 MiB of them.
    onnxruntime's output arrays live outside tracemalloc's view, so resident memory is sampled after every
    batch (anything kept across batches would show there); tracemalloc bounds the collectors' temporaries."""
    samples, batch_size = 1024, 16
    total = samples * 2 * FEATURES_OUT * 4
    model = _expanding_model()
    resident = []
    baseline = _resident_bytes()
    tracemalloc.start()
    try:
        ranges = calibrate(model, ["wide", "rectified"], _GeneratedData(samples), "percentile",
                           batch_size=batch_size, progress=lambda done, _: resident.append(_resident_bytes()))
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = max(resident) - baseline
    assert len(resident) == samples // batch_size
    assert traced_peak < total / 16, f"traced peak {traced_peak / 2**20:.1f} MiB"
    assert growth < total / 8, f"resident growth {growth / 2**20:.1f} MiB"
    assert ranges["wide"][0] < 0.0 < ranges["wide"][1]
    assert ranges["rectified"][0] == 0.0 < ranges["rectified"][1]
