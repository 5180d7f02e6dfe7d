"""Redis with replicas and Sentinel on this machine, from the production templates: a
master, replicas of it and Sentinels (provisioning/redis.conf.j2, sentinel.conf.j2), all
with the same users and passwords; and a closed-loop load that records what each client
saw, for the failover tests."""

import re
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import redis
import requests

from provisioning import config_files, redis_users
from tools.devstack import RedisServer, free_port, wait_until


class Sentinel:
    def __init__(self, work, passwords, master, quorum):
        self.work, self.passwords = Path(work), passwords
        self.master, self.quorum = master, quorum
        self.port, self.process = free_port(), None

    def start(self):
        self.work.mkdir(parents=True, exist_ok=True)
        config = self.work / "sentinel.conf"
        roles = {r: p for r, p in self.passwords.items() if r != "replica"}
        config.write_text(
            config_files.sentinel_conf(
                roles,
                bind="127.0.0.1",
                port=self.port,
                master=self.master,
                quorum=self.quorum,
                dir=self.work,
            )
        )
        with open(self.work / "sentinel.log", "ab") as out:
            self.process = subprocess.Popen(
                ["/usr/bin/redis-sentinel", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = self.client()
        wait_until(lambda: _answers(client), self.process, 10, "redis-sentinel")
        return self

    def client(self, role="admin"):
        return redis.Redis(
            port=self.port,
            username=role,
            password=self.passwords[role],
            socket_timeout=2,
            socket_connect_timeout=1,
        )

    def master_address(self):
        host, port = self.client().sentinel_get_master_addr_by_name("beagle")
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _answers(client):
    try:
        return client.ping()
    except redis.RedisError:
        return False


class RedisGroup:
    """A master and ``replicas`` replicas of it, watched by ``sentinels`` Sentinels (a
    majority of them must agree the master is down)."""

    def __init__(self, work, replicas=2, sentinels=3, key_prefix="beagle"):
        self.work = Path(work)
        self.passwords = {r: secrets.token_hex(16) for r in redis_users.ROLES}
        master = RedisServer(
            self.work / "redis-0", key_prefix=key_prefix, passwords=self.passwords, inspector=True
        )
        self.servers = [master]
        self.replica_count, self.sentinel_count = replicas, sentinels
        self.sentinels = []

    def start(self):
        master = self.servers[0].start()
        address = f"127.0.0.1:{master.port}"
        for n in range(1, self.replica_count + 1):
            replica = RedisServer(
                self.work / f"redis-{n}",
                key_prefix=self.servers[0].key_prefix,
                passwords=self.passwords,
                master=address,
                inspector=True,
            )
            self.servers.append(replica.start())
        quorum = self.sentinel_count // 2 + 1
        self.sentinels = [
            Sentinel(self.work / f"sentinel-{n}", self.passwords, address, quorum).start()
            for n in range(self.sentinel_count)
        ]
        wait_until(
            lambda: self.replicas_in_step(),
            self.sentinels[0].process,
            20,
            "the replicas' first sync",
        )
        # A Sentinel learns of the replicas from the master's INFO (every 10 s) and of the
        # others from their hellos: one that knows neither cannot elect a new master.
        wait_until(self.sentinels_see_all, self.sentinels[0].process, 30, "the Sentinels' view")
        return self

    def sentinels_see_all(self):
        try:
            views = [sentinel.client().sentinel_master("beagle") for sentinel in self.sentinels]
        except redis.RedisError:
            return False
        return all(
            view["num-slaves"] == self.replica_count
            and view["num-other-sentinels"] == self.sentinel_count - 1
            for view in views
        )

    def replicas_in_step(self):
        info = redis.Redis.from_url(self.servers[0].url).info("replication")
        return info.get("connected_slaves", 0) == self.replica_count

    @property
    def sentinel_setting(self):
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def url_for(self, role):
        return self.servers[0].url_for(role)

    @property
    def role_urls(self):
        return {role: self.url_for(role) for role in ("web", "worker")}

    def server_at(self, address):
        return next(s for s in self.servers if f"127.0.0.1:{s.port}" == address)

    def master(self):
        return self.server_at(self.sentinels[0].master_address())

    def kill(self, server):
        """kill -9: no goodbye to anyone."""
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)

    def stop(self):
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            if server.process and server.process.poll() is None:
                server.stop()


def gist(body):
    """An answer's error without its request id or figures, so alike answers count as one."""
    found = re.search(r'"error":"([^"]*)"', body)
    return re.sub(r"\d+(\.\d+)?", "N", found.group(1) if found else body[:90])


class Load:
    """A closed loop of ``concurrency`` clients posting ``image`` to ``url`` until stopped
    (or ``max_seconds``): per request, its start and end (monotonic), status (or the
    connection error's name), Retry-After and request id. Each client waits ``timeout`` s
    for an answer."""

    def __init__(self, url, image, concurrency=16, max_seconds=120, headers=None, timeout=30):
        self.url, self.image, self.headers, self.timeout = url, image, headers or {}, timeout
        self.concurrency, self.max_seconds = concurrency, max_seconds
        self.samples, self.lock, self.done = [], threading.Lock(), threading.Event()
        self.odd = {}  # (status, the body's first words) -> count, for answers not 200
        self.threads = []

    def start(self):
        self.began = time.monotonic()
        self.threads = [threading.Thread(target=self._run) for _ in range(self.concurrency)]
        for thread in self.threads:
            thread.start()
        return self

    def _run(self):
        session = requests.Session()
        while not self.done.is_set() and time.monotonic() - self.began < self.max_seconds:
            started = time.monotonic()
            try:
                response = session.post(
                    self.url,
                    files={"image": ("i.png", self.image)},
                    headers=self.headers,
                    timeout=self.timeout,
                )
                status, retry = response.status_code, response.headers.get("Retry-After")
                request_id = response.headers.get("X-Request-ID")
                said = gist(response.text) if status != 200 else ""
            except requests.RequestException as exc:
                status, retry, request_id, said = type(exc).__name__, None, None, str(exc)[:90]
            with self.lock:
                self.samples.append((started, time.monotonic(), status, retry, request_id))
                if said:
                    self.odd[(status, said)] = self.odd.get((status, said), 0) + 1

    def stop(self):
        self.done.set()
        for thread in self.threads:
            thread.join()
        return self.samples

    def summary(self, fault_at):
        """Counts, the longest request and the time from ``fault_at`` to the first 200
        that began after it."""
        statuses = {}
        for _, _, status, _, _ in self.samples:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        after = [
            end for start, end, status, _, _ in self.samples if status == 200 and start >= fault_at
        ]
        return {
            "requests": len(self.samples),
            "statuses": statuses,
            "longest_s": round(max(end - start for start, end, *_ in self.samples), 2),
            "first_200_after_s": round(min(after) - fault_at, 2) if after else None,
            **({"not_200": self.odd} if self.odd else {}),
        }
