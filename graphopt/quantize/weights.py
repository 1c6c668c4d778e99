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
"""

from __future__ import annotations

import dataclasses

import numpy as np

_INT32_MAX = 2**31 - 1


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
    scale = np.abs(weight.astype(np.float64)).max(axis=reduced, initial=0.0) / 127
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
    return np.clip(np.rint(values / scale) + zero_point, limits.min, limits.max).astype(params.zero_point.dtype)


def positive_scale(scale: np.ndarray) -> np.ndarray:
    """``scale`` with zeros (a range or channel that is all zeros) replaced by 1."""
    return np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
