"""A corpus of hostile and damaged model files, each paired with what ``graphopt`` must do with it.

``build(folder)`` writes the corpus into ``folder`` (every file is small: at most 64 KB) and returns one
``Case`` per file: the path to hand to the CLI, the exit code expected, and a fragment of the one-line error
(or, for a case that must succeed, of the diagnostic it must report). ``tests/test_hostile_input.py`` runs each case
through the real CLI; ``python tests/hostile_corpus.py OUTDIR`` writes the corpus for a look by hand.

All cases but two are inputs that are not usable models, so the CLI must exit 2 with one line on stderr,
no traceback, no output and no temporary file: empty, random, truncated and text files, protobufs of
other messages, graphs the ONNX checker rejects (a cycle, a dangling input, two writers of one tensor),
external data that is missing or lies outside the model's folder (which must never be read), an IR
version or opset too new, an initializer whose dims claim far more than its data holds, an input whose
declared shape no tensor can have, and If nodes nested hundreds of levels deep. The exceptions (exit 0,
output written) are a model with ops of a domain nobody here knows, which pass through untouched with a
diagnostic, and If nodes nested as deep as protobuf allows.

Models that must be refused before anything reads their external data point it at a file outside the
model's folder that holds bytes fit for the weight (``Case.guarded``; the tests watch it): ``outside/secret.data``,
or for ``../../etc/passwd`` a decoy where that path leads (the model sits two folders below its case's folder).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as helper
import onnx.numpy_helper as numpy_helper

EXIT_OK = 0
EXIT_USAGE = 2

FLOAT = onnx.TensorProto.FLOAT
IR_VERSION = 8  # what every model here declares, unless the case is about the IR version
OPSET = 17
UNKNOWN_DOMAIN = "com.example.hostile"
NESTING_DEPTH = 300  # If nodes inside If nodes: far past protobuf's default recursion limit of 100 messages
LEGAL_NESTING_DEPTH = 30  # 3 messages a level (node, attribute, graph): 91 deep, within that limit


@dataclass(frozen=True)
class Case:
    """One corpus file. ``path``: the model to pass to the CLI; ``exit_code``: what the CLI must exit with;
    ``message``: a fragment of its one-line error (when ``exit_code`` is 0: of a diagnostic in the report, or
    empty when none is expected);
    ``guarded``: files outside the model's folder that must never be opened while the case runs."""

    name: str
    path: Path
    exit_code: int
    message: str
    summary: str
    guarded: tuple[Path, ...] = field(default=())


# ---------------------------------------------------------------------------------------------------------
# Models


def _value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, FLOAT, shape)


def _model(nodes, inputs, outputs, initializers=(), *, ir_version: int = IR_VERSION, opsets=None,
           name: str = "hostile") -> onnx.ModelProto:
    """A model of one graph, built without the checker (most of these must fail it)."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", OPSET)],
                              producer_name="hostile_corpus")
    model.ir_version = ir_version
    return model


def valid_model() -> onnx.ModelProto:
    """y = Relu(x + w) with a 64-float weight ``w``: valid, small, and with enough bytes to cut in half."""
    weight = numpy_helper.from_array(np.linspace(-1, 1, 64, dtype=np.float32).reshape(16, 4), "w")
    nodes = [helper.make_node("Add", ["x", "w"], ["t"], name="add"),
             helper.make_node("Relu", ["t"], ["y"], name="relu")]
    model = _model(nodes, [_value("x", ["N", 16, 4])], [_value("y", ["N", 16, 4])], [weight])
    onnx.checker.check_model(model)
    return model


def _cycle() -> onnx.ModelProto:
    """a = Add(x, b); b = Relu(a): each node reads the other's output."""
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["b"], name="relu")]
    return _model(nodes, [_value("x", [4])], [_value("b", [4])])


def _dangling_input() -> onnx.ModelProto:
    """Relu reads ``nowhere``, which no node, input or initializer produces."""
    nodes = [helper.make_node("Relu", ["nowhere"], ["y"], name="relu")]
    return _model(nodes, [_value("x", [4])], [_value("y", [4])])


