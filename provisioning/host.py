"""The steps `fab deploy` runs on one host, each checking first and saying what changed.

A host has roles: redis (Beagle's Redis), worker (the model-server workers) and web
(Apache + mod_wsgi). Releases live in <prefix>/releases/<content hash> with <prefix>/current
pointing at one; virtualenvs in <prefix>/venvs/<requirements hash>, shared by releases;
models in <prefix>/models, shared too; settings in <etc>/beagle.env (mode 600). Each step
takes the host's connection and the Plan (provisioning/plan.py).
Every command runs as root (provisioning/remote.py), whether the login user is root or
a sudoer.
"""

import hashlib
import io
import json
import re
from pathlib import Path

from fabric import Connection
from invoke.exceptions import Exit

from app import config, queue
from app.config import Settings
from provisioning import config_files, envfile, wheels
from provisioning.bundle import Bundle
from provisioning.plan import Plan
from provisioning.remote import exists, private_dir, put_if_changed, read, run

PACKAGES = {
    "base": ["python3-venv", "curl"],
    "web": ["apache2", "libapache2-mod-wsgi-py3"],
    "redis": ["redis-server"],
    "worker": [],
}
APACHE_MODULES = ("wsgi", "headers", "alias", "mime", "reqtimeout")
SAMPLE = "stress/images/digit_7.png"
DEBIAN_REDIS = "redis-server"  # Debian's own unit: port 6379, no password
CUDA_LIBRARIES = ("libcudnn", "libcublas")


def packages(c: Connection, plan: Plan, roles: set[str]) -> list[str]:
    changes = _note_debian_redis(c, plan) if "redis" in roles else []
    wanted = [p for role in ("base", *sorted(roles)) for p in PACKAGES[role]]
    missing = [
        p
        for p in wanted
        if not run(
            c,
            f"dpkg-query -W -f='${{Status}}' {p} 2>/dev/null | grep -q 'install ok installed'",
            warn=True,
        ).ok
    ]
    if missing:
        run(
            c,
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            f"--no-install-recommends {' '.join(missing)}",
        )
        changes.append(f"installed {', '.join(missing)}")
    return changes


def _note_debian_redis(c: Connection, plan: Plan) -> list[str]:
    """Before the first deploy installs redis-server (whose package starts Debian's own
    Redis on 6379 with no password), note whether that one was running: only then is it
    left running."""
    if exists(c, plan.debian_redis_note):
        return []
    running = _is(c, plan, "active", DEBIAN_REDIS)
    run(
        c,
        f"install -d -m 755 {plan.etc} && echo {'keep' if running else 'stop'} "
        f"> {plan.debian_redis_note}",
    )
    return (
        ["Debian's redis-server was running before Beagle's first deploy: left running"]
        if running
        else []
    )


def service_user(c: Connection) -> list[str]:
    if run(c, "id -u beagle", warn=True).ok:
        return []
    run(
        c,
        "useradd --system --home-dir /nonexistent --no-create-home "
        "--shell /usr/sbin/nologin beagle",
    )
    return ["created user beagle"]


def has_gpu(c: Connection) -> int:
    return run(c, "nvidia-smi -L", warn=True).stdout.count("GPU ")


def release(c: Connection, plan: Plan, bundle: Bundle, gpus: int) -> tuple[str, list[str]]:
    """Make <prefix>/releases/<id> unless it exists; (its path, changes)."""
    path = f"{plan.prefix}/releases/{bundle.id}"
    if exists(c, path):
        return path, []
    partial = f"{path}.partial"
    with private_dir(c) as private:
        c.put(io.BytesIO(bundle.tarball), remote=f"{private}/release.tar.gz")
        run(
            c,
            f"rm -rf {partial} && mkdir -p {partial} && tar -xzf {private}/release.tar.gz "
            f"--no-same-owner -C {partial} && chmod -R go-w,a+rX {partial}",
        )
    changes = [f"release {bundle.id} unpacked"]
    venv, made = virtualenv(c, plan, bundle.requirements, gpus)
    changes += made
    run(c, f"ln -sfn {venv} {partial}/venv && mv -T {partial} {path}")
    if not exists(c, f"{plan.prefix}/models"):
        run(c, f"cp -a {path}/models {plan.prefix}/models")
        changes.append(f"model repository {plan.prefix}/models created")
    return path, changes


def gpu_requirements(requirements: bytes) -> bytes:
    """The same pins for a GPU host: TensorFlow with its CUDA libraries from PyPI, and
    ONNX Runtime's CUDA build in place of its CPU one."""
    text = requirements.decode()
    pin = re.search(r"^tensorflow==(\S+)", text, re.M)
    if pin is None:
        raise Exit(
            "requirements.txt pins no tensorflow==<version>: a GPU host cannot get its CUDA build"
        )
    tensorflow = pin.group(1)
    text = re.sub(r"^onnxruntime==", "onnxruntime-gpu==", text, flags=re.M)
    return (text + f"\ntensorflow[and-cuda]=={tensorflow}\n").encode()


