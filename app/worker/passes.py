"""A batch's forward passes, as the worker runs them: `decode_images` turns the queued
JPEGs of the entries it takes into pixels, `plan` splits the runnable entries into passes,
`compute` runs them on the worker's inference thread, and `prediction` is the answer for
one request (the queue's answer format, app/queue.py)."""

import logging
import time
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from app.imaging import MODES, BadImage, Jpeg, fit, jpeg_pixels
from app.queue import Entry, Request
from app.worker.repository import ModelSpec

log = logging.getLogger("beagle.worker")


class PassResult(NamedTuple):
    """One forward pass: its runner and entries, then the probabilities (one row per
    entry) or the exception it raised, and how long it took."""

    runner: Any
    entries: list
    outcome: Any
    took: float


def prediction(spec: ModelSpec, probabilities: np.ndarray, top_k: int) -> dict[str, Any]:
    """The answer for one request: the top_k labels, or (top_k 0) every probability."""
    answer = {"ok": True, "model": spec.name, "version": spec.version}
    if top_k == 0:
        answer["probabilities"] = probabilities.tolist()
        return answer
    best = np.argsort(probabilities)[::-1][:top_k]
    answer["predictions"] = [
        {
            "label": spec.labels[i] if i < len(spec.labels) else str(i),
            "probability": round(float(probabilities[i]), 6),
            "index": int(i),
        }
        for i in best
    ]
    return answer


def compute(passes: list[tuple[Any, list]], worker_name: str) -> list[PassResult]:
    """Run each (runner, entries) forward pass, on the inference thread. A failing pass
    runs again one entry at a time, so only the input at fault gets the error."""
    results = []
    for runner, entries in passes:
        began = time.perf_counter()
        try:
            pixels = b"".join(_fit(e.request, runner.spec.shape) for e in entries)
            batch = np.frombuffer(pixels, np.uint8).reshape(len(entries), *runner.spec.shape)
            results.append(PassResult(runner, entries, runner(batch), time.perf_counter() - began))
        except Exception as exc:
            if len(entries) == 1:
                results.append(PassResult(runner, entries, exc, 0.0))
                continue
            log.warning(
                "worker %s: batch of %d failed (%s); running each alone",
                worker_name,
                len(entries),
                summary(exc),
            )
            results += compute([(runner, [e]) for e in entries], worker_name)
    return results


def decode_images(entries: list[Entry]) -> list[Entry]:
    """``entries``, each queued JPEG replaced by its pixels; an entry whose JPEG does not
    decode becomes malformed, with the reason its request is answered 400 with. Run as
    entries are taken, while the last batch's pass may still run: simplejpeg releases the
    GIL, so the decode overlaps the forward pass."""
    for entry in entries:
        request = entry.request
        if request is not None and isinstance(request.pixels, Jpeg):
            try:
                entry.request = replace(request, pixels=jpeg_pixels(request.pixels, request.shape))
            except BadImage as exc:
                entry.request, entry.problem = None, exc.message
    return entries


def plan(runnable: list[tuple[Entry, Any]], max_batch_size: int) -> list[tuple[Any, list[Entry]]]:
    """[(entry, runner)] -> [(runner, entries)], one a forward pass: new entries of a
    runner together, up to its model's batch cap (else ``max_batch_size``), in order;
    redelivered ones alone, since one of them may be what killed a worker."""
    groups: dict[Any, list[Entry]] = {}
    for entry, runner in runnable:
        groups.setdefault(runner, []).append(entry)
    passes: list[tuple[Any, list[Entry]]] = []
    for runner, entries in groups.items():
        size = runner.spec.max_batch_size or max_batch_size
        together = [e for e in entries if e.deliveries == 1]
        passes += [(runner, together[i : i + size]) for i in range(0, len(together), size)]
        passes += [(runner, [e]) for e in entries if e.deliveries > 1]
    return passes


def _fit(request: Request, shape: tuple[int, int, int]) -> bytes:
    """The request's pixels at ``shape``: resized only if the web sized them for another
    version (a worker answering with an older version than the newest served)."""
    if request.shape == shape:
        return request.pixels
    h, w, c = request.shape
    return fit(Image.frombytes(MODES[c], (w, h), request.pixels), shape)


def summary(exc: BaseException) -> str:
    """One line about ``exc``: TensorFlow's messages run over many lines and end with the
    actual reason, so keep the end."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text if len(text) <= 240 else '...' + text[-240:]}"
