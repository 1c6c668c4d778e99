"""Model I/O: load from a path, bytes or a ModelProto; save atomically; import to and export from
onnx-graphsurgeon without losing what gs drops.

Loading refuses anything that is not a usable model with one line (``ModelError``, exit code 2): a missing
or empty file, bytes that do not parse as a ModelProto, a protobuf of another message, a model the ONNX
checker rejects, external data outside the model's folder, an IR version or an ai.onnx/ai.onnx.ml opset newer
than onnx and onnxruntime support, messages nested deeper than protobuf parses, a declared shape with more
elements than a 64-bit count holds. External data is resolved relative to the model's own folder; a location
that is absolute or escapes that folder (``..``, symlinks) is refused and never read.

Custom ops (of a domain neither onnx nor onnxruntime defines, see ``custom_ops``) are not refused: passes
leave them as they are, the optimize report says so, and a saved model that onnxruntime does not load only
for want of their kernels (registered by whoever runs it) is checked with the ONNX checker alone.

Saving writes into a temporary folder beside the target, checks the written model with the ONNX checker
and by loading it in onnxruntime's CPU provider, and only then renames it into place, so a failed or
interrupted save leaves the previous file untouched (``OutputModelError``, exit code 3). Models over 2 GB
are written with their weights in ``<file name>.data`` beside the model, or, when a file of that name exists,
in ``<file name>.1.data`` (``.2.data``, ...): the data file never replaces one, so a save killed at any point
leaves the previous model reading its own weights; the previous model's data file is removed once the new
model is in place (tests/test_atomic_save.py kills real saves at each step).

``load_split`` loads the same model with each of its main graph's initializers parsed as a message of its
own (``SplitModel``), so that the optimizer can free each weight as soon as it is no longer read instead of
holding the whole input until the end; ``joined`` makes it one message again.

``to_graph`` and ``to_model`` import into and export from onnx-graphsurgeon without losing what gs drops or
cannot represent (metadata, doc strings, value types, attribute kinds, ...); ``graphopt.fidelity`` lists
each item and how it is restored, also after passes edited the graph.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
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


class SplitModel(NamedTuple):
    """A model and the values of its main graph's initializers: ``weights[i]`` holds the values of
    ``model.graph.initializer[i]``, or, when ``weights`` is None, the initializers hold their own values.

    Loaded from a file or bytes (``load_split``), each weight is a message of its own and the model's
    initializers are value-less stand-ins (see ``graphopt.fidelity.copy_without_values``): protobuf frees a
    message's memory only with the whole message, so this is what lets each weight be freed as soon as nothing
    reads it (a weight that a pass replaced, or that was copied into the optimized model) rather than with
    the rest of the input model.
    """

    model: onnx.ModelProto
    weights: list[onnx.TensorProto] | None
    external_data: bool = False  # the file kept (some of) its weights in external data files


def load(source: ModelSource) -> onnx.ModelProto:
    """Load and check a model from a path, bytes or a ModelProto (which is returned as is, after checks)."""
    return _load(source, split=False).model


def load_split(source: ModelSource) -> SplitModel:
    """``load``, with the main graph's initializers parsed as messages of their own (see ``SplitModel``). A
    ModelProto is returned as is (``weights`` None): its memory is its caller's. ``joined`` gives the whole
    model back."""
    return _load(source, split=True)


def joined(loaded: SplitModel) -> onnx.ModelProto:
    """The model with its initializers' values in it: ``loaded.model`` itself when they are there, else a
    copy into which the weights are copied."""
    if loaded.weights is None:
        return loaded.model
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    for initializer, weight in zip(model.graph.initializer, loaded.weights, strict=True):
        initializer.CopyFrom(weight)
    return model


def _load(source: ModelSource, split: bool) -> SplitModel:
    if isinstance(source, onnx.ModelProto):
        _check_loaded(source, "the model")
        return SplitModel(source, None)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)  # checked before it is parsed, as in _load_path
        verdict = _checker_verdict(data) if len(data) <= onnx.checker.MAXIMUM_PROTOBUF else _UNCHECKED
        loaded = _parse(data, "the given bytes", split)
        _check_loaded(loaded.model, "the given bytes", verdict)
        return _with_stand_ins(loaded)
    return _load_path(os.fspath(source), split)


def _load_path(path: str, split: bool) -> SplitModel:
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
    loaded = _parse(data, path, split)
    del data
    base_dir = os.path.dirname(os.path.abspath(path))
    external = [tensor for tensor in _all_tensors(loaded) if external_data_helper.uses_external_data(tensor)]
    _check_external_locations(external, base_dir, path)
    if verdict is _UNCHECKED or external:
        verdict = _checker_verdict(path)
    _check_loaded(loaded.model, path, verdict)
    try:
        for tensor in external:
            external_data_helper.load_external_data_for_tensor(tensor, base_dir)
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot read its external data: {one_line(error)}") from error
    return _with_stand_ins(loaded)._replace(external_data=bool(external))


def _all_tensors(loaded: SplitModel) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model (initializers, also of subgraphs, and tensor attributes) and its weights."""
    yield from external_data_helper._get_all_tensors(loaded.model)
    yield from loaded.weights or ()


