"""Dynamic quantization (``graphopt.quantize.dynamic``): the graph form and its math, onnxruntime running and
fusing it, fidelity on a small encoder, the file size, exclusions, and a negative test per reason a node or the
whole graph is declined.

The encoder is written as ONNX text with random weights: an embedding Gather, two layers of attention (Q, K,
V and output MatMul + bias Add, Q K^T and probabilities x V on computed operands), LayerNormalization, a
feed-forward block (ReLU in layer 0, the erf form of GELU in layer 1), and a pooler Gemm (transB=1) + Tanh
on the first token; batch and sequence are dynamic.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import op_counts, parse_model

from graphopt.analysis import structural_fingerprint
from graphopt.model import to_graph, to_model
from graphopt.quantize.dynamic import REASONS, DynamicResult, quantize_dynamic
from graphopt.rewrite import NameAllocator
from graphopt.validate.numerics import cpu_session

HIDDEN, FFN, VOCAB = 64, 128, 100
SHAPES = [(2, 7), (1, 12)]  # (batch, sequence) fed to the dynamic axes
LINEAR = {"q": (HIDDEN, HIDDEN), "k": (HIDDEN, HIDDEN), "v": (HIDDEN, HIDDEN), "o": (HIDDEN, HIDDEN),
          "ffn1": (HIDDEN, FFN), "ffn2": (FFN, HIDDEN)}


def _layer_text(index: int, source: str, output: str, gelu: bool) -> str:
    p = f"l{index}"
    if gelu:  # the erf form, as PyTorch exports it
        activation = f"""
        {p}_gd = Div({p}_f1b, sqrt_two)
        {p}_ge = Erf({p}_gd)
        {p}_gp = Add({p}_ge, one)
        {p}_gm = Mul({p}_f1b, {p}_gp)
        {p}_act = Mul({p}_gm, half)"""
    else:
        activation = f"[{p}_relu] {p}_act = Relu({p}_f1b)"
    return f"""
        [{p}_q] {p}_qm = MatMul({source}, {p}_q_weight)
        [{p}_k] {p}_km = MatMul({source}, {p}_k_weight)
        [{p}_v] {p}_vm = MatMul({source}, {p}_v_weight)
        {p}_qb = Add({p}_q_bias, {p}_qm)
        {p}_kb = Add({p}_k_bias, {p}_km)
        {p}_vb = Add({p}_v_bias, {p}_vm)
        {p}_kt = Transpose <perm = [0, 2, 1]> ({p}_kb)
        [{p}_scores] {p}_scores = MatMul({p}_qb, {p}_kt)
        {p}_scaled = Mul({p}_scores, attention_scale)
        {p}_probs = Softmax <axis = -1> ({p}_scaled)
        [{p}_context] {p}_context = MatMul({p}_probs, {p}_vb)
        [{p}_o] {p}_om = MatMul({p}_context, {p}_o_weight)
        {p}_ob = Add({p}_om, {p}_o_bias)
        {p}_r1 = Add({p}_ob, {source})
        {p}_h1 = LayerNormalization({p}_r1, {p}_norm1_scale, {p}_norm1_bias)
        [{p}_ffn1] {p}_f1 = MatMul({p}_h1, {p}_ffn1_weight)
        {p}_f1b = Add({p}_f1, {p}_ffn1_bias)
        {activation}
        [{p}_ffn2] {p}_f2 = MatMul({p}_act, {p}_ffn2_weight)
        {p}_f2b = Add({p}_f2, {p}_ffn2_bias)
        {p}_r2 = Add({p}_f2b, {p}_h1)
        {output} = LayerNormalization({p}_r2, {p}_norm2_scale, {p}_norm2_bias)"""


ENCODER_TEXT = f"""
<ir_version: 8, opset_import: ["" : 17]>
encoder (int64[batch, sequence] input_ids)
    => (float[batch, sequence, {HIDDEN}] hidden, float[batch, {HIDDEN}] pooled) {{
    [embed] embedded = Gather(embedding, input_ids)
    h0 = LayerNormalization(embedded, norm0_scale, norm0_bias)
    {_layer_text(0, "h0", "h1", gelu=False)}
    {_layer_text(1, "h1", "hidden", gelu=True)}
    [first_token] first = Gather <axis = 1> (hidden, zero)
    [pooler] pooled_linear = Gemm <transB = 1> (first, pooler_weight, pooler_bias)
    pooled = Tanh(pooled_linear)
}}
"""


def _encoder_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    weights = {"embedding": normal((VOCAB, HIDDEN), 1.0), "pooler_weight": normal((HIDDEN, HIDDEN), HIDDEN ** -0.5),
               "pooler_bias": normal(HIDDEN, 0.1), "norm0_scale": 1 + normal(HIDDEN, 0.1),
               "norm0_bias": normal(HIDDEN, 0.1), "attention_scale": np.array(HIDDEN ** -0.5, np.float32),
               "sqrt_two": np.array(np.sqrt(2), np.float32), "one": np.array(1, np.float32),
               "half": np.array(0.5, np.float32), "zero": np.array(0, np.int64)}
    for layer in range(2):
        for name, (fan_in, fan_out) in LINEAR.items():
            weights[f"l{layer}_{name}_weight"] = normal((fan_in, fan_out), fan_in ** -0.5)
            weights[f"l{layer}_{name}_bias"] = normal(fan_out, 0.1)
        for norm in ("norm1", "norm2"):
            weights[f"l{layer}_{norm}_scale"] = 1 + normal(HIDDEN, 0.1)
            weights[f"l{layer}_{norm}_bias"] = normal(HIDDEN, 0.1)
    return weights


def with_weights(text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model of ONNX ``text`` whose initializers are ``weights``; checked."""
    model = parse_model(text, check=False)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(value, name) for name, value in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def quantized(model: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, DynamicResult]:
    """(the model after ``quantize_dynamic(graph, **options)``, the result); checked, ``model`` unchanged, and
    ``changed`` honest (the graph's structural fingerprint changed exactly when it says so)."""
    graph = to_graph(model)
    before = structural_fingerprint(graph)
    result = quantize_dynamic(graph, **options)
    assert result.changed == (structural_fingerprint(graph) != before)
    output = to_model(graph, model)
    onnx.checker.check_model(output, full_check=True)
    return output, result


