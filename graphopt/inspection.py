"""What a model is: IR and opsets, inputs and outputs, op histogram, parameters, size, and MACs.

MACs (multiply-accumulates) are counted for Conv, ConvTranspose, Gemm and MatMul whose shapes are known
after onnx's shape inference; a symbolic dimension (e.g. the batch) counts as 1, so the total is per
sample when only the batch is symbolic. Nodes whose shapes stay unknown are counted in ``macs_unknown``.

- Conv: ``prod(Y.shape) * (C_in / group) * prod(kernel)``   (every output element is one dot product)
- ConvTranspose: ``prod(X.shape) * (C_out / group) * prod(kernel)``   (every input element is scattered)
- Gemm: ``M * K * N``;  MatMul: ``prod(Y.shape) * K`` (= batch * M * N * K)
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any

import numpy as np
import onnx

Shape = list[Any]


@dataclasses.dataclass(frozen=True)
class ValueSummary:
    name: str
    dtype: str
    shape: Shape

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join('?' if d is None else str(d) for d in self.shape)}]"


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    path: str | None
    file_bytes: int | None
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[ValueSummary]
    outputs: list[ValueSummary]
    nodes: int
    ops: dict[str, int]
    parameters: int
    macs: int
    macs_unknown: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe(model: onnx.ModelProto, path: str | None = None) -> ModelSummary:
    inferred = _infer(model)
    initializers = {i.name for i in model.graph.initializer}
    return ModelSummary(
        path=path,
        file_bytes=os.path.getsize(path) if path else None,
        ir_version=model.ir_version,
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        producer=" ".join(filter(None, (model.producer_name, model.producer_version))),
        inputs=[_value(v) for v in model.graph.input if v.name not in initializers],
        outputs=[_value(v) for v in model.graph.output],
        nodes=len(model.graph.node),
        ops=dict(collections.Counter(n.op_type for n in model.graph.node).most_common()),
        parameters=count_parameters(model),
        **_macs(inferred),
    )


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of all initializers and Constant-node tensors (subgraphs included)."""
    total = 0
    for graph in _graphs(model.graph):
        total += sum(int(np.prod(t.dims, dtype=np.int64)) for t in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant":
                total += sum(int(np.prod(a.t.dims, dtype=np.int64)) for a in node.attribute if a.name == "value")
    return total


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graphs(subgraph)


def _value(value: onnx.ValueInfoProto) -> ValueSummary:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        return ValueSummary(value.name, value.type.WhichOneof("value") or "unknown", [])
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_string(tensor_type.elem_type).removeprefix("TensorProto.").lower()
    return ValueSummary(value.name, dtype, dims)


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: MACs of nodes without shapes count as unknown
        return model


def _macs(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    shapes: dict[str, Shape] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                                  for d in value.type.tensor_type.shape.dim]
    for initializer in graph.initializer:
        shapes[initializer.name] = list(initializer.dims)
    total = unknown = 0
    for node in graph.node:
        if node.op_type not in _COUNTERS:
            continue
        macs = _COUNTERS[node.op_type](node, shapes)
        if macs is None:
            unknown += 1
        else:
            total += macs
    return {"macs": total, "macs_unknown": unknown}


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _conv_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    weight, output = shapes.get(node.input[1]), shapes.get(node.output[0])
    if weight is None or output is None:
        return None
    # weight is [C_out, C_in / group, *kernel]: each output element is a dot product of that length
    return int(np.prod(output, dtype=np.int64)) * weight[1] * int(np.prod(weight[2:], dtype=np.int64))


def _conv_transpose_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    source, weight = shapes.get(node.input[0]), shapes.get(node.input[1])
    if weight is None or source is None:
        return None
    return int(np.prod(source, dtype=np.int64)) * weight[1] * int(np.prod(weight[2:], dtype=np.int64))


def _gemm_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    m, k = (a[1], a[0]) if _attribute(node, "transA", 0) else (a[0], a[1])
    n = b[0] if _attribute(node, "transB", 0) else b[1]
    return m * k * n


def _matmul_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    a, output = shapes.get(node.input[0]), shapes.get(node.output[0])
    if a is None or output is None or not a:
        return None
    return int(np.prod(output, dtype=np.int64)) * a[-1]  # prod(batch) * M * N outputs, each K long


_COUNTERS = {"Conv": _conv_macs, "ConvTranspose": _conv_transpose_macs, "Gemm": _gemm_macs,
             "MatMul": _matmul_macs}
