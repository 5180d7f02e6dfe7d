"""The whole stack on one machine: Redis, workers, Apache + mod_wsgi on loopback.

``python -m tools.devstack`` is ``make run``; the tests start the same classes. Every
child runs in its own session, so Ctrl-C reaches only this launcher, which then stops
what it started (and nothing else) in order: Apache, workers, its own Redis.
"""

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import redis

from app import config, registry
from app.config import PROJECT_ROOT
from app.keys import Keys
from app.redis_connection import redis_url
from app.stop_signals import StopSignals
from provisioning import config_files, redis_users

log = logging.getLogger("beagle.devstack")

WEB_USER = "www-data"
STAGED = ("app", "wsgi", "apache")  # what the web tier reads: its code and error pages
NOT_STAGED = ("__pycache__", "*.pyc", "worker")  # app/worker/ runs in the workers only


def free_port():
    """A loopback port nothing is bound to, below the kernel's ephemeral range: a port of
    that range may be taken by any outgoing connection before the server binds it. Each
    process hands out its ports in turn from a point of its own, and each once, so two
    processes choosing at the same time seldom meet."""
    ephemeral = ephemeral_ports_start()
    first = min(10_000, ephemeral // 2)  # above the ports services usually take
    span, pid = ephemeral - first, os.getpid()
    place = _PORT_TURNS.setdefault(pid, pid * 7919 % span)
    for step in range(span):
        port = first + (place + step) % span
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORT_TURNS[pid] = place + step + 1
        return port
    raise RuntimeError(f"no free port in {first}-{ephemeral - 1}")


_PORT_TURNS: dict[int, int] = {}  # PID -> where its next port is looked for (forks differ)


def ephemeral_ports_start():
    """The first port the kernel hands to outgoing connections."""
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


class Stopped(Exception):
    """A stop was asked for while the stack was starting."""


def wait_until(check, process, timeout, what, stop=None):
    """Call ``check`` until it is true, waiting on ``process`` in between (which also
    notices at once if the process exits); give up at once when ``stop`` (StopSignals)
    is set."""
    for _ in range(int(timeout / 0.1)):
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped while {what} was starting")
        if check():
            return
        try:
            code = process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"{what} exited with code {code} while starting")
    raise RuntimeError(f"{what} did not start within {timeout}s")


def responds(url, expect=200):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == expect
    except urllib.error.HTTPError as exc:
        return exc.code == expect
    except OSError:
        return False


def redis_answers(url):
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1).ping()
    except redis.RedisError:
        return False


