"""The pass contract: ``Pass``, its typed ``Option``s, the frozen ``PassResult`` and ``Diagnostic``, graph
``Invariant``s, and the ``PassContext`` a pass runs in.

A pass is a class with declared metadata and one method, ``run(graph, ctx) -> PassResult``. It edits the
onnx-graphsurgeon graph in place, keeps no state between runs, never prints, and reports what it did in
``stats`` (``rewrites.<rule>``, ``removed.<what>``, ``skipped.<reason>``) and ``diagnostics``.
``changed`` must be true exactly when the graph changed; the pass manager can check that against a
structural fingerprint. A pass never edits a constant's values in place (gs may share one numpy array
between constants, and digests of values are cached per values object): it gives the constant new values.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import types
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from graphopt.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover - imports for type annotations only
    import onnx_graphsurgeon as gs

    from graphopt.analysis import AnalysisCache
    from graphopt.data import Dataset
    from graphopt.instruments import Instrument, PassRecord

logger = logging.getLogger(__name__)


class Invariant(enum.Enum):
    """Properties of a graph that a pass may require, and that a pass (or the manager) establishes."""

    TOPOLOGICALLY_SORTED = "topologically-sorted"
    SHAPES_INFERRED = "shapes-inferred"
    INFERENCE_MODE = "inference-mode"


@dataclasses.dataclass(frozen=True)
class Diagnostic:
    """Something a pass wants the user to know: ``severity`` is ``info``, ``warning`` or ``error``."""

    severity: str
    message: str
    node: str | None = None

    def __post_init__(self):
        if self.severity not in ("info", "warning", "error"):
            raise ValueError(f"unknown diagnostic severity {self.severity!r}")

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.severity}{where}: {self.message}"


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What one run of a pass did. ``stats`` maps counter names to counts and is read-only."""

    changed: bool
    stats: Mapping[str, int] = dataclasses.field(default_factory=dict)
    diagnostics: tuple[Diagnostic, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "stats", types.MappingProxyType(dict(self.stats)))
        object.__setattr__(self, "diagnostics", tuple(self.diagnostics))

    @staticmethod
    def merge(results: Sequence[PassResult], **extra_stats: int) -> PassResult:
        """One result for a sequence of runs: changed if any changed, stats summed, diagnostics in order."""
        stats: dict[str, int] = {}
        for result in results:
            for key, count in result.stats.items():
                stats[key] = stats.get(key, 0) + count
        stats.update(extra_stats)
        diagnostics = tuple(d for result in results for d in result.diagnostics)
        return PassResult(any(r.changed for r in results), stats, diagnostics)


_NO_DEFAULT = object()


@dataclasses.dataclass(frozen=True)
class Option:
    """A typed, validated pass option with a safe default.

    ``kind`` is ``bool``, ``int``, ``float``, ``str`` or ``list`` (a list of strings). ``choices`` limits a
    ``str`` option; ``minimum``/``maximum`` bound a number (inclusive).
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def describe_allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is list:
            return "a list of names, e.g. [a,b]"
        noun = "an integer" if self.kind is int else "a number" if self.kind is float else "a string"
        if self.minimum is not None and self.maximum is not None:
            return f"{noun} in [{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"{noun} >= {self.minimum:g}"
        if self.maximum is not None:
            return f"{noun} <= {self.maximum:g}"
        return noun

    def coerce(self, owner: str, value: Any) -> Any:
        """``value`` converted to this option's type (strings from pipeline text included), or UsageError."""
        try:
            converted = self._convert(value)
        except (TypeError, ValueError):
            converted = _NO_DEFAULT
        if converted is _NO_DEFAULT or not self._in_range(converted):
            raise UsageError(f"{owner}: option '{self.name}' must be {self.describe_allowed()}, got {value!r}")
        return converted

    def _convert(self, value: Any) -> Any:
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            return _NO_DEFAULT
        if self.kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                return _NO_DEFAULT
            return int(value)
        if self.kind is float:
            if isinstance(value, bool):
                return _NO_DEFAULT
            number = float(value)
            return number if number == number else _NO_DEFAULT  # NaN is never a valid setting
        if self.kind is list:
            if isinstance(value, str):
                return _NO_DEFAULT
            items = tuple(value)
            return items if all(isinstance(item, str) for item in items) else _NO_DEFAULT
        return value if isinstance(value, str) else _NO_DEFAULT

    def _in_range(self, value: Any) -> bool:
        if self.choices is not None and value not in self.choices:
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return self.maximum is None or value <= self.maximum


class Pass:
    """Base class of every pass. Subclasses set the class attributes and implement ``run``.

    Options are constructor keyword arguments declared in ``options``; ``self.options`` holds the validated
    values. Two passes are equal when they have the same name and option values.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    requires: ClassVar[frozenset[Invariant]] = frozenset()
    establishes: ClassVar[frozenset[Invariant]] = frozenset()
    # Invariants still true after this pass changed the graph (besides the ones it establishes).
    preserves: ClassVar[frozenset[Invariant]] = frozenset()

    def __init__(self, **options: Any):
        declared = {option.name: option for option in self.options}
        unknown = sorted(set(options) - set(declared))
        if unknown:
            known = ", ".join(declared) or "none"
            raise UsageError(f"{self.name}: unknown option '{unknown[0]}' (its options: {known})")
        self.values: dict[str, Any] = {}
        for option in self.options:
            value = options.get(option.name, option.default)
            self.values[option.name] = option.coerce(self.name, value)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def children(self) -> tuple[Pass, ...]:
        """Nested passes of a composite pass (a pipeline); leaf passes have none."""
        return ()

    def non_default_options(self) -> dict[str, Any]:
        return {o.name: self.values[o.name] for o in self.options if self.values[o.name] != o.default}

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.values == self.values
            and other.children() == self.children()
        )

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(map(repr, self.values.items())))))

    def __repr__(self) -> str:
        from graphopt.pipeline import format_pipeline

        return f"<Pass {format_pipeline(self)}>"


@dataclasses.dataclass
class PassContext:
    """What a pass runs with: data, cached analyses, instruments, and the manager's bookkeeping.

    ``check_changed`` turns on the honesty check of ``PassResult.changed`` (fingerprint before and after each
    pass; on in tests). ``held`` is the set of invariants true of the graph right now. ``history`` names the
    leaf passes already run, for error messages; ``records`` collects one ``PassRecord`` per leaf run.
    """

    analyses: AnalysisCache
    data: Dataset | None = None
    instruments: list[Instrument] = dataclasses.field(default_factory=list)
    check_changed: bool = False
    held: set[Invariant] = dataclasses.field(default_factory=set)
    history: list[str] = dataclasses.field(default_factory=list)
    records: list[PassRecord] = dataclasses.field(default_factory=list)
    scope: list[str] = dataclasses.field(default_factory=list)
    logger: logging.Logger = logger
