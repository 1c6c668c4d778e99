"""Build the reference models and data files in ``models/``.

Run from anywhere (needs the ``models`` extra: torch==2.13.0, scikit-learn,
onnx, onnxruntime, numpy)::

    python models/build.py                       # everything
    python models/build.py --only resnet_small   # one model (+ data, manifest)
    python models/build.py --only data           # only the .npz files + manifest

Steps:

1. Load the digits split (``data.py``) and write ``digits_test.npz`` (the
   whole test split) and ``digits_calib.npz`` (256 train images).
2. For each requested model (``nets.py``): seed, train with Adam (cosine
   learning-rate decay) on the train split only, switch to eval mode and
   export with the classic TorchScript exporter
   (``torch.onnx.export(..., dynamo=False)``), opset 17, input ``input``
   ``[batch, 1, 32, 32]``, output ``logits`` ``[batch, 10]``, all weights
   inside the file. ``do_constant_folding=False`` keeps the graph as exported:
   with folding on, the exporter's eval-mode peephole would fuse
   BatchNormalization into the preceding Conv, and later graphopt passes are
   meant to do that themselves.
3. Verify each ``.onnx``: ``onnx.checker.check_model`` (full check), run it in
   onnxruntime on ``digits_test.npz`` and require the same test accuracy as
   torch and logits within 1e-3; check the dynamic batch dimension.
4. Write ``manifest.toml``, derived only from the files on disk and the
   configuration below (so ``--only`` still yields a complete manifest).

Determinism: every model is seeded on its own (torch and numpy), training
uses one thread and ``torch.use_deterministic_algorithms(True)``, and the
``.npz`` files are written with fixed zip timestamps. Rebuilding on the same
machine gives byte-identical files; another CPU (different SIMD kernels) may
give slightly different weights.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import data  # noqa: E402
import nets  # noqa: E402

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
TEST_NPZ = "digits_test.npz"
CALIB_NPZ = "digits_calib.npz"
MANIFEST = "manifest.toml"
BUILD_CMD = "python models/build.py"
EXPORTER = "torch.onnx.export classic TorchScript exporter (dynamo=False, do_constant_folding=False, training=EVAL)"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[[], nets.nn.Module]
    class_name: str
    description: str
    train: TrainConfig


SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="digits_cnn",
            factory=nets.DigitsCNN,
            class_name="nets.DigitsCNN",
            description=(
                "Conv(32,3x3)-ReLU-MaxPool(2)-Conv(64,3x3)-ReLU-MaxPool(2)-Flatten-"
                "Dense(64)-ReLU-Dropout(0.2)-Dense(10); no BatchNorm"
            ),
            train=TrainConfig(epochs=20, batch_size=32, lr=2e-3, seed=1),
        ),
        ModelSpec(
            name="resnet_small",
            factory=nets.ResNetSmall,
            class_name="nets.ResNetSmall",
            description=(
                "ResNet: stem Conv3x3(16)+BN+ReLU, 3 stages (16/32/64 ch, strides 1/2/2) "
                "x 2 BasicBlocks (Conv-BN-ReLU-Conv-BN + residual Add, 1x1 Conv+BN "
                "downsample shortcut when the shape changes), GlobalAveragePool, Linear(10)"
            ),
            train=TrainConfig(epochs=12, batch_size=64, lr=2e-3, seed=2),
        ),
        ModelSpec(
            name="mobilenetv2_small",
            factory=nets.MobileNetV2Small,
            class_name="nets.MobileNetV2Small",
            description=(
                "MobileNetV2: stem Conv3x3(16, stride 2)+BN+ReLU6, 7 inverted residual "
                "blocks (t,c,n,s = 4,16,1,1 / 6,24,2,2 / 6,32,2,2 / 6,64,2,2: 1x1 expand "
                "Conv+BN+ReLU6, 3x3 depthwise Conv+BN+ReLU6, 1x1 project Conv+BN, "
                "residual Add when stride 1 and same channels), 1x1 Conv(128)+BN+ReLU6, "
                "GlobalAveragePool, Linear(10)"
            ),
            train=TrainConfig(epochs=15, batch_size=64, lr=3e-3, seed=3),
        ),
    )
}


# --------------------------------------------------------------------------- data


def build_data(split: data.Split) -> None:
    data.write_npz(HERE / TEST_NPZ, input=split.x_test, label=split.y_test)
    x_cal, y_cal = data.calibration_subset(split)
    data.write_npz(HERE / CALIB_NPZ, input=x_cal, label=y_cal)
    print(f"wrote {TEST_NPZ} ({len(split.y_test)} images), {CALIB_NPZ} ({len(y_cal)} images)")


# ----------------------------------------------------------------------- training


def set_determinism(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def train_model(spec: ModelSpec, split: data.Split):
    import torch
    import torch.nn.functional as F

    cfg = spec.train
    set_determinism(cfg.seed)
    model = spec.factory()
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    n = len(y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    gen = torch.Generator().manual_seed(cfg.seed)

    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        print(
            f"  {spec.name} epoch {epoch + 1:2d}/{cfg.epochs}: "
            f"loss {loss_sum / n:.4f} train_acc {correct / n:.4f} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    model.eval()
    return model


def torch_predict(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ------------------------------------------------------------------------- export


def export_onnx(model, path: Path) -> None:
    import torch

    dummy = torch.zeros(1, 1, data.IMAGE_SIZE, data.IMAGE_SIZE, dtype=torch.float32)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo (which
        # needs onnxscript); it still works in torch 2.13 and is what we want.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=False,
            export_params=True,
            training=torch.onnx.TrainingMode.EVAL,
        )


# ------------------------------------------------------------------------- verify


def ort_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def load_npz(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(HERE / name) as f:
        return f["input"], f["label"]


def verify_onnx(path: Path) -> dict:
    """Check the model and measure its test accuracy with onnxruntime."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer), "external data"
    x, y = load_npz(TEST_NPZ)
    logits = ort_predict(path, x)
    assert logits.shape == (len(y), data.NUM_CLASSES), logits.shape
    # dynamic batch: single images and an odd batch give the same logits
    for sl in (slice(0, 1), slice(5, 12)):
        np.testing.assert_allclose(ort_predict(path, x[sl]), logits[sl], rtol=1e-4, atol=1e-4)
    pred = logits.argmax(1)
    return {
        "logits": logits,
        "correct": int((pred == y).sum()),
        "total": len(y),
    }


