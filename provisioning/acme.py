"""A certificate from an ACME CA through Apache's mod_md, on a web host.

mod_md, once Apache runs with ``MDomain``, orders the certificate by itself (answering the
CA's http-01 challenge on port 80), serves a temporary self-signed one meanwhile, and
leaves the new one in its store's staging folder, to be used from the next graceful
restart (it says so in /var/log/apache2/error.log, AH10059). `activate` waits for that
and restarts Apache gracefully, then checks the certificate Apache serves is the CA's.
Renewals follow the same path: mod_md renews a third of the lifetime before the end, and
Debian's daily logrotate, which restarts Apache gracefully, puts the renewed one to use.
"""

import shlex
from collections.abc import Callable

from fabric import Connection
from invoke.exceptions import Exit

from provisioning.edge import Edge
from provisioning.plan import Plan
from provisioning.remote import exists, run

STORE = "/etc/apache2/md"  # mod_md's store under Debian's ServerRoot
WAIT_S = 180


def served_issuer(c: Connection, plan: Plan, domain: str) -> tuple[str, str]:
    """(subject, issuer) of the certificate Apache serves for ``domain``."""
    shown = run(
        c,
        f"echo | openssl s_client -connect 127.0.0.1:{plan.https_port} "
        f"-servername {shlex.quote(domain)} 2>/dev/null | openssl x509 -noout -subject -issuer",
        warn=True,
    ).stdout
    lines = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    return lines.get("subject", "").strip(), lines.get("issuer", "").strip()


def activate(c: Connection, plan: Plan, edge: Edge, reload: Callable[[], str]) -> list[str]:
    """Wait until the CA's certificate for the first domain is served, calling ``reload``
    (a graceful restart, which says how it went) once mod_md has it; what changed."""
    domain = edge.domains[0]
    reloaded = ""
    for _ in range(WAIT_S):
        subject, issuer = served_issuer(c, plan, domain)
        if issuer and subject != issuer:  # not mod_md's self-signed stand-in
            return [reloaded, f"HTTPS certificate for {domain} from {issuer}"] if reloaded else []
        if not reloaded and exists(c, f"{STORE}/staging/{domain}/pubcert.pem"):
            reloaded = reload()
        run(c, "sleep 1")
    raise Exit(
        f"{c.host}: mod_md got no certificate for {domain} from {edge.ca} within {WAIT_S}s: "
        f"see /var/log/apache2/error.log and `curl http://127.0.0.1:{plan.port}/md-status` "
        "on the host (the CA must reach it on port 80 under that name)"
    )
