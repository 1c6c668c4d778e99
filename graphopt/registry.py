"""Where pass names come from: the built-in library (the ``passes`` package) and third-party packages that
register under the entry-point group ``graphopt.passes``.

An entry point names either a ``Pass`` subclass, or a module that defines ``PASSES`` (pass classes) and
optionally ``ALIASES`` (short name -> pass name) and ``PRESETS`` (name -> pipeline text). The built-in
library is such a module. A third-party entry point that fails to load is skipped with a logged warning,
so one broken plugin cannot take the CLI down. The registry is immutable once built.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import types
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

from graphopt.errors import UsageError
from graphopt.pass_base import Pass

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "graphopt.passes"
BUILTIN_MODULE = "passes"


class Registry:
    """Pass classes by name, plus aliases and presets. Reserved names: ``pipeline``, ``fixed-point``."""

    def __init__(self, passes: Iterable[type[Pass]] = (), aliases: Mapping[str, str] | None = None,
                 presets: Mapping[str, str] | None = None):
        classes: dict[str, type[Pass]] = {}
        for cls in passes:
            if cls.name in classes and classes[cls.name] is not cls:
                raise ValueError(f"two passes are named {cls.name!r}: {classes[cls.name]} and {cls}")
            classes[cls.name] = cls
        self.passes: Mapping[str, type[Pass]] = types.MappingProxyType(classes)
        self.aliases: Mapping[str, str] = types.MappingProxyType(dict(aliases or {}))
        self.presets: Mapping[str, str] = types.MappingProxyType(dict(presets or {}))

    def known_names(self) -> list[str]:
        return sorted({*self.passes, *self.aliases, *self.presets, "pipeline", "fixed-point"})

    def create(self, name: str, **options: Any) -> Pass:
        cls = self.passes.get(self.aliases.get(name, name))
        if cls is None:
            close = difflib.get_close_matches(name, self.known_names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(f"unknown pass '{name}'{hint}; known: {', '.join(self.known_names())}")
        return cls(**options)

    def merged(self, other: Registry) -> Registry:
        return Registry([*self.passes.values(), *other.passes.values()],
                        {**self.aliases, **other.aliases}, {**self.presets, **other.presets})


def registry_from(target: Any) -> Registry:
    """A registry from an entry point's target: a Pass subclass or a module with PASSES/ALIASES/PRESETS."""
    if isinstance(target, type) and issubclass(target, Pass):
        return Registry([target])
    if not hasattr(target, "PASSES"):
        raise TypeError(f"{target!r} is neither a Pass subclass nor a module defining PASSES")
    return Registry(target.PASSES, getattr(target, "ALIASES", {}), getattr(target, "PRESETS", {}))


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The built-in passes plus every installed plugin's."""
    registry = registry_from(importlib.import_module(BUILTIN_MODULE))
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.value == BUILTIN_MODULE:
            continue
        try:
            registry = registry.merged(registry_from(entry_point.load()))
        except Exception as error:  # a broken plugin degrades to a warning instead of killing the CLI
            logger.warning("pass plugin %r could not be loaded: %s", entry_point.name, error)
    return registry
