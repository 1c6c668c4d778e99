"""The sensitivity dry run: how much each channel group alone costs at several pruning ratios.

For every prunable group and every ratio, the model is pruned *in that group only* (``prune-channels`` with
``scope=local`` and every other group's producers excluded) and run on the data; against the unpruned
model's outputs on the same samples we report the cosine similarity and relative L2 error
``||y' - y|| / ||y||`` of the first output, and with labels the top-1 accuracy, plus the MACs removed. Groups
the analysis declines are listed with their reasons. Nothing is written: the table tells a user which
groups tolerate which ratios before choosing ``ratio``, ``exclude`` or per-model settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx

from graphopt.analysis import infer_shapes
from graphopt.data import Dataset
from graphopt.inspection import describe
from graphopt.model import to_graph
from graphopt.pruning.groups import analyse
from graphopt.validate.numerics import run_model

SCHEMA = "graphopt.prune-sensitivity/1"


@dataclasses.dataclass(frozen=True)
class Cell:
    ratio: float
    channels_removed: int
    macs_ratio: float
    cosine: float
    relative_error: float
    accuracy: float | None


@dataclasses.dataclass(frozen=True)
class GroupSensitivity:
    producers: tuple[str, ...]
    channels: int
    cells: tuple[Cell, ...] = ()
    declined: str | None = None


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    criterion: str
    reconstruct: bool
    samples: int
    baseline_accuracy: float | None
    groups: tuple[GroupSensitivity, ...]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}


def sensitivity(model: onnx.ModelProto, data: Dataset, ratios: Sequence[float] = (0.25, 0.5, 0.75),
                criterion: str = "l1", labels: np.ndarray | None = None, reconstruct: bool = False,
                samples: int = 256, round_to: int = 8) -> Sensitivity:
    """Prune each group alone at each of ``ratios`` and measure the damage on ``data`` (see the module)."""
    import graphopt  # the library API runs the pass; imported here because graphopt imports this package
    from passes.prune_channels import PruneChannels

    graph = to_graph(model)
    graph.toposort()
    infer_shapes(graph)
    groups = analyse(graph).groups
    feeds = data.head(samples)
    reference = _first_output(run_model(model, feeds))
    labels = None if labels is None else labels[:len(reference)]
    macs = describe(model).macs or 1
    producers = [node.node.name for group in groups for node in group.producers]
    results = []
    for group in groups:
        names = tuple(p.node.name for p in group.producers)
        if group.blocked or not all(names):
            reason = "; ".join(group.blocked) if group.blocked else "a producer has no node name"
            results.append(GroupSensitivity(names, len(group.channels), declined=reason))
            continue
        others = [name for name in producers if name not in names]
        cells = []
        for ratio in ratios:
            prune = PruneChannels(ratio=ratio, scope="local", criterion=criterion, exclude=others,
                                  reconstruct="true" if reconstruct else "false", samples=samples, round_to=round_to)
            result = graphopt.optimize(model, passes=prune, data=data if reconstruct or criterion == "activation"
                                       else None)
            stats = next(r.result.stats for r in result.report.passes if r.name == prune.name)
            output = _first_output(run_model(result.model, feeds))
            cells.append(Cell(ratio, int(stats.get("channels.removed", 0)), describe(result.model).macs / macs,
                              _cosine(reference, output), _relative_error(reference, output),
                              _accuracy(output, labels)))
        results.append(GroupSensitivity(names, len(group.channels), tuple(cells)))
    return Sensitivity(criterion, reconstruct, len(reference), _accuracy(reference, labels), tuple(results))


def _first_output(outputs: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(outputs.values())).astype(np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a.ravel() @ b.ravel() / denominator) if denominator else float(np.array_equal(a, b))


def _relative_error(reference: np.ndarray, output: np.ndarray) -> float:
    scale = np.linalg.norm(reference)
    return float(np.linalg.norm(output - reference) / scale) if scale else float(np.linalg.norm(output))


def _accuracy(output: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or output.ndim != 2:
        return None
    return float((output.argmax(axis=1) == labels).mean() * 100)
