"""The worker: its classify step on the real bundled model, and real worker processes
under SIGTERM (warm stop finishes the batch; a second signal stops at once)."""

import io
import os
import random
import signal
import subprocess
import threading
import time
import uuid

import pytest
import redis
from helpers import make_settings, sample, submit, wait_for, wait_pending, wait_result
from old_redis import old_redis_server
from PIL import Image

from app.config import model_pins
from app.keys import GROUP, Keys
from app.queue import Entry, Queue, Request
from app.redis_connection import server_version
from app.worker import repository
from app.worker.loaded_models import LoadedModels
from app.worker.loop import Worker
from models import slow_model
from tools.devstack import RedisServer, WorkerProcess, free_port, wait_until


def digit_pixels(digit, side=32):
    image = Image.open(io.BytesIO(sample(digit))).convert("L")
    return image.resize((side, side), Image.Resampling.BILINEAR).tobytes()


def entry(digit=3, timeout_s=10.0, version=None, top_k=3, deliveries=1, model="digits"):
    """An entry queued now (its id carries the time), for ``version`` (None: newest)."""
    request = Request(
        uuid.uuid4().hex, int(timeout_s * 1000), top_k, (32, 32, 1), digit_pixels(digit)
    )
    stream = Keys("test").stream(model, version)
    return Entry(
        stream,
        model,
        version,
        f"{int(time.time() * 1000)}-0".encode(),
        request,
        deliveries,
        request_id=request.request_id,
    )


@pytest.fixture(scope="module")
def digits_models():
    from app.config import PROJECT_ROOT

    models = LoadedModels(PROJECT_ROOT / "models", model_pins("digits"))
    models.refresh()
    return models


@pytest.fixture
def worker(settings, digits_models):
    return Worker(settings, models=digits_models)


def test_selection_parses_names_and_pins():
    models = LoadedModels("/nowhere", model_pins("digits, resnet50:2,resnet50:3"))
    assert models.pins == {"digits": set(), "resnet50": {2, 3}}
    assert LoadedModels("/nowhere", model_pins("")).pins == {}


def test_classify_answers_each_sample_with_its_digit(worker):
    batch = [entry(d) for d in range(10)]
    answers, skipped = worker.classify(batch)
    assert not skipped
    labels = [answer["predictions"][0]["label"] for _, answer in answers]
    assert labels == [str(d) for d in range(10)]
    assert all(len(answer["predictions"]) == 3 for _, answer in answers)
    assert worker.outcomes.stats["batches"] == 1 and worker.outcomes.stats["requests"] == 10


def test_classify_skips_expired_and_refuses_unknown_versions(worker):
    expired, unknown, good = entry(timeout_s=-1), entry(version=9), entry(7, top_k=0)
    answers, skipped = worker.classify([expired, unknown, good])
    assert skipped == [expired] and worker.outcomes.stats["expired"] == 1
    by_entry = {id(e): a for e, a in answers}
    assert by_entry[id(unknown)] == {
        "ok": False,
        "status": 404,
        "error": "model digits version 9 is not served",
    }
    assert len(by_entry[id(good)]["probabilities"]) == 10  # top_k 0: the whole vector


def test_a_stalled_read_of_redis_clock_does_not_skew_the_deadlines(worker, redis_server):
    """Deadlines are counted on Redis's clock, which each heartbeat reads. A read that
    stalls on its way (here Redis paused for half a second; in the field the worker paused
    or descheduled) would put the worker's idea of it off by half the stall, and requests
    past their deadline would run as if in time."""

    def off_by():
        seconds, micros = worker.redis.time()
        return abs(worker.heartbeat.redis_now() - (seconds + micros / 1e6))

    worker._heartbeat()
    assert off_by() < 0.05
    worker.heartbeat.next_at = 0.0  # the next heartbeat is due now
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    resume = threading.Timer(0.5, os.kill, (redis_server.process.pid, signal.SIGCONT))
    resume.start()
    try:
        worker._heartbeat()
    finally:
        resume.join()
    assert off_by() < 0.05


def test_classify_gives_up_after_max_attempts(worker):
    poisoned = entry(deliveries=worker.settings.max_attempts + 1)
    answers, _ = worker.classify([poisoned, entry(5)])
    assert answers[0][1]["ok"] is False and answers[0][1]["status"] == 500
    assert answers[1][1]["predictions"][0]["label"] == "5"


def test_malformed_entry_is_answered_and_dropped(redis_server, settings, client, worker):
    keys = Keys(settings.key_prefix)
    queue = Queue(client, keys)
    stream = keys.stream("digits")
    queue.ensure_group(stream)
    client.xadd(stream, {"id": "abc", "shape": "not,a,shape"})
    batch = queue.read_new([stream], "w", 10, 100)
    assert batch[0].request is None and "malformed" in batch[0].problem
    worker.reply(worker.classify(batch))
    assert wait_result(queue, "abc", 1)["status"] == 400
    assert client.xlen(stream) == 0


