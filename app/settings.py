"""Every Beagle setting: name, default, one-line help.

Web tier, worker, fabfile and stress test all read these definitions. Each setting
can be overridden with an environment variable ``BEAGLE_<NAME>`` (upper case);
the README lists every one (tests/test_settings.py checks it).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    name: str
    default: object
    help: str

    @property
    def env_var(self):
        return "BEAGLE_" + self.name.upper()

    def parse(self, text):
        kind = type(self.default)
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"{self.env_var}={text!r}: expected true or false")
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{self.env_var}={text!r}: expected {kind.__name__}") from None


SETTINGS = (
    Setting("redis_url", "redis://127.0.0.1:6379/0",
            "Redis for the queue, results and heartbeats; redis://:password@host:port/db"),
    Setting("key_prefix", "beagle", "prefix of every Redis key Beagle writes"),
    Setting("host", "127.0.0.1", "address Apache listens on for `make run`"),
    Setting("port", 8080, "port Apache listens on"),
    Setting("model_repository", str(PROJECT_ROOT / "models"),
            "folder holding models/<name>/<version>/ (read by workers only)"),
    Setting("models", "",
            "models a worker serves, comma-separated, name or name:version to pin; empty = all"),
    Setting("default_model", "digits", "model /predict uses when the request names none"),
    Setting("max_batch_size", 32, "most requests a worker runs in one forward pass"),
    Setting("batch_timeout", 0.0,
            "seconds a worker waits for more requests once it has some (0 = take what is queued)"),
    Setting("request_timeout", 10.0,
            "seconds from admission to answer; past it the web answers 504 and workers skip it"),
    Setting("max_queue", 256, "backlog per model beyond which /predict answers 503"),
    Setting("max_queue_wait", 5.0,
            "seconds the oldest queued request may wait before /predict answers 503 "
            "(<= timeout/2)"),
    Setting("top_k", 5, "predictions returned when the request does not say"),
    Setting("max_image_bytes", 10 * 1024 * 1024, "largest encoded image accepted (413 beyond)"),
    Setting("max_image_pixels", 25_000_000,
            "largest width x height accepted, checked before decoding (413 beyond)"),
    Setting("decode_budget_mb", 512,
            "MB of pixels a web process may decode at once; beyond, decodes wait, then 503"),
    Setting("max_json_values", 1_048_576,
            "most values a JSON body may hold, counted before parsing (413 beyond)"),
    Setting("web_processes", 1,
            "mod_wsgi daemon processes (one per host keeps the in-flight limit exact)"),
    Setting("web_threads", 128,
            "threads per mod_wsgi daemon process; all but 2 may wait on answers at once"),
    Setting("worker_threads", 0,
            "CPU threads a worker's runtime uses (0 = one per core it may run on)"),
    Setting("worker_cpus", "",
            "cores a worker runs on, like 0-1 or 2,3 (empty = all), so workers can split them"),
    Setting("worker_name", "", "consumer name of a worker in the Redis group (default host-pid)"),
    Setting("heartbeat_ttl", 10.0,
            "seconds after its last heartbeat a silent worker stops counting as live"),
    Setting("claim_idle", 5.0,
            "seconds a delivered request may stay unacknowledged before another worker claims it"),
    Setting("max_attempts", 3,
            "deliveries of one request before it is answered with an error and dropped"),
    Setting("result_ttl", 30.0, "seconds an unread result stays in Redis"),
    Setting("repository_poll", 2.0, "seconds between a worker's scans of the model repository"),
    Setting("api_keys", "",
            "comma-separated keys; when set, /predict and /v1 need 'Authorization: Bearer <key>'"),
    Setting("admin_networks", "127.0.0.1/32,::1/128",
            "client networks allowed to read /metrics (comma-separated CIDRs)"),
    Setting("log_level", "INFO", "Python logging level for web and worker"),
)

BY_NAME = {setting.name: setting for setting in SETTINGS}


def load(environ=None, **overrides):
    """Settings from defaults, then ``BEAGLE_*`` environment variables, then overrides."""
    environ = os.environ if environ is None else environ
    values = {}
    for setting in SETTINGS:
        value = setting.default
        if setting.env_var in environ:
            value = setting.parse(environ[setting.env_var])
        values[setting.name] = value
    unknown = set(overrides) - set(BY_NAME)
    if unknown:
        raise KeyError(f"unknown settings: {', '.join(sorted(unknown))}")
    values.update(overrides)
    return SimpleNamespace(**values)


def as_environ(settings, changed_only=False):
    """The ``BEAGLE_*`` variables that reproduce ``settings`` in a child process (only
    those that differ from the defaults with ``changed_only``)."""
    return {BY_NAME[name].env_var: str(value) for name, value in vars(settings).items()
            if not changed_only or value != BY_NAME[name].default}


def body_limit(settings):
    """Largest request body: one image in base64 (4/3 larger) plus room for the envelope."""
    return settings.max_image_bytes * 4 // 3 + 64 * 1024