def _duplicate_output() -> onnx.ModelProto:
    """Two nodes write the same tensor ``y``."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="first"),
             helper.make_node("Sigmoid", ["x"], ["y"], name="second")]
    return _model(nodes, [_value("x", [4])], [_value("y", [4])])


def _with_ir_version(version: int) -> onnx.ModelProto:
    model = valid_model()
    model.ir_version = version
    return model


def _with_opset(version: int) -> onnx.ModelProto:
    model = valid_model()
    model.opset_import[0].version = version
    return model


def unknown_domain_model() -> onnx.ModelProto:
    """Valid ONNX with two ops of a domain neither onnx nor onnxruntime knows, one of them fed by a constant (a
    constant folder must not try to evaluate it), and a dead Sigmoid the passes remove:
    y = Relu(Frobnicate(x) + Frobnicate(k))."""
    nodes = [helper.make_node("Frobnicate", ["x"], ["b"], name="frobnicate_x", domain=UNKNOWN_DOMAIN, strength=3),
             helper.make_node("Frobnicate", ["k"], ["c"], name="frobnicate_k", domain=UNKNOWN_DOMAIN, strength=1),
             helper.make_node("Add", ["b", "c"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu"),
             helper.make_node("Sigmoid", ["x"], ["dead"], name="dead")]
    constant = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "k")
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(UNKNOWN_DOMAIN, 1)]
    model = _model(nodes, [_value("x", [2, 4])], [_value("y", [2, 4])], [constant], opsets=opsets)
    onnx.checker.check_model(model, full_check=True)
    return model


def _huge_initializer_dims() -> onnx.ModelProto:
    """An initializer whose dims claim 2**31 x 2**31 floats while its raw_data holds 16 bytes."""
    model = valid_model()
    liar = model.graph.initializer[0]
    del liar.dims[:]
    liar.dims.extend([2**31, 2**31])
    liar.raw_data = np.ones(4, np.float32).tobytes()
    return model


def _huge_input_dims() -> onnx.ModelProto:
    """An input of declared shape [2**40, 2**40]: 2**80 elements, more than a 64-bit size can count."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    return _model(nodes, [_value("x", [2**40, 2**40])], [_value("y", [2**40, 2**40])])


def _field(message_type, name: str, payload: bytes) -> bytes:
    """The wire bytes of the length-delimited field ``name`` of ``message_type`` holding ``payload``."""
    def varint(value: int) -> bytes:
        out = bytearray()
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes(out + bytes([value]))

    number = message_type.DESCRIPTOR.fields_by_name[name].number
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _nested_ifs(depth: int) -> bytes:
    """``depth`` If nodes, each the only node of its parent's then-branch; the innermost branches return x.

    Serialized by hand: protobuf (upb) will neither build nor parse a message nested this deep, so each
    level's graph is wrapped in its If node's bytes. Parsing a concatenation merges its parts, so a message
    is its fields serialized apart and joined."""
    def graph_bytes(name: str, body: bytes) -> bytes:  # a branch: no inputs, one output, body's nodes
        shell = helper.make_graph([], name, [], [_value(f"{name}_out", [1])])
        return shell.SerializeToString() + body

    def if_bytes(name: str, out: str, then_graph: bytes, else_graph: bytes) -> bytes:
        node = helper.make_node("If", ["cond"], [out], name=name).SerializeToString()
        for attribute, graph in (("then_branch", then_graph), ("else_branch", else_graph)):
            shell = onnx.AttributeProto(name=attribute, type=onnx.AttributeProto.GRAPH).SerializeToString()
            node += _field(onnx.NodeProto, "attribute", shell + _field(onnx.AttributeProto, "g", graph))
        return node

    def identity(out: str) -> bytes:
        return _field(onnx.GraphProto, "node", helper.make_node("Identity", ["x"], [out]).SerializeToString())

    body = identity(f"level{depth}_then_out")
    for level in range(depth - 1, -1, -1):
        then_graph = graph_bytes(f"level{level + 1}_then", body)
        else_graph = graph_bytes(f"level{level + 1}_else", identity(f"level{level + 1}_else_out"))
        out = "y" if level == 0 else f"level{level}_then_out"
        body = _field(onnx.GraphProto, "node", if_bytes(f"if{level}", out, then_graph, else_graph))
    inputs = [helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []), _value("x", [1])]
    shell = _model([], inputs, [_value("y", [1])])
    graph = shell.graph.SerializeToString() + body
    shell.ClearField("graph")
    return shell.SerializeToString() + _field(onnx.ModelProto, "graph", graph)


def _external(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """``model`` with its weight's values said to be stored externally at ``location`` (nothing is written
    there)."""
    tensor = model.graph.initializer[0]
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return model


# ---------------------------------------------------------------------------------------------------------
# The corpus


def _write(path: Path, content: bytes | onnx.ModelProto) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.SerializeToString())
    return path


