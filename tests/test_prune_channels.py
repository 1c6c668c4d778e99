"""prune-channels: every coupling rule exactly (dead channels removed, outputs identical), the declines with
their reasons, the options, reconstruction, and bad input at the CLI.

Dead channels (``prune_nets``) are zero everywhere, so removing them must change no output; l1 ranks them
first (their weights are zero), and the ratio is chosen so that exactly they go.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import total_stats
from prune_nets import NetBuilder

import graphopt
from graphopt.cli import main
from graphopt.inspection import count_parameters
from graphopt.validate.numerics import run_model
from passes.prune_channels import PruneChannels


def prune(model, data=None, **options):
    options = {"criterion": "l1", "scope": "local", "round_to": 1, **options}
    result = graphopt.optimize(model, passes=PruneChannels(**options), data=data, check_changed=True)
    onnx.checker.check_model(result.model, full_check=True)
    record = next(r for r in result.report.passes if r.name == "prune-channels")
    return result.model, total_stats(result.report), [str(d) for d in record.result.diagnostics]


def assert_same_outputs(original, pruned, feeds, atol=1e-5):
    expected, actual = run_model(original, feeds), run_model(pruned, feeds)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert expected[name].shape == actual[name].shape
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=atol)


def weight_shapes(model):
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return {n.name: inits.get(n.input[1]) for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose",
                                                                                     "Gemm", "MatMul")}


def exact(net, output, ratio, expected_shapes=None, **options):
    model = net.model(output)
    pruned, stats, diagnostics = prune(model, ratio=ratio, **options)
    assert_same_outputs(model, pruned, net.feeds())
    assert count_parameters(pruned) < count_parameters(model)
    if expected_shapes:
        shapes = weight_shapes(pruned)
        assert {k: shapes[k] for k in expected_shapes} == expected_shapes
    return pruned, stats, diagnostics


# ---------------------------------------------------------------------------------------------------------
# Coupling rules, exactly


def test_chain_through_relu_and_batch_norm():
    net = NetBuilder()
    h = net.conv("x", 4, 8, dead=[1, 5], name="a", bias=False)
    h = net.relu(net.batch_norm(h, 8, dead=[1, 5]))
    out = net.conv(h, 8, 3, name="b")
    _, stats, _ = exact(net, out, 0.25, {"a": (6, 4, 3, 3), "b": (3, 6, 3, 3)})
    assert stats["channels.removed"] == 2 and stats["groups.pruned"] == 1


def test_residual_add_prunes_coupled_producers_alike():
    net = NetBuilder()
    stem = net.relu(net.conv("x", 4, 8, dead=[0, 3], name="stem"))
    h = net.relu(net.conv(stem, 8, 8, dead=[2, 7], name="inner"))
    h = net.conv(h, 8, 8, dead=[0, 3], name="back")
    out = net.conv(net.relu(net.op("Add", [h, stem])), 8, 2, name="head")
    _, stats, _ = exact(net, out, 0.25, {"stem": (6, 4, 3, 3), "back": (6, 6, 3, 3), "head": (2, 6, 3, 3)})
    assert stats["groups.pruned"] == 2 and stats["channels.removed"] == 4  # {stem, back} coupled; inner alone


def test_residual_add_with_one_live_member_keeps_the_channel():
    """A channel dead in one coupled producer but live in the other must stay (it is not zero after Add)."""
    net = NetBuilder()
    stem = net.conv("x", 4, 4, dead=[1], name="stem")
    other = net.conv("x", 4, 4, dead=[2], name="other")
    out = net.conv(net.op("Add", [stem, other]), 4, 2, name="head")
    model = net.model(out)
    pruned, stats, _ = prune(model, ratio=0.25)
    assert weight_shapes(pruned)["stem"] == (3, 4, 3, 3) and weight_shapes(pruned)["other"] == (3, 4, 3, 3)
    assert stats["channels.removed"] == 1  # one coupled channel goes, whichever has the least l1 sum


def test_concat_maps_offsets_to_each_producer():
    net = NetBuilder()
    a = net.relu(net.conv("x", 4, 4, dead=[1, 2], name="a"))
    b = net.relu(net.conv("x", 4, 6, dead=[0, 4, 5], name="b"))
    out = net.conv(net.op("Concat", [a, b], axis=1), 10, 2, name="c")
    exact(net, out, 0.5, {"a": (2, 4, 3, 3), "b": (3, 4, 3, 3), "c": (2, 5, 3, 3)})


def test_depthwise_conv_shrinks_with_its_input():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, dead=[2, 6], name="expand"))
    h = net.relu(net.depthwise(h, 8, dead=[2, 6]))
    out = net.conv(h, 8, 4, k=1, name="project")
    pruned, _, _ = exact(net, out, 0.25, {"expand": (6, 4, 3, 3), "project": (4, 6, 1, 1)})
    depthwise = next(n for n in pruned.graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i > 1 for a in n.attribute))
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 6


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_flatten_into_gemm_removes_whole_blocks(flatten):
    net = NetBuilder(shape=(2, 3, 6, 6))
    h = net.op("MaxPool", [net.relu(net.conv("x", 3, 4, dead=[1], name="conv"))], kernel_shape=[2, 2],
               strides=[2, 2])
    if flatten == "Flatten":
        flat = net.op("Flatten", [h], axis=1)
    else:
        flat = net.op("Reshape", [h, net.const(np.array([-1, 36], np.int64), "shape")])
    out = net.gemm(flat, 36, 5, name="fc")
    exact(net, out, 0.25, {"conv": (3, 3, 3, 3), "fc": (5, 27)})


def test_reshape_merging_spatial_dims_keeps_the_channel_axis():
    net = NetBuilder(shape=(2, 3, 6, 6))
    h = net.relu(net.conv("x", 3, 4, dead=[2], name="conv"))
    h = net.op("Reshape", [h, net.const(np.array([0, 4, 36], np.int64), "shape")])
    h = net.op("Transpose", [h], perm=[0, 2, 1])
    out = net.matmul(h, 4, 5, name="mm")
    exact(net, out, 0.25, {"conv": (3, 3, 3, 3), "mm": (3, 5)})


def test_global_pool_flatten_gemm_and_gemm_chain():
    net = NetBuilder()
    h = net.op("GlobalAveragePool", [net.relu(net.conv("x", 4, 8, dead=[0, 7], name="conv"))])
    h = net.relu(net.gemm(net.op("Flatten", [h]), 8, 6, dead=[3], name="fc1", trans_b=0))
    out = net.gemm(h, 6, 3, name="fc2")
    exact(net, out, 0.25, {"conv": (6, 4, 3, 3), "fc1": (6, 5), "fc2": (3, 5)})


def test_split_on_channels_gets_new_sizes():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, dead=[1, 6], name="conv"))
    left, right = net.op("Split", [h, net.const(np.array([4, 4], np.int64), "split")], outputs=2, axis=1)
    out = net.op("Add", [net.conv(left, 4, 2, name="l"), net.conv(right, 4, 2, name="r")])
    exact(net, out, 0.25, {"conv": (6, 4, 3, 3), "l": (2, 3, 3, 3), "r": (2, 3, 3, 3)})


def test_slice_on_channels_gets_new_bounds():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, dead=[3, 4], name="conv"))
    s = net.op("Slice", [h, net.const(np.array([2], np.int64)), net.const(np.array([6], np.int64)),
                         net.const(np.array([1], np.int64))])
    out = net.conv(s, 4, 2, name="after")
    # channels 0, 1, 6, 7 are read by nobody (l1 scores them 0), 3 and 4 are dead: 6 of 8 go, exactly
    exact(net, out, 0.75, {"conv": (2, 4, 3, 3), "after": (2, 2, 3, 3)})


def test_per_channel_constants_are_sliced_and_broadcast_ones_left():
    net = NetBuilder()
    h = net.conv("x", 4, 6, dead=[4], name="conv")
    scale = net.rng.uniform(0.5, 2, (1, 6, 1, 1)).astype(np.float32)
    shift = net.rng.standard_normal((6, 1, 1)).astype(np.float32)
    shift[4] = 0
    h = net.op("Add", [net.op("Mul", [h, net.const(scale)]), net.const(shift)])
    h = net.op("Mul", [h, net.const(np.float32(2.0))])
    out = net.conv(net.relu(h), 6, 2, name="after")
    exact(net, out, 1 / 6, {"conv": (5, 4, 3, 3), "after": (2, 5, 3, 3)})


def test_matmul_chain_on_the_last_axis():
    net = NetBuilder(shape=(2, 5, 8))
    h = net.relu(net.matmul("x", 8, 16, dead=[0, 5, 9, 15], name="up"))
    out = net.matmul(h, 16, 4, name="down")
    exact(net, out, 0.25, {"up": (8, 12), "down": (12, 4)})


def test_transpose_to_channels_last_then_matmul():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 6, dead=[2, 3], name="conv"))
    out = net.matmul(net.op("Transpose", [h], perm=[0, 2, 3, 1]), 6, 3, name="mm")
    exact(net, out, 1 / 3, {"conv": (4, 4, 3, 3), "mm": (4, 3)})


def test_conv_transpose_as_producer_and_consumer():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 6, dead=[1, 4], name="conv"))
    h = net.relu(net.conv_transpose(h, 6, 4, dead=[0], name="up"))
    out = net.conv(h, 4, 2, name="after")
    exact(net, out, 0.25, {"conv": (5, 4, 3, 3), "up": (5, 3, 2, 2), "after": (2, 3, 3, 3)}, scope="local")


def test_resize_pad_and_pooling_keep_channels():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, dead=[3, 4], name="conv"))
    h = net.op("Resize", [h, "", net.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    h = net.op("Pad", [h, net.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    h = net.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    out = net.conv(h, 8, 2, name="after")
    exact(net, out, 0.25, {"conv": (6, 4, 3, 3), "after": (2, 6, 3, 3)})


def test_global_scope_compares_layers_of_different_scale():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, dead=[1, 2], name="small", scale=0.01))
    h = net.relu(net.conv(h, 8, 8, dead=[5, 6], name="large", scale=10.0))
    out = net.conv(h, 8, 2, name="head")
    exact(net, out, 0.25, {"small": (6, 4, 3, 3), "large": (6, 6, 3, 3)}, scope="global")


def test_activation_criterion_ranks_dead_channels_first():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, dead=[0, 4], name="a"))
    out = net.conv(h, 8, 2, name="b")
    model = net.model(out)
    pruned, _, _ = prune(model, data=net.feeds(16), ratio=0.25, criterion="activation", reconstruct="false")
    assert_same_outputs(model, pruned, net.feeds())
    assert weight_shapes(pruned)["a"] == (6, 4, 3, 3)


def test_bn_scale_criterion_uses_gamma_and_declines_without_batch_norm():
    net = NetBuilder()
    h = net.relu(net.batch_norm(net.conv("x", 4, 8, name="with_bn", bias=False), 8))
    out = net.conv(net.relu(net.conv(h, 8, 8, name="without_bn")), 8, 2, name="head")
    model = net.model(out)
    pruned, stats, diagnostics = prune(model, ratio=0.5, criterion="bn-scale")
    bn_gamma = model.graph.node[1].input[1]
    gammas = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == bn_gamma))
    assert weight_shapes(pruned)["with_bn"] == (4, 4, 3, 3)
    assert stats["skipped.group_no_score"] == 1 and weight_shapes(pruned)["without_bn"][0] == 8
    assert any("bn-scale" in d and "without_bn" in d for d in diagnostics)
    kept = weight_shapes(pruned)["without_bn"][1]
    assert kept == 4 and len(gammas) == 8


@pytest.mark.parametrize(("ratio", "round_to", "min_channels", "kept"),
                         [(0.5, 1, 1, 8), (0.5, 3, 1, 9), (0.9, 1, 5, 5), (0.95, 4, 1, 4)])
def test_round_to_and_min_channels(ratio, round_to, min_channels, kept):
    net = NetBuilder()
    out = net.conv(net.relu(net.conv("x", 4, 16, name="a")), 16, 2, name="b")
    pruned, _, _ = prune(net.model(out), ratio=ratio, round_to=round_to, min_channels=min_channels)
    assert weight_shapes(pruned)["a"][0] == kept


def test_split_piece_never_becomes_empty():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 4, dead=[0, 1], name="conv"))
    left, right = net.op("Split", [h, net.const(np.array([2, 2], np.int64))], outputs=2, axis=1)
    out = net.op("Add", [net.conv(left, 2, 2, name="l"), net.conv(right, 2, 2, name="r")])
    model = net.model(out)
    pruned, _, _ = prune(model, ratio=0.5)
    assert weight_shapes(pruned)["l"][1] == 1 and weight_shapes(pruned)["r"][1] == 2  # one dead channel restored
    assert_same_outputs(model, pruned, net.feeds())  # the channel kept in the left piece is a dead one


# ---------------------------------------------------------------------------------------------------------
# Declines, with reasons


def _declined(model, reason_part, **options):
    result = graphopt.optimize(model, passes=PruneChannels(ratio=0.5, round_to=1, **options), check_changed=True)
    record = next(r for r in result.report.passes if r.name == "prune-channels")
    messages = [str(d) for d in record.result.diagnostics]
    assert any(reason_part in m for m in messages), messages
    return result, record


def test_channel_shuffle_is_detected_and_declined():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, name="before"))
    h = net.op("Reshape", [h, net.const(np.array([2, 2, 4, 8, 8], np.int64))])
    h = net.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    h = net.op("Reshape", [h, net.const(np.array([2, 8, 8, 8], np.int64))])
    out = net.conv(h, 8, 2, name="after")
    model = net.model(out)
    result, record = _declined(model, "splits, moves or mixes the channel axis")
    assert not record.result.changed and record.result.stats["skipped.group_blocked"] == 2
    assert_same_outputs(model, result.model, net.feeds())


def test_graph_output_carrying_channels_blocks_its_group():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, name="a"))
    out = net.conv(h, 8, 2, name="b")
    result, _ = _declined(net.model(out, h), f"graph output '{h}' carries its channels")
    assert weight_shapes(result.model)["a"] == (8, 4, 3, 3)


def test_op_without_a_rule_blocks():
    net = NetBuilder()
    h = net.op("LRN", [net.relu(net.conv("x", 4, 8, name="a"))], size=3)
    _declined(net.model(net.conv(h, 8, 2, name="b")), "LRN")


def test_grouped_conv_keeps_its_groups_equal():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, dead=[1, 2, 5, 6], name="a"))  # two dead channels in each group's input
    h = net.relu(net.conv(h, 8, 4, group=2, dead=[0, 2], name="grouped"))  # one dead output per group
    out = net.conv(h, 4, 2, name="head")
    pruned, _, _ = exact(net, out, 0.5, {"a": (4, 4, 3, 3), "grouped": (2, 2, 3, 3), "head": (2, 2, 3, 3)})
    grouped = next(n for n in pruned.graph.node if n.name == "grouped")
    assert next(a.i for a in grouped.attribute if a.name == "group") == 2


def test_grouped_conv_restores_channels_to_balance_its_groups():
    """Both dead channels feed group 0: removing them alone would leave the groups unequal, so group 0 keeps
    its most important removed channels until it has as many as group 1 (here: everything stays)."""
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, dead=[0, 1], name="a"))
    model = net.model(net.conv(h, 8, 4, group=2, name="grouped"))
    pruned, stats, _ = prune(model, ratio=0.25)
    assert weight_shapes(pruned)["a"] == (8, 4, 3, 3) and "channels.removed" not in stats
    assert stats["skipped.group_constraints"] == 1


def test_grouped_conv_transpose_blocks():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, name="a"))
    w = net.const(net.weights((8, 2, 2, 2)), "w")
    _declined(net.model(net.op("ConvTranspose", [h, w], group=2, name="up")), "ConvTranspose 'up' with group=2")


def test_excluded_producer_is_not_pruned():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, name="a"))
    result, record = _declined(net.model(net.conv(h, 8, 2, name="b")), "excluded: a", exclude=["a"])
    assert record.result.stats["skipped.group_excluded"] == 1 and not record.result.changed


def test_tensor_read_inside_a_subgraph_blocks():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, name="a"))
    branch = onnx.helper.make_graph([onnx.helper.make_node("Neg", [h], ["neg"])], "branch", [],
                                    [onnx.helper.make_tensor_value_info("neg", onnx.TensorProto.FLOAT, None)])
    cond = net.const(np.array(True))
    out = net.op("If", [cond], then_branch=branch, else_branch=branch)
    _declined(net.model(net.conv(h, 8, 2, name="b"), out), "a subgraph reads")


def test_ratio_zero_changes_nothing():
    net = NetBuilder()
    model = net.model(net.conv(net.relu(net.conv("x", 4, 8, dead=[1])), 8, 2))
    _, stats, _ = prune(model, ratio=0.0)
    assert stats == {"skipped.ratio_zero": 1}


# ---------------------------------------------------------------------------------------------------------
# Reconstruction


def _live_net():
    net = NetBuilder(shape=(4, 4, 8, 8), seed=3)
    h = net.relu(net.conv("x", 4, 12, name="a"))
    h = net.relu(net.conv(h, 12, 12, name="b"))
    h = net.op("Flatten", [net.op("GlobalAveragePool", [h])])
    return net, net.model(net.gemm(h, 12, 3, name="fc"))


def _relative_error(model, pruned, feeds):
    expected, actual = run_model(model, feeds), run_model(pruned, feeds)
    (name,) = expected
    return float(np.linalg.norm(actual[name] - expected[name]) / np.linalg.norm(expected[name]))


def test_reconstruction_brings_outputs_back_towards_the_original():
    net, model = _live_net()
    calibration, held_out = net.feeds(128, seed=5), net.feeds(64, seed=9)
    plain, _, _ = prune(model, ratio=0.5, reconstruct="false")
    refit, stats, _ = prune(model, data=calibration, ratio=0.5)
    assert stats["rewrites.reconstructed"] == 2  # b (lost inputs from a) and fc (from b)
    assert weight_shapes(refit) == weight_shapes(plain)
    assert _relative_error(model, refit, held_out) < 0.5 * _relative_error(model, plain, held_out)


def test_reconstruction_of_dead_channels_keeps_outputs_without_ridge():
    """Re-fit by least squares finds the weights back exactly when nothing was lost: the consumer b, and the
    depthwise Conv in between, fitted per channel."""
    net = NetBuilder(shape=(4, 4, 8, 8))
    h = net.relu(net.conv("x", 4, 8, dead=[2, 5], name="a"))
    h = net.relu(net.depthwise(h, 8, dead=[2, 5]))
    model = net.model(net.conv(h, 8, 3, name="b"))
    pruned, stats, _ = prune(model, data=net.feeds(64, seed=4), ratio=0.25, ridge=0.0)
    assert stats["rewrites.reconstructed"] == 2
    assert_same_outputs(model, pruned, net.feeds(), atol=1e-4)


def test_reconstruction_adds_a_bias_to_a_conv_without_one():
    net = NetBuilder(shape=(4, 4, 8, 8))
    h = net.relu(net.conv("x", 4, 8, name="a"))
    model = net.model(net.conv(h, 8, 3, name="b", bias=False))
    pruned, _, _ = prune(model, data=net.feeds(64), ratio=0.5)
    conv_b = next(n for n in pruned.graph.node if n.name == "b")
    assert len(conv_b.input) == 3


# ---------------------------------------------------------------------------------------------------------
# Bad input at the CLI: one line, exit 2, nothing written


@pytest.mark.parametrize(("pipeline", "message"), [
    ("prune-channels(ratio=1.0)", "must be in [0, 1)"),
    ("prune-channels(ratio=-0.1)", "ratio"),
    ("prune-channels(criterion=taylor)", "criterion"),
    ("prune-channels(reconstruct=true)", "reconstruct=true needs calibration data"),
    ("prune-channels(criterion=activation)", "criterion=activation needs calibration data"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, pipeline, message):
    net = NetBuilder()
    source = tmp_path / "in.onnx"
    onnx.save(net.model(net.conv(net.relu(net.conv("x", 4, 8)), 8, 2)), source)
    target = tmp_path / "out.onnx"
    assert main(["optimize", str(source), str(target), "--passes", pipeline]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not target.exists()


# ---------------------------------------------------------------------------------------------------------
# Sensitivity dry run


def _sensitivity_net():
    net = NetBuilder(shape=(4, 4, 8, 8))
    h = net.relu(net.conv("x", 4, 8, dead=[1, 2, 3, 4], name="mostly_dead"))
    h = net.relu(net.conv(h, 8, 8, name="live"))
    h = net.op("Flatten", [net.op("GlobalAveragePool", [h])])
    return net, net.model(net.gemm(h, 8, 3, name="fc"))


def test_sensitivity_prunes_each_group_alone_and_measures_it(tmp_path, capsys):
    net, model = _sensitivity_net()
    source, data, report = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "s.json"
    onnx.save(model, source)
    feeds = net.feeds(32, seed=2)
    labels = run_model(model, feeds)[model.graph.output[0].name].argmax(axis=1)
    np.savez(data, x=feeds["x"], label=labels)
    assert main(["prune-sensitivity", str(source), "--data", str(data), "--labels", "label", "--ratios",
                 "0.5,0.75", "--round-to", "1", "--json", str(report)]) == 0
    table = json.loads(report.read_text())
    assert table["schema"] == "graphopt.prune-sensitivity/1" and table["baseline_accuracy"] == 100.0
    groups = {tuple(g["producers"]): g for g in table["groups"]}
    dead, live = groups[("mostly_dead",)], groups[("live",)]
    assert groups[("fc",)]["declined"].startswith("graph output")
    # half of mostly_dead's channels are dead: removing them is free; 0.75 must cut a live one
    assert dead["cells"][0]["channels_removed"] == 4 and dead["cells"][0]["cosine"] == pytest.approx(1.0)
    assert dead["cells"][1]["cosine"] < 1.0 - 1e-6 and dead["cells"][0]["macs_ratio"] < 1.0
    assert live["cells"][0]["cosine"] < 1.0 - 1e-6
    assert "mostly_dead" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [(["--ratios", "0.5,1.5"], "--ratios"),
                                               (["--criterion", "taylor"], "--criterion"),
                                               (["--labels", "nope"], "no array 'nope'")])
def test_sensitivity_bad_options_exit_2(tmp_path, capsys, args, message):
    net, model = _sensitivity_net()
    source, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(model, source)
    np.savez(data, x=net.feeds(8)["x"])
    assert main(["prune-sensitivity", str(source), "--data", str(data), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_global_scope_never_removes_more_than_max_group_ratio_of_a_group():
    """Weights all alike tie every channel: without the cap the first groups would lose everything."""
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 10, name="a"))
    h = net.relu(net.conv(h, 10, 10, name="b"))
    model = net.model(net.conv(h, 10, 2, name="c"))
    for initializer in model.graph.initializer:
        if len(initializer.dims) == 4:
            initializer.CopyFrom(onnx.numpy_helper.from_array(
                np.full(tuple(initializer.dims), 0.02, np.float32), initializer.name))
    pruned, stats, _ = prune(model, ratio=0.5, scope="global", max_group_ratio=0.6)
    assert weight_shapes(pruned)["a"][0] == 4 and weight_shapes(pruned)["b"][0] == 6  # a at its cap, b takes the rest
    assert stats["channels.removed"] == 10


# ---------------------------------------------------------------------------------------------------------
# The onnx package's light models: shufflenet's channel shuffle is declined, resnet50 is pruned; both stay valid


@pytest.mark.parametrize(("name", "declined_because", "pruned"), [
    ("shufflenet", "splits, moves or mixes the channel axis", False),
    ("resnet50", "normalizes over the channel axis", True),
])
def test_light_models_are_pruned_or_declined_with_reasons(name, declined_because, pruned):
    light = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    folded = graphopt.optimize(str(light), passes="fold(max_growth=inf),lossless").model  # weights as initializers
    result = graphopt.optimize(folded, passes="prune-channels(ratio=0.5,round_to=1)")
    onnx.checker.check_model(result.model, full_check=True)
    record = next(r for r in result.report.passes if r.name == "prune-channels")
    assert any(declined_because in str(d) for d in record.result.diagnostics)
    assert (record.result.stats.get("groups.pruned", 0) > 0) == pruned
    feeds = {folded.graph.input[0].name: np.random.default_rng(0).standard_normal(
        [d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)}
    before, after = run_model(folded, feeds), run_model(result.model, feeds)
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    if not pruned:
        np.testing.assert_array_equal(next(iter(after.values())), next(iter(before.values())))


def test_squeeze_unsqueeze_and_reduction_over_other_axes_keep_channels():
    net = NetBuilder()
    h = net.relu(net.conv("x", 4, 8, dead=[0, 5], name="conv"))
    h = net.op("ReduceMean", [h], axes=[2], keepdims=0)  # [N, 8, W]
    h = net.op("Unsqueeze", [h, net.const(np.array([0], np.int64))])  # [1, N, 8, W]
    h = net.op("Squeeze", [h, net.const(np.array([0], np.int64))])  # [N, 8, W]
    out = net.matmul(net.op("Transpose", [h], perm=[0, 2, 1]), 8, 3, name="mm")
    exact(net, out, 0.25, {"conv": (6, 4, 3, 3), "mm": (6, 3)})
