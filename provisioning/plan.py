"""What to deploy where: the `beagle` section of Fabric's configuration, described once.

Each field of `Plan` is a key an operator may set under ``beagle:`` (fabric.yaml,
~/.fabric.yaml or ``fab -f file.yaml``), with its default; the fabfile registers these
defaults with Fabric, and the README lists them. The paths on a host follow from it.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Self

from invoke import Config


@dataclass(frozen=True)
class Plan:
    prefix: str = "/opt/beagle"  # releases, venvs and models live under it
    etc: str = "/etc/beagle"  # beagle.env, <role>.env, redis.conf, worker-<n>.env
    port: int = 80  # Apache's HTTP port (only a redirect to HTTPS when tls is on)
    https_port: int = 443
    listen: str = "*"  # the address Apache listens on
    tls: dict = field(default_factory=dict)  # HTTPS at the edge (provisioning/edge.py)
    open_api: bool = False  # serve the API without keys beyond loopback, on purpose
    redis_port: int = 6380  # Beagle's own Redis (Debian's keeps 6379)
    redis_address: str = ""  # the private address of the Redis host (several hosts)
    redis_addresses: list = field(default_factory=list)  # each Redis host's, with Sentinel
    sentinel_port: int = 26380
    redis_min_replicas: int = 0  # a master writes only while this many replicas keep up
    roles: dict = field(default_factory=dict)  # {redis: [...], worker: [...], web: [...]}
    settings: dict = field(default_factory=dict)  # Beagle settings for the env file
    systemctl: str = "systemctl"
    cpu_workers: int = 1  # worker instances on a host without a GPU
    keep_releases: int = 5
    stop_timeout: int = 90  # seconds a worker may take to finish its batch
    wheels: str = ""  # a folder here: air-gapped hosts' packages
    drain_seconds: int = 5  # how long a load balancer takes to notice /readyz change
    known_hosts: str = "~/.ssh/known_hosts"  # here: the hosts' SSH keys, checked
    host_keys: str = "strict"  # or accept-new: record an unknown host's key on first contact
    pki: str = "~/.beagle/pki"  # here: the CA of Redis's TLS between hosts
    redis_dir = "/var/lib/beagle-redis"  # Beagle's Redis's working folder (not a key)

    @classmethod
    def defaults(cls) -> dict[str, dict[str, Any]]:
        """Fabric's configuration defaults: {"beagle": {key: default}}."""
        return {"beagle": dataclasses.asdict(cls())}

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The plan Fabric's configuration gives, each value in its field's type."""
        given, default = config.beagle, cls()
        return cls(
            **{
                f.name: type(getattr(default, f.name))(given[f.name] or getattr(default, f.name))
                for f in dataclasses.fields(cls)
            }
        )

    @property
    def current(self) -> str:
        return f"{self.prefix}/current"

    @property
    def env_file(self) -> str:
        return f"{self.etc}/beagle.env"

    def debian_note(self, unit: str) -> str:
        """Says whether Debian's ``unit`` ran before Beagle's first deploy."""
        return f"{self.etc}/debian-{unit}"

    def python(self, module_and_args: str) -> str:
        """A shell command running the current release's ``python -m <module> <args>``."""
        return f"cd {self.current} && venv/bin/python -m {module_and_args}"

    @property
    def tls_dir(self) -> str:
        return f"{self.etc}/tls"

    @property
    def redis_ca(self) -> str:
        """The CA certificate clients check Redis's against, on every host."""
        return f"{self.tls_dir}/redis-ca.pem"

    @property
    def sentinels(self) -> bool:
        """Several Redis hosts: replicas, and Sentinels that fail over."""
        return len(self.roles.get("redis", [])) > 1

    @property
    def drain_file(self) -> str:
        """Present while the host is out of service (fab drain): /readyz answers 503."""
        return f"{self.etc}/draining"

    def role_env(self, role: str) -> str:
        """The env file with the Redis URL of ``role`` (provisioning/credentials.py)."""
        return f"{self.etc}/{role}.env"

    def with_env(self, command: str, role: str = "") -> str:
        """``command`` run with the env file's variables and, given a Redis ``role``, its
        credentials (the files hold no shell syntax)."""
        files = [self.env_file] + ([self.role_env(role)] if role else [])
        sourced = " && ".join(f". {path}" for path in files)
        return f"set -a && {sourced} && set +a && {command}"
