"""GET /: a page to try a model in the browser and watch Beagle's live status."""

from flask import Blueprint, render_template

from app.web.resources import current_settings

bp = Blueprint("ui", __name__)


@bp.get("/")
def index() -> str:
    return render_template(
        "index.html", default_model=current_settings().default_model, top_k=current_settings().top_k
    )
