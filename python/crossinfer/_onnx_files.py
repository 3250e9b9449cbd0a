"""An ONNX model as one self-contained byte string, its external data read by crossinfer.

An ONNX tensor may keep its values in another file ("external data": a location relative to
the model, an offset, a length). Left to onnxruntime, such a location is resolved against the
process's working directory, following links and ``sub/..``; the onnx package's own walk visits
dense initializers only. So every external reference in the model (initializers, sparse
initializers, tensor and sparse-tensor attributes, in every graph, subgraph, function and
training graph) is resolved here, by the model repository's rules when the policy has one (the
model's own directory, a plain relative name, no link followed, a regular file, opened by
descriptor), and copied into the model; onnxruntime is given bytes with no reference left.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from typing import Any, Optional

from crossinfer import _repository
from crossinfer._errors import ModelLoadError

_MAX_EXTERNAL_BYTES = 16 * 1024 ** 3  # what a model's external data may add in all


def self_contained(model_uri: str, repository: Optional[_repository.Repository]) -> bytes:
    """The model's bytes with every external tensor's data copied in (or ModelLoadError),
    read through ``repository`` when there is one."""
    import onnx

    data = _repository.read(model_uri, repository)
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - a parse failure is the file's problem; load reports it
        return data
    external = [t for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL
                or len(t.external_data)]
    if not external:
        return data
    total = 0
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise _bad(model_uri, "an external data offset or length that is not a number")
        if offset < 0 or (length is not None and length < 0):
            raise _bad(model_uri, "a negative external data offset or length")
        raw = _read_beside(model_uri, location, offset, length, repository)
        total += len(raw)
        if total > _MAX_EXTERNAL_BYTES:
            raise _bad(model_uri, "more external data than crossinfer reads")
        tensor.raw_data = raw
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model.SerializeToString()


def _bad(model_uri: str, what: str) -> ModelLoadError:
    error = ModelLoadError(f"model_uri={_repository._shown(model_uri)}: the ONNX model has {what}")
    error.public = str(error)
    return error


def _read_beside(model_uri: str, location: str, offset: int, length: Any,
                 repository: Optional[_repository.Repository]) -> bytes:
    if repository is not None:
        fd = repository.open_beside(model_uri, location)
    else:
        # A pipeline's own files: still only a plain name in the model's own directory.
        if (not location or location.startswith("/")
                or any(p in ("", ".", "..") for p in location.split("/"))):
            raise _bad(model_uri, "external data outside its own directory")
        path = posixpath.join(posixpath.dirname(model_uri), location)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if offset > size or (length is not None and offset + length > size):
            raise _bad(model_uri, "external data past the end of its file")
        f.seek(offset)
        return f.read(size - offset if length is None else length)


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto the model holds, wherever it is."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)
    for info in model.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        for sparse in ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
                       ) + list(attribute.sparse_tensors):
            yield sparse.values
            yield sparse.indices
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _graph_tensors(graph)
