"""onnxruntime execution providers by their short names, whether this machine can run them, and sessions.

Short names (what ``--providers`` takes) map to onnxruntime's: ``cpu`` -> CPUExecutionProvider, ``cuda`` ->
CUDAExecutionProvider, ``tensorrt`` -> TensorrtExecutionProvider. A provider is usable when the installed
onnxruntime was built with it (``get_available_providers``) *and* a session really got it: onnxruntime-gpu
lists CUDA and TensorRT even when their libraries are missing, then quietly falls back to the CPU, which
would make a "CUDA" latency a CPU one. Both cases are reported as skipped, with the reason; a skipped
provider is an error only when the user required it.

Sessions list the fallbacks onnxruntime would use in deployment (TensorRT -> CUDA -> CPU, CUDA -> CPU), so
nodes a provider cannot run still run; ``placement.py`` reports which nodes ran where.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx
import onnxruntime as ort

from graphopt.errors import ModelError, UsageError, one_line

EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_FALLBACKS = {
    "cpu": ("cpu",),
    "cuda": ("cuda", "cpu"),
    "tensorrt": ("tensorrt", "cuda", "cpu"),
}
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def provider_chain(name: str) -> list[str]:
    """onnxruntime's provider list for a session on ``name``: it, then what it falls back to."""
    return [EXECUTION_PROVIDERS[p] for p in _FALLBACKS[name]]


class ProviderUnavailable(Exception):
    """This machine cannot run the provider; the message says why (one line)."""


def parse_providers(text: str | Sequence[str]) -> list[str]:
    """``"cpu,cuda"`` or ``["cpu", "cuda"]`` -> short names, in order, without repeats. Unknown: UsageError."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text)]
    unknown = [n for n in names if n not in EXECUTION_PROVIDERS]
    if unknown or not names:
        raise UsageError(f"unknown provider '{unknown[0] if unknown else ''}'; choose from "
                         + ", ".join(EXECUTION_PROVIDERS))
    return list(dict.fromkeys(names))


def unavailable_reason(name: str, available: Sequence[str] | None = None) -> str | None:
    """Why ``name`` cannot run here (None: it can, as far as the installed onnxruntime says).
    ``available``: onnxruntime's list of providers (default: the installed build's)."""
    available = ort.get_available_providers() if available is None else available
    provider = EXECUTION_PROVIDERS[name]
    if provider in available:
        return None
    hint = "" if name == "cpu" else "; it needs onnxruntime-gpu (pip install 'graphopt[gpu]') and the NVIDIA libraries"
    return f"onnxruntime {ort.__version__} on this machine has no {provider}{hint}"


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    """How sessions are made: ``optimization`` is a key of OPTIMIZATION_LEVELS; ``threads`` intra-op threads."""

    optimization: str = "all"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise UsageError(f"unknown optimization level '{self.optimization}'; choose from "
                             + ", ".join(OPTIMIZATION_LEVELS))
        if self.threads < 0:
            raise UsageError(f"threads must be 0 (onnxruntime's default) or more, not {self.threads}")

    def options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = OPTIMIZATION_LEVELS[self.optimization]
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        return options


DEFAULT_SETTINGS = SessionSettings()


def open_session(model: onnx.ModelProto | bytes | str, name: str,
                 settings: SessionSettings = DEFAULT_SETTINGS) -> ort.InferenceSession:
    """A session of ``model`` on provider ``name`` (with its fallbacks). Raises ProviderUnavailable when the
    provider is missing or onnxruntime fell back from it, ModelError (exit 2) when onnxruntime cannot load the
    model (an op it has no kernel for, say)."""
    reason = unavailable_reason(name)
    if reason:
        raise ProviderUnavailable(reason)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        session = ort.InferenceSession(source, settings.options(), providers=provider_chain(name))
    except Exception as error:  # onnxruntime's own exception types: a model it cannot load or run
        raise ModelError(f"onnxruntime cannot run the model on {name}: {one_line(error)}") from error
    if EXECUTION_PROVIDERS[name] not in session.get_providers():
        raise ProviderUnavailable(f"onnxruntime could not start {EXECUTION_PROVIDERS[name]} "
                                  f"(it fell back to {', '.join(session.get_providers())}); "
                                  f"are the CUDA/TensorRT libraries installed?")
    return session
