"""What the views share, registered on the app by `init_app`, and the accessors they reach
it by: `beagle()` (Redis, the queue, the registry's view, the decode budget, the
turn, the in-flight slots, the process's metrics tally) and `current_settings()`."""

import threading
from types import SimpleNamespace

from flask import Flask, current_app

from app.config import Settings
from app.imaging import DecodeBudget, largest_decode
from app.keys import Keys
from app.metrics import METRICS_FLUSH_S, Tally, flush_every
from app.queue import Queue
from app.redis_connection import client as redis_client
from app.registry import Directory
from app.turns import Turn

SPARE_THREADS = 2  # per process, kept free to refuse requests fast when the rest wait


def init_app(app: Flask) -> None:
    """Register the resources for ``app.config["BEAGLE"]`` as ``app.extensions["beagle"]``."""
    settings = app.config["BEAGLE"]
    budget = settings.decode_budget_mb * 1024 * 1024
    if budget < largest_decode(settings.max_image_pixels):
        raise ValueError(
            f"decode_budget_mb={settings.decode_budget_mb} cannot hold one image "
            f"of max_image_pixels={settings.max_image_pixels}: give it at least "
            f"{-(-largest_decode(settings.max_image_pixels) >> 20)} MB"
        )
    # A connection for each thread (a request waits for its answers on one of its own) and
    # the metrics flusher's: redis-py's default pool is smaller than a process's threads.
    client = redis_client(
        settings,
        socket_timeout=settings.request_timeout + 2,
        max_connections=settings.web_threads + 1,
    )
    keys = Keys(settings.key_prefix)
    tally = Tally()
    turn = Turn()
    flush_every(METRICS_FLUSH_S, tally, client, keys)
    app.extensions["beagle"] = SimpleNamespace(
        redis=client,
        keys=keys,
        queue=Queue(client, keys),
        tally=tally,
        directory=Directory(client, keys, settings.heartbeat_ttl, turn=turn),
        decode_budget=DecodeBudget(budget, turn=turn),
        turn=turn,
        slots=threading.BoundedSemaphore(max(1, settings.web_threads - SPARE_THREADS)),
    )


def beagle() -> SimpleNamespace:
    return current_app.extensions["beagle"]


def current_settings() -> Settings:
    return current_app.config["BEAGLE"]