@functools.cache
def encoder() -> onnx.ModelProto:
    return with_weights(ENCODER_TEXT, _encoder_weights())


@functools.cache
def quantized_encoder(per_channel: bool = True) -> tuple[onnx.ModelProto, DynamicResult]:
    return quantized(encoder(), per_channel=per_channel)


def encoder_feeds(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, VOCAB, shape).astype(np.int64)} for shape in SHAPES]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    return cpu_session(model, optimize=optimize).run(None, feeds)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


def assert_unchanged(result: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """Same nodes, inputs, outputs and initializers (these in any order: gs writes them as it finds them)."""
    assert list(result.graph.node) == list(model.graph.node)
    assert list(result.graph.input) == list(model.graph.input)
    assert list(result.graph.output) == list(model.graph.output)
    assert sorted(result.graph.initializer, key=lambda t: t.name) == sorted(model.graph.initializer,
                                                                           key=lambda t: t.name)


# ---------------------------------------------------------------------------------------------------------
# The encoder


def test_encoder_stats_count_every_quantized_and_skipped_node():
    _, result = quantized_encoder()
    assert result.changed
    assert result.stats == {"quantized.Gather": 1, "quantized.MatMul": 12, "quantized.Gemm": 1,
                            "skipped.weight_not_constant": 4}


def test_attention_matmuls_on_computed_operands_stay_float_with_a_reason():
    model, result = quantized_encoder()
    skipped = {d.node for d in result.diagnostics if "(weight_not_constant)" in d.message}
    assert skipped == {"l0_scores", "l0_context", "l1_scores", "l1_context"}
    assert all(d.severity == "info" for d in result.diagnostics)
    float_matmuls = {node.name for node in model.graph.node if node.op_type == "MatMul"}
    assert float_matmuls == skipped


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("optimize", [False, True], ids=["ORT_DISABLE_ALL", "ORT_ENABLE_ALL"])
def test_outputs_close_to_float(per_channel, optimize):
    model, _ = quantized_encoder(per_channel)
    for feeds in encoder_feeds():
        expected, actual = outputs(encoder(), feeds), outputs(model, feeds, optimize)
        for reference, candidate in zip(expected, actual, strict=True):
            assert candidate.shape == reference.shape and candidate.dtype == np.float32
            assert cosine(reference, candidate) > 0.99


def test_onnxruntime_fuses_every_quantized_matmul_into_an_int8_kernel(tmp_path):
    """ORT_ENABLE_ALL turns MatMulInteger -> Cast -> Mul (and the bias Add) into MatMulIntegerToFloat or
    DynamicQuantizeMatMul: nothing of the form is left to run standalone."""
    model, result = quantized_encoder()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    counts = op_counts(onnx.load(options.optimized_model_filepath))
    fused = counts.get("MatMulIntegerToFloat", 0) + counts.get("DynamicQuantizeMatMul", 0)
    assert fused == result.stats["quantized.MatMul"] + result.stats["quantized.Gemm"]
    assert "MatMulInteger" not in counts and "Cast" not in counts


def test_graph_form_and_weight_math():
    """Each quantized MatMul: MatMulInteger(x_q, W_q, z_x) -> Cast -> Mul(., Mul(s_x, s_w)) writing the original
    output; W_q = round(W / s_w), s_w[n] = max_k |W[k, n]| / 127; one DynamicQuantizeLinear per activation."""
    model, _ = quantized_encoder()
    values, made_by = initializers(model), producers(model)
    weights = _encoder_weights()
    rescale = made_by["l0_qm"]
    assert rescale.op_type == "Mul"
    cast, scale = made_by[rescale.input[0]], made_by[rescale.input[1]]
    assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
    integer = made_by[cast.input[0]]
    assert integer.op_type == "MatMulInteger" and integer.name == "l0_q" and len(integer.input) == 3
    dynamic = made_by[integer.input[0]]
    assert dynamic.op_type == "DynamicQuantizeLinear" and dynamic.input[0] == "h0"
    assert list(scale.input) == [dynamic.output[1], scale.input[1]]  # s_x first: MatMulIntegerToFloat's order
    assert integer.input[2] == dynamic.output[2]
    expected_scale = (np.abs(weights["l0_q_weight"]).max(axis=0) / 127).astype(np.float32)
    np.testing.assert_array_equal(values[scale.input[1]], expected_scale)
    assert values[integer.input[1]].dtype == np.int8
    np.testing.assert_array_equal(values[integer.input[1]], np.rint(weights["l0_q_weight"] / expected_scale))
    readers_of = {tensor: node for node in model.graph.node if node.op_type == "DynamicQuantizeLinear"
                  for tensor in node.input}
    assert sorted(readers_of) == sorted(["h0", "l0_context", "l0_h1", "l0_act", "h1", "l1_context", "l1_h1",
                                         "l1_act", "first"])


def test_result_equals_the_stated_integer_arithmetic():
    """On ORT_DISABLE_ALL, y = s_x s_w (x_q - z_x) W_q with DynamicQuantizeLinear's s_x, z_x computed here."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 5)).astype(np.float32)
    model = with_weights("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 3, 8] x) => (float[N, 3, 5] y) { [mm] y = MatMul(x, w) }
        """, {"w": weight})
    result, _ = quantized(model)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    low, high = min(x.min(), 0), max(x.max(), 0)
    scale_x = np.float32((high - low) / 255)
    zero_x = np.clip(np.rint(-low / scale_x), 0, 255)
    x_q = np.clip(np.rint(x / scale_x) + zero_x, 0, 255)
    scale_w = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
    w_q = np.rint(weight / scale_w)
    expected = (x_q - zero_x) @ w_q * (scale_x * scale_w)
    np.testing.assert_allclose(outputs(result, {"x": x})[0], expected, rtol=1e-5, atol=1e-6)


