"""HTTPS at the edge: the ``tls`` part of the plan, and what a deployment must not expose.

    tls: {mode: acme, domains: [beagle.example.com], email: ops@example.com}
    tls: {mode: certificate, certificate: ~/certs/beagle.pem, key: ~/certs/beagle.key}
    tls: {mode: off, behind_proxy: true}      # a TLS-terminating load balancer in front
    (no tls at all, listen: 127.0.0.1)        # plain HTTP on loopback only

acme: Apache's own mod_md obtains the certificate for ``domains`` from ``ca`` (Let's
Encrypt by default; ``ca_certificate``, a file here, when the CA's own HTTPS is signed by
a CA the hosts do not trust, as a test CA's is) and renews it: no certbot, no cron.
certificate: the operator's certificate (chain) and key, uploaded like other secrets (the
key mode 600, root's). Either way port ``port`` (80) answers only a redirect to
``https_port`` (443), which follows Mozilla's intermediate guideline
(apache/beagle.conf.j2).

Closed by default: plain HTTP only on loopback or behind a proxy that terminates TLS, and
an Apache listening beyond loopback needs api_keys, or ``open_api: true`` said out loud.
"""

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invoke.exceptions import Exit

from provisioning.plan import Plan

MODES = ("off", "certificate", "acme")
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
KEYS = ("mode", "behind_proxy", "certificate", "key", "domains", "email", "ca", "ca_certificate")


@dataclass(frozen=True)
class Edge:
    mode: str = "off"
    behind_proxy: bool = False
    certificate: str = ""  # certificate mode: files on the operator's machine
    key: str = ""
    domains: tuple[str, ...] = ()  # acme: the names to certify (the first is ServerName)
    email: str = ""
    ca: str = LETS_ENCRYPT
    ca_certificate: str = ""

    @classmethod
    def from_plan(cls, plan: Plan) -> "Edge":
        given: dict[str, Any] = dict(plan.tls or {})
        unknown = set(given) - set(KEYS)
        if unknown:
            raise Exit(
                f"beagle.tls: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(KEYS)})"
            )
        domains = given.get("domains") or ()
        edge = cls(
            mode=str(given.get("mode") or "off"),
            behind_proxy=bool(given.get("behind_proxy", False)),
            certificate=str(given.get("certificate") or ""),
            key=str(given.get("key") or ""),
            domains=tuple([domains] if isinstance(domains, str) else domains),
            email=str(given.get("email") or ""),
            ca=str(given.get("ca") or LETS_ENCRYPT),
            ca_certificate=str(given.get("ca_certificate") or ""),
        )
        edge.validate()
        return edge

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def validate(self) -> None:
        if self.mode not in MODES:
            raise Exit(f"beagle.tls.mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mode == "acme" and not (self.domains and self.email):
            raise Exit(
                "beagle.tls.mode acme needs domains (the names to certify, which must "
                "reach this host on port 80) and email (the CA's contact)"
            )
        if self.mode == "certificate":
            for name, path in (("certificate", self.certificate), ("key", self.key)):
                if not path or not Path(path).expanduser().is_file():
                    raise Exit(f"beagle.tls.{name}: no such file {path!r} on this machine")

    def local(self, path: str) -> bytes:
        """A file of the operator's that this part of the plan names."""
        return Path(path).expanduser().read_bytes()


def loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # "*" or a name: beyond loopback


def check_exposure(plan: Plan, edge: Edge, api_keys: tuple[str, ...]) -> None:
    """Stop a deployment that would serve plain HTTP to a network, or an open API,
    unless the operator said so."""
    if loopback(plan.listen):
        return
    if not edge.on and not edge.behind_proxy:
        raise Exit(
            f"Apache would serve plain HTTP on {plan.listen}: API keys and images would "
            "travel in clear. Set beagle.tls (mode: acme with domains and email, or "
            "mode: certificate with certificate and key), or, if a load balancer in front "
            "terminates TLS, beagle.tls: {behind_proxy: true}; or listen: 127.0.0.1"
        )
    if not api_keys and not plan.open_api:
        raise Exit(
            f"Apache listens on {plan.listen} and no API keys are set: anyone could use "
            "the API. Set beagle.settings.api_keys (`fab new-api-key` prints one), or "
            "beagle.open_api: true to serve it open on purpose"
        )