def _with_stand_ins(loaded: SplitModel) -> SplitModel:
    """Give a split model's graph its value-less initializers, one per weight (after the weights' external data
    was read, so that the stand-ins do not point at it)."""
    for weight in loaded.weights or ():
        fidelity.copy_without_values(loaded.model.graph.initializer.add(), weight)
    return loaded


def _parse(data: bytes, name: str, split: bool) -> SplitModel:
    """``data`` parsed as a ModelProto; with ``split``, the main graph's initializers are parsed as messages
    of their own and left out of the model (``_with_stand_ins`` adds their stand-ins). Bytes that are not a
    sequence of well-formed fields are parsed whole, and the parser says what is wrong."""
    layout = _initializer_layout(data) if split else None
    try:
        if layout is None:
            loaded = SplitModel(onnx.ModelProto.FromString(data), None)
        else:
            loaded = SplitModel(onnx.ModelProto(), [onnx.TensorProto.FromString(v) for v in layout.initializers])
            for in_graph, piece in layout.pieces:
                (loaded.model.graph if in_graph else loaded.model).MergeFromString(piece)
            if layout.has_graph:
                loaded.model.graph.SetInParent()
    except (DecodeError, RuntimeError, ValueError) as error:
        if "MaxDepth" in str(error):  # upb's message for messages nested past its recursion limit
            raise ModelError(f"{name}: not a usable ONNX model: its messages are nested deeper than protobuf's "
                             f"limit of {_PROTOBUF_MAX_DEPTH} (subgraphs inside subgraphs), which neither onnx "
                             f"nor onnxruntime parses") from error
        raise ModelError(f"{name}: not an ONNX model (does not parse as a protobuf ModelProto)") from error
    model = loaded.model
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelError(f"{name}: not an ONNX model (no IR version, graph or opset import; "
                         f"is it another kind of file or protobuf message?)")
    return loaded


def _checker_verdict(target: str | bytes | onnx.ModelProto) -> Exception | None:
    """What the ONNX checker says of a path, serialized bytes or ModelProto: its error, or None."""
    try:
        onnx.checker.check_model(target)
    except (onnx.checker.ValidationError, ValueError) as error:
        return error
    return None


def _check_loaded(model: onnx.ModelProto, name: str, verdict: Exception | None | object = _UNCHECKED) -> None:
    """ModelError if the IR version or an opset is too new, the checker rejects the model (``verdict``: the
    checker's answer when it has already been asked), or a declared shape is larger than any tensor."""
    if model.ir_version > onnx.IR_VERSION:
        raise ModelError(f"{name}: IR version {model.ir_version} is newer than this onnx supports "
                         f"({onnx.IR_VERSION}); upgrade onnx")
    _check_opsets(model, name)
    if verdict is _UNCHECKED:
        verdict = _checker_verdict(model)
    if verdict is not None:
        raise ModelError(f"{name}: not a valid ONNX model: {one_line(verdict)}") from verdict
    _check_declared_shapes(model, name)