def test_weights_are_int8_and_the_file_shrinks():
    model, _ = quantized_encoder()
    values = initializers(model)
    matrices = {name: value for name, value in values.items() if value.ndim == 2}
    assert len(matrices) == 14 and all(value.dtype == np.int8 for value in matrices.values())
    float_bytes = sum(value.nbytes for value in _encoder_weights().values() if value.ndim == 2)
    assert sum(value.nbytes for value in matrices.values()) * 4 == float_bytes
    assert model.ByteSize() < 0.35 * encoder().ByteSize()


def test_embedding_gather_reads_int8_and_dequantizes_per_column():
    model, _ = quantized_encoder()
    dequantize = producers(model)["embedded"]
    assert dequantize.op_type == "DequantizeLinear" and dequantize.attribute[0].i == -1
    gather = producers(model)[dequantize.input[0]]
    assert gather.name == "embed" and initializers(model)[gather.input[0]].dtype == np.int8
    assert initializers(model)[dequantize.input[1]].shape == (HIDDEN,)


def test_per_tensor_scales_are_scalars():
    model, _ = quantized_encoder(per_channel=False)
    values, made_by = initializers(model), producers(model)
    scale_products = [node for node in model.graph.node if node.op_type == "Mul" and node.input[0] in made_by
                      and made_by[node.input[0]].op_type == "DynamicQuantizeLinear"]
    dequantizes = [node for node in model.graph.node if node.op_type == "DequantizeLinear"]
    assert len(scale_products) == 13 and len(dequantizes) == 1
    assert all(values[node.input[1]].shape == () for node in scale_products + dequantizes)
    assert not dequantizes[0].attribute


