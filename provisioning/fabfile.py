"""Deploy and operate Beagle with Fabric: `fab -H gpu1 deploy`.

Hosts, users and keys come from Fabric's usual sources (-H, -i, ~/.ssh/config); host keys
are checked against known_hosts (provisioning/host_keys.py). Which host has which role, and
what every host must agree on, is provisioning/deployment.py. Air-gapped hosts:
`beagle.wheels: ~/beagle-wheels` downloads their Python packages on the machine running
fab and uploads them (provisioning/wheels.py). Other `beagle` keys (provisioning/plan.py)
are set the same way. No secret lives in the repository: each Redis role's password is
generated on the first deploy and kept on the hosts of that role only
(provisioning/credentials.py).
"""

import json
import secrets
import sys
from collections.abc import Iterator

from fabric import Connection, task
from invoke import Collection, Context
from invoke.exceptions import Exit

from provisioning import credentials, host, host_keys, pki, redis_host, web_host
from provisioning.bundle import Bundle
from provisioning.deployment import Cluster, cluster, targets
from provisioning.edge import Edge
from provisioning.plan import Plan
from provisioning.remote import put_if_changed, run


def bundle() -> Bundle:
    try:
        return Bundle.from_checkout()
    except ValueError as exc:
        raise Exit(str(exc)) from None


def say(c: Connection, step: str, changes: list[str]) -> None:
    print(f"{c.host}: {step}: {'; '.join(changes) if changes else 'unchanged'}", flush=True)


def _hosts_with(c: Context, role: str) -> Iterator[tuple[Connection, Cluster]]:
    """(connection, the cluster) for each host with ``role``, its settings file brought up
    to date first."""
    deployment = cluster(c)
    for conn, roles in deployment.hosts:
        if role in roles:
            _settings(conn, deployment, roles)
            yield conn, deployment


@task
def deploy(c: Context) -> None:
    """Everything, idempotent: all the steps, host by host, then a smoke request.

    Packages, code and venv, settings, Redis, CUDA, workers, Apache. Running it again
    changes nothing."""
    deployment = cluster(c)
    plan, release = deployment.plan, bundle()
    for conn, roles in deployment.hosts:
        _packages(conn, deployment, roles)
        gpus = host.has_gpu(conn) if "worker" in roles else 0
        moved = _code(conn, plan, release, gpus)
        _settings(conn, deployment, roles)
        if "redis" in roles:
            _redis(conn, deployment)
        if "worker" in roles:
            _cuda(conn, plan, gpus)
            _workers(conn, plan, gpus, restart=moved)
        if "web" in roles:
            _apache(conn, deployment, reload_code=moved)
        say(conn, "releases", host.prune(conn, plan))
    _smoke(deployment.hosts, plan, deployment.edge)


@task
def packages(c: Context) -> None:
    """Install the Debian packages the host's roles need."""
    deployment = cluster(c)
    for conn, roles in deployment.hosts:
        _packages(conn, deployment, roles)


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
            say(conn, "apache", [web_host.reload_web_code(conn, plan)])


@task
def venv(c: Context) -> None:
    """Build the virtualenv for the checkout's requirements (shared by releases)."""
    plan, release = Plan.from_config(c.config), bundle()
    for conn, roles in targets(c, plan):
        gpus = host.has_gpu(conn) if "worker" in roles else 0
        say(conn, "venv", host.virtualenv(conn, plan, release.requirements, gpus)[1])


@task
def redis(c: Context) -> None:
    """Beagle's Redis: its configuration, users, certificate, firewall and service."""
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
        _apache(conn, deployment, reload_code=False)


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
            say(conn, "apache", [web_host.reload_web_code(conn, plan)])
    _smoke(hosts, plan, Edge.from_plan(plan))


