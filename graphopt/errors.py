"""The errors graphopt raises, each tied to the exit code the CLI documents.

0 success; 1 a gate or validation threshold failed; 2 bad usage or an input that is not a usable model;
3 an internal error. Library callers catch ``GraphoptError``; the CLI turns ``exit_code`` into the process
status and prints the message as one line (a traceback only for exit code 3).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class GraphoptError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_INTERNAL


class UsageError(GraphoptError):
    """The request itself is wrong: unknown pass, bad option value, unwritable output, ..."""

    exit_code = EXIT_USAGE


class ModelError(GraphoptError):
    """The input is not a usable ONNX model (missing, empty, damaged, not a model, ...)."""

    exit_code = EXIT_USAGE


class DataError(GraphoptError):
    """Calibration or evaluation data that does not fit the model (names, shapes, dtypes, NaN/Inf)."""

    exit_code = EXIT_USAGE


class PassError(GraphoptError):
    """A pass failed or broke the graph. Names the pass, the passes before it, and the reproducer."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, pass_path: str, history: tuple[str, ...] = (), reproducer: str | None = None):
        self.detail = message
        self.pass_path = pass_path
        self.history = history
        self.reproducer = reproducer
        recent = ", ".join(history[-5:])
        before = f" (after {'..., ' if len(history) > 5 else ''}{recent})" if history else ""
        where = f"; reproducer written to {reproducer}" if reproducer else ""
        super().__init__(f"pass {pass_path}{before} failed: {message}{where}")


class OutputModelError(GraphoptError):
    """The optimized model fails the ONNX checker or does not load in onnxruntime; nothing was written."""

    exit_code = EXIT_INTERNAL


class ValidationFailure(GraphoptError):
    """A validation or gate threshold failed: outputs diverged, accuracy dropped, latency regressed."""

    exit_code = EXIT_THRESHOLD


def one_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, for one-line error reports."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
