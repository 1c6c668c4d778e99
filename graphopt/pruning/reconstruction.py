"""Reconstruction: re-fit the layers that lost input channels so their outputs match the unpruned model's.

For each such layer L (2-D Conv, Gemm, MatMul with a constant 2-D weight), and each depthwise Conv whose
channels were pruned, in topological order, on calibration data:

* ``X``: L's input in the *pruned* model as re-fitted so far (so errors of earlier layers are compensated,
  not accumulated), unrolled into rows ``A`` of what one output value is computed from: for a Conv, im2col
  patches ``[N * H_out * W_out, C_in * k_h * k_w]`` under L's pads, strides and dilations; for Gemm the
  rows of ``X``; for MatMul ``X`` reshaped to ``[-1, K]``;
* ``Y``: L's output in the *original* model, restricted to the output channels L keeps, as rows ``T``
  (``[rows, C_out]``);
* the new weights solve the ridge least-squares problem
  ``min_W ||[A 1] W - T||^2 + lambda ||W_weights||^2``,  ``lambda = ridge * trace(A^T A) / d``
  (``d`` columns of ``A``; the bias row, the column of ones, is not penalized), through the normal equations
  ``(G + lambda I') W = [A 1]^T T`` with ``G = [A 1]^T [A 1]`` accumulated batch by batch in float64: memory is
  one batch of activations plus ``d x d``, never all samples' activations. A grouped Conv (depthwise
  included) is ``G`` independent problems, one per group: group ``g``'s outputs from its own input channels
  (for a depthwise Conv, ``d = k_h * k_w`` per channel).

The fitted bias is the *bias correction*: the mean contribution of the removed channels (and any mean shift of
the kept ones) moves into the bias, which the Conv gets even when it had none. MatMul has no bias, so it is
fitted without the column of ones. Gemm is refitted only with ``alpha = beta = 1`` (its other forms keep
their weights, with a reason). A layer's rows are the samples' positions: a Conv with 32x32 outputs has 1024
rows per sample, enough for the ``d`` unknowns of small kernels from a few hundred samples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.data import Dataset
from graphopt.fidelity import export_with_gs
from graphopt.rewrite import NameAllocator
from graphopt.validate.numerics import cpu_session, with_outputs


@dataclasses.dataclass(frozen=True)
class Refit:
    """A layer to re-fit: ``node`` in the pruned graph; ``keep_out`` masks its output channels (original
    positions) that remain (None: all remain), ``axis`` is its output-channel axis."""

    node: gs.Node
    keep_out: np.ndarray | None
    axis: int


def reconstruct(graph: gs.Graph, original: onnx.ModelProto, layers: list[Refit], data: Dataset, ridge: float,
                batch_size: int, samples: int) -> dict[str, str]:
    """Re-fit ``layers`` in place; returns the layers left as they were, with the reason."""
    skipped = {}
    names = NameAllocator(graph)
    for layer in layers:
        reason = _unsupported(layer.node)
        if reason:
            skipped[layer.node.name] = reason
            continue
        system = _NormalEquations()
        pruned = cpu_session(with_outputs(export_with_gs(graph), [layer.node.inputs[0].name]))
        reference = cpu_session(with_outputs(original, [layer.node.outputs[0].name]))
        for batch in data.batches(batch_size, samples):
            (x,) = pruned.run([layer.node.inputs[0].name], batch)
            (y,) = reference.run([layer.node.outputs[0].name], batch)
            if layer.keep_out is not None:
                y = np.compress(layer.keep_out, y, layer.axis)
            system.add(*_rows(layer.node, x, y, layer.axis))
        _write(layer.node, system.solve(ridge), names)
    return skipped


def _unsupported(node: gs.Node) -> str | None:
    if node.op == "Conv":
        if node.inputs[1].values.ndim != 4:
            return "only 2-D convolutions are re-fitted"
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return "auto_pad convolutions are not re-fitted"
        return None
    if node.op == "Gemm" and (node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0):
        return "Gemm with alpha or beta other than 1 is not re-fitted"
    if node.op in ("Gemm", "MatMul"):
        return None
    return f"{node.op} is not re-fitted"


def _rows(node: gs.Node, x: np.ndarray, y: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(A, T, with_bias) for one batch: A ``[G, rows, d]``, T ``[G, rows, C_out / G]`` (G: Conv groups, else 1)."""
    if node.op == "Conv":
        groups = int(node.attrs.get("group", 1))
        patches = _im2col(node, x)  # [rows, C_in * k_h * k_w], channel-major: groups are consecutive blocks
        targets = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
        return (patches.reshape(len(patches), groups, -1).transpose(1, 0, 2),
                targets.reshape(len(targets), groups, -1).transpose(1, 0, 2), True)
    if node.op == "Gemm":
        return x[None], y[None], True
    return x.reshape(1, -1, x.shape[-1]), np.moveaxis(y, axis, -1).reshape(1, -1, y.shape[axis]), False


