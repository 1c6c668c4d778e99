"""A strided convolution on few input channels rewritten as SpaceToDepth followed by a stride-1 convolution.

onnxruntime's int8 convolution (QLinearConv) runs its fast kernels only on input channels in multiples of 4:
a network's first layer on 3 (RGB) channels takes the slow path, as long in int8 as in float (ResNet-50's
7x7 stride-2 stem: 2.1 ms int8 against 2.0 ms float, while its other convolutions run about 3.8x faster in
int8). ``SpaceToDepth(s)`` moves each ``s x s`` block of pixels into channels (``C -> C s^2``, 3 -> 12 for
``s = 2``), and the same products are summed by a stride-1 convolution over the blocks: the stem then runs in
1.1 ms, for ResNet-50 about 5% of the whole int8 model.

Math (per spatial axis, stride ``s``, kernel ``k``, begin pad ``p``; SpaceToDepth's channel order is
``(dy s + dx) C + c`` for the pixel ``(s h + dy, s w + dx)`` of channel ``c``). The original output at ``i``
reads the padded input at ``s i + j - p`` for ``j < k``. With ``d = s ceil(p / s) - p`` (so that ``p + d`` is
a multiple of ``s``), write ``j + d = s q + r``: the input row is ``s (i + q - ceil(p / s)) + r``, i.e. block
row ``i + q - ceil(p / s)``, offset ``r``. So the new convolution has kernel ``k' = ceil((k + d) / s)``,
begin pad ``ceil(p / s)``, stride 1, and weight ``W'[o, (r_y s + r_x) C + c, q_y, q_x] = W[o, c, s q_y + r_y - d,
s q_x + r_x - d]`` where that index is inside the kernel, else 0; its end pad makes the output length the
original's: ``out - 1 + k' - H / s - ceil(p / s)``. Every product of the original is summed once and only the
added zero weights are new, so in int8 (exact integer sums, the same per-channel weight scales) the output
is bit-identical; in float it differs by summation order only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CHANNEL_MULTIPLE = 4  # onnxruntime's fast int8 convolution kernels take input channels in multiples of this


class SpaceToDepthConv(NamedTuple):
    """The rewrite of one convolution: SpaceToDepth's ``blocksize``, the new ``weight``, ``pads`` (begin
    pads, then end pads, as Conv's attribute) and ``kernel_shape``."""

    blocksize: int
    weight: np.ndarray
    pads: list[int]
    kernel_shape: list[int]


def plan(weight: np.ndarray, input_shape, strides, pads, group: int = 1, dilations=None) -> SpaceToDepthConv | None:
    """The rewrite of a 2-D Conv with ``weight`` [O, C, kh, kw] on an input of ``input_shape`` [N, C, H, W]
    when it applies: one group, no dilation, equal strides ``s >= 2``, ``C`` not a multiple of 4 but
    ``C s^2`` one, static ``H`` and ``W`` divisible by ``s``, and non-negative end pads; else None."""
    if weight.ndim != 4 or group != 1 or any(d != 1 for d in (dilations or ())):
        return None
    channels = weight.shape[1]
    stride = strides[0] if strides and len(set(strides)) == 1 else 1
    if stride < 2 or channels % CHANNEL_MULTIPLE == 0 or channels * stride * stride % CHANNEL_MULTIPLE:
        return None
    sizes = list(input_shape[2:]) if input_shape is not None and len(input_shape) == 4 else []
    if len(sizes) != 2 or not all(isinstance(size, int) and size > 0 and size % stride == 0 for size in sizes):
        return None
    pads = list(pads) if pads else [0, 0, 0, 0]
    axes = [_axis(weight.shape[2 + a], pads[a], pads[a + 2], sizes[a], stride) for a in range(2)]
    if any(end < 0 for _, _, _, end in axes):
        return None
    (delta_y, kernel_y, begin_y, end_y), (delta_x, kernel_x, begin_x, end_x) = axes
    blocks = np.zeros((weight.shape[0], stride, stride, channels, kernel_y, kernel_x), weight.dtype)
    for q_y in range(kernel_y):
        for r_y in range(stride):
            y = stride * q_y + r_y - delta_y
            if not 0 <= y < weight.shape[2]:
                continue
            for q_x in range(kernel_x):
                for r_x in range(stride):
                    x = stride * q_x + r_x - delta_x
                    if 0 <= x < weight.shape[3]:
                        blocks[:, r_y, r_x, :, q_y, q_x] = weight[:, :, y, x]
    new_weight = blocks.reshape(weight.shape[0], stride * stride * channels, kernel_y, kernel_x)
    return SpaceToDepthConv(stride, new_weight, [begin_y, begin_x, end_y, end_x], [kernel_y, kernel_x])


def _axis(kernel: int, begin: int, end: int, size: int, stride: int) -> tuple[int, int, int, int]:
    """``(d, k', begin', end')`` of one spatial axis (see the module docstring)."""
    out = (size + begin + end - kernel) // stride + 1
    blocks_before = -(-begin // stride)
    delta = stride * blocks_before - begin
    new_kernel = -(-(kernel + delta) // stride)
    return delta, new_kernel, blocks_before, out - 1 + new_kernel - size // stride - blocks_before
