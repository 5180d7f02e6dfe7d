"""Observability and the user's view: /metrics, the page at /, /openapi.json, the stress
report, the Locust file, and request ids through the logs."""

import base64
import csv
import json
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema_rs
import pytest
import requests
from helpers import metric_value, predict, sample, scrape, wait_for, wait_queued

from app import registry
from app.config import PROJECT_ROOT
from app.keys import Keys
from app.web import create_app
from stress import stress_test

SCREENSHOTS = PROJECT_ROOT / "reports" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def shared_counts(url):
    """The metrics once they hold all 602 requests and the 600 images' batches."""
    m = scrape(url)
    done = (
        metric_value(m, "beagle_request_duration_seconds_count", model="digits") == 601
        and metric_value(m, "beagle_requests_total", model="-", code="404") == 1
        and metric_value(m, "beagle_batch_size_sum", model="digits") == 600
    )
    return m if done else None


def test_metrics_count_every_request_across_web_processes(start_stack, client):
    stack = start_stack(web_processes=2)
    summary = stress_test.run(stack.url + "/predict", sample(2), count=600, concurrency=16)
    assert summary["statuses"] == {"200": 600}
    predict(stack.url, b"not an image")
    predict(stack.url, sample(2), model="nope")
    # Until the worker's and the other web process's next beats, some counts are not shared.
    m = wait_for(lambda: shared_counts(stack.url), 10, "the latest counts in /metrics")
    status = registry.status(client, Keys(stack.settings.key_prefix), stack.workers[0].name)
    print(
        f"\nmetrics after 600 requests: {status['batches']} batches, "
        f"mean {600 / status['batches']:.2f} per batch"
    )
    assert metric_value(m, "beagle_requests_total", model="digits", code="200") == 600
    assert metric_value(m, "beagle_requests_total", model="digits", code="400") == 1
    assert metric_value(m, "beagle_requests_total", model="-", code="404") == 1
    assert metric_value(m, "beagle_request_duration_seconds_count", model="digits") == 601
    # The batch histogram agrees with the worker: one observation per forward pass,
    # summing to the requests it ran.
    assert metric_value(m, "beagle_batch_size_count", model="digits") == status["batches"]
    assert metric_value(m, "beagle_batch_size_sum", model="digits") == 600
    assert metric_value(m, "beagle_inference_seconds_count", model="digits") == status["batches"]
    assert metric_value(m, "beagle_queue_wait_seconds_count", model="digits") == 600
    buckets = sorted(
        (float(dict(ls)["le"]), v) for (n, ls), v in m.items() if n == "beagle_batch_size_bucket"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert buckets[-1][1] == status["batches"]
    assert metric_value(m, "beagle_model_loads_total", model="digits") == 1
    assert metric_value(m, "beagle_live_workers", model="digits") == 1
    assert metric_value(m, "beagle_queue_depth", model="digits") == 0
    assert metric_value(m, "beagle_workers") == 1


def test_shed_requests_are_counted_by_reason(start_stack, client):
    stack = start_stack(max_queue=1, request_timeout=2.0)
    stack.workers[0].signal(signal.SIGSTOP)
    try:
        waiting = threading.Thread(target=predict, args=(stack.url, sample(1)))
        waiting.start()
        wait_queued(client, stack.settings, 1, timeout=5)
        assert predict(stack.url, sample(1)).status_code == 503
        waiting.join()
    finally:
        stack.workers[0].signal(signal.SIGCONT)
    m = scrape(stack.url)
    assert metric_value(m, "beagle_shed_total", model="digits", reason="full") == 1
    assert metric_value(m, "beagle_requests_total", model="digits", code="503") == 1
    assert metric_value(m, "beagle_requests_total", model="digits", code="504") == 1


def test_metrics_are_for_admin_networks_only(start_stack):
    stack = start_stack(admin_networks="10.99.0.0/16")
    refused = requests.get(stack.url + "/metrics")
    assert refused.status_code == 403 and "admin_networks" in refused.json()["error"]
    status = requests.get(stack.url + "/status")  # no keys: only admin networks
    assert status.status_code == 403 and "admin_networks" in status.json()["error"]


def test_the_page_classifies_an_uploaded_digit_in_a_real_browser(stack):
    from playwright.sync_api import expect, sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 760})
            page.goto(stack.url + "/")
            page.wait_for_selector("#status-models td:has-text('digits')")
            page.set_input_files("#file", str(PROJECT_ROOT / "stress/images/digit_7.png"))
            page.wait_for_selector("#predictions li")
            labels = page.locator("#predictions .label").all_inner_texts()
            assert labels[0] == "7" and len(labels) == 5
            assert page.locator("#predictions .probability").first.inner_text().endswith("%")
            assert "digits v1" in page.locator("#meta").inner_text()
            # The page's own Content-Security-Policy forbids eval, hence no wait_for_function.
            expect(page.locator("#throughput")).not_to_have_text("–", timeout=10_000)
            page.screenshot(path=str(SCREENSHOTS / "index.png"), full_page=True)
        finally:
            browser.close()
    assert (SCREENSHOTS / "index.png").read_bytes()[:4] == b"\x89PNG"