def test_graph_inputs_and_outputs_unchanged():
    model, _ = quantized_encoder()
    assert list(model.graph.input) == list(encoder().graph.input)
    assert list(model.graph.output) == list(encoder().graph.output)


def test_second_run_changes_nothing():
    model, _ = quantized_encoder()
    graph = to_graph(model)
    result = quantize_dynamic(graph)
    assert not result.changed
    assert result.stats == {"skipped.already_quantized": 1}
    assert result.diagnostics[0].severity == "warning"
    assert_unchanged(to_model(graph, model), model)


def test_new_names_come_from_the_given_allocator():
    graph = to_graph(encoder())
    names = NameAllocator(graph)
    quantize_dynamic(graph, names=names)
    node_names = [node.name for node in graph.nodes if node.name]
    assert {tensor.name for tensor in graph.tensors().values()} | set(node_names) <= names.used
    assert len(node_names) == len(set(node_names))


# ---------------------------------------------------------------------------------------------------------
# Exclusions and declines


def test_excluded_nodes_and_op_types_stay_float():
    model, result = quantized(encoder(), exclude_nodes=["l0_q", "l1_ffn2"], exclude_op_types=["Gemm", "Gather"])
    assert result.stats["quantized.MatMul"] == 10
    assert result.stats["skipped.excluded_node"] == 2 and result.stats["skipped.excluded_op_type"] == 2
    nodes = {node.name: node for node in model.graph.node}
    assert nodes["l0_q"].op_type == "MatMul" and nodes["l0_q"].input[1] == "l0_q_weight"
    assert nodes["l1_ffn2"].op_type == "MatMul" and nodes["pooler"].op_type == "Gemm"
    assert nodes["embed"].input[0] == "embedding"
    assert initializers(model)["embedding"].dtype == np.float32
    for feeds in encoder_feeds():
        for reference, candidate in zip(outputs(encoder(), feeds), outputs(model, feeds), strict=True):
            assert cosine(reference, candidate) > 0.99


