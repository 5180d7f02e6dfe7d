"""Workers never fail or repeat good work, and readiness says what is served now: Redis
failing mid forward pass, batches slower than claim_idle, workers on different versions,
a worker whose clock runs ahead, a model whose only worker stopped. Real processes."""

import shutil
import socket
import subprocess
import time

import pytest
import requests
from helpers import (
    make_settings,
    metric_value,
    predict,
    public_tempdir,
    sample,
    scrape,
    submit,
    wait_for,
    wait_pending,
    wait_result,
)

from app import registry
from app.config import PROJECT_ROOT
from app.keys import GROUP, Keys
from app.queue import Queue
from models import slow_model
from tools.devstack import WorkerProcess, free_port

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
BUNDLED = PROJECT_ROOT / "models" / "digits" / "1"


class Proxy:
    """socat between workers and Redis: stopping it drops their connections, as a network
    blip does; starting it again on the same port lets them reconnect, data intact."""

    def __init__(self, target_port):
        self.port, self.target, self.process = free_port(), target_port, None

    def start(self):
        self.process = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr",
                f"TCP:127.0.0.1:{self.target}",
            ]
        )
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("socat did not start")

    def stop(self):
        self.process.kill()  # its children, one per connection, go with the listener's group
        subprocess.run(["pkill", "-KILL", "-f", f"TCP-LISTEN:{self.port},"])
        self.process.wait()


def worker_status(client, settings, name):
    return registry.status(client, Keys(settings.key_prefix), name)


def claims_renewed(client, stream, times, timeout=30):
    """Wait until a worker's heartbeats have renewed its claim on the stream's first pending
    entry ``times`` times (each renewal resets the entry's idle time)."""
    renewed, idle = 0, -1

    def renewal():
        nonlocal renewed, idle
        now = client.xpending_range(stream, GROUP, "-", "+", 1)[0]["time_since_delivered"]
        renewed, idle = renewed + (now < idle), now
        return renewed >= times

    wait_for(renewal, timeout, f"{times} renewals of the claim")


def test_redis_failing_mid_forward_pass_fails_nothing_and_runs_nothing_twice(
    tmp_path, redis_server, client
):
    slow_model(tmp_path, side=256)  # a pass of 8 lasts several heartbeats even on a fast host
    proxy = Proxy(redis_server.port).start()
    through_proxy = redis_server.url.replace(f":{redis_server.port}/", f":{proxy.port}/")
    settings = make_settings(
        through_proxy, model_repository=str(tmp_path), max_batch_size=8, heartbeat_ttl=1.5
    )  # a beat every 0.5 s
    queue = Queue(client, Keys(settings.key_prefix))
    queue.ensure_group(Keys(settings.key_prefix).stream("slow"))
    ids = submit(queue, "slow", 8, (256, 256, 3))  # queued first: one batch of 8
    worker = WorkerProcess(settings, "blip", tmp_path / "blip.log").start()
    try:
        stream = Keys(settings.key_prefix).stream("slow")
        wait_pending(client, stream, 8)
        # The first beat holding them may come just before the worker reads ahead; from
        # the second on, it beats while it waits for the pass, where the cut must land.
        claims_renewed(client, stream, 2)
        proxy.stop()  # the forward pass of 8 is under way; Redis is out until a beat fails
        wait_for(lambda: "heartbeat failed (" in worker.log_path.read_text(), 10, "a beat")
        proxy.start()
        answers = [wait_result(queue, request_id, 60) for request_id in ids]
    finally:
        worker.stop()
        proxy.stop()
    log = worker.log_path.read_text()
    print(
        f"\nRedis unreachable mid forward pass: {[a['ok'] for a in answers]}; "
        + log[log.index("stopped after") :].splitlines()[0]
    )
    assert all(answer and answer["ok"] for answer in answers), answers
    assert "inference failed" not in log and "1 batches, 8 requests" in log
    assert "heartbeat failed (" in log and "during a forward pass" in log  # the fault took


