"""Calibration and evaluation data: every accepted source, the checks against a model (each naming the
input), extras kept apart, and synthetic datasets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse_model

from graphopt.data import Dataset, load_data, model_inputs, synthetic_dataset
from graphopt.errors import DataError

MODEL_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N,4] x, int64[N,2] ids, bool[3] flags) => (float[N,4] y) {
    y = Relu(x)
}
"""


@pytest.fixture
def model() -> onnx.ModelProto:
    return parse_model(MODEL_TEXT)


def good_arrays(samples: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((samples, 4)).astype(np.float32),
        "ids": rng.integers(0, 9, size=(samples, 2)).astype(np.int64),
        "flags": np.array([True, False, True]),
    }


def assert_arrays_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


# ---------------------------------------------------------------------------------------------------------
# Sources


def test_load_npz_file(tmp_path, model):
    arrays = good_arrays()
    np.savez(tmp_path / "calib.npz", **arrays)
    dataset = load_data(tmp_path / "calib.npz", model)
    assert_arrays_equal(dataset.arrays, arrays)
    assert dataset.extras == {}
    assert dataset.synthetic is False
    assert load_data(str(tmp_path / "calib.npz")).arrays.keys() == arrays.keys()


def test_load_folder_of_npy_named_after_inputs(tmp_path, model):
    arrays = good_arrays()
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    (tmp_path / "README.txt").write_text("ignored: not .npy")
    assert_arrays_equal(load_data(tmp_path, model).arrays, arrays)


def test_load_folder_of_npz_concatenates_in_name_order(tmp_path):
    first, second = {"x": np.zeros((2, 4), np.float32)}, {"x": np.ones((3, 4), np.float32)}
    np.savez(tmp_path / "b.npz", **second)
    np.savez(tmp_path / "a.npz", **first)
    dataset = load_data(tmp_path)
    assert dataset.arrays["x"].shape == (5, 4)
    np.testing.assert_array_equal(dataset.arrays["x"], np.concatenate([first["x"], second["x"]]))


def test_load_mapping_of_arrays(model):
    arrays = good_arrays()
    dataset = load_data({**arrays, "x": arrays["x"].tolist()}, model=None)
    assert dataset.arrays["x"].dtype == np.float64  # lists become arrays; no model, no check
    assert_arrays_equal(load_data(arrays, model).arrays, arrays)


def test_load_list_of_batches_concatenates_them():
    batches = [good_arrays(2, seed=1), good_arrays(3, seed=2)]
    for batch in batches:
        del batch["flags"]
    dataset = load_data(batches)
    assert len(dataset) == 5
    np.testing.assert_array_equal(dataset.arrays["x"], np.concatenate([b["x"] for b in batches]))
    np.testing.assert_array_equal(dataset.arrays["ids"], np.concatenate([b["ids"] for b in batches]))


def test_load_generator_of_batches():
    dataset = load_data({"x": np.full((1, 4), i, np.float32)} for i in range(3))
    np.testing.assert_array_equal(dataset.arrays["x"][:, 0], [0, 1, 2])


def test_load_calibration_data_reader():
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": np.full((2, 4), i, np.float32)} for i in range(3)])

        def get_next(self):
            return next(self.batches, None)

    dataset = load_data(Reader())
    assert dataset.arrays["x"].shape == (6, 4)
    np.testing.assert_array_equal(dataset.arrays["x"][::2, 0], [0, 1, 2])


def test_load_object_with_get_next_only():
    class Reader:
        def __init__(self):
            self.left = 2

        def get_next(self):
            self.left -= 1
            return {"x": np.ones((1, 4), np.float32)} if self.left >= 0 else None

    assert len(load_data(Reader())) == 2