# The standard domains onnxruntime implements: how a model imports them -> their name in messages.
_RUNTIME_DOMAINS = {"": "ai.onnx", "ai.onnx": "ai.onnx", "ai.onnx.ml": "ai.onnx.ml"}
_PROTOBUF_MAX_DEPTH = 100  # upb's and protobuf C++'s default recursion limit for parsing
_MAX_ELEMENTS = 2**63 - 1  # onnxruntime counts a tensor's elements and bytes in 64 bits


# Opsets every onnxruntime graphopt accepts (>= 1.18) runs: models at or below them need no probe, so loading
# them starts no onnxruntime session (its first one costs ~25 MiB and tens of milliseconds).
_SUPPORTED_BY_EVERY_RUNTIME = {"ai.onnx": 20, "ai.onnx.ml": 4}


def _check_opsets(model: onnx.ModelProto, name: str) -> None:
    """ModelError for an ai.onnx or ai.onnx.ml opset newer than onnx or onnxruntime supports: the checker
    accepts such a model, but nothing could run it, and no output of it would load in onnxruntime."""
    for opset in model.opset_import:
        domain = _RUNTIME_DOMAINS.get(opset.domain)
        if domain is None or opset.version <= _SUPPORTED_BY_EVERY_RUNTIME[domain]:
            continue
        if opset.version > (newest := _newest_opset(domain)):
            raise ModelError(f"{name}: opset {opset.version} of domain {domain} is newer than onnx and "
                             f"onnxruntime support (up to {newest}); upgrade them or convert the model")


@functools.cache
def _newest_opset(domain: str) -> int:
    """The newest opset of ``domain`` that both onnx and onnxruntime support: onnx's newest, or the newest
    below it of which onnxruntime loads a one-node model (onnxruntime does not list the opsets it supports)."""
    from graphopt.validate.numerics import cpu_session

    newest = onnx.defs.onnx_opset_version() if domain == "ai.onnx" else onnx.defs.onnx_ml_opset_version()
    for version in range(newest, 0, -1):
        opsets = [onnx.helper.make_opsetid(domain, version)]
        if domain != "ai.onnx":
            opsets.append(onnx.helper.make_opsetid("", _newest_opset("ai.onnx")))
        value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                                       [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        probe = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=8)
        try:
            cpu_session(probe)
        except Exception:  # onnxruntime raises its own exception types for load failures
            continue
        return version
    return 0


def _check_declared_shapes(model: onnx.ModelProto, name: str) -> None:
    """ModelError for a main-graph input, output or value_info whose declared shape has more elements than a
    64-bit count holds: no tensor can have it, and sizing one (synthetic data, onnxruntime) overflows."""
    graph = model.graph
    for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for value in values:
            if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
                continue
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim if d.HasField("dim_value")]
            if math.prod(dims) > _MAX_ELEMENTS:
                raise ModelError(f"{name}: {kind} '{value.name}' declares shape {dims}, {math.prod(dims):.3g} "
                                 f"elements: more than any tensor can hold (at most 2**63 - 1)")


def _check_external_locations(external: list[onnx.TensorProto], base_dir: str, name: str) -> None:
    """Refuse external data that is absolute, escapes ``base_dir`` (also through symlinks) or is missing."""
    real_base = os.path.realpath(base_dir)
    for tensor in external:
        location = external_data_helper.ExternalDataInfo(tensor).location
        target = os.path.realpath(os.path.join(base_dir, location))
        if os.path.isabs(location) or os.path.commonpath([real_base, target]) != real_base:
            raise ModelError(f"{name}: refusing external data location {location!r} of tensor "
                             f"'{tensor.name}': it is outside the model's folder")
        if not os.path.isfile(target):
            raise ModelError(f"{name}: external data file {location!r} of tensor '{tensor.name}' is missing")