@task
def status(c: Context) -> None:
    """Units, readiness, queue depth, worker heartbeats and the last errors."""
    plan = Plan.from_config(c.config)
    edge = Edge.from_plan(plan)
    hosts = targets(c, plan)
    for conn, roles in hosts:
        units = ["beagle-redis"] * ("redis" in roles) + ["apache2"] * ("web" in roles)
        units += ["beagle-sentinel"] * ("redis" in roles and plan.sentinels)
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
            # The host's own loopback (an admin network): its certificate is not checked.
            url = web_host.local_url(plan, edge)
            ready = run(conn, f"curl -sk {url}/readyz", warn=True).stdout
            live = json.loads(run(conn, f"curl -sk {url}/status").stdout)
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
    if plan.sentinels:  # the master, each replica's lag, each Sentinel's view, from one Redis host
        conn = next(conn for conn, roles in hosts if "redis" in roles)
        run(conn, plan.with_env(plan.python("scripts.redis_ha status"), role="admin"), hide=False)


@task(positional=["web"])
def drain(c: Context, web: str) -> None:
    """Take one web host out of service for maintenance, losing no request (fab drain web1).

    /readyz answers 503 so the load balancer stops sending, the requests in flight finish,
    then Apache stops. `fab resume web1` is the reverse."""
    conn, deployment = _web_host(c, web)
    say(conn, "drain", web_host.drain(conn, deployment.plan, deployment.edge, deployment.settings))


@task(positional=["web"])
def resume(c: Context, web: str) -> None:
    """Bring a drained web host back into service: Apache started, /readyz 200 again."""
    conn, deployment = _web_host(c, web)
    say(conn, "resume", web_host.resume(conn, deployment.plan, deployment.edge))


def _web_host(c: Context, web: str) -> tuple[Connection, Cluster]:
    """The web host named ``web`` (as in beagle.roles.web)."""
    deployment = cluster(c)
    for conn, roles in deployment.hosts:
        if "web" in roles and web in (conn.host, conn.original_host):
            _settings(conn, deployment, roles)
            return conn, deployment
    raise Exit(f"{web} is not one of the web hosts in beagle.roles.web")


@task(name="redis-failover")
def redis_failover(c: Context) -> None:
    """A planned switchover of the Redis master (SENTINEL FAILOVER), for maintenance."""
    plan = Plan.from_config(c.config)
    conn = next(conn for conn, roles in targets(c, plan) if "redis" in roles)
    run(conn, plan.with_env(plan.python("scripts.redis_ha failover"), role="admin"), hide=False)


@task(name="new-api-key")
def new_api_key(c: Context) -> None:
    """Print a new random API key (add it to beagle.settings.api_keys)."""
    print(secrets.token_urlsafe(32))


@task
def hosts(c: Context) -> None:
    """Each host's roles, SSH host key fingerprint and system; changes nothing.

    Connecting checks every host key against known_hosts (beagle.host_keys)."""
    plan = Plan.from_config(c.config)
    for conn, roles in targets(c, plan):
        key = conn.transport.get_remote_server_key() if conn.transport else None
        system = run(conn, ". /etc/os-release && echo $PRETTY_NAME", warn=True).stdout.strip()
        print(
            f"{conn.host}: roles {', '.join(sorted(roles))}; host key "
            f"{key.get_name() + ' ' + host_keys.fingerprint(key) if key else '?'}; {system}"
        )


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
    conn = next(conn for conn, roles in targets(c, plan) if "redis" in roles)
    command = plan.python("scripts.flush_queue" + (" --all" if everything else ""))
    run(conn, plan.with_env(command, role="admin"), hide=False)


@task
def stress(c: Context, requests: int = 500, concurrency: int = 0) -> None:
    """The stress test, run on a web host against its own Apache (with the first API key
    from the env file there when keys are on)."""
    plan = Plan.from_config(c.config)
    edge = Edge.from_plan(plan)
    for conn, roles in targets(c, plan):
        if "web" in roles:
            mode = f"--concurrency {int(concurrency)}" if concurrency else ""
            mode += " --insecure" if edge.on else ""  # its own loopback: see web_host.smoke
            url = f"{web_host.local_url(plan, edge)}/predict"
            command = f"stress.stress_test --url {url} --requests {int(requests)} {mode}"
            run(conn, plan.with_env(plan.python(command)), hide=False)


