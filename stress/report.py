"""The stress test's report: report.md with the figures and status counts, and two PNGs:
latency over the run (each request a dot, coloured by outcome, with rolling p50 and p99)
and the latency histogram."""

import json
from collections import Counter
from pathlib import Path

import numpy as np

from tools import client


def write(directory, summary, samples, title):
    """Write report.md, summary.json, latency_over_time.png, latency_histogram.png."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _plot_over_time(samples, directory / "latency_over_time.png")
    _plot_histogram(samples, directory / "latency_histogram.png")
    (directory / "summary.json").write_text(json.dumps(summary, indent=1))
    (directory / "report.md").write_text(_markdown(summary, title))
    return directory / "report.md"


def _markdown(summary, title):
    lines = [
        f"# {title}",
        "",
        f"{summary['requests']} requests in {summary['seconds']:.1f} s: "
        f"**{summary['throughput']:.1f} req/s**, {summary['failed']} failed"
        + (f", {summary['retried']} {client.RESENT}" if summary.get("retried") else "")
        + ".",
        "",
        "| p50 ms | p90 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|",
        f"| {summary['p50_ms']:.1f} | {summary['p90_ms']:.1f} | {summary['p99_ms']:.1f} "
        f"| {summary['max_ms']:.1f} |",
        "",
        "| status | requests |",
        "|---|---:|",
    ]
    lines += [f"| {status} | {count} |" for status, count in sorted(summary["statuses"].items())]
    if summary["errors"]:
        lines += ["", "| failure | requests |", "|---|---:|"]
        lines += [f"| {error} | {count} |" for error, count in summary["errors"].items()]
    lines += [
        "",
        "![latency over time](latency_over_time.png)",
        "",
        "![latency histogram](latency_histogram.png)",
        "",
    ]
    return "\n".join(lines)


def _plot_over_time(samples, path):
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 4))
    by_status = {}
    for started, latency, status in samples:
        by_status.setdefault(str(status), []).append((started, latency * 1000))
    for status, points in sorted(by_status.items()):
        x, y = zip(*points, strict=True)
        axes.scatter(
            x,
            y,
            s=6,
            alpha=0.5,
            label=f"{status} ({len(points)})",
            color="tab:blue" if status == "200" else None,
        )
    if samples:
        ordered = sorted((s, lat * 1000) for s, lat, _ in samples)
        starts = np.array([s for s, _ in ordered])
        latencies = np.array([lat for _, lat in ordered])
        edges = np.arange(0, starts[-1] + 1.0, 1.0)
        middles, p50, p99 = [], [], []
        for left in edges:
            window = latencies[(starts >= left) & (starts < left + 1.0)]
            if len(window):
                middles.append(left + 0.5)
                p50.append(np.percentile(window, 50))
                p99.append(np.percentile(window, 99))
        axes.plot(middles, p50, color="black", linewidth=1.5, label="p50 per second")
        axes.plot(middles, p99, color="tab:red", linewidth=1.5, label="p99 per second")
    axes.set(
        xlabel="seconds into the run",
        ylabel="latency ms",
        yscale="log",
        title="latency over the run",
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_histogram(samples, path):
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 3.6))
    latencies = [latency * 1000 for _, latency, _ in samples]
    if latencies:
        low, high = max(min(latencies), 0.1), max(latencies) * 1.05
        axes.hist(latencies, bins=np.geomspace(low, high, 50), color="tab:blue")
        for q, style in ((50, "-"), (99, "--")):
            axes.axvline(
                np.percentile(latencies, q),
                color="black",
                linestyle=style,
                linewidth=1,
                label=f"p{q}",
            )
    statuses = Counter(str(status) for _, _, status in samples)
    axes.set(
        xscale="log",
        xlabel="latency ms",
        ylabel="requests",
        title="latency histogram — " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "--report needs matplotlib: run the stress test from the venv "
            "`make setup` builds, or pip install -r requirements-dev.txt"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