def test_dataset_is_returned_as_is_and_checked(model):
    dataset = Dataset(good_arrays())
    assert load_data(dataset) is dataset
    assert_arrays_equal(load_data(dataset, model).arrays, dataset.arrays)


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing.npz", "no such data file or folder"),
    (lambda tmp: tmp, "holds no .npz or .npy files"),
    (lambda tmp: (np.save(tmp / "x.npy", np.ones(3)), tmp / "x.npy")[1], "a single .npy does not say which input"),
    (lambda tmp: ((tmp / "bad.npz").write_bytes(b"not a zip"), tmp / "bad.npz")[1], "not a readable .npz/.npy file"),
])
def test_bad_data_paths_are_data_errors(tmp_path, make, message):
    with pytest.raises(DataError, match=message) as raised:
        load_data(make(tmp_path))
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(("source", "message"), [
    ([], "holds no samples"),
    ([{"x": np.ones((1, 4))}, {"y": np.ones((1, 4))}], "batches do not all hold the same arrays"),
    (42, "data must be a path, a mapping of arrays or an iterable of them, not int"),
])
def test_bad_data_objects_are_data_errors(source, message):
    with pytest.raises(DataError, match=message):
        load_data(source)


# ---------------------------------------------------------------------------------------------------------
# Checks against the model


@pytest.mark.parametrize(("change", "name", "message"), [
    (lambda a: a.pop("ids"), "ids", "data has no array for model input 'ids' (data has: flags, x)"),
    (lambda a: a.update(x=a["x"].astype(np.float64)), "x",
     "data for input 'x' is float64, the model expects float32"),
    (lambda a: a.update(ids=a["ids"].astype(np.int32)), "ids",
     "data for input 'ids' is int32, the model expects int64"),
    (lambda a: a.update(x=a["x"][:, :3]), "x", "data for input 'x' has shape [5, 3], the model expects [N, 4]"),
    (lambda a: a.update(x=a["x"][None]), "x", "data for input 'x' has shape [1, 5, 4], the model expects [N, 4]"),
    (lambda a: a.update(flags=np.ones(4, bool)), "flags",
     "data for input 'flags' has shape [4], the model expects [3]"),
    (lambda a: a["x"].__setitem__((2, 1), np.nan), "x", "data for input 'x' contains NaN or Inf"),
    (lambda a: a["x"].__setitem__((0, 0), -np.inf), "x", "data for input 'x' contains NaN or Inf"),
])
def test_data_that_does_not_fit_names_the_input(model, change, name, message):
    arrays = good_arrays()
    change(arrays)
    with pytest.raises(DataError) as raised:
        load_data(arrays, model)
    assert str(raised.value) == message
    assert f"'{name}'" in str(raised.value)
    assert raised.value.exit_code == 2


def test_any_batch_size_fits_a_symbolic_dimension(model):
    for samples in (1, 7):
        dataset = load_data(good_arrays(samples), model)
        assert dataset.arrays["x"].shape == (samples, 4) and dataset.arrays["ids"].shape == (samples, 2)


def test_extras_are_kept_apart_when_a_model_is_given(tmp_path, model):
    arrays = good_arrays()
    labels = np.arange(5)
    np.savez(tmp_path / "eval.npz", **arrays, label=labels)
    dataset = load_data(tmp_path / "eval.npz", model)
    assert sorted(dataset.arrays) == ["flags", "ids", "x"]
    assert sorted(dataset.extras) == ["label"]
    np.testing.assert_array_equal(dataset.extras["label"], labels)
    without_model = load_data(tmp_path / "eval.npz")
    assert "label" in without_model.arrays and without_model.extras == {}


def test_check_against_ignores_extra_arrays_but_still_checks_inputs(model):
    labels = np.arange(5)
    Dataset({"label": labels, **good_arrays()}).check_against(model)
    bad = {"label": labels, **good_arrays()}
    bad["x"] = bad["x"].astype(np.float64)
    with pytest.raises(DataError, match="data for input 'x' is float64"):
        Dataset(bad).check_against(model)


def test_initializer_inputs_of_old_models_need_no_data():
    old = parse_model("""
        <ir_version: 3, opset_import: ["" : 8]>
        agraph (float[2,4] x, float[4] w) => (float[2,4] y) <float[4] w = {1, 2, 3, 4}> { y = Add(x, w) }""")
    assert list(model_inputs(old)) == ["x"]
    dataset = load_data({"x": np.ones((2, 4), np.float32)}, old)
    assert list(dataset.arrays) == ["x"]


# ---------------------------------------------------------------------------------------------------------
# Dataset helpers


