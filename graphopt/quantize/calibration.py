"""Calibration: the value range ``(low, high)`` of chosen tensors over calibration data, for quantize-qdq.

``calibrate(model, tensors, data, method)`` runs a copy of ``model`` whose graph outputs also list the
requested intermediate tensors on onnxruntime's CPU provider with its graph optimizations off
(``graphopt.validate.numerics.cpu_session``, so every tensor keeps its name), one batch of ``data`` at a
time, and feeds each tensor's values to its collector (``make_collector``). Graph inputs are read from the
data and initializers from the model (an initializer that is also a graph input, as in IR < 4, is calibrated
on its stored value). The caller's model is not modified. ``Calibration`` is the same fed dataset by
dataset, for the ranges of a part of the data and of all of it in one pass.

Memory: one batch of the requested activations (what onnxruntime returns for that batch) plus fixed-size
state per tensor: the running extremes and, for the histogram methods, two histograms of ``2 * bins``
float64 counts (64 KiB at the default 2048). Collectors walk a batch in chunks of ``2**18`` values, so their
own temporaries stay a few MiB whatever the batch size. Nothing is kept from one batch to the next.
(onnxruntime's calibrators keep every activation of every sample until the end, and the bin count of their
histograms grows with the range; both grow without bound and run out of memory on BERT.)

Histograms (``percentile``, ``entropy``, ``mse``). Each collector counts the non-negative values and the
magnitudes of the negative values in two histograms of ``2 * bins`` equal bins ``[k w, (k + 1) w)`` with a
power-of-two width ``w = 2**e``, ``e`` the smallest integer with ``max < 2 * bins * w``: the data spans
between ``bins`` and ``2 * bins`` bins, so ``w <= max / bins`` (TensorRT's histogram: exactly 2048 bins
over ``[0, max]``). When a batch exceeds the covered range, ``e`` grows by the smallest ``k`` that covers it
and every ``2**k`` adjacent bins merge into one. Since ``x * 2**-e`` is exact in floating point and
``floor(floor(x / w) / 2**k) = floor(x / (2**k w))``, the merged counts are exactly those of binning every
value at the new width: the histogram, and so the range, is bit-identical whatever the batching and
order, and equals a one-shot histogram of all the data. (onnxruntime re-bins by re-histogramming old bin
centres, which moves counts.) Zeros sit in bin 0 at every width. The |x| and signed histograms are the two
sides merged to their common width. Exact zeros are also counted apart: they quantize without error at any
threshold, so ``entropy`` and ``mse`` leave them out. (A ReLU output is about half zeros; TensorRT's search
with them in bin 0 picks its first candidate, 128 bins, for every such tensor: resnet_small then falls from
99.7% to 38% top-1, and to 98.9% without them. pytorch-quantization overwrites bin 0 with bin 1's count.)

Methods. ``symmetric`` gives ``(-t, t)``; otherwise the range is cut to the observed ``[min, max]``.
- ``minmax``: the running minimum and maximum (``(-max|x|, max|x|)`` when symmetric). Exact.
- ``percentile`` (default 99.999): symmetric, the ``percentile``-th percentile of |x|; asymmetric, the
  ``(100 - percentile) / 2``-th and ``(100 + percentile) / 2``-th percentiles of x, so that both modes clip
  the same total fraction (onnxruntime's convention). Within a bin the values are taken as spread evenly
  (linear interpolation of the cumulative counts), so the result is in the same bin as the true quantile:
  within ``w`` of it, and within ``2 w`` of numpy's ``percentile`` (which interpolates between neighbouring
  order statistics); measured on 10**6 uniform, Gaussian, Laplace and ReLU'd Gaussian samples: at most
  ``0.9 w``.
- ``entropy``: TensorRT's KL-divergence search on the histogram of |x| for int8 (``_kl_threshold_bins``),
  the same result as TensorRT's algorithm on the same bins. The method is sensitive to how many bins the
  data spans (on 10**6 Gaussian samples with one outlier each side at 50: 3.59 at TensorRT's 2048 bins, 4.74
  at 4096, 50, no clipping at all, at 1024); here it spans ``bins`` to ``2 * bins`` of them, never fewer
  than TensorRT's.
- ``mse``: the threshold minimizing the expected squared rounding plus clipping error of int8 symmetric
  quantization (step ``t / 127``, levels ``-127..127``), or, asymmetric, of uint8 over
  ``(max(-t, min), min(t, max))`` (step ``(high - low) / 255`` and a rounded zero point), computed exactly
  for the histogram with values spread evenly within each bin (``_squared_error``), over every bin edge up
  to ``max``: a grid of ``w``. Against fake-quantizing every sample, the chosen threshold's error is within
  0.01% of the least (Gaussian with outliers, int8; ReLU'd, uint8). Up to about 0.3 s per tensor (4096
  candidates over a dense histogram).

Usable ranges: every range includes 0 (the zero point must be representable), is symmetric when asked, and
is at least ``MIN_RANGE_WIDTH`` wide (255 float32 epsilons, so that a uint8 scale ``width / 255`` is at
least float32's epsilon, the floor PyTorch's observers put on scales): a tensor that is all zeros gets
``(0, MIN_RANGE_WIDTH)``, or ``(-MIN_RANGE_WIDTH / 2, MIN_RANGE_WIDTH / 2)`` when symmetric.

NaN and Inf values are left out of every statistic and counted (``Collector.nonfinite``); ``calibrate``
logs a warning per tensor that had any and raises ``DataError`` for a tensor with no finite value at all.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.data import Dataset, model_inputs
from graphopt.errors import DataError, UsageError
from graphopt.validate.numerics import cpu_session, with_outputs

logger = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy", "mse")
MIN_RANGE_WIDTH = 255 * float(np.finfo(np.float32).eps)
INT8_LEVELS = 127  # symmetric int8: -127..127, step t / 127
UINT8_STEPS = 255  # asymmetric uint8: 0..255, step (high - low) / 255
KL_LEVELS = 128  # TensorRT's entropy search: the 128 non-negative int8 levels of |x|
MIN_BINS = KL_LEVELS  # the entropy search starts from 128 bins
_CHUNK = 1 << 18  # values a collector handles at once: bounds its temporaries
_CANDIDATE_BLOCK = 64  # mse candidates evaluated at once: bounds the (candidates x bins) temporaries
_FLOAT_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)")


class RangeCollector(Protocol):
    def update(self, values: np.ndarray) -> None:
        """Take one batch of one tensor's values, any shape."""

    def range(self) -> tuple[float, float]:
        """``(low, high)`` with ``low <= 0 <= high``, both finite."""


