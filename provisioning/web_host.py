"""The web role's steps on a host: Apache's modules, Beagle's virtual host
(apache/beagle.conf.j2) and Apache's environment, reloaded gracefully on change; the web
code reloaded alone for a new release; and the smoke request through Apache."""

import json
import time

from fabric import Connection
from invoke.exceptions import Exit

from app import config
from app.config import Settings
from provisioning import acme, config_files
from provisioning.config_files import REQUEST_GRACE_S
from provisioning.edge import Edge
from provisioning.plan import Plan
from provisioning.remote import exists, put_if_changed, run
from provisioning.services import unit_is

READY_S = 60  # Apache started or restarted, its daemons loading the app

APACHE_MODULES = ("wsgi", "headers", "alias", "mime", "reqtimeout", "status")
TLS_MODULES = ("ssl", "rewrite")
SAMPLE = "stress/images/digit_7.png"


def apache(
    c: Connection, plan: Plan, settings: Settings, edge: Edge, release_changed: bool
) -> list[str]:
    changes = []
    wanted = (
        APACHE_MODULES + (TLS_MODULES if edge.on else ()) + (("md",) if edge.mode == "acme" else ())
    )
    enabled = run(c, "ls /etc/apache2/mods-enabled").stdout.split()
    missing = [m for m in wanted if f"{m}.load" not in enabled]
    if missing:
        run(c, f"a2enmod -q {' '.join(missing)}")
        changes.append(f"enabled modules {', '.join(missing)}")
    if edge.mode == "acme":  # writable in Apache's sandbox only if it exists
        run(c, f"install -d -m 755 {acme.STORE}")
    tls, files_changed = _tls(c, plan, edge)
    vhost = config_files.apache_vhost(
        settings,
        code_dir=plan.current,
        venv=f"{plan.current}/venv",
        log_dir="/var/log/apache2",
        listen=plan.port != 80,
        log_name="beagle_",
        server_name=edge.domains[0] if edge.domains else c.host,
        cores=int(run(c, "nproc").stdout),
        tls=tls,
    )
    config = put_if_changed(c, "/etc/apache2/sites-available/beagle.conf", vhost) or files_changed
    environment = put_if_changed(
        c,
        "/etc/systemd/system/apache2.service.d/beagle.conf",
        config_files.apache_environment(plan.etc),
    )
    if not exists(c, "/etc/apache2/sites-enabled/beagle.conf"):
        run(c, "a2ensite -q beagle")
        config = True
    if plan.port == 80 and exists(c, "/etc/apache2/sites-enabled/000-default.conf"):
        run(c, "a2dissite -q 000-default")
        config = True
    run(c, "apache2ctl configtest")
    if environment:
        changes.append("Apache's environment changed")
    if config:
        changes.append("Apache configuration changed")
    active = unit_is(c, plan, "active", "apache2")
    if environment or not active:  # a new environment needs a new parent process
        run(
            c,
            f"{plan.systemctl} daemon-reload; {plan.systemctl} enable apache2 -q; "
            f"{plan.systemctl} restart apache2",
        )
        # one that was in a load balancer's rotation is given the time to be seen again
        said = (
            _back_in_service(c, plan, edge) if active else _until_answers(c, plan, edge, "/healthz")
        )
        changes.append(f"Apache restarted, {said}")
    elif config:
        changes.append(_reload_gracefully(c, plan, edge))
    elif release_changed:
        changes.append(reload_web_code(c, plan))
    if edge.mode == "acme":
        changes += acme.activate(c, plan, edge, lambda: _reload_gracefully(c, plan, edge))
    return changes


