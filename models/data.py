"""Digits data set for the reference models in ``models/``.

Source: ``sklearn.datasets.load_digits`` (1797 greyscale 8x8 images of the
digits 0-9, shipped inside scikit-learn; nothing is downloaded).

Preprocessing, identical for every model:

1. pixel values 0..16 are scaled to [0, 1] (divide by 16);
2. each 8x8 image is upsampled to 32x32 with bilinear interpolation using the
   half-pixel convention (the same as ``torch.nn.functional.interpolate(...,
   mode="bilinear", align_corners=False)`` and ONNX ``Resize`` with
   ``coordinate_transformation_mode="half_pixel"``), computed here in numpy
   (float64, then cast to float32) so the data never depends on torch;
3. images are laid out NCHW: ``[n, 1, 32, 32]`` float32; labels are int64.

Split: one fixed stratified 80/20 split,
``train_test_split(..., test_size=0.2, stratify=y, random_state=0)``
(1437 train / 360 test images).

Calibration subset: 256 images drawn without replacement from the TRAIN split
with ``numpy.random.default_rng(0)`` (indices kept in ascending order).

``write_npz`` writes ``.npz`` files byte-for-byte reproducibly (``numpy.savez``
stamps the current time into the zip entries; this writer uses a fixed one).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SIZE = 32
NUM_CLASSES = 10
TEST_SIZE = 0.2
SPLIT_RANDOM_STATE = 0
CALIB_SIZE = 256
CALIB_SEED = 0


@dataclass(frozen=True)
class Split:
    """Train/test arrays: inputs ``[n, 1, 32, 32]`` float32, labels ``[n]`` int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Return the ``[out_size, in_size]`` matrix of 1-D bilinear resampling.

    Half-pixel convention: output pixel ``o`` samples the input at
    ``(o + 0.5) * in_size / out_size - 0.5``, clamped to ``[0, in_size - 1]``.
    """
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


def upsample_bilinear(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Upsample ``[n, h, w]`` images to ``[n, size, size]`` (float64)."""
    _, h, w = images.shape
    rows = bilinear_matrix(h, size)
    cols = bilinear_matrix(w, size)
    return np.einsum("oh,nhw,pw->nop", rows, images.astype(np.float64), cols)


def load_digits_32() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as ``([n, 1, 32, 32] float32 in [0, 1], [n] int64)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float64) / 16.0
    x = upsample_bilinear(images).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    return np.ascontiguousarray(x), y


def load_split() -> Split:
    """The fixed stratified 80/20 split of the upsampled digits."""
    from sklearn.model_selection import train_test_split

    x, y = load_digits_32()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_RANDOM_STATE
    )
    return Split(
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_test),
    )


def calibration_subset(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """``CALIB_SIZE`` train images (and labels) picked with a fixed seed."""
    rng = np.random.default_rng(CALIB_SEED)
    idx = np.sort(rng.choice(len(split.y_train), size=CALIB_SIZE, replace=False))
    return split.x_train[idx], split.y_train[idx]


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed ``.npz`` (readable by ``numpy.load``) reproducibly.

    Entries are written in the given order with a fixed timestamp, so equal
    arrays always give identical bytes.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
