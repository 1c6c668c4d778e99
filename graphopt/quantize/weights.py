"""Weight quantization math shared by static (quantize-qdq) and dynamic quantization.

``QuantizeLinear`` computes ``q = saturate(round(x / s) + z)`` and ``DequantizeLinear`` ``x' = (q - z) * s``;
``round`` is round-half-to-even, ``saturate`` clamps to the zero point's type (int8 [-128, 127], uint8
[0, 255], int32 [-2^31, 2^31 - 1]).

Weights are int8, symmetric, per channel c along ``axis`` (per tensor when ``axis`` is None):
``s_w[c] = max|W[c]| / 127``, ``z_w = 0``, so ``W_q[c] = round(W[c] / s_w[c])`` lies in [-127, 127]. When the
weight's bias is quantized to int32 with scale ``s_x * s_w[c]`` (static quantization), a scale that would
make ``|b[c]| / (s_x * s_w[c])`` overflow int32 is widened to ``s_w[c] = |b[c]| / (s_x * (2^31 - 1))``. A scale
of 0 (a channel, or a range, that is all zeros) becomes 1: any positive scale represents zeros exactly.
Scales are float32 and every quantized value is computed from the stored float32 scale.

Memory: a large weight is never copied whole in float64. ``max|W|`` is the larger of ``max W`` and ``-min W``,
reduced in the weight's own type (the same number: float32 to float64 is exact), and ``quantize`` computes in
float64 a block of rows at a time (about a million elements), into the quantized array.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_INT32_MAX = 2**31 - 1
_BLOCK_ELEMENTS = 2**20  # elements of a weight quantized at a time (float64 temporaries of 8 MiB)


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """Scale (float32) and zero point (its dtype is the quantized type); 1-D along ``axis`` per channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None


def weight_params(weight: np.ndarray, axis: int | None, bias: np.ndarray | None = None,
                  input_scale: np.float32 | None = None) -> QuantParams:
    """Symmetric int8 parameters of a weight, per channel along ``axis`` (per tensor when None), widened
    where the bias, quantized with scale ``input_scale * s_w``, would overflow int32."""
    reduced = tuple(i for i in range(weight.ndim) if i != axis)
    largest = np.maximum(weight.max(axis=reduced, initial=0), -weight.min(axis=reduced, initial=0))
    scale = largest.astype(np.float64) / 127
    if bias is not None:
        needed = np.abs(bias.astype(np.float64)) / (np.float64(input_scale) * _INT32_MAX)
        scale = np.maximum(scale, needed if axis is not None else needed.max(initial=0.0))
    scale = positive_scale(scale.astype(np.float32))
    return QuantParams(scale, np.zeros(scale.shape, np.int8), axis)


def quantize(values: np.ndarray, params: QuantParams) -> np.ndarray:
    """QuantizeLinear on ``values``: round half to even of x / s, plus z, saturated to the zero point's type."""
    scale = params.scale.astype(np.float64)
    zero_point = params.zero_point.astype(np.float64)
    if params.axis is not None:
        shape = [1] * values.ndim
        shape[params.axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    limits = np.iinfo(params.zero_point.dtype)

    def block(rows: slice | None = None) -> np.ndarray:
        x, s, z = values, scale, zero_point
        if rows is not None:
            x = values[rows]
            if by_row:
                s, z = scale[rows], zero_point[rows]
        return np.clip(np.rint(x / s) + z, limits.min, limits.max).astype(params.zero_point.dtype)

    if values.ndim == 0 or values.size <= _BLOCK_ELEMENTS:
        return block()
    by_row = scale.ndim > 0 and scale.shape[0] > 1  # the scale varies along axis 0: take its rows too
    quantized = np.empty(values.shape, params.zero_point.dtype)
    step = max(1, _BLOCK_ELEMENTS // (values.size // values.shape[0]))
    for start in range(0, values.shape[0], step):
        rows = slice(start, start + step)
        quantized[rows] = block(rows)
    return quantized


def positive_scale(scale: np.ndarray) -> np.ndarray:
    """``scale`` with zeros (a range or channel that is all zeros) replaced by 1."""
    return np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
