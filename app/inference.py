"""From decoded requests to answers, for every HTTP API: resolve the model version,
queue each image, wait for every answer by the request's deadline. Failures leave
through ``abort(status, why)``, which each API renders in its own error shape."""
import time
from contextlib import contextmanager

from flask import abort, current_app, g

from app.imaging import BadImage, to_pixels
from app.queue import Request


def beagle():
    return current_app.extensions["beagle"]


def settings():
    return current_app.config["BEAGLE"]


def resolve(model, version):
    """(ModelInfo, version to run or None for the newest, its input shape)."""
    info = beagle().directory.lookup(model)
    if info is None:
        abort(404, f"model {model!r} is not served")
    g.metric_model = model  # a served model: safe as a metric label (any name is not)
    if version is not None and version not in info.versions:
        abort(404, f"model {model!r} has no version {version} "
                   f"(served: {', '.join(map(str, sorted(info.versions)))})")
    if not info.live_workers:
        g.shed_reason = "no_worker"
        abort(503, f"no live worker serves model {model!r}")
    return info, version, info.shape(info.latest if version is None else version)


def pixels_of(data, shape):
    """Model-sized pixels from encoded image bytes; 4xx for anything that is not one."""
    height, width, channels = shape
    try:
        return to_pixels(data, width, height, channels, settings().max_image_pixels)
    except BadImage as exc:
        abort(exc.status, exc.message)


def classify(model, info, version, shape, images, top_k):
    """Queue each image's pixels; the workers' answers, in order. ``top_k`` 0 asks for
    the whole probability vector."""
    timeout = settings().request_timeout
    deadline = g.started + timeout
    requests = [Request(request_id=f"{g.request_id}.{n}" if len(images) > 1 else g.request_id,
                        deadline=deadline, version="" if version is None else str(version),
                        top_k=top_k, shape=shape, pixels=pixels)
                for n, pixels in enumerate(images)]
    # Refusing on queue wait is for overload. While no worker is taking requests (one is
    # restarting), the queue is stalled, not overloaded: requests wait for it instead,
    # until their deadline, and max_queue alone bounds the backlog.
    max_wait = min(settings().max_queue_wait, timeout / 2) if info.active_workers else timeout
    with in_flight_slot():
        for request in requests:
            refused = beagle().queue.submit(model, request, settings().max_queue, max_wait)
            if refused:
                g.shed_reason, why = refused
                abort(503, f"{why}; retry shortly")
        answers = beagle().queue.wait_results([r.request_id for r in requests],
                                              lambda: deadline - time.time())
    if len(answers) < len(requests):
        abort(504, f"no answer within the {timeout:g}s deadline")
    for answer in answers:
        if not answer["ok"]:
            abort(answer["status"], answer["error"])
    return answers


@contextmanager
def in_flight_slot():
    """Hold one of this process's waiting slots. They are fewer than its threads, so a
    thread is always free to refuse the next request quickly instead of leaving it
    queued inside Apache."""
    slots = beagle().slots
    if not slots.acquire(blocking=False):
        g.shed_reason = "busy"
        abort(503, "this web process is at its limit of requests in flight; retry shortly")
    try:
        yield
    finally:
        slots.release()
