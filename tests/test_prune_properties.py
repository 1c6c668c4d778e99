"""prune-channels on hypothesis-generated residual / concat / depthwise networks: removing the dead channels
(zero weights and bias, see ``prune_nets``) changes no output, and all of them, only them, are removed.

A network is a chain of drawn blocks over 4-8 channels: a Conv+Relu, a residual block (Conv, Relu, Conv whose
dead channels are those of the block input, Add, Relu), two Convs concatenated, a depthwise Conv, a
BatchNormalization; then GlobalAveragePool, Flatten and a Gemm. Dead channels of coupled producers (the two
sides of a residual Add) line up, so a coupled channel is dead exactly when all its members are. With
``scope=global`` and ``ratio`` = dead channels / prunable channels, l1 (write x read norms; 0 for a dead
channel) removes exactly the dead ones.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prune_nets import NetBuilder

import graphopt
from graphopt.analysis import infer_shapes
from graphopt.model import to_graph
from graphopt.pruning.groups import analyse
from graphopt.pruning.selection import channel_scores, group_scores
from graphopt.validate.numerics import run_model
from passes.prune_channels import PruneChannels

BLOCKS = ("conv", "residual", "concat", "depthwise", "batch_norm")


@st.composite
def networks(draw):
    net = NetBuilder(shape=(2, 4, 6, 6), seed=draw(st.integers(0, 2**16)))

    def dead_set(channels):
        return sorted(draw(st.sets(st.integers(0, channels - 1), max_size=channels - 1)))

    x, channels, dead = net.relu(net.conv("x", 4, 6, dead=[1, 4], name="stem")), 6, [1, 4]
    for block in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5)):
        if block == "conv":
            width = draw(st.sampled_from((4, 6, 8)))
            dead = dead_set(width)
            x, channels = net.relu(net.conv(x, channels, width, dead=dead)), width
        elif block == "residual":
            inner = net.relu(net.conv(x, channels, channels, dead=dead_set(channels)))
            x = net.relu(net.op("Add", [net.conv(inner, channels, channels, dead=dead), x]))
        elif block == "concat":
            widths = draw(st.sampled_from((2, 4))), draw(st.sampled_from((2, 4)))
            deads = dead_set(widths[0]), dead_set(widths[1])
            parts = [net.relu(net.conv(x, channels, w, dead=d)) for w, d in zip(widths, deads, strict=True)]
            x, channels = net.op("Concat", parts, axis=1), sum(widths)
            dead = deads[0] + [widths[0] + d for d in deads[1]]
        elif block == "depthwise":
            x = net.relu(net.depthwise(x, channels, dead=dead))
        else:
            x = net.batch_norm(x, channels, dead=dead)
    out = net.gemm(net.op("Flatten", [net.op("GlobalAveragePool", [x])]), channels, 3, name="head")
    return net, net.model(out)


def dead_and_prunable(model) -> tuple[int, int]:
    graph = to_graph(model)
    graph.toposort()
    infer_shapes(graph)
    analysis = analyse(graph)
    scores = channel_scores(analysis, "l1", graph, None)
    ranked = [group_scores(g, scores) for g in analysis.groups if not g.blocked]
    return sum(int((s == 0).sum()) for s in ranked), sum(len(s) for s in ranked)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=networks())
def test_dead_channels_go_and_outputs_stay(case):
    net, model = case
    dead, prunable = dead_and_prunable(model)
    assert dead >= 2  # the stem's two dead channels at least
    result = graphopt.optimize(model, passes=PruneChannels(ratio=dead / prunable, scope="global", round_to=1,
                                                           max_group_ratio=1.0), check_changed=True)
    record = next(r for r in result.report.passes if r.name == "prune-channels")
    assert record.result.stats["channels.removed"] == dead
    feeds = net.feeds()
    expected, actual = run_model(model, feeds), run_model(result.model, feeds)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5)
