"""HTTP client side of Beagle's own tools (the stress test, scripts/simple_request.py).

urllib3 rather than requests: a load generator shares the cores with what it measures,
and requests adds work to every call.

/predict changes nothing, so sending it again is always safe. Beagle's tools do so
when the app never answered, once for each of two causes: the connection was dropped
without a response (Apache closes idle keep-alive connections in a graceful restart), and
Apache answered 500, 502 or 503 itself, which it marks by the absence of the app's
X-Request-ID (mod_wsgi does so while a graceful restart replaces its daemon process and
recreates its socket). A timeout, or any answer from the app, error or not, is never
retried.
"""

import http.client
import json
import time
from urllib.parse import urlencode

import urllib3

DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
MAX_RETRY_AFTER_S = 2.0
RESENT = "sent again (a connection dropped, or Apache's own 500/502/503)"  # what post_image counts
Error = urllib3.exceptions.HTTPError  # what a failed request raises


def connections(size=1, verify=True):
    """A keep-alive connection pool for ``size`` concurrent requests; ``verify`` False
    accepts any HTTPS certificate (a host testing its own loopback)."""
    if not verify:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return urllib3.PoolManager(
        maxsize=size, retries=False, cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE"
    )


def default_api_key(settings):
    """The key Beagle's tools send: the first of ``api_keys`` (None when keys are off),
    so on a host whose env file turns keys on they need no key on the command line."""
    return settings.api_keys[0] if settings.api_keys else None


def auth_headers(api_key):
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def post_image(pool, url, image, timeout, params=None, body="multipart", api_key=None):
    """POST ``image`` as multipart field ``image``, or with ``body="raw"`` as the request
    body itself (cheaper for both ends), with ``api_key`` as a Bearer token if given;
    (response, retried) where retried says whether the request had to be sent again.
    A dropped connection and Apache's own error are each sent again once: a graceful
    restart can do both to one request (at most three sends)."""
    params = {k: str(v) for k, v in (params or {}).items()}
    headers = auth_headers(api_key)
    resend_dropped = resend_refused = True
    while True:
        try:
            response = _send(pool, url, image, timeout, params, body, headers)
        except urllib3.exceptions.ProtocolError as exc:
            if not (resend_dropped and any(isinstance(arg, DROPPED) for arg in exc.args)):
                raise
            resend_dropped = False
        else:
            if not (resend_refused and _answered_by_apache(response)):
                return response, not (resend_dropped and resend_refused)
            resend_refused = False
            # One back-off before resending Apache's own error, as Retry-After asks.
            time.sleep(_retry_after_s(response))


def _retry_after_s(response):
    """Retry-After in seconds, within 0..MAX_RETRY_AFTER_S; 0 when absent or not a
    number of seconds (an HTTP date: Apache's own say "1")."""
    try:
        seconds = float(response.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0
    return max(0.0, min(MAX_RETRY_AFTER_S, seconds))


def _send(pool, url, image, timeout, params, body, headers):
    if body == "raw":
        return pool.request(
            "POST",
            url + ("?" + urlencode(params) if params else ""),
            body=image,
            headers={**headers, "Content-Type": "application/octet-stream"},
            timeout=timeout,
        )
    return pool.request(
        "POST", url, fields={**params, "image": ("image", image)}, headers=headers, timeout=timeout
    )


def json_body(response):
    """The response's JSON object, or {} when it is not JSON."""
    if not response.headers.get("Content-Type", "").startswith("application/json"):
        return {}
    try:
        return json.loads(response.data)
    except ValueError:
        return {}


def _answered_by_apache(response):
    return response.status in (500, 502, 503) and "X-Request-ID" not in response.headers
