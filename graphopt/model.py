"""Model I/O: load from a path, bytes or a ModelProto; save atomically; import to and export from
onnx-graphsurgeon without losing what gs drops.

Loading refuses anything that is not a usable model with one line (``ModelError``, exit code 2): a missing
or empty file, bytes that do not parse as a ModelProto, a protobuf of another message, a model the ONNX
checker rejects, external data outside the model's folder. External data is resolved relative to the
model's own folder; a location that is absolute or escapes that folder (``..``, symlinks) is refused and
never read.

Saving writes into a temporary folder beside the target, checks the written model with the ONNX checker
and by loading it in onnxruntime's CPU provider, and only then renames it into place, so a failed or
interrupted save leaves the previous file untouched (``OutputModelError``, exit code 3). Models over 2 GB
are written with their weights in ``<file name>.data`` beside the model.

``to_graph`` and ``to_model`` import into and export from onnx-graphsurgeon without losing what gs drops or
cannot represent (metadata, doc strings, value types, attribute kinds, ...); ``graphopt.fidelity`` lists
each item and how it is restored, also after passes edited the graph.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import onnx
import onnx.external_data_helper as external_data_helper
import onnx_graphsurgeon as gs
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

from graphopt import fidelity
from graphopt.errors import ModelError, OutputModelError, UsageError, one_line

ModelSource = str | os.PathLike | bytes | onnx.ModelProto

TWO_GB = 2**31 - 1
# Headroom below protobuf's 2 GB message limit: above this the model is saved with external data.
EXTERNAL_DATA_THRESHOLD = TWO_GB - 64 * 2**20
_UNCHECKED = object()  # a checker verdict not asked for yet


def load(source: ModelSource) -> onnx.ModelProto:
    """Load and check a model from a path, bytes or a ModelProto (which is returned as is, after checks)."""
    if isinstance(source, onnx.ModelProto):
        _check_loaded(source, "the model")
        return source
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)  # checked before it is parsed, as in _load_path
        verdict = _checker_verdict(data) if len(data) <= onnx.checker.MAXIMUM_PROTOBUF else _UNCHECKED
        model = _parse(data, "the given bytes")
        _check_loaded(model, "the given bytes", verdict)
        return model
    return _load_path(os.fspath(source))


def _load_path(path: str) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a folder, not an ONNX model file")
    if os.path.getsize(path) == 0:
        raise ModelError(f"{path}: the file is empty (0 bytes), not an ONNX model")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ModelError(f"{path}: cannot read: {error.strerror}") from error
    # The checker parses a copy of its own: run it on the bytes before they are parsed here, so that two
    # copies of the model are in memory at a time, not three (its verdict is given after the checks below,
    # which name a problem more precisely). Models with external data are checked from their path, where
    # the checker resolves the data's locations.
    verdict = _checker_verdict(data) if len(data) <= onnx.checker.MAXIMUM_PROTOBUF else _UNCHECKED
    model = _parse(data, path)
    del data
    base_dir = os.path.dirname(os.path.abspath(path))
    _check_external_locations(model, base_dir, path)
    if verdict is _UNCHECKED or _external_tensors(model):
        verdict = _checker_verdict(path)
    _check_loaded(model, path, verdict)
    try:
        external_data_helper.load_external_data_for_model(model, base_dir)
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot read its external data: {one_line(error)}") from error
    return model


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelError(f"{name}: not an ONNX model (does not parse as a protobuf ModelProto)") from error
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelError(f"{name}: not an ONNX model (no IR version, graph or opset import; "
                         f"is it another kind of file or protobuf message?)")
    return model


def _checker_verdict(target: str | bytes | onnx.ModelProto) -> Exception | None:
    """What the ONNX checker says of a path, serialized bytes or ModelProto: its error, or None."""
    try:
        onnx.checker.check_model(target)
    except (onnx.checker.ValidationError, ValueError) as error:
        return error
    return None


def _check_loaded(model: onnx.ModelProto, name: str, verdict: Exception | None | object = _UNCHECKED) -> None:
    """ModelError if the IR version is too new or the checker rejects the model (``verdict``: the
    checker's answer when it has already been asked)."""
    if model.ir_version > onnx.IR_VERSION:
        raise ModelError(f"{name}: IR version {model.ir_version} is newer than this onnx supports "
                         f"({onnx.IR_VERSION}); upgrade onnx")
    if verdict is _UNCHECKED:
        verdict = _checker_verdict(model)
    if verdict is not None:
        raise ModelError(f"{name}: not a valid ONNX model: {one_line(verdict)}") from verdict


def _external_tensors(model: onnx.ModelProto):
    return [t for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)]