def test_openapi_describes_every_endpoint_and_schemathesis_finds_nothing(stack):
    document = requests.get(stack.url + "/openapi.json").json()
    app = create_app({"redis_url": "redis://127.0.0.1:1/0"})  # never connects
    routes = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    documented = {
        path.replace("{name}", "<model:name>").replace("{version}", "<int:version>")
        for path in document["paths"]
    }
    assert routes == documented
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(Path(__file__).parent / "schemathesis.toml"),
            "run",
            stack.url + "/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "15",
            "--request-timeout",
            "15",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout[-1500:])
    assert done.returncode == 0, done.stdout[-6000:]


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        ("PredictJSON", {"image": "", "model": ""}),
        ("TFPredictRequest", {}),
        ("TFPredictRequest", {"unknown": 1, "keys": 2}),
        ("V2InferRequest", {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": []}]}),
    ],
)
def test_what_the_server_refuses_the_document_calls_invalid(stack, schema, body):
    """What schemathesis found the server refusing while the document allowed it, now
    outside the document (a client generated from it never sends them)."""
    document = requests.get(stack.url + "/openapi.json").json()
    wrapped = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    assert not jsonschema_rs.validator_for(wrapped).is_valid(body)


def test_stress_report_and_progress(stack, tmp_path):
    command = shlex.join(
        [
            sys.executable,
            "-m",
            "stress.stress_test",
            "--url",
            stack.url + "/predict",
            "--requests",
            "200",
            "--concurrency",
            "8",
            "--report",
            str(tmp_path),
        ]
    )
    # Under a terminal (script gives it one, stty a size), as a person runs it: the
    # progress bar shows.
    done = subprocess.run(
        ["script", "-qec", f"stty rows 24 cols 100; {command}", "/dev/null"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout
    assert "200/200" in done.stdout and "req/s" in done.stdout  # the bar's last state
    assert "200 requests in" in done.stdout and "report:" in done.stdout
    report = (tmp_path / "report.md").read_text()
    assert "| 200 | 200 |" in report and "req/s" in report
    assert "![latency over time](latency_over_time.png)" in report
    for png in ("latency_over_time.png", "latency_histogram.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["requests"] == 200


def test_locust_file_runs_headless(stack, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            "stress/locustfile.py",
            "--host",
            stack.url,
            "--headless",
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "5s",
            "--only-summary",
            "--csv",
            str(tmp_path / "locust"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "locust_stats.csv") as stats:
        row = next(r for r in csv.DictReader(stats) if r["Name"] == "/predict")
    print(
        f"\nlocust, 4 users for 5 s: {row['Request Count']} requests, "
        f"{row['Failure Count']} failed, median {row['Median Response Time']} ms"
    )
    assert int(row["Request Count"]) > 50 and int(row["Failure Count"]) == 0


def wait_logged(stack, *texts):
    """Until Apache's access log holds each of ``texts``: Apache logs a request after it
    has sent the answer, so a client can read the log first."""
    access_log = stack.apache.error_log.with_name("access.log")
    wait_for(lambda: all(t in access_log.read_text() for t in texts), 10, f"{texts} logged")


def test_one_request_can_be_followed_through_every_log(start_stack):
    stack = start_stack(log_level="DEBUG")
    response = predict(stack.url, sample(5))
    request_id = response.headers["X-Request-ID"]
    failed = predict(stack.url, b"junk")
    stack.workers[0].stop()
    logs = [str(stack.apache.error_log.with_name(name)) for name in ("access.log", "error.log")]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.tail_logs",
            "--lines",
            "100000",
            "--request-id",
            request_id,
            "--file",
            logs[0],
            "--file",
            logs[1],
            "--file",
            str(stack.workers[0].log_path),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    lines = done.stdout.splitlines()
    assert any(
        line.lstrip().startswith("access |") and "POST /predict" in line and " 200 " in line
        for line in lines
    ), done.stdout
    assert any(line.lstrip().startswith("worker-0 |") and "batch of" in line for line in lines), (
        done.stdout
    )
    wait_logged(stack, failed.headers["X-Request-ID"])


def test_trace_context_runs_from_the_caller_through_apache_and_redis_to_the_worker(start_stack):
    stack = start_stack(log_level="DEBUG")
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    sent = {"traceparent": f"00-{trace_id}-{caller_span}-01"}
    answers = [
        requests.post(f"{stack.url}/predict", files={"image": sample(5)}, headers=sent),
        requests.post(
            f"{stack.url}/v1/models/digits:predict",
            json={"instances": [{"b64": base64.b64encode(sample(5)).decode()}]},
            headers=sent,
        ),
        requests.post(
            f"{stack.url}/v2/models/digits/infer",
            json={
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [base64.b64encode(sample(5)).decode()],
                    }
                ]
            },
            headers=sent,
        ),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        version, trace, span, flags = answer.headers["traceparent"].split("-")
        assert (version, trace, flags) == ("00", trace_id, "01") and span != caller_span
    fresh = requests.get(f"{stack.url}/healthz", headers={"traceparent": "00-zz-bad-01"})
    assert fresh.headers["traceparent"].split("-")[1] not in (trace_id, "0" * 32)
    wait_logged(stack, *(a.headers["traceparent"] for a in answers))
    wait_for(
        lambda: stack.workers[0].log_path.read_text().count(f"(trace {trace_id})") >= 3,
        10,
        "the worker's batch lines naming the trace",
    )
