"""TensorFlow Serving's REST API, so existing TF Serving clients work unchanged.

    POST /v1/models/<name>[/versions/<v>]:predict
         {"instances": [{"b64": "<image bytes>"} | <HxWxC pixel array>, ...]}
           -> {"predictions": [[p0, p1, ...], ...]}   (class probabilities per instance)
         {"inputs": [...]} (columnar; or {"inputs": {"<input name>": [...]}})
           -> {"outputs": [[...], ...]} as TF Serving answers, and the same values under
              "predictions" as Beagle's contract has it
    GET  /v1/models/<name>[/versions/<v>]              -> {"model_version_status": [...]}
    GET  /v1/models/<name>[/versions/<v>]/metadata     -> {"model_spec", "metadata"}

Pixel arrays hold values 0-255, height x width x channels (or height x width); an array
of another size is resized like an image. Errors are {"error": "..."}, as TF Serving's,
and name the instance at fault. One request carries at most a quarter of max_queue
instances, so no client fills a model's queue alone; they are queued all or none.
"""

from typing import Any

from flask import Blueprint, Response, abort, jsonify

from app.imaging import BadImage, array_pixels, decode_base64
from app.registry import ModelInfo
from app.web.bodies import json_body
from app.web.dispatch import (
    PIXELS,
    PROBABILITIES,
    in_flight_slot,
    instances_limit,
    pixels_of,
    resolve,
    submit_and_wait,
)
from app.web.resources import beagle, current_settings

URL_PREFIX = "/v1/models"
bp = Blueprint("tfserving", __name__, url_prefix=URL_PREFIX)


@bp.post("/<model:name>:predict")
@bp.post("/<model:name>/versions/<int:version>:predict")
def predict(name: str, version: int | None = None) -> Response:
    body = json_body(current_settings().max_json_values)
    if not isinstance(body, dict):
        abort(400, "the request body must be a JSON object")
    if body.get("signature_name", "serving_default") != "serving_default":
        abort(
            400, f"serving signature {body['signature_name']!r} does not exist; use serving_default"
        )
    if ("instances" in body) == ("inputs" in body):
        abort(400, 'the request must have exactly one of "instances" or "inputs"')
    columnar = "inputs" in body
    batch = _only_input(body["inputs"]) if columnar else body["instances"]
    if not isinstance(batch, list) or not batch:
        abort(400, "expected a non-empty list of instances")
    instances_limit(len(batch))
    target = resolve(name, version)
    field = "inputs" if columnar else "instances"
    with in_flight_slot():  # admitted before the work of decoding
        images = [
            _pixels(_only_input(value), target.shape, f"{field}[{n}]: ")
            for n, value in enumerate(batch)
        ]
        vectors = [answer["probabilities"] for answer in submit_and_wait(target, images, top_k=0)]
    return jsonify(
        {"outputs": vectors, "predictions": vectors} if columnar else {"predictions": vectors}
    )


@bp.get("/<model:name>")
@bp.get("/<model:name>/versions/<int:version>")
def status(name: str, version: int | None = None) -> Response:
    info = _model(name, version)
    state = "AVAILABLE" if info.live_workers else "END"
    versions = [version] if version is not None else sorted(info.versions)
    return jsonify(
        model_version_status=[
            {"version": str(v), "state": state, "status": {"error_code": "OK", "error_message": ""}}
            for v in versions
        ]
    )


@bp.get("/<model:name>/metadata")
@bp.get("/<model:name>/versions/<int:version>/metadata")
def metadata(name: str, version: int | None = None) -> Response:
    info = _model(name, version)
    version = info.latest if version is None else version
    height, width, channels = info.shape(version)
    classes = info.versions[version].get("classes", -1)

    def tensor(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
        return {
            "dtype": dtype,
            "name": name,
            "tensor_shape": {
                "dim": [{"size": str(size), "name": ""} for size in dims],
                "unknown_rank": False,
            },
        }

    signature = {
        "inputs": {PIXELS: tensor(PIXELS, "DT_UINT8", [-1, height, width, channels])},
        "outputs": {PROBABILITIES: tensor(PROBABILITIES, "DT_FLOAT", [-1, classes])},
        "method_name": "tensorflow/serving/predict",
    }
    return jsonify(
        model_spec={"name": name, "signature_name": "", "version": str(version)},
        metadata={"signature_def": {"signature_def": {"serving_default": signature}}},
    )


def _model(name: str, version: int | None) -> ModelInfo:
    info = beagle().directory.lookup(name)
    if info is None:
        abort(404, f"Could not find any versions of model {name}")
    if version is not None and version not in info.versions:
        abort(404, f"Could not find version {version} of model {name}")
    return info


def _only_input(value: Any) -> Any:
    """The value of the model's one input: {"<name>": value} or the value itself."""
    if isinstance(value, dict) and "b64" not in value:
        if len(value) != 1:
            abort(400, f"the model has one input ({PIXELS!r}), not {sorted(value)}")
        (value,) = value.values()
    return value


def _pixels(value: Any, shape: tuple[int, int, int], where: str) -> bytes:
    """One instance's pixels: {"b64": image bytes} or a pixel array."""
    if isinstance(value, dict):
        if not isinstance(value.get("b64"), str):
            abort(400, f'{where}a binary value must be {{"b64": "<base64>"}}')
        try:
            data = decode_base64(value["b64"])
        except BadImage as exc:
            abort(exc.status, f'{where}"b64" is {exc.message}')
        return pixels_of(data, shape, where)
    if not isinstance(value, list):
        abort(400, f'{where}each instance must be {{"b64": "<image bytes>"}} or a pixel array')
    try:
        return array_pixels(value, shape)
    except BadImage as exc:
        abort(exc.status, where + exc.message)