def virtualenv(c: Connection, plan: Plan, requirements: bytes, gpus: int) -> tuple[str, list[str]]:
    """A venv made from /usr/bin/python3 for these requirements, shared by releases; its
    packages come from the host's package index, or from the operator's machine when
    beagle.wheels names a folder there (air-gapped hosts)."""
    if gpus:
        requirements = gpu_requirements(requirements)
    key = hashlib.sha256(requirements).hexdigest()[:12]
    venv = f"{plan.prefix}/venvs/{key}"
    if exists(c, f"{venv}/.beagle-ready"):
        return venv, []
    listing = f"{venv}.requirements.txt"
    put_if_changed(c, listing, requirements)
    changes, source = [], ""
    if plan.wheels:
        wheel_key, here = wheels.collect(plan.wheels, requirements, *wheels.target(c))
        there = f"{plan.prefix}/wheels/{wheel_key}"
        changes.append(f"uploaded {wheels.upload(c, here, there)} wheels")
        source = f"--no-index --find-links {there}"
    run(
        c,
        f"rm -rf {venv} && /usr/bin/python3 -m venv {venv} && {venv}/bin/pip install "
        f"--quiet --disable-pip-version-check {source} -r {listing}",
    )
    run(c, f"touch {venv}/.beagle-ready && chmod -R go-w,a+rX {venv}")
    return venv, changes + [f"venv {venv} built" + (" with CUDA" if gpus else "")]


def redis_password(c: Connection, plan: Plan) -> str | None:
    """The password in this host's env file, or None."""
    text = read(c, plan.env_file)
    url = envfile.parse(text).get(config.BY_NAME["redis_url"].env_var) if text else None
    return queue.url_password(url) if url else None


def env_file(c: Connection, plan: Plan, deployed: Settings) -> list[str]:
    """<etc>/beagle.env: the settings ``deployed`` that differ from the defaults."""
    try:
        text = envfile.render(config.as_environ(deployed, changed_only=True))
    except ValueError as exc:
        raise Exit(f"{c.host}: {exc}") from None
    run(c, f"install -d -m 755 {plan.etc}")
    changed = put_if_changed(c, plan.env_file, text, mode="600")
    return ["settings changed"] if changed else []


def redis_server_problem(version_output: str) -> str | None:
    """What is wrong with the host's redis-server, from its ``--version``, or None."""
    found = re.search(r"v=(\d+\.\d+\.\d+)", version_output)
    if found is None:
        return f"cannot read the version of redis-server from {version_output.strip()[:80]!r}"
    return queue.version_problem(found.group(1))


def redis(c: Connection, plan: Plan, password: str, bind: str) -> list[str]:
    problem = redis_server_problem(run(c, "redis-server --version").stdout)
    if problem:
        raise Exit(f"{c.host}: {problem}")
    config = config_files.redis_conf(password, bind=bind, port=plan.redis_port, dir=plan.redis_dir)
    run(c, f"install -d -o redis -g redis -m 750 {plan.redis_dir}")
    changed = put_if_changed(c, f"{plan.etc}/redis.conf", config, mode="640", owner="root:redis")
    unit = config_files.render(
        "systemd/beagle-redis.service.j2", etc=plan.etc, redis_dir=plan.redis_dir
    )
    changed |= put_if_changed(c, "/etc/systemd/system/beagle-redis.service", unit)
    return _stop_debian_redis(c, plan) + _keep_running(c, plan, ["beagle-redis"], changed)


def _stop_debian_redis(c: Connection, plan: Plan) -> list[str]:
    if read(c, plan.debian_redis_note).strip() != "stop":
        return []
    active, enabled = _is(c, plan, "active", DEBIAN_REDIS), _is(c, plan, "enabled", DEBIAN_REDIS)
    if not (active or enabled):
        return []
    run(
        c,
        f"{plan.systemctl} disable -q {DEBIAN_REDIS}"
        + (f" && {plan.systemctl} stop {DEBIAN_REDIS}" if active else ""),
    )
    return [
        f"{'stopped and ' if active else ''}disabled Debian's {DEBIAN_REDIS} (port 6379, "
        "no password), which its package starts on install"
    ]


