"""The Apache configuration: one template, rendered and checked by Apache itself."""

import os
import subprocess

from app import config
from app.config import PROJECT_ROOT
from provisioning import config_files
from tools.devstack import Apache

PRODUCTION_TIMEOUTS = (
    "queue-timeout=",
    "request-timeout=",
    "socket-timeout=",
    "connect-timeout=",
    "graceful-timeout=",
    "shutdown-timeout=",
)


def render(settings, tmp):
    apache = Apache(settings, tmp)
    code_dir = apache.stage()
    vhost = tmp / "beagle.conf"
    vhost.write_text(config_files.apache_vhost(settings, code_dir, "/opt/venv", tmp))
    apache.config.write_text(config_files.apache_standalone(settings, tmp, vhost, tmp))
    return vhost.read_text(), apache.config


def test_the_rendered_configuration_passes_apaches_own_check(settings, public_tmp):
    _, config = render(settings, public_tmp)
    check = subprocess.run(
        ["/usr/sbin/apache2", "-t", "-f", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert "Syntax OK" in check.stderr


def test_the_vhost_has_the_production_settings(settings, public_tmp):
    vhost, _ = render(settings, public_tmp)
    daemon = vhost[vhost.index("WSGIDaemonProcess") : vhost.index("WSGIProcessGroup")]
    for option in (
        "processes=1",
        f"threads={settings.web_threads}",
        "python-home=/opt/venv",
        "python-path=",
        "home=",
        "display-name=%{GROUP}",
        "listen-backlog=1024",
        *PRODUCTION_TIMEOUTS,
    ):
        assert option in daemon, option
    assert f"queue-timeout={int(settings.request_timeout)} " in daemon
    for directive in (
        "WSGIApplicationGroup %{GLOBAL}",
        "WSGIRestrictEmbedded On",
        "ServerTokens Prod",
        "ServerSignature Off",
        "LimitRequestBody ",
        "TraceEnable Off",
        "RequestReadTimeout header=5-10,MinRate=500 body=5,MinRate=500",
    ):
        assert directive in vhost, directive
    assert "{{" not in vhost and "{%" not in vhost


def test_the_wsgi_entry_is_two_lines():
    lines = (PROJECT_ROOT / "wsgi" / "beagle.wsgi").read_text().splitlines()
    assert lines == ["from app.web import create_app", "application = create_app()"]


def test_apache_errors_are_json():
    import json

    for page in (PROJECT_ROOT / "apache" / "errors").glob("*.json"):
        body = json.loads(page.read_text())
        assert body["success"] is False and body["error"]
    statuses = {int(p.stem) for p in (PROJECT_ROOT / "apache" / "errors").glob("*.json")}
    assert statuses == set(config_files.ERROR_STATUSES)


def test_web_processes_0_is_one_per_two_cores_of_the_web_host(settings, public_tmp):
    by_cores = config.replace(settings, web_processes=0)
    assert "processes=3 " in config_files.apache_vhost(by_cores, "/c", "/v", "/l", cores=6)
    assert "processes=1 " in config_files.apache_vhost(by_cores, "/c", "/v", "/l", cores=1)
    here = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"processes={here} " in config_files.apache_vhost(by_cores, "/c", "/v", "/l")
    assert "processes=5 " in config_files.apache_vhost(
        config.replace(settings, web_processes=5), "/c", "/v", "/l", cores=6
    )
