"""Every Beagle setting: name, default, one-line help, and how its text reads.

Web tier, worker, fabfile and stress test all read these definitions. Each setting
can be overridden with an environment variable ``BEAGLE_<NAME>`` (upper case);
the README lists every one (tests/test_settings.py checks it). `load` reads each value
once, into its type (API keys as a tuple, networks, model pins, a set of cores), and
returns an immutable `Settings`; `replace` makes a copy with changes.
"""

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def per_core(value: int) -> int:
    """``value``, or for 0 one per core this process may run on (worker_threads)."""
    return value or len(os.sched_getaffinity(0))


def web_processes(value: int, cores: int | None = None) -> int:
    """``value``, or for 0 one per two ``cores`` (default this host's), at least one: a
    web process runs Python on one core at a time (app/turns.py), and about half of a
    request's CPU is spent outside it (docs/performance.md)."""
    return value or max(1, (cores or per_core(0)) // 2)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


MIN_API_KEY = 32  # characters: a key must not be guessable


def api_keys(text: str) -> tuple[str, ...]:
    """ "k1,k2" -> ("k1", "k2"), each of at least MIN_API_KEY characters."""
    keys = _items(text)
    short = [key for key in keys if len(key) < MIN_API_KEY]
    if short:
        raise ValueError(
            f"an API key of {len(short[0])} characters: keys need {MIN_API_KEY} or more "
            "(`fab new-api-key` prints one)"
        )
    return keys


def _joined(values: Iterable[object]) -> str:
    return ",".join(map(str, values))


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item) for item in _items(text))


def model_pins(text: str) -> tuple[tuple[str, int | None], ...]:
    """ "digits, resnet50:2" -> (("digits", None), ("resnet50", 2)): a model's newest
    version, or the one pinned."""
    pins = []
    for item in _items(text):
        name, _, version = item.partition(":")
        pins.append((name.strip(), int(version) if version else None))
    return tuple(pins)


def _pins_text(pins: Iterable[tuple[str, int | None]]) -> str:
    return ",".join(name if version is None else f"{name}:{version}" for name, version in pins)


def cpu_set(text: str) -> frozenset[int]:
    """ "0-3,6" -> frozenset({0, 1, 2, 3, 6})."""
    cpus: set[int] = set()
    for item in _items(text):
        first, _, last = item.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def _cpus_text(cpus: Iterable[int]) -> str:
    return _joined(sorted(cpus))


READERS: dict[type, Callable[[str], Any]] = {bool: _bool}  # beyond the default's own type


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("expected a number above 0")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    default: object  # as BEAGLE_<NAME> spells it (and the README shows it)
    help: str
    read: Callable | None = None  # text -> value; None: into the default's own type
    write: Callable = str  # value -> text

    @property
    def env_var(self) -> str:
        return "BEAGLE_" + self.name.upper()

    def parse(self, text: str) -> Any:
        read = self.read or READERS.get(type(self.default), type(self.default))
        try:
            return read(text)
        except ValueError as exc:
            raise ValueError(f"{self.env_var}={text!r}: {_expected(read, exc)}") from None

    @property
    def value(self) -> Any:
        """The default, read."""
        return self.parse(str(self.default))


def _expected(read: Callable[..., Any], exc: ValueError) -> str:
    return f"expected {read.__name__}" if read in (int, float, str) else str(exc)