def test_a_batch_slower_than_claim_idle_keeps_its_claim(tmp_path, redis_server, client):
    side = 192  # the model's input and the images': passes that outlast claim_idle
    slow_model(tmp_path, side=side)
    settings = make_settings(
        redis_server.url, model_repository=str(tmp_path), max_batch_size=4, claim_idle=0.5
    )
    keys = Keys(settings.key_prefix)
    queue = Queue(client, keys)
    workers = [
        WorkerProcess(settings, f"w{n}", tmp_path / f"w{n}.log").start(wait=False) for n in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_live()
        ids = submit(queue, "slow", 16, (side, side, 3))
        answers = [wait_result(queue, request_id, 120) for request_id in ids]
        time.sleep(2)  # a second answer to any of them would arrive by now
        leftovers = list(client.scan_iter(match=keys.pattern("result")))
        ran = sum(worker_status(client, settings, w.name)["requests"] for w in workers)
    finally:
        for worker in workers:
            worker.stop()
    # The fault took: forward passes outlasted claim_idle (their metrics say so).
    passes = client.hgetall(keys.metrics("histograms"))
    prefix = b"inference_seconds|model=slow|le="
    within = sum(
        int(n)
        for field, n in passes.items()
        if field.startswith(prefix)
        and field[len(prefix) :] != b"+Inf"
        and float(field[len(prefix) :]) <= 0.5
    )
    slower = int(passes[b"inference_seconds|model=slow|count"]) - within
    print(f"{slower} forward passes outlasted claim_idle")
    assert slower >= 2
    print(
        f"\nbatches slower than claim_idle, 2 workers: 16 requests, {ran} forward-passed, "
        f"{len(leftovers)} extra answers"
    )
    assert all(answer and answer["ok"] for answer in answers)
    assert ran == 16 and leftovers == []


def repository(*published):
    """A model repository holding the bundled model as each (name, version)."""
    repo = public_tempdir("beagle-models-")
    for name, version in published:
        shutil.copytree(BUNDLED, repo / name / str(version))
    return repo


@pytest.fixture
def two_versions():
    repo = repository(("digits", 1), ("digits", 2))
    yield repo
    shutil.rmtree(repo, ignore_errors=True)


@pytest.fixture
def two_models():
    repo = repository(("digits", 1), ("other", 1))
    yield repo
    shutil.rmtree(repo, ignore_errors=True)


def test_workers_on_different_versions_each_serve_their_own(two_versions, start_stack, tmp_path):
    stack = start_stack(model_repository=str(two_versions), models="digits:1")
    on_two = make_settings(
        stack.settings.redis_url,
        key_prefix=stack.settings.key_prefix,
        model_repository=str(two_versions),
        models="digits:2",
    )
    other = WorkerProcess(on_two, "on-v2", tmp_path / "v2.log").start()
    try:
        time.sleep(2.5)  # both announced, the web's registry cache refreshed
        answers = []
        for n in range(60):
            asked = (1, 2, None)[n % 3]
            body = predict(stack.url, sample(6), **({"version": asked} if asked else {}))
            answers.append((asked, body.status_code, body.json().get("model", {}).get("version")))
    finally:
        other.stop()
    print(f"\nworkers on v1 and v2: {sorted(set(answers), key=str)}")
    assert {status for _, status, _ in answers} == {200}
    assert all(got == asked for asked, _, got in answers if asked)


def test_a_worker_whose_clock_runs_ahead_still_answers_in_time(start_stack, client):
    stack = start_stack(
        worker_env={"LD_PRELOAD": FAKETIME, "FAKETIME": "+30s"}, request_timeout=10.0
    )
    statuses = [predict(stack.url, sample(2)).status_code for _ in range(20)]
    assert statuses == [200] * 20
    # The skew took: the worker's clock (its start time, by its own account) runs ahead.
    started = worker_status(client, stack.settings, stack.workers[0].name)["started"]
    print(f"\nworker clock ahead by {started - time.time():.0f} s: 20/20 answered")
    assert started > time.time() + 20


def test_a_model_without_workers_does_not_make_the_host_unready(two_models, start_stack, tmp_path):
    stack = start_stack(model_repository=str(two_models), models="digits", heartbeat_ttl=2.0)
    on_other = make_settings(
        stack.settings.redis_url,
        key_prefix=stack.settings.key_prefix,
        model_repository=str(two_models),
        models="other",
        heartbeat_ttl=2.0,
    )
    other = WorkerProcess(on_other, "other", tmp_path / "other.log").start()
    time.sleep(1.5)
    assert requests.get(stack.url + "/readyz").json()["models"]["other"]["live_workers"] == 1
    other.stop()
    time.sleep(2.0 + 1.5)  # its heartbeat ages out; the web's cache refreshes
    ready = requests.get(stack.url + "/readyz")
    print(f"\nthe only worker of one model stopped: /readyz {ready.status_code} {ready.text}")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["models"]["other"]["live_workers"] == 0
    assert ready.json()["models"]["digits"]["live_workers"] == 1
    assert metric_value(scrape(stack.url), "beagle_live_workers", model="other") == 0
    assert predict(stack.url, sample(3)).status_code == 200
