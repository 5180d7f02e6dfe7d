"""Deploy and operate Beagle with Fabric: `fab -H gpu1 deploy`.

Hosts, users and keys come from Fabric's usual sources (-H, -i, ~/.ssh/config). With -H,
every host gets every role: Redis, workers, Apache. To scale out, name the roles in a
Fabric config file instead (fab -f cluster.yaml deploy):

    beagle:
      roles: {redis: [10.0.0.5], worker: [gpu1, gpu2], web: [web1, web2]}
      redis_address: 10.0.0.5        # the private address the others reach Redis on

Air-gapped hosts: `beagle.wheels: ~/beagle-wheels` downloads their Python packages on the
machine running fab and uploads them (provisioning/wheels.py). Other `beagle` keys
(provisioning/plan.py) are set the same way. No secret lives in the repository: the Redis
password is generated on the first deploy and kept in <etc>/beagle.env (mode 600).
"""

import ipaddress
import json
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from fabric import Connection, task
from invoke import Collection, Context
from invoke.exceptions import Exit

from app import config, queue
from app.config import Settings
from provisioning import host
from provisioning.bundle import Bundle
from provisioning.plan import Plan
from provisioning.remote import run

ROLES = ("redis", "worker", "web")  # also the order deploy goes in
# Where Redis may listen for other hosts: RFC 1918, the shared space clouds and overlay
# networks use (RFC 6598), IPv6 unique-local. (ipaddress's is_private is broader: it
# counts documentation and reserved ranges too.)
PRIVATE_NETWORKS = tuple(
    map(
        ipaddress.ip_network,
        ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"),
    )
)


def bundle() -> Bundle:
    try:
        return Bundle.from_checkout()
    except ValueError as exc:
        raise Exit(str(exc)) from None


def targets(c: Context, plan: Plan) -> list[tuple[Connection, set[str]]]:
    """[(connection, roles)]: the -H host with every role, or the hosts of beagle.roles,
    Redis hosts first, then workers, then web hosts."""
    if isinstance(c, Connection):
        return [(c, set(ROLES))]
    roles = plan.roles
    if not roles:
        raise Exit("name hosts with -H, or roles in a Fabric config file (beagle.roles)")
    order = []
    for role in ROLES:
        for name in roles.get(role, []):
            if name not in order:
                order.append(name)
    return [
        (Connection(name, config=c.config), {r for r in ROLES if name in roles.get(r, [])})
        for name in order
    ]


def say(c: Connection, step: str, changes: list[str]) -> None:
    print(f"{c.host}: {step}: {'; '.join(changes) if changes else 'unchanged'}", flush=True)


@dataclass(frozen=True)
class Cluster:
    """A deployment as the tasks see it: the plan, the hosts with their roles (Redis hosts
    first, then workers, then web hosts), the Redis password, the address the others reach
    Redis on, and the settings every host's env file gets."""

    plan: Plan
    hosts: list[tuple[Connection, set[str]]]
    redis_password: str
    redis_address: str
    settings: Settings


def cluster(c: Context) -> Cluster:
    plan = Plan.from_config(c.config)
    hosts = targets(c, plan)
    redis_hosts = [conn for conn, roles in hosts if "redis" in roles]
    if len(redis_hosts) != 1:
        raise Exit(f"exactly one host must have the redis role, not {len(redis_hosts)}")
    address = redis_address(plan, len(hosts))
    password = host.redis_password(redis_hosts[0], plan) or secrets.token_urlsafe(24)
    try:
        deployed = config.load(
            {},
            host="*",
            port=plan.port,
            model_repository=f"{plan.prefix}/models",
            redis_url=queue.redis_url(password, address, plan.redis_port),
            **plan.settings,
        )
    except (KeyError, ValueError) as exc:
        raise Exit(f"beagle.settings: {exc}") from None
    return Cluster(plan, hosts, password, address, deployed)


def redis_address(plan: Plan, host_count: int) -> str:
    """Where Redis listens and the others reach it: loopback on one host; on several,
    the private address beagle.redis_address names."""
    if host_count == 1 and not plan.redis_address:
        return "127.0.0.1"
    given = plan.redis_address
    if not given:
        raise Exit(
            "several hosts: set beagle.redis_address to the private address the "
            "others reach the Redis host on (Redis binds it)"
        )
    try:
        address = ipaddress.ip_address(given)
    except ValueError:
        raise Exit(
            f"beagle.redis_address {given!r} must be an IP address on a private network"
        ) from None
    if not any(address in network for network in PRIVATE_NETWORKS) and not (
        address.is_loopback and host_count == 1
    ):
        raise Exit(
            f"beagle.redis_address {given} is not a private address the other hosts "
            "can reach: Redis must never listen on a public network (use one in "
            f"{', '.join(map(str, PRIVATE_NETWORKS))})"
        )
    return given