def make_collector(method: str, *, percentile: float = 99.999, bins: int = 2048,
                   symmetric: bool = False) -> Collector:
    """A fresh collector for ``method`` (one of ``METHODS``). ``percentile`` only matters to ``percentile``;
    ``bins`` (at least ``MIN_BINS``) to the histogram methods: the data spans at least that many bins of
    their histograms, which keep ``2 * bins``."""
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}' (choose from {', '.join(METHODS)})")
    if not 0 < percentile <= 100:
        raise UsageError(f"percentile must be in (0, 100], not {percentile}")
    if method == "minmax":
        return Collector(symmetric)
    if bins < MIN_BINS:
        raise UsageError(f"a calibration histogram needs at least {MIN_BINS} bins, not {bins}")
    if method == "percentile":
        return PercentileCollector(bins, symmetric, percentile)
    return {"entropy": EntropyCollector, "mse": MseCollector}[method](bins, symmetric)


class Collector:
    """The ``minmax`` collector, and the base of the others: finite values only, in chunks; counts of
    finite and non-finite values; the running extremes."""

    def __init__(self, symmetric: bool = False):
        self.symmetric = symmetric
        self.finite = 0
        self.nonfinite = 0
        self.low = np.inf
        self.high = -np.inf

    def update(self, values: np.ndarray) -> None:
        for chunk in _chunks(np.asarray(values).reshape(-1)):
            is_finite = np.isfinite(chunk)
            finite = chunk if is_finite.all() else chunk[is_finite]
            self.nonfinite += chunk.size - finite.size
            self.finite += finite.size
            if finite.size:
                self._add(finite)

    def range(self) -> tuple[float, float]:
        if not self.finite:
            raise DataError(f"no finite values to calibrate on ({self.nonfinite} NaN/Inf)")
        return usable_range(*self._limits(), self.symmetric)

    def _add(self, values: np.ndarray) -> None:
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))

    def _limits(self) -> tuple[float, float]:
        return self.low, self.high


