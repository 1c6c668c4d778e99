"""Run one piece of benchmark work in its own Python process: crashes stay contained, memory is measured.

``run_isolated(argv, result_path, log_path, timeout)`` starts ``argv`` (normally ``[sys.executable,
script, "--worker", ...]``), waits for it with ``os.wait4`` so that the child's own resource usage is
returned (its peak resident set size, ``ru_maxrss``, is that process's alone, not the maximum over all
children as ``RUSAGE_CHILDREN`` would give), kills it on timeout, and reads the JSON the worker wrote to
``result_path``. ``cwd`` is the folder the worker runs in (give the work folder when the tool it runs
leaves temporary files in the current folder, as onnxruntime's ``quant_pre_process`` does when it fails).
A worker reports its own failure by writing ``{"error": "..."}`` (see ``worker_main``);
a crash (signal, non-zero exit without a result) is reported from the exit status and the log's last
line. Nothing is raised for a failing worker: the caller gets ``IsolatedResult.error``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

_POLL_SECONDS = 0.02


@dataclasses.dataclass(frozen=True)
class IsolatedResult:
    payload: dict[str, Any] | None     # what the worker wrote, when it finished without error
    error: str | None                  # one line: the worker's exception, a signal, a timeout
    wall_seconds: float                # whole process, interpreter start-up and imports included
    peak_rss_bytes: int                # ru_maxrss of that process
    returncode: int | None
    log_path: str

    @property
    def ok(self) -> bool:
        return self.error is None and self.payload is not None


def run_isolated(argv: list[str], result_path: str | os.PathLike, log_path: str | os.PathLike,
                 timeout: float, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None) -> IsolatedResult:
    result_path, log_path = Path(result_path), Path(log_path)
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the worker and anything it started
            pid, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(_POLL_SECONDS)
    process.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    wall = time.perf_counter() - start
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # Linux reports KiB
    payload = _read_json(result_path)
    error = None
    if timed_out:
        error = f"timeout after {timeout:.0f} s"
    elif payload is not None and payload.get("error"):
        error = str(payload["error"])
        payload = None
    elif process.returncode < 0:
        error = f"crashed: {signal.Signals(-process.returncode).name}"
    elif process.returncode != 0 or payload is None:
        error = f"exit code {process.returncode}: {_last_line(log_path)}"
    return IsolatedResult(payload if error is None else None, error, wall, peak, process.returncode, str(log_path))


def worker_main(result_path: str | os.PathLike, work: Callable[[], dict[str, Any]]) -> int:
    """Run ``work`` in the worker process and write its result (or its exception) to ``result_path``."""
    try:
        payload = work()
        code = 0
    except BaseException as error:  # noqa: BLE001 - the worker's whole job is to report any failure
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}".strip().splitlines()
        payload = {"error": message[0][:500] if message else type(error).__name__}
        code = 1
    payload.setdefault("worker_peak_rss_bytes", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    temporary = Path(f"{result_path}.tmp")
    temporary.write_text(json.dumps(payload, default=_jsonable))
    os.replace(temporary, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