def _hosts_with(c: Context, role: str) -> Iterator[tuple[Connection, Cluster]]:
    """(connection, the cluster) for each host with ``role``, its settings file brought up
    to date first."""
    deployment = cluster(c)
    for conn, roles in deployment.hosts:
        if role in roles:
            _settings(conn, deployment.plan, deployment.settings)
            yield conn, deployment


@task
def deploy(c: Context) -> None:
    """Everything, idempotent: all the steps, host by host, then a smoke request.

    Packages, code and venv, settings, Redis, CUDA, workers, Apache. Running it again
    changes nothing."""
    deployment = cluster(c)
    plan, release = deployment.plan, bundle()
    for conn, roles in deployment.hosts:
        _packages(conn, plan, roles)
        gpus = host.has_gpu(conn) if "worker" in roles else 0
        moved = _code(conn, plan, release, gpus)
        _settings(conn, plan, deployment.settings)
        if "redis" in roles:
            _redis(conn, deployment)
        if "worker" in roles:
            _cuda(conn, plan, gpus)
            _workers(conn, plan, gpus, restart=moved)
        if "web" in roles:
            _apache(conn, plan, deployment.settings, reload_code=moved)
        say(conn, "releases", host.prune(conn, plan))
    _smoke(deployment.hosts, plan)


@task
def packages(c: Context) -> None:
    """Install the Debian packages the host's roles need."""
    plan = Plan.from_config(c.config)
    for conn, roles in targets(c, plan):
        _packages(conn, plan, roles)


@task
def code(c: Context) -> None:
    """Ship the checkout as a new release and switch to it (rolling worker restart).

    The web code is reloaded and the workers are restarted one at a time."""
    plan, release = Plan.from_config(c.config), bundle()
    for conn, roles in targets(c, plan):
        gpus = host.has_gpu(conn) if "worker" in roles else 0
        moved = _code(conn, plan, release, gpus)
        if moved and "worker" in roles:
            _workers(conn, plan, gpus, restart=True)
        if moved and "web" in roles:
            say(conn, "apache", [host.reload_web_code(conn, plan)])


@task
def venv(c: Context) -> None:
    """Build the virtualenv for the checkout's requirements (shared by releases)."""
    plan, release = Plan.from_config(c.config), bundle()
    for conn, roles in targets(c, plan):
        gpus = host.has_gpu(conn) if "worker" in roles else 0
        say(conn, "venv", host.virtualenv(conn, plan, release.requirements, gpus)[1])


@task
def redis(c: Context) -> None:
    """Beagle's Redis: its configuration, password and service."""
    for conn, deployment in _hosts_with(c, "redis"):
        _redis(conn, deployment)


@task
def workers(c: Context, restart: bool = False) -> None:
    """The worker units, running; --restart restarts them one at a time."""
    for conn, deployment in _hosts_with(c, "worker"):
        _workers(conn, deployment.plan, host.has_gpu(conn), restart=restart)


@task
def apache(c: Context) -> None:
    """The Apache virtual host, modules and environment; reloaded gracefully on change."""
    for conn, deployment in _hosts_with(c, "web"):
        _apache(conn, deployment.plan, deployment.settings, reload_code=False)


@task
def cuda(c: Context) -> None:
    """Register the CUDA libraries with the dynamic linker and check the runtimes see a GPU."""
    plan = Plan.from_config(c.config)
    for conn, roles in targets(c, plan):
        if "worker" in roles:
            _cuda(conn, plan, host.has_gpu(conn))


@task
def rollback(c: Context) -> None:
    """Point current back at the previous release; reload the web code, restart workers."""
    plan = Plan.from_config(c.config)
    hosts = targets(c, plan)
    for conn, roles in hosts:
        path = host.previous_release(conn, plan)
        host.switch(conn, plan, path)
        say(conn, "current", [f"back to {path.rsplit('/', 1)[-1]}"])
        if "worker" in roles:
            _workers(conn, plan, host.has_gpu(conn), restart=True)
        if "web" in roles:
            say(conn, "apache", [host.reload_web_code(conn, plan)])
    _smoke(hosts, plan)


