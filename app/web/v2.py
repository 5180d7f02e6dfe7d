"""The Open Inference Protocol (KServe v2) REST API, with Triton's binary tensor data and
classification extensions, so that clients built for Triton, KServe or MLServer work
unchanged (docs/api.md#open-inference-protocol).

    GET  /v2                                    server metadata
    GET  /v2/health/live, /v2/health/ready      200 when true, 400 when not (no body)
    GET  /v2/models/<m>[/versions/<v>]          model metadata: its inputs and output
    GET  /v2/models/<m>[/versions/<v>]/ready    200 while a live worker serves it, else 400
    POST /v2/models/<m>[/versions/<v>]/infer    inference

A request carries one of the model's two inputs: ``image``, BYTES [N] (or [N, 1]) of
encoded images, decoded and resized like /predict's; or ``pixels``, UINT8 [N, H, W, C] at
the model's input size. The output ``probabilities`` is FP32 [N, classes]; asked for with
the ``classification`` parameter k, BYTES [N, k] of "score:index:label", best first, as
Triton answers. The N images are admitted all or none, at most a quarter of max_queue.
Errors are {"error": "..."}; Triton's configuration and statistics are app/web/triton.py.
"""

from typing import Any

import numpy as np
from flask import Blueprint, Response, abort, jsonify

from app import __version__
from app.registry import ModelInfo
from app.web.api import readiness
from app.web.bodies import int_param
from app.web.dispatch import (
    PIXELS,
    PROBABILITIES,
    in_flight_slot,
    instances_limit,
    pixels_of,
    resolve,
    served,
    submit_and_wait,
)
from app.web.resources import current_settings
from app.web.v2_tensors import Tensor, answer, byte_elements, output, read_request, uint8_array

URL_PREFIX = "/v2"
bp = Blueprint("v2", __name__, url_prefix=URL_PREFIX)

IMAGE = "image"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
PLATFORMS = {"tensorflow": "tensorflow_keras", "onnx": "onnxruntime_onnx", "litert": "tflite"}
MODEL = ("/models/<model:name>", "/models/<model:name>/versions/<int:version>")


@bp.get("")
def server_metadata() -> Response:
    return jsonify(name="beagle", version=__version__, extensions=EXTENSIONS)


@bp.get("/health/live")
def live() -> Response:
    return Response(status=200)


@bp.get("/health/ready")
def ready() -> Response:
    return Response(status=200 if readiness()[0] else 400)


@bp.get(MODEL[0])
@bp.get(MODEL[1])
def model_metadata(name: str, version: int | None = None) -> Response:
    info = served(name, version)
    height, width, channels = shape = info.shape(version or info.latest)
    return jsonify(
        name=name,
        versions=[str(v) for v in ([version] if version else sorted(info.versions))],
        platform=platform(info, version),
        inputs=[
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS, "datatype": "UINT8", "shape": [-1, *shape]},
        ],
        outputs=[
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, classes(info, version)]}
        ],
    )


@bp.get(MODEL[0] + "/ready")
@bp.get(MODEL[1] + "/ready")
def model_ready(name: str, version: int | None = None) -> Response:
    if not served(name, version).live_workers:
        abort(400, f"no live worker serves model {name!r}")
    return Response(status=200)


@bp.post(MODEL[0] + "/infer")
@bp.post(MODEL[1] + "/infer")
def infer(name: str, version: int | None = None) -> Response:
    body = read_request(current_settings().max_json_values)
    if len(body.inputs) != 1 or body.inputs[0].name not in (IMAGE, PIXELS):
        abort(
            400,
            f"the model takes one input, {IMAGE!r} (BYTES) or {PIXELS!r} (UINT8), "
            f"not {[t.name for t in body.inputs]}",
        )
    unknown = sorted(set(body.outputs) - {PROBABILITIES})
    if unknown:
        abort(400, f"the model has one output, {PROBABILITIES!r}, not {unknown}")
    asked = body.outputs.get(PROBABILITIES, {})
    top_k = int_param(asked, "classification", 1, 1000) or 0
    (tensor,) = body.inputs
    if not tensor.shape or tensor.shape[0] < 1:
        abort(400, f"input {tensor.name!r}: the first dimension counts the images, 1 or more")
    instances_limit(tensor.shape[0])
    target = resolve(name, version)
    with in_flight_slot():  # admitted before the work of decoding
        answers = submit_and_wait(target, _pixels(tensor, target.shape), top_k)
    # Triton's rule: binary_data_output covers the outputs a request does not list.
    listed = PROBABILITIES in body.outputs
    binary = (asked.get("binary_data") if listed else body.binary_output) is True
    if top_k:
        rows = [
            [f"{p['probability']:f}:{p['index']}:{p['label']}".encode() for p in a["predictions"]]
            for a in answers
        ]
        described, raw = output(PROBABILITIES, rows, binary)
    else:
        vectors = np.asarray([a["probabilities"] for a in answers], np.float32)
        described, raw = output(PROBABILITIES, vectors, binary)
    header: dict[str, Any] = {"model_name": name, "model_version": str(answers[0]["version"])}
    if body.id is not None:
        header["id"] = body.id
    header["outputs"] = [described]
    return answer(header, [raw])


def platform(info: ModelInfo, version: int | None) -> str:
    runtime = info.versions[version or info.latest].get("runtime", "tensorflow")
    return PLATFORMS.get(runtime, runtime)


def classes(info: ModelInfo, version: int | None) -> int:
    return int(info.versions[version or info.latest].get("classes", -1))


def _pixels(tensor: Tensor, shape: tuple[int, int, int]) -> list[bytes]:
    """Each image's pixels at the model's ``shape``, from ``tensor``."""
    if tensor.name == IMAGE:
        if tensor.datatype != "BYTES" or tensor.shape[1:] not in ((), (1,)):
            abort(400, f"input {IMAGE!r} is BYTES of shape [N] or [N, 1]: one encoded image each")
        limit = current_settings().max_image_bytes
        images = byte_elements(tensor)
        for n, data in enumerate(images):
            if len(data) > limit:
                abort(413, f"input {IMAGE!r}[{n}] is {len(data)} bytes; the limit is {limit}")
        return [pixels_of(data, shape, f"input {IMAGE!r}[{n}]: ") for n, data in enumerate(images)]
    if tensor.datatype != "UINT8" or tensor.shape[1:] != shape:
        abort(
            400,
            f"input {PIXELS!r} is UINT8 of shape [N, {', '.join(map(str, shape))}] "
            "(the model's input size), not "
            f"{tensor.datatype} {list(tensor.shape)}",
        )
    return [image.tobytes() for image in uint8_array(tensor)]
