"""A batch's forward passes, as the worker runs them: `plan` splits the runnable entries
into passes, `compute` runs them on the worker's inference thread, and `prediction` is
the answer for one request (the queue's answer format, app/queue.py)."""

import logging
import time
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
    """Run each (runner, entries) forward pass, on the inference thread. An entry whose
    image does not decode gets a result of its own (the BadImage); a failing pass runs
    again one entry at a time, so only the input at fault gets the error."""
    results = []
    for runner, entries in passes:
        began = time.perf_counter()
        decoded, inputs = [], []
        for entry in entries:
            try:
                inputs.append(_fit(entry.request, runner.spec.shape))
                decoded.append(entry)
            except BadImage as exc:  # its own answer: the others still run
                results.append(PassResult(runner, [entry], exc, 0.0))
        if not decoded:
            continue
        entries = decoded
        try:
            pixels = b"".join(inputs)
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
    """The request's pixels at ``shape``: a queued JPEG decoded; resized only if the web
    sized them for another version (a worker answering with an older version than the
    newest served). BadImage for a JPEG that does not decode."""
    pixels = request.pixels
    if isinstance(pixels, Jpeg):
        pixels = jpeg_pixels(pixels, request.shape)
    if request.shape == shape:
        return pixels
    h, w, c = request.shape
    return fit(Image.frombytes(MODES[c], (w, h), pixels), shape)


def summary(exc: BaseException) -> str:
    """One line about ``exc``: TensorFlow's messages run over many lines and end with the
    actual reason, so keep the end."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text if len(text) <= 240 else '...' + text[-240:]}"