class RedisServer:
    """A private redis-server on a free loopback port, configured from the production
    template (provisioning/redis.conf.j2): a user per role, protected mode, no eviction.
    ``key_prefix`` may be a glob (the tests give each test a prefix of its own);
    ``inspector`` adds a user who may do anything, for tests to look at and set up
    Redis with; ``master`` (host:port) makes it a replica of that one, with the same
    ``passwords``."""

    def __init__(
        self,
        work_dir,
        maxmemory="256mb",
        key_prefix="beagle",
        inspector=False,
        master="",
        passwords=None,
    ):
        self.work_dir = Path(work_dir)
        self.passwords = passwords or {r: secrets.token_hex(16) for r in redis_users.ROLES}
        self.master = master
        self.inspector = secrets.token_hex(16) if inspector else None
        self.maxmemory = maxmemory
        self.key_prefix = key_prefix
        self.port = None
        self.process = None

    def url_for(self, role):
        """The URL a process of ``role`` (web, worker, admin) logs in with."""
        return redis_url(role, self.passwords[role], "127.0.0.1", self.port)

    @property
    def url(self):
        """The inspector's URL if there is one, else the admin's (operators' tools)."""
        if self.inspector:
            return redis_url("inspector", self.inspector, "127.0.0.1", self.port)
        return self.url_for("admin")

    @property
    def role_urls(self):
        """{role: URL} for `Stack`: the web tier and the workers each as their own role."""
        return {role: self.url_for(role) for role in ("web", "worker")}

    def start(self, stop=None):
        """Start it (again, on the same port, if it was stopped)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = self.work_dir / "redis.conf"
        config.touch(mode=0o600)
        text = config_files.redis_conf(
            self.passwords,
            key_prefix=self.key_prefix,
            port=self.port,
            maxmemory=self.maxmemory,
            dir=self.work_dir,
            master=self.master,
        )
        if self.inspector:
            text += f"user inspector on >{self.inspector} ~* &* +@all\n"
        config.write_text(text)
        with open(self.work_dir / "redis.log", "ab") as out:
            self.process = subprocess.Popen(
                ["/usr/bin/redis-server", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: redis_answers(self.url), self.process, 10, "redis-server", stop)
        return self

    def stop(self):
        _stop(self.process, signal.SIGTERM, 10)


class Apache:
    """Apache + mod_wsgi from apache/'s templates, serving the web tier from a copy of
    its code under ``run_dir``, which the daemon user can read wherever the checkout is."""

    def __init__(self, settings, run_dir):
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.process = None

    @property
    def url(self):
        return f"http://{self.settings.host}:{self.settings.port}"

    @property
    def error_log(self):
        return self.run_dir / "logs" / "error.log"

    @property
    def config(self):
        return self.run_dir / "httpd.conf"

    def start(self, stop=None):
        venv = check_venv()
        code_dir = self.stage()
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        vhost = self.run_dir / "beagle.conf"
        vhost.write_text(config_files.apache_vhost(self.settings, code_dir, venv, logs))
        self.config.write_text(
            config_files.apache_standalone(self.settings, self.run_dir, vhost, logs)
        )
        if os.geteuid() == 0:
            check_readable_by(WEB_USER, venv / "pyvenv.cfg", code_dir / "wsgi" / "beagle.wsgi")
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            **config_files.WEB_ENVIRONMENT,
            **config.as_environ(self.settings),
        }
        with open(logs / "apache-stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                ["/usr/sbin/apache2", "-f", str(self.config), "-DFOREGROUND"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: responds(self.url + "/healthz"),
            self.process,
            60,
            f"Apache (see {self.error_log})",
            stop,
        )
        return self

    def stage(self):
        """Copy what the web tier reads to ``run_dir/code``, readable by the daemon user."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        code_dir = self.run_dir / "code"
        shutil.rmtree(code_dir, ignore_errors=True)
        for name in STAGED:
            shutil.copytree(
                PROJECT_ROOT / name, code_dir / name, ignore=shutil.ignore_patterns(*NOT_STAGED)
            )
        return code_dir

    def graceful(self):
        """``apachectl graceful``: new daemon processes, requests in flight finish."""
        self.process.send_signal(signal.SIGUSR1)

    def stop(self):
        _stop(self.process, signal.SIGTERM, 20)


class WorkerProcess:
    """``python -m app.worker`` as a child process, known to Redis by ``name``."""

    def __init__(self, settings, name, log_path=None, env=None):
        self.settings = config.replace(settings, worker_name=name)
        self.name = name
        self.log_path = log_path
        self.extra_env = env or {}
        self.process = None

    def start(self, wait=True, timeout=120):
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            **config.as_environ(self.settings),
            **self.extra_env,
        }
        out = open(self.log_path, "ab") if self.log_path else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.worker"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        if out:
            out.close()
        if wait:
            self.wait_live(timeout)
        return self

    def wait_live(self, timeout=120, stop=None):
        """Wait until this process has announced itself (a killed one under the same name
        stays in the registry until its status expires)."""
        client = redis.Redis.from_url(self.settings.redis_url)
        keys = Keys(self.settings.key_prefix)

        def announced():
            return registry.status(client, keys, self.name).get("pid") == self.process.pid

        wait_until(announced, self.process, timeout, f"worker {self.name}", stop)

    def signal(self, signum):
        self.process.send_signal(signum)

    def stop(self, timeout=60):
        return _stop(self.process, signal.SIGTERM, timeout)


def check_venv():
    """The venv running us, which Apache's mod_wsgi will run too: it must be made from
    the system Python that Debian's mod_wsgi is built for."""
    if sys.prefix == sys.base_prefix or Path(sys.base_prefix) != Path("/usr"):
        raise SystemExit(
            f"run this from a venv made with /usr/bin/python3 (mod_wsgi is built "
            f"for it); this Python is {sys.executable} (base {sys.base_prefix})"
        )
    return Path(sys.prefix)


