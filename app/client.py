"""HTTP client side of Beagle's own tools (the stress test, scripts/simple_request.py).

/predict changes nothing, so sending it again is always safe. Beagle's tools do so once
when the app never answered: the connection was dropped without a response (Apache
closes idle keep-alive connections in a graceful restart), or Apache answered 500, 502
or 503 itself, which it marks by the absence of the app's X-Request-ID (mod_wsgi does so
while a graceful restart replaces its daemon process and recreates its socket). A
timeout, or any answer from the app, error or not, is never retried.
"""
import http.client
import time

import requests

MAX_RETRY_AFTER_S = 2.0

DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def post_image(session, url, image, timeout, params=None, field="image"):
    """POST ``image`` as multipart; (response, retried) where retried says whether the
    first connection was dropped unanswered and the request went again."""
    for attempt in (1, 2):
        try:
            response = session.post(url, files={field: ("image", image)}, data=params,
                                    timeout=timeout)
        except requests.ConnectionError as exc:
            if attempt == 2 or not _dropped_unanswered(exc):
                raise
            continue
        if attempt == 2 or not _answered_by_apache(response):
            return response, attempt == 2
        time.sleep(min(MAX_RETRY_AFTER_S, float(response.headers.get("Retry-After", 0))))


def _answered_by_apache(response):
    return response.status_code in (500, 502, 503) and "X-Request-ID" not in response.headers


def _dropped_unanswered(exc):
    # requests raises ConnectionError(ProtocolError("Connection aborted.", <cause>)).
    protocol_error = exc.args[0] if exc.args else None
    return any(isinstance(arg, DROPPED) for arg in getattr(protocol_error, "args", ()))