def test_batches_and_head():
    dataset = Dataset({"x": np.arange(10).reshape(5, 2)})
    sizes = [len(batch["x"]) for batch in dataset.batches(2)]
    assert sizes == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in dataset.batches(2)]), dataset.arrays["x"])
    np.testing.assert_array_equal(dataset.head(3)["x"], dataset.arrays["x"][:3])
    assert len(Dataset({})) == 0


# ---------------------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_dataset_follows_declared_shapes_and_types(model):
    dataset = synthetic_dataset(model, samples=6)
    assert dataset.synthetic is True
    assert {name: (a.shape, a.dtype) for name, a in dataset.arrays.items()} == {
        "x": ((6, 4), np.dtype(np.float32)),
        "ids": ((6, 2), np.dtype(np.int64)),
        "flags": ((3,), np.dtype(bool)),  # a fixed first dimension is kept
    }
    assert dataset.arrays["ids"].min() >= 0
    dataset.check_against(model)  # synthetic data fits the model it was made for


def test_synthetic_dataset_is_reproducible_by_seed(model):
    a, b, c = (synthetic_dataset(model, seed=seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(a.arrays["x"], b.arrays["x"])
    assert not np.array_equal(a.arrays["x"], c.arrays["x"])


def test_synthetic_dataset_takes_symbolic_dimensions_from_dims():
    model = parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[N,C,H] x) => (float[N,C,H] y) { y = Relu(x) }""")
    assert synthetic_dataset(model, samples=2, dims={"C": 3, "H": 5}).arrays["x"].shape == (2, 3, 5)
    assert synthetic_dataset(model, samples=2).arrays["x"].shape == (2, 1, 1)


def test_synthetic_dataset_refuses_types_it_cannot_make():
    model = parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (string[N] s) => (string[N] y) { y = Identity(s) }""")
    with pytest.raises(DataError, match="cannot make synthetic data"):
        synthetic_dataset(model)


def test_synthetic_dataset_of_a_model_with_a_scalar_input():
    model = parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float scale, float[N,4] x) => (float[N,4] y) { y = Mul(x, scale) }""")
    dataset = synthetic_dataset(model, samples=4)
    assert dataset.arrays["scale"].shape == ()
    assert len(dataset) == 4


SCALAR_INPUT = """
    <ir_version: 8, opset_import: ["" : 17]>
    agraph (float scale, float[N,4] x) => (float[N,4] y) { y = Mul(x, scale) }"""


def test_batches_with_a_scalar_input_keep_it_once():
    """An iterable of batches (a CalibrationDataReader) of a model with a scalar input, e.g. a Loop's trip
    count, the same in each batch: the scalar stays a scalar, the rest is stacked (np.concatenate of the
    rank-0 arrays used to raise a bare ValueError)."""
    batches = [{"scale": np.float32(2), "x": np.ones((2, 4), np.float32) * i} for i in range(3)]
    dataset = load_data(({k: np.asarray(v) for k, v in b.items()} for b in batches), parse_model(SCALAR_INPUT))
    assert dataset.arrays["scale"].shape == () and dataset.arrays["scale"] == 2
    assert dataset.arrays["x"].shape == (6, 4) and len(dataset) == 6


def test_batches_with_different_scalars_are_refused():
    batches = [{"scale": np.asarray(np.float32(s)), "x": np.ones((2, 4), np.float32)} for s in (1, 2)]
    with pytest.raises(DataError, match="'scale' is a scalar .* not the same scalar in every batch"):
        load_data(batches, parse_model(SCALAR_INPUT))


def test_batches_stop_after_the_limit_and_keep_scalars():
    dataset = Dataset({"x": np.arange(10, dtype=np.float32).reshape(10, 1), "n": np.array(3)})
    batches = list(dataset.batches(4, limit=6))
    assert [len(b["x"]) for b in batches] == [4, 2] and all(b["n"] == 3 for b in batches)
    assert np.concatenate([b["x"] for b in batches]).ravel().tolist() == [0, 1, 2, 3, 4, 5]
    assert [len(b["x"]) for b in dataset.batches(4)] == [4, 4, 2]
    assert [len(b["x"]) for b in dataset.batches(4, limit=50)] == [4, 4, 2]
