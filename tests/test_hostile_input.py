"""Hostile and awkward input: a corpus through intake and through the whole stack, and
property-based fuzzing of intake. Valid images classify; invalid ones get a JSON 4xx that
names the problem; nothing gets a 5xx; the worker never restarts."""

import base64
import json
import threading
import time

import numpy as np
import pytest
import requests
from helpers import predict, sample
from hostile import (
    b64,
    big_cases,
    cases,
    digit,
    encode,
    exif_rotated_jpeg,
    json_cases,
    multipart_cases,
)
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

from app.imaging import BadImage, DecodeBudget, Jpeg, to_pixels, to_queued

CORPUS = cases() + big_cases()
JSON_CORPUS = json_cases()
MULTIPART_CORPUS = multipart_cases()
LIMIT = 25_000_000
BUDGET = DecodeBudget(1 << 30)


@pytest.mark.parametrize("name,data,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_intake_answers_every_case(name, data, expected):
    if isinstance(expected, str):
        assert len(to_pixels(data, (32, 32, 1), LIMIT, BUDGET)) == 32 * 32
        assert len(to_pixels(data, (224, 224, 3), LIMIT, BUDGET)) == 224 * 224 * 3
    else:
        with pytest.raises(BadImage) as caught:
            to_pixels(data, (32, 32, 1), LIMIT, BUDGET)
        assert caught.value.status == expected


def test_a_jpeg_at_the_models_size_is_decoded_by_the_worker(stack):
    """Queued as it came: the worker decodes it, and answers a corrupt one with the 400
    the web tier gives any other corrupt image (and keeps running)."""
    # 64x64, decoded at 1/2 to the model's 32x32; 778 bytes, fewer than its 1,024 pixels
    good = encode(digit(7), "JPEG", quality=75)
    assert isinstance(to_queued(good, (32, 32, 1), LIMIT, BUDGET), Jpeg)
    assert predict(stack.url, good).json()["predictions"][0]["label"] == "7"
    pids = [p.pid for p in stack.processes]
    for bad in (good[: len(good) // 2], good[:400] + bytes(range(256)) + good[-2:]):
        assert isinstance(to_queued(bad, (32, 32, 1), LIMIT, BUDGET), Jpeg)
        response = predict(stack.url, bad)
        assert response.status_code == 400, response.text
        assert "corrupt or truncated JPEG image" in response.json()["error"]
    logs = "".join(p.read_text() for p in (stack.run_dir / "logs").glob("worker-*.log"))
    assert "corrupt or truncated JPEG image" in logs
    assert [p.pid for p in stack.processes] == pids
    assert predict(stack.url, good).json()["predictions"][0]["label"] == "7"


def test_exif_orientation_is_honoured():
    def pixels(data):
        return np.frombuffer(to_pixels(data, (32, 32, 1), LIMIT, BUDGET), np.uint8).astype(int)

    upright = pixels(encode(digit(7).convert("RGB"), "JPEG", quality=95))
    rotated = pixels(exif_rotated_jpeg(7))
    ignored = pixels(encode(digit(7).transpose(Image.Transpose.ROTATE_90), "PNG"))
    assert np.abs(rotated - upright).mean() < 5 < np.abs(ignored - upright).mean()


def test_the_whole_corpus_through_the_stack(stack):
    pids = [p.pid for p in stack.processes]
    for name, data, expected in CORPUS:
        response = predict(stack.url, data)
        body = response.json()
        assert response.headers["Content-Type"] == "application/json", name
        if isinstance(expected, str):
            assert response.status_code == 200, (name, body)
            assert body["predictions"][0]["label"] == expected, (name, body)
        else:
            assert response.status_code == expected, (name, body)
            assert body["success"] is False and len(body["error"]) > 10, (name, body)
    assert [p.pid for p in stack.processes] == pids
    assert all(p.poll() is None for p in stack.processes)
    assert "Traceback" not in stack.apache.error_log.read_text()


@pytest.mark.parametrize("name,path,body,expected", JSON_CORPUS, ids=[c[0] for c in JSON_CORPUS])
def test_hostile_json_through_the_stack(stack, name, path, body, expected):
    response = requests.post(
        stack.url + path, data=body, timeout=30, headers={"Content-Type": "application/json"}
    )
    answer = answered(response, expected)
    if answer is not None:
        label = (
            answer["predictions"][0]["label"]
            if path == "/predict"
            else str(int(np.argmax(answer["predictions"][0])))
        )
        assert label == expected


@pytest.mark.parametrize(
    "name,kind,body,expected", MULTIPART_CORPUS, ids=[c[0] for c in MULTIPART_CORPUS]
)
def test_hostile_multipart_through_the_stack(stack, name, kind, body, expected):
    response = requests.post(
        stack.url + "/predict", data=body, timeout=30, headers={"Content-Type": kind}
    )
    answer = answered(response, expected)
    if answer is not None:
        assert answer["predictions"][0]["label"] == expected
        top_k = 2 if b"top_k" in body else stack.apache.settings.top_k
        assert len(answer["predictions"]) == top_k


def answered(response, expected):
    """A JSON answer to a hostile body: the 200's body when ``expected`` is a label (a
    str), else None once the error is checked (``expected``: status, words it holds)."""
    assert response.headers["Content-Type"] == "application/json", response.text[:300]
    answer = response.json()
    if isinstance(expected, str):
        assert response.status_code == 200, answer
        return answer
    status, words = expected
    assert response.status_code == status and words in answer["error"], answer
    return None


def test_a_huge_json_body_is_refused_before_parsing_and_stalls_nobody(stack):
    """A 2000 x 2000 pixel array as JSON: 4 million numbers, 8 MB."""
    row = b"[" + b",".join([b"0"] * 2000) + b"]"
    body = b'{"instances": [[' + b",".join([row] * 2000) + b"]]}"
    latencies, done = [], threading.Event()

    def probe():
        with requests.Session() as session:
            while not done.is_set():
                began = time.perf_counter()
                session.get(stack.url + "/healthz", timeout=30)
                latencies.append(time.perf_counter() - began)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.2)
    began = time.perf_counter()
    response = requests.post(
        stack.url + "/v1/models/digits:predict",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    took = time.perf_counter() - began
    time.sleep(0.2)
    done.set()
    prober.join()
    print(
        f"\n8 MB of JSON numbers: {response.status_code} in {took * 1000:.0f} ms; the "
        f"slowest /healthz meanwhile took {max(latencies) * 1000:.0f} ms"
    )
    assert response.status_code == 413 and "values" in response.json()["error"]
    assert max(latencies) < 0.25


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)
FIELDS = st.sampled_from(
    ["image", "version", "top_k", "model", "instances", "inputs", "signature_name", "b64", "pixels"]
)


@hypothesis_settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(
        ["/predict", "/v1/models/digits:predict", "/v1/models/digits/versions/1:predict"]
    ),
    body=st.dictionaries(FIELDS, JSON_VALUES, max_size=4) | JSON_VALUES,
    image=st.booleans(),
    nest=st.integers(0, 3000),
)
def test_fuzzed_json_never_gets_a_server_error(stack, path, body, image, nest):
    if image and isinstance(body, dict):  # a real image beside the noise, now and then
        body = (
            {**body, "image": b64(sample(1))}
            if path == "/predict"
            else {**body, "instances": [{"b64": b64(sample(1))}]}
        )
    text = "[" * nest + json.dumps(body, allow_nan=True) + "]" * nest
    response = requests.post(
        stack.url + path,
        data=text.encode(),
        timeout=30,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code < 500 or response.status_code == 503, response.text[:300]
    assert response.headers["Content-Type"] == "application/json"


def test_content_types_are_sniffed_not_trusted(stack):
    as_gif = requests.post(
        stack.url + "/predict", data=sample(4), headers={"Content-Type": "image/gif"}
    )
    assert as_gif.json()["predictions"][0]["label"] == "4"
    unlabelled = requests.post(stack.url + "/predict", data=sample(4))
    assert unlabelled.json()["predictions"][0]["label"] == "4"
    assert (
        requests.post(
            stack.url + "/predict", data=b"<a/>", headers={"Content-Type": "application/xml"}
        ).status_code
        == 415
    )
    text_as_json = requests.post(
        stack.url + "/predict", json={"image": base64.b64encode(b"not an image").decode()}
    )
    assert text_as_json.status_code == 400 and "not an image" in text_as_json.json()["error"]


def mutated(draw_bytes, draw_ints, original):
    """``original`` with a few bytes flipped, a slice removed or the tail cut."""
    data = bytearray(original)
    for position in draw_ints:
        data[position % len(data)] ^= 0xFF
    cut = draw_bytes % (len(data) + 1)
    return bytes(data[:cut]) if cut > len(data) // 2 else bytes(data[:cut] + data[cut * 2 :])


VALID = [
    encode(Image.effect_noise((48, 40), 40).convert(mode), fmt)
    for mode, fmt in [
        ("RGB", "JPEG"),
        ("RGB", "PNG"),
        ("P", "GIF"),
        ("RGB", "WEBP"),
        ("L", "BMP"),
        ("RGB", "TIFF"),
        ("RGBA", "PNG"),
    ]
]


@hypothesis_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.builds(
            mutated,
            st.integers(0, 10_000),
            st.lists(st.integers(0, 10_000), max_size=6),
            st.sampled_from(VALID),
        ),
        st.builds(
            lambda head, tail: head + tail,
            st.sampled_from(
                [
                    b"\x89PNG\r\n\x1a\n",
                    b"\xff\xd8\xff\xe0",
                    b"GIF89a",
                    b"RIFF\x00\x00\x00\x00WEBP",
                    b"BM",
                    b"II*\x00",
                ]
            ),
            st.binary(max_size=512),
        ),
    )
)
def test_fuzzed_bytes_never_escape_as_anything_but_bad_image(data):
    try:
        pixels = to_pixels(data, (24, 24, 3), LIMIT, BUDGET)
    except BadImage as exc:
        assert exc.status in (400, 413, 415) and exc.message
    else:
        assert len(pixels) == 24 * 24 * 3