def _chunks(flat: np.ndarray) -> Iterator[np.ndarray]:
    """Consecutive float64 pieces of at most ``_CHUNK`` values."""
    for start in range(0, flat.size, _CHUNK):
        yield flat[start:start + _CHUNK].astype(np.float64)


def usable_range(low: float, high: float, symmetric: bool) -> tuple[float, float]:
    """``(low, high)`` widened to include 0, made symmetric when asked, and at least ``MIN_RANGE_WIDTH``
    wide (widened upwards when asymmetric)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if symmetric:
        high = max(-low, high, MIN_RANGE_WIDTH / 2)
        low = -high
    elif high - low < MIN_RANGE_WIDTH:
        high = low + MIN_RANGE_WIDTH
    return float(low), float(high)


class PowerOfTwoHistogram:
    """Counts of non-negative values in ``bins`` bins ``[k 2**e, (k + 1) 2**e)``, ``e`` the smallest integer
    with every value below ``bins * 2**e``; ``exponent`` is None while every value seen was 0 (bin 0 at any
    width). A larger value raises ``e`` and merges bins; see the module docstring for why that is exact."""

    def __init__(self, bins: int):
        self.counts = np.zeros(bins)
        self.exponent: int | None = None

    def add(self, magnitudes: np.ndarray) -> None:
        if not magnitudes.size:
            return
        top = float(magnitudes.max())
        if top > 0:
            self._widen(_exponent_for(top, self.counts.size))
        if self.exponent is None:
            self.counts[0] += magnitudes.size
            return
        # x * 2**-e is exact and below bins; truncation is floor for non-negative numbers
        indices = np.ldexp(magnitudes, -self.exponent).astype(np.intp)
        self.counts += np.bincount(indices, minlength=self.counts.size)

    def counts_at(self, exponent: int) -> np.ndarray:
        """The counts re-binned to width ``2**exponent`` (at least the current width)."""
        if self.exponent is None:
            return self.counts.copy()
        return _merged(self.counts, exponent - self.exponent)

    def _widen(self, exponent: int) -> None:
        if self.exponent is None:
            self.exponent = exponent
        elif exponent > self.exponent:
            self.counts = _merged(self.counts, exponent - self.exponent)
            self.exponent = exponent


def _exponent_for(top: float, bins: int) -> int:
    """The smallest integer ``e`` with ``top < bins * 2**e`` (``top > 0``). With ``top = f 2**a`` and
    ``bins = g 2**b`` (``f, g`` in ``[1/2, 1)``), ``top / bins = (f / g) 2**(a - b)`` and ``f / g`` is in
    ``(1/2, 2)``, so ``e`` is ``a - b`` or ``a - b + 1``; exact powers of two, no division to round."""
    exponent = int(np.frexp(top)[1]) - int(np.frexp(float(bins))[1])
    return exponent + 1 if top >= np.ldexp(float(bins), exponent) else exponent


def _merged(counts: np.ndarray, shift: int) -> np.ndarray:
    """Bin ``k`` of a histogram ``2**shift`` times wider holds old bins ``k 2**shift .. (k + 1) 2**shift - 1``."""
    owners = np.arange(counts.size) >> min(shift, 62)
    return np.bincount(owners, weights=counts, minlength=counts.size)


class _HistogramCollector(Collector, abc.ABC):
    """Extremes plus the histograms of the non-negative values and of the magnitudes of the negative ones.
    Subclasses compute ``_thresholds``; the result is cut to the observed extremes."""

    def __init__(self, bins: int, symmetric: bool):
        super().__init__(symmetric)
        self.positive = PowerOfTwoHistogram(2 * bins)  # the data spans more than half: at least ``bins``
        self.negative = PowerOfTwoHistogram(2 * bins)
        self.zeros = 0

    def _add(self, values: np.ndarray) -> None:
        super()._add(values)
        self.positive.add(values[values >= 0])
        self.negative.add(-values[values < 0])
        self.zeros += int(np.count_nonzero(values == 0))

    def _limits(self) -> tuple[float, float]:
        if self.low == self.high == 0:
            return 0.0, 0.0
        low, high = self._thresholds()
        return max(low, self.low), min(high, self.high)

    @abc.abstractmethod
    def _thresholds(self) -> tuple[float, float]:
        """``(low, high)`` from the histograms, before the cut to the observed extremes."""

    def _sides(self, zeros: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
        """Positive counts, negative-magnitude counts, both at their common bin width, and that width; without
        the exact zeros unless ``zeros``."""
        exponent = max(e for e in (self.positive.exponent, self.negative.exponent) if e is not None)
        positive = self.positive.counts_at(exponent)
        if not zeros:
            positive[0] -= self.zeros
        return positive, self.negative.counts_at(exponent), float(np.ldexp(1.0, exponent))

    def _magnitudes(self, zeros: bool = True) -> tuple[np.ndarray, float]:
        """The histogram of |x| and its bin width; without the exact zeros unless ``zeros``."""
        positive, negative, width = self._sides(zeros)
        return positive + negative, width


class PercentileCollector(_HistogramCollector):
    """``percentile``: the percentile of |x| (symmetric) or the two percentiles of x that clip
    ``(100 - percentile) / 2`` percent each side (asymmetric)."""

    def __init__(self, bins: int, symmetric: bool, percentile: float):
        super().__init__(bins, symmetric)
        self.percentile = percentile

    def _thresholds(self) -> tuple[float, float]:
        if self.symmetric:
            counts, width = self._magnitudes()
            threshold = _quantile(counts, 0.0, width, self.percentile / 100)
            return -threshold, threshold
        positive, negative, width = self._sides()
        signed = np.concatenate([negative[::-1], positive])  # bins from -bins * w to bins * w
        cut = (100 - self.percentile) / 200
        low_edge = -positive.size * width
        return _quantile(signed, low_edge, width, cut), _quantile(signed, low_edge, width, 1 - cut)


def _quantile(counts: np.ndarray, low_edge: float, width: float, fraction: float) -> float:
    """The value below which ``fraction`` of the counted values lie, reading the values in each bin as spread
    evenly over it: with cumulative counts ``C``, rank ``r = fraction * C[-1]`` and the bin ``k`` with
    ``C[k-1] < r <= C[k]``, it is ``low_edge + (k + (r - C[k-1]) / counts[k]) * width``."""
    cumulative = np.cumsum(counts)
    rank = fraction * cumulative[-1]
    k = int(np.searchsorted(cumulative, rank, side="left" if rank > 0 else "right"))
    before = cumulative[k - 1] if k else 0.0
    return float(low_edge + (k + (rank - before) / counts[k]) * width)


class EntropyCollector(_HistogramCollector):
    """``entropy``: TensorRT's KL-divergence threshold for int8 on the histogram of |x|."""

    def _thresholds(self) -> tuple[float, float]:
        counts, width = self._magnitudes(zeros=False)
        threshold = _kl_threshold_bins(counts) * width
        return -threshold, threshold