def check_readable_by(user, *paths):
    for path in paths:
        probe = subprocess.run(["/usr/sbin/runuser", "-u", user, "--", "test", "-r", str(path)])
        if probe.returncode != 0:
            raise SystemExit(
                f"{user} (Apache's daemon user) cannot read {path}: every "
                f"directory above it needs o+x. Put the venv elsewhere (VENV=...)"
            )


def _stop(process, signum, timeout):
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(signum)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class Stack:
    """Workers and Apache for ``settings``, whose ``redis_url`` must answer. With
    ``role_urls`` ({"web": url, "worker": url}), the web tier and the workers log in to
    Redis each as its own role. Every log goes to ``run_dir/logs``: Apache's, and
    ``worker-<n>.log`` for each worker."""

    def __init__(self, settings, run_dir, workers=1, worker_env=None, role_urls=None):
        self.settings = settings
        self.run_dir = Path(run_dir)
        urls = role_urls or {"web": settings.redis_url, "worker": settings.redis_url}
        self.workers = [
            WorkerProcess(
                config.replace(settings, redis_url=urls["worker"]),
                f"{socket.gethostname()}-{settings.port}-{n}",
                self.run_dir / "logs" / f"worker-{n}.log",
                worker_env,
            )
            for n in range(workers)
        ]
        self.apache = Apache(config.replace(settings, redis_url=urls["web"]), self.run_dir)

    @property
    def url(self):
        return self.apache.url

    @property
    def processes(self):
        return [self.apache.process] + [w.process for w in self.workers]

    def start(self, timeout=180, stop=None):
        """Workers and Apache, which starts while the workers load their models; returns
        once all serve. ``stop`` (StopSignals) set meanwhile ends it with Stopped."""
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        for worker in self.workers:  # they load their models in parallel
            worker.start(wait=False)
        self.apache.start(stop)
        for worker in self.workers:
            worker.wait_live(timeout, stop)
        return self

    def stop(self):
        self.apache.stop()
        for worker in self.workers:
            worker.stop()


def main():
    """``make run``: serve the bundled model on http://<host>:<port> until Ctrl-C."""
    settings = config.load()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    run_dir = Path(tempfile.gettempdir()) / f"beagle-run-{settings.port}"
    stop = StopSignals().install()  # a signal at any moment, start-up included
    own_redis = stack = None
    try:
        if redis_answers(settings.redis_url):
            log.info("devstack: using the Redis at %s", settings.redis_url.split("@")[-1])
        else:
            own_redis = RedisServer(run_dir / "redis")
            own_redis.start(stop)
            settings = config.replace(settings, redis_url=own_redis.url)
            log.info("devstack: no Redis answered, started one on port %d", own_redis.port)
        if not _port_free(settings.host, settings.port):
            raise SystemExit(f"{settings.host}:{settings.port} is in use; set BEAGLE_PORT")
        stack = Stack(settings, run_dir, role_urls=own_redis.role_urls if own_redis else None)
        stack.start(stop=stop)
        wait_until(
            lambda: responds(stack.url + "/readyz"), stack.apache.process, 60, "Apache", stop
        )
        sample = PROJECT_ROOT / "stress" / "images" / "digit_7.png"
        print(
            f"\nBeagle is serving on {stack.url} (open it in a browser to try it)\n\n"
            f"  curl -F image=@{sample} {stack.url}/predict\n\n"
            f"Logs (Apache's and the worker's): cd {PROJECT_ROOT} && {sys.executable} "
            f"-m scripts.tail_logs --follow\n"
            f"Ctrl-C stops Apache, the worker{' and Redis' if own_redis else ''}.\n",
            flush=True,
        )
        while not stop.wait(1.0):
            if any(p.poll() is not None for p in stack.processes):
                log.error("devstack: a process of the stack exited; stopping the rest")
                break
    except Stopped:
        pass
    finally:
        if stack:
            stack.stop()
        if own_redis:
            own_redis.stop()
        log.info("devstack: stopped")


def _port_free(host, port):
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


if __name__ == "__main__":
    main()