def workers(c: Connection, plan: Plan, gpus: int, release_changed: bool) -> list[str]:
    """Units, one instance per GPU (else cpu_workers), and a rolling restart when needed."""
    # The host's name is written in, not left to systemd's %H, so that supervisors other
    # than systemd name the worker the same (a restarted worker takes back its requests).
    unit = config_files.render(
        "systemd/beagle-worker@.service.j2",
        etc=plan.etc,
        prefix=plan.prefix,
        stop_timeout=plan.stop_timeout,
        hostname=run(c, "hostname").stdout.strip(),
    )
    changed = put_if_changed(c, "/etc/systemd/system/beagle-worker@.service", unit)
    count = gpus or plan.cpu_workers
    cores = int(run(c, "nproc").stdout)
    for n in range(count):
        pinned = "" if gpus or count == 1 else _cores(n, count, cores)
        changed |= put_if_changed(
            c,
            f"{plan.etc}/worker-{n}.env",
            envfile.render({"BEAGLE_WORKER_CPUS": pinned}) if pinned else "",
        )
    names = [f"beagle-worker@{n}" for n in range(count)]
    return _keep_running(c, plan, names, changed, rolling=True, restart=release_changed)


def cuda(c: Connection, plan: Plan, gpus: int) -> tuple[list[str], str | None]:
    """Register the venv's CUDA libraries with the dynamic linker, then check that ONNX
    Runtime has its CUDA provider and that TensorFlow sees the GPUs: (changes, the problem
    that must stop the deploy or None)."""
    venv = f"{plan.current}/venv"
    # The venv's own path, not current's: a new venv changes this file and reruns ldconfig.
    folders = run(
        c, f"readlink -f {venv}/lib/python3*/site-packages/nvidia/*/lib", warn=True
    ).stdout.split()
    changed = put_if_changed(c, "/etc/ld.so.conf.d/beagle-cuda.conf", "\n".join(folders) + "\n")
    if changed:
        run(c, "ldconfig")
    changes = [f"registered {len(folders)} CUDA library folders"] * changed
    linked = run(c, "ldconfig -p").stdout
    missing = [name for name in CUDA_LIBRARIES if f"{name}." not in linked]
    if missing:
        return changes, (
            f"the dynamic linker lists no {', '.join(missing)} from {venv}: "
            "check /etc/ld.so.conf.d/beagle-cuda.conf"
        )
    providers = run(
        c,
        f'{venv}/bin/python -c "import onnxruntime as ort; '
        f"print(' '.join(ort.get_available_providers()))\"",
    ).stdout.split()
    changes.append(
        "ONNX Runtime has CUDAExecutionProvider"
        if "CUDAExecutionProvider" in providers
        else f"ONNX models run on the CPU: ONNX Runtime in {venv} has "
        f"no CUDAExecutionProvider ({', '.join(providers)})"
    )
    # Log level 1: TensorFlow's warnings ("Cannot dlopen some GPU libraries") without its INFO.
    check = run(
        c,
        f'TF_CPP_MIN_LOG_LEVEL=1 {venv}/bin/python -c "import sys, tensorflow '
        f"as tf; sys.exit(0 if tf.config.list_physical_devices('GPU') else 1)\"",
        warn=True,
    )
    if not check.ok:
        return changes, (
            f"TensorFlow in {venv} lists no GPU although nvidia-smi shows {gpus}: "
            "check the NVIDIA driver and /etc/ld.so.conf.d/beagle-cuda.conf\n"
            + check.stderr[-1500:]
        )
    return changes + [f"TensorFlow sees {gpus} GPUs"], None


def apache(c: Connection, plan: Plan, settings: Settings, release_changed: bool) -> list[str]:
    changes = []
    enabled = run(c, "ls /etc/apache2/mods-enabled").stdout.split()
    missing = [m for m in APACHE_MODULES if f"{m}.load" not in enabled]
    if missing:
        run(c, f"a2enmod -q {' '.join(missing)}")
        changes.append(f"enabled modules {', '.join(missing)}")
    vhost = config_files.apache_vhost(
        settings,
        code_dir=plan.current,
        venv=f"{plan.current}/venv",
        log_dir="/var/log/apache2",
        listen=plan.port != 80,
        log_name="beagle_",
        server_name=c.host,
        cores=int(run(c, "nproc").stdout),
    )
    config = put_if_changed(c, "/etc/apache2/sites-available/beagle.conf", vhost)
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
    active = _is(c, plan, "active", "apache2")
    if environment or not active:  # a new environment needs a new parent process
        run(
            c,
            f"{plan.systemctl} daemon-reload; {plan.systemctl} enable apache2 -q; "
            f"{plan.systemctl} restart apache2",
        )
        changes.append("Apache restarted")
    elif config:
        run(c, f"{plan.systemctl} reload apache2")  # graceful
        changes.append("Apache reloaded gracefully")
    elif release_changed:
        changes.append(reload_web_code(c, plan))
    return changes