def logrotate(c: Connection, plan: Plan, edge: Edge, turn: int) -> list[str]:
    """Debian's daily logrotate, which reloads Apache, at this web host's own hour."""
    drop_in = "/etc/systemd/system/logrotate.timer.d/beagle.conf"
    run(c, "install -d -m 755 /etc/systemd/system/logrotate.timer.d")
    if not put_if_changed(c, drop_in, config_files.logrotate_timer(turn)):
        return []
    before = _generation(c, plan, edge)
    run(c, f"{plan.systemctl} daemon-reload")
    # systemd runs a timer whose new time has already passed since its last run at once:
    # logrotate may be reloading Apache now, and the next host waits until it serves again.
    active = f"{plan.systemctl} is-active logrotate.service"
    run(
        c,
        f'for _ in $(seq {READY_S * 2}); do [ "$({active})" = activating ] || break; '
        "sleep 0.5; done",
        warn=True,
    )
    changes = [f"logrotate at {config_files.logrotate_calendar(turn)}"]
    if before and _generation(c, plan, edge) != before:
        changes.append(f"Apache reloaded by it, {_back_in_service(c, plan, edge, before)}")
    return changes


def _tls(c: Connection, plan: Plan, edge: Edge) -> tuple[config_files.VhostTLS | None, bool]:
    """The vhost's TLS part, its files installed on the host; True if a file changed."""
    if not edge.on:
        return None, False
    changed = False
    run(c, f"install -d -m 755 {plan.tls_dir}")
    certificate = key = ca_file = ""
    if edge.mode == "certificate":
        certificate, key = f"{plan.tls_dir}/edge.pem", f"{plan.tls_dir}/edge.key"
        changed |= put_if_changed(c, certificate, edge.local(edge.certificate))
        changed |= put_if_changed(c, key, edge.local(edge.key), mode="600")
    elif edge.ca_certificate:
        ca_file = f"{plan.tls_dir}/acme-ca.pem"
        changed |= put_if_changed(c, ca_file, edge.local(edge.ca_certificate))
    standard = plan.port == 80 and plan.https_port == 443
    tls = config_files.VhostTLS(
        port=plan.https_port,
        listen=plan.https_port != 443,
        redirect_port="" if plan.https_port == 443 else f":{plan.https_port}",
        certificate=certificate,
        key=key,
        acme=config_files.Acme(
            domains=edge.domains,
            email=edge.email,
            ca=edge.ca,
            ca_file=ca_file,
            port_map="" if standard else f"http:{plan.port} https:{plan.https_port}",
        )
        if edge.mode == "acme"
        else None,
    )
    return tls, changed


def reload_web_code(c: Connection, plan: Plan) -> str:
    # New code only: restart just the mod_wsgi daemon; Apache keeps its socket open, so
    # not a request fails (an Apache graceful restart would drop a few).
    run(c, f"touch {plan.current}/wsgi/beagle.wsgi")
    return "web code reloaded"


def local_url(plan: Plan, edge: Edge) -> str:
    """Apache as the host itself reaches it: over HTTPS when TLS is on (the redirect is
    all plain HTTP answers then). By address, naming no host in TLS: while mod_md has no
    certificate yet, mod_ssl refuses requests that name the domain (503), not these."""
    if edge.on:
        return f"https://127.0.0.1:{plan.https_port}"
    return f"http://127.0.0.1:{plan.port}"


def smoke(c: Connection, plan: Plan, edge: Edge, attempts: int = 30) -> str:
    """A request through Apache on the host itself, with the first API key when keys are
    on (read there from the env file and handed to curl on its stdin, never on a command
    line); the answer's top label. Over HTTPS, the certificate is not checked: this is
    the host's own loopback, and a certificate of the operator's may name another host."""
    key = config.BY_NAME["api_keys"].env_var
    insecure = "--insecure " if edge.on else ""
    command = plan.with_env(
        f'{{ [ -z "${key}" ] || printf \'Authorization: Bearer %s\\n\' "${{{key}%%,*}}"; }} | '
        f"curl -fsS {insecure}--max-time 20 -H @- -F image=@{plan.current}/{SAMPLE} "
        f"{local_url(plan, edge)}/predict"
    )
    for _ in range(attempts):
        result = run(c, command, warn=True)
        if result.ok:
            return json.loads(result.stdout)["predictions"][0]["label"]
        run(c, "sleep 1")
    raise Exit(f"{c.host}: the smoke request failed: {result.stderr.strip() or result.stdout}")


