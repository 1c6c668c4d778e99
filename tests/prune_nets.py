"""Small ONNX networks for the prune-channels tests, built layer by layer with numpy weights.

Layers can be given *dead* output channels: zero weights and zero bias, so the channel is 0 everywhere and
every op the tests put after it (Relu, pooling, residual Add of two dead channels, depthwise Conv with a zero
bias there, BatchNormalization with zero mean and beta there, a per-channel Mul) keeps it 0. Removing dead
channels therefore must not change the model's outputs at all, which is what the exactness tests check.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper

FLOAT = onnx.TensorProto.FLOAT


class NetBuilder:
    def __init__(self, shape=(2, 4, 8, 8), seed=0, opset=17):
        self.rng = np.random.default_rng(seed)
        self.shape = tuple(shape)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, array, base: str = "c") -> str:
        name = self.fresh(base)
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, name: str | None = None, **attrs):
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(oh.make_node(op_type, inputs, names, name=name or self.fresh(f"{op_type}_"), **attrs))
        return names[0] if outputs == 1 else names

    def weights(self, shape, dead=(), axis=0, scale=0.5):
        w = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        index = [slice(None)] * len(shape)
        index[axis] = list(dead)
        w[tuple(index)] = 0
        return w

    def bias(self, count, dead=()):
        b = (self.rng.standard_normal(count) * 0.1).astype(np.float32)
        b[list(dead)] = 0
        return b

    def conv(self, x, c_in, c_out, k=3, dead=(), group=1, bias=True, name=None, scale=0.5, **attrs):
        w = self.weights((c_out, c_in // group, k, k), dead, scale=scale)
        inputs = [x, self.const(w, "w")] + ([self.const(self.bias(c_out, dead), "b")] if bias else [])
        return self.op("Conv", inputs, name=name, group=group, pads=[k // 2] * 4, **attrs)

    def conv_transpose(self, x, c_in, c_out, dead=(), name=None):
        w = self.weights((c_in, c_out, 2, 2), dead, axis=1)
        return self.op("ConvTranspose", [x, self.const(w, "w"), self.const(self.bias(c_out, dead), "b")],
                       name=name, strides=[2, 2])

    def depthwise(self, x, channels, dead=()):
        w = self.weights((channels, 1, 3, 3))
        return self.op("Conv", [x, self.const(w, "w"), self.const(self.bias(channels, dead), "b")],
                       group=channels, pads=[1, 1, 1, 1])

    def batch_norm(self, x, channels, dead=()):
        mean = self.rng.standard_normal(channels).astype(np.float32)
        beta = self.rng.standard_normal(channels).astype(np.float32)
        mean[list(dead)] = 0
        beta[list(dead)] = 0
        gamma = self.rng.uniform(0.5, 1.5, channels).astype(np.float32)
        var = self.rng.uniform(0.5, 1.5, channels).astype(np.float32)
        return self.op("BatchNormalization", [x] + [self.const(a, "bn") for a in (gamma, beta, mean, var)])

    def gemm(self, x, k, n, dead=(), trans_b=1, name=None):
        w = self.weights((n, k) if trans_b else (k, n), dead, axis=0 if trans_b else 1)
        return self.op("Gemm", [x, self.const(w, "w"), self.const(self.bias(n, dead), "b")], name=name,
                       transB=trans_b)

    def matmul(self, x, k, n, dead=(), name=None):
        return self.op("MatMul", [x, self.const(self.weights((k, n), dead, axis=1), "w")], name=name)

    def relu(self, x):
        return self.op("Relu", [x])

    def model(self, *outputs: str, input_shape=None) -> onnx.ModelProto:
        graph = oh.make_graph(
            self.nodes, "net", [oh.make_tensor_value_info("x", FLOAT, ["N", *(input_shape or self.shape)[1:]])],
            [oh.make_tensor_value_info(name, FLOAT, None) for name in outputs], self.initializers)
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", self.opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # declares the outputs' shapes
        del model.graph.value_info[:]
        onnx.checker.check_model(model, full_check=True)
        return model

    def feeds(self, samples=None, seed=1):
        shape = (samples or self.shape[0], *self.shape[1:])
        return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
