"""The child process of test_atomic_save.py: saves a model (``graphopt.save``) or runs the command line
(``graphopt.cli.main``), and stops in the middle of it, at a point named by the environment, so that the test
can SIGKILL it there.

    python tests/atomic_save_child.py save SOURCE TARGET [--external]
    python tests/atomic_save_child.py cli ARGS...

Environment (read here only; graphopt knows nothing of it):

- ``GRAPHOPT_TEST_PAUSE``: where to stop:
    ``write:N``           once a file opened for writing by this process holds N bytes (mid-write);
    ``fsync:N``           at the N-th ``os.fsync`` call, before it (a file was completely written);
    ``replace:N``         at the N-th ``os.replace`` call, before it;
    ``replace-after:N``   right after the N-th ``os.replace`` call;
- ``GRAPHOPT_TEST_READY``: a path; when the child stops, it writes there what it was doing, then sleeps until
  it is killed.

The hooks wrap ``builtins.open``, ``os.fsync`` and ``os.replace`` for the whole process (graphopt and onnx call
them through those names). A child that finishes without reaching its pause point exits with code 17.
"""

from __future__ import annotations

import builtins
import os
import sys
import time

PAUSE = os.environ.get("GRAPHOPT_TEST_PAUSE", "")
READY = os.environ.get("GRAPHOPT_TEST_READY", "")
NOT_REACHED = 17


def _stop(what: str) -> None:
    with _real_open(READY + ".tmp", "w") as handle:
        handle.write(what)
    os.rename(READY + ".tmp", READY)
    while True:
        time.sleep(60)


_real_open = builtins.open
_real_fsync = os.fsync
_real_replace = os.replace
_kind, _, _count = PAUSE.partition(":")
_limit = int(_count or 0)
_calls = {"fsync": 0, "replace": 0}


class _SlowFile:
    """A file object that stops the process once ``_limit`` bytes were written to it."""

    def __init__(self, handle, name):
        self._handle, self._name, self._written = handle, name, 0

    def write(self, data):
        room = _limit - self._written
        if len(data) >= room:
            self._handle.write(data[:max(room, 0)])  # exactly N bytes are in the file, part of this write
            self._handle.flush()
            _stop(f"wrote {_limit} bytes of {self._name}")
        self._written += len(data)
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _open(file, mode="r", *args, **kwargs):
    handle = _real_open(file, mode, *args, **kwargs)
    if _kind == "write" and any(flag in mode for flag in "wax+") and "b" in mode:
        return _SlowFile(handle, os.fspath(file) if not isinstance(file, int) else str(file))
    return handle


def _fsync(fd):
    _calls["fsync"] += 1
    if _kind == "fsync" and _calls["fsync"] == _limit:
        _stop(f"fsync #{_limit}")
    return _real_fsync(fd)


def _replace(src, dst, *args, **kwargs):
    _calls["replace"] += 1
    if _kind == "replace" and _calls["replace"] == _limit:
        _stop(f"before replace #{_limit}: {src} -> {dst}")
    result = _real_replace(src, dst, *args, **kwargs)
    if _kind == "replace-after" and _calls["replace"] == _limit:
        _stop(f"after replace #{_limit}: {src} -> {dst}")
    return result


def main(argv: list[str]) -> int:
    import graphopt
    from graphopt import cli

    builtins.open, os.fsync, os.replace = _open, _fsync, _replace
    if argv[0] == "save":
        model = graphopt.load(argv[1])
        graphopt.save(model, argv[2], external_data="--external" in argv[3:])
        code = 0
    elif argv[0] == "cli":
        code = cli.main(argv[1:])
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")
    return NOT_REACHED if PAUSE and code == 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