def drain(c: Connection, plan: Plan, edge: Edge, settings: Settings) -> list[str]:
    """Take the host out of service without failing a request: /readyz answers 503 (the
    load balancer stops sending within ``drain_seconds``), the requests in flight finish
    (Apache's own count, by their deadline at the latest), then Apache stops."""
    run(c, f"touch {plan.drain_file}")
    run(c, f"sleep {int(plan.drain_seconds)}")
    busy = "1"  # the status request itself
    waits = int(settings.request_timeout + REQUEST_GRACE_S) * 2  # of 0.5 s: a request's life
    for _ in range(waits):
        busy = _status(c, plan, edge, "BusyWorkers")
        if busy in ("", "1"):
            break
        run(c, "sleep 0.5")
    run(c, f"{plan.systemctl} stop apache2")
    # Its stop command (apachectl graceful-stop) returns before Apache has exited; systemd
    # waits for the unit's processes, a lesser supervisor may not: wait for the PID file.
    pid_file = '"$APACHE_PID_FILE"'
    run(
        c,
        f". /etc/apache2/envvars && for _ in $(seq {waits}); do "
        f"[ -e {pid_file} ] || break; sleep 0.5; done; [ ! -e {pid_file} ]",
    )
    return [f"out of service: /readyz answered 503, {busy or 'no'} request(s) left, Apache stopped"]


def resume(c: Connection, plan: Plan, edge: Edge) -> list[str]:
    """Back in service: Apache started, /readyz answering 200 again."""
    run(c, f"rm -f {plan.drain_file} && {plan.systemctl} start apache2")
    return [f"back in service: {_until_answers(c, plan, edge, '/readyz')}"]


def _status(c: Connection, plan: Plan, edge: Edge, field: str) -> str:
    """``field`` of Apache's own status page (server-status, from the host only); "" while
    Apache does not answer."""
    page = f"curl -sk --max-time 2 {local_url(plan, edge)}/server-status?auto"
    return run(c, f"{page} | sed -n 's/^{field}: //p'", warn=True).stdout.strip()


def _generation(c: Connection, plan: Plan, edge: Edge) -> str:
    """Apache's configuration generation, one more after each graceful restart."""
    return _status(c, plan, edge, "ParentServerConfigGeneration")


def _until_answers(
    c: Connection, plan: Plan, edge: Edge, path: str, generation: str | None = None
) -> str:
    """Wait until ``path`` answers 200, from a configuration generation past ``generation``
    when one is given (a graceful restart's new daemons, not the old ones); how long it took."""
    ready = f"curl -sk --max-time 2 -o /dev/null -w '%{{http_code}}' {local_url(plan, edge)}{path}"
    began = time.monotonic()
    while time.monotonic() - began < READY_S:
        if generation and _generation(c, plan, edge) not in ("", generation):
            generation = None  # the new daemons' answer from now on: no need to ask again
        if not generation and run(c, ready, warn=True).stdout == "200":
            return f"{path} answers 200 ({time.monotonic() - began:.1f} s)"
        run(c, "sleep 0.5")
    raise Exit(f"{c.host}: {path} did not answer 200 from Apache's new start within {READY_S} s")


def _reload_gracefully(c: Connection, plan: Plan, edge: Edge) -> str:
    """Reload Apache gracefully and wait until it serves again (`_back_in_service`)."""
    before = _generation(c, plan, edge)
    run(c, f"{plan.systemctl} reload apache2")
    if not before:
        raise Exit(f"{c.host}: Apache's server-status did not answer before the reload")
    return f"Apache reloaded gracefully, {_back_in_service(c, plan, edge, before)}"


def _back_in_service(c: Connection, plan: Plan, edge: Edge, generation: str | None = None) -> str:
    """After a restart (a graceful one: past ``generation``): mod_wsgi stops the daemons
    before it starts new ones, which load the app before they answer, so wait until they
    do, then as long as a load balancer takes to see the host up again, before the next
    host is touched. The app's answer (/healthz) is what counts, not /readyz, which also
    needs a live worker: the deploy may be on its way to fix the workers."""
    said = _until_answers(c, plan, edge, "/healthz", generation)
    run(c, f"sleep {int(plan.drain_seconds)}")
    return said