SETTINGS = (
    Setting(
        "redis_url",
        "redis://127.0.0.1:6379/0",
        "Redis for the queue, results and heartbeats; redis://:password@host:port/db",
    ),
    Setting(
        "redis_sentinels",
        "",
        "Sentinels (host:port,...) naming the master; redis_url then gives user, password, TLS",
    ),
    Setting("redis_master", "beagle", "name of the master the Sentinels watch"),
    Setting("key_prefix", "beagle", "prefix of every Redis key Beagle writes"),
    Setting("host", "127.0.0.1", "address Apache listens on for `make run`"),
    Setting("port", 8080, "port Apache listens on"),
    Setting(
        "model_repository",
        str(PROJECT_ROOT / "models"),
        "folder holding models/<name>/<version>/ (read by workers only)",
    ),
    Setting(
        "models",
        "",
        "models a worker serves, comma-separated, name or name:version to pin; empty = all",
        model_pins,
        _pins_text,
    ),
    Setting("default_model", "digits", "model /predict uses when the request names none"),
    Setting("max_batch_size", 32, "most requests a worker runs in one forward pass"),
    Setting(
        "batch_timeout",
        0.0,
        "seconds a worker waits for more requests once it has some (0 = take what is queued)",
    ),
    Setting(
        "request_timeout",
        10.0,
        "seconds from admission to answer; past it the web answers 504 and workers skip it",
        _positive,
    ),
    Setting("max_queue", 256, "backlog per model beyond which /predict answers 503"),
    Setting(
        "max_queue_wait",
        5.0,
        "seconds the oldest queued request may wait before /predict answers 503 (<= timeout/2)",
        _positive,
    ),
    Setting("top_k", 5, "predictions returned when the request does not say"),
    Setting("max_image_bytes", 10 * 1024 * 1024, "largest encoded image accepted (413 beyond)"),
    Setting(
        "max_image_pixels",
        25_000_000,
        "largest width x height accepted, checked before decoding (413 beyond)",
    ),
    Setting(
        "decode_budget_mb",
        512,
        "MB of pixels a web process may decode at once; beyond, decodes wait, then 503",
    ),
    Setting(
        "max_json_values",
        1_048_576,
        "most values a JSON body may hold, counted before parsing (413 beyond)",
    ),
    Setting(
        "web_processes", 0, "mod_wsgi daemon processes (0 = one per two cores of the web host)"
    ),
    Setting(
        "web_threads",
        256,
        "threads per mod_wsgi daemon process; all but 2 of each may wait on answers at once",
    ),
    Setting(
        "worker_threads", 0, "CPU threads a worker's runtime uses (0 = one per core it may run on)"
    ),
    Setting(
        "worker_gpu_memory_mb",
        0,
        "GPU memory a worker's runtime may take, MB (0 = only what it needs, grown on use)",
    ),
    Setting(
        "worker_cpus",
        "",
        "cores a worker runs on, like 0-1 or 2,3 (empty = all), so workers can split them",
        cpu_set,
        _cpus_text,
    ),
    Setting("worker_name", "", "consumer name of a worker in the Redis group (default host-pid)"),
    Setting(
        "heartbeat_ttl",
        10.0,
        "seconds after its last heartbeat a silent worker stops counting as live",
        _positive,
    ),
    Setting(
        "claim_idle",
        5.0,
        "seconds a delivered request may stay unacknowledged before another worker claims it",
        _positive,
    ),
    Setting(
        "max_attempts",
        3,
        "deliveries of one request before it is answered with an error and dropped",
    ),
    Setting("result_ttl", 30.0, "seconds an unread result stays in Redis"),
    Setting("repository_poll", 2.0, "seconds between a worker's scans of the model repository"),
    Setting(
        "api_keys",
        "",
        "keys of 32+ characters, comma-separated; when set, /predict, /v1 and /status need one",
        api_keys,
        _joined,
    ),
    Setting(
        "admin_networks",
        "127.0.0.1/32,::1/128",
        "client networks allowed to read /metrics (comma-separated CIDRs)",
        _networks,
        _joined,
    ),
    Setting("drain_file", "", "a file whose presence makes /readyz answer 503 (fab drain)"),
    Setting("log_level", "INFO", "Python logging level for web and worker"),
)

BY_NAME = {setting.name: setting for setting in SETTINGS}
if TYPE_CHECKING:  # made at run time from SETTINGS, so typed loosely
    Settings = Any
else:
    Settings = dataclasses.make_dataclass("Settings", [s.name for s in SETTINGS], frozen=True)


def load(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from defaults, then ``BEAGLE_*`` environment variables, then overrides
    (values, or text to read)."""
    environ = os.environ if environ is None else environ
    values = {
        setting.name: setting.parse(environ.get(setting.env_var, str(setting.default)))
        for setting in SETTINGS
    }
    return Settings(**{**values, **_read(overrides)})


def replace(settings: Settings, **changes: object) -> Settings:
    """A copy of ``settings`` with ``changes`` (values, or text to read)."""
    return dataclasses.replace(settings, **_read(changes))


def as_environ(settings: Settings, changed_only: bool = False) -> dict[str, str]:
    """The ``BEAGLE_*`` variables that reproduce ``settings`` in a child process (only
    those that differ from the defaults with ``changed_only``)."""
    environ = {}
    for setting in SETTINGS:
        value = getattr(settings, setting.name)
        if not changed_only or value != setting.value:
            environ[setting.env_var] = setting.write(value)
    return environ


def body_limit(settings: Settings) -> int:
    """Largest request body: one image in base64 (4/3 larger) plus room for the envelope."""
    return settings.max_image_bytes * 4 // 3 + 64 * 1024


def _read(values: Mapping[str, object]) -> dict[str, Any]:
    unknown = set(values) - set(BY_NAME)
    if unknown:
        raise KeyError(f"unknown settings: {', '.join(sorted(unknown))}")
    return {
        name: BY_NAME[name].parse(value) if isinstance(value, str) else value
        for name, value in values.items()
    }
