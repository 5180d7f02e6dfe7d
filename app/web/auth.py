"""Who may call what: API keys on the prediction APIs, and the admin networks (or a key)
for the operators' endpoints.

With api_keys set, /predict, /v1/... and /v2/models/... need ``Authorization: Bearer <key>``
(the v2 server metadata and health endpoints stay open, like /healthz and /readyz); a request
without a valid one gets 401 (counted in /metrics as beagle_unauthorized_total). Keys are
compared in constant time, against every key, so timing says nothing about any.
"""

import hmac
import ipaddress

from flask import abort, request

from app.web.resources import beagle, current_settings

PROTECTED_PATHS = ("/predict", "/v1/", "/v2/models")


def presents_valid_key() -> bool:
    """Whether the request carries one of api_keys as a Bearer token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    presented = token.strip().encode()
    matches = [hmac.compare_digest(presented, key.encode()) for key in current_settings().api_keys]
    return scheme.lower() == "bearer" and any(matches)


def from_admin_network() -> bool:
    """Whether the client's address lies in admin_networks."""
    if request.remote_addr is None:
        return False
    address = ipaddress.ip_address(request.remote_addr)
    return any(address in network for network in current_settings().admin_networks)


def refuse() -> None:
    """401, counted."""
    beagle().tally.count("unauthorized", endpoint=request.endpoint or "-")
    abort(401, "this endpoint needs 'Authorization: Bearer <api key>'")


def require_api_key() -> None:
    """The app-wide hook: with api_keys set, the prediction APIs need one."""
    if current_settings().api_keys and request.path.startswith(PROTECTED_PATHS):
        if not presents_valid_key():
            refuse()


def require_admin_or_key() -> None:
    """/status: from an admin network, or with an API key when keys are on."""
    if from_admin_network():
        return
    if current_settings().api_keys:
        if not presents_valid_key():
            refuse()
        return
    abort(
        403,
        f"{request.path} is open to admin_networks or API key holders only, not to "
        f"{request.remote_addr}",
    )
