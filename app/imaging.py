"""Image intake: untrusted bytes -> uint8 pixels of the size a model expects.

`to_pixels` takes encoded image bytes; `to_queued` is what the web tier queues for them:
their pixels, or the bytes themselves as a `Jpeg` when the worker can decode them as
cheaply (`jpeg_pixels`); `array_pixels` takes a pixel array (TF Serving's instances); `fit`
brings a decoded image to a model's shape, for them and for the worker; `decode_base64`
reads base64 as tools write it. Problems with the input itself raise
`BadImage(status, message)` (400 corrupt, 413 too large, 415 unsupported format), so the
web tier never answers a 5xx for bad input. Pillow, NumPy and simplejpeg only: the web
tier never imports TensorFlow. Pillow reads every header and decodes every format; an
upright JPEG in the model's own mode, what clients send most, is decoded by simplejpeg
(libjpeg-turbo straight into NumPy, the same pixels at a fraction of Pillow's cost).

Decoding is bounded in memory per process: `DecodeBudget` holds the bytes that decodes
in flight may use (a 95 KB PNG can decode to 100 MB). A decode waits for room, briefly,
or fails with `Busy` (503); one that could never fit is a 413.
"""

import base64
import binascii
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from app.turns import Turn

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
EXIF_ORIENTATION = 0x0112
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
DRAFT_SLACK = 0.9
MODES = {1: "L", 3: "RGB"}
TURBO_COLORSPACES = {"L": "GRAY", "RGB": "RGB"}  # Pillow's JPEG modes simplejpeg decodes
HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
TRANSPARENT = ("RGBA", "LA", "PA", "RGBa", "La")  # P with a transparent index too
# Peak bytes per pixel while converting, on top of the pixel as decoded (Pillow keeps 3-
# and 4-band pixels in 4 bytes). The worst case: a palette image with a transparent
# colour, 1 byte, becomes RGBA (4) and is premultiplied to resize (4).
CONVERSION_BYTES = 9


class BadImage(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Jpeg(bytes):
    """An upright JPEG in a model's mode that decodes, at one of libjpeg's scales, to
    exactly the model's input size, in no more bytes than its pixels: queued as it came,
    for the worker to decode. Clients that send images at the model's size send these;
    they cross Redis far smaller than their pixels, and the web tier skips the decode."""


class Busy(Exception):
    """The process's decode budget stayed full: retry shortly (503)."""


class DecodeBudget:
    """Bytes of pixels this process's decodes may hold at once. A decode runs with the
    process's ``turn`` handed on (app/turns.py): Pillow and simplejpeg decode outside the
    GIL, so other requests' Python runs meanwhile, and decodes run on several cores."""

    def __init__(self, limit: int, wait_s: float = 2.0, turn: Turn | None = None) -> None:
        self.limit, self.wait_s, self.used = limit, wait_s, 0
        self.turn = turn or Turn()
        self._room = threading.Condition()

    @contextmanager
    def reserve(self, amount: int) -> Iterator[None]:
        if amount > self.limit:
            raise BadImage(
                413,
                f"decoding this image takes about {amount >> 20} MB, more "
                f"than this process's decode budget of {self.limit >> 20} MB",
            )
        with self.turn.aside(lambda: self.wait_s):
            with self._room:
                if not self._room.wait_for(lambda: self.used + amount <= self.limit, self.wait_s):
                    raise Busy(
                        f"this web process is decoding other large images (budget "
                        f"{self.limit >> 20} MB); retry shortly"
                    )
                self.used += amount
            try:
                yield
            finally:
                with self._room:
                    self.used -= amount
                    self._room.notify_all()


def to_queued(
    data: bytes, shape: tuple[int, int, int], max_pixels: int, budget: DecodeBudget
) -> bytes:
    """What the web tier queues for ``data``: a `Jpeg` if it is one and no larger than its
    pixels (a JPEG padded with metadata up to max_image_bytes would fill Redis), else
    `to_pixels`'s pixels."""
    image, turbo = _header(data, shape, max_pixels)
    if turbo and image.size == (shape[1], shape[0]) and len(data) <= shape[0] * shape[1] * shape[2]:
        return Jpeg(data)
    return _decoded(data, image, turbo, shape, budget)


def to_pixels(
    data: bytes, shape: tuple[int, int, int], max_pixels: int, budget: DecodeBudget
) -> bytes:
    """Decode, orient, flatten and resize ``data`` to ``shape`` (h, w, c); HxWxC uint8
    bytes, row-major."""
    image, turbo = _header(data, shape, max_pixels)
    return _decoded(data, image, turbo, shape, budget)


def jpeg_pixels(data: Jpeg, shape: tuple[int, int, int]) -> bytes:
    """A queued `Jpeg`'s pixels at ``shape``: what `to_pixels` gives for it. BadImage 400
    when its data past the header is corrupt or truncated."""
    height, width, channels = shape
    try:
        pixels = _turbo(data, MODES[channels], height, width)
    except ValueError as exc:
        raise BadImage(400, f"corrupt or truncated JPEG image: {_reason(exc)}") from None
    if pixels.shape[:2] != (height, width):
        raise BadImage(
            400, f"the JPEG decodes to {pixels.shape[1]}x{pixels.shape[0]}, not {width}x{height}"
        )
    return pixels.tobytes()


def _header(data: bytes, shape: tuple[int, int, int], max_pixels: int) -> tuple[Image.Image, bool]:
    """``data`` opened (headers only, a JPEG drafted for ``shape``) and checked against
    ``max_pixels``; and whether it is an upright JPEG in the model's mode, for simplejpeg."""
    if not data:
        raise BadImage(400, "empty image: the request carried no image bytes")
    image = _open(data)
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise BadImage(
            413,
            f"image is {image.width}x{image.height} = {pixels} pixels; the limit is {max_pixels}",
        )
    height, width, channels = shape
    if image.format != "JPEG":
        return image, False
    upright = _draft(image, MODES[channels], width, height)
    return image, upright and image.mode == MODES[channels]


def _decoded(
    data: bytes,
    image: Image.Image,
    turbo: bool,
    shape: tuple[int, int, int],
    budget: DecodeBudget,
) -> bytes:
    """``image`` (opened from ``data`` by `_header`) decoded to ``shape``'s pixels."""
    with budget.reserve(_decoded_bytes(image)):
        try:
            if turbo:
                return _turbo_jpeg(data, image, shape)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # without it: a full-size copy
            image = _eight_bit(image)  # the full-size 16-bit one goes
            return fit(image, shape)
        except BadImage:
            raise
        except Exception as exc:  # anything Pillow raises on these bytes is their fault
            raise BadImage(
                400, f"corrupt or truncated {image.format} image: {_reason(exc)}"
            ) from None


def array_pixels(value: object, shape: tuple[int, int, int]) -> bytes:
    """A nested list of 0-255 values, height x width x channels (or height x width), at
    ``shape``; BadImage 400 for anything else."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise BadImage(
            400,
            "a pixel array must be a regular height x width x channels "
            "list of numbers from 0 to 255",
        ) from None
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3) or 0 in array.shape:
        raise BadImage(
            400,
            f"a pixel array must be height x width x channels (1 or 3), not {list(array.shape)}",
        )
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise BadImage(400, "pixel values must be finite numbers from 0 to 255")
    pixels = np.rint(array).astype(np.uint8)
    if pixels.shape == tuple(shape):
        return pixels.tobytes()
    return fit(Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels), shape)


def fit(image: Image.Image, shape: tuple[int, int, int]) -> bytes:
    """An 8-bit image as ``shape``'s pixels: its mode (L or RGB, transparency flattened
    onto white) and size."""
    height, width, channels = shape
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    transparent = image.mode in TRANSPARENT
    if not transparent and image.mode != MODES[channels]:
        image = image.convert(MODES[channels])  # before resizing: Pillow resizes P nearest
    if image.size != (width, height):
        # A transparent image is resized before it is flattened (Pillow premultiplies
        # alpha as it resizes): the same pixels, without a full-size flattened copy.
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if transparent:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA")).convert(MODES[channels])
    return image.tobytes()


def decode_base64(text: str) -> bytes:
    """Bytes from base64 as tools write it: plain or in a data: URL, in lines (MIME's 76
    columns) or not, padded or not. BadImage 400 for what is not base64."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(400, "not valid base64") from None


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise BadImage(413, f"image declares too many pixels: {_reason(exc)}") from None
    except UnidentifiedImageError:
        pass
    except Exception as exc:
        raise BadImage(400, f"corrupt image header: {_reason(exc)}") from None
    try:  # headers only, never decoded: tells an unsupported format from garbage
        other = Image.open(io.BytesIO(data)).format
    except Exception:
        other = None
    if other:
        raise BadImage(
            415, f"{other} images are not supported; send one of {', '.join(ACCEPTED_FORMATS)}"
        )
    claimed = next((fmt for magic, fmt in SIGNATURES if data.startswith(magic)), None)
    if claimed or data[8:12] == b"WEBP" and data.startswith(b"RIFF"):
        raise BadImage(400, f"corrupt {claimed or 'WEBP'} image: its header cannot be read")
    raise BadImage(400, "not an image: the bytes are not JPEG, PNG, GIF, WebP, BMP or TIFF")


