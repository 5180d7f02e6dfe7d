"""The redis role's steps on a host: Beagle's own Redis (provisioning/redis.conf.j2, a user
per role, on port ``redis_port``) as beagle-redis.service; with several Redis hosts, a
replica of the master on all but one, and Redis Sentinel (provisioning/sentinel.conf.j2,
on ``sentinel_port``) as beagle-sentinel.service on each; their firewall; and Debian's own
redis-server and redis-sentinel (ports 6379 and 26379, no password), which their packages
start on install, stopped and disabled unless they ran before Beagle's first deploy."""

import hashlib
import re

from fabric import Connection
from invoke.exceptions import Exit

from app.redis_connection import version_problem
from provisioning import config_files
from provisioning.pki import Issued
from provisioning.plan import Plan
from provisioning.remote import exists, put_if_changed, read, run
from provisioning.services import keep_running, unit_is

DEBIAN_UNITS = {"redis-server": 6379, "redis-sentinel": 26379}  # no password on either
SENTINEL_ROLES = ("web", "worker", "admin", "sentinel")  # the users a Sentinel knows


def note_debian_redis(c: Connection, plan: Plan) -> list[str]:
    """Before the first deploy installs redis-server and redis-sentinel (whose packages
    start Debian's own, with no password), note whether those were running: only then are
    they left running."""
    notes = []
    for unit in DEBIAN_UNITS:
        note = plan.debian_note(unit)
        if exists(c, note):
            continue
        running = unit_is(c, plan, "active", unit)
        run(c, f"install -d -m 755 {plan.etc} && echo {'keep' if running else 'stop'} > {note}")
        if running:
            notes.append(f"Debian's {unit} was running before Beagle's first deploy: left running")
    return notes


def redis_server_problem(version_output: str) -> str | None:
    """What is wrong with the host's redis-server, from its ``--version``, or None."""
    found = re.search(r"v=(\d+\.\d+\.\d+)", version_output)
    if found is None:
        return f"cannot read the version of redis-server from {version_output.strip()[:80]!r}"
    return version_problem(found.group(1))


def redis(
    c: Connection,
    plan: Plan,
    passwords: dict[str, str],
    key_prefix: str,
    bind: str,
    certificate: Issued | None,
    master: str = "",
    replicated: bool = False,
) -> list[str]:
    """Beagle's Redis with a user per role in ``passwords``; with ``certificate`` (several
    hosts), TLS only, with that certificate and the deployment's CA; ``replicated``: one
    of several (Sentinel's); with ``master`` (host:port), a replica of it."""
    problem = redis_server_problem(run(c, "redis-server --version").stdout)
    if problem:
        raise Exit(f"{c.host}: {problem}")
    tls, changed = _certificate(c, plan, certificate)
    config = config_files.redis_conf(
        passwords,
        key_prefix=key_prefix,
        bind=bind,
        port=plan.redis_port,
        dir=plan.redis_dir,
        tls=tls,
        master=master,
        replicated=replicated,
        min_replicas=plan.redis_min_replicas,
    )
    run(c, f"install -d -o redis -g redis -m 750 {plan.redis_dir}")
    path = f"{plan.etc}/redis.conf"
    before = read(c, path)
    # Whom a running Redis replicates is the Sentinels' to change, live: a file that
    # differs only there starts it right next time and is no reason to restart it (a
    # master restarted comes back empty, and its replicas would copy that).
    if put_if_changed(c, path, config, mode="640", owner="root:redis"):
        changed |= _without_replicaof(before) != _without_replicaof(config)
    unit = config_files.render(
        "systemd/beagle-redis.service.j2", etc=plan.etc, redis_dir=plan.redis_dir
    )
    changed |= put_if_changed(c, "/etc/systemd/system/beagle-redis.service", unit)
    return _stop_debian_redis(c, plan) + keep_running(c, plan, ["beagle-redis"], changed)


def _without_replicaof(config: str) -> str:
    return re.sub(r"^replicaof .*\n", "", config, flags=re.M)


