"""Prometheus metrics, kept in Redis so they add up across every web process, web host,
worker and GPU host.

Writers gather updates in a `Tally` in the process and write them at most once a second,
because a round trip per request or per batch would cost more than the metrics are worth:
each web process from a thread of its own (`flush_every`), woken by its updates, the worker
in its heartbeat. /metrics thus lags by up to a second, except for the web process
answering it, which writes its own first.
`render` turns the stored counters and histograms, plus gauges read at scrape time
(queue depth, the oldest waiting request's age, live workers), into Prometheus text.
Every web host reports the same cluster-wide figures: scrape one of them.
"""

import atexit
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from redis.client import Pipeline

from app.keys import Keys
from app.queue import Queue
from app.registry import Directory

PREFIX = "beagle_"
METRICS_FLUSH_S = 1.0  # how often a process writes its metrics to Redis
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)

COUNTERS = {  # name: (labels, help)
    "requests": (("model", "code"), "prediction requests answered, by model and HTTP status"),
    "shed": (
        ("model", "reason"),
        "requests refused with 503 before they were queued "
        "(full, slow, busy, turn, decoding, no_worker)",
    ),
    "expired": (("model",), "requests a worker skipped because their deadline had passed"),
    "poisoned": (("model",), "requests given up after max_attempts deliveries"),
    "failed": (("model",), "requests whose forward pass raised"),
    "malformed": (("model",), "queue entries that could not be decoded"),
    "model_loads": (("model",), "model versions loaded and warmed by workers"),
    "model_swaps": (("model",), "new versions that replaced a served one"),
    "model_load_failures": (("model",), "model versions that failed to load"),
    "unauthorized": (("endpoint",), "requests refused for want of a valid API key (401)"),
    "requeued": (("model",), "requests queued again after their wait broke (a Redis failover)"),
}
HISTOGRAMS = {  # name: (labels, buckets, help)
    "request_duration_seconds": (
        ("model",),
        SECONDS,
        "time from a request's arrival in the web process to its answer",
    ),
    "queue_wait_seconds": (("model",), SECONDS, "time a request waited in Redis for a worker"),
    "inference_seconds": (("model",), SECONDS, "duration of one forward pass"),
    "batch_size": (("model",), BATCH, "requests in one forward pass"),
}


class Tally:
    """Metric updates gathered locally (from any thread), then written with one pipeline."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.observations: defaultdict[str, list[float]] = defaultdict(list)
        self.latest: dict[str, float] = {}
        self.lock = threading.Lock()
        self._updated = threading.Condition(self.lock)

    def count(self, name: str, amount: int = 1, **labels: str | int) -> None:
        with self.lock:
            self.counts[_field(name, labels)] += amount
            self._updated.notify()

    def observe(self, name: str, value: float, **labels: str | int) -> None:
        with self.lock:
            self.observations[_field(name, labels)].append(value)
            self._updated.notify()

    def note(self, name: str, value: float, **labels: str | int) -> None:
        """A gauge whose newest value wins (across processes: the last one written)."""
        with self.lock:
            self.latest[_field(name, labels)] = value
            self._updated.notify()

    def pending(self) -> bool:
        with self.lock:
            return self._pending()

    def wait_pending(self) -> None:
        """Block until there are updates to write."""
        with self.lock:
            self._updated.wait_for(self._pending)

    def _pending(self) -> bool:
        return bool(self.counts or self.observations or self.latest)

    def flush(self, pipe: Pipeline, keys: Keys) -> None:
        """Add the updates to ``pipe`` and forget them."""
        with self.lock:
            counts, self.counts = self.counts, Counter()
            observations, self.observations = self.observations, defaultdict(list)
            latest, self.latest = self.latest, {}
        for field, value in latest.items():
            pipe.hset(keys.metrics("latest"), field, value)
        for field, amount in counts.items():
            pipe.hincrby(keys.metrics("counters"), field, amount)
        for field, values in observations.items():
            buckets = HISTOGRAMS[field.split("|", 1)[0]][1]
            for bound, n in Counter(_bucket(v, buckets) for v in values).items():
                pipe.hincrby(keys.metrics("histograms"), f"{field}|le={bound}", n)
            pipe.hincrbyfloat(keys.metrics("histograms"), f"{field}|sum", sum(values))
            pipe.hincrby(keys.metrics("histograms"), f"{field}|count", len(values))


def write(tally: Tally, client: redis.Redis, keys: Keys) -> None:
    """Write ``tally``'s updates to Redis now; while Redis is down they are lost (the
    metrics, never an answer)."""
    if not tally.pending():
        return
    pipe = client.pipeline(transaction=False)
    tally.flush(pipe, keys)
    try:
        pipe.execute()
    except redis.RedisError:
        pass


def flush_every(seconds: float, tally: Tally, client: redis.Redis, keys: Keys) -> None:
    """Write ``tally`` from a daemon thread for the process's life: once updates arrive,
    those of the next ``seconds`` with them (an idle process's thread waits for the next
    update, it never wakes for nothing); at exit, what is left."""
    closing = threading.Event()

    def loop() -> None:
        while not closing.is_set():
            tally.wait_pending()
            closing.wait(seconds)
            write(tally, client, keys)

    def close() -> None:
        closing.set()
        write(tally, client, keys)

    threading.Thread(target=loop, name="metrics", daemon=True).start()
    atexit.register(close)


def render(queue: Queue, directory: Directory, max_queue_wait: float) -> bytes:
    """Prometheus text exposition of everything stored plus the scrape-time gauges, and
    the max_queue_wait setting (which the queue-wait alert compares against)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(queue, directory, max_queue_wait))
    return generate_latest(registry)


