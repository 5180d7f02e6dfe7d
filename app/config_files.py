"""Render Beagle's configuration files from the Jinja2 templates in apache/,
provisioning/ (and systemd/): the same templates for production, `make run` and tests."""
import os

import jinja2

from app.settings import PROJECT_ROOT, body_limit

APACHE_MODULES = ("mpm_event", "authz_core", "alias", "mime", "headers", "wsgi")
ERROR_STATUSES = (400, 403, 404, 405, 408, 413, 500, 502, 503, 504)
REQUEST_GRACE_S = 5

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(PROJECT_ROOT)), undefined=jinja2.StrictUndefined,
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(template, **context):
    """Render ``template`` (a path under the project root) with ``context``."""
    return _templates.get_template(template).render(**context)


def apache_vhost(settings, code_dir, venv, log_dir, listen=True, log_name="",
                 process_group="beagle", user="www-data", group="www-data", server_name=None):
    """The virtual host. ``user`` is the daemon user; it only applies when Apache starts
    as root, so it is dropped otherwise."""
    if os.geteuid() != 0:
        user = group = ""
    return render(
        "apache/beagle.conf.j2", listen=listen, host=settings.host, port=settings.port,
        server_name=server_name or settings.host, process_group=process_group,
        processes=settings.web_processes, threads=settings.web_threads,
        user=user, group=group, venv=venv, code_dir=code_dir,
        request_timeout=int(settings.request_timeout + 0.999), request_grace=REQUEST_GRACE_S,
        body_limit=body_limit(settings), error_statuses=ERROR_STATUSES,
        log_dir=log_dir, log_name=log_name)


def apache_standalone(settings, run_dir, vhost, log_dir, user="www-data", group="www-data"):
    """A whole server around ``vhost`` that needs nothing from /etc/apache2."""
    if os.geteuid() != 0:
        user = group = ""
    return render("apache/standalone.conf.j2", run_dir=run_dir, vhost=vhost, log_dir=log_dir,
                  server_name=settings.host, modules=APACHE_MODULES, user=user, group=group)


def redis_conf(password, bind="127.0.0.1", port=6379, maxmemory="1gb", dir="/var/lib/redis"):
    """Redis for Beagle: loopback or a private address, a password, never evicting."""
    if not password:
        raise ValueError("Beagle's Redis needs a password")
    return render("provisioning/redis.conf.j2", bind=bind, port=port, password=password,
                  maxmemory=maxmemory, dir=dir)
