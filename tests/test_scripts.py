"""The operator scripts, run as an operator runs them (subprocesses with BEAGLE_* env)."""

import os
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest
from helpers import wait_result

from app.config import PROJECT_ROOT, as_environ
from app.keys import GROUP, Keys
from app.queue import Queue, Request
from app.worker import repository, runtimes

SCRIPTS = PROJECT_ROOT / "scripts"


def run_script(name, *args, settings=None, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(as_environ(settings) if settings else {})}
    module = "scripts." + name.removesuffix(".py")
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_simple_request_prints_ranked_labels(stack):
    done = run_script(
        "simple_request.py",
        PROJECT_ROOT / "stress/images/digit_7.png",
        "--url",
        stack.url,
        "--top-k",
        3,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and re.fullmatch(r"1\. 7: 0\.\d{4}", lines[0])
    assert all(re.fullmatch(rf"{n}\. \d: [01]\.\d{{4}}", line) for n, line in enumerate(lines, 1))
    failed = run_script(
        "simple_request.py", PROJECT_ROOT / "tools" / "imagenet_labels.txt", "--url", stack.url
    )
    assert failed.returncode == 1 and "error 400: not an image" in failed.stderr


def test_flush_removes_only_beagles_keys_and_answers_the_waiting(settings, client):
    keys = Keys(settings.key_prefix)
    queue = Queue(client, keys)
    queue.ensure_group(keys.stream("digits"))
    waiting = [Request(uuid.uuid4().hex, 30_000, 1, (1, 1, 1), b"\x00") for _ in range(3)]
    for request in waiting:
        queue.submit("digits", None, [request], 10, 60)
    client.lpush(keys.result("stale"), "{}")
    client.set("someone-else:key", "keep me")
    client.set(keys.worker("w1"), "{}")

    dry = run_script("flush_queue.py", "--dry-run", settings=settings)
    assert (
        "would remove 3 queued requests" in dry.stdout and client.xlen(keys.stream("digits")) == 3
    )

    done = run_script("flush_queue.py", settings=settings)
    assert done.returncode == 0, done.stderr
    assert f"{keys.stream('digits')}: removed 3 queued requests (each answered 503)" in done.stdout
    assert "removed 1 unread results" in done.stdout
    for request in waiting:
        assert wait_result(queue, request.request_id, 1)["status"] == 503
    assert client.xlen(keys.stream("digits")) == 0
    assert client.xinfo_groups(keys.stream("digits"))[0]["name"] == GROUP.encode()  # kept
    assert client.get("someone-else:key") == b"keep me"
    assert client.exists(keys.worker("w1"))

    everything = run_script("flush_queue.py", "--all", settings=settings)
    assert "removed 1 keys" in everything.stdout and not client.exists(keys.worker("w1"))
    assert client.get("someone-else:key") == b"keep me"
    client.delete("someone-else:key")


@pytest.mark.parametrize("runtime", ["tensorflow", "onnx", "litert"])
def test_export_writes_an_offline_imagenet_model(tmp_path, runtime):
    done = run_script(
        "export_model.py",
        "mobilenet_v2",
        "--weights",
        "none",
        "--size",
        96,
        "--runtime",
        runtime,
        "--max-batch-size",
        4,
        "--repository",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "calibrated 52 BatchNorm layers" in done.stdout
    assert re.search(
        r"verified on 24 sample inputs against TensorFlow: max \|difference\| "
        r"\d\.\d\de[-+]\d\d, top-1 agreement 100\.0%",
        done.stdout,
    ), done.stdout
    assert "do not vary" not in done.stdout
    assert f"published mobilenet_v2 version 1 ({runtime})" in done.stdout
    spec = repository.load_spec(tmp_path, "mobilenet_v2", 1)
    assert spec.shape == (96, 96, 3) and spec.preprocessing == "tf" and spec.runtime == runtime
    assert spec.max_batch_size == 4 and spec.file == runtimes.FILES[runtime]
    assert sorted(p.name for p in spec.path.iterdir()) == sorted(
        ["labels.txt", "model.json", spec.file]
    )
    assert len(spec.labels) == 1000 and spec.labels[:2] == ("tench", "goldfish")
    probabilities = runtimes.load(spec)(np.zeros((2, 96, 96, 3), np.uint8))
    assert probabilities.shape == (2, 1000)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    again = run_script(
        "export_model.py",
        "mobilenet_v2",
        "--weights",
        "none",
        "--size",
        96,
        "--repository",
        tmp_path,
        "--version",
        1,
    )
    assert again.returncode != 0 and "already exists" in again.stderr


def test_export_refuses_a_conversion_that_disagrees():
    from tools.exporting import verify

    class Reference:
        def __init__(self, outputs):
            self.outputs = outputs

        def __call__(self, inputs):
            return self

        def numpy(self):
            return self.outputs

    probabilities = np.tile(np.linspace(0.0, 0.2, 10, dtype=np.float32), (24, 1))
    verify(Reference(probabilities), lambda inputs: probabilities + 1e-5, (8, 8, 1))
    with pytest.raises(SystemExit, match="refusing to publish: outputs differ"):
        verify(Reference(probabilities), lambda inputs: probabilities[:, ::-1], (8, 8, 1))


def test_export_publishes_a_model_file_of_your_own(tmp_path):
    own = PROJECT_ROOT / "models/digits/1"
    done = run_script(
        "export_model.py",
        own / "model.keras",
        "--name",
        "mine",
        "--labels",
        own / "labels.txt",
        "--repository",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    spec = repository.load_spec(tmp_path, "mine", 1)
    assert spec.shape == (32, 32, 1) and spec.labels[7] == "7"
    assert not list((tmp_path / "mine").glob(".*partial"))


def test_bundled_model_meets_its_accuracy_on_held_out_digits():
    import keras

    from scripts.train_digits import load_split

    digits, images, _, test_idx = load_split()
    model = keras.saving.load_model(PROJECT_ROOT / "models/digits/1/model.keras")
    predicted = model.predict(images[test_idx][..., None] / 255.0, verbose=0).argmax(axis=1)
    accuracy = (predicted == digits.target[test_idx]).mean()
    assert accuracy >= 0.95, accuracy


def test_training_refuses_to_publish_an_inaccurate_model(tmp_path):
    done = run_script(
        "train_digits.py",
        "--epochs",
        1,
        "--repository",
        tmp_path / "models",
        "--samples",
        tmp_path / "samples",
    )
    assert done.returncode != 0
    assert re.search(r"test accuracy: 0\.\d{4} on 360 held-out digits", done.stdout)
    assert "not publishing" in done.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "script", ["simple_request.py", "flush_queue.py", "export_model.py", "train_digits.py"]
)
def test_scripts_explain_themselves(script):
    done = run_script(script, "--help")
    assert done.returncode == 0 and "usage:" in done.stdout
