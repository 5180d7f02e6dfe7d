"""The Redis queue protocol, against a real redis-server."""

import time
import uuid

import pytest
from helpers import wait_result

from app.keys import GROUP, Keys
from app.queue import Outgoing, Queue, Request, Shed


@pytest.fixture
def queue(client, settings):
    queue = Queue(client, Keys(settings.key_prefix))
    queue.ensure_group(queue.keys.stream("m"))
    queue.ensure_group(queue.keys.stream("m"))  # idempotent
    return queue


def request(timeout_s=10.0):
    return Request(uuid.uuid4().hex, int(timeout_s * 1000), 5, (2, 2, 1), b"\x00\x01\x02\x03")


def put(queue, *sent, version=None, max_queue=10, max_wait_s=60):
    queue.submit("m", version, list(sent) or [request()], max_queue, max_wait_s)


def take(queue, consumer="w1", count=10, block_ms=100, version=None):
    return queue.read_new([queue.keys.stream("m", version)], consumer, count, block_ms)


def reply(queue, answers, skipped):
    pipe = queue.redis.pipeline()
    queue.reply(pipe, Outgoing(answers, skipped), result_ttl=5)
    pipe.execute()


def test_submit_refuses_beyond_the_backlog_bound(queue):
    put(queue, max_queue=2)
    put(queue, max_queue=2)
    with pytest.raises(Shed) as refused:
        queue.submit("m", None, [request()], 2, 60)
    assert (refused.value.reason, refused.value.why) == ("full", "model 'm' has 2 requests waiting")
    assert queue.backlog("m") == 2


def test_a_request_of_several_images_is_queued_whole_or_not_at_all(queue):
    put(queue, request(), request(), max_queue=3)
    with pytest.raises(Shed, match="has 2 requests waiting"):
        queue.submit("m", None, [request(), request()], 3, 60)
    assert queue.backlog("m") == 2  # not 3: nothing half-queued
    put(queue, request(), max_queue=3)
    assert queue.backlog("m") == 3


def test_submit_refuses_when_the_oldest_undelivered_request_waited_too_long(queue):
    put(queue)
    time.sleep(0.06)
    with pytest.raises(Shed) as refused:
        queue.submit("m", None, [request()], 10, max_wait_s=0.05)
    assert refused.value.reason == "slow"
    assert "oldest waiting request has waited 0." in refused.value.why
    assert 0.05 <= queue.oldest_waiting("m") < 1.0
    # Once a worker has taken it, it no longer counts as waiting.
    take(queue, count=1, block_ms=10)
    assert queue.oldest_waiting("m") == 0
    put(queue, max_wait_s=0.05)
    assert queue.backlog("m") == 2


def test_submit_without_a_wait_limit_admits_behind_any_head(queue):
    put(queue)
    time.sleep(0.06)
    put(queue, max_wait_s=None)  # a stalled queue: no worker is taking from it
    assert queue.backlog("m") == 2
    with pytest.raises(Shed) as refused:
        put(queue, max_queue=2, max_wait_s=None)
    assert refused.value.reason == "full"


def test_requests_for_a_version_have_a_stream_of_their_own(queue):
    put(queue, version=2)
    queue.ensure_group(queue.keys.stream("m", 2))  # as a worker holding 2 does on joining
    assert take(queue) == []
    (entry,) = take(queue, version=2)
    assert (entry.model, entry.version) == ("m", 2)
    assert queue.all_streams() == [queue.keys.stream("m"), queue.keys.stream("m", 2)]
    assert queue.backlog("m", versions=[2]) == 1


def test_round_trip_leaves_nothing_behind(queue, client):
    sent = request()
    put(queue, sent)
    (entry,) = take(queue)
    assert entry.request == sent and entry.deliveries == 1 and entry.version is None
    reply(queue, [(entry, {"ok": True, "n": 1})], [])
    assert wait_result(queue, sent.request_id, 1) == {"ok": True, "n": 1}
    stream = queue.keys.stream("m")
    assert client.xlen(stream) == 0
    assert client.xpending(stream, GROUP)["pending"] == 0
    assert client.exists(queue.keys.result(sent.request_id)) == 0


def test_a_deadline_is_counted_on_redis_clock_from_the_entry(queue, client):
    put(queue, request(timeout_s=0.5))
    (entry,) = take(queue)
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    assert not entry.expired(now_ms) and entry.expired(now_ms + 600)


def test_unread_result_expires(queue, client):
    sent = request()
    put(queue, sent)
    (entry,) = take(queue)
    reply(queue, [(entry, {"ok": True})], [])
    assert 0 < client.ttl(queue.keys.result(sent.request_id)) <= 5


def test_read_waits_at_most_block_ms(queue):
    began = time.monotonic()
    assert take(queue, block_ms=200) == []
    assert 0.15 < time.monotonic() - began < 1.0


def test_wait_result_times_out(queue):
    began = time.monotonic()
    assert wait_result(queue, "nobody", 0.3) is None
    assert 0.25 < time.monotonic() - began < 1.0
    assert wait_result(queue, "nobody", 0) is None


def test_stale_entries_are_claimed_with_their_delivery_count(queue):
    sent = request()
    put(queue, sent)
    stream = queue.keys.stream("m")
    assert len(take(queue, "dead")) == 1
    assert queue.claim_stale(stream, "alive", min_idle_s=5, count=10) == []  # not idle enough
    time.sleep(0.05)
    (claimed,) = queue.claim_stale(stream, "alive", min_idle_s=0.01, count=10)
    assert claimed.request == sent and claimed.deliveries == 2


def test_held_entries_stay_with_their_worker(queue, client):
    put(queue)
    stream = queue.keys.stream("m")
    (entry,) = take(queue, "busy")
    for _ in range(3):
        time.sleep(0.06)
        pipe = client.pipeline()
        queue.hold(pipe, "busy", [entry])
        pipe.execute()
    assert queue.claim_stale(stream, "other", min_idle_s=0.1, count=10) == []
    (pending,) = client.xpending_range(stream, GROUP, "-", "+", 10)
    assert pending["consumer"] == b"busy" and pending["times_delivered"] == 1


def test_skipped_entries_are_acknowledged_without_a_result(queue, client):
    sent = request(timeout_s=0)
    put(queue, sent)
    (entry,) = take(queue)
    reply(queue, [], [entry])
    assert client.xlen(queue.keys.stream("m")) == 0
    assert client.exists(queue.keys.result(sent.request_id)) == 0


def test_consumers_of_dead_workers_are_pruned(queue, client):
    put(queue)
    (entry,) = take(queue, "gone", count=1, block_ms=10)
    reply(queue, [(entry, {"ok": True})], [])
    stream = queue.keys.stream("m")
    assert [c["pending"] for c in client.xinfo_consumers(stream, GROUP)] == [0]
    queue.prune_consumers(stream, idle_s=3600)
    assert len(client.xinfo_consumers(stream, GROUP)) == 1
    time.sleep(0.02)
    queue.prune_consumers(stream, idle_s=0.01)
    assert client.xinfo_consumers(stream, GROUP) == []