# ---------------------------------------------------------------------------------------------------------
# Parsing a model with its initializers as messages of their own
#
# A serialized message is the concatenation of its fields, and parsing a concatenation is merging the parses
# of its parts in order; a message field given as bytes is merged into that field. So a ModelProto parses to
# the same message when its bytes are cut at field boundaries and merged piece by piece, with the fields of
# its graph merged into its graph, and the graph's initializers can be parsed apart from the rest.


_LENGTH_DELIMITED = 2  # wire type
_FIXED_SIZES = {1: 8, 5: 4}  # wire types 64-bit and 32-bit


class _Layout(NamedTuple):
    pieces: list[tuple[bool, memoryview]]  # (fields of the graph?, serialized fields), in order
    initializers: list[memoryview]  # the serialized TensorProtos of the main graph's initializers, in order
    has_graph: bool


def _initializer_layout(data: bytes) -> _Layout | None:
    """``data`` cut into the main graph's initializers and the pieces around them (views, not copies); None if
    it is not a sequence of well-formed fields."""
    view = memoryview(data)
    pieces: list[tuple[bool, int, int]] = []
    initializers, has_graph = [], False
    try:
        for number, wire_type, start, payload, end in _fields(view, 0, len(view)):
            if number != _GRAPH_FIELD.number or wire_type != _LENGTH_DELIMITED:
                _add_piece(pieces, False, start, end)
                continue
            has_graph = True
            for inner, inner_type, inner_start, inner_payload, inner_end in _fields(view, payload, end):
                if inner == _INITIALIZER_FIELD.number and inner_type == _LENGTH_DELIMITED:
                    initializers.append(view[inner_payload:inner_end])
                else:
                    _add_piece(pieces, True, inner_start, inner_end)
    except ValueError:
        return None
    return _Layout([(in_graph, view[start:end]) for in_graph, start, end in pieces], initializers, has_graph)


def _add_piece(pieces: list[tuple[bool, int, int]], in_graph: bool, start: int, end: int) -> None:
    """Append the field at [start, end) to ``pieces``, joined to the last piece when it directly follows it."""
    if pieces and pieces[-1][0] == in_graph and pieces[-1][2] == start:
        pieces[-1] = (in_graph, pieces[-1][1], end)
    else:
        pieces.append((in_graph, start, end))


