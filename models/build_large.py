"""Build a large float32 model (over 2 GiB by default) with its weights in an external data file, for
graphopt's large-model benchmark (``benchmarks/bench_large.py``) and tests. Too big to commit: build it::

    python models/build_large.py OUT.onnx                      # 2.2 GiB of weights: OUT.onnx + OUT.onnx.data
    python models/build_large.py OUT.onnx --gigabytes 3
    python models/build_large.py OUT.onnx --hidden 64 --layers 3 --verify   # a tiny one (tests)

The net is an MLP stack on ``input`` float32 [batch, hidden] -> ``output`` float32 [batch, hidden]: ``layers``
residual blocks, each ``x -> Linear(hidden, hidden) -> ReLU -> Linear(hidden, hidden) -> + x -> LayerNorm``.
The blocks are written in the forms an exporter leaves, so that the ``lossless`` preset has work to do on
the big weights and ``quantize-qdq(mode=dynamic)`` finds MatMul and Gemm nodes:

- the first Linear rotates through three forms: MatMul followed by a BatchNormalization (``fuse-conv-bn``
  folds it into the weight: every float of that weight is rewritten), MatMul + Add of a bias
  (``fuse-matmul-add-into-gemm``) and Gemm with ``transB=1``;
- the second Linear is a Gemm (``transB=1``) whose bias is ``Mul(bias, 0.5)`` of two initializers
  (``fold-constants``);
- the LayerNorm of the first and of the last block is written out (ReduceMean, Sub, Pow, ReduceMean, Add,
  Sqrt, Div, Mul, Add: ``fuse-layer-norm``), the others are ``LayerNormalization`` (opset 17).

``--gigabytes`` (GiB of weights, default 2.2) sets the number of blocks when ``--layers`` is not given: each
block holds two hidden x hidden float32 matrices (128 MiB at hidden 4096), so 2.2 GiB is 18 blocks, 2.25 GiB
of weights and a 2.25 GiB data file.

Memory: the model is never held whole. Each weight is drawn (numpy ``default_rng(seed)``, so a rebuild
gives the same bytes), appended to the data file at an offset aligned to 64 KiB (onnxruntime can then map
it rather than copy it) and dropped; the ModelProto only holds the references (location, offset, length),
so the build's peak RSS is about two matrices (~130 MiB at hidden 4096) above the interpreter's. Values are
scaled so that activations stay near unit variance (weights N(0, 1/hidden), N(0, 2/hidden) after the ReLU;
LayerNorm after every block), so outputs are finite and well away from zero.

The two files are written under temporary names in OUT's folder and renamed into place (the data file
first), so an existing OUT is replaced only by a complete model. The data file is named
``<OUT file name>.data``, next to OUT, as graphopt's own saves name it. ``onnx.checker`` checks the written
model (from its path, so the data is not loaded); ``--verify`` also runs it once in onnxruntime and checks
that the output is finite (that loads the whole model: ~2x its size in memory).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

GIB = 2**30
OPSET = 17
IR_VERSION = 8
ALIGNMENT = 64 * 2**10  # external data offsets: onnxruntime maps aligned data instead of copying it
INLINE_BELOW = 1024  # bytes: smaller tensors stay inside the .onnx file
FOLDABLE_FORMS = ("matmul_bn", "matmul_add", "gemm")


def layers_for(gigabytes: float, hidden: int) -> int:
    """Blocks needed for ``gigabytes`` GiB of weights (two hidden x hidden float32 matrices per block)."""
    return max(1, math.ceil(gigabytes * GIB / (2 * hidden * hidden * 4)))


class _DataWriter:
    """Appends arrays to the external data file and makes the TensorProtos that point at them."""

    def __init__(self, handle, location: str) -> None:
        self.handle, self.location = handle, location
        self.initializers: list[TensorProto] = []
        self.bytes = 0

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, dtype=np.float32)
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
        if array.nbytes < INLINE_BELOW:
            tensor.raw_data = array.tobytes()
        else:
            offset = -self.handle.tell() % (ALIGNMENT if array.nbytes >= ALIGNMENT else 64)
            if offset:
                self.handle.write(b"\0" * offset)
            start = self.handle.tell()
            self.handle.write(memoryview(array).cast("B"))  # no bytes copy of the array
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", self.location), ("offset", str(start)), ("length", str(array.nbytes))):
                tensor.external_data.add(key=key, value=value)
        self.bytes += array.nbytes
        self.initializers.append(tensor)
        return name


def _layer_norm_nodes(prefix: str, x: str, out: str, gamma: str, beta: str, decomposed: bool) -> list:
    if not decomposed:
        return [helper.make_node("LayerNormalization", [x, gamma, beta], [out], name=f"{prefix}_ln", axis=-1,
                                 epsilon=1e-5)]
    p = f"{prefix}_ln"
    return [
        helper.make_node("ReduceMean", [x], [f"{p}_mean"], name=f"{p}_mean", axes=[-1], keepdims=1),
        helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_d"], name=f"{p}_sub"),
        helper.make_node("Pow", [f"{p}_d", "two"], [f"{p}_sq"], name=f"{p}_pow"),
        helper.make_node("ReduceMean", [f"{p}_sq"], [f"{p}_var"], name=f"{p}_var", axes=[-1], keepdims=1),
        helper.make_node("Add", [f"{p}_var", "epsilon"], [f"{p}_vare"], name=f"{p}_add_eps"),
        helper.make_node("Sqrt", [f"{p}_vare"], [f"{p}_std"], name=f"{p}_sqrt"),
        helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_norm"], name=f"{p}_div"),
        helper.make_node("Mul", [f"{p}_norm", gamma], [f"{p}_scaled"], name=f"{p}_gamma"),
        helper.make_node("Add", [f"{p}_scaled", beta], [out], name=f"{p}_beta"),
    ]


def _block(writer: _DataWriter, rng: np.random.Generator, index: int, x: str, out: str, hidden: int,
           decomposed_norm: bool) -> list:
    p = f"block{index}"
    form = FOLDABLE_FORMS[index % len(FOLDABLE_FORMS)]
    nodes = []

    def small(name: str, scale: float = 0.02, shift: float = 0.0) -> str:
        return writer.add(name, shift + scale * rng.standard_normal(hidden, dtype=np.float32))

    def matrix(name: str, std: float) -> str:  # [K, N] for MatMul, [N, K] for Gemm(transB=1): both square
        weight = rng.standard_normal((hidden, hidden), dtype=np.float32)
        weight *= np.float32(std)
        return writer.add(name, weight)

    first = f"{p}_fc1"
    if form == "gemm":
        nodes.append(helper.make_node("Gemm", [x, matrix(f"{p}_fc1_weight", hidden**-0.5),
                                               small(f"{p}_fc1_bias")], [first], name=f"{p}_fc1", transB=1))
    elif form == "matmul_add":
        nodes += [helper.make_node("MatMul", [x, matrix(f"{p}_fc1_weight", hidden**-0.5)], [f"{p}_fc1_mm"],
                                   name=f"{p}_fc1"),
                  helper.make_node("Add", [f"{p}_fc1_mm", small(f"{p}_fc1_bias")], [first], name=f"{p}_fc1_bias")]
    else:
        bn_inputs = [small(f"{p}_bn_scale", 0.1, 1.0), small(f"{p}_bn_bias", 0.1), small(f"{p}_bn_mean", 0.1),
                     writer.add(f"{p}_bn_var", rng.uniform(0.5, 1.5, hidden).astype(np.float32))]
        nodes += [helper.make_node("MatMul", [x, matrix(f"{p}_fc1_weight", hidden**-0.5)], [f"{p}_fc1_mm"],
                                   name=f"{p}_fc1"),
                  helper.make_node("BatchNormalization", [f"{p}_fc1_mm", *bn_inputs], [first], name=f"{p}_bn",
                                   epsilon=1e-5)]
    nodes.append(helper.make_node("Relu", [first], [f"{p}_act"], name=f"{p}_relu"))
    nodes += [
        helper.make_node("Mul", [small(f"{p}_fc2_bias_raw"), "half"], [f"{p}_fc2_bias"], name=f"{p}_fc2_bias"),
        helper.make_node("Gemm", [f"{p}_act", matrix(f"{p}_fc2_weight", (2 / hidden) ** 0.5),
                                  f"{p}_fc2_bias"], [f"{p}_fc2"], name=f"{p}_fc2", transB=1),
        helper.make_node("Add", [x, f"{p}_fc2"], [f"{p}_residual"], name=f"{p}_residual"),
    ]
    nodes += _layer_norm_nodes(p, f"{p}_residual", out, small(f"{p}_ln_scale", 0.05, 1.0),
                               small(f"{p}_ln_bias", 0.05), decomposed_norm)
    return nodes


def build(path: str | os.PathLike, *, gigabytes: float = 2.2, hidden: int = 4096, layers: int | None = None,
          seed: int = 0) -> dict:
    """Write the model to ``path`` and its weights to ``<path>.data`` (see the module docstring); returns a
    summary (layers, hidden, bytes of weights, file sizes)."""
    path = Path(path).resolve()
    layers = layers if layers is not None else layers_for(gigabytes, hidden)
    data_name = path.name + ".data"
    rng = np.random.default_rng(seed)
    fd, data_staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".data.tmp", dir=path.parent)
    model_staging = None
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _DataWriter(handle, data_name)
            writer.add("two", np.array(2.0, np.float32))
            writer.add("epsilon", np.array(1e-5, np.float32))
            writer.add("half", np.array(0.5, np.float32))
            nodes = []
            x = "input"
            for index in range(layers):
                out = "output" if index == layers - 1 else f"block{index}_out"
                nodes += _block(writer, rng, index, x, out, hidden, decomposed_norm=index in (0, layers - 1))
                x = out
            handle.flush()
            os.fsync(handle.fileno())
        graph = helper.make_graph(
            nodes, "large_mlp",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", hidden])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", hidden])],
            initializer=writer.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                                  producer_name="graphopt models/build_large.py",
                                  doc_string=f"MLP stack, {layers} blocks, hidden {hidden}, seed {seed}")
        fd, model_staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(model.SerializeToString())  # references only: a few hundred KiB
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        for staging in (data_staging, model_staging):  # mkstemp makes them private: the usual mode instead
            os.chmod(staging, 0o666 & ~umask)
        os.replace(data_staging, path.parent / data_name)
        os.replace(model_staging, path)
    except BaseException:
        for staging in (data_staging, model_staging):
            if staging is not None and os.path.exists(staging):
                os.unlink(staging)
        raise
    onnx.checker.check_model(str(path))
    return {"path": str(path), "layers": layers, "hidden": hidden, "seed": seed, "weight_bytes": writer.bytes,
            "model_file_bytes": path.stat().st_size, "data_file_bytes": (path.parent / data_name).stat().st_size}


def verify(path: str | os.PathLike, batch: int = 2, seed: int = 1) -> np.ndarray:
    """Run the model once in onnxruntime (CPU, optimizations off) on standard-normal inputs; the output,
    after checking that it is finite."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    hidden = session.get_inputs()[0].shape[1]
    feed = np.random.default_rng(seed).standard_normal((batch, hidden), dtype=np.float32)
    (output,) = session.run(["output"], {"input": feed})
    if not np.isfinite(output).all():
        raise RuntimeError(f"{path}: the output is not finite")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the .onnx file to write; the weights go to <out>.data beside it")
    parser.add_argument("--gigabytes", type=float, default=2.2, help="GiB of weights (default 2.2)")
    parser.add_argument("--hidden", type=int, default=4096, help="width of every layer (default 4096)")
    parser.add_argument("--layers", type=int, help="blocks (default: enough for --gigabytes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify", action="store_true", help="also run it once in onnxruntime")
    args = parser.parse_args(argv)
    if args.hidden < 1 or (args.layers is not None and args.layers < 1) or args.gigabytes <= 0:
        parser.error("--hidden, --layers and --gigabytes must be positive")
    start = time.perf_counter()
    info = build(args.out, gigabytes=args.gigabytes, hidden=args.hidden, layers=args.layers, seed=args.seed)
    print(f"{info['path']}: {info['layers']} blocks, hidden {info['hidden']}, "
          f"{info['weight_bytes'] / 2**20:,.1f} MiB of weights, data file {info['data_file_bytes'] / 2**20:,.1f} MiB, "
          f"{time.perf_counter() - start:.1f} s")
    if args.verify:
        output = verify(args.out)
        print(f"onnxruntime: output {list(output.shape)}, finite, std {float(output.std()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
