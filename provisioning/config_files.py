"""Render Beagle's configuration files from the Jinja2 templates in apache/,
provisioning/ (and systemd/): the same templates for production, `make run` and tests."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from app.config import PROJECT_ROOT, Settings, body_limit, web_processes
from app.keys import Keys
from provisioning import redis_users

APACHE_MODULES = (
    "mpm_event",
    "authz_core",
    "authz_host",
    "alias",
    "mime",
    "headers",
    "reqtimeout",
    "status",
    "wsgi",
)
ERROR_STATUSES = (400, 403, 404, 405, 408, 413, 500, 502, 503, 504)
REQUEST_GRACE_S = 5
# Apache's environment, hence the mod_wsgi daemon's. glibc normally raises its mmap
# threshold after a large buffer is freed, so the next decoded image comes from a thread's
# heap arena and stays resident after it is freed too. Fixed at 1 MB, every decoded photo
# is mmapped and handed back on free, while a model's input pixels (under 1 MB up to
# 512x512x3) come from the heap. Fixing it also fixes the trim threshold at 128 KB, which
# would hand each request's buffers back to the kernel and fault them in again: 2 MB keeps
# them. docs/performance.md has what each saved.
WEB_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "2097152"}
# mod_reqtimeout: seconds for a request's headers, seconds before its body must flow, and
# the slowest flow then (bytes/s): a phone uploading a photo sends tens of KB/s.
HEADER_TIMEOUT_S, BODY_TIMEOUT_S, MIN_RATE = 5, 5, 500

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(PROJECT_ROOT)),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render(template: str, **context: Any) -> str:
    """Render ``template`` (a path under the project root) with ``context``."""
    return _templates.get_template(template).render(**context)


@dataclass(frozen=True)
class Acme:
    """mod_md's part of the vhost: the names, the contact, the CA and, on the host, a CA
    certificate to trust the CA's own HTTPS with; MDPortMap when Apache's ports are not
    80 and 443."""

    domains: tuple[str, ...]
    email: str
    ca: str
    ca_file: str = ""
    port_map: str = ""


@dataclass(frozen=True)
class VhostTLS:
    """HTTPS on ``port`` (Listen added when ``listen``); the redirect's ":port" suffix; the
    certificate and key files on the host, or mod_md's ``acme``."""

    port: int
    listen: bool
    redirect_port: str = ""
    certificate: str = ""
    key: str = ""
    acme: Acme | None = None


def apache_vhost(
    settings: Settings,
    code_dir: str | Path,
    venv: str | Path,
    log_dir: str | Path,
    listen: bool = True,
    log_name: str = "",
    process_group: str = "beagle",
    user: str = "www-data",
    group: str = "www-data",
    server_name: str | None = None,
    cores: int | None = None,
    tls: VhostTLS | None = None,
) -> str:
    """The virtual host. ``user`` is the daemon user; it only applies when Apache starts
    as root, so it is dropped otherwise. ``cores``: the web host's (default this one's),
    for web_processes 0. With ``tls``, HTTP redirects to HTTPS."""
    if os.geteuid() != 0:
        user = group = ""
    return render(
        "apache/beagle.conf.j2",
        listen=listen,
        tls=tls,
        host=settings.host,
        port=settings.port,
        server_name=server_name or settings.host,
        process_group=process_group,
        processes=web_processes(settings.web_processes, cores),
        threads=settings.web_threads,
        user=user,
        group=group,
        venv=venv,
        code_dir=code_dir,
        request_timeout=int(settings.request_timeout + 0.999),
        request_grace=REQUEST_GRACE_S,
        body_limit=body_limit(settings),
        error_statuses=ERROR_STATUSES,
        header_timeout=HEADER_TIMEOUT_S,
        body_timeout=BODY_TIMEOUT_S,
        min_rate=MIN_RATE,
        log_dir=log_dir,
        log_name=log_name,
    )


