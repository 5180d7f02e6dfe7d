"""The steps `fab deploy` runs on one host, each checking first and saying what changed.

A host has roles: redis (Beagle's Redis), worker (the model-server workers) and web
(Apache + mod_wsgi). Releases live in <prefix>/releases/<content hash> with <prefix>/current
pointing at one; virtualenvs in <prefix>/venvs/<requirements hash>, shared by releases;
models in <prefix>/models, shared too; settings in <etc>/beagle.env (mode 600).
"""
import hashlib
import io
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from invoke.exceptions import Exit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app import config_files, settings as settings_module  # noqa: E402

PACKAGES = {"base": ["python3-venv", "curl"], "web": ["apache2", "libapache2-mod-wsgi-py3"],
            "redis": ["redis-server"], "worker": []}
APACHE_MODULES = ("wsgi", "headers", "alias", "mime")
SAMPLE = "stress/images/digit_7.png"


@dataclass
class Plan:
    """What to deploy where: Fabric's `beagle` configuration, with defaults in the fabfile."""
    prefix: str
    etc: str
    port: int
    redis_port: int
    redis_address: str
    systemctl: str
    cpu_workers: int
    keep_releases: int
    stop_timeout: int
    wheels: str = ""
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config):
        beagle = config.beagle
        return cls(prefix=beagle.prefix, etc=beagle.etc, port=int(beagle.port),
                   redis_port=int(beagle.redis_port), redis_address=beagle.redis_address or "",
                   systemctl=beagle.systemctl, cpu_workers=int(beagle.cpu_workers),
                   keep_releases=int(beagle.keep_releases),
                   stop_timeout=int(beagle.stop_timeout), wheels=beagle.wheels or "",
                   settings=dict(beagle.settings or {}))

    @property
    def current(self):
        return f"{self.prefix}/current"

    @property
    def env_file(self):
        return f"{self.etc}/beagle.env"

    @property
    def redis_dir(self):
        return "/var/lib/beagle-redis"


def run(c, command, **kwargs):
    """Run as root: directly when connected as root, else through sudo."""
    kwargs.setdefault("hide", True)
    return (c.run if c.user == "root" else c.sudo)(command, **kwargs)


def exists(c, path):
    return run(c, f"test -e {shlex.quote(path)}", warn=True).ok


def put_if_changed(c, path, content, mode="644", owner="root:root"):
    """Install ``content`` at ``path`` unless it is there already; True if it changed."""
    data = content.encode() if isinstance(content, str) else content
    current = run(c, f"sha256sum {shlex.quote(path)} 2>/dev/null", warn=True).stdout.split()
    if current and current[0] == hashlib.sha256(data).hexdigest():
        return False
    staging = f"/tmp/beagle-upload-{hashlib.sha256(path.encode()).hexdigest()[:12]}"
    c.put(io.BytesIO(data), remote=staging)
    user, group = owner.split(":")
    run(c, f"install -D -m {mode} -o {user} -g {group} {staging} {shlex.quote(path)} "
           f"&& rm -f {staging}")
    return True


def packages(c, roles):
    wanted = [p for role in ("base", *sorted(roles)) for p in PACKAGES[role]]
    missing = [p for p in wanted if not run(
        c, f"dpkg-query -W -f='${{Status}}' {p} 2>/dev/null | grep -q 'install ok installed'",
        warn=True).ok]
    if missing:
        run(c, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
               f"--no-install-recommends {' '.join(missing)}")
        return [f"installed {', '.join(missing)}"]
    return []


def service_user(c):
    if run(c, "id -u beagle", warn=True).ok:
        return []
    run(c, "useradd --system --home-dir /nonexistent --no-create-home "
           "--shell /usr/sbin/nologin beagle")
    return ["created user beagle"]


def has_gpu(c):
    return run(c, "nvidia-smi -L", warn=True).stdout.count("GPU ")


def release(c, plan, bundle, gpus):
    """Make <prefix>/releases/<id> unless it exists; (its path, changes)."""
    path = f"{plan.prefix}/releases/{bundle.id}"
    if exists(c, path):
        return path, []
    partial = f"{path}.partial"
    archive = f"/tmp/beagle-release-{bundle.id}.tar.gz"
    c.put(io.BytesIO(bundle.tarball), remote=archive)
    run(c, f"rm -rf {partial} && mkdir -p {partial} && tar -xzf {archive} -C {partial} "
           f"&& rm -f {archive} && chmod -R go-w,a+rX {partial}")
    changes = [f"release {bundle.id} unpacked"]
    venv, made = virtualenv(c, plan, bundle.requirements, gpus)
    changes += made
    run(c, f"ln -sfn {venv} {partial}/venv && mv -T {partial} {path}")
    if not exists(c, f"{plan.prefix}/models"):
        run(c, f"cp -a {path}/models {plan.prefix}/models")
        changes.append(f"model repository {plan.prefix}/models created")
    return path, changes


