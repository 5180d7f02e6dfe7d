"""Image intake: bytes in, model-sized pixels or a 4xx BadImage out."""

import io

import numpy as np
import pytest
from helpers import sample
from PIL import Image

from app.imaging import (
    DRAFT_SLACK,
    MODES,
    BadImage,
    DecodeBudget,
    Jpeg,
    fit,
    jpeg_pixels,
    to_pixels,
    to_queued,
)

LIMIT = 25_000_000


def encode(image, fmt, **params):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def intake(data, width=32, height=32, channels=1, max_pixels=LIMIT):
    return to_pixels(data, (height, width, channels), max_pixels, DecodeBudget(1 << 30))


def status_of(data, **kwargs):
    with pytest.raises(BadImage) as caught:
        intake(data, **kwargs)
    return caught.value.status


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_accepted_formats_give_model_sized_pixels(fmt):
    image = Image.new("RGB", (640, 480), (10, 200, 30))
    assert len(intake(encode(image, fmt), 224, 224, 3)) == 224 * 224 * 3
    assert len(intake(encode(image, fmt), 32, 32, 1)) == 32 * 32


def test_sample_digits_keep_their_pixels():
    pixels = np.frombuffer(intake(sample(7)), np.uint8)
    assert pixels.min() < 100 and pixels.max() == 255  # dark ink on white


def test_jpeg_draft_decodes_large_photos_at_a_reduced_scale():
    photo = encode(Image.new("RGB", (4000, 3000), (90, 90, 90)), "JPEG")
    assert len(intake(photo, 224, 224, 3)) == 224 * 224 * 3


@pytest.mark.parametrize(
    "data,status",
    [
        (b"", 400),
        (b"hello, this is text", 400),
        (sample(3)[:300], 400),  # truncated PNG
        (encode(Image.new("RGB", (64, 64)), "PPM"), 415),  # an image, not a format we take
    ],
)
def test_bad_input_is_a_client_error(data, status):
    assert status_of(data) == status


def test_truncated_jpeg_is_400():
    jpeg = encode(Image.effect_noise((200, 200), 64).convert("RGB"), "JPEG")
    assert status_of(jpeg[: len(jpeg) // 2]) == 400


def test_more_pixels_than_the_limit_is_413_before_decoding():
    png = encode(Image.new("1", (6000, 5000)), "PNG")  # 30 MP, a few KB on disk
    assert len(png) < 100_000
    assert status_of(png) == 413


def test_decompression_bomb_is_413():
    bomb = encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)
    assert len(bomb) < 100_000
    assert status_of(bomb) == 413


def pillow_pixels(data, shape):
    """What Pillow alone makes of an upright JPEG: the path before simplejpeg."""
    height, width, channels = shape
    image = Image.open(io.BytesIO(data))
    image.draft(MODES[channels], (int(width * DRAFT_SLACK), int(height * DRAFT_SLACK)))
    image.load()
    return fit(image, shape)


@pytest.mark.parametrize(
    "side, mode, shape, params",
    [
        (224, "RGB", (224, 224, 3), {}),  # the model's size: no resize
        (640, "RGB", (224, 224, 3), {}),  # drafted at 1/2, then resized
        (1999, "RGB", (224, 224, 3), {"subsampling": 0}),  # 1/8, 4:4:4
        (300, "RGB", (32, 32, 1), {"progressive": True}),  # colour photo, grey model
        (300, "L", (32, 32, 1), {}),  # grey photo, grey model
    ],
)
def test_jpeg_fast_path_gives_pillows_pixels(side, mode, shape, params):
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("flower.jpg")).resize((side, side)).convert(mode)
    data = encode(photo, "JPEG", quality=85, **params)
    fast = to_pixels(data, shape, LIMIT, DecodeBudget(1 << 30))
    assert fast == pillow_pixels(data, shape)


@pytest.mark.parametrize(
    "side, mode, shape, queued_as_jpeg",
    [
        (224, "RGB", (224, 224, 3), True),  # the model's size
        (448, "RGB", (224, 224, 3), True),  # twice it: decoded at 1/2
        (64, "L", (32, 32, 1), False),  # 1,347 bytes: more than its 1,024 pixels
        (300, "RGB", (224, 224, 3), False),  # needs a resize
        (224, "RGB", (224, 224, 1), True),  # colour for a grey model: libjpeg makes it grey
        (224, "L", (224, 224, 3), False),  # grey for a colour model
    ],
)
def test_a_jpeg_the_worker_can_decode_is_queued_as_it_came(side, mode, shape, queued_as_jpeg):
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("flower.jpg")).resize((side, side)).convert(mode)
    data = encode(photo, "JPEG", quality=85)
    queued = to_queued(data, shape, LIMIT, DecodeBudget(1 << 30))
    pixels = to_pixels(data, shape, LIMIT, DecodeBudget(1 << 30))
    assert isinstance(queued, Jpeg) == queued_as_jpeg
    assert (jpeg_pixels(queued, shape) if queued_as_jpeg else queued) == pixels
    if queued_as_jpeg:
        with pytest.raises(BadImage) as caught:
            jpeg_pixels(Jpeg(data[: len(data) // 2]), shape)
        assert caught.value.status == 400


def test_a_jpeg_larger_than_its_pixels_is_decoded_in_the_web_tier():
    """Padded with metadata up to max_image_bytes, it would hold that much of Redis's
    memory per queued request: its pixels are queued instead."""
    photo = Image.new("RGB", (224, 224), (200, 30, 30))
    padded = encode(photo, "JPEG", quality=85, icc_profile=b"\0" * 200_000)
    queued = to_queued(padded, (224, 224, 3), LIMIT, DecodeBudget(1 << 30))
    assert not isinstance(queued, Jpeg) and len(queued) == 224 * 224 * 3 < len(padded)
