"""The Open Inference Protocol's (KServe v2) inference bodies, with Triton's binary tensor
data extension.

A request is a JSON header, then, when ``Inference-Header-Content-Length`` gives the
header's length, the binary inputs' bytes one after another, each as long as its
``binary_data_size`` parameter says. An answer is built the same way round: an output
asked for with ``binary_data`` (or every output, with the request's ``binary_data_output``)
leaves as bytes after the header. BYTES elements travel in binary as a 4-byte
little-endian length and the bytes, in JSON as strings (an encoded image: base64, as
KServe's examples send it). Tensor data in JSON is row-major, flat or nested. Every
fault in a body is a 400 that names the input at fault.
"""

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import Response, abort, request

from app.imaging import BadImage, decode_base64
from app.web.bodies import json_document, shown

HEADER_LENGTH = "Inference-Header-Content-Length"
LENGTH = struct.Struct("<I")  # a BYTES element's length prefix
DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
)
MAX_RANK = 8


@dataclass(frozen=True)
class Tensor:
    """An input as a request carries it: ``data`` is the JSON value (a list) or, for a
    binary input, its bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class InferRequest:
    """An inference request: its id (echoed), inputs, the outputs asked for by name with
    their parameters (none listed: every output), and whether every output goes binary."""

    id: str | None
    inputs: list[Tensor]
    outputs: dict[str, dict[str, Any]]
    binary_output: bool


def read_request(max_values: int) -> InferRequest:
    """The request's inference body."""
    data = request.get_data()
    header, binary = _split(data, request.headers.get(HEADER_LENGTH))
    body = json_document(header, max_values)
    if not isinstance(body, dict):
        abort(400, "the inference header must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        abort(400, '"inputs" must be a non-empty list of tensors')
    tensors, offset = [], 0
    for n, raw in enumerate(inputs):
        tensor, offset = _input(raw, n, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        abort(400, f"{len(binary) - offset} bytes after the header belong to no input")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        abort(400, '"id" must be a string')
    parameters = _parameters(body.get("parameters"), "the request")
    return InferRequest(
        request_id,
        tensors,
        _outputs(body.get("outputs")),
        parameters.get("binary_data_output") is True,
    )


def byte_elements(tensor: Tensor) -> list[bytes]:
    """A BYTES tensor's elements: length-prefixed in binary, base64 strings in JSON."""
    if isinstance(tensor.data, bytes):
        elements, offset, data = [], 0, tensor.data
        while offset < len(data):
            if offset + LENGTH.size > len(data):
                abort(400, f"input {tensor.name!r}: a BYTES element's length is cut short")
            (size,) = LENGTH.unpack_from(data, offset)
            offset += LENGTH.size
            if offset + size > len(data):
                abort(400, f"input {tensor.name!r}: a BYTES element is cut short")
            elements.append(data[offset : offset + size])
            offset += size
    else:
        elements = []
        for n, value in enumerate(_flat(tensor.data, tensor.name)):
            if not isinstance(value, str):
                abort(400, f"input {tensor.name!r}[{n}]: a BYTES element in JSON is a string")
            try:
                elements.append(decode_base64(value))
            except BadImage as exc:
                abort(exc.status, f"input {tensor.name!r}[{n}]: {exc.message}")
    if len(elements) != tensor.count:
        abort(
            400,
            f"input {tensor.name!r} has shape {list(tensor.shape)} ({tensor.count} elements) "
            f"but holds {len(elements)}",
        )
    return elements


def uint8_array(tensor: Tensor) -> np.ndarray:
    """A UINT8 tensor's values, at its shape."""
    if isinstance(tensor.data, bytes):
        if len(tensor.data) != tensor.count:
            abort(
                400,
                f"input {tensor.name!r} has shape {list(tensor.shape)} ({tensor.count} bytes) "
                f"but holds {len(tensor.data)} bytes",
            )
        return np.frombuffer(tensor.data, np.uint8).reshape(tensor.shape)
    try:
        values = np.asarray(_flat(tensor.data, tensor.name), dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        abort(400, f"input {tensor.name!r}: UINT8 data must be whole numbers from 0 to 255")
    if values.size != tensor.count:
        abort(
            400,
            f"input {tensor.name!r} has shape {list(tensor.shape)} ({tensor.count} values) "
            f"but holds {values.size}",
        )
    if values.size and (
        not np.isfinite(values).all()
        or values.min() < 0
        or values.max() > 255
        or (values != np.rint(values)).any()
    ):
        abort(400, f"input {tensor.name!r}: UINT8 data must be whole numbers from 0 to 255")
    return values.astype(np.uint8).reshape(tensor.shape)


def output(name: str, values: np.ndarray | list[list[bytes]], binary: bool) -> tuple[dict, bytes]:
    """An output's JSON description and, when ``binary``, its bytes: FP32 from an array,
    BYTES from a list of byte strings ([N, k] as a list of N lists)."""
    if isinstance(values, np.ndarray):
        array = values.astype("<f4")
        described = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if binary:
            raw = array.tobytes()
            return {**described, "parameters": {"binary_data_size": len(raw)}}, raw
        return {**described, "data": array.ravel().tolist()}, b""
    rows = values
    flat = [item for row in rows for item in row]
    shape = [len(rows), len(rows[0]) if rows else 0]
    described = {"name": name, "datatype": "BYTES", "shape": shape}
    if binary:
        raw = b"".join(LENGTH.pack(len(item)) + item for item in flat)
        return {**described, "parameters": {"binary_data_size": len(raw)}}, raw
    return {**described, "data": [item.decode() for item in flat]}, b""


def answer(header: dict[str, Any], binary: list[bytes]) -> Response:
    """The inference answer: the JSON header, then the binary outputs' bytes if any."""
    body = json.dumps(header, separators=(",", ":")).encode()
    tail = b"".join(binary)
    if not tail:
        return Response(body, mimetype="application/json")
    response = Response(body + tail, mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(body))
    return response


def _split(data: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return data, b""
    if not header_length.strip().isdigit() or int(header_length) > len(data):
        abort(
            400,
            f"{HEADER_LENGTH} must be the JSON header's length in bytes, at most the "
            f"body's {len(data)}, not {shown(header_length)}",
        )
    return data[: int(header_length)], data[int(header_length) :]


def _input(raw: Any, n: int, binary: bytes, offset: int) -> tuple[Tensor, int]:
    """inputs[n] as a Tensor, and where the next binary input starts."""
    if not isinstance(raw, dict):
        abort(400, f"inputs[{n}] must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        abort(400, f"inputs[{n}] needs a name")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        abort(400, f"input {name!r}: datatype must be one of {', '.join(DATATYPES)}")
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        abort(400, f"input {name!r}: shape must be a list of up to {MAX_RANK} sizes (0 or more)")
    size = _parameters(raw.get("parameters"), f"input {name!r}").get("binary_data_size")
    if size is None:
        if "data" not in raw:
            abort(400, f"input {name!r} has neither data nor a binary_data_size parameter")
        return Tensor(name, datatype, tuple(shape), raw["data"]), offset
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        abort(400, f"input {name!r}: binary_data_size must be a whole number of bytes")
    if offset + size > len(binary):
        abort(
            400,
            f"input {name!r}: binary_data_size {size} runs past the body's end "
            f"({len(binary) - offset} bytes left after the header)",
        )
    return Tensor(name, datatype, tuple(shape), binary[offset : offset + size]), offset + size


def _outputs(raw: Any) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        abort(400, '"outputs" must be a list of {"name", "parameters"}')
    asked: dict[str, dict[str, Any]] = {}
    for n, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            abort(400, f"outputs[{n}] must be an object with a name")
        asked[item["name"]] = _parameters(item.get("parameters"), f"output {item['name']!r}")
    return asked


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        abort(400, f"{where}: parameters must be an object")
    return raw


def _flat(value: Any, name: str) -> list[Any]:
    """JSON tensor data, row-major: nested lists flattened, a lone value as one."""
    if not isinstance(value, list):
        return [value]
    flat, stack = [], [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > MAX_RANK:
                    abort(400, f"input {name!r}: data nested deeper than {MAX_RANK}")
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat
