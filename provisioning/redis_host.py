"""The redis role's steps on a host: Beagle's own Redis (provisioning/redis.conf.j2, a user
per role, on port ``redis_port``) as beagle-redis.service, and Debian's own redis-server
(port 6379, no password), which its package starts on install, stopped and disabled unless
it ran before Beagle's first deploy."""

import re

from fabric import Connection
from invoke.exceptions import Exit

from app.redis_connection import version_problem
from provisioning import config_files
from provisioning.pki import Issued
from provisioning.plan import Plan
from provisioning.remote import exists, put_if_changed, read, run
from provisioning.services import keep_running, unit_is

DEBIAN_REDIS = "redis-server"  # Debian's own unit: port 6379, no password


def note_debian_redis(c: Connection, plan: Plan) -> list[str]:
    """Before the first deploy installs redis-server (whose package starts Debian's own
    Redis on 6379 with no password), note whether that one was running: only then is it
    left running."""
    if exists(c, plan.debian_redis_note):
        return []
    running = unit_is(c, plan, "active", DEBIAN_REDIS)
    run(
        c,
        f"install -d -m 755 {plan.etc} && echo {'keep' if running else 'stop'} "
        f"> {plan.debian_redis_note}",
    )
    return (
        ["Debian's redis-server was running before Beagle's first deploy: left running"]
        if running
        else []
    )


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
) -> list[str]:
    """Beagle's Redis with a user per role in ``passwords``; with ``certificate`` (several
    hosts), TLS only, with that certificate and the deployment's CA."""
    problem = redis_server_problem(run(c, "redis-server --version").stdout)
    if problem:
        raise Exit(f"{c.host}: {problem}")
    tls = None
    changed = False
    if certificate:
        tls = config_files.RedisTLS(
            certificate=f"{plan.tls_dir}/redis.pem",
            key=f"{plan.tls_dir}/redis.key",
            ca=plan.redis_ca,
        )
        changed |= put_if_changed(c, tls.certificate, certificate.certificate)
        changed |= put_if_changed(c, tls.key, certificate.key, mode="640", owner="root:redis")
    config = config_files.redis_conf(
        passwords,
        key_prefix=key_prefix,
        bind=bind,
        port=plan.redis_port,
        dir=plan.redis_dir,
        tls=tls,
    )
    run(c, f"install -d -o redis -g redis -m 750 {plan.redis_dir}")
    changed |= put_if_changed(c, f"{plan.etc}/redis.conf", config, mode="640", owner="root:redis")
    unit = config_files.render(
        "systemd/beagle-redis.service.j2", etc=plan.etc, redis_dir=plan.redis_dir
    )
    changed |= put_if_changed(c, "/etc/systemd/system/beagle-redis.service", unit)
    return _stop_debian_redis(c, plan) + keep_running(c, plan, ["beagle-redis"], changed)


def firewall(c: Connection, plan: Plan, peers: list[str]) -> list[str]:
    """Redis's port open to the deployment's hosts (``peers``) and loopback only, from an
    nftables table of Beagle's own, loaded at boot by beagle-firewall.service."""
    rules = config_files.render(
        "provisioning/firewall.nft.j2",
        ports=[plan.redis_port],
        peers4=[p for p in peers if ":" not in p],
        peers6=[p for p in peers if ":" in p],
    )
    changed = put_if_changed(c, f"{plan.etc}/firewall.nft", rules, mode="600")
    unit = config_files.render("systemd/beagle-firewall.service.j2", etc=plan.etc)
    changed |= put_if_changed(c, "/etc/systemd/system/beagle-firewall.service", unit)
    if changed:
        run(c, f"nft -f {plan.etc}/firewall.nft")  # now, not only at the next boot
    run(c, f"{plan.systemctl} daemon-reload && {plan.systemctl} enable -q beagle-firewall")
    return [f"firewall: Redis's port {plan.redis_port} open to {', '.join(peers)}"] * changed


def _stop_debian_redis(c: Connection, plan: Plan) -> list[str]:
    if read(c, plan.debian_redis_note).strip() != "stop":
        return []
    active, enabled = (
        unit_is(c, plan, "active", DEBIAN_REDIS),
        unit_is(c, plan, "enabled", DEBIAN_REDIS),
    )
    if not (active or enabled):
        return []
    run(
        c,
        f"{plan.systemctl} disable -q {DEBIAN_REDIS}"
        + (f" && {plan.systemctl} stop {DEBIAN_REDIS}" if active else ""),
    )
    return [
        f"{'stopped and ' if active else ''}disabled Debian's {DEBIAN_REDIS} (port 6379, "
        "no password), which its package starts on install"
    ]
