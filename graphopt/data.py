"""Calibration and evaluation data: what ``--data`` and ``data=`` accept, checked against the model.

Sources:
- a ``.npz`` file: arrays keyed by input name, first axis = samples (other keys, e.g. ``label``, are
  kept as ``extras`` for accuracy checks);
- a folder of ``.npz`` files (each like the above, concatenated in name order) or ``.npy`` files named
  after the inputs (``input.npy``);
- in the library, a mapping of arrays, or any iterable of ``{input_name: array}`` batches (so
  onnxruntime's ``CalibrationDataReader`` objects work unchanged);
- ``synthetic_dataset(model)``: random inputs from the declared shapes and types, only when asked.

``check_against(model)`` raises ``DataError`` (exit 2) naming the input and what the model expects when
names, dtypes or shapes do not fit, and when the data holds NaN or Inf.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Union

import numpy as np
import onnx

from graphopt.errors import DataError, UsageError

DataSource = Union[str, os.PathLike, Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]], "Dataset"]


@dataclasses.dataclass
class Dataset:
    """Samples for the model's inputs, stacked on the first axis; ``extras`` holds non-input arrays."""

    arrays: dict[str, np.ndarray]
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    synthetic: bool = False

    def __len__(self) -> int:
        """Samples: the shortest first axis. Scalar (rank-0) inputs have no sample axis and do not count."""
        return min((len(a) for a in self.arrays.values() if a.ndim), default=0)

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches of at most ``batch_size`` samples, the first ``limit`` samples at most (scalar
        inputs go with every batch)."""
        end = len(self) if limit is None else min(len(self), limit)
        for start in range(0, end, batch_size):
            stop = start + batch_size if limit is None else min(start + batch_size, end)
            yield {name: array[start:stop] if array.ndim else array for name, array in self.arrays.items()}

    def head(self, count: int) -> dict[str, np.ndarray]:
        return {name: array[:count] if array.ndim else array for name, array in self.arrays.items()}

    def check_against(self, model: onnx.ModelProto) -> None:
        inputs = model_inputs(model)
        missing = [name for name in inputs if name not in self.arrays]
        if missing:
            raise DataError(f"data has no array for model input '{missing[0]}' "
                            f"(data has: {', '.join(sorted(self.arrays)) or 'nothing'})")
        for name, (dtype, shape) in inputs.items():
            array = self.arrays[name]
            if array.dtype != dtype:
                raise DataError(f"data for input '{name}' is {array.dtype}, the model expects {dtype}")
            if not _fits(array.shape, shape):
                raise DataError(f"data for input '{name}' has shape {list(array.shape)}, "
                                f"the model expects {_format_shape(shape)}")
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                raise DataError(f"data for input '{name}' contains NaN or Inf")


def model_inputs(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list[int | str | None]]]:
    """Real graph inputs (initializers excluded) -> (numpy dtype, declared shape)."""
    initializers = {i.name for i in model.graph.initializer}
    result = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
        result[value.name] = (np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)), dims)
    return result


def _fits(actual: tuple[int, ...], declared: list[int | str | None]) -> bool:
    return len(actual) == len(declared) and all(
        not isinstance(want, int) or want == got for got, want in zip(actual, declared, strict=False))


def _format_shape(shape: list[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def load_data(source: DataSource, model: onnx.ModelProto | None = None) -> Dataset:
    """A ``Dataset`` from any accepted source; checked against ``model`` when one is given."""
    dataset = _load(source)
    if model is not None:
        dataset = _split_extras(dataset, model)
        dataset.check_against(model)
    return dataset


def _load(source: Any) -> Dataset:
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _load_path(os.fspath(source))
    if isinstance(source, Mapping):
        return Dataset({name: np.asarray(array) for name, array in source.items()})
    return _concatenate([{k: np.asarray(v) for k, v in batch.items()} for batch in _iterate(source)], "iterable")


def _iterate(source: Any) -> Iterator[Mapping[str, np.ndarray]]:
    if hasattr(source, "get_next"):  # onnxruntime.quantization.CalibrationDataReader
        while (batch := source.get_next()) is not None:
            yield batch
        return
    try:
        yield from iter(source)
    except TypeError as error:
        raise DataError(f"data must be a path, a mapping of arrays or an iterable of them, "
                        f"not {type(source).__name__}") from error


def _load_path(path: str) -> Dataset:
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith((".npz", ".npy")))
        if not files:
            raise DataError(f"{path}: the folder holds no .npz or .npy files")
        if all(f.endswith(".npy") for f in files):
            return Dataset({f[:-4]: _read(os.path.join(path, f)) for f in files})
        return _concatenate([dict(_read(os.path.join(path, f))) for f in files if f.endswith(".npz")], path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such data file or folder")
    if path.endswith(".npy"):
        raise DataError(f"{path}: a single .npy does not say which input it is for; use a .npz keyed by "
                        f"input name, or a folder of <input name>.npy files")
    return Dataset(dict(_read(path)))


def _read(path: str) -> Any:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable .npz/.npy file ({error})") from error
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    return loaded


def _concatenate(batches: list[Mapping[str, np.ndarray]], name: str) -> Dataset:
    if not batches:
        raise DataError(f"{name}: holds no samples")
    keys = set(batches[0])
    if any(set(batch) != keys for batch in batches):
        raise DataError(f"{name}: batches do not all hold the same arrays")
    return Dataset({key: _join([batch[key] for batch in batches], key, name) for key in sorted(keys)})


def _join(arrays: list[np.ndarray], key: str, name: str) -> np.ndarray:
    """The batches' arrays of one input stacked on the sample axis. A scalar (rank-0) input, e.g. a Loop's
    trip count, has no sample axis: it is the same in every batch (see ``Dataset``), or the data is refused."""
    if any(array.ndim == 0 for array in arrays):
        if any(array.shape != () or array.dtype != arrays[0].dtype or array != arrays[0] for array in arrays):
            raise DataError(f"{name}: '{key}' is a scalar in some batch, and not the same scalar in every batch "
                            f"(a scalar input has no sample axis: it goes with every batch)")
        return arrays[0]
    return np.concatenate(arrays)


def _split_extras(dataset: Dataset, model: onnx.ModelProto) -> Dataset:
    inputs = model_inputs(model)
    arrays = {k: v for k, v in dataset.arrays.items() if k in inputs}
    extras = {**dataset.extras, **{k: v for k, v in dataset.arrays.items() if k not in inputs}}
    return Dataset(arrays, extras, dataset.synthetic)


SYNTHETIC_MAX_BYTES = 2**30  # random data larger than this per input is refused, not allocated


def synthetic_dataset(model: onnx.ModelProto, samples: int = 8, seed: int = 0,
                      dims: Mapping[str, int] | None = None,
                      shapes: Mapping[str, Sequence[int]] | None = None) -> Dataset:
    """Random inputs from the declared types and shapes: normal floats, small non-negative integers,
    booleans. Symbolic dimensions take their size from ``dims`` (default 1); the first axis is samples.
    ``shapes`` gives an input its whole shape instead. An input of more than ``SYNTHETIC_MAX_BYTES`` is a
    UsageError, raised before anything is allocated."""
    rng = np.random.default_rng(seed)
    concrete_shapes = {}
    for name, (dtype, shape) in model_inputs(model).items():
        concrete = [d if isinstance(d, int) and d > 0 else (dims or {}).get(str(d), 1) for d in shape]
        if concrete:
            concrete[0] = samples if not isinstance(shape[0], int) or shape[0] <= 0 else shape[0]
        concrete = list((shapes or {}).get(name, concrete))
        size = math.prod(concrete) * dtype.itemsize
        if size > SYNTHETIC_MAX_BYTES:
            raise UsageError(f"random data for input '{name}' of shape {concrete} would take "
                             f"{size / 2**30:.3g} GiB; give real data, or smaller shapes")
        concrete_shapes[name] = (dtype, concrete)
    return Dataset({name: _random(rng, dtype, shape) for name, (dtype, shape) in concrete_shapes.items()},
                   synthetic=True)


def _random(rng: np.random.Generator, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 4, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise DataError(f"cannot make synthetic data of type {dtype}; pass real data with --data")