@pytest.fixture
def slow_worker(tmp_path, redis_server, client):
    slow_model(tmp_path)
    settings = make_settings(
        redis_server.url, model_repository=str(tmp_path), max_batch_size=8, claim_idle=1.0
    )
    workers = []

    def start(name):
        worker = WorkerProcess(settings, name, tmp_path / f"{name}.log").start()
        workers.append(worker)
        return worker

    keys = Keys(settings.key_prefix)
    yield start, Queue(client, keys), keys.stream("slow")
    for worker in workers:
        worker.process.kill()


def test_an_idle_worker_waits_for_the_next_request_in_its_last_reply_s_round_trip(tmp_path):
    """Requests one at a time: after each answer the queue is empty, and the worker's
    wait for the next rides on the round trip that sends the answer, so each request
    costs it one read of Redis, not a read that finds nothing and then a wait. A Redis of
    its own: Redis counts the reads of every client."""
    server = RedisServer(tmp_path, inspector=True).start()
    settings = make_settings(server.url)
    client = redis.Redis.from_url(server.url, socket_timeout=30)
    worker = WorkerProcess(settings, "lone", tmp_path / "lone.log").start()
    try:
        queue = Queue(client, Keys(settings.key_prefix))
        wait_result(queue, submit(queue, "digits", 1, (32, 32, 1))[0], 30)  # warm
        client.config_resetstat()
        count = 20
        for _ in range(count):
            assert wait_result(queue, submit(queue, "digits", 1, (32, 32, 1))[0], 10)["ok"]
        reads = int(client.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0))
    finally:
        worker.process.kill()
        server.stop()
    print(f"\n{count} requests one at a time: {reads} reads of the queue")
    # Two a request before. A pass that outlasts the time it is expected to take (a share
    # of them here) has the next batch read while it runs, a second read.
    assert reads <= count * 7 // 4


def test_sigterm_finishes_the_batch_then_exits(slow_worker, client):
    start, queue, stream = slow_worker
    ids = submit(queue, "slow", 8, (128, 128, 3))  # queued first: one batch of 8
    worker = start("warm")
    wait_pending(client, stream, 8)
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0
    answers = [wait_result(queue, i, 5) for i in ids]
    assert all(a and a["ok"] for a in answers)
    assert client.xlen(stream) == 0 and client.xpending(stream, GROUP)["pending"] == 0
    log_text = worker.log_path.read_text()
    assert "SIGTERM, finishing the batch in hand" in log_text
    assert "stopped after" in log_text and "8 requests" in log_text


def test_the_next_batch_is_read_while_a_pass_runs(slow_worker, client):
    """Three batches queued: while the first runs (a second here), the worker already holds
    the second, and it answers all three."""
    start, queue, stream = slow_worker
    ids = submit(queue, "slow", 24, (128, 128, 3))
    start("eager")
    wait_pending(client, stream, 16, timeout=30)
    assert not any(client.exists(queue.keys.result(i)) for i in ids)  # the first still runs
    answers = [wait_result(queue, i, 60) for i in ids]
    assert all(a and a["ok"] for a in answers)
    assert client.xlen(stream) == 0


def test_second_sigterm_stops_at_once_and_another_worker_claims(slow_worker, client):
    start, queue, stream = slow_worker
    ids = submit(queue, "slow", 8, (128, 128, 3))
    worker = start("cold")
    wait_pending(client, stream, 8)
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    time.sleep(0.1)
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(30) == -signal.SIGTERM
    assert time.monotonic() - began < 0.8  # a batch of 8 takes over a second here
    assert client.xpending(stream, GROUP)["pending"] == 8  # nothing lost: still pending
    start("rescuer")
    answers = [wait_result(queue, i, 30) for i in ids]
    assert all(a and a["ok"] for a in answers)


def test_a_queue_lost_mid_batch_is_joined_again_and_the_batch_in_hand_answered(slow_worker, client):
    """As on a new master that lacks the queue (failed over before it was copied), here
    without Sentinel: the stream and its group vanish while a batch runs. The worker's next
    read gets NOGROUP; it joins again, answers the batch in hand and serves what comes."""
    start, queue, stream = slow_worker
    ids = submit(queue, "slow", 8, (128, 128, 3))
    worker = start("rejoin")
    wait_pending(client, stream, 8)
    client.delete(stream)
    answers = [wait_result(queue, i, 30) for i in ids]
    assert all(a and a["ok"] for a in answers)
    wait_for(lambda: "joining again" in worker.log_path.read_text(), 10, "NOGROUP noticed")
    later = [wait_result(queue, i, 30) for i in submit(queue, "slow", 2, (128, 128, 3))]
    assert all(a and a["ok"] for a in later)


