"""graphopt.quantize.space_to_depth: a strided Conv on few channels as SpaceToDepth + a stride-1 Conv computes
the same outputs, and the rewrite is declined where it does not apply."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest

from graphopt.quantize.space_to_depth import plan
from graphopt.validate.numerics import run_model


def conv_model(weight: np.ndarray, input_shape, **attrs) -> onnx.ModelProto:
    graph = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["y"], **attrs)], "conv",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, input_shape)],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(weight, "w")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def rewritten_model(rewrite, input_shape) -> onnx.ModelProto:
    nodes = [oh.make_node("SpaceToDepth", ["x"], ["z"], blocksize=rewrite.blocksize),
             oh.make_node("Conv", ["z", "w"], ["y"], pads=rewrite.pads, kernel_shape=rewrite.kernel_shape)]
    graph = oh.make_graph(nodes, "rewritten", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, input_shape)],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(rewrite.weight, "w")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@pytest.mark.parametrize(("channels", "kernel", "stride", "pads", "size"), [
    (3, 7, 2, [3, 3, 3, 3], 32),  # ResNet-50's stem
    (3, 3, 2, [1, 1, 1, 1], 16),  # MobileNet's
    (1, 3, 2, [1, 1, 1, 1], 16),
    (2, 3, 2, [1, 1, 1, 1], 12),
    (3, 3, 2, [0, 0, 0, 0], 16),
    (3, 4, 2, [1, 1, 1, 1], 16),
    (3, 5, 2, [2, 2, 2, 2], 10),
    (3, 3, 2, [1, 0, 0, 1], 14),  # asymmetric
    (3, 2, 2, [0, 0, 0, 0], 8),
    (3, 1, 2, [0, 0, 0, 0], 8),
    (5, 3, 2, [1, 1, 1, 1], 8),  # 5 channels: 20 after SpaceToDepth
])
def test_the_rewrite_computes_the_same_outputs(channels, kernel, stride, pads, size):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, channels, kernel, kernel)).astype(np.float32)
    x = rng.standard_normal((2, channels, size, size)).astype(np.float32)
    rewrite = plan(weight, [2, channels, size, size], [stride, stride], pads)
    assert rewrite is not None and rewrite.weight.shape[1] == channels * stride * stride
    expected = run_model(conv_model(weight, x.shape, strides=[stride, stride], pads=pads), {"x": x})["y"]
    actual = run_model(rewritten_model(rewrite, x.shape), {"x": x})["y"]
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert np.count_nonzero(rewrite.weight) == np.count_nonzero(weight)  # each weight once, the rest zeros


@pytest.mark.parametrize(("weight_shape", "input_shape", "strides", "group", "dilations"), [
    ((8, 4, 3, 3), [1, 4, 16, 16], [2, 2], 1, None),  # 4 channels: already fast
    ((8, 3, 3, 3), [1, 3, 16, 16], [1, 1], 1, None),  # stride 1: nothing to move into channels
    ((8, 3, 3, 3), [1, 3, 16, 16], [2, 1], 1, None),  # unequal strides
    ((8, 3, 3, 3), [1, 3, 15, 16], [2, 2], 1, None),  # odd height
    ((8, 3, 3, 3), [1, 3, "H", 16], [2, 2], 1, None),  # dynamic height
    ((8, 3, 3, 3), [1, 3, 16, 16], [2, 2], 1, [2, 2]),  # dilated
    ((8, 3, 3, 3), [1, 6, 16, 16], [2, 2], 2, None),  # grouped
    ((8, 3, 3, 3), [1, 3, 18, 18], [3, 3], 1, None),  # 3 x 9 = 27 channels: still no multiple of 4
    ((8, 3, 3, 3, 3), [1, 3, 16, 16, 16], [2, 2, 2], 1, None),  # 3-D
])
def test_the_rewrite_is_declined_where_it_does_not_apply(weight_shape, input_shape, strides, group, dilations):
    assert plan(np.ones(weight_shape, np.float32), input_shape, strides, None, group, dilations) is None