def apache_standalone(
    settings: Settings,
    run_dir: str | Path,
    vhost: str | Path,
    log_dir: str | Path,
    user: str = "www-data",
    group: str = "www-data",
) -> str:
    """A whole server around ``vhost`` that needs nothing from /etc/apache2."""
    if os.geteuid() != 0:
        user = group = ""
    return render(
        "apache/standalone.conf.j2",
        run_dir=run_dir,
        vhost=vhost,
        log_dir=log_dir,
        server_name=settings.host,
        modules=APACHE_MODULES,
        user=user,
        group=group,
    )


def apache_environment(etc: str) -> str:
    """The systemd drop-in that gives Debian's apache2.service Beagle's environment."""
    return render("systemd/apache2-beagle.conf.j2", etc=etc, environment=WEB_ENVIRONMENT)


def logrotate_calendar(turn: int) -> str:
    """When the ``turn``-th web host (from 0) rotates its logs: ``turn`` o'clock UTC,
    wrapping after 23."""
    return f"*-*-* {turn % 24:02d}:00:00 UTC"


def logrotate_timer(turn: int) -> str:
    """The drop-in that moves Debian's daily logrotate on the ``turn``-th web host to an
    hour of its own."""
    return render("systemd/logrotate-beagle.conf.j2", calendar=logrotate_calendar(turn))


# A master is down for a Sentinel once it has not answered for this long: twice the
# workers' heartbeat, so a lost packet is not a failover, short enough that serving resumes
# within seconds. A failover that stalls is given up and tried again after this.
SENTINEL_DOWN_AFTER_MS = 2000
SENTINEL_FAILOVER_TIMEOUT_MS = 10000


@dataclass(frozen=True)
class RedisTLS:
    """Where Redis finds its certificate, its key and the CA's certificate."""

    certificate: str
    key: str
    ca: str


def redis_conf(
    passwords: dict[str, str],
    key_prefix: str = "beagle",
    bind: str = "127.0.0.1",
    port: int = 6379,
    maxmemory: str = "1gb",
    dir: str | Path = "/var/lib/redis",
    tls: RedisTLS | None = None,
    master: str = "",
    replicated: bool = False,
    min_replicas: int = 0,
) -> str:
    """Redis for Beagle: loopback or a private address (then TLS only, with ``tls``), one
    user per role in ``passwords`` ({role: password}; provisioning/redis_users.py), the
    default user off, never evicting. ``replicated``: one of several, each logging in to
    its master as the replica user; with ``master`` (host:port), a replica of it now;
    ``min_replicas``: a master accepts writes only while that many
    replicas are in step."""
    keys = Keys(key_prefix)
    users = [redis_users.acl_line(role, password, keys) for role, password in passwords.items()]
    return render(
        "provisioning/redis.conf.j2",
        bind=bind,
        port=port,
        users=users,
        tls=tls,
        maxmemory=maxmemory,
        dir=dir,
        master=master.replace(":", " ", 1) if master else "",
        replicated=replicated or bool(master),
        replica_password=passwords.get("replica", ""),
        min_replicas=min_replicas,
    )


def sentinel_conf(
    passwords: dict[str, str],
    bind: str,
    port: int,
    master: str,
    quorum: int,
    dir: str | Path,
    tls: RedisTLS | None = None,
    master_name: str = "beagle",
) -> str:
    """Redis Sentinel for Beagle's master (host:port), with ``quorum`` Sentinels to agree it
    is down; users of the same names and passwords as Redis's."""
    users = [redis_users.sentinel_acl_line(r, p) for r, p in passwords.items()]
    return render(
        "provisioning/sentinel.conf.j2",
        bind=bind,
        port=port,
        tls=tls,
        dir=dir,
        users=users,
        master_name=master_name,
        master=master.replace(":", " ", 1),
        quorum=quorum,
        sentinel_password=passwords["sentinel"],
        down_after_ms=SENTINEL_DOWN_AFTER_MS,
        failover_timeout_ms=SENTINEL_FAILOVER_TIMEOUT_MS,
    )
