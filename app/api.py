"""The HTTP API: POST /predict, GET /healthz, GET /readyz (the contract in DESIGN.md)."""
import base64
import binascii
import hmac
import re

from flask import Blueprint, abort, g, jsonify, request

from app.inference import beagle, classify, pixels_of, resolve, settings

bp = Blueprint("api", __name__)

RAW_TYPES = ("application/octet-stream", "")
PROTECTED_PATHS = ("/predict", "/v1/")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@bp.before_app_request
def require_api_key():
    """With api_keys set, /predict and /v1/... need one of them as a Bearer token."""
    keys = beagle().api_keys
    if not keys or not request.path.startswith(PROTECTED_PATHS):
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # Compare against every key, in constant time, so timing says nothing about any.
    matches = [hmac.compare_digest(token.strip().encode(), key) for key in keys]
    if scheme.lower() != "bearer" or not any(matches):
        abort(401, "this endpoint needs 'Authorization: Bearer <api key>'")


@bp.post("/predict")
def predict():
    data, params = read_image()
    if len(data) > settings().max_image_bytes:
        abort(413, f"image is {len(data)} bytes; the limit is {settings().max_image_bytes}")
    model = params.get("model") or settings().default_model
    if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
        abort(400, "model must be a name of letters, digits, '.', '_' or '-'")
    version = int_param(params, "version", 1, None)
    top_k = int_param(params, "top_k", 1, 1000) or settings().top_k
    info, version, shape = resolve(model, version)
    (answer,) = classify(model, info, version, shape, [pixels_of(data, shape)], top_k)
    return jsonify(success=True, predictions=answer["predictions"],
                   model={"name": answer["model"], "version": answer["version"]},
                   request_id=g.request_id)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Ready when Redis answers and every announced model has a live worker."""
    models = beagle().directory.models()
    report = {m.name: {"versions": sorted(m.versions), "live_workers": m.live_workers}
              for m in models}
    ready = bool(models) and all(m.live_workers for m in models)
    response = jsonify(ready=ready, redis="ok", models=report)
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    return response


def read_image():
    """The image bytes and the parameters, from multipart, JSON or a raw body."""
    kind = request.mimetype
    if kind == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            abort(400, "multipart body has no 'image' file field "
                       f"(fields: {', '.join([*request.files, *request.form]) or 'none'})")
        return upload.read(), {**request.args, **request.form}
    if kind == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            abort(400, 'JSON body must be an object with "image": "<base64 image bytes>"')
        return decode_base64(body["image"]), {**request.args, **body}
    if kind.startswith("image/") or kind in RAW_TYPES:
        return request.get_data(), request.args
    abort(415, f"Content-Type {kind} is not accepted: send multipart/form-data with an "
               "'image' field, a raw image/* body, or JSON {\"image\": \"<base64>\"}")


def decode_base64(text):
    _, comma, payload = text.partition(",") if text.startswith("data:") else ("", "", text)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        abort(400, '"image" is not valid base64')


def int_param(params, name, low, high):
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        abort(400, f"{name} must be an integer, not {str(value)[:40]!r}")
    if number < low or (high is not None and number > high):
        abort(400, f"{name} must be between {low} and {high or 'any'}, not {number}")
    return number