def reload_web_code(c: Connection, plan: Plan) -> str:
    # New code only: restart just the mod_wsgi daemon; Apache keeps its socket open, so
    # not a request fails (an Apache graceful restart would drop a few).
    run(c, f"touch {plan.current}/wsgi/beagle.wsgi")
    return "web code reloaded"


def switch(c: Connection, plan: Plan, path: str) -> bool:
    """Point <prefix>/current at ``path``; True if it moved."""
    if run(c, f"readlink {plan.current}", warn=True).stdout.strip() == path:
        return False
    run(
        c,
        f"ln -sfn {path} {plan.current}.next && mv -T {plan.current}.next {plan.current} "
        f"&& echo {Path(path).name} >> {plan.prefix}/releases/HISTORY",
    )
    return True


def previous_release(c: Connection, plan: Plan) -> str:
    history = run(c, f"cat {plan.prefix}/releases/HISTORY", warn=True).stdout.split()
    current = Path(run(c, f"readlink {plan.current}").stdout.strip()).name
    earlier = [r for r in reversed(history) if r != current]
    existing = [r for r in earlier if exists(c, f"{plan.prefix}/releases/{r}")]
    if not existing:
        raise Exit(f"{c.host}: no release before {current} to roll back to")
    return f"{plan.prefix}/releases/{existing[0]}"


def prune(c: Connection, plan: Plan) -> list[str]:
    """Remove releases beyond keep_releases, never the current one."""
    current = run(c, f"readlink {plan.current}").stdout.strip()
    listed = run(c, f"ls -1dt {plan.prefix}/releases/*/", warn=True).stdout.split()
    old = [p.rstrip("/") for p in listed if p.rstrip("/") != current][plan.keep_releases - 1 :]
    for path in old:
        run(c, f"rm -rf {path}")
    return [f"removed {len(old)} old releases"] if old else []


def smoke(c: Connection, plan: Plan, attempts: int = 30) -> str:
    """A request through Apache on the host itself, with the first API key when keys are
    on (read there from the env file and handed to curl on its stdin, never on a command
    line); the answer's top label."""
    key = config.BY_NAME["api_keys"].env_var
    command = plan.with_env(
        f'{{ [ -z "${key}" ] || printf \'Authorization: Bearer %s\\n\' "${{{key}%%,*}}"; }} | '
        f"curl -fsS --max-time 20 -H @- -F image=@{plan.current}/{SAMPLE} "
        f"http://127.0.0.1:{plan.port}/predict"
    )
    for _ in range(attempts):
        result = run(c, command, warn=True)
        if result.ok:
            return json.loads(result.stdout)["predictions"][0]["label"]
        run(c, "sleep 1")
    raise Exit(f"{c.host}: the smoke request failed: {result.stderr.strip() or result.stdout}")


def _is(c: Connection, plan: Plan, state: str, unit: str) -> bool:
    """Whether ``unit`` is ``state`` ("active", "enabled") on the host."""
    return run(c, f"{plan.systemctl} is-{state} {unit}", warn=True).stdout.strip() == state


def _keep_running(
    c: Connection,
    plan: Plan,
    units: list[str],
    changed: bool,
    rolling: bool = False,
    restart: bool = False,
) -> list[str]:
    """Enabled and running; restarted (one at a time when rolling) if their configuration
    changed or ``restart`` asks, e.g. for new code."""
    systemctl = plan.systemctl
    changes = ["configuration changed"] if changed else []
    changes += ["new code"] if restart and not changed else []
    changed = changed or restart
    run(c, f"{systemctl} daemon-reload")
    for unit in units:
        if not _is(c, plan, "enabled", unit):
            run(c, f"{systemctl} enable -q {unit}")
            changes.append(f"enabled {unit}")
        active = _is(c, plan, "active", unit)
        if not active or changed:
            since = run(c, "date +%s.%N").stdout.strip()
            run(c, f"{systemctl} restart {unit}")
            changes.append(f"{'restarted' if active else 'started'} {unit}")
            if rolling:  # one at a time: the next only once this one serves again
                _wait_live(c, plan, unit.split("@")[1], since)
    return changes


def _wait_live(c: Connection, plan: Plan, instance: str, since: str) -> None:
    run(
        c,
        plan.with_env(
            plan.python(
                f'scripts.wait_worker --name "$(hostname)-{instance}" --since {since} --timeout 300'
            )
        ),
    )


def _cores(n: int, count: int, cores: int) -> str:
    per = max(1, cores // count)
    first = (n * per) % cores
    return f"{first}-{first + per - 1}" if per > 1 else str(first)
