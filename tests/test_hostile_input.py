"""Hostile and awkward input: a corpus through intake and through the whole stack, and
property-based fuzzing of intake. Valid images classify; invalid ones get a JSON 4xx that
names the problem; nothing gets a 5xx; the worker never restarts."""
import base64
import io

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from PIL import Image

from app.imaging import BadImage, to_pixels
from conftest import predict, sample
from hostile import cases, digit, encode, exif_rotated_jpeg

CORPUS = cases()
LIMIT = 25_000_000


@pytest.mark.parametrize("name,data,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_intake_answers_every_case(name, data, expected):
    if isinstance(expected, str):
        assert len(to_pixels(data, 32, 32, 1, LIMIT)) == 32 * 32
        assert len(to_pixels(data, 224, 224, 3, LIMIT)) == 224 * 224 * 3
    else:
        with pytest.raises(BadImage) as caught:
            to_pixels(data, 32, 32, 1, LIMIT)
        assert caught.value.status == expected


def test_exif_orientation_is_honoured():
    upright = np.frombuffer(to_pixels(encode(digit(7).convert("RGB"), "JPEG", quality=95),
                                      32, 32, 1, LIMIT), np.uint8).astype(int)
    rotated = np.frombuffer(to_pixels(exif_rotated_jpeg(7), 32, 32, 1, LIMIT),
                            np.uint8).astype(int)
    stored_as_is = digit(7).transpose(Image.Transpose.ROTATE_90)
    ignored = np.frombuffer(to_pixels(encode(stored_as_is, "PNG"), 32, 32, 1, LIMIT),
                            np.uint8).astype(int)
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


def test_content_types_are_sniffed_not_trusted(stack):
    as_gif = requests.post(stack.url + "/predict", data=sample(4),
                           headers={"Content-Type": "image/gif"})
    assert as_gif.json()["predictions"][0]["label"] == "4"
    unlabelled = requests.post(stack.url + "/predict", data=sample(4))
    assert unlabelled.json()["predictions"][0]["label"] == "4"
    assert requests.post(stack.url + "/predict", data=b"<a/>",
                         headers={"Content-Type": "application/xml"}).status_code == 415
    text_as_json = requests.post(stack.url + "/predict",
                                 json={"image": base64.b64encode(b"not an image").decode()})
    assert text_as_json.status_code == 400 and "not an image" in text_as_json.json()["error"]


def mutated(draw_bytes, draw_ints, original):
    """``original`` with a few bytes flipped, a slice removed or the tail cut."""
    data = bytearray(original)
    for position in draw_ints:
        data[position % len(data)] ^= 0xFF
    cut = draw_bytes % (len(data) + 1)
    return bytes(data[:cut]) if cut > len(data) // 2 else bytes(data[:cut] + data[cut * 2:])


VALID = [encode(Image.effect_noise((48, 40), 40).convert(mode), fmt)
         for mode, fmt in [("RGB", "JPEG"), ("RGB", "PNG"), ("P", "GIF"), ("RGB", "WEBP"),
                           ("L", "BMP"), ("RGB", "TIFF"), ("RGBA", "PNG")]]


@hypothesis_settings(max_examples=400, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=2048),
    st.builds(mutated, st.integers(0, 10_000), st.lists(st.integers(0, 10_000), max_size=6),
              st.sampled_from(VALID)),
    st.builds(lambda head, tail: head + tail, st.sampled_from(
        [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP",
         b"BM", b"II*\x00"]), st.binary(max_size=512)),
))
def test_fuzzed_bytes_never_escape_as_anything_but_bad_image(data):
    try:
        pixels = to_pixels(data, 24, 24, 3, LIMIT)
    except BadImage as exc:
        assert exc.status in (400, 413, 415) and exc.message
    else:
        assert len(pixels) == 24 * 24 * 3
