"""GET /: a page to try a model in the browser and watch Beagle's live status."""
from flask import Blueprint, render_template

from app.resources import settings

bp = Blueprint("ui", __name__)


@bp.get("/")
def index():
    return render_template("index.html", default_model=settings().default_model,
                           top_k=settings().top_k)