def sentinel(
    c: Connection,
    plan: Plan,
    passwords: dict[str, str],
    bind: str,
    master: str,
    quorum: int,
    certificate: Issued | None,
) -> list[str]:
    """Redis Sentinel watching ``master`` (host:port) with ``quorum`` of its peers. It
    rewrites its own file as it learns, so the deploy writes that file again (and restarts
    it) only when what it renders changes."""
    tls, changed = _certificate(c, plan, certificate)
    roles = {role: passwords[role] for role in SENTINEL_ROLES}
    text = config_files.sentinel_conf(
        roles,
        bind=bind,
        port=plan.sentinel_port,
        master=master,
        quorum=quorum,
        dir=plan.redis_dir,
        tls=tls,
    )
    digest = hashlib.sha256(text.encode()).hexdigest()
    rendered = f"{plan.etc}/sentinel.rendered"  # the digest of what it was last given
    if read(c, rendered).strip() != digest:
        run(c, f"install -d -o redis -g redis -m 750 {plan.redis_dir}")
        put_if_changed(c, f"{plan.redis_dir}/sentinel.conf", text, mode="640", owner="redis:redis")
        put_if_changed(c, rendered, digest + "\n", mode="600")
        changed = True
    unit = config_files.render("systemd/beagle-sentinel.service.j2", redis_dir=plan.redis_dir)
    changed |= put_if_changed(c, "/etc/systemd/system/beagle-sentinel.service", unit)
    return keep_running(c, plan, ["beagle-sentinel"], changed)


def _certificate(
    c: Connection, plan: Plan, certificate: Issued | None
) -> tuple[config_files.RedisTLS | None, bool]:
    """The host's Redis certificate and key installed (several hosts), or None."""
    if certificate is None:
        return None, False
    tls = config_files.RedisTLS(
        certificate=f"{plan.tls_dir}/redis.pem",
        key=f"{plan.tls_dir}/redis.key",
        ca=plan.redis_ca,
    )
    changed = put_if_changed(c, tls.certificate, certificate.certificate)
    changed |= put_if_changed(c, tls.key, certificate.key, mode="640", owner="root:redis")
    return tls, changed


def firewall(c: Connection, plan: Plan, peers: list[str], sentinels: bool) -> list[str]:
    """Redis's port (and Sentinel's) open to the deployment's hosts (``peers``) and
    loopback only, from an nftables table of Beagle's own, loaded at boot by
    beagle-firewall.service."""
    ports = [plan.redis_port] + [plan.sentinel_port] * sentinels
    rules = config_files.render(
        "provisioning/firewall.nft.j2",
        ports=ports,
        peers4=[p for p in peers if ":" not in p],
        peers6=[p for p in peers if ":" in p],
    )
    changed = put_if_changed(c, f"{plan.etc}/firewall.nft", rules, mode="600")
    unit = config_files.render("systemd/beagle-firewall.service.j2", etc=plan.etc)
    changed |= put_if_changed(c, "/etc/systemd/system/beagle-firewall.service", unit)
    if changed:
        run(c, f"nft -f {plan.etc}/firewall.nft")  # now, not only at the next boot
    run(c, f"{plan.systemctl} daemon-reload && {plan.systemctl} enable -q beagle-firewall")
    opened = " and ".join(map(str, ports))
    return [f"firewall: Redis's port {opened} open to {', '.join(peers)}"] * changed


def _stop_debian_redis(c: Connection, plan: Plan) -> list[str]:
    changes = []
    for unit, port in DEBIAN_UNITS.items():
        if read(c, plan.debian_note(unit)).strip() != "stop":
            continue
        active, enabled = unit_is(c, plan, "active", unit), unit_is(c, plan, "enabled", unit)
        if not (active or enabled):
            continue
        command = f"{plan.systemctl} disable -q {unit}"
        run(c, command + (f" && {plan.systemctl} stop {unit}" if active else ""))
        changes.append(
            f"{'stopped and ' if active else ''}disabled Debian's {unit} (port {port}, "
            "no password), which its package starts on install"
        )
    return changes
