"""The threaded stress test.

By default it behaves like the classic one: 500 requests, a new thread every 0.05 s,
each posting the image as multipart field ``image``. ``--concurrency N`` runs a closed
loop instead: N threads, each sending its next request as soon as the last is answered.
It shows a progress bar, prints counts per status, p50/p90/p99/max latency and
throughput, and exits 1 if any request failed; --report DIR also writes a Markdown report
with a latency-over-time plot and a latency histogram. Bounded in count (--requests) and
time (--max-seconds).

    python -m stress.stress_test [--url URL] [--image FILE] [--requests 500]
                                 [--interval 0.05 | --concurrency 32] [--body raw]
                                 [--api-key KEY] [--report DIR] [--json]
"""

import argparse
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from app import config
from stress import report as stress_report
from tools import client
from tools.client import default_api_key, json_body, post_image

DEFAULT_IMAGE = Path(__file__).resolve().parent / "images" / "digit_7.png"


class Results:
    """(start offset, latency, status) of every request, from any thread."""

    def __init__(self, progress=None):
        self.progress = progress  # a tqdm bar, or None
        self.samples = []
        self.labels = Counter()
        self.errors = Counter()
        self.retries = 0  # requests sent again, as client.RESENT says
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()

    def note_retry(self):
        with self.lock:
            self.retries += 1

    def add(self, started, latency, status, label=None, error=None):
        with self.lock:
            self.samples.append((started - self.t0, latency, status))
            if label is not None:
                self.labels[label] += 1
            if error:
                self.errors[error] += 1
        if self.progress is not None:
            self.progress.update(1)


@dataclass(frozen=True)
class Target:
    """What every request of a run sends, and where."""

    url: str
    image: bytes
    timeout: float = 30.0
    body: str = "multipart"  # or "raw": the image as the request body
    api_key: str = None  # sent as a Bearer token when given
    verify: bool = True  # check the HTTPS certificate


def post(pool, target, results):
    started = time.perf_counter()
    try:
        response, retried = post_image(
            pool, target.url, target.image, target.timeout, body=target.body, api_key=target.api_key
        )
        if retried:
            results.note_retry()
        status, answer = response.status, json_body(response)
        label = answer["predictions"][0]["label"] if status == 200 else None
        error = None if status == 200 else f"{status}: {answer.get('error', '')[:100]}"
    except client.Error as exc:
        status, label, error = "error", None, f"{type(exc).__name__}: {str(exc)[:100]}"
    results.add(started, time.perf_counter() - started, status, label, error)


def open_loop(target, count, interval, max_seconds, results):
    """A new thread every ``interval`` seconds, one request each."""
    threads = []
    stop_at = time.monotonic() + max_seconds
    pool = client.connections(64, target.verify)
    for _ in range(count):
        if time.monotonic() > stop_at:
            break
        thread = threading.Thread(target=post, args=(pool, target, results))
        thread.start()
        threads.append(thread)
        time.sleep(interval)
    for thread in threads:
        thread.join()


def closed_loop(target, count, concurrency, max_seconds, results):
    """``concurrency`` threads, each sending its next request when the last is answered."""
    remaining = iter(range(count))
    lock = threading.Lock()
    stop_at = time.monotonic() + max_seconds

    def run():
        pool = client.connections(verify=target.verify)  # one keep-alive connection per thread
        while time.monotonic() < stop_at:
            with lock:
                if next(remaining, None) is None:
                    return
            post(pool, target, results)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def summarize(results, elapsed):
    latencies = sorted(latency for _, latency, _ in results.samples)
    statuses = Counter(str(status) for _, _, status in results.samples)

    def pct(q):
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0
        )

    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "throughput": round(len(latencies) / elapsed, 2) if elapsed else 0,
        "statuses": dict(statuses),
        "failed": len(latencies) - statuses.get("200", 0),
        "p50_ms": round(pct(0.50), 2),
        "p90_ms": round(pct(0.90), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else 0,
        "labels": dict(results.labels),
        "errors": dict(results.errors.most_common(5)),
        "retried": results.retries,
    }


def print_summary(summary):
    print(
        f"{summary['requests']} requests in {summary['seconds']:.1f} s: "
        f"{summary['throughput']:.1f} req/s"
    )
    for status, count in sorted(summary["statuses"].items()):
        print(f"  {status}: {count}")
    print(
        f"latency ms: p50 {summary['p50_ms']:.1f}  p90 {summary['p90_ms']:.1f}  "
        f"p99 {summary['p99_ms']:.1f}  max {summary['max_ms']:.1f}"
    )
    if summary["labels"]:
        print("top labels: " + ", ".join(f"{k}={v}" for k, v in summary["labels"].items()))
    for error, count in summary["errors"].items():
        print(f"  failed x{count}: {error}")
    if summary["retried"]:
        print(f"{client.RESENT}: {summary['retried']}")


def run(
    url,
    image,
    count=500,
    interval=0.05,
    concurrency=0,
    timeout=30.0,
    max_seconds=300.0,
    body="multipart",
    progress=False,
    report=None,
    api_key=None,
    verify=True,
):
    """Run the stress test; the summary dict (see ``summarize``). ``progress`` shows a bar
    on a terminal; ``report`` names a folder for the report (stress/report.py)."""
    target = Target(url, image, timeout, body, api_key, verify)
    with tqdm(total=count, unit="req", disable=None if progress else True, file=sys.stderr) as bar:
        results = Results(bar)
        if concurrency:
            closed_loop(target, count, concurrency, max_seconds, results)
        else:
            open_loop(target, count, interval, max_seconds, results)
    summary = summarize(results, time.perf_counter() - results.t0)
    if report:
        mode = (
            f"{concurrency} threads, closed loop"
            if concurrency
            else f"a new thread every {interval:g} s"
        )
        stress_report.write(report, summary, results.samples, f"Stress test of {url} ({mode})")
    return summary


def main(argv=None):
    settings = config.load()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=f"http://{settings.host}:{settings.port}/predict")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument(
        "--interval",
        type=float,
        default=0.05,
        help="seconds between new threads (open loop, the default)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=0, help="closed loop with this many threads instead"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after")
    parser.add_argument(
        "--body",
        choices=("multipart", "raw"),
        default="multipart",
        help="send the image as multipart field 'image' or as the raw body",
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write report.md with latency plots and status counts to DIR",
    )
    parser.add_argument(
        "--api-key",
        default=default_api_key(settings),
        help="sent as 'Authorization: Bearer KEY' (default: the first of BEAGLE_API_KEYS, if set)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="accept any HTTPS certificate (a web host stressing its own loopback)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    image = Path(args.image).read_bytes()
    summary = run(
        args.url,
        image,
        args.requests,
        args.interval,
        args.concurrency,
        args.timeout,
        args.max_seconds,
        args.body,
        progress=not args.json,
        report=args.report,
        api_key=args.api_key,
        verify=not args.insecure,
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    if args.report:
        print(f"report: {Path(args.report) / 'report.md'}", file=sys.stderr)
    return 1 if summary["failed"] or not summary["requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
