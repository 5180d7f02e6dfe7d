"""Fast unit tests of the core logic, no process started: how a batch is split into forward
passes and what a failing pass answers (app/worker/passes.py), what becomes of each entry
(app/worker/outcomes.py), the metrics tally (app/metrics.py) and a model as the web tier
sees it in the registry (app/registry.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from app.keys import Keys
from app.metrics import Tally
from app.queue import Entry, Request
from app.registry import ModelInfo
from app.worker.outcomes import Outcomes
from app.worker.passes import PassResult, compute, plan, prediction, summary
from app.worker.repository import ModelSpec

SHAPE = (2, 2, 1)


def spec(max_batch_size=0, labels=("a", "b", "c")):
    return ModelSpec(
        "m",
        1,
        Path("/nowhere"),
        "model",
        *SHAPE,
        "none",
        "probabilities",
        "tensorflow",
        labels,
        max_batch_size,
    )


class Runner:
    """A model runner: probabilities from the pixels' first byte (class = byte % 3); a
    batch holding a pixel of 255 raises, as a model failing on one input does."""

    def __init__(self, max_batch_size=0):
        self.spec = spec(max_batch_size)
        self.batches = []

    def __call__(self, batch):
        self.batches.append(len(batch))
        if (batch == 255).any():
            raise ValueError("poison pixel\nin the batch")
        out = np.zeros((len(batch), 3), np.float32)
        out[np.arange(len(batch)), batch[:, 0, 0, 0] % 3] = 1.0
        return out

    def __hash__(self):
        return id(self)


def entry(first_byte=1, deliveries=1, timeout_ms=10_000, queued_ms=1_000, top_k=2):
    request = Request(
        f"r{first_byte}-{deliveries}", timeout_ms, top_k, SHAPE, bytes([first_byte, 0, 0, 0])
    )
    return Entry(
        Keys("t").stream("m"),
        "m",
        None,
        f"{queued_ms}-0".encode(),
        request,
        deliveries,
        request_id=request.request_id,
    )


def test_plan_batches_new_entries_up_to_the_cap_and_redelivered_ones_alone():
    capped, uncapped = Runner(max_batch_size=2), Runner()
    new = [entry(n) for n in range(5)]
    again = entry(9, deliveries=2)
    passes = plan([(e, capped) for e in new] + [(again, capped), (entry(7), uncapped)], 32)
    assert [(runner, len(entries)) for runner, entries in passes] == [
        (capped, 2),
        (capped, 2),
        (capped, 1),
        (capped, 1),
        (uncapped, 1),
    ]
    assert passes[3][1] == [again]
    assert [len(p[1]) for p in plan([(entry(n), uncapped) for n in range(5)], 4)] == [4, 1]


def test_compute_runs_each_pass_and_reruns_a_failing_one_entry_by_entry():
    runner = Runner()
    good, poison, other = entry(1), entry(255), entry(2)
    results = compute([(runner, [good, poison, other])], "w")
    assert runner.batches == [3, 1, 1, 1]  # the batch, then each alone
    assert [r.entries for r in results] == [[good], [poison], [other]]
    assert isinstance(results[1].outcome, ValueError) and results[1].took == 0.0
    assert results[0].outcome.argmax() == 1 and results[2].outcome.argmax() == 2


def test_prediction_gives_top_k_labels_or_every_probability():
    row = np.array([0.1, 0.7, 0.2], np.float32)
    answer = prediction(spec(), row, 2)
    assert answer["predictions"] == [
        {"label": "b", "probability": 0.7, "index": 1},
        {"label": "c", "probability": 0.2, "index": 2},
    ]
    assert prediction(spec(), row, 0)["probabilities"] == pytest.approx([0.1, 0.7, 0.2])
    short = prediction(spec(labels=("a",)), row, 1)  # a label file shorter than the output
    assert short["predictions"][0]["label"] == "1"
    assert summary(ValueError("x " * 300)).startswith("ValueError: ...")


def test_outcomes_sort_answers_and_count():
    runner = Runner()

    class Models:
        def get(self, model, version):
            return runner if version is None else None

    tally = Tally()
    outcomes = Outcomes("w", max_attempts=3, models=Models(), tally=tally)
    expired = entry(1, timeout_ms=10, queued_ms=1_000)
    given_up = entry(2, deliveries=4)
    unknown = entry(3)
    unknown = Entry(
        unknown.stream, "m", 7, unknown.entry_id, unknown.request, request_id=unknown.request_id
    )
    malformed = Entry(entry().stream, "m", None, b"5-0", None, problem="bad", request_id="r-bad")
    good = entry(4)
    due, runnable = outcomes.sort([expired, given_up, unknown, malformed, good], now_ms=2_000)
    assert due.skipped == [expired] and runnable == [(good, runner)]
    statuses = {e.request_id: answer["status"] for e, answer in due.answers}
    assert statuses == {given_up.request_id: 500, unknown.request_id: 404, "r-bad": 400}
    (result,) = compute(plan(runnable, 8), "w")
    ((answered, answer),) = outcomes.answers(result, redis_now=3.0)
    assert answered is good and answer["predictions"][0]["label"] == "b"
    failed = outcomes.answers(PassResult(runner, [good], ValueError("boom"), 0.0), 3.0)
    assert failed[0][1] == {
        "ok": False,
        "status": 500,
        "error": "inference failed: ValueError: boom",
    }
    assert (
        "1 batches, 1 requests" in outcomes.summary()
        and "1 failed, 1 expired" in outcomes.summary()
    )
    assert tally.counts == {
        "expired|model=m": 1,
        "poisoned|model=m": 1,
        "malformed|model=m": 1,
        "failed|model=m": 1,
    }
    assert tally.observations["queue_wait_seconds|model=m"] == [pytest.approx(2.0, abs=0.1)]


class Pipe:
    """Records what a tally adds to a pipeline."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def test_tally_gathers_counts_and_histogram_buckets_then_forgets_them():
    tally, keys = Tally(), Keys("t")
    assert not tally.pending()
    tally.count("requests", model="m", code=200)
    tally.count("requests", 2, model="m", code=200)
    for seconds in (0.001, 0.004, 0.004, 60):
        tally.observe("inference_seconds", seconds, model="m")
    pipe = Pipe()
    tally.flush(pipe, keys)
    calls = {(name, *args[1:]) for name, *args in pipe.calls}
    assert ("hincrby", "requests|code=200|model=m", 3) in calls
    assert ("hincrby", "inference_seconds|model=m|le=0.001", 1) in calls
    assert ("hincrby", "inference_seconds|model=m|le=0.005", 2) in calls
    assert ("hincrby", "inference_seconds|model=m|le=+Inf", 1) in calls
    assert ("hincrby", "inference_seconds|model=m|count", 4) in calls
    (total,) = [args[-1] for name, *args in pipe.calls if name == "hincrbyfloat"]
    assert total == pytest.approx(60.009)
    assert not tally.pending()
    flushed_again = Pipe()
    tally.flush(flushed_again, keys)
    assert flushed_again.calls == []


def test_model_info_serves_live_workers_versions_or_the_last_known_ones():
    announced = {
        "w1": json.dumps({"versions": {"1": {"shape": [32, 32, 1]}}}),
        "w2": json.dumps({"versions": {"2": {"shape": [64, 64, 3]}}}),
        "gone": json.dumps({"versions": {"9": {"shape": [1, 1, 1]}}}),
    }
    heartbeats = [("w1", 99.0), ("w2", 100.0), ("gone", 50.0)]
    info = ModelInfo.from_redis("m", announced, heartbeats, now=101.0, heartbeat_ttl=10)
    assert sorted(info.versions) == [1, 2] and info.latest == 2
    assert info.shape(2) == (64, 64, 3) and info.live_workers == 2 and info.active_workers == 2
    stale = ModelInfo.from_redis("m", announced, heartbeats, now=1000.0, heartbeat_ttl=10)
    assert sorted(stale.versions) == [1, 2, 9] and stale.live_workers == 0  # last known
    idle = ModelInfo.from_redis("m", announced, heartbeats, now=105.0, heartbeat_ttl=10)
    assert idle.live_workers == 2 and idle.active_workers == 0  # live, not taking requests