def _draft(image: Image.Image, mode: str, width: int, height: int) -> bool:
    """Whether the JPEG is upright (no EXIF rotation or flip)."""
    # Decode the JPEG at 1/2, 1/4 or 1/8 scale when that still gives at least 90% of the
    # target on each side: much less work and memory, at the cost of at most a 10%
    # upscale on one side. The target is swapped when EXIF says rotate by 90 degrees.
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    image.draft(mode, (int(width * DRAFT_SLACK), int(height * DRAFT_SLACK)))
    return orientation == 1


def _turbo_jpeg(data: bytes, image: Image.Image, shape: tuple[int, int, int]) -> bytes:
    """The JPEG decoded by simplejpeg at the scale and mode Pillow's draft chose."""
    pixels = _turbo(data, image.mode, image.height, image.width)
    if pixels.shape[:2] == tuple(shape[:2]):
        return pixels.tobytes()
    return fit(Image.fromarray(pixels[..., 0] if image.mode == "L" else pixels), shape)


def _turbo(data: bytes, mode: str, height: int, width: int) -> np.ndarray:
    """simplejpeg's decode of ``data`` in ``mode`` at the smallest of libjpeg's scales that
    covers height x width: the one call both the web tier and the worker make."""
    return simplejpeg.decode_jpeg(
        data, colorspace=TURBO_COLORSPACES[mode], min_height=height, min_width=width
    )


def largest_decode(pixels: int) -> int:
    """The most a decode of an image of ``pixels`` pixels may take."""
    return pixels * (4 + CONVERSION_BYTES)


def _decoded_bytes(image: Image.Image) -> int:
    """What decoding ``image`` (its size after any draft) may take at its peak."""
    stored = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    return image.width * image.height * (stored + CONVERSION_BYTES)


def _eight_bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit images (and floats) as 8-bit grey, values above 255 scaled down by
    256; others as they are. One writable copy, changed in place."""
    if image.mode not in HIGH_DEPTH:
        return image
    array = np.array(image)
    if image.mode != "F" and array.max(initial=0) > 255:
        np.right_shift(array, 8, out=array)
    np.clip(array, 0, 255, out=array)
    return Image.fromarray(array.astype(np.uint8), "L")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
