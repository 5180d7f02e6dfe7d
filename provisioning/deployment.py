"""A deployment as fab's tasks see it: its hosts with their roles, reached with their SSH
host keys checked (provisioning/host_keys.py), and what every host must agree on: where
Redis listens and whether it speaks TLS, each role's Redis URL, the settings of the env
file. Deployments that would be unsafe stop here, before any host is touched.

With -H, every host gets every role: Redis, workers, Apache. To scale out, name the roles
in a Fabric config file (fab -f cluster.yaml deploy):

    beagle:
      roles: {redis: [10.0.0.5], worker: [gpu1, gpu2], web: [web1, web2]}
      redis_address: 10.0.0.5        # the private address the others reach Redis on

Redis is reached on loopback on one host; across hosts, on the private address, over TLS
with the deployment's own CA (provisioning/pki.py), its port open to the deployment's
hosts only.
"""

import ipaddress
import re
from dataclasses import dataclass

from fabric import Connection
from invoke import Context
from invoke.exceptions import Exit

from app import config
from app.config import Settings
from app.redis_connection import redis_url
from provisioning import credentials, host_keys
from provisioning.edge import Edge, check_exposure
from provisioning.plan import Plan
from provisioning.redis_users import CLIENTS
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


def targets(c: Context, plan: Plan) -> list[tuple[Connection, set[str]]]:
    """[(connection, roles)]: the -H host with every role, or the hosts of beagle.roles,
    Redis hosts first, then workers, then web hosts; each connected, its host key
    checked."""
    if isinstance(c, Connection):
        return [(host_keys.check(c, plan.known_hosts, plan.host_keys), set(ROLES))]
    roles = plan.roles
    if not roles:
        raise Exit("name hosts with -H, or roles in a Fabric config file (beagle.roles)")
    order: list[str] = []
    for role in ROLES:
        for name in roles.get(role, []):
            if name not in order:
                order.append(name)
    return [
        (
            host_keys.check(Connection(name, config=c.config), plan.known_hosts, plan.host_keys),
            {r for r in ROLES if name in roles.get(r, [])},
        )
        for name in order
    ]


@dataclass(frozen=True)
class Cluster:
    """The plan; the hosts with their roles; where the Redis master listens (with several
    Redis hosts, the one the Sentinels name now), every Redis host's address, and whether
    clients reach Redis over TLS; every Redis role's password (provisioning/credentials.py);
    the addresses the deployment's hosts reach Redis from (its firewall admits only those);
    the settings every host's env file gets; HTTPS at the edge (provisioning/edge.py); and
    {Redis host's name: its address}."""

    plan: Plan
    hosts: list[tuple[Connection, set[str]]]
    redis_address: str
    redis_addresses: list[str]
    redis_tls: bool
    passwords: dict[str, str]
    peers: list[str]
    settings: Settings
    edge: Edge
    address_of: dict[str, str]

    def url(self, role: str) -> str:
        """The Redis URL processes of ``role`` (web, worker, admin) log in with."""
        ca = self.plan.redis_ca if self.redis_tls else ""
        password = self.passwords[role]
        return redis_url(role, password, self.redis_address, self.plan.redis_port, tls_ca=ca)

    def urls(self) -> dict[str, str]:
        return {role: self.url(role) for role in CLIENTS}


def cluster(c: Context) -> Cluster:
    plan = Plan.from_config(c.config)
    try:
        deployed = config.load(
            {},
            host=plan.listen,
            port=plan.port,
            model_repository=f"{plan.prefix}/models",
            drain_file=plan.drain_file,
            **plan.settings,
        )
    except (KeyError, ValueError) as exc:
        raise Exit(f"beagle.settings: {exc}") from None
    edge = Edge.from_plan(plan)
    check_exposure(plan, edge, deployed.api_keys)
    hosts = targets(c, plan)
    redis_hosts = [conn for conn, roles in hosts if "redis" in roles]
    if len(redis_hosts) == 1:
        addresses = [redis_address(plan, len(hosts))]
        master = addresses[0]
    elif len(redis_hosts) >= 3:
        addresses = redis_addresses(plan, len(redis_hosts))
        master = current_master(redis_hosts, plan) or addresses[0]
        sentinels = ",".join(f"{a}:{plan.sentinel_port}" for a in addresses)
        deployed = config.replace(deployed, redis_sentinels=sentinels)
    else:
        raise Exit(
            f"{len(redis_hosts)} hosts have the redis role: name one, or three or more (a "
            "majority of their Sentinels must agree before a replica replaces the master)"
        )
    tls = not ipaddress.ip_address(master).is_loopback
    peers = sorted({source_address(conn, master) for conn, _ in hosts}) if tls else []
    passwords = credentials.find(hosts, plan)
    return Cluster(
        plan,
        hosts,
        master,
        addresses,
        tls,
        passwords,
        peers,
        deployed,
        edge,
        dict(zip([conn.host for conn in redis_hosts], addresses, strict=True)),
    )


def redis_addresses(plan: Plan, count: int) -> list[str]:
    """The private addresses of the ``count`` Redis hosts, in beagle.roles.redis's order."""
    given = [str(address) for address in plan.redis_addresses]
    if len(given) != count:
        raise Exit(
            f"{count} Redis hosts: set beagle.redis_addresses to the private address of each, "
            f"in the order of beagle.roles.redis (it lists {len(given)})"
        )
    return [private_address(address) for address in given]


def current_master(redis_hosts: list[Connection], plan: Plan) -> str | None:
    """The master's address as the Sentinels see it now (after a failover, not the first
    host's), or None before the first deploy."""
    command = plan.with_env(plan.python("scripts.redis_ha master"), role="admin")
    for conn in redis_hosts:
        found = run(conn, command, warn=True).stdout.split()
        if len(found) == 1:
            return found[0].rpartition(":")[0].strip("[]")
    return None


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
    return private_address(given, allow_loopback=host_count == 1)


def private_address(given: str, allow_loopback: bool = False) -> str:
    """``given``, if it is an IP address on a private network, else stop."""
    try:
        address = ipaddress.ip_address(given)
    except ValueError:
        raise Exit(
            f"Redis's address {given!r} must be an IP address on a private network"
        ) from None
    if not any(address in network for network in PRIVATE_NETWORKS) and not (
        address.is_loopback and allow_loopback
    ):
        raise Exit(
            f"Redis's address {given} is not a private address the other hosts "
            "can reach: Redis must never listen on a public network (use one in "
            f"{', '.join(map(str, PRIVATE_NETWORKS))})"
        )
    return given


def source_address(c: Connection, address: str) -> str:
    """The address the host ``c`` reaches ``address`` from."""
    route = run(c, f"ip -o route get {address}").stdout
    found = re.search(r"\bsrc (\S+)", route)
    if found is None:
        raise Exit(f"{c.host}: no route to the Redis address {address}: {route.strip()}")
    return found.group(1)
