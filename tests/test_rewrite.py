"""graphopt.rewrite: reading constants without keeping what was decoded, and letting go of unread ones."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphopt.model import to_graph
from graphopt.rewrite import constant_array, plain_raw_data, release_values

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,
    np.array([1.5, -0.25, np.nan], dtype=np.float16),
    np.array([True, False, True]),
    np.array(7, dtype=np.int64),
    np.zeros((0, 3), dtype=np.float64),
    np.array([b"a", b"bc"], dtype=object),
    np.array([-8, 7, 0], dtype=ml_dtypes.int4),
    np.array([0.5, -2, 1], dtype=ml_dtypes.bfloat16),
]


def _constant(tensor: onnx.TensorProto) -> gs.Constant:
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", [tensor.name], ["y"])], "g", [],
        [helper.make_tensor_value_info("y", tensor.data_type, None)], [tensor]))
    return to_graph(model).nodes[0].inputs[0]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda array: f"{array.dtype}{list(array.shape)}")
def test_constant_array_is_what_gs_decodes_and_is_not_kept(array):
    constant = _constant(numpy_helper.from_array(array, "w"))
    values = constant_array(constant)
    assert isinstance(constant._values, LazyValues)  # nothing cached in the constant
    expected = constant.values
    assert values.dtype == expected.dtype and values.shape == expected.shape
    if values.dtype == object:
        assert values.tolist() == expected.tolist()
    else:
        assert values.tobytes() == expected.tobytes()


def test_plain_raw_data_only_where_the_bytes_are_the_decoded_values():
    assert plain_raw_data(numpy_helper.from_array(np.ones(3, np.float32))) is not None
    assert plain_raw_data(helper.make_tensor("t", onnx.TensorProto.FLOAT, [3], [1, 2, 3])) is None  # float_data
    assert plain_raw_data(numpy_helper.from_array(np.array([1, -1], dtype=ml_dtypes.int4))) is None  # packed
    short = numpy_helper.from_array(np.ones(3, np.float32))
    short.raw_data = short.raw_data[:8]
    assert plain_raw_data(short) is None


@pytest.mark.parametrize("values", ["lazy", "array"])
def test_released_values_keep_type_and_shape_and_cannot_be_read(values):
    constant = _constant(numpy_helper.from_array(np.arange(6, dtype=np.float16).reshape(2, 3), "w"))
    if values == "array":
        constant.values = np.array(constant.values)
    release_values(constant)
    assert not constant._values.tensor.HasField("raw_data")
    assert constant.dtype == np.float16 and tuple(constant.shape) == (2, 3)
    with pytest.raises(ValueError):
        constant.values  # noqa: B018


def test_string_values_are_left_to_the_collector():
    constant = _constant(numpy_helper.from_array(np.array([b"a", b"b"], dtype=object), "s"))
    constant.values = np.array(constant.values)
    before = constant.values
    release_values(constant)
    assert constant.values is before
