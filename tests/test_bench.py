"""The benchmark runs end to end and writes its report (small counts: a smoke run)."""
import json
import subprocess
import sys

from app.settings import PROJECT_ROOT


def test_bench_writes_report_table_and_plot(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "stress.bench", "--model", "digits",
         "--runtimes", "tensorflow", "--batches", "1,4", "--concurrency", "1,4",
         "--requests", "40", "--raw-seconds", "0.5", "--report", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
        env={"TF_CPP_MIN_LOG_LEVEL": "3",
                                                          "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert "| concurrency | req/s | p50 ms | p99 ms | mean batch | served / raw best |" in report
    assert "| 4 |" in report and "Raw best" in report and "Resident memory" in report
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["summary"]["failed"] for row in results[0]["served"]] == [0, 0]
    assert [row["concurrency"] for row in results[0]["served"]] == [1, 4]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
