"""The HTTP API: POST /predict, GET /healthz, GET /readyz (the README's HTTP API)."""

import os
import re
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, abort, g, jsonify, request

from app.imaging import BadImage, decode_base64
from app.web.bodies import int_param, json_body, multipart_form
from app.web.dispatch import REDIS_DROPPED, in_flight_slot, pixels_of, resolve, submit_and_wait
from app.web.resources import beagle, current_settings

bp = Blueprint("api", __name__)

RAW_TYPES = ("application/octet-stream", "")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_VERSION = 2**63 - 1  # TF Serving's versions are int64
FORM_PARTS = 16  # a form holds the image and a few parameters


@bp.post("/predict")
def predict() -> Response:
    data, params = read_image()
    if len(data) > current_settings().max_image_bytes:
        abort(413, f"image is {len(data)} bytes; the limit is {current_settings().max_image_bytes}")
    model = params.get("model") or current_settings().default_model
    if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
        abort(400, "model must be a name of letters, digits, '.', '_' or '-'")
    version = int_param(params, "version", 1, MAX_VERSION)
    top_k = int_param(params, "top_k", 1, 1000) or current_settings().top_k
    target = resolve(model, version)
    with in_flight_slot():  # admitted before the work of decoding
        (answer,) = submit_and_wait(target, [pixels_of(data, target.shape)], top_k)
    return jsonify(
        success=True,
        predictions=answer["predictions"],
        model={"name": answer["model"], "version": answer["version"]},
        request_id=g.request_id,
    )


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Ready when Redis answers and some model has a live worker. A model whose workers
    all stopped is reported (live_workers 0), but does not make the host unready: a load
    balancer following /readyz would pull every web host at once for it. For the same
    reason, with Sentinel, a master failing over (Redis unreachable for a few seconds) does
    not either, while the registry was read within heartbeat_ttl: requests wait for the new
    master meanwhile (app/web/dispatch.py)."""
    ready, report = readiness()
    response = jsonify(report)
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    return response


def readiness() -> tuple[bool, dict[str, Any]]:
    """Whether this host should be sent requests, and the report that says why (/readyz's
    and /v2/health/ready's answer)."""
    drain_file = current_settings().drain_file
    if drain_file and os.path.exists(drain_file):  # taken out of service: fab drain
        return False, {"ready": False, "draining": True}
    redis_state = "ok"
    try:
        models = beagle().directory.models()
    except REDIS_DROPPED:
        recent = beagle().directory.last_known(current_settings().heartbeat_ttl)
        if not current_settings().redis_sentinels or recent is None:
            raise
        models, redis_state = recent, "failing over"
    report = {
        m.name: {"versions": sorted(m.versions), "live_workers": m.live_workers} for m in models
    }
    ready = any(m.live_workers for m in models)
    return ready, {"ready": ready, "redis": redis_state, "models": report}


def read_image() -> tuple[bytes, Mapping[str, Any]]:
    """The image bytes and the parameters, from multipart, JSON or a raw body."""
    kind = request.mimetype
    if kind == "multipart/form-data":
        fields, files = multipart_form(FORM_PARTS)
        if "image" not in files:
            abort(
                400,
                "multipart body has no 'image' file field "
                f"(fields: {', '.join([*files, *fields]) or 'none'})",
            )
        return files["image"], {**request.args, **fields}
    if kind == "application/json":
        body = json_body(current_settings().max_json_values)
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            abort(400, 'JSON body must be an object with "image": "<base64 image bytes>"')
        try:
            return decode_base64(body["image"]), {**request.args, **body}
        except BadImage as exc:
            abort(exc.status, f'"image" is {exc.message}')
    if kind.startswith("image/") or kind in RAW_TYPES:
        return request.get_data(), request.args
    abort(
        415,
        f"Content-Type {kind} is not accepted: send multipart/form-data with an "
        '\'image\' field, a raw image/* body, or JSON {"image": "<base64>"}',
    )
