"""Interleaved timing of several candidates on a noisy machine, so that drift cancels out of the ratios.

The idea: never time A for a while and then B for a while (a neighbour's job starting in between would be
charged to B). Instead, run rounds; in round ``r`` every candidate runs once, in an order rotated by ``r``
(round 0: A B C D, round 1: B C D A, ...), so each candidate takes each position equally often. Each
candidate's sample for a round is the mean time per call of a short block of back-to-back calls (enough
calls to last ``min_block_seconds``, so that sub-millisecond models are not measured at timer resolution).
Statistics are over the per-round samples; the ratio of two candidates is the median over rounds of the
per-round ratio (a paired comparison: both ran within the same round, so slow phases of the machine
affect both), and the ratio of the medians is kept as well.

Nothing here knows onnxruntime: a candidate is any zero-argument callable. Used by ``graphopt validate`` and
``gate`` and by the benchmarks::

    from graphopt.validate.latency import measure_interleaved
    run = measure_interleaved({"original": lambda: a.run(None, feeds), "optimized": lambda: b.run(None, feeds)},
                              rounds=20, warmup_rounds=2, budget_seconds=60)
    run.timings["optimized"].median, run.paired_ratio("original", "optimized")
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` rotated left by ``round_index``: the order candidates run in during that round."""
    shift = round_index % len(names) if names else 0
    return list(names[shift:]) + list(names[:shift])


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-round samples of one candidate, in seconds per call."""

    name: str
    samples: tuple[float, ...]
    calls_per_round: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else math.nan

    @property
    def minimum(self) -> float:
        return min(self.samples) if self.samples else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "p90_s": self.p90, "mean_s": self.mean, "min_s": self.minimum,
                "calls_per_round": self.calls_per_round, "samples_s": list(self.samples)}


@dataclasses.dataclass(frozen=True)
class InterleavedRun:
    """The result of ``measure_interleaved``: one ``Timing`` per candidate, all with the same rounds."""

    timings: dict[str, Timing]
    rounds: int
    warmup_rounds: int
    seconds: float
    stopped_by_budget: bool

    def paired_ratio(self, reference: str, candidate: str) -> float:
        """Median over rounds of reference_time / candidate_time (> 1: the candidate is faster)."""
        pairs = zip(self.timings[reference].samples, self.timings[candidate].samples, strict=True)
        ratios = [ref / cand for ref, cand in pairs if cand > 0]
        return statistics.median(ratios) if ratios else math.nan

    def ratio_of_medians(self, reference: str, candidate: str) -> float:
        cand = self.timings[candidate].median
        return self.timings[reference].median / cand if cand > 0 else math.nan

    def to_dict(self, reference: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {
            "rounds": self.rounds, "warmup_rounds": self.warmup_rounds, "seconds": self.seconds,
            "stopped_by_budget": self.stopped_by_budget,
            "timings": {name: timing.to_dict() for name, timing in self.timings.items()},
        }
        if reference is not None:
            result["paired_ratio_vs_" + reference] = {
                name: self.paired_ratio(reference, name) for name in self.timings if name != reference}
            result["ratio_of_medians_vs_" + reference] = {
                name: self.ratio_of_medians(reference, name) for name in self.timings if name != reference}
        return result


def calls_for(seconds_per_call: float, min_block_seconds: float, max_calls: int = 10_000) -> int:
    """How many back-to-back calls make a block of at least ``min_block_seconds``."""
    if seconds_per_call <= 0:
        return max_calls
    return max(1, min(max_calls, math.ceil(min_block_seconds / seconds_per_call)))


def _time_block(fn: Callable[[], object], calls: int, clock: Callable[[], float]) -> float:
    start = clock()
    for _ in range(calls):
        fn()
    return (clock() - start) / calls


def measure_interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 20,
    warmup_rounds: int = 2,
    min_block_seconds: float = 0.01,
    budget_seconds: float | None = None,
    min_rounds: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> InterleavedRun:
    """Time every candidate in ``rounds`` interleaved, rotated rounds after ``warmup_rounds`` of warm-up.

    The warm-up rounds (not recorded) also estimate each candidate's time per call, which fixes its block
    length (``calls_per_round``). With ``budget_seconds``, measurement stops after the first round that
    ends past the budget, but never before ``min_rounds`` rounds (``stopped_by_budget`` says so).
    The garbage collector is off while timing.
    """
    if not candidates:
        raise ValueError("no candidates to time")
    if rounds < 1 or min_rounds < 1:
        raise ValueError("rounds and min_rounds must be at least 1")
    names = list(candidates)
    start = clock()
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        per_call = {name: math.inf for name in names}
        for warmup in range(max(1, warmup_rounds)):
            for name in rotated(names, warmup):
                per_call[name] = min(per_call[name], _time_block(candidates[name], 1, clock))
        calls = {name: calls_for(per_call[name], min_block_seconds) for name in names}
        samples: dict[str, list[float]] = {name: [] for name in names}
        measure_start = clock()
        stopped_by_budget = False
        for round_index in range(rounds):
            for name in rotated(names, round_index):
                samples[name].append(_time_block(candidates[name], calls[name], clock))
            done = round_index + 1
            if (budget_seconds is not None and done >= min_rounds and done < rounds
                    and clock() - measure_start > budget_seconds):
                stopped_by_budget = True
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    timings = {name: Timing(name, tuple(samples[name]), calls[name]) for name in names}
    return InterleavedRun(timings, len(samples[names[0]]), max(1, warmup_rounds), clock() - start,
                          stopped_by_budget)


def time_interleaved_once(
    actions: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run each action once per round in rotated order and time each call; for expensive one-shot actions
    such as creating a session, where a warm-up makes no sense. Returns the times per action and the value
    each action returned in the last round (so a session created while being timed can be kept)."""
    names = list(actions)
    times: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, Any] = {}
    for round_index in range(rounds):
        for name in rotated(names, round_index):
            last.pop(name, None)  # free the previous round's value before making a new one
            gc.collect()
            start = clock()
            value = actions[name]()
            times[name].append(clock() - start)
            last[name] = value
    return times, last
