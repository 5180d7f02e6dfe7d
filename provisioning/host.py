"""The steps `fab deploy` runs on one host, each checking first and saying what changed:
here those every host runs and the worker role's; the redis role's are in
provisioning/redis_host.py, the web role's in provisioning/web_host.py.

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
import re
from pathlib import Path

from fabric import Connection
from invoke.exceptions import Exit

from app import config
from app.config import Settings
from provisioning import config_files, envfile, redis_host, wheels
from provisioning.bundle import Bundle
from provisioning.plan import Plan
from provisioning.remote import exists, private_dir, put_if_changed, run
from provisioning.services import keep_running

PACKAGES = {
    "base": ["python3-venv", "curl"],
    "web": ["apache2", "libapache2-mod-wsgi-py3"],
    "redis": ["redis-server"],
    "worker": [],
}
CUDA_LIBRARIES = ("libcudnn", "libcublas")


def packages(c: Connection, plan: Plan, roles: set[str], extra: tuple[str, ...] = ()) -> list[str]:
    changes = redis_host.note_debian_redis(c, plan) if "redis" in roles else []
    wanted = [p for role in ("base", *sorted(roles)) for p in PACKAGES[role]] + list(extra)
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


def env_file(c: Connection, plan: Plan, deployed: Settings) -> list[str]:
    """<etc>/beagle.env: the settings ``deployed`` that differ from the defaults."""
    try:
        text = envfile.render(config.as_environ(deployed, changed_only=True))
    except ValueError as exc:
        raise Exit(f"{c.host}: {exc}") from None
    run(c, f"install -d -m 755 {plan.etc}")
    changed = put_if_changed(c, plan.env_file, text, mode="600")
    return ["settings changed"] if changed else []


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
        gpus=gpus,
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
    return keep_running(c, plan, names, changed, rolling=True, restart=release_changed)


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


def _cores(n: int, count: int, cores: int) -> str:
    per = max(1, cores // count)
    first = (n * per) % cores
    return f"{first}-{first + per - 1}" if per > 1 else str(first)
