"""The stress test, run as a user runs it, against a real stack."""

import json
import subprocess
import sys

from app.config import PROJECT_ROOT

STRESS = PROJECT_ROOT / "stress" / "stress_test.py"


def stress(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "stress.stress_test", *map(str, args)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_open_loop_like_the_classic_stress_test(stack):
    done = stress("--url", stack.url + "/predict", "--requests", 200, "--interval", 0.02)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("200 requests in ") and "req/s" in out
    assert "  200: 200" in out and "top labels: 7=200" in out
    assert "latency ms: p50 " in out and " p90 " in out and " p99 " in out and " max " in out


def test_closed_loop_reports_json(stack):
    done = stress(
        "--url",
        stack.url + "/predict",
        "--requests",
        300,
        "--concurrency",
        16,
        "--image",
        PROJECT_ROOT / "stress/images/digit_3.png",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["requests"] == 300 and summary["statuses"] == {"200": 300}
    assert summary["labels"] == {"3": 300} and summary["failed"] == 0
    assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]


def test_failures_make_it_exit_non_zero(stack):
    done = stress(
        "--url", stack.url + "/predict", "--requests", 5, "--interval", 0.01, "--image", STRESS
    )
    assert done.returncode == 1
    assert "  400: 5" in done.stdout and "not an image" in done.stdout