def _fields(view: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start, start of the payload, end) of each field in ``view[start:end]``.
    ValueError for anything but well-formed varint, 64-bit, length-delimited and 32-bit fields."""
    position = start
    while position < end:
        tag, payload = _read_varint(view, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            stop = _read_varint(view, payload)[1]
        elif wire_type == _LENGTH_DELIMITED:
            length, payload = _read_varint(view, payload)
            stop = payload + length
        elif wire_type in _FIXED_SIZES:
            stop = payload + _FIXED_SIZES[wire_type]
        else:
            raise ValueError(f"wire type {wire_type}")
        if number == 0 or stop > end:
            raise ValueError("field out of bounds")
        yield number, wire_type, position, payload, stop
        position = stop


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    value = 0
    for shift in range(0, 70, 7):
        if position >= len(view):
            break
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
    raise ValueError("truncated or overlong varint")


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
    # With external data, the model's rename is still the one step that replaces anything: the data file goes
    # to a name no file has (reserved here, empty, until the data takes its place), so that until the model
    # is renamed the previous model, and any other, keeps reading its own data file; the previous model's
    # data file (of the names graphopt gives: see ``_reserve_data_name``) is removed after the rename.
    data_name = _reserve_data_name(folder, os.path.basename(path)) if external_data else None
    previous_data = _own_data_files(path) if external_data else []
    staging = tempfile.mkdtemp(prefix=".graphopt-", dir=folder)
    committed = False
    try:
        staged = os.path.join(staging, os.path.basename(path))
        _write(model, staged, data_name)
        if verify:
            check_output(staged)
        if data_name:
            os.replace(os.path.join(staging, data_name), os.path.join(folder, data_name))
        os.replace(staged, path)
        committed = True
        _sync_folder(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if data_name and not committed:
            _remove_quietly(os.path.join(folder, data_name))
    for name, identity in previous_data:
        if name != data_name:
            _remove_quietly(os.path.join(folder, name), identity)


def _reserve_data_name(folder: str, model_name: str) -> str:
    """The first of ``<model>.data``, ``<model>.1.data``, ``<model>.2.data``, ... that no file in ``folder`` has,
    created there empty (exclusively, so no other writer takes it) to hold the name."""
    for index in range(10_000):
        name = f"{model_name}.data" if index == 0 else f"{model_name}.{index}.data"
        try:
            os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return name
    raise OutputModelError(f"cannot find a free name for the external data of {model_name} in {folder}")


def _own_data_files(path: str) -> list[tuple[str, tuple[int, int]]]:
    """The data files the model now at ``path`` reads that carry the names ``_reserve_data_name`` gives, with
    their (device, inode): what a save over it may remove once the new model is in place. Empty when there is
    no such file (the model is not even read then) or the model cannot be read."""
    folder, model_name = os.path.split(path)
    try:
        ours = {n for n in os.listdir(folder) if n == f"{model_name}.data"
                or (n.startswith(f"{model_name}.") and n.endswith(".data") and n[len(model_name) + 1:-5].isdigit())}
        if not ours or not os.path.isfile(path):
            return []
        previous = onnx.load_model(path, load_external_data=False)
        read = {external_data_helper.ExternalDataInfo(t).location for t in external_data_helper._get_all_tensors(
            previous) if external_data_helper.uses_external_data(t)}
        found = []
        for name in sorted(ours & read):
            status = os.stat(os.path.join(folder, name))
            found.append((name, (status.st_dev, status.st_ino)))
        return found
    except Exception:  # an unreadable previous file: its data files are left alone
        return []


def _remove_quietly(path: str, identity: tuple[int, int] | None = None) -> None:
    """Remove ``path`` (only if it is still the file ``identity`` names, when given); no error if it is gone."""
    try:
        if identity is not None:
            status = os.stat(path)
            if (status.st_dev, status.st_ino) != identity:
                return
        os.remove(path)
    except OSError:
        pass


def _sync_folder(folder: str) -> None:
    """Make the renames in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _write(model: onnx.ModelProto, path: str, data_name: str | None) -> None:
    """Write ``model`` to ``path``; with ``data_name``, the values of its initializers (those with raw_data,
    also in subgraphs) go to the file ``data_name`` beside it (see ``_ExternalData``)."""
    external = _ExternalData(os.path.join(os.path.dirname(path), data_name), data_name) if data_name else None
    try:
        with open(path, "wb") as handle:
            for chunk in _serialized_chunks(model, external):
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        if external is not None:
            external.close()


