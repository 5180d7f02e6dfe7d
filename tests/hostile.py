"""A corpus of awkward and hostile images, made on the fly with Pillow, and of hostile
JSON bodies for both APIs.

Each image case: (name, bytes, expected) where expected is a digit label the image must be
classified as, or the 4xx status intake must answer with.
"""

import base64
import io
import json
import struct
import zlib

import numpy as np
from helpers import sample
from PIL import Image


def encode(image, fmt, **params):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def digit(d):
    return Image.open(io.BytesIO(sample(d))).convert("L")


def exif_rotated_jpeg(d):
    """The digit stored turned a quarter left, with EXIF orientation 6 to turn it back."""
    stored = digit(d).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def sixteen_bit_png(d):
    return encode(Image.fromarray(np.asarray(digit(d), np.uint16) * 257), "PNG")


def sixteen_bit_rgb_png(d):
    """Pillow cannot write 48-bit PNGs, so this one is assembled by hand."""
    rgb = np.repeat(np.asarray(digit(d), np.uint16)[..., None] * 257, 3, axis=2)
    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    return png_bytes(struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0), rows)


def png_bytes(header, raw_rows):
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw_rows))
        + chunk(b"IEND", b"")
    )


def animated_gif(d):
    frames = [digit(d).convert("P"), digit((d + 1) % 10).convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def transparent(d, mode):
    """Ink on a fully transparent background: flattened onto white, it is the digit."""
    ink = np.asarray(digit(d))
    alpha = (255 - ink).astype(np.uint8)
    black = np.zeros_like(ink)
    if mode == "LA":
        return encode(Image.fromarray(np.dstack([black, alpha]), "LA"), "PNG")
    rgba = Image.fromarray(np.dstack([black, black, black, alpha]), "RGBA")
    if mode == "P":
        return encode(rgba.convert("P"), "PNG")
    return encode(rgba, "PNG" if mode == "RGBA" else "WEBP", lossless=True)


def png_declaring(width, height):
    """A tiny PNG whose header claims width x height pixels."""
    return png_bytes(struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0), b"\x00" * 1024)


def gif_declaring(width, height):
    return (
        b"GIF89a"
        + struct.pack("<HH", width, height)
        + b"\x00\x00\x00"
        + b","
        + struct.pack("<HHHH", 0, 0, width, height)
        + b"\x00\x02\x02\x44\x01\x00;"
    )


