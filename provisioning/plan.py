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
    etc: str = "/etc/beagle"  # beagle.env, redis.conf, worker-<n>.env
    port: int = 80  # Apache's
    redis_port: int = 6380  # Beagle's own Redis (Debian's keeps 6379)
    redis_address: str = ""  # the private address of the Redis host (several hosts)
    roles: dict = field(default_factory=dict)  # {redis: [...], worker: [...], web: [...]}
    settings: dict = field(default_factory=dict)  # Beagle settings for the env file
    systemctl: str = "systemctl"
    cpu_workers: int = 1  # worker instances on a host without a GPU
    keep_releases: int = 5
    stop_timeout: int = 90  # seconds a worker may take to finish its batch
    wheels: str = ""  # a folder here: air-gapped hosts' packages
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

    @property
    def debian_redis_note(self) -> str:
        """Says whether Debian's redis-server ran before Beagle's first deploy."""
        return f"{self.etc}/debian-redis-server"

    def python(self, module_and_args: str) -> str:
        """A shell command running the current release's ``python -m <module> <args>``."""
        return f"cd {self.current} && venv/bin/python -m {module_and_args}"

    def with_env(self, command: str) -> str:
        """``command`` run with the env file's variables (it holds no shell syntax)."""
        return f"set -a && . {self.env_file} && set +a && {command}"
