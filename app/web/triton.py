"""Triton's model configuration and statistics extensions, filled from what Beagle knows,
so Triton-ecosystem tools that ask for them work (docs/api.md#open-inference-protocol).

    GET /v2/models/<m>[/versions/<v>]/config   the model as a Triton configuration
    GET /v2/models[/<m>[/versions/<v>]]/stats  inference counts and times

Beagle keeps its metrics per model, not per version, summed over every web process and
worker (app/metrics.py): a model's statistics are one entry, under the version asked for
or the newest. What the metrics do not hold is zero: request durations are kept for all
requests together (under ``success``), and exact batch sizes are not kept (no
``batch_stats``).
"""

from typing import Any

from flask import Blueprint, Response, jsonify

from app.metrics import model_figures
from app.registry import ModelInfo
from app.web.dispatch import PIXELS, PROBABILITIES, served
from app.web.resources import beagle, current_settings
from app.web.v2 import IMAGE, MODEL, URL_PREFIX, classes, platform

bp = Blueprint("triton", __name__, url_prefix=URL_PREFIX)

BACKENDS = {"tensorflow": "tensorflow", "onnx": "onnxruntime", "litert": "tflite"}
NS = 1_000_000_000
STAT_KINDS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


@bp.get(MODEL[0] + "/config")
@bp.get(MODEL[1] + "/config")
def config(name: str, version: int | None = None) -> Response:
    info = served(name, version)
    settings = current_settings()
    shown = version or info.latest
    runtime = info.versions[shown].get("runtime", "tensorflow")
    return jsonify(
        name=name,
        platform=platform(info, version),
        backend=BACKENDS.get(runtime, runtime),
        version_policy={"specific": {"versions": sorted(info.versions)}},
        max_batch_size=settings.max_batch_size,
        input=[
            _tensor(IMAGE, "TYPE_STRING", [1], reshape=[]),
            _tensor(PIXELS, "TYPE_UINT8", list(info.shape(shown))),
        ],
        output=[_tensor(PROBABILITIES, "TYPE_FP32", [classes(info, version)])],
        dynamic_batching={
            "preferred_batch_size": [settings.max_batch_size],
            "max_queue_delay_microseconds": int(settings.batch_timeout * 1_000_000),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": int(settings.request_timeout * 1_000_000),
                "allow_timeout_override": False,
                "max_queue_size": settings.max_queue,
            },
        },
        instance_group=[{"name": name, "kind": "KIND_AUTO", "count": info.live_workers}],
    )


@bp.get("/models/stats")
@bp.get(MODEL[0] + "/stats")
@bp.get(MODEL[1] + "/stats")
def stats(name: str | None = None, version: int | None = None) -> Response:
    if name is None:
        models = beagle().directory.models()
        return jsonify(model_stats=[_model_stats(info, None) for info in models])
    return jsonify(model_stats=[_model_stats(served(name, version), version)])


def _tensor(name: str, data_type: str, dims: list[int], **extra: Any) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": name,
        "data_type": data_type,
        "format": "FORMAT_NONE",
        "dims": dims,
    }
    if "reshape" in extra:
        described["reshape"] = {"shape": extra["reshape"]}
    return described


def _model_stats(info: ModelInfo, version: int | None) -> dict[str, Any]:
    figures = model_figures(beagle().redis, beagle().keys, info.name)
    answered = figures["requests"]
    succeeded = answered.get("200", 0)
    failed = sum(answered.values()) - succeeded
    batches = figures["batch_size"]
    counted = {kind: {"count": 0, "ns": 0} for kind in STAT_KINDS}
    counted["success"] = _span(succeeded, figures["request_duration_seconds"]["sum"])
    counted["fail"] = {"count": failed, "ns": 0}
    counted["queue"] = _span(
        figures["queue_wait_seconds"]["count"], figures["queue_wait_seconds"]["sum"]
    )
    counted["compute_infer"] = _span(batches["count"], figures["inference_seconds"]["sum"])
    return {
        "name": info.name,
        "version": str(version or info.latest),
        "last_inference": int(figures["last_inference"] * 1000),  # ms since the epoch
        "inference_count": int(batches["sum"]),
        "execution_count": batches["count"],
        "inference_stats": counted,
        "batch_stats": [],
    }


def _span(count: int, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": int(seconds * NS)}
