"""POST /predict, /healthz and /readyz through real Apache + mod_wsgi, Redis and workers."""

import base64
import io
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from helpers import daemon_pids, predict, sample, wait_queued
from PIL import Image

from app.queue import Shed
from app.web import create_app
from app.web.dispatch import SLOT_WAIT_S, in_flight_slot
from app.web.resources import beagle


def error_of(response, status):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["success"] is False and body["error"] and "request_id" in body
    return body["error"]


@pytest.mark.parametrize("form", ["multipart", "image/png", "json"])
def test_every_sample_is_classified_correctly_in_every_form(stack, form):
    for digit in range(10):
        response = predict(stack.url, sample(digit), form)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True
        assert body["predictions"][0]["label"] == str(digit)
        assert body["model"] == {"name": "digits", "version": 1}
        assert body["request_id"] == response.headers["X-Request-ID"]
        assert len(body["predictions"]) == 5
        assert body["predictions"][0]["probability"] > 0.5


def test_options_model_version_top_k(stack):
    body = predict(stack.url, sample(4), model="digits", version="1", top_k="2").json()
    assert [p["label"] for p in body["predictions"]][:1] == ["4"]
    assert len(body["predictions"]) == 2
    as_json = predict(stack.url, sample(4), "json", model="digits", version=1, top_k=1).json()
    assert len(as_json["predictions"]) == 1
    as_query = requests.post(
        stack.url + "/predict?top_k=3",
        data=sample(4),
        headers={"Content-Type": "image/png"},
        timeout=10,
    ).json()
    assert len(as_query["predictions"]) == 3


def test_data_url_base64_is_accepted(stack):
    data_url = "data:image/png;base64," + base64.b64encode(sample(2)).decode()
    body = requests.post(stack.url + "/predict", json={"image": data_url}, timeout=10).json()
    assert body["predictions"][0]["label"] == "2"


def test_bad_input_gets_json_4xx_and_the_worker_stays_up(stack):
    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, "PNG", optimize=True)
    photo = io.BytesIO()
    Image.effect_noise((300, 300), 50).convert("RGB").save(photo, "JPEG")
    cases = [
        (predict(stack.url, b"just some text\n"), 400, "not an image"),
        (predict(stack.url, b"", "image/png"), 400, "empty"),
        (predict(stack.url, photo.getvalue()[:2000]), 400, "truncated"),
        (predict(stack.url, huge.getvalue()), 413, "pixels"),
        (predict(stack.url, b"hello", "text/plain"), 415, "text/plain"),
        (predict(stack.url, sample(1), model="nope"), 404, "'nope' is not served"),
        (predict(stack.url, sample(1), version="7"), 404, "no version 7"),
        (predict(stack.url, sample(1), top_k="lots"), 400, "top_k"),
        (predict(stack.url, sample(1), top_k="0"), 400, "top_k"),
        (requests.post(stack.url + "/predict", files={"file": ("x", sample(1))}), 400, "'image'"),
        (requests.post(stack.url + "/predict", json={"picture": "x"}), 400, "JSON body"),
        (requests.post(stack.url + "/predict", json=[1, 2]), 400, "JSON body"),
        (requests.post(stack.url + "/predict", json={"image": "%%%not base64"}), 400, "base64"),
        (
            requests.post(
                stack.url + "/predict",
                data=b"{not json",
                headers={"Content-Type": "application/json"},
            ),
            400,
            "JSON body",
        ),
        (requests.get(stack.url + "/predict"), 405, ""),
        (requests.get(stack.url + "/nowhere"), 404, ""),
    ]
    for response, status, words in cases:
        assert words in error_of(response, status)
    limit = stack.apache.settings.max_image_bytes
    assert "limit is" in error_of(predict(stack.url, b"\xff" * (limit + 1), "image/jpeg"), 413)
    refused_by_apache = predict(stack.url, b"\xff" * (limit * 2), "image/jpeg")
    assert "too large" in error_of(refused_by_apache, 413)
    chunked = requests.post(
        stack.url + "/predict",
        data=iter([sample(5)[:100], sample(5)[100:]]),
        headers={"Content-Type": "image/png"},
    )
    assert chunked.json()["predictions"][0]["label"] == "5"
    assert "model must be" in error_of(predict(stack.url, sample(1), model="../etc"), 400)
    assert all(p.poll() is None for p in stack.processes)
    assert predict(stack.url, sample(6)).json()["predictions"][0]["label"] == "6"


