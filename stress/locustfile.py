"""Beagle under Locust, for those who prefer it to stress/stress_test.py.

    python -m locust -f stress/locustfile.py --host http://127.0.0.1:8080    # web UI on :8089
    python -m locust -f stress/locustfile.py --host http://127.0.0.1:8080 --headless \
        -u 32 -r 8 -t 60s

Run it from the checkout's root (python -m puts that on the path, for Beagle's own
modules).

BEAGLE_LOCUST_IMAGE picks the image (default: a bundled digit), BEAGLE_LOCUST_MODEL the
model (default: the server's default); with BEAGLE_API_KEYS set, the first key is sent
as a Bearer token. A request counts as failed unless it is a 200 with "success": true.
"""

import os
from pathlib import Path

from locust import HttpUser, task

from app import config
from tools.client import auth_headers, default_api_key

IMAGE = Path(
    os.environ.get(
        "BEAGLE_LOCUST_IMAGE", Path(__file__).resolve().parent / "images" / "digit_7.png"
    )
)
MODEL = os.environ.get("BEAGLE_LOCUST_MODEL")
HEADERS = auth_headers(default_api_key(config.load()))


class PredictUser(HttpUser):
    """One closed-loop client: posts the image as soon as the last answer arrived."""

    image = IMAGE.read_bytes()

    @task
    def predict(self):
        data = {"model": MODEL} if MODEL else None
        with self.client.post(
            "/predict",
            files={"image": ("image", self.image)},
            data=data,
            headers=HEADERS,
            catch_response=True,
            name="/predict",
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:120]}")
            elif not response.json().get("success"):
                response.failure(response.text[:120])