@task
def status(c: Context) -> None:
    """Units, readiness, queue depth, worker heartbeats and the last errors."""
    plan = Plan.from_config(c.config)
    for conn, roles in targets(c, plan):
        units = ["beagle-redis"] * ("redis" in roles) + ["apache2"] * ("web" in roles)
        units += run(
            conn,
            "ls /etc/systemd/system/multi-user.target.wants/ 2>/dev/null | "
            "grep beagle-worker@ || true",
        ).stdout.split()
        for unit in units:
            unit = unit.removesuffix(".service")
            state = run(conn, f"{plan.systemctl} is-active {unit}", warn=True).stdout.strip()
            print(f"{conn.host}: {unit}: {state}")
        if "web" in roles:
            ready = run(conn, f"curl -s http://127.0.0.1:{plan.port}/readyz", warn=True).stdout
            live = json.loads(run(conn, f"curl -s http://127.0.0.1:{plan.port}/status").stdout)
            print(f"{conn.host}: ready: {ready.strip()}")
            for model in live["models"]:
                print(
                    f"{conn.host}: model {model['name']} v{model['latest']}: "
                    f"{model['live_workers']} live workers, {model['queue_depth']} queued"
                )
            for worker in live["workers"]:
                print(
                    f"{conn.host}: worker {worker['id']}: {worker['batches']} batches, "
                    f"{worker['requests']} requests"
                )
            errors = run(
                conn,
                "grep -i error /var/log/apache2/beagle_error.log 2>/dev/null | tail -n 5",
                warn=True,
            ).stdout.strip()
            print(f"{conn.host}: last errors in the Apache error log:\n{errors or '(none)'}")


@task
def logs(c: Context, lines: int = 20, follow: bool = False) -> None:
    """The Apache error and access logs and the workers' journal (--follow, --lines N)."""
    plan = Plan.from_config(c.config)
    for conn, _ in targets(c, plan):
        command = plan.python(
            f"scripts.tail_logs --lines {int(lines)}" + (" --follow" if follow else "")
        )
        run(conn, command, hide=False, pty=bool(follow))


@task(name="flush-queue")
def flush_queue(c: Context, everything: bool = False) -> None:
    """Answer every queued request with a 503 and remove it (Beagle's keys only)."""
    plan = Plan.from_config(c.config)
    conn = next(conn for conn, roles in targets(c, plan) if "redis" in roles or "web" in roles)
    run(
        conn,
        plan.with_env(plan.python("scripts.flush_queue" + (" --all" if everything else ""))),
        hide=False,
    )


@task
def stress(c: Context, requests: int = 500, concurrency: int = 0) -> None:
    """The stress test, run on a web host against its own Apache (with the first API key
    from the env file there when keys are on)."""
    plan = Plan.from_config(c.config)
    for conn, roles in targets(c, plan):
        if "web" in roles:
            mode = f"--concurrency {int(concurrency)}" if concurrency else ""
            run(
                conn,
                plan.with_env(
                    plan.python(
                        f"stress.stress_test --url http://127.0.0.1:{plan.port}/predict "
                        f"--requests {int(requests)} {mode}"
                    )
                ),
                hide=False,
            )


def _packages(conn: Connection, plan: Plan, roles: set[str]) -> None:
    say(conn, "packages", host.packages(conn, plan, roles))


def _code(conn: Connection, plan: Plan, release: Bundle, gpus: int) -> bool:
    """Release, venv and switch; True if current moved to a new release."""
    path, changes = host.release(conn, plan, release, gpus)
    say(conn, "code", changes)
    moved = host.switch(conn, plan, path)
    say(conn, "current", [f"now {release.id}"] if moved else [])
    return moved


def _settings(conn: Connection, plan: Plan, deployed: Settings) -> None:
    say(conn, "settings", host.env_file(conn, plan, deployed))


def _redis(conn: Connection, deployment: Cluster) -> None:
    plan = deployment.plan
    changes = host.redis(conn, plan, deployment.redis_password, bind=deployment.redis_address)
    say(conn, "redis", changes)


def _workers(conn: Connection, plan: Plan, gpus: int, restart: bool) -> None:
    say(conn, "workers", host.service_user(conn) + host.workers(conn, plan, gpus, restart))


def _apache(conn: Connection, plan: Plan, deployed: Settings, reload_code: bool) -> None:
    say(conn, "apache", host.apache(conn, plan, deployed, reload_code))


def _cuda(conn: Connection, plan: Plan, gpus: int) -> None:
    if not gpus:
        say(
            conn,
            "cuda",
            [
                "skipped: no NVIDIA GPU on this host (nvidia-smi lists none); "
                "the workers run on the CPU"
            ],
        )
        return
    changes, problem = host.cuda(conn, plan, gpus)
    say(conn, "cuda", changes)
    if problem:
        raise Exit(f"{conn.host}: {problem}")


def _smoke(hosts: list[tuple[Connection, set[str]]], plan: Plan) -> None:
    for conn, roles in hosts:
        if "web" in roles:
            label = host.smoke(conn, plan)
            url = f"http://{conn.host}{'' if plan.port == 80 else f':{plan.port}'}"
            print(
                f"{conn.host}: smoke: a digit 7 came back as {label!r} through Apache.\n"
                f"Beagle is serving on {url}\nStress it: fab -H {conn.host} stress"
            )


ns = Collection.from_module(sys.modules[__name__])
ns.configure(Plan.defaults())
