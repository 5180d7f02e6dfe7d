"""The Flask app factory. mod_wsgi loads it through wsgi/beagle.wsgi.

Every error, ours or Werkzeug's, leaves as JSON: {"success": false, "error", "request_id"},
or {"error"} under /v1/ as TensorFlow Serving has it; 503s carry Retry-After. The web tier imports Pillow, NumPy and redis-py, never TensorFlow.
"""
import logging
import threading
import time
import uuid
from types import SimpleNamespace

import redis
from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app import admin, api, openapi, settings as settings_module, tfserving, ui
from app.imaging import DecodeBudget, largest_decode
from app.keys import Keys
from app.metrics import Tally
from app.queue import Queue, connect
from app.registry import Directory

log = logging.getLogger("beagle.web")

RETRY_AFTER_S = 1
PREDICT_ENDPOINTS = ("api.predict", "tfserving.predict")
SPARE_THREADS = 2  # per process, kept free to refuse requests fast when the rest wait


def create_app(test_config=None):
    """Build the app; ``test_config`` overrides settings by name."""
    settings = settings_module.load(**(test_config or {}))
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["BEAGLE"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings_module.body_limit(settings)
    init_app(app)
    app.before_request(_start_request)  # first: every later hook and error has the id
    app.after_request(_finish_request)
    for blueprint in (api.bp, tfserving.bp, admin.bp, ui.bp, openapi.bp):
        app.register_blueprint(blueprint)
    app.register_error_handler(HTTPException, json_error)
    app.register_error_handler(redis.RedisError, redis_error)
    app.register_error_handler(Exception, unexpected_error)
    return app


def init_app(app):
    """Register the Redis-backed resources the views use as ``app.extensions["beagle"]``."""
    settings = app.config["BEAGLE"]
    budget = settings.decode_budget_mb * 1024 * 1024
    if budget < largest_decode(settings.max_image_pixels):
        raise ValueError(f"decode_budget_mb={settings.decode_budget_mb} cannot hold one image "
                         f"of max_image_pixels={settings.max_image_pixels}: give it at least "
                         f"{-(-largest_decode(settings.max_image_pixels) >> 20)} MB")
    client = connect(settings.redis_url, socket_timeout=settings.request_timeout + 2)
    keys = Keys(settings.key_prefix)
    app.extensions["beagle"] = SimpleNamespace(
        redis=client, keys=keys, queue=Queue(client, keys),
        directory=Directory(client, keys, settings.heartbeat_ttl),
        decode_budget=DecodeBudget(budget),
        slots=threading.BoundedSemaphore(max(1, settings.web_threads - SPARE_THREADS)),
        api_keys=[key.encode() for key in settings.api_keys])


def json_error(exc):
    return error_response(exc.code, exc.description)


def redis_error(exc):
    log.error("request %s: Redis unavailable: %s: %s", g.get("request_id"), type(exc).__name__,
              exc)
    return error_response(503, f"Redis is unavailable ({type(exc).__name__}); retry shortly")


def unexpected_error(exc):
    log.exception("request %s: unexpected error", g.get("request_id"))
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


def error_response(status, message):
    if request.path.startswith(tfserving.bp.url_prefix + "/"):
        response = jsonify(error=message)  # TensorFlow Serving's error shape
    else:
        response = jsonify(success=False, error=message, request_id=g.get("request_id"))
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="beagle"'
    return response


def _start_request():
    g.request_id = uuid.uuid4().hex
    g.started = time.time()


def _finish_request(response):
    response.headers["X-Request-ID"] = g.get("request_id", "")
    if request.endpoint in PREDICT_ENDPOINTS:
        _count_request(response.status_code)
    return response


def _count_request(status):
    model = g.get("metric_model", "-")
    tally = Tally()
    tally.count("requests", model=model, code=status)
    tally.observe("request_duration_seconds", time.time() - g.started, model=model)
    if g.get("shed_reason"):
        tally.count("shed", model=model, reason=g.shed_reason)
    resources = current_app.extensions["beagle"]
    try:
        pipe = resources.redis.pipeline(transaction=False)
        tally.flush(pipe, resources.keys)
        pipe.execute()
    except redis.RedisError:  # while Redis is down the metric is lost, never the answer
        pass
