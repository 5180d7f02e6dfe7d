"""The Flask app factory. mod_wsgi loads it through wsgi/beagle.wsgi.

Every error, ours or Werkzeug's, leaves as JSON: {"success": false, "error", "request_id"},
or {"error"} under /v1/ and /v2 as TensorFlow Serving and the Open Inference Protocol
have it; 503s carry Retry-After. The web
tier imports Pillow, NumPy and redis-py, never TensorFlow.

App-wide hooks, in order: `_start_request` gives the request its id, start time and span
in the caller's trace (app/trace_context.py); `auth.require_api_key` guards the
prediction APIs (app/web/auth.py); `_take_turn` puts a prediction request in line for its
process's turn, and teardown hands the turn on (app/turns.py); `_finish_request` sets
X-Request-ID and traceparent and counts prediction requests in /metrics, under
``g.metric_model``: the model once a view knows it is served (so that no name a client
makes up becomes a metric label). A request refused before it was queued raises `Shed`,
whose handler counts its reason.
"""

import logging
import time
import uuid
from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from app import config, trace_context
from app.queue import Shed
from app.web import admin, api, auth, dispatch, openapi, resources, tfserving, triton, ui, v2

log = logging.getLogger("beagle.web")

RETRY_AFTER_S = 1
PREDICT_ENDPOINTS = ("api.predict", "tfserving.predict", "v2.infer")


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; ``test_config`` overrides settings by name."""
    settings = config.load(**(test_config or {}))
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["BEAGLE"] = settings
    app.config["MAX_CONTENT_LENGTH"] = config.body_limit(settings)
    resources.init_app(app)
    app.url_map.converters["model"] = ModelName
    app.before_request(_start_request)  # first: every later hook and error has the id
    app.before_request(auth.require_api_key)
    app.before_request(_take_turn)  # last: a refused request does not wait for the turn
    app.teardown_request(dispatch.give_turn_back)
    app.after_request(_finish_request)
    for blueprint in (api.bp, tfserving.bp, v2.bp, triton.bp, admin.bp, ui.bp, openapi.bp):
        app.register_blueprint(blueprint)
    app.register_error_handler(HTTPException, json_error)
    app.register_error_handler(Shed, shed_error)
    app.register_error_handler(redis.RedisError, redis_error)
    app.register_error_handler(Exception, unexpected_error)
    return app


class ModelName(BaseConverter):
    """A model's name in a URL (``<model:name>``), as /predict's ``model`` parameter has
    it: so /v1/models/m:predict is never read as the model "m:predict"."""

    regex = api.MODEL_NAME.pattern


def json_error(exc: HTTPException) -> Response:
    response = error_response(exc.code or 500, exc.description)
    allowed = dict(exc.get_headers()).get("Allow")  # a 405 says what is allowed
    if allowed:
        response.headers["Allow"] = allowed
    return response


def shed_error(exc: Shed) -> Response:
    resources.beagle().tally.count("shed", model=g.get("metric_model", "-"), reason=exc.reason)
    return error_response(503, f"{exc.why}; retry shortly")


def redis_error(exc: redis.RedisError) -> Response:
    log.error("request %s: Redis unavailable: %s: %s", g.get("request_id"), type(exc).__name__, exc)
    return error_response(503, f"Redis is unavailable ({type(exc).__name__}); retry shortly")


def unexpected_error(exc: Exception) -> Response:
    log.exception("request %s: unexpected error", g.get("request_id"))
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


def error_response(status: int, message: str | None) -> Response:
    if request.path.startswith((tfserving.URL_PREFIX + "/", v2.URL_PREFIX)):
        response = jsonify(error=message)  # TensorFlow Serving's and the v2 protocol's shape
    else:
        response = jsonify(success=False, error=message, request_id=g.get("request_id"))
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="beagle"'
    return response


def _start_request() -> None:
    g.request_id = uuid.uuid4().hex
    g.started = time.time()
    caller = trace_context.parse(request.headers.get(trace_context.HEADER))
    g.trace = caller.child() if caller else trace_context.new()  # this request's span


def _take_turn() -> None:
    if request.endpoint in PREDICT_ENDPOINTS:
        dispatch.take_turn()


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    if "trace" in g:
        response.headers[trace_context.HEADER] = str(g.trace)
    if request.endpoint in PREDICT_ENDPOINTS:
        _count_request(response.status_code)
    return response


def _count_request(status: int) -> None:
    model = g.get("metric_model", "-")
    tally = resources.beagle().tally  # written to Redis once a second (app/metrics.py)
    tally.count("requests", model=model, code=status)
    tally.observe("request_duration_seconds", time.time() - g.started, model=model)
