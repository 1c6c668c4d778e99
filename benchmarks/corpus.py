"""The models the benchmarks run on, and random inputs for them.

Groups:

- ``small``: ``models/*.onnx``, the trained digits nets that ship with the repository;
- ``light``: ``onnx/backend/test/data/light/*.onnx`` from the installed ``onnx`` package: classic ImageNet
  nets (AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512) in
  IR version 3 / opset 9, whose weights are not stored but made by ``ConstantOfShape`` nodes at run time
  (so the files are a few KiB, yet onnxruntime really runs the full nets);
- ``standard``: ResNet-50, MobileNetV2 and BERT-base with random weights, built by
  ``models/build_standard.py`` into ``models/.cache/`` (built on demand by ``ensure_standard``).

Model names are the file stems; ``select`` takes names, group names or shell patterns.

``random_feeds`` makes inputs from a model's declared inputs (initializers listed as inputs, as IR < 4
models do, are left to their stored values): symbolic dimensions are 1 (batch size 1) except those named
like a sequence length, which get ``sequence_length`` (128); floats are standard normal, integer inputs
named like a mask are ones with the last eighth zero (padding), other integers are uniform in [0, 1000),
booleans are random.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
SMALL_DIR = REPO / "models"
STANDARD_DIR = SMALL_DIR / ".cache"
STANDARD_NAMES = ("resnet50", "mobilenetv2", "bert_base")
GROUPS = ("small", "light", "standard")


@dataclasses.dataclass(frozen=True)
class BenchModel:
    name: str
    group: str
    path: Path


def light_dir() -> Path:
    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"


def discover(standard_dir: Path = STANDARD_DIR) -> list[BenchModel]:
    """Every model of every group, in group order (standard models whether built or not)."""
    models = [BenchModel(p.stem, "small", p) for p in sorted(SMALL_DIR.glob("*.onnx"))]
    models += [BenchModel(p.stem, "light", p) for p in sorted(light_dir().glob("*.onnx"))]
    models += [BenchModel(name, "standard", standard_dir / f"{name}.onnx") for name in STANDARD_NAMES]
    return models


def select(models: list[BenchModel], patterns: list[str] | None) -> list[BenchModel]:
    """Models whose name or group matches one of ``patterns`` (all when none); unknown patterns raise."""
    if not patterns:
        return list(models)
    chosen, unmatched = [], []
    for pattern in patterns:
        hits = [m for m in models if m.group == pattern or fnmatch.fnmatchcase(m.name, pattern)]
        if not hits:
            unmatched.append(pattern)
        chosen += [m for m in hits if m not in chosen]
    if unmatched:
        names = ", ".join([*GROUPS, *(m.name for m in models)])
        raise SystemExit(f"no model matches {', '.join(unmatched)} (known: {names})")
    return [m for m in models if m in chosen]


def ensure_standard(models: list[BenchModel], standard_dir: Path = STANDARD_DIR) -> dict[str, str]:
    """Build the missing standard models among ``models`` (needs torch); model name -> why it is missing."""
    missing = [m.name for m in models if m.group == "standard" and not m.path.exists()]
    if not missing:
        return {}
    command = [sys.executable, str(SMALL_DIR / "build_standard.py"), "--out", str(standard_dir), "--only", *missing]
    print("building standard models:", " ".join(missing), flush=True)
    completed = subprocess.run(command, text=True, capture_output=True)
    print(completed.stdout, end="", flush=True)
    problems = {}
    for name in missing:
        if not (standard_dir / f"{name}.onnx").exists():
            tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            problems[name] = f"build failed: {tail[:300]}"
    return problems


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that need a feed (inputs that are also initializers are excluded)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def random_feeds(model: onnx.ModelProto, seed: int = 0, batch_size: int = 1,
                 sequence_length: int = 128) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model_inputs(model):
        tensor_type = value.type.tensor_type
        shape = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif "seq" in dim.dim_param.lower() or "length" in dim.dim_param.lower():
                shape.append(sequence_length)
            else:
                shape.append(batch_size)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[value.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype.kind in "iu" and "mask" in value.name.lower():
            mask = np.ones(shape, dtype=dtype)
            if mask.ndim and mask.shape[-1] >= 8:
                mask[..., -(mask.shape[-1] // 8):] = 0
            feeds[value.name] = mask
        elif dtype.kind in "iu":
            feeds[value.name] = rng.integers(0, 1000, size=shape).astype(dtype)
        else:
            raise ValueError(f"cannot make random data for input '{value.name}' of type {dtype}")
    return feeds