def test_health_and_readiness(stack):
    assert requests.get(stack.url + "/healthz").json() == {"status": "ok"}
    ready = requests.get(stack.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"]["digits"] == {"versions": [1], "live_workers": 1}


def test_apache_reveals_nothing_and_serves_no_code(stack):
    response = requests.get(stack.url + "/healthz")
    assert response.headers["Server"] == "Apache"
    for path in (
        "/wsgi/beagle.wsgi",
        "/app/web/__init__.py",
        "/code/app/web/__init__.py",
        "/apache/",
    ):
        assert requests.get(stack.url + path).status_code == 404


def test_web_processes_run_python_without_tensorflow(stack):
    pids = daemon_pids(stack.apache.process.pid)
    assert len(pids) == stack.apache.settings.web_processes
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libpython3" in maps and "PIL" in maps
        assert "tensorflow" not in maps
        assert Path(f"/proc/{pid}/status").read_text().count("\nUid:\t33\t") == 1  # www-data


def test_no_live_worker_is_503_with_retry_after(start_stack):
    stack = start_stack(heartbeat_ttl=2.0)
    assert predict(stack.url, sample(3)).status_code == 200
    stack.workers[0].stop()
    # A stopped worker counts as live for heartbeat_ttl, so that a restart refuses nothing.
    time.sleep(2.0 + 1.0)  # the TTL, plus the web process's 1 s registry cache
    response = predict(stack.url, sample(3))
    assert "no live worker" in error_of(response, 503)
    assert response.headers["Retry-After"] == "1"
    ready = requests.get(stack.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False


def assert_all_answered_while_queued(stack, client, waiting):
    """``waiting`` requests sent while the stack's worker is paused (alive to the registry,
    answering nothing) are all queued, then all answered 200 once it resumes."""
    worker = stack.workers[0]
    assert predict(stack.url, sample(3)).status_code == 200
    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(predict(stack.url, sample(3), timeout=60)))
        for _ in range(waiting)
    ]
    worker.signal(signal.SIGSTOP)  # alive to the registry, answering nothing
    try:
        for thread in threads:
            thread.start()
        wait_queued(client, stack.settings, waiting, timeout=20)
    finally:
        worker.signal(signal.SIGCONT)
        for thread in threads:
            thread.join()
    failed = [f"{r.status_code} {r.text}" for r in answers if r.status_code != 200]
    assert len(answers) == waiting and failed == [], failed[:3]


def test_every_in_flight_slot_of_a_web_process_gets_a_redis_connection(start_stack, client):
    """A web process lets web_threads − 2 requests wait on their answers at once, each on a
    Redis connection of its own: its pool holds them all. (redis-py's default pool holds
    100: the bench's c=128 saw 503s "Redis is unavailable (MaxConnectionsError)".)"""
    stack = start_stack(request_timeout=30.0, web_threads=128)
    assert_all_answered_while_queued(stack, client, stack.settings.web_threads - 4)


def test_a_web_process_of_the_default_threads_holds_the_bench_s_128_clients(start_stack, client):
    """A 2-core host runs one web process (one per two cores), which holds as many requests
    waiting on their answers as two processes of 128 threads did: the bench's 128 clients
    on a slow model are all queued and answered, none refused as `busy` (with 128 threads a
    process, 126 slots, the two past them were refused again and again)."""
    stack = start_stack(request_timeout=30.0, web_processes=1)
    assert_all_answered_while_queued(stack, client, 128)  # the bench's top level


def test_a_request_waits_briefly_for_an_in_flight_slot_before_it_is_refused():
    """mod_wsgi hands each request to whichever daemon process accepts it first, so one
    process may fill its slots while another has room (the bench's c=128 saw a few 503
    `busy`): a request waits a moment for a slot to free before it is refused. In one
    process, without Apache, so that the test decides when the slot frees."""
    app = create_app({"web_threads": 4, "redis_url": "redis://127.0.0.1:1/0"})  # 2 slots
    with app.app_context():
        slots = beagle().slots
        assert slots.acquire(blocking=False) and slots.acquire(blocking=False)
        threading.Timer(0.01, slots.release).start()
        with in_flight_slot():  # the slot freed meanwhile
            began = time.monotonic()
            with pytest.raises(Shed) as refused, in_flight_slot():
                pass  # none frees: refused after the wait
            waited = time.monotonic() - began
    print(f"\nevery slot taken: refused after {waited * 1000:.0f} ms")
    assert refused.value.reason == "busy" and SLOT_WAIT_S <= waited < SLOT_WAIT_S + 0.2


def test_deadline_504_and_full_queue_503(start_stack, client):
    stack = start_stack(request_timeout=2.0, max_queue=2)
    worker = stack.workers[0]
    assert predict(stack.url, sample(3)).status_code == 200
    worker.signal(signal.SIGSTOP)  # alive to the registry, answering nothing
    try:
        slow = []
        threads = [
            threading.Thread(target=lambda: slow.append(predict(stack.url, sample(3))))
            for _ in range(2)
        ]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        wait_queued(client, stack.settings, 2, timeout=5)
        shed = predict(stack.url, sample(3))
        assert "requests waiting" in error_of(shed, 503)
        assert shed.headers["Retry-After"] == "1"
        for thread in threads:
            thread.join()
        assert 1.9 < time.monotonic() - began < 3.5
        for response in slow:
            assert "deadline" in error_of(response, 504)
    finally:
        worker.signal(signal.SIGCONT)
    # The expired requests are skipped without inference (until then they fill the queue:
    # a request sent in that moment gets a 503), and service resumes.
    wait_queued(client, stack.settings, 0)
    assert predict(stack.url, sample(8)).json()["predictions"][0]["label"] == "8"
    worker.stop()
    assert "2 expired" in worker.log_path.read_text()
