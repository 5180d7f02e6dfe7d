"""Beagle under Locust, for those who prefer it to stress/stress_test.py.

    locust -f stress/locustfile.py --host http://127.0.0.1:8080            # web UI on :8089
    locust -f stress/locustfile.py --host http://127.0.0.1:8080 --headless -u 32 -r 8 -t 60s

BEAGLE_LOCUST_IMAGE picks the image (default: a bundled digit), BEAGLE_LOCUST_MODEL the
model (default: the server's default). A request counts as failed unless it is a 200
with "success": true.
"""
import os
from pathlib import Path

from locust import HttpUser, task

IMAGE = Path(os.environ.get("BEAGLE_LOCUST_IMAGE",
                            Path(__file__).resolve().parent / "images" / "digit_7.png"))
MODEL = os.environ.get("BEAGLE_LOCUST_MODEL")


class PredictUser(HttpUser):
    """One closed-loop client: posts the image as soon as the last answer arrived."""

    image = IMAGE.read_bytes()

    @task
    def predict(self):
        data = {"model": MODEL} if MODEL else None
        with self.client.post("/predict", files={"image": ("image", self.image)}, data=data,
                              catch_response=True, name="/predict") as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:120]}")
            elif not response.json().get("success"):
                response.failure(response.text[:120])