class _Collector:
    def __init__(self, queue: Queue, directory: Directory, max_queue_wait: float) -> None:
        self.queue, self.directory, self.max_queue_wait = queue, directory, max_queue_wait

    def collect(self) -> Iterator[Metric]:
        client, keys = self.queue.redis, self.queue.keys
        # redis-py types replies as bytes | str; this client gets bytes
        yield from _counters(client.hgetall(keys.metrics("counters")))  # type: ignore[arg-type]
        yield from _histograms(client.hgetall(keys.metrics("histograms")))  # type: ignore[arg-type]
        yield from self._gauges()

    def _gauges(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            PREFIX + "queue_depth", "requests in Redis not yet answered", labels=["model"]
        )
        oldest = GaugeMetricFamily(
            PREFIX + "queue_oldest_seconds",
            "age of the oldest request no worker has taken yet",
            labels=["model"],
        )
        live = GaugeMetricFamily(
            PREFIX + "live_workers", "workers serving the model", labels=["model"]
        )
        for info in self.directory.models():
            depth.add_metric([info.name], self.queue.backlog(info.name, info.versions))
            oldest.add_metric([info.name], self.queue.oldest_waiting(info.name, info.versions))
            live.add_metric([info.name], info.live_workers)
        last = GaugeMetricFamily(
            PREFIX + "last_inference_timestamp_seconds",
            "when a worker last ran a forward pass of the model (Unix time)",
            labels=["model"],
        )
        for model, when in last_inferences(self.queue.redis, self.queue.keys).items():
            last.add_metric([model], when)
        workers = GaugeMetricFamily(PREFIX + "workers", "live workers, all models")
        workers.add_metric([], len(self.directory.workers()))
        limit = GaugeMetricFamily(
            PREFIX + "max_queue_wait_seconds",
            "the max_queue_wait setting: queue wait beyond which requests are refused",
        )
        limit.add_metric([], self.max_queue_wait)
        yield from (depth, oldest, live, last, workers, limit)


