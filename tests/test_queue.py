"""The Redis queue protocol, against a real redis-server."""
import time
import uuid

import pytest

from app.keys import GROUP, Keys
from app.queue import Queue, Request


@pytest.fixture
def queue(client, settings):
    queue = Queue(client, Keys(settings.key_prefix))
    queue.ensure_group("m")
    queue.ensure_group("m")  # idempotent
    return queue


def request(deadline_in=10.0):
    return Request(uuid.uuid4().hex, time.time() + deadline_in, "", 5, (2, 2, 1), b"\x00\x01\x02\x03")


def put(queue, sent, max_queue=10, max_wait_s=60):
    refused = queue.submit("m", sent, max_queue, max_wait_s)
    assert refused is None, refused


def reply(queue, answers, skipped):
    pipe = queue.redis.pipeline()
    queue.reply(pipe, answers, skipped, result_ttl=5)
    pipe.execute()


def test_submit_refuses_beyond_the_backlog_bound(queue):
    put(queue, request(), max_queue=2)
    put(queue, request(), max_queue=2)
    assert queue.submit("m", request(), 2, 60) == ("full", "model 'm' has 2 requests waiting")
    assert queue.backlog("m") == 2


def test_submit_refuses_when_the_oldest_undelivered_request_waited_too_long(queue):
    put(queue, request())
    time.sleep(0.06)
    reason, why = queue.submit("m", request(), 10, max_wait_s=0.05)
    assert reason == "slow" and "oldest waiting request has waited 0." in why
    # Once a worker has taken it, it no longer counts as waiting.
    queue.read_new(["m"], "w1", count=1, block_ms=10)
    put(queue, request(), max_wait_s=0.05)
    assert queue.backlog("m") == 2


def test_round_trip_leaves_nothing_behind(queue, client):
    sent = request()
    put(queue, sent)
    (entry,) = queue.read_new(["m"], "w1", count=10, block_ms=100)
    assert entry.request == sent and entry.deliveries == 1
    reply(queue, [(entry, {"ok": True, "n": 1})], [])
    assert queue.wait_result(sent.request_id, 1) == {"ok": True, "n": 1}
    stream = queue.keys.stream("m")
    assert client.xlen(stream) == 0
    assert client.xpending(stream, GROUP)["pending"] == 0
    assert client.exists(queue.keys.result(sent.request_id)) == 0


def test_unread_result_expires(queue, client):
    sent = request()
    put(queue, sent)
    (entry,) = queue.read_new(["m"], "w1", count=10, block_ms=100)
    reply(queue, [(entry, {"ok": True})], [])
    assert 0 < client.ttl(queue.keys.result(sent.request_id)) <= 5


def test_read_waits_at_most_block_ms(queue):
    began = time.monotonic()
    assert queue.read_new(["m"], "w1", count=10, block_ms=200) == []
    assert 0.15 < time.monotonic() - began < 1.0


def test_wait_result_times_out(queue):
    began = time.monotonic()
    assert queue.wait_result("nobody", 0.3) is None
    assert 0.25 < time.monotonic() - began < 1.0
    assert queue.wait_result("nobody", 0) is None


def test_stale_entries_are_claimed_with_their_delivery_count(queue):
    sent = request()
    put(queue, sent)
    assert len(queue.read_new(["m"], "dead", count=10, block_ms=100)) == 1
    assert queue.claim_stale("m", "alive", min_idle_s=5, count=10) == []  # not idle enough
    time.sleep(0.05)
    (claimed,) = queue.claim_stale("m", "alive", min_idle_s=0.01, count=10)
    assert claimed.request == sent and claimed.deliveries == 2


def test_skipped_entries_are_acknowledged_without_a_result(queue, client):
    sent = request(deadline_in=-1)
    put(queue, sent)
    (entry,) = queue.read_new(["m"], "w1", count=10, block_ms=100)
    reply(queue, [], [entry])
    assert client.xlen(queue.keys.stream("m")) == 0
    assert client.exists(queue.keys.result(sent.request_id)) == 0


def test_consumers_of_dead_workers_are_pruned(queue, client):
    put(queue, request())
    (entry,) = queue.read_new(["m"], "gone", count=1, block_ms=10)
    reply(queue, [(entry, {"ok": True})], [])
    stream = queue.keys.stream("m")
    assert [c["pending"] for c in client.xinfo_consumers(stream, GROUP)] == [0]
    queue.prune_consumers("m", idle_s=3600)
    assert len(client.xinfo_consumers(stream, GROUP)) == 1
    time.sleep(0.02)
    queue.prune_consumers("m", idle_s=0.01)
    assert client.xinfo_consumers(stream, GROUP) == []