def _check_external_locations(model: onnx.ModelProto, base_dir: str, name: str) -> None:
    """Refuse external data that is absolute, escapes ``base_dir`` (also through symlinks) or is missing."""
    real_base = os.path.realpath(base_dir)
    for tensor in _external_tensors(model):
        location = external_data_helper.ExternalDataInfo(tensor).location
        target = os.path.realpath(os.path.join(base_dir, location))
        if os.path.isabs(location) or os.path.commonpath([real_base, target]) != real_base:
            raise ModelError(f"{name}: refusing external data location {location!r} of tensor "
                             f"'{tensor.name}': it is outside the model's folder")
        if not os.path.isfile(target):
            raise ModelError(f"{name}: external data file {location!r} of tensor '{tensor.name}' is missing")


# ---------------------------------------------------------------------------------------------------------
# Saving


def save(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None,
         verify: bool = True) -> None:
    """Write ``model`` to ``path`` atomically; with ``verify``, only if it passes the checker and loads in
    onnxruntime. ``external_data=None`` chooses external data for models over 2 GB."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    check_writable(path)
    if external_data is None:
        external_data = serialized_size(model) > EXTERNAL_DATA_THRESHOLD
    data_name = os.path.basename(path) + ".data"
    staging = tempfile.mkdtemp(prefix=".graphopt-", dir=folder)
    try:
        staged = os.path.join(staging, os.path.basename(path))
        _write(model, staged, data_name if external_data else None)
        if verify:
            check_output(staged)
        if external_data:
            os.replace(os.path.join(staging, data_name), os.path.join(folder, data_name))
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write(model: onnx.ModelProto, path: str, data_name: str | None) -> None:
    if data_name:  # onnx converts the proto it saves to external data in place: give it a copy
        staged = onnx.ModelProto()
        staged.CopyFrom(model)
        onnx.save_model(staged, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=0)
    else:
        with open(path, "wb") as handle:
            for chunk in _serialized_chunks(model):
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())


# Serializing a whole model at once costs seconds on a large one and holds two or three transient copies of it
# (upb grows its buffer by doubling; Python then copies the result into bytes). A ModelProto serializes as its
# fields in field-number order (unknown fields last), and its graph likewise, so the same bytes can be made a
# piece at a time: the main graph's initializers one by one, the rest of the model around them.
_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"]
_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"]


class _Pieces(NamedTuple):
    before_graph: onnx.ModelProto  # the model's fields numbered below ``graph``
    graph_head: onnx.GraphProto  # the graph's fields numbered below ``initializer``
    initializers: Sequence[onnx.TensorProto]
    graph_tail: onnx.GraphProto
    after_graph: onnx.ModelProto


def _pieces(model: onnx.ModelProto) -> _Pieces | None:
    """``model`` cut around its main graph's initializers; None when the model or its graph carries fields
    this onnx does not know (they serialize last, and copies made field by field would lose them)."""
    if unknown_fields.UnknownFieldSet(model) or unknown_fields.UnknownFieldSet(model.graph):
        return None
    pieces = _Pieces(onnx.ModelProto(), onnx.GraphProto(), model.graph.initializer, onnx.GraphProto(),
                     onnx.ModelProto())
    for target, source, split in ((pieces.before_graph, model, _GRAPH_FIELD),
                                  (pieces.graph_head, model.graph, _INITIALIZER_FIELD)):
        later = {f.name for f in source.DESCRIPTOR.fields if f.number >= split.number}
        fidelity.copy_fields_except(target, source, skip=later)
    for target, source, split in ((pieces.after_graph, model, _GRAPH_FIELD),
                                  (pieces.graph_tail, model.graph, _INITIALIZER_FIELD)):
        earlier = {f.name for f in source.DESCRIPTOR.fields if f.number <= split.number}
        fidelity.copy_fields_except(target, source, skip=earlier)
    return pieces


def _serialized_chunks(model: onnx.ModelProto) -> Iterator[bytes]:
    """``model.SerializeToString()`` in pieces (see above)."""
    pieces = _pieces(model)
    if pieces is None:
        yield model.SerializeToString()
        return
    yield pieces.before_graph.SerializeToString()
    if model.HasField("graph"):
        sizes = [initializer.ByteSize() for initializer in pieces.initializers]
        yield _field_header(_GRAPH_FIELD, _graph_size(pieces, sizes))
        yield pieces.graph_head.SerializeToString()
        for initializer, size in zip(pieces.initializers, sizes, strict=True):
            yield _field_header(_INITIALIZER_FIELD, size)
            yield initializer.SerializeToString()
        yield pieces.graph_tail.SerializeToString()
    yield pieces.after_graph.SerializeToString()


def serialized_size(model: onnx.ModelProto) -> int:
    """``model.ByteSize()``, computed a piece at a time (see above: upb computes ByteSize by serializing)."""
    pieces = _pieces(model)
    if pieces is None:
        return model.ByteSize()
    size = pieces.before_graph.ByteSize() + pieces.after_graph.ByteSize()
    if model.HasField("graph"):
        graph_size = _graph_size(pieces, [initializer.ByteSize() for initializer in pieces.initializers])
        size += len(_field_header(_GRAPH_FIELD, graph_size)) + graph_size
    return size


def _graph_size(pieces: _Pieces, initializer_sizes: list[int]) -> int:
    size = pieces.graph_head.ByteSize() + pieces.graph_tail.ByteSize()
    return size + sum(len(_field_header(_INITIALIZER_FIELD, s)) + s for s in initializer_sizes)


def _field_header(field, length: int) -> bytes:
    """The tag and length that precede a length-delimited field in protobuf's wire format."""
    return _varint(field.number << 3 | 2) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def check_writable(path: str) -> None:
    """UsageError (exit 2) if ``path`` cannot be written: missing folder, no permission, a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")


def check_output(path: str) -> None:
    """OutputModelError unless the model at ``path`` passes the ONNX checker and loads in onnxruntime."""
    from graphopt.validate.numerics import cpu_session

    try:
        onnx.checker.check_model(path)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise OutputModelError(f"the optimized model fails the ONNX checker, nothing was written: "
                               f"{one_line(error)}") from error
    try:
        cpu_session(path)
    except Exception as error:  # onnxruntime raises its own exception types for load failures
        raise OutputModelError(f"the optimized model does not load in onnxruntime, nothing was written: "
                               f"{one_line(error)}") from error


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if both paths name the same existing file (also through links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


# ---------------------------------------------------------------------------------------------------------
# onnx-graphsurgeon import and export


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """The model's graph as a gs.Graph, imported from a copy (``model`` is never modified); see
    ``graphopt.fidelity`` for what is set aside for gs and restored by ``to_model``."""
    try:
        return fidelity.import_graph(model)
    except Exception as error:  # gs raises bare exceptions for graphs it cannot represent
        raise ModelError(f"cannot import the model's graph: {one_line(error)}") from error


def to_model(graph: gs.Graph, original: onnx.ModelProto, *, release: bool = False) -> onnx.ModelProto:
    """Export ``graph`` and restore from ``original`` what gs does not carry (see ``graphopt.fidelity``);
    ``original`` is the model ``graph`` was imported from. ``release``: for the graph's last export, let
    its constants read the exported tensors, so that the numpy arrays passes made can be freed while the
    model is written."""
    return fidelity.export_model(graph, original, release=release)
