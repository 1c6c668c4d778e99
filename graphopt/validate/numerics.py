"""Running a model on onnxruntime's CPU provider and comparing its outputs with a reference.

A candidate output agrees with the reference when ``|cand - ref| <= atol + rtol * |ref|`` holds elementwise
(numpy's ``allclose`` rule, the one onnx's backend tests use) and the shapes and dtypes match. Alongside
the verdict we report max absolute and relative error, cosine similarity of the flattened outputs and, for
outputs shaped like class scores ([N, C], C > 1), top-1 agreement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort


def cpu_session(model: onnx.ModelProto | str, optimize: bool = False, prepack: bool = True) -> ort.InferenceSession:
    """A CPU session with onnxruntime's own graph optimizations off unless ``optimize`` (so that what is
    measured is graphopt's rewrite, not onnxruntime's), single-threaded for reproducible numerics.
    ``prepack=False``: kernels do not repack their constant weights when the session is made (as MatMul and
    Gemm do, into a second copy of every weight), so that external data, which onnxruntime maps, is not even
    read: on a large model the session is made in a fraction of the time and memory (and runs slower)."""
    options = ort.SessionOptions()
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also list ``names`` (intermediate tensors), declared by name
    only: onnxruntime infers their types when it loads the model. ``model`` is not changed."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    listed = {output.name for output in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=name) for name in dict.fromkeys(names)
                                if name not in listed)
    return exposed


def run_model(model: onnx.ModelProto | str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All graph outputs of ``model`` on ``feeds``, by output name."""
    session = cpu_session(model)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=False))


@dataclasses.dataclass(frozen=True)
class OutputComparison:
    name: str
    within_tolerance: bool
    max_abs_error: float
    max_rel_error: float
    cosine: float
    top1_agreement: float | None
    problem: str | None = None

    def __str__(self) -> str:
        if self.problem:
            return self.problem
        top1 = f", top-1 agreement {self.top1_agreement:.4f}" if self.top1_agreement is not None else ""
        return (f"max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}, "
                f"cosine {self.cosine:.6f}{top1}")


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                    rtol: float, atol: float) -> list[OutputComparison]:
    """One comparison per reference output; a missing or reshaped candidate output is a failure."""
    return [compare_tensor(name, np.asarray(ref), candidate.get(name), rtol, atol) for name, ref in reference.items()]


def compare_tensor(name: str, ref: np.ndarray, cand: np.ndarray | None, rtol: float, atol: float) -> OutputComparison:
    """One tensor against its reference: shapes and dtypes must match; values by the allclose rule."""
    if cand is None:
        return OutputComparison(name, False, np.inf, np.inf, 0.0, None, f"output '{name}' is missing")
    cand = np.asarray(cand)
    if cand.shape != ref.shape or cand.dtype != ref.dtype:
        problem = f"output '{name}' is {cand.dtype}{list(cand.shape)}, expected {ref.dtype}{list(ref.shape)}"
        return OutputComparison(name, False, np.inf, np.inf, 0.0, None, problem)
    if ref.dtype.kind not in "fciub":  # strings, objects: exact equality
        equal = bool(np.array_equal(ref, cand))
        return OutputComparison(name, equal, 0.0 if equal else np.inf, 0.0 if equal else np.inf,
                                1.0 if equal else 0.0, None)
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    within = bool(np.allclose(c, r, rtol=rtol, atol=atol, equal_nan=True))
    finite = np.isfinite(r) & np.isfinite(c)
    diff = np.abs(c - r)[finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r[finite]), np.finfo(np.float64).tiny)).max()) if diff.size else 0.0
    return OutputComparison(name, within, max_abs, max_rel, _cosine(r, c), _top1_agreement(r, c))


def _cosine(r: np.ndarray, c: np.ndarray) -> float:
    r, c = np.nan_to_num(r.ravel()), np.nan_to_num(c.ravel())
    norms = np.linalg.norm(r) * np.linalg.norm(c)
    if norms == 0:
        return 1.0 if np.array_equal(r, c) else 0.0
    return float(np.dot(r, c) / norms)


def _top1_agreement(r: np.ndarray, c: np.ndarray) -> float | None:
    if r.ndim != 2 or r.shape[1] < 2:
        return None
    return float(np.mean(np.argmax(r, axis=1) == np.argmax(c, axis=1)))