def virtualenv(c, plan, requirements, gpus):
    """A venv made from /usr/bin/python3 for these requirements, shared by releases; its
    packages come from the host's package index, or from the operator's machine when
    beagle.wheels names a folder there (air-gapped hosts)."""
    if gpus:  # the GPU build of the same TensorFlow, with the CUDA libraries from PyPI
        version = next(line.split("==")[1].split()[0] for line in requirements.decode()
                       .splitlines() if line.startswith("tensorflow=="))
        requirements += f"\ntensorflow[and-cuda]=={version}\n".encode()
    key = hashlib.sha256(requirements).hexdigest()[:12]
    venv = f"{plan.prefix}/venvs/{key}"
    if exists(c, f"{venv}/.beagle-ready"):
        return venv, []
    listing = f"{venv}.requirements.txt"
    put_if_changed(c, listing, requirements)
    changes, source = [], ""
    if plan.wheels:
        import wheels
        wheel_key, here = wheels.collect(plan.wheels, requirements, *wheels.target(c))
        there = f"{plan.prefix}/wheels/{wheel_key}"
        changes.append(f"uploaded {wheels.upload(c, here, there)} wheels")
        source = f"--no-index --find-links {there}"
    run(c, f"rm -rf {venv} && /usr/bin/python3 -m venv {venv} && {venv}/bin/pip install "
           f"--quiet --disable-pip-version-check {source} -r {listing}")
    run(c, f"touch {venv}/.beagle-ready && chmod -R go-w,a+rX {venv}")
    return venv, changes + [f"venv {venv} built" + (" with CUDA" if gpus else "")]


def redis_password(c, plan):
    """The password in this host's env file, or None."""
    text = run(c, f"cat {plan.env_file} 2>/dev/null", warn=True).stdout
    for line in text.splitlines():
        if line.startswith("BEAGLE_REDIS_URL=redis://:") and "@" in line:
            return line.split("redis://:", 1)[1].rsplit("@", 1)[0]
    return None


def env_file(c, plan, password, redis_address):
    values = {"BEAGLE_REDIS_URL": f"redis://:{password}@{redis_address}:{plan.redis_port}/0",
              "BEAGLE_MODEL_REPOSITORY": f"{plan.prefix}/models", "BEAGLE_HOST": "*",
              "BEAGLE_PORT": plan.port,
              **{f"BEAGLE_{k.upper()}": v for k, v in plan.settings.items()}}
    text = ("# Beagle's settings for Apache (through a systemd drop-in) and the workers.\n"
            "# Written by fab deploy; see the README for every setting.\n"
            + "".join(f"{k}={v}\n" for k, v in values.items()))
    changed = put_if_changed(c, plan.env_file, text, mode="600")
    run(c, f"chmod 755 {plan.etc}")
    return ["settings changed"] if changed else []


def redis(c, plan, password, bind):
    config = config_files.redis_conf(password, bind=bind, port=plan.redis_port,
                                     dir=plan.redis_dir)
    run(c, f"install -d -o redis -g redis -m 750 {plan.redis_dir}")
    changed = put_if_changed(c, f"{plan.etc}/redis.conf", config, mode="640", owner="root:redis")
    unit = config_files.render("systemd/beagle-redis.service.j2", etc=plan.etc,
                               redis_dir=plan.redis_dir)
    changed |= put_if_changed(c, "/etc/systemd/system/beagle-redis.service", unit)
    return _keep_running(c, plan, ["beagle-redis"], changed)


def workers(c, plan, gpus, release_changed):
    """Units, one instance per GPU (else cpu_workers), and a rolling restart when needed."""
    # The host's name is written in, not left to systemd's %H, so that supervisors other
    # than systemd name the worker the same (a restarted worker takes back its requests).
    unit = config_files.render("systemd/beagle-worker@.service.j2", etc=plan.etc,
                               prefix=plan.prefix, stop_timeout=plan.stop_timeout,
                               hostname=run(c, "hostname").stdout.strip())
    changed = put_if_changed(c, "/etc/systemd/system/beagle-worker@.service", unit)
    count = gpus or plan.cpu_workers
    cores = int(run(c, "nproc").stdout)
    for n in range(count):
        pinned = "" if gpus or count == 1 else _cores(n, count, cores)
        changed |= put_if_changed(c, f"{plan.etc}/worker-{n}.env",
                                  f"BEAGLE_WORKER_CPUS={pinned}\n" if pinned else "")
    names = [f"beagle-worker@{n}" for n in range(count)]
    return _keep_running(c, plan, names, changed, rolling=True,
                         restart=release_changed)