def cases():
    photo = Image.effect_noise((320, 240), 60).convert("RGB")
    jpeg, png = encode(photo, "JPEG"), sample(3)
    gif, webp = encode(photo.convert("P"), "GIF"), encode(photo, "WEBP")
    return [
        # valid, awkward: must classify as the digit
        ("png", sample(4), "4"),
        ("exif-rotated jpeg", exif_rotated_jpeg(7), "7"),
        ("16-bit grayscale png", sixteen_bit_png(2), "2"),
        ("16-bit rgb png", sixteen_bit_rgb_png(5), "5"),
        ("cmyk jpeg", encode(digit(0).convert("CMYK"), "JPEG", quality=95), "0"),
        ("palette png", encode(digit(6).convert("P"), "PNG"), "6"),
        ("palette gif", encode(digit(8).convert("P"), "GIF"), "8"),
        ("animated gif (first frame)", animated_gif(1), "1"),
        ("rgba png, transparent background", transparent(9, "RGBA"), "9"),
        ("la png, transparent background", transparent(3, "LA"), "3"),
        ("palette png with transparency", transparent(4, "P"), "4"),
        ("rgba webp", transparent(2, "WEBP"), "2"),
        ("bmp", encode(digit(5), "BMP"), "5"),
        ("tiff", encode(digit(7), "TIFF"), "7"),
        (
            "1-bit png",
            encode(digit(1).point(lambda v: 255 if v > 128 else 0).convert("1"), "PNG"),
            "1",
        ),
        # invalid: a 4xx naming the problem
        ("empty", b"", 400),
        ("text", b"hello, I am not an image\n", 400),
        ("html", b"<html><body>hi</body></html>", 400),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], 400),
        ("jpeg header only", jpeg[:200], 400),
        ("corrupt jpeg body", jpeg[:300] + bytes(range(256)) * 8 + jpeg[-2:], 400),
        ("truncated png", png[: len(png) // 2], 400),
        ("png with a broken crc", png[:40] + b"\x00\x00\x00\x00" + png[44:], 400),
        ("truncated gif", gif[: len(gif) // 2], 400),
        ("truncated webp", webp[: len(webp) // 2], 400),
        ("png bomb 100000x100000", png_declaring(100_000, 100_000), 413),
        ("png bomb 20000x20000", png_declaring(20_000, 20_000), 413),
        ("gif bomb 65535x65535", gif_declaring(65_535, 65_535), 413),
        ("ppm", encode(photo, "PPM"), 415),
        ("ico", encode(photo.resize((64, 64)), "ICO"), 415),
        ("pcx", encode(photo, "PCX"), 415),
    ]


def big_digit(d, fmt, mode):
    """The digit blown up to 5000x5000 (the pixel limit's 25 MP): a few hundred KB that
    decode to 25-100 MB."""
    image = digit(d).resize((5000, 5000), Image.Resampling.NEAREST)
    if mode == "RGBA":
        ink = np.asarray(image)
        image = Image.fromarray(np.dstack([ink, ink, ink, np.full_like(ink, 255)]), "RGBA")
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(image, np.uint16) * 257)
    return encode(image, fmt)


def big_cases():
    """Valid images that are small files but huge once decoded."""
    return [
        ("5000x5000 rgba png", big_digit(3, "PNG", "RGBA"), "3"),
        ("5000x5000 16-bit png", big_digit(4, "PNG", "I;16"), "4"),
        ("5000x5000 gif", big_digit(8, "GIF", "L"), "8"),
    ]


def b64(data):
    return base64.b64encode(data).decode()


def json_cases():
    """(name, path, body bytes, expected): hostile JSON for both APIs. expected is a digit
    label (valid, must classify) or (status, words the error must hold)."""
    image, predict, tfs = b64(sample(7)), "/predict", "/v1/models/digits:predict"

    def body(text):
        return text.encode()

    deep = 5000
    return [
        (
            "version 1e999",
            predict,
            body(f'{{"image": "{image}", "version": 1e999}}'),
            (400, "version"),
        ),
        (
            "version Infinity",
            predict,
            body(f'{{"image": "{image}", "version": Infinity}}'),
            (400, "version"),
        ),
        (
            "top_k -Infinity",
            predict,
            body(f'{{"image": "{image}", "top_k": -Infinity}}'),
            (400, "top_k"),
        ),
        ("top_k NaN", predict, body(f'{{"image": "{image}", "top_k": NaN}}'), (400, "top_k")),
        (
            "version of 400 digits",
            predict,
            body(f'{{"image": "{image}", "version": {"9" * 400}}}'),
            (400, "version"),
        ),
        ("top_k true", predict, body(f'{{"image": "{image}", "top_k": true}}'), (400, "top_k")),
        ("top_k 2.5", predict, body(f'{{"image": "{image}", "top_k": 2.5}}'), (400, "top_k")),
        ("pixel 1e999", tfs, body('{"instances": [[[0], [1e999]]]}'), (400, "instances[0]")),
        ("pixel NaN", tfs, body('{"instances": [[[0]], [[NaN]]]}'), (400, "instances[1]")),
        (
            "pixel of 400 digits",
            tfs,
            body(f'{{"instances": [[[{"9" * 400}]]]}}'),
            (400, "instances[0]"),
        ),
        ("nested arrays, predict", predict, body("[" * deep + "]" * deep), (400, "nested")),
        (
            "nested arrays, tf serving",
            tfs,
            body('{"instances": ' + "[" * deep + "]" * deep + "}"),
            (400, "nested"),
        ),
        ("nested objects", tfs, body('{"a": ' * deep + "1" + "}" * deep), (400, "nested")),
        (
            "mime-wrapped base64",
            predict,
            body(json.dumps({"image": base64.encodebytes(sample(5)).decode()})),
            "5",
        ),
        ("unpadded base64", predict, body(json.dumps({"image": b64(sample(6)).rstrip("=")})), "6"),
        (
            "unpadded b64 instance",
            tfs,
            body(json.dumps({"instances": [{"b64": b64(sample(2)).rstrip("=")}]})),
            "2",
        ),
        ("not base64 at all", predict, body('{"image": "%%%%not base64"}'), (400, "base64")),
    ]


def multipart_cases():
    """(name, Content-Type, body bytes, expected): hostile and awkward multipart forms for
    /predict. expected is a digit label (must classify, with the form's top_k of 2 if it
    sends one) or (status, words the error must hold)."""
    image = sample(7)
    form = "multipart/form-data; boundary=xyz"

    def part(name, content, filename="d.png"):
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return f"--xyz\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"

    end = b"--xyz--\r\n"
    return [
        ("image and top_k", form, part("image", image) + part("top_k", b"2", None) + end, "7"),
        (
            "image twice: the first",
            form,
            part("image", image) + part("image", sample(1)) + end,
            "7",
        ),
        (
            "a quoted boundary",
            'multipart/form-data; boundary="xyz"',
            part("image", image) + end,
            "7",
        ),
        ("no boundary", "multipart/form-data", part("image", image) + end, (400, "boundary")),
        ("no closing boundary", form, part("image", image), (400, "malformed")),
        ("cut inside the image", form, part("image", image)[:200], (400, "malformed")),
        ("not a form", form, b"just some text\r\n", (400, "malformed")),
        ("empty", form, b"", (400, "malformed")),
        (
            "17 parts",
            form,
            part("image", image) + part("x", b"1", None) * 16 + end,
            (413, "limit"),
        ),
        ("image as a text field", form, part("image", image, None) + end, (400, "'image'")),
        (
            "another boundary",
            form.replace("xyz", "abc"),
            part("image", image) + end,
            (400, "malformed"),
        ),
        (
            "a header line of 8 KB",
            form,
            b"--xyz\r\nX-Long: " + b"a" * 8192 + b"\r\n" + part("image", image)[7:] + end,
            (413, "limit"),
        ),
        (
            "a part without headers",
            form,
            b"--xyz\r\n\r\n" + image + b"\r\n" + end,
            (400, "malformed"),
        ),
    ]
