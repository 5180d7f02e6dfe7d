"""The benchmark runs end to end, Beagle and its peer side by side (each alone while the
other is paused), and writes its report (small counts: a smoke run; the figures themselves
are the benchmark's, never a test's)."""

import itertools
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from app.config import PROJECT_ROOT
from stress import wrk
from stress.bench_report import BEAGLE_PARTS, failures


def test_bench_side_by_side_writes_report_table_and_plot(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stress.bench",
            "--model",
            "null",
            "--peer",
            "litserve",
            "--batches",
            "1,4",
            "--concurrency",
            "1,4",
            "--requests",
            "200",
            "--min-seconds",
            "0",
            "--rounds",
            "2",
            "--protocols",
            "predict,v2",
            "--raw-seconds",
            "0.3",
            "--report",
            str(tmp_path),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    for server in ("beagle", "beagle v2", "litserve"):
        assert f"| 4 | {server} |" in report
    assert "÷ peer req/s, per round" in report and "CPU milliseconds per request" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["run"]["model"] == "null" and saved["run"]["peer"] == "litserve"
    results = saved["results"]
    for server in ("beagle", "beagle v2", "litserve"):
        levels = results[0]["served"][server]["levels"]
        assert [row["concurrency"] for row in levels] == [1, 4]
        assert all(len(row["rounds"]) == 2 for row in levels)
        assert all(
            row["summary"]["failed"] == 0 and row["summary"]["requests"] >= 400 for row in levels
        ), levels
        assert all(row["cpu_ms"]["client"] > 0 for row in levels)
        # the other server is paused while one is under load: its CPU stays still (a tick)
        assert all(r["paused_cpu_ms"] <= 10 for row in levels for r in row["rounds"]), levels
    beagle = results[0]["served"]["beagle"]["levels"][-1]["cpu_ms"]
    # /proc counts CPU in 10 ms ticks: a smoke run's smaller parts may read 0
    assert set(BEAGLE_PARTS) <= set(beagle) and beagle["mod_wsgi"] > 0
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "report.md").unlink()  # rendered again from results.json alone
    subprocess.run(
        [sys.executable, "-m", "stress.bench_report", str(tmp_path)],
        check=True,
        cwd=PROJECT_ROOT,
        capture_output=True,
    )
    assert (tmp_path / "report.md").read_text() == report


def test_wrk_counts_each_status_other_than_200_and_keeps_the_first_body():
    """A level's failed requests say what they were: the bench keeps each status's count
    and its first answer's body, and the report lists them."""
    turns = itertools.cycle([200, 200, 503])
    lock = threading.Lock()

    class Alternating(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                status = next(turns)
            body = b'{"ok": true}' if status == 200 else b'{"error": "busy\nnow"}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Alternating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        summary = wrk.run(url, b"x", {"Content-Type": "text/plain"}, 90, 1, max_seconds=30)
    finally:
        server.shutdown()
    assert summary["failed"] == summary["requests"] // 3 > 0, summary
    assert summary["failures"] == {
        "503": {"count": summary["failed"], "first": '{"error": "busy now"}'}
    }
    level = {"concurrency": 1, "rounds": [{"failures": summary["failures"]}]}
    listed = failures({"served": {"beagle": {"levels": [level]}}})
    assert f'- beagle, c=1, round 1: {summary["failed"]} × 503: `{{"error": "busy now"}}`' in listed
    level["rounds"].append({"summary": {**summary, "socket_errors": 3}})
    listed = failures({"served": {"beagle": {"levels": [level]}}})
    assert (
        "- beagle, c=1, round 2: 3"
        in listed[listed.index("Socket errors (wrk: connect, read, write or timeout):") :]
    )
