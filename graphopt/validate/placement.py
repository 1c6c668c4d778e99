"""Which nodes ran where once onnxruntime optimized the graph, and how many Q/DQ became integer kernels.

This answers the question users otherwise debug by hand when an int8 model is no faster than float: did
onnxruntime fuse the DequantizeLinear -> op -> QuantizeLinear groups into integer kernels (QLinearConv,
MatMulInteger, ...), or do the QuantizeLinear/DequantizeLinear nodes still run standalone around float
kernels, and which execution provider ran each node?

How: the model runs once on the given feeds with onnxruntime's profiler on (``SessionOptions.enable_profiling``,
the profile written into a temporary folder that is deleted afterwards), at the graph optimization level and
with the providers asked for. So the answer is what really executed, after onnxruntime's own fusions, layout
changes and partitioning between providers.

The profile is a Chrome trace-event JSON file: a list of events (an object with ``"traceEvents"`` is accepted
too), each like ``{"cat": "Node", "name": "conv1_kernel_time", "ph": "X", "ts": .., "dur": .., "pid": ..,
"tid": .., "args": {"op_name": "QLinearConv", "provider": "CPUExecutionProvider", "node_index": "15", ...}}``.
onnxruntime's executor records one such event per kernel it runs: named ``<node name>_kernel_time`` (an
unnamed node is called ``<op type>_<node index>``), with the kernel's op type as executed in ``op_name`` and
the execution provider in ``provider``, next to sizes, shapes and memory counters not used here (their keys
changed between versions: ``node_index`` vs ``graph_index``, memory counters since 1.2x). Everything else is
ignored: ``Session`` events (model_loading_array, session_initialization, model_run,
SequentialExecutor::Execute), the ``<node>_fence_before``/``_fence_after`` events some versions add (their
args hold ``op_name`` but no ``provider``), and ``Kernel``/``Api`` events of provider profilers. A node that
ran more than once during the run (in a Loop body) counts once.

Counts of the model as given (``model_q``, ``model_dq``) are over its top-level nodes, as ``graphopt inspect``
counts ops. A provider that compiles whole partitions (TensorRT, OpenVINO) reports one node per partition;
the integer kernels inside such a partition are not visible to this count.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

# Kernels that compute on integer data: onnxruntime's quantized operators (ONNX and com.microsoft domains).
INT8_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "MatMulInteger16", "MatMulIntegerToFloat",
    "ConvInteger", "MulInteger", "ReduceSumInteger", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax",
    "QLinearReduceMean", "QLinearWhere", "QAttention", "QEmbedLayerNormalization", "QOrderedAttention",
    "QOrderedGelu", "QOrderedLayerNormalization", "QOrderedLongformerAttention", "QOrderedMatMul",
    "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
})


@dataclasses.dataclass(frozen=True)
class Placement:
    """What ran where: nodes per execution provider, op types as executed, and the fate of Q/DQ nodes."""

    provider_nodes: dict[str, int]
    ops: dict[str, dict[str, int]]
    model_q: int
    model_dq: int
    int8_kernels: int
    float_q: int
    float_dq: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def node_placement(model: onnx.ModelProto | bytes, feeds: Mapping[str, np.ndarray],
                   providers: Sequence[str] = ("CPUExecutionProvider",),
                   optimization_level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                   threads: int = 1) -> Placement:
    """Run ``model`` once on ``feeds`` with onnxruntime's profiler on and report where its nodes ran."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
    source = model if isinstance(model, bytes) else model.SerializeToString()
    trace = _profile(source, feeds, providers, optimization_level, threads)
    model_ops = collections.Counter(node.op_type for node in proto.graph.node)
    return _summarize(executed_nodes(trace), model_ops)


def executed_nodes(trace: Any) -> list[tuple[str, str]]:
    """``(provider, op type)`` of every node that ran, once per node, from an onnxruntime profile trace."""
    seen: dict[tuple[str, str, str], None] = {}
    for event in _events(trace):
        args = event.get("args")
        if event.get("cat") != "Node" or not isinstance(args, dict):
            continue
        provider, op_type, name = args.get("provider"), args.get("op_name"), event.get("name")
        if isinstance(provider, str) and isinstance(op_type, str) and isinstance(name, str):
            seen[(name, provider, op_type)] = None
    return [(provider, op_type) for _, provider, op_type in seen]


def _events(trace: Any) -> Iterator[dict[str, Any]]:
    """The event objects of a trace: a JSON list of events or an object with ``traceEvents``."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    return (event for event in events if isinstance(event, dict))


def _profile(source: bytes, feeds: Mapping[str, np.ndarray], providers: Sequence[str],
             optimization_level: ort.GraphOptimizationLevel, threads: int) -> Any:
    """The parsed profile of one run; the profile file and its temporary folder are gone on return."""
    with tempfile.TemporaryDirectory(prefix="graphopt-profile-") as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "onnxruntime_profile")
        options.graph_optimization_level = optimization_level
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(source, options, providers=list(providers))
        try:
            session.run(None, dict(feeds))
        finally:  # the profiler holds its file open until this, also when the run fails
            path = session.end_profiling()
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)


def _summarize(executed: Iterable[tuple[str, str]], model_ops: Mapping[str, int]) -> Placement:
    """Counts per provider and op type of what ran, set against the Q/DQ nodes of the model as given."""
    ops: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for provider, op_type in executed:
        ops[provider][op_type] += 1
    all_ops = sum(ops.values(), collections.Counter())
    return Placement(
        provider_nodes={provider: sum(counts.values()) for provider, counts in ops.items()},
        ops={provider: dict(counts.most_common()) for provider, counts in ops.items()},
        model_q=model_ops.get("QuantizeLinear", 0),
        model_dq=model_ops.get("DequantizeLinear", 0),
        int8_kernels=sum(count for op_type, count in all_ops.items() if op_type in INT8_KERNELS),
        float_q=all_ops["QuantizeLinear"],
        float_dq=all_ops["DequantizeLinear"],
    )
