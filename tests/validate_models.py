"""Candidates for the validation and gate tests, made from the digits CNN in models/: a lossless
optimization (must pass), and three that must fail a gate: perturbed weights, extra work, a larger file."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

import graphopt

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
DIGITS = os.path.join(MODELS, "digits_cnn.onnx")
DIGITS_DATA = os.path.join(MODELS, "digits_test.npz")


def optimized(path: str) -> None:
    graphopt.optimize(DIGITS, path, passes="lossless")


def perturbed(path: str, noise: float = 0.5) -> None:
    """conv2's weights with Gaussian noise of ``noise`` times their standard deviation added: every output
    changes, and the first node to diverge is conv2."""
    model = onnx.load(DIGITS)
    rng = np.random.default_rng(0)
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == "conv2.weight":
            weight = numpy_helper.to_array(tensor)
            weight = weight + (noise * weight.std() * rng.standard_normal(weight.shape)).astype(weight.dtype)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(weight, tensor.name))
    onnx.save(model, path)


def slower(path: str, matmuls: int = 40) -> None:
    """The same outputs plus ``matmuls`` chained 1024x1024 MatMuls on the input whose result is added times
    zero: the logits are unchanged, the work is several times the network's own."""
    model = onnx.load(DIGITS)
    graph = model.graph
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((1024, 1024)) / 32).astype(np.float32)
    graph.initializer.extend([numpy_helper.from_array(weight, "extra.w"),
                              numpy_helper.from_array(np.array([-1, 1024], np.int64), "extra.shape"),
                              numpy_helper.from_array(np.zeros((), np.float32), "extra.zero")])
    logits = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{o}.pre" if o == logits else o for o in node.output]
    nodes = [helper.make_node("Reshape", [graph.input[0].name, "extra.shape"], ["extra.0"])]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"extra.{i}", "extra.w"], [f"extra.{i + 1}"]))
    nodes += [helper.make_node("ReduceMean", [f"extra.{matmuls}"], ["extra.mean"], keepdims=1),
              helper.make_node("Mul", ["extra.mean", "extra.zero"], ["extra.nothing"]),
              helper.make_node("Add", [f"{logits}.pre", "extra.nothing"], [logits])]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def larger(path: str) -> None:
    """The same graph with 100 kB of documentation: same outputs, same speed, a larger file."""
    model = onnx.load(DIGITS)
    model.doc_string = "x" * 100_000
    onnx.save(model, path)