def build(folder: str | os.PathLike) -> list[Case]:
    """Write the corpus into ``folder`` (created if missing) and return its cases, in a stable order."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    secret = _write(root / "outside" / "secret.data", np.arange(64, dtype=np.float32).tobytes())  # fits ``w``
    valid = valid_model().SerializeToString()
    cases: list[Case] = []

    def add(name: str, content: bytes | onnx.ModelProto | Callable[[Path], Path], exit_code: int,
            message: str, summary: str, guarded: tuple[Path, ...] = ()) -> None:
        """A case in a folder of its own, so that external data and outputs of one case never meet another's."""
        folder = root / name
        folder.mkdir(exist_ok=True)
        path = content(folder) if callable(content) else _write(folder / "model.onnx", content)
        cases.append(Case(name, path, exit_code, message, summary, guarded))

    def external(location: str | Callable[[Path], str], link_to: Path | None = None, below: str = ""):
        """A writer of the valid model with its weight at ``location``, in the case's folder or ``below`` it."""
        def write(folder: Path) -> Path:
            folder = folder / below
            folder.mkdir(parents=True, exist_ok=True)
            target = location(folder) if callable(location) else location
            if link_to is not None:
                (folder / "w.data").symlink_to(link_to)
            return _write(folder / "model.onnx", _external(valid_model(), target))
        return write

    add("empty", b"", EXIT_USAGE, "empty", "a zero-byte file")
    add("random-bytes", np.random.default_rng(7).bytes(2048), EXIT_USAGE, "not an ONNX model",
        "2 KB of random bytes")
    add("truncated", valid[: len(valid) // 2], EXIT_USAGE, "not an ONNX model", "a valid model cut in half")
    add("text", b"# graphopt notes\nthis is a text file, not a model\n", EXIT_USAGE, "not an ONNX model",
        "a text file")
    add("tensor-proto", numpy_helper.from_array(np.ones((3, 3), np.float32), "w").SerializeToString(),
        EXIT_USAGE, "not an ONNX model", "a serialized TensorProto")
    add("graph-proto", valid_model().graph.SerializeToString(), EXIT_USAGE, "not an ONNX model",
        "a serialized GraphProto")
    add("cycle", _cycle(), EXIT_USAGE, "topologically sorted", "two nodes that read each other's output")
    add("dangling-input", _dangling_input(), EXIT_USAGE, "nowhere", "a node reads a tensor nobody produces")
    add("duplicate-output", _duplicate_output(), EXIT_USAGE, "single static assignment",
        "two nodes write the same tensor")
    add("external-missing", external("w.data"), EXIT_USAGE, "missing", "the external data file is not there")
    add("external-dot-dot", external(lambda folder: os.path.relpath(secret, folder)), EXIT_USAGE,
        "outside the model's folder", "external data at ../outside/secret.data", (secret,))
    decoy = _write(root / "external-etc-passwd" / "etc" / "passwd", secret.read_bytes())
    add("external-etc-passwd", external("../../etc/passwd", below="a/b"), EXIT_USAGE,
        "outside the model's folder", "external data at ../../etc/passwd (a decoy there)", (decoy,))
    add("external-absolute", external(str(secret)), EXIT_USAGE, "outside the model's folder",
        "external data at an absolute path", (secret,))
    add("external-symlink", external("w.data", link_to=secret), EXIT_USAGE, "outside the model's folder",
        "external data through a symlink pointing outside the folder", (secret,))
    add("ir-version-too-new", _with_ir_version(onnx.IR_VERSION + 1), EXIT_USAGE,
        f"IR version {onnx.IR_VERSION + 1}", "an IR version newer than onnx knows")
    add("ir-version-zero", _with_ir_version(0), EXIT_USAGE, "not an ONNX model", "IR version 0")
    newest = onnx.defs.onnx_opset_version()
    add("opset-too-new", _with_opset(newest + 1), EXIT_USAGE, f"opset {newest + 1} of domain ai.onnx is newer",
        "a default-domain opset newer than onnx and onnxruntime support")
    add("unknown-domain", unknown_domain_model(), EXIT_OK, UNKNOWN_DOMAIN,
        "an op of a domain nobody here knows: passed through, with a diagnostic")
    add("huge-initializer-dims", _huge_initializer_dims(), EXIT_USAGE, "tensor name: w",
        "an initializer claiming 2**62 floats with 16 bytes of data")
    add("huge-input-dims", _huge_input_dims(), EXIT_USAGE, "input 'x' declares shape",
        "an input declared [2**40, 2**40]")
    add("nested-ifs", _nested_ifs(NESTING_DEPTH), EXIT_USAGE, "nested deeper than protobuf's limit",
        f"If inside If, {NESTING_DEPTH} levels deep")
    add("nested-ifs-legal", _nested_ifs(LEGAL_NESTING_DEPTH), EXIT_OK, "",
        f"If inside If, {LEGAL_NESTING_DEPTH} levels deep: deep, but within what protobuf parses")
    return cases


def case_names() -> list[str]:
    """The names of the cases ``build`` makes, in its order (it is run into a temporary folder: it is cheap)."""
    with tempfile.TemporaryDirectory() as folder:
        return [case.name for case in build(folder)]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/hostile_corpus.py OUTDIR", file=sys.stderr)
        return 2
    for case in build(argv[0]):
        print(f"{case.name:24} exit {case.exit_code}  {case.path}  ({case.summary}; expects {case.message!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
