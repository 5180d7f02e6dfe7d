"""The Redis queue protocol, against a real redis-server."""

import threading
import time
import uuid

import pytest
import redis
from helpers import public_tempdir, wait_result

from app.keys import GROUP, Keys
from app.queue import Outgoing, Queue, Request, Shed
from tools.devstack import RedisServer


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


def test_a_refused_submit_that_waits_for_its_answer_is_refused_at_once(queue):
    put(queue, max_queue=1)
    sent = request()
    started = time.monotonic()
    with pytest.raises(Shed, match="has 1 requests waiting"):
        queue.submit("m", None, [sent], 1, 60, wait_s=5.0)
    assert time.monotonic() - started < 1.0  # not the wait's 5 s
    assert queue.backlog("m") == 1
    assert not queue.redis.exists(queue.keys.refused(sent.request_id))  # the wait popped it


def test_a_submit_that_waits_brings_back_the_first_answer(queue):
    """The wait's first pop rides with the submit; the rest come from wait_results."""
    sent = [request(), request()]
    taken = []

    def answer_in_a_while():
        (entry, *rest) = take(queue, count=2, block_ms=2000)
        taken.extend([entry, *rest])
        reply(queue, [(entry, {"ok": True, "n": 0})], [])

    worker = threading.Thread(target=answer_in_a_while)
    worker.start()
    answers = queue.submit("m", None, sent, 10, 60, wait_s=5.0)
    worker.join()
    assert answers == {sent[0].request_id: {"ok": True, "n": 0}}
    reply(queue, [(taken[1], {"ok": True, "n": 1})], [])
    waited = queue.wait_results([r.request_id for r in sent], lambda: 1.0, answers)
    assert waited == [{"ok": True, "n": 0}, {"ok": True, "n": 1}]


def test_a_waiting_submit_redis_fails_inside_exec_raises_at_once(queue):
    """An error inside the transaction (here the stream is a string) ends the submit at
    once, with Redis's error: the wait after it would otherwise run to its timeout."""
    queue.redis.set(queue.keys.stream("w"), "not a stream")
    started = time.monotonic()
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        queue.submit("w", None, [request()], 10, 60, wait_s=5.0)
    assert time.monotonic() - started < 1.0  # not the wait's 5 s
    queue.redis.delete(queue.keys.stream("w"))


def test_a_waiting_submit_redis_refuses_to_queue_raises_at_once():
    """Out of memory, Redis refuses the XADDs as they are queued and aborts the
    transaction: the submit raises its error at once, where the wait would run on."""
    server = RedisServer(public_tempdir("beagle-redis-"), maxmemory="4mb").start()
    try:
        client = redis.Redis.from_url(server.url_for("web"), socket_timeout=30)
        queue = Queue(client, Keys("beagle"))
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            for _ in range(100):
                client.xadd(queue.keys.stream("m"), {"pixels": b"x" * 100_000})
        started = time.monotonic()
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            queue.submit("m", None, [request()], 1000, 60, wait_s=5.0)
        assert time.monotonic() - started < 1.0
    finally:
        server.stop()


def test_a_waiting_submit_whose_pop_alone_fails_leaves_the_request_queued(queue):
    """Queued is queued: an error in the pop (or a stray refusal) is not the admission's;
    the submit returns no answer at once, and the wait after it meets the error."""
    stray, wrong = request(), request()
    queue.redis.lpush(queue.keys.refused(stray.request_id), "full")
    queue.redis.set(queue.keys.result(wrong.request_id), "not a list")
    started = time.monotonic()
    assert queue.submit("m", None, [stray], 10, 60, wait_s=5.0) == {}
    assert queue.submit("m", None, [wrong], 10, 60, wait_s=5.0) == {}
    assert time.monotonic() - started < 1.0 and queue.backlog("m") == 2
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        queue.wait_results([wrong.request_id], lambda: 1.0)
    queue.redis.delete(queue.keys.result(wrong.request_id))


def test_a_waiting_submit_whose_connection_drops_is_not_sent_again(queue, redis_server):
    """Once sent, the requests may be queued: a dropped connection is an error, never a
    second send (redis-py's retry would queue them twice and wait again)."""
    name = f"drops-{uuid.uuid4().hex[:8]}"  # this test's connection among the server's
    named = Queue(redis.Redis.from_url(redis_server.url, client_name=name), queue.keys)
    outcome = []

    def submit():
        try:
            named.submit("m", None, [request()], 10, 60, wait_s=5.0)
        except redis.ConnectionError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=submit)
    started = time.monotonic()
    waiter.start()
    blocked = []
    while not blocked and time.monotonic() - started < 3:
        clients = queue.redis.client_list()
        blocked = [c for c in clients if c["name"] == name and c["cmd"] == "blpop"]
    queue.redis.client_kill_filter(_id=blocked[0]["id"])
    waiter.join(timeout=10)
    assert len(outcome) == 1 and time.monotonic() - started < 2.0
    assert queue.backlog("m") == 1  # queued once


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