STOPS = 12


def never_loading_model(repo):
    """An ONNX model whose file is a FIFO that nothing writes to: its load never ends (a
    huge model on a slow disk takes minutes)."""
    path = repo / "stuck" / "1"
    path.mkdir(parents=True)
    os.mkfifo(path / "model.onnx")
    repository.publish(path, "model.onnx", 8, 8, 1, ["a", "b"], runtime="onnx")


@pytest.mark.parametrize("idle", ["redis_unreachable", "no_model", "loading"])
def test_an_idle_worker_stops_on_the_first_signal_at_any_moment(idle, redis_server, tmp_path):
    """Idle with Redis unreachable (retrying every second), with no model to serve (waiting
    for one) or loading its model (a load no signal interrupts, in C): a SIGTERM or SIGINT at
    any moment once it runs (its handlers are in before it logs its cores) is a clean stop
    within a few seconds."""
    rng = random.Random(idle)
    url = f"redis://127.0.0.1:{free_port()}/0" if idle == "redis_unreachable" else redis_server.url
    repo = tmp_path / "repository"
    repo.mkdir()
    if idle == "loading":
        never_loading_model(repo)
    settings = make_settings(url, model_repository=str(repo))
    stops = []
    for n in range(STOPS):
        worker = WorkerProcess(settings, f"idle-{n}", tmp_path / f"idle-{n}.log")
        worker.start(wait=False)
        log_path = worker.log_path
        wait_for(lambda: "on cores" in log_path.read_text(), 30, "the worker's start")  # noqa: B023
        time.sleep(rng.uniform(0.0, 2.5))
        signum = signal.SIGINT if n % 2 else signal.SIGTERM
        began = time.monotonic()
        worker.signal(signum)
        try:
            code = worker.process.wait(8)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            code = None
        stops.append(round(time.monotonic() - began, 2))
        log_text = worker.log_path.read_text()
        assert code == 0, f"stop {n} ({signum!r}): exit {code}\n{log_text}"
        assert "stopped after" in log_text
    print(f"\n{idle}: {STOPS} stops, slowest {max(stops)} s: {stops}")
    assert max(stops) < 5


def test_a_redis_too_old_stops_the_worker_for_good_with_a_clear_message(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            str(old_redis_server()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "pw",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://:pw@127.0.0.1:{port}/0"

        def answers():
            try:
                return server_version(redis.Redis.from_url(url, protocol=2)) == "5.0.6"
            except redis.ConnectionError:
                return False

        wait_until(answers, server, 10, "redis-server 5.0.6")
        worker = WorkerProcess(make_settings(url), "old", tmp_path / "old.log").start(wait=False)
        # 78 is EX_CONFIG, which the unit's RestartPreventExitStatus keeps from restarting
        assert worker.process.wait(120) == 78
    finally:
        server.terminate()
    assert (
        "Redis 5.0.6 is too old: Beagle needs 6.2 or newer (XAUTOCLAIM, which recovers "
        "a dead worker's requests)"
    ) in worker.log_path.read_text()


def test_entries_whose_numbers_are_not_numbers_are_answered_and_the_worker_goes_on(
    redis_server, client, tmp_path
):
    settings = make_settings(redis_server.url)
    keys = Keys(settings.key_prefix)
    queue, stream = Queue(client, keys), keys.stream("digits")
    worker = WorkerProcess(settings, "picky", tmp_path / "picky.log").start()
    try:
        good = Request(uuid.uuid4().hex, 30_000, 1, (32, 32, 1), digit_pixels(3))
        for field, value in (
            ("timeout_ms", "x"),
            ("top_k", "1.5"),
            ("top_k", "²"),
            ("shape", "32,32,١"),
        ):
            bad = {**good.fields(), "id": uuid.uuid4().hex, field: value}
            client.xadd(stream, bad)
            answer = wait_result(queue, bad["id"], 10)
            assert answer["status"] == 400 and "malformed" in answer["error"], answer
        queue.submit("digits", None, [good], 100, 60)
        assert wait_result(queue, good.request_id, 10)["ok"]
        assert worker.process.poll() is None
    finally:
        worker.stop()


def test_version_folders_not_named_by_ascii_digits_are_ignored(tmp_path):
    import shutil

    from app.config import PROJECT_ROOT
    from app.worker import repository

    for name in ("1", "²", "١٢", "3a"):
        shutil.copytree(PROJECT_ROOT / "models" / "digits" / "1", tmp_path / "digits" / name)
    assert repository.versions(tmp_path, "digits") == [1]
    models = LoadedModels(tmp_path, ())
    models.refresh()
    assert models.versions() == {"digits": [1]}