def apache(c, plan, settings, release_changed):
    changes = []
    enabled = run(c, "ls /etc/apache2/mods-enabled").stdout.split()
    missing = [m for m in APACHE_MODULES if f"{m}.load" not in enabled]
    if missing:
        run(c, f"a2enmod -q {' '.join(missing)}")
        changes.append(f"enabled modules {', '.join(missing)}")
    vhost = config_files.apache_vhost(
        settings, code_dir=plan.current, venv=f"{plan.current}/venv", log_dir="/var/log/apache2",
        listen=plan.port != 80, log_name="beagle_", server_name=c.host)
    config = put_if_changed(c, "/etc/apache2/sites-available/beagle.conf", vhost)
    environment = put_if_changed(c, "/etc/systemd/system/apache2.service.d/beagle.conf",
                                 config_files.render("systemd/apache2-beagle.conf.j2",
                                                     etc=plan.etc))
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
    active = run(c, f"{plan.systemctl} is-active apache2", warn=True).stdout.strip() == "active"
    if environment or not active:  # a new environment needs a new parent process
        run(c, f"{plan.systemctl} daemon-reload; {plan.systemctl} enable apache2 -q; "
               f"{plan.systemctl} restart apache2")
        changes.append("Apache restarted")
    elif config:
        run(c, f"{plan.systemctl} reload apache2")  # graceful
        changes.append("Apache reloaded gracefully")
    elif release_changed:
        # New code only: restart just the mod_wsgi daemon; Apache keeps its socket open, so
        # not a request fails (an Apache graceful restart would drop a few).
        run(c, f"touch {plan.current}/wsgi/beagle.wsgi")
        changes.append("web code reloaded")
    return changes


def switch(c, plan, path):
    """Point <prefix>/current at ``path``; True if it moved."""
    if run(c, f"readlink {plan.current}", warn=True).stdout.strip() == path:
        return False
    run(c, f"ln -sfn {path} {plan.current}.next && mv -T {plan.current}.next {plan.current} "
           f"&& echo {Path(path).name} >> {plan.prefix}/releases/HISTORY")
    return True


def previous_release(c, plan):
    history = run(c, f"cat {plan.prefix}/releases/HISTORY", warn=True).stdout.split()
    current = Path(run(c, f"readlink {plan.current}").stdout.strip()).name
    earlier = [r for r in reversed(history) if r != current]
    existing = [r for r in earlier if exists(c, f"{plan.prefix}/releases/{r}")]
    if not existing:
        raise Exit(f"{c.host}: no release before {current} to roll back to")
    return f"{plan.prefix}/releases/{existing[0]}"


def prune(c, plan):
    """Remove releases beyond keep_releases, never the current one."""
    current = run(c, f"readlink {plan.current}").stdout.strip()
    listed = run(c, f"ls -1dt {plan.prefix}/releases/*/", warn=True).stdout.split()
    old = [p.rstrip("/") for p in listed if p.rstrip("/") != current][plan.keep_releases - 1:]
    for path in old:
        run(c, f"rm -rf {path}")
    return [f"removed {len(old)} old releases"] if old else []


def smoke(c, plan, attempts=30):
    """A request through Apache on the host itself; the answer's top label."""
    command = (f"curl -fsS --max-time 20 -F image=@{plan.current}/{SAMPLE} "
               f"http://127.0.0.1:{plan.port}/predict")
    for _ in range(attempts):
        result = run(c, command, warn=True)
        if result.ok:
            return json.loads(result.stdout)["predictions"][0]["label"]
        run(c, "sleep 1")
    raise Exit(f"{c.host}: the smoke request failed: {result.stderr.strip() or result.stdout}")


def _keep_running(c, plan, units, changed, rolling=False, restart=False):
    """Enabled and running; restarted (one at a time when rolling) if their configuration
    changed or ``restart`` asks, e.g. for new code."""
    systemctl = plan.systemctl
    changes = ["configuration changed"] if changed else []
    changes += ["new code"] if restart and not changed else []
    changed = changed or restart
    run(c, f"{systemctl} daemon-reload")
    for unit in units:
        if run(c, f"{systemctl} is-enabled {unit}", warn=True).stdout.strip() != "enabled":
            run(c, f"{systemctl} enable -q {unit}")
            changes.append(f"enabled {unit}")
        active = run(c, f"{systemctl} is-active {unit}", warn=True).stdout.strip() == "active"
        if not active or changed:
            since = run(c, "date +%s.%N").stdout.strip()
            run(c, f"{systemctl} restart {unit}")
            changes.append(f"{'restarted' if active else 'started'} {unit}")
            if rolling:  # one at a time: the next only once this one serves again
                _wait_live(c, plan, unit.split("@")[1], since)
    return changes


def _wait_live(c, plan, instance, since):
    run(c, f"set -a && . {plan.env_file} && set +a && {plan.current}/venv/bin/python "
           f"{plan.current}/scripts/wait_worker.py --name \"$(hostname)-{instance}\" "
           f"--since {since} --timeout 300")


def _cores(n, count, cores):
    per = max(1, cores // count)
    first = (n * per) % cores
    return f"{first}-{first + per - 1}" if per > 1 else str(first)