# ----------------------------------------------------------------------- manifest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dims(value_info) -> list:
    return [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in value_info.type.tensor_type.shape.dim]


def _dtype(value_info) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name


def describe_model(spec: ModelSpec) -> dict:
    import onnx

    path = HERE / f"{spec.name}.onnx"
    if not path.exists():
        raise SystemExit(f"{path} missing: run `{BUILD_CMD} --only {spec.name}`")
    model = onnx.load(str(path))
    result = verify_onnx(path)
    ops = Counter(n.op_type for n in model.graph.node)
    init_elems = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    cfg = spec.train
    return {
        "file": path.name,
        "description": spec.description,
        "module": spec.class_name,
        "sha256": sha256(path),
        "size_bytes": path.stat().st_size,
        "opset": opset,
        "ir_version": model.ir_version,
        "exporter": EXPORTER,
        "torch_version": model.producer_version,
        "producer": f"{model.producer_name} {model.producer_version}",
        "parameters": nets.count_parameters(spec.factory()),
        "initializer_elements": init_elems,
        "node_count": len(model.graph.node),
        "op_histogram": dict(sorted(ops.items())),
        "test_data": TEST_NPZ,
        "test_accuracy": round(result["correct"] / result["total"], 4),
        "test_correct": result["correct"],
        "test_samples": result["total"],
        "accuracy_measured_with": "onnxruntime CPUExecutionProvider",
        "rebuild": f"{BUILD_CMD} --only {spec.name}",
        "rebuild_all": BUILD_CMD,
        "inputs": [{"name": vi.name, "shape": _dims(vi), "dtype": _dtype(vi)} for vi in model.graph.input],
        "outputs": [{"name": vi.name, "shape": _dims(vi), "dtype": _dtype(vi)} for vi in model.graph.output],
        "training": {
            "data": "digits train split (1437 images), no augmentation",
            "optimizer": "Adam",
            "lr": cfg.lr,
            "lr_schedule": "cosine annealing to 0, per step",
            "weight_decay": cfg.weight_decay,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "loss": "cross entropy",
        },
    }


