"""Operators' endpoints: GET /metrics (Prometheus, admin networks only) and GET /status
(the live state the page at / shows)."""

import time

from flask import Blueprint, Response, abort, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from app import metrics
from app.web.auth import from_admin_network, require_admin_or_key
from app.web.resources import beagle, current_settings

bp = Blueprint("admin", __name__)


@bp.get("/metrics")
def prometheus() -> Response:
    if not from_admin_network():
        abort(403, f"/metrics is open to admin_networks only, not to {request.remote_addr}")
    metrics.write(beagle().tally, beagle().redis, beagle().keys)  # this process's, now
    return Response(
        metrics.render(beagle().queue, beagle().directory, current_settings().max_queue_wait),
        mimetype=CONTENT_TYPE_LATEST,
    )


@bp.get("/status")
def status() -> Response:
    """Models with their versions, live workers and queues; workers; request totals. For
    admin networks, or with an API key when keys are on."""
    require_admin_or_key()
    resources = beagle()
    models = [
        {
            "name": info.name,
            "versions": sorted(info.versions),
            "latest": info.latest,
            "live_workers": info.live_workers,
            "queue_depth": resources.queue.backlog(info.name, info.versions),
        }
        for info in resources.directory.models()
    ]
    workers = [
        {key: worker.get(key) for key in ("id", "models", "batches", "requests")}
        for worker in resources.directory.workers()
    ]
    return jsonify(
        models=models,
        workers=workers,
        time=time.time(),
        answered=metrics.answered(resources.redis, resources.keys),
    )