def _packages(conn: Connection, deployment: Cluster, roles: set[str]) -> None:
    """The packages of the host's roles, with nftables (Redis reached by other hosts) and
    redis-sentinel (several Redis hosts) on Redis hosts."""
    extra: tuple[str, ...] = ()
    if "redis" in roles:
        extra = ("nftables",) * deployment.redis_tls
        extra += ("redis-sentinel",) * deployment.plan.sentinels
    say(conn, "packages", host.packages(conn, deployment.plan, roles, extra))


def _code(conn: Connection, plan: Plan, release: Bundle, gpus: int) -> bool:
    """Release, venv and switch; True if current moved to a new release."""
    path, changes = host.release(conn, plan, release, gpus)
    say(conn, "code", changes)
    moved = host.switch(conn, plan, path)
    say(conn, "current", [f"now {release.id}"] if moved else [])
    return moved


def _settings(conn: Connection, deployment: Cluster, roles: set[str]) -> None:
    """The env file, the credentials the host's roles hold, and the Redis CA's
    certificate when Redis speaks TLS."""
    plan = deployment.plan
    changes = host.env_file(conn, plan, deployment.settings)
    changes += credentials.install(conn, plan, roles, deployment.urls(), deployment.passwords)
    if deployment.redis_tls:
        ca = pki.Authority(plan.pki).certificate()
        run(conn, f"install -d -m 755 {plan.tls_dir}")
        if put_if_changed(conn, plan.redis_ca, ca):
            changes.append("Redis's CA certificate installed")
    say(conn, "settings", changes)


def _redis(conn: Connection, deployment: Cluster) -> None:
    """Redis on this host: the master, or a replica of it; with several Redis hosts, a
    Sentinel beside it; over TLS and behind the firewall when others reach it."""
    plan, own = deployment.plan, deployment.address_of[conn.host]
    master = deployment.redis_address
    certificate = None
    if deployment.redis_tls:
        certificate = pki.Authority(plan.pki).issue(f"redis-{conn.host}", [own])
    changes = redis_host.redis(
        conn,
        plan,
        deployment.passwords,
        deployment.settings.key_prefix,
        bind=own,
        certificate=certificate,
        master="" if own == master else f"{master}:{plan.redis_port}",
        replicated=plan.sentinels,
    )
    if plan.sentinels:
        quorum = len(deployment.redis_addresses) // 2 + 1
        changes += redis_host.sentinel(
            conn,
            plan,
            deployment.passwords,
            bind=own,
            master=f"{master}:{plan.redis_port}",
            quorum=quorum,
            certificate=certificate,
        )
    if deployment.redis_tls:
        changes += redis_host.firewall(conn, plan, deployment.peers, plan.sentinels)
    say(conn, "redis", changes)


def _workers(conn: Connection, plan: Plan, gpus: int, restart: bool) -> None:
    say(conn, "workers", host.service_user(conn) + host.workers(conn, plan, gpus, restart))


def _apache(conn: Connection, deployment: Cluster, reload_code: bool) -> None:
    plan, edge = deployment.plan, deployment.edge
    turn = [other for other, roles in deployment.hosts if "web" in roles].index(conn)
    changes = web_host.apache(conn, plan, deployment.settings, edge, reload_code)
    say(conn, "apache", changes + web_host.logrotate(conn, plan, edge, turn))


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


def _smoke(hosts: list[tuple[Connection, set[str]]], plan: Plan, edge: Edge) -> None:
    for conn, roles in hosts:
        if "web" in roles:
            label = web_host.smoke(conn, plan, edge)
            name = edge.domains[0] if edge.domains else conn.host
            scheme, port, default = (
                ("https", plan.https_port, 443) if edge.on else ("http", plan.port, 80)
            )
            url = f"{scheme}://{name}{'' if port == default else f':{port}'}"
            print(
                f"{conn.host}: smoke: a digit 7 came back as {label!r} through Apache.\n"
                f"Beagle is serving on {url}\nStress it: fab -H {conn.host} stress"
            )


ns = Collection.from_module(sys.modules[__name__])
ns.configure(Plan.defaults())