def _kl_threshold_bins(counts: np.ndarray, levels: int = KL_LEVELS) -> int:
    """TensorRT's entropy calibration ("8-bit Inference with TensorRT", Migacz 2017) on a histogram of |x|:
    the number of bins ``i`` whose upper edge is the threshold.

    For each ``i`` from ``levels`` to the last occupied bin: the reference ``P`` is bins ``0..i-1`` with every
    count beyond them (``T_i``, the values clipping would saturate) added to bin ``i-1``; the candidate ``Q``
    merges bins ``0..i-1`` into ``levels`` groups of ``i // levels`` bins (the last group takes the
    remainder) and spreads each group's count evenly over the group's bins where ``P > 0``. Both normalized,
    ``i`` minimizes ``KL(P || Q) = sum P log(P / Q)``, infinite where ``Q = 0 < P`` (no smoothing; the last
    candidate has no such bin, so the minimum is finite).

    All candidates at once from prefix sums, in O(candidates x levels) rather than the O(candidates x bins)
    of a direct loop: with ``N`` the total count, ``r`` the reference counts and, per group ``j``, ``R_j`` its
    reference count, ``M_j`` its candidate count and ``O_j`` its bins where ``P > 0``, ``sum r = N``,
    ``sum Q = N - T_i`` and ``KL = (sum_k r_k log r_k - sum_j R_j log(M_j / O_j)) / N - log N + log(N - T_i)``.
    """
    top = int(np.flatnonzero(counts)[-1]) + 1
    candidates = np.arange(levels, top + 1)
    total = counts.sum()
    below = np.concatenate([[0.0], np.cumsum(counts)])  # below[k] = sum of counts[:k]
    occupied = np.concatenate([[0], np.cumsum(counts > 0)])
    clipped = total - below[candidates]
    last = counts[candidates - 1]
    edges = (candidates // levels)[:, None] * np.arange(levels + 1)
    edges[:, -1] = candidates
    merged = np.diff(below[edges], axis=1)
    present = np.diff(occupied[edges], axis=1)
    present[:, -1] += (last == 0) & (clipped > 0)
    reference = merged.copy()
    reference[:, -1] += clipped
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(reference > 0, reference * np.log(merged / present), 0.0).sum(axis=1)
        own = np.concatenate([[0.0], np.cumsum(_x_log_x(counts))])[candidates - 1] + _x_log_x(last + clipped)
        divergences = np.where(np.isfinite(cross), (own - cross) / total - np.log(total) + np.log(below[candidates]),
                               np.inf)
    return int(candidates[np.argmin(divergences)])


def _x_log_x(x: np.ndarray) -> np.ndarray:
    """``x log x``, 0 at 0."""
    return x * np.log(np.where(x > 0, x, 1.0))


class MseCollector(_HistogramCollector):
    """``mse``: the clipping threshold with the least expected squared quantization error, int8 symmetric or
    uint8 asymmetric, searched over every bin edge up to the last occupied bin."""

    def _thresholds(self) -> tuple[float, float]:
        positive, negative, width = self._sides(zeros=False)
        top = int(np.flatnonzero(positive + negative)[-1]) + 1
        thresholds = np.arange(1, top + 1) * width
        low, high, step, below, above = self._grids(thresholds)
        errors = _squared_error(positive, width, step, above) + _squared_error(negative, width, step, below)
        best = int(np.argmin(errors))
        return float(low[best]), float(high[best])

    def _grids(self, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per threshold ``t``: the range, the step, and the number of levels below and above zero.
        Symmetric int8: ``(-t, t)``, step ``t / 127``, 127 levels each side. Asymmetric uint8:
        ``(max(-t, min), min(t, max))``, step ``(high - low) / 255``, ``z = round(-low / step)`` levels below
        (the zero point) and ``255 - z`` above."""
        if self.symmetric:
            levels = np.full(thresholds.size, float(INT8_LEVELS))
            return -thresholds, thresholds, thresholds / INT8_LEVELS, levels, levels
        low = np.maximum(-thresholds, min(self.low, 0.0))
        high = np.minimum(thresholds, max(self.high, 0.0))
        step = (high - low) / UINT8_STEPS
        zero_point = np.round(-low / step)
        return low, high, step, zero_point, UINT8_STEPS - zero_point


def _squared_error(counts: np.ndarray, width: float, step: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """For each candidate ``j``: ``sum_k counts[k] * mean over bin k of (x - q_j(x))**2`` with the values of
    bin ``k`` spread evenly over ``[e_k, e_k+1) = [k w, (k + 1) w)`` and ``q_j(x) = step_j * min(round(x /
    step_j), levels_j)`` (magnitudes on one side of zero; the clip point is ``c = levels_j * step_j``).

    With ``F_j`` an antiderivative of the error and ``d_k = counts[k] / w``, bin ``k`` contributes
    ``d_k (F_j(e_k+1) - F_j(e_k))``; summed by parts that is ``sum_m F_j(e_m) (d_m-1 - d_m)``, over the
    edges where the density changes only. Below the knee ``c - step_j / 2`` the error is the rounding
    sawtooth (``_sawtooth_integral``); above it every value goes to ``c`` and the error integrates to
    ``(x - c)**3 / 3``. Candidates are evaluated ``_CANDIDATE_BLOCK`` at a time."""
    density = np.concatenate([[0.0], counts / width, [0.0]])
    jumps = density[:-1] - density[1:]  # jumps[m] = d_m-1 - d_m at edge m
    edges = np.flatnonzero(jumps)
    positions, weights = edges * width, jumps[edges]
    errors = np.empty(step.size)
    for start in range(0, step.size, _CANDIDATE_BLOCK):
        block = slice(start, start + _CANDIDATE_BLOCK)
        s = step[block, None]
        clip = levels[block, None] * s
        knee = clip - s / 2
        rounding = _sawtooth_integral(np.minimum(positions, knee), s)
        clipping = _cube(np.maximum(positions, knee) - clip) / 3
        errors[block] = (rounding + clipping) @ weights
    return errors


def _sawtooth_integral(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``integral_0^x (u - step * round(u / step))**2 du``: with ``k = floor(x / step + 1/2)`` and
    ``r = x - k step`` (in ``[-step/2, step/2)``), ``k`` whole periods of ``step**3 / 12`` plus ``r**3 / 3``."""
    periods = np.floor(x / step + 0.5)
    rest = x - periods * step
    return periods * _cube(step) / 12 + _cube(rest) / 3


def _cube(x: np.ndarray) -> np.ndarray:
    """``x**3`` by multiplication (numpy's float power is several times slower)."""
    return x * x * x


def calibrate(model: onnx.ModelProto, tensors: Sequence[str], data: Dataset, method: str = "minmax", *,
              batch_size: int = 16, percentile: float = 99.999, symmetric: bool = False,
              progress: Callable[[int, int], None] | None = None) -> dict[str, tuple[float, float]]:
    """The range of each tensor in ``tensors`` (node outputs, graph inputs or initializers of the top-level
    graph, all float) over ``data``, by ``method``; see the module docstring and ``Calibration``."""
    calibration = Calibration(model, tensors, method, batch_size=batch_size, percentile=percentile,
                              symmetric=symmetric)
    return calibration.feed(data, progress).ranges()


class Calibration:
    """Calibration fed dataset by dataset: ``feed(a)`` then ``feed(b)`` gives the ranges of one ``feed`` of
    ``a`` and ``b`` together (the collectors stream; the histograms are bit-identical whatever the batching),
    and ``ranges()`` may be read in between, so the ranges of a part of the data and of all of it cost one
    pass over the data.

    ``data`` is a ``graphopt.data.Dataset`` (``load_data(source, model)`` checks it against the model), or
    any object with ``len()`` (samples) and ``batches(batch_size)`` like it. ``progress(done, total)`` is
    called with sample counts after each batch. Raises ``UsageError`` for an unknown or non-float tensor or a
    bad option, ``DataError`` for data without samples or a tensor without a finite value."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], method: str = "minmax", *,
                 batch_size: int = 16, percentile: float = 99.999, symmetric: bool = False):
        if isinstance(tensors, str):
            raise UsageError("tensors must be a sequence of tensor names, not one string")
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, not {batch_size}")
        names = list(dict.fromkeys(tensors))
        self._model = model
        self._batch_size = batch_size
        self._collectors = {name: make_collector(method, percentile=percentile, symmetric=symmetric)
                            for name in names}
        initializers, self._inputs, self._activations = _locate(model, names)
        for name, value in initializers.items():
            self._collectors[name].update(value)
        self._session: ort.InferenceSession | None = None

    def feed(self, data: Dataset, progress: Callable[[int, int], None] | None = None) -> Calibration:
        """Run the model over ``data`` batch by batch and feed each requested input and activation to its
        collector; returns self."""
        if not (self._inputs or self._activations):
            return self
        total = len(data)
        if not total:
            raise DataError("the calibration data holds no samples")
        if self._activations and self._session is None:
            self._session = _exposing_session(self._model, self._activations)
        done = 0
        for batch in data.batches(self._batch_size):
            _collect_batch(self._session, self._inputs, self._activations, batch, self._collectors)
            done = min(done + self._batch_size, total)
            if progress is not None:
                progress(done, total)
        return self

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The range of every tensor over all the data fed so far, by name."""
        return {name: _finished_range(name, collector) for name, collector in self._collectors.items()}


def _locate(model: onnx.ModelProto, names: list[str]) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Split ``names`` into initializer values and graph inputs, both checked to be float, and node outputs."""
    initializers = {i.name: i for i in model.graph.initializer}
    inputs = {name: dtype for name, (dtype, _) in model_inputs(model).items()}
    produced = {output for node in model.graph.node for output in node.output if output}
    unknown = [name for name in names if name not in initializers and name not in inputs and name not in produced]
    if unknown:
        raise UsageError(f"cannot calibrate {', '.join(repr(n) for n in unknown)}: not a graph input, initializer "
                         f"or node output of the model's top-level graph")
    values = {name: onnx.numpy_helper.to_array(initializers[name]) for name in names if name in initializers}
    input_names = [name for name in names if name in inputs]
    for name, value in values.items():
        _require_float(name, value.dtype.kind == "f", str(value.dtype))
    for name in input_names:
        _require_float(name, inputs[name].kind == "f", str(inputs[name]))
    return values, input_names, [name for name in names if name in produced]


def _require_float(name: str, is_float: bool, type_name: str) -> None:
    if not is_float:
        raise UsageError(f"cannot calibrate '{name}': it is {type_name}, and only float tensors are quantized")


def _exposing_session(model: onnx.ModelProto, activations: list[str]) -> ort.InferenceSession:
    """A CPU session (optimizations off) on a copy of ``model`` with ``activations`` among its graph outputs,
    declared by name only: onnxruntime's type inference types them. Non-float ones are refused."""
    session = cpu_session(with_outputs(model, activations))
    types = {output.name: output.type for output in session.get_outputs()}
    for name in activations:
        _require_float(name, types[name] in _FLOAT_TYPES, types[name])
    return session


def _collect_batch(session: ort.InferenceSession | None, inputs: list[str], activations: list[str],
                   batch: dict[str, np.ndarray], collectors: dict[str, Collector]) -> None:
    """One batch; its activations are released when this returns."""
    if session is not None:
        feeds = _arrays(batch, [model_input.name for model_input in session.get_inputs()])
        for name, value in zip(activations, session.run(activations, feeds), strict=True):
            collectors[name].update(value)
    for name, value in _arrays(batch, inputs).items():
        collectors[name].update(value)


def _arrays(batch: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The batch's arrays for the model inputs ``names``."""
    missing = [name for name in names if name not in batch]
    if missing:
        raise DataError(f"the calibration data has no array for model input '{missing[0]}'")
    return {name: batch[name] for name in names}


def _finished_range(name: str, collector: Collector) -> tuple[float, float]:
    if collector.nonfinite:
        logger.warning("tensor '%s': %d NaN/Inf values left out of calibration (%d finite values)",
                       name, collector.nonfinite, collector.finite)
    try:
        return collector.range()
    except DataError as error:
        raise DataError(f"tensor '{name}': {error}") from error