def describe_npz(name: str, what: str, how: str) -> dict:
    path = HERE / name
    arrays = {}
    with np.load(path) as f:
        for key in f.files:
            arrays[key] = {"shape": list(f[key].shape), "dtype": f[key].dtype.name}
    return {
        "file": name,
        "description": what,
        "how_made": how,
        "sha256": sha256(path),
        "size_bytes": path.stat().st_size,
        "arrays": arrays,
        "rebuild": f"{BUILD_CMD} --only data",
    }


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v)} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def _toml_table(header: str, table: dict) -> list[str]:
    """Scalars and inline tables first, then sub-tables and arrays of tables."""
    lines = [f"[{header}]"]
    subtables, arrays = [], []
    for k, v in table.items():
        if isinstance(v, dict) and k in ("training", "arrays"):
            subtables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, items in arrays:
        for item in items:
            lines += ["", f"[[{header}.{k}]]"]
            lines += [f"{_toml_key(a)} = {_toml_value(b)}" for a, b in item.items()]
    for k, sub in subtables:
        lines += [""] + _toml_table(f"{header}.{k}", sub)
    return lines


def write_manifest() -> None:
    lines = [
        "# Reference models and data for graphopt. Generated by models/build.py:",
        "# do not edit by hand. Accuracies are measured with onnxruntime on the",
        f"# exported .onnx files over {TEST_NPZ}.",
        "",
        "[build]",
        f"command = {_toml_value(BUILD_CMD)}",
        'requires = ["torch==2.13.0", "scikit-learn", "onnx", "onnxruntime", "numpy"]',
        'data_source = "sklearn.datasets.load_digits (8x8, 0..16) / 16, bilinear '
        'half-pixel upsampling to 32x32, NCHW float32"',
        'split = "train_test_split(test_size=0.2, stratify=y, random_state=0): 1437 train / 360 test"',
        'deterministic = "seeded, 1 thread, torch.use_deterministic_algorithms(True); '
        'byte-identical rebuilds on the same machine"',
    ]
    for name, spec in SPECS.items():
        lines += [""] + _toml_table(f"models.{name}", describe_model(spec))
    npz = {
        "digits_test": describe_npz(
            TEST_NPZ,
            "the whole digits test split, shared by all three models",
            "data.load_split(): test part of the stratified 80/20 split (random_state=0)",
        ),
        "digits_calib": describe_npz(
            CALIB_NPZ,
            "256 images from the TRAIN split, for calibration (e.g. quantization)",
            "data.calibration_subset(): numpy.random.default_rng(0).choice(1437, 256, "
            "replace=False), sorted indices into the train split",
        ),
    }
    for key, table in npz.items():
        lines += [""] + _toml_table(f"data.{key}", table)
    text = "\n".join(lines) + "\n"
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - 3.10
        tomllib = None
    if tomllib is not None:
        tomllib.loads(text)  # must parse
    (HERE / MANIFEST).write_text(text)
    print(f"wrote {MANIFEST}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*SPECS, "data"],
        help="build only these models ('data': only the .npz files); "
        "the data files and the manifest are always rewritten",
    )
    args = parser.parse_args(argv)
    names = list(SPECS) if args.only is None else [n for n in SPECS if n in args.only]

    t_start = time.perf_counter()
    split = data.load_split()
    build_data(split)
    for name in names:
        spec = SPECS[name]
        t0 = time.perf_counter()
        print(f"training {name} ({spec.class_name}, {nets.count_parameters(spec.factory())} params)")
        model = train_model(spec, split)
        path = HERE / f"{name}.onnx"
        export_onnx(model, path)
        torch_logits = torch_predict(model, split.x_test)
        torch_correct = int((torch_logits.argmax(1) == split.y_test).sum())
        result = verify_onnx(path)
        max_diff = float(np.abs(result["logits"] - torch_logits).max())
        n = len(split.y_test)
        print(
            f"  {name}: torch acc {torch_correct / n:.4f}, onnxruntime acc "
            f"{result['correct'] / n:.4f}, max |logit diff| {max_diff:.2e}, "
            f"{path.stat().st_size} bytes, {time.perf_counter() - t0:.1f}s"
        )
        if result["correct"] != torch_correct or max_diff > 1e-3:
            raise SystemExit(f"{name}: onnxruntime disagrees with torch")
    write_manifest()
    print(f"done in {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