def gemm_model(trans_b: int = 0, alpha: float = 1.0, beta: float = 1.0, bias: str | None = "constant",
               trans_a: int = 0) -> onnx.ModelProto:
    """y = Gemm(a, b[, c]) with a constant b, and c constant, a graph input ("computed") or absent."""
    rng = np.random.default_rng(5)
    weights = {"b": rng.standard_normal((4, 6) if trans_b else (6, 4)).astype(np.float32)}
    inputs = ["float[6, N] a" if trans_a else "float[N, 6] a"]
    operands = ["a", "b"]
    if bias == "constant":
        weights["c"] = rng.standard_normal(4).astype(np.float32)
    if bias == "computed":
        inputs.append("float[4] c")
    if bias is not None:
        operands.append("c")
    return with_weights(f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g ({", ".join(inputs)}) => (float[N, 4] y) {{
            [gemm] y = Gemm <transA = {trans_a}, transB = {trans_b}, alpha = {alpha}, beta = {beta}>
                            ({", ".join(operands)})
        }}""", weights)


@pytest.mark.parametrize("trans_b, alpha, beta, bias", [
    (0, 1.0, 1.0, "constant"), (1, 1.0, 1.0, "constant"), (1, 0.5, 2.0, "constant"), (0, 1.0, 1.0, None),
    (1, 1.0, 1.0, "computed"),
])
def test_gemm_becomes_integer_matmul_plus_float_bias(trans_b, alpha, beta, bias):
    model = gemm_model(trans_b, alpha, beta, bias)
    output, result = quantized(model)
    assert result.stats == {"quantized.Gemm": 1}
    counts = op_counts(output)
    assert "Gemm" not in counts and counts["MatMulInteger"] == 1 and counts.get("Add", 0) == (bias is not None)
    weight = next(v for v in initializers(output).values() if v.dtype == np.int8)
    assert weight.shape == (6, 4)  # stored [K, N] whatever transB was
    rng = np.random.default_rng(7)
    feeds = {"a": rng.standard_normal((5, 6)).astype(np.float32)}
    if bias == "computed":
        feeds["c"] = rng.standard_normal(4).astype(np.float32)
    for optimize in (False, True):
        expected, actual = outputs(model, feeds)[0], outputs(output, feeds, optimize)[0]
        assert cosine(expected, actual) > 0.999
        np.testing.assert_allclose(actual, expected, atol=0.05 * np.abs(expected).max())


@pytest.mark.parametrize("reason, model", [
    ("gemm_trans_a", lambda: gemm_model(trans_a=1)),
    ("gemm_beta", lambda: gemm_model(beta=2.0, bias="computed")),
])
def test_gemm_declines(reason, model):
    model = model()
    output, result = quantized(model)
    assert not result.changed and result.stats == {f"skipped.{reason}": 1}
    assert result.diagnostics[0].node == "gemm" and REASONS[reason] in result.diagnostics[0].message
    assert_unchanged(output, model)


@pytest.mark.parametrize("reason, text, shapes, dtype", [
    ("conv_integer_slow", "(float[N, 2, 5, 5] x) => (float[N, 3, 3, 3] y) { [node] y = Conv(x, w) }",
     {"w": (3, 2, 3, 3)}, np.float32),
    ("weight_not_constant", "(float[N, 4] x, float[4, 3] w) => (float[N, 3] y) { [node] y = MatMul(x, w) }",
     {}, np.float32),
    ("weight_rank", "(float[2, N, 4] x) => (float[2, N, 3] y) { [node] y = MatMul(x, w) }",
     {"w": (2, 4, 3)}, np.float32),
    ("not_float32", "(double[N, 4] x) => (double[N, 3] y) { [node] y = MatMul(x, w) }", {"w": (4, 3)}, np.float64),
    ("constant_operand", "() => (float[2, 3] y) { [node] y = MatMul(c, w) }", {"c": (2, 4), "w": (4, 3)},
     np.float32),
    ("gather_axis", "(int64[N] i) => (float[5, N] y) { [node] y = Gather <axis = 1> (table, i) }",
     {"table": (5, 7)}, np.float32),
    ("weight_rank", "(int64[N] i) => (float[N, 2, 3] y) { [node] y = Gather(table, i) }",
     {"table": (5, 2, 3)}, np.float32),
])
def test_node_declines(reason, text, shapes, dtype):
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}
    model = with_weights(f'<ir_version: 8, opset_import: ["" : 13]>\ng {text}', weights)
    output, result = quantized(model)
    assert not result.changed and result.stats == {f"skipped.{reason}": 1}
    assert result.diagnostics[0].node == "node" and f"({reason})" in result.diagnostics[0].message
    assert_unchanged(output, model)


@pytest.mark.parametrize("opset, body, reason", [
    (10, "y = MatMul(x, w)", "opset_below_11"),
    (13, "q = QuantizeLinear(x, s)\n t = DequantizeLinear(q, s)\n y = MatMul(t, w)", "already_quantized"),
])
def test_whole_graph_declines(opset, body, reason):
    weights = {"w": np.ones((4, 3), np.float32)} | ({"s": np.array(0.1, np.float32)} if "s)" in body else {})
    model = with_weights(f"""
        <ir_version: 7, opset_import: ["" : {opset}]>
        g (float[N, 4] x) => (float[N, 3] y) {{ {body} }}""", weights)
    output, result = quantized(model)
    assert result.stats == {f"skipped.{reason}": 1} and not result.changed
    assert result.diagnostics[0].severity == "warning"
    assert_unchanged(output, model)


def test_shared_weight_is_quantized_once():
    weight = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    model = with_weights("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4] x, float[N, 4] z) => (float[N, 3] y, float[N, 3] u) { y = MatMul(x, w)
                                                                             u = MatMul(z, w) }""", {"w": weight})
    output, result = quantized(model)
    assert result.stats == {"quantized.MatMul": 2}
    assert [v.dtype for v in initializers(output).values()].count(np.int8) == 1
    assert op_counts(output)["DynamicQuantizeLinear"] == 2


def test_gather_below_opset_13_dequantizes_per_tensor():
    table = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    model = with_weights("""
        <ir_version: 7, opset_import: ["" : 12]>
        g (int64[N] i) => (float[N, 4] y) { [embed] y = Gather(table, i) }""", {"table": table})
    output, result = quantized(model)
    assert result.stats == {"quantized.Gather": 1}
    dequantize = producers(output)["y"]
    assert not dequantize.attribute and initializers(output)[dequantize.input[1]].shape == ()
    indices = {"i": np.array([0, 5, 2, 2], np.int64)}
    np.testing.assert_allclose(outputs(output, indices)[0], table[indices["i"]], atol=np.abs(table).max() / 254)