def answered(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """{model: prediction requests answered so far, any status}, from the counters."""
    totals: Counter[str] = Counter()
    for field, value in client.hgetall(keys.metrics("counters")).items():
        # redis-py types replies as bytes | str; this client gets bytes
        name, labels = _parse(field.decode())  # type: ignore[union-attr]
        if name == "requests":
            totals[labels.get("model", "-")] += int(value)
    return dict(totals)


def model_figures(client: redis.Redis, keys: Keys, model: str) -> dict[str, Any]:
    """``model``'s stored figures: {"requests": {code: count}, and for each histogram
    (request_duration_seconds, queue_wait_seconds, inference_seconds, batch_size) its
    {"count", "sum"}}, from every process."""
    figures: dict[str, Any] = {"requests": Counter()}
    figures.update({name: {"count": 0, "sum": 0.0} for name in HISTOGRAMS})
    # redis-py types replies as bytes | str; this client gets bytes
    for field, value in client.hgetall(keys.metrics("counters")).items():
        name, labels = _parse(field.decode())  # type: ignore[union-attr]
        if name == "requests" and labels.get("model") == model:
            figures["requests"][labels.get("code", "")] += int(value)
    for field, value in client.hgetall(keys.metrics("histograms")).items():
        series, _, part = field.decode().rpartition("|")  # type: ignore[union-attr]
        name, labels = _parse(series)
        if name in HISTOGRAMS and labels.get("model") == model and part in ("count", "sum"):
            figures[name][part] = float(value) if part == "sum" else int(value)
    # After the batches: a flush writes the time before them, and a worker notes it first.
    figures["last_inference"] = last_inferences(client, keys).get(model, 0.0)
    return figures


def last_inferences(client: redis.Redis, keys: Keys) -> dict[str, float]:
    """{model: when a worker last ran a forward pass of it (Unix time)}, from every process."""
    found = {}
    for field, value in client.hgetall(keys.metrics("latest")).items():
        name, labels = _parse(field.decode())  # type: ignore[union-attr]
        if name == "last_inference":
            found[str(labels.get("model", ""))] = float(value)
    return found


def _counters(stored: dict[bytes, bytes]) -> Iterable[CounterMetricFamily]:
    families = {
        name: CounterMetricFamily(PREFIX + name, help, labels=list(labels))
        for name, (labels, help) in COUNTERS.items()
    }
    for field, value in stored.items():
        name, labels = _parse(field.decode())
        if name in families:
            families[name].add_metric([labels.get(k, "") for k in COUNTERS[name][0]], int(value))
    return families.values()


def _histograms(stored: dict[bytes, bytes]) -> Iterable[HistogramMetricFamily]:
    """Stored fields are "<name>|<labels>|le=<bound>", "...|sum" and "...|count"."""
    series: defaultdict[tuple[str, tuple[str, ...]], dict[str, Any]] = defaultdict(
        lambda: {"buckets": Counter(), "sum": 0.0}
    )
    for field, value in stored.items():
        series_field, _, part = field.decode().rpartition("|")
        name, labels = _parse(series_field)
        if name not in HISTOGRAMS:
            continue
        data = series[(name, tuple(labels.get(k, "") for k in HISTOGRAMS[name][0]))]
        if part.startswith("le="):
            data["buckets"][part[3:]] += int(value)
        elif part == "sum":
            data["sum"] = float(value)
    families = {
        name: HistogramMetricFamily(PREFIX + name, help, labels=list(labels))
        for name, (labels, _, help) in HISTOGRAMS.items()
    }
    for (name, label_values), data in series.items():
        cumulative, buckets = 0, []
        for bound in [*map(_bound, HISTOGRAMS[name][1]), "+Inf"]:
            cumulative += data["buckets"].get(bound, 0)
            buckets.append((bound, cumulative))
        families[name].add_metric(list(label_values), buckets, data["sum"])
    return families.values()


def _bound(value: float) -> str:
    return repr(float(value))


def _bucket(value: float, buckets: Iterable[float]) -> str:
    return next((_bound(b) for b in buckets if value <= b), "+Inf")


def _field(name: str, labels: dict[str, str | int]) -> str:
    return "|".join([name, *(f"{k}={labels[k]}" for k in sorted(labels))])


def _parse(field: str) -> tuple[str, dict[str, str]]:
    name, *parts = field.split("|")
    labels = dict(part.partition("=")[::2] for part in parts)
    return name, labels