class _ExternalData:
    """The external data file of a model being written. What onnx's ``save_model(save_as_external_data=True,
    all_tensors_to_one_file=True, size_threshold=0)`` writes, without its costs on a large model: onnx converts
    the model it is given in place (so it needed a copy of the whole model, which doubled the memory), writes
    tensor by tensor through a file it reopens each time, and refuses to write when a file of the data's name
    exists in the current folder (a previous output, when run in the output's folder). Here each tensor's
    raw_data is appended to one open file, and the serialized model gets a value-less reference in its place
    (``reference``); the model in memory is not changed. Tensors of 1 MiB and more start at a multiple of 64
    KiB in the file, so that a reader can map them in place (onnxruntime maps external data)."""

    ALIGN_FROM = 2**20
    ALIGNMENT = 64 * 2**10

    def __init__(self, path: str, location: str) -> None:
        self.location = location
        self.handle = open(path, "wb")  # noqa: SIM115 - closed by ``close``, after the whole model is written

    def reference(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """``tensor``'s raw_data appended to the file, and a copy of ``tensor`` without values pointing there."""
        data = tensor.raw_data
        if len(data) >= self.ALIGN_FROM and self.handle.tell() % self.ALIGNMENT:
            self.handle.write(bytes(self.ALIGNMENT - self.handle.tell() % self.ALIGNMENT))
        offset = self.handle.tell()
        self.handle.write(data)
        reference = onnx.TensorProto()
        fidelity.copy_without_values(reference, tensor)
        del reference.external_data[:]
        reference.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", offset), ("length", len(data))):
            reference.external_data.add(key=key, value=str(value))
        return reference

    def externalize(self, tensors: Iterable[onnx.TensorProto]) -> None:
        """Make each of ``tensors`` (of a copy: they are changed) that holds raw_data a reference."""
        for tensor in tensors:
            if tensor.HasField("raw_data"):
                tensor.CopyFrom(self.reference(tensor))

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


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


def _serialized_chunks(model: onnx.ModelProto, external: _ExternalData | None = None) -> Iterator[bytes]:
    """``model.SerializeToString()`` in pieces (see above); with ``external``, of the model with its
    initializers' raw_data (also in subgraphs) written there, and references to it in their place."""
    pieces = _pieces(model)
    if pieces is None:
        if external is not None:  # unknown fields: only a whole copy keeps them
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            external.externalize(external_data_helper._get_initializer_tensors(copy))
            model = copy
        yield model.SerializeToString()
        return
    if external is not None:  # the pieces around the initializers are copies: subgraphs' initializers
        external.externalize(external_data_helper._get_initializer_tensors_from_graph(pieces.graph_head))
        pieces = pieces._replace(initializers=[external.reference(t) if t.HasField("raw_data") else t
                                               for t in pieces.initializers])
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


def serialized_size(model: onnx.ModelProto, weights: Sequence[onnx.TensorProto] | None = None) -> int:
    """``model.ByteSize()``, computed a piece at a time (see above: upb computes ByteSize by serializing). With
    ``weights`` (see ``SplitModel``), the size of the model with their values in its initializers."""
    pieces = _pieces(model)
    if pieces is None:
        return model.ByteSize() if weights is None else joined(SplitModel(model, list(weights))).ByteSize()
    size = pieces.before_graph.ByteSize() + pieces.after_graph.ByteSize()
    if model.HasField("graph"):
        initializers = pieces.initializers if weights is None else weights
        graph_size = _graph_size(pieces, [_tensor_size(initializer) for initializer in initializers])
        size += len(_field_header(_GRAPH_FIELD, graph_size)) + graph_size
    return size


_RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"]
_SERIALIZED_UP_TO = 2**16  # elements: a larger tensor's raw_data is measured rather than serialized


def _tensor_size(tensor: onnx.TensorProto) -> int:
    """``tensor.ByteSize()``; for a large tensor with raw_data, without serializing it (upb would copy it twice,
    into an encoding and into bytes): the size of its other fields plus raw_data's header and length."""
    if (not tensor.HasField("raw_data") or math.prod(tensor.dims) <= _SERIALIZED_UP_TO
            or unknown_fields.UnknownFieldSet(tensor)):  # unknown fields are not copied field by field
        return tensor.ByteSize()
    others = onnx.TensorProto()
    fidelity.copy_fields_except(others, tensor, skip={_RAW_DATA_FIELD.name})
    length = len(tensor.raw_data)
    return others.ByteSize() + len(_field_header(_RAW_DATA_FIELD, length)) + length


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
    """OutputModelError unless the model at ``path`` passes the ONNX checker and loads in onnxruntime. A model
    that onnxruntime refuses only for want of a kernel of one of its custom ops (see ``custom_ops``: their
    kernels are registered by whoever runs the model) is checked with the ONNX checker alone."""
    from graphopt.validate.numerics import cpu_session

    try:
        onnx.checker.check_model(path)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise OutputModelError(f"the optimized model fails the ONNX checker, nothing was written: "
                               f"{one_line(error)}") from error
    try:
        cpu_session(path, prepack=False)  # loading is what is checked: no second copy of the weights
    except Exception as error:  # onnxruntime raises its own exception types for load failures
        if _lacks_a_custom_kernel(path, error):
            return
        raise OutputModelError(f"the optimized model does not load in onnxruntime, nothing was written: "
                               f"{one_line(error)}") from error


def _lacks_a_custom_kernel(path: str, error: Exception) -> bool:
    """True if onnxruntime's load ``error`` says it has no kernel for a custom op of the model at ``path``."""
    message = str(error)
    if "is not a registered function/op" not in message:
        return False
    ops = custom_ops(onnx.load_model(path, load_external_data=False))
    return any(f"{domain}:{op}(" in message for domain, names in ops.items() for op in names)


@functools.cache
def _onnx_domains() -> frozenset[str]:
    return frozenset({"", "ai.onnx", *(schema.domain for schema in onnx.defs.get_all_schemas_with_history())})


def custom_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    """The op types, by domain, of the model's nodes (in subgraphs and functions too) that are custom ops: of a
    domain that onnx does not define, that is not onnxruntime's own (``com.microsoft...``), and not a function
    of the model. graphopt passes them through untouched; onnxruntime runs them once their kernels are
    registered."""
    local = {(function.domain, function.name) for function in model.functions}
    found: dict[str, set[str]] = {}
    graphs = [model.graph]
    nodes = [node for function in model.functions for node in function.node]
    while graphs:
        graph = graphs.pop()
        nodes.extend(graph.node)
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else attribute.graphs)
    for node in nodes:
        if (node.domain in _RUNTIME_DOMAINS or node.domain.startswith("com.microsoft")
                or (node.domain, node.op_type) in local or node.domain in _onnx_domains()):
            continue
        found.setdefault(node.domain, set()).add(node.op_type)
    return {domain: sorted(names) for domain, names in sorted(found.items())}


