"""The Redis passwords of a deployment, one per role (provisioning/redis_users.py), and
where each is kept: on the hosts of its role only, never on the operator's machine.

    <etc>/web.env      web hosts      BEAGLE_REDIS_URL as the web user (Apache reads it)
    <etc>/worker.env   worker hosts   BEAGLE_REDIS_URL as the worker user (the units read it)
    <etc>/admin.env    Redis hosts    BEAGLE_REDIS_URL as the admin user (operators' tools)
    <etc>/redis-users.env  Redis hosts  the replica and sentinel users' passwords

A password is generated on the first deploy and read back from its hosts on the next, so
a web host never holds the worker's or the admin's password. The Redis hosts' redis.conf
holds each user's password as a SHA-256 hash.
"""

import secrets
from collections.abc import Iterable

from fabric import Connection

from app import config
from app.redis_connection import url_password
from provisioning import envfile
from provisioning.plan import Plan
from provisioning.redis_users import ROLES
from provisioning.remote import put_if_changed, read, run

HOLDERS = {
    "web": "web",
    "worker": "worker",
    "admin": "redis",
    "replica": "redis",
    "sentinel": "redis",
}  # Redis role -> the host role that keeps its password
URL_VARIABLE = config.BY_NAME["redis_url"].env_var
SERVER_FILE = "redis-users.env"  # on Redis hosts: the users Redis itself logs in as
SERVER_ROLES = ("replica", "sentinel")


def find(hosts: Iterable[tuple[Connection, set[str]]], plan: Plan) -> dict[str, str]:
    """{Redis role: password}: each read from the first host of its holder role that keeps
    it, else new."""
    found: dict[str, str] = {}
    for conn, roles in hosts:
        for role in ROLES:
            if role not in found and HOLDERS[role] in roles:
                password = _read(conn, plan, role)
                if password:
                    found[role] = password
    return {role: found.get(role) or secrets.token_urlsafe(24) for role in ROLES}


def install(
    c: Connection, plan: Plan, roles: set[str], urls: dict[str, str], passwords: dict[str, str]
) -> list[str]:
    """Write the credentials files the host's ``roles`` hold: each client role's URL, and
    on Redis hosts the server roles' passwords; True per changed file."""
    changes = []
    run(c, f"install -d -m 755 {plan.etc}")
    for role, url in urls.items():
        if HOLDERS[role] in roles:
            text = envfile.render({URL_VARIABLE: url})
            if put_if_changed(c, plan.role_env(role), text, mode="600"):
                changes.append(f"{role} credentials written")
    if "redis" in roles:
        text = envfile.render({f"{r.upper()}_PASSWORD": passwords[r] for r in SERVER_ROLES})
        if put_if_changed(c, f"{plan.etc}/{SERVER_FILE}", text, mode="600"):
            changes.append("Redis's own credentials written")
    return changes


def _read(c: Connection, plan: Plan, role: str) -> str | None:
    if role in SERVER_ROLES:
        text = read(c, f"{plan.etc}/{SERVER_FILE}")
        return envfile.parse(text).get(f"{role.upper()}_PASSWORD") if text else None
    text = read(c, plan.role_env(role))
    url = envfile.parse(text).get(URL_VARIABLE) if text else None
    return url_password(url) if url else None
