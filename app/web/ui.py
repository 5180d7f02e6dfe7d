"""GET /: a page to try a model in the browser and watch Beagle's live status.

Its script and style are inline, so it is one request and loads nothing from elsewhere;
its Content-Security-Policy admits exactly those (by their SHA-256) and nothing else
foreign: no other script, no framing."""

import base64
import hashlib
import re

from flask import Blueprint, Response, make_response, render_template

from app.web.resources import current_settings

bp = Blueprint("ui", __name__)

INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def policy(page: str) -> str:
    """The page's Content-Security-Policy: its own inline script and style only."""
    allowed: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in INLINE.findall(page):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        allowed[kind].append(f"'sha256-{digest}'")
    scripts = " ".join(allowed["script"]) or "'none'"
    styles = " ".join(allowed["style"]) or "'none'"
    return (
        f"default-src 'self'; script-src {scripts}; style-src {styles}; img-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


@bp.get("/")
def index() -> Response:
    page = render_template(
        "index.html", default_model=current_settings().default_model, top_k=current_settings().top_k
    )
    response = make_response(page)
    response.headers["Content-Security-Policy"] = policy(page)
    return response