def custom_op_diagnostics(model: onnx.ModelProto) -> tuple[str, ...]:
    """One line per domain of custom ops (see ``custom_ops``) in ``model``, for the optimization report."""
    return tuple(f"custom ops of domain '{domain}' ({', '.join(names)}): unknown to onnx and onnxruntime, passed "
                 f"through unchanged; the output was checked with the ONNX checker only (onnxruntime loads it "
                 f"once their kernels are registered)" for domain, names in custom_ops(model).items())


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if both paths name the same existing file (also through links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


# ---------------------------------------------------------------------------------------------------------
# onnx-graphsurgeon import and export


def to_graph(model: onnx.ModelProto, weights: Sequence[onnx.TensorProto] | None = None) -> gs.Graph:
    """The model's graph as a gs.Graph, imported from a copy (``model`` is never modified); see
    ``graphopt.fidelity`` for what is set aside for gs and restored by ``to_model``. ``weights``: the values
    of the initializers, when the model does not hold them (see ``SplitModel``)."""
    try:
        return fidelity.import_graph(model, weights)
    except Exception as error:  # gs raises bare exceptions for graphs it cannot represent
        raise ModelError(f"cannot import the model's graph: {one_line(error)}") from error


def to_model(graph: gs.Graph, original: onnx.ModelProto, *, release: bool = False) -> onnx.ModelProto:
    """Export ``graph`` and restore from ``original`` what gs does not carry (see ``graphopt.fidelity``);
    ``original`` is the model ``graph`` was imported from (its initializers' values are not needed).
    ``release``: for the graph's last export, let its constants read the exported tensors, so that the numpy
    arrays passes made, and the weights of a split model, can be freed while the model is written."""
    return fidelity.export_model(graph, original, release=release)
