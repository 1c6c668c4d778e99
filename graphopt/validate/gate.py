"""The gate: thresholds -> one PASS/FAIL verdict per threshold and provider -> exit code 1 on any failure.

Thresholds (all optional; at least one, or the gate would pass anything):

- ``max_accuracy_drop``: top-1 accuracy of the candidate may be at most this many percentage points below
  the reference's (needs labels), per provider;
- ``min_cosine``: the cosine similarity of every output with the reference's is at least this, per provider;
- ``max_abs_error``: the largest absolute difference of any output element is at most this, per provider;
- ``min_speedup``: reference latency / candidate latency (paired median over interleaved rounds) is at least
  this, per provider (1.0: not slower; 0.95: at most ~5% slower);
- ``max_size_ratio``: candidate file size / reference file size is at most this (provider independent).

Besides thresholds, a provider the user required but this machine cannot run fails the gate (``validate``
raises before), and when ``tensorrt`` is among the providers, errors of the TensorRT QDQ lint fail it.

They come from command-line options or from a TOML file (so a CI configuration lives in the user's
repository); options given on the command line win. The file holds a ``[gate]`` table::

    [gate]
    providers = ["cpu", "cuda"]      # optional, like --providers
    require_provider = false         # optional
    labels = "label"                 # optional: the label array in the data
    max_accuracy_drop = 0.5
    min_speedup = 1.0

Anything else in ``[gate]`` is an error naming the key, and so is a threshold out of its range (exit 2).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from graphopt.errors import UsageError
from graphopt.validate.validation import ProviderResult, Validation

# name -> (check of the value, what the check requires, in words)
_RANGES = {
    "max_accuracy_drop": (lambda v: 0 <= v <= 100, "between 0 and 100 (percentage points)"),
    "min_cosine": (lambda v: -1 <= v <= 1, "between -1 and 1"),
    "max_abs_error": (lambda v: v >= 0, "at least 0"),
    "min_speedup": (lambda v: v > 0, "greater than 0"),
    "max_size_ratio": (lambda v: v > 0, "greater than 0"),
}
SETTINGS = ("providers", "require_provider", "labels")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None
    max_abs_error: float | None = None
    min_speedup: float | None = None
    max_size_ratio: float | None = None

    def __post_init__(self) -> None:
        for name, value in self.given().items():
            in_range, wanted = _RANGES[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) \
                    or not in_range(value):
                raise UsageError(f"threshold {name} must be {wanted}, not {value!r}")

    def require_any(self) -> None:
        if not self.given():
            raise UsageError("the gate has no thresholds; give at least one (e.g. --min-cosine 0.999) or --config")

    def given(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def merged(self, overrides: Mapping[str, float | None]) -> Thresholds:
        """These thresholds with the non-None ``overrides`` (command-line options) taking precedence."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class Verdict:
    check: str                 # a threshold name, "tensorrt_lint" or "provider"
    provider: str | None       # None for provider-independent checks
    value: float | None        # what was measured (None: could not be measured)
    limit: float | None
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | os.PathLike) -> tuple[Thresholds, dict[str, Any]]:
    """Thresholds and settings (``SETTINGS``) from the ``[gate]`` table of a TOML file."""
    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except OSError as error:
        raise UsageError(f"{path}: cannot read the gate configuration ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: not valid TOML ({error})") from None
    gate = table.get("gate")
    if not isinstance(gate, dict):
        raise UsageError(f"{path}: no [gate] table")
    unknown = [key for key in gate if key not in _RANGES and key not in SETTINGS]
    if unknown:
        raise UsageError(f"{path}: unknown key '{unknown[0]}' in [gate]; known: "
                         + ", ".join([*_RANGES, *SETTINGS]))
    return (Thresholds(**{k: v for k, v in gate.items() if k in _RANGES}),
            {k: v for k, v in gate.items() if k in SETTINGS})


def evaluate(validation: Validation, thresholds: Thresholds) -> list[Verdict]:
    """One verdict per threshold and provider that ran, plus the size ratio and the TensorRT lint."""
    thresholds.require_any()
    verdicts = []
    for result in validation.ran():
        verdicts += _provider_verdicts(result, thresholds)
    if thresholds.max_size_ratio is not None:
        ref, cand = validation.reference.bytes, validation.candidate.bytes
        ratio = cand / max(ref, 1)
        verdicts.append(_verdict("max_size_ratio", None, ratio, thresholds.max_size_ratio,
                                 ratio <= thresholds.max_size_ratio, f"{cand:,} / {ref:,} bytes"))
    if validation.tensorrt_lint is not None and any(p.provider == "tensorrt" for p in validation.providers):
        errors = [f for f in validation.tensorrt_lint if f.severity == "error"]
        verdicts.append(_verdict("tensorrt_lint", "tensorrt", len(errors), 0, not errors,
                                 errors[0].message if errors else "no TensorRT QDQ errors"))
    return verdicts


def _provider_verdicts(result: ProviderResult, thresholds: Thresholds) -> list[Verdict]:
    name, verdicts = result.provider, []
    if thresholds.max_accuracy_drop is not None:
        drop = result.accuracy.drop_points if result.accuracy else None
        verdicts.append(_verdict("max_accuracy_drop", name, drop, thresholds.max_accuracy_drop,
                                 drop is not None and drop <= thresholds.max_accuracy_drop,
                                 f"{result.accuracy.reference:.2%} -> {result.accuracy.candidate:.2%}"
                                 if result.accuracy else "no accuracy measured (labels missing)"))
    compared = [o for o in result.outputs if o.problem is None]
    if thresholds.min_cosine is not None:
        worst = min(compared, key=lambda o: o.cosine, default=None)
        verdicts.append(_verdict("min_cosine", name, worst.cosine if worst else None, thresholds.min_cosine,
                                 worst is not None and _all_comparable(result)
                                 and worst.cosine >= thresholds.min_cosine, _worst_detail(result, worst)))
    if thresholds.max_abs_error is not None:
        worst = max(compared, key=lambda o: o.max_abs_error, default=None)
        verdicts.append(_verdict("max_abs_error", name, worst.max_abs_error if worst else None,
                                 thresholds.max_abs_error, worst is not None and _all_comparable(result)
                                 and worst.max_abs_error <= thresholds.max_abs_error, _worst_detail(result, worst)))
    if thresholds.min_speedup is not None:
        speedup = result.latency.speedup if result.latency else None
        verdicts.append(_verdict("min_speedup", name, speedup, thresholds.min_speedup,
                                 speedup is not None and speedup >= thresholds.min_speedup,
                                 f"{result.latency.reference.median * 1e3:.3f} ms -> "
                                 f"{result.latency.candidate.median * 1e3:.3f} ms (median per call)"
                                 if result.latency else "latency not measured"))
    return verdicts


def _all_comparable(result: ProviderResult) -> bool:
    """False when an output is missing or changed shape/type: no error threshold can pass then."""
    return all(o.problem is None for o in result.outputs)


def _worst_detail(result: ProviderResult, worst) -> str:
    problems = [o.problem for o in result.outputs if o.problem]
    if problems:
        return problems[0]
    return f"worst output '{worst.name}': {worst}" if worst else "no outputs compared"


def _verdict(check: str, provider: str | None, value: float | None, limit: float, passed: bool,
             detail: str) -> Verdict:
    return Verdict(check, provider, None if value is None else float(value), float(limit), bool(passed), detail)