def _im2col(node: gs.Node, x: np.ndarray) -> np.ndarray:
    """Patches ``[N * H_out * W_out, C * k_h * k_w]`` (channel-major, like the Conv weight's ``[C, k_h, k_w]``)."""
    k_h, k_w = node.inputs[1].values.shape[2:]
    pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
    s_h, s_w = node.attrs.get("strides", [1, 1])
    d_h, d_w = node.attrs.get("dilations", [1, 1])
    padded = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    span_h, span_w = (k_h - 1) * d_h + 1, (k_w - 1) * d_w + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::s_h, ::s_w, ::d_h, ::d_w]  # [N, C, H_out, W_out, k_h, k_w]
    n, c, h_out, w_out = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h_out * w_out, c * k_h * k_w)


class _NormalEquations:
    """``G`` independent ridge problems (one per convolution group), accumulated batch by batch."""

    def __init__(self) -> None:
        self.gram: np.ndarray | None = None
        self.cross: np.ndarray | None = None
        self.with_bias = True

    def add(self, a: np.ndarray, t: np.ndarray, with_bias: bool) -> None:
        a = a.astype(np.float64)
        if with_bias:
            a = np.concatenate([a, np.ones((*a.shape[:2], 1))], axis=2)
        gram, cross = np.einsum("grd,gre->gde", a, a), np.einsum("grd,gre->gde", a, t.astype(np.float64))
        self.with_bias = with_bias
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross

    def solve(self, ridge: float) -> np.ndarray:
        """``[G, d (+1), C_out / G]``: per group, weight rows, then the bias row when fitted with one."""
        columns = self.gram.shape[1] - (1 if self.with_bias else 0)
        diagonal = np.arange(columns)
        penalty = ridge * self.gram[:, diagonal, diagonal].sum(axis=1) / max(columns, 1)
        regular = self.gram.copy()
        regular[:, diagonal, diagonal] += np.maximum(penalty, 1e-12)[:, None]
        try:
            return np.linalg.solve(regular, self.cross)
        except np.linalg.LinAlgError:  # singular even with the penalty (an input that is always 0)
            return np.stack([np.linalg.lstsq(g, c, rcond=None)[0] for g, c in zip(regular, self.cross, strict=True)])


def _write(node: gs.Node, solution: np.ndarray, names: NameAllocator) -> None:
    weight = node.inputs[1]
    dtype = weight.values.dtype
    if node.op == "Conv":
        c_out, c_in, k_h, k_w = weight.values.shape
        # group g's output o is channel g * (C_out / G) + o; its weights are rows [:-1] of column o
        new_weight = solution[:, :-1, :].transpose(0, 2, 1).reshape(c_out, c_in, k_h, k_w)
        _set_bias(node, solution[:, -1, :].reshape(c_out), dtype, names)
    elif node.op == "Gemm":
        new_weight = solution[0, :-1].T if node.attrs.get("transB", 0) else solution[0, :-1]
        _set_bias(node, solution[0, -1], dtype, names)
    else:
        new_weight = solution[0]
    node.inputs[1] = gs.Constant(names.fresh(f"{weight.name}_refit"), np.ascontiguousarray(new_weight.astype(dtype)))


def _set_bias(node: gs.Node, bias: np.ndarray, dtype: np.dtype, names: NameAllocator) -> None:
    constant = gs.Constant(names.fresh(f"{node.name or node.outputs[0].name}_bias_refit"), bias.astype(dtype))
    if len(node.inputs) > 2:
        node.inputs[2] = constant
    else:
        node.inputs.append(constant)
