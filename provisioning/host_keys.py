"""SSH host keys, checked against the operator's known_hosts before anything is sent.

Fabric on its own accepts any key (paramiko's AutoAddPolicy) and reads no known_hosts,
so whoever sits between the operator and a host on first contact would receive the env
file, the Redis passwords, the API keys and any sudo password. Here every connection
loads ``beagle.known_hosts`` (``~/.ssh/known_hosts``) and, by ``beagle.host_keys``:

    strict      (the default) an unknown key stops the task, naming the host and the key's
                fingerprint, so the operator can compare it and add it (ssh-keyscan, or
                one ssh login that asks)
    accept-new  an unknown key is recorded in known_hosts on first contact, like ssh's
                StrictHostKeyChecking=accept-new

A key that differs from the one known_hosts holds always stops the task.
"""

import base64
import hashlib
from pathlib import Path

import paramiko
from fabric import Connection
from invoke.exceptions import Exit

POLICIES = ("strict", "accept-new")


def fingerprint(key: paramiko.PKey) -> str:
    """SHA256:<base64>, as ssh-keygen -l prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class UnknownHost(Exception):
    pass


class RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise UnknownHost(
            f"{hostname}: unknown SSH host key {key.get_name()} {fingerprint(key)}, not in "
            f"{self.known_hosts}. Compare it with the host's own (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_{key.get_name().removeprefix('ssh-')}_key.pub on its console), "
            "then add it (ssh-keyscan, or one ssh login), or set beagle.host_keys: accept-new "
            "to record keys on first contact"
        )


def check(conn: Connection, known_hosts: str, policy: str) -> Connection:
    """Make ``conn`` check host keys against ``known_hosts`` under ``policy``, and connect
    now, so that a refusal comes before any command with a clear message."""
    if policy not in POLICIES:
        raise Exit(f"beagle.host_keys must be one of {', '.join(POLICIES)}, not {policy!r}")
    path = Path(known_hosts).expanduser()
    if policy == "accept-new":
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
    if path.exists():
        conn.client.load_host_keys(str(path))
    if policy == "accept-new":
        conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # saves to path
    else:
        conn.client.set_missing_host_key_policy(RefuseUnknown(path))
    try:
        conn.open()
    except UnknownHost as exc:
        raise Exit(str(exc)) from None
    except paramiko.BadHostKeyException as exc:
        name = conn.host if conn.port == 22 else f"[{conn.host}]:{conn.port}"
        raise Exit(
            f"{name}: its SSH host key CHANGED: it offers {exc.key.get_name()} "
            f"{fingerprint(exc.key)}, {path} holds {fingerprint(exc.expected_key)}. Someone "
            "may be intercepting the connection; if the host was reinstalled, check the new "
            f"key and remove the old one (ssh-keygen -R '{name}' -f {path})"
        ) from None
    return conn
