"""Removing channels: every edit ``groups.analyse`` recorded, applied for a keep mask over channel ids.

Each constant with a role (a producer's weight rows and bias, a consumer's weight columns, normalization
parameters, per-channel operands, depthwise weights) is replaced by a new constant holding
``np.compress(keep[ids], values, axis)``: the positions whose channel stays, in order. A new constant rather
than an edit, so a constant some other node also reads keeps its values there. Then the attributes and shape
constants that count channels (depthwise ``group``, Split sizes, Slice bounds, Reshape targets, Resize sizes)
are recomputed, and the recorded shapes of every tensor that lost channels are cleared (shape inference
recomputes them; graph outputs never carry pruned channels).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.pruning.groups import Analysis
from graphopt.rewrite import NameAllocator


def remove_channels(graph: gs.Graph, analysis: Analysis, keep: np.ndarray) -> int:
    """Apply the edits for ``keep``; returns the number of constants that shrank."""
    names = NameAllocator(graph)
    shrunk = 0
    for role in analysis.edits.slices:
        mask = keep[role.ids]
        if mask.all():
            continue
        tensor = role.node.inputs[role.index]
        values = np.asarray(tensor.values)
        if values.shape[role.axis] != len(role.ids):
            raise ValueError(f"'{tensor.name}' has {values.shape[role.axis]} positions on axis {role.axis}, "
                             f"the channel analysis expected {len(role.ids)}")
        role.node.inputs[role.index] = gs.Constant(names.fresh(f"{tensor.name}_pruned"),
                                                   np.ascontiguousarray(np.compress(mask, values, role.axis)))
        shrunk += 1
    for adjust in analysis.edits.adjustments:
        adjust(keep, names)
    tensors = graph.tensors()
    outputs = {t.name for t in graph.outputs}
    for name, channels in analysis.edits.carriers.items():
        tensor = tensors.get(name)
        if isinstance(tensor, gs.Variable) and name not in outputs and not keep[channels.ids].all():
            tensor.shape = None
    return shrunk
