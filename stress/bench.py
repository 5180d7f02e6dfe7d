"""Benchmark one model in one run: the raw compiled model, then the whole stack.

(a) raw: the worker's own compiled forward pass, in this process, by batch size;
(b) served: Apache -> Redis -> one worker on this machine, closed loops at each
    concurrency: req/s, p50/p99, mean batch size, served / raw-best throughput;
plus the resident memory of the worker and the web processes. Prints a Markdown
report and, with --report DIR, writes it there.

    python stress/bench.py --model digits
    python stress/bench.py --model mobilenet_v2 --repository /tmp/models \\
        --image <photo.jpg> --concurrency 1,32
"""
import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app import repository, runtimes, settings as settings_module  # noqa: E402
from app.devstack import RedisServer, Stack, free_port  # noqa: E402
from app.keys import Keys  # noqa: E402
from app.settings import PROJECT_ROOT  # noqa: E402
from stress import stress_test  # noqa: E402


def raw_benchmark(spec, batch_sizes, seconds):
    """{batch: (median latency s, images/s)} for the compiled forward pass alone."""
    runner = runtimes.load(spec)
    rng = np.random.default_rng(0)
    results = {}
    for batch in batch_sizes:
        pixels = rng.integers(0, 256, (batch, *spec.shape), dtype=np.uint8)
        runner(pixels)
        times, stop_at = [], time.perf_counter() + seconds
        while time.perf_counter() < stop_at or len(times) < 5:
            began = time.perf_counter()
            runner(pixels)
            times.append(time.perf_counter() - began)
        latency = statistics.median(times)
        results[batch] = (latency, batch / latency)
    return results


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def web_pids(apache_pid):
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == apache_pid and (stat.parent / "cmdline").read_bytes().startswith(b"(wsgi:"):
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return pids


def worker_counts(client, keys, name):
    status = json.loads(client.get(keys.worker(name)) or "{}")
    return status.get("batches", 0), status.get("requests", 0)


def served_benchmark(settings, run_dir, image, levels, requests_per_level, seconds):
    """[(concurrency, summary, mean batch)] through Apache, Redis and one worker."""
    stack = Stack(settings, run_dir)
    stack.start()
    keys = Keys(settings.key_prefix)
    client = redis.Redis.from_url(settings.redis_url)
    url = stack.url + "/predict"
    try:
        stress_test.run(url, image, count=50, concurrency=4)  # warm up every process
        rows = []
        for level in levels:
            before = worker_counts(client, keys, stack.workers[0].name)
            summary = stress_test.run(url, image, count=requests_per_level * max(1, level // 8),
                                      concurrency=level, max_seconds=seconds)
            time.sleep(1.5)  # the next heartbeat carries the worker's counts
            after = worker_counts(client, keys, stack.workers[0].name)
            batches = max(1, after[0] - before[0])
            rows.append((level, summary, (after[1] - before[1]) / batches))
        memory = {"worker": rss_mb(stack.workers[0].process.pid),
                  "web": [rss_mb(pid) for pid in web_pids(stack.apache.process.pid)]}
        return rows, memory
    finally:
        stack.stop()


def report(spec, raw, served, memory):
    best_batch, (_, best) = max(raw.items(), key=lambda item: item[1][1])
    lines = [f"## {spec.name} v{spec.version} ({spec.height}x{spec.width}x{spec.channels}, "
             f"{spec.runtime})", "",
             "Raw compiled forward pass, in process:", "",
             "| batch | latency ms | images/s |", "|---:|---:|---:|"]
    lines += [f"| {b} | {lat * 1000:.2f} | {ips:.1f} |" for b, (lat, ips) in raw.items()]
    lines += ["", "Served through Apache -> Redis -> 1 worker (closed loop):", "",
              "| concurrency | requests | req/s | p50 ms | p99 ms | mean batch | served / raw best |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for level, s, mean_batch in served:
        lines.append(f"| {level} | {s['requests']} ({s['failed']} failed) | {s['throughput']:.1f} "
                     f"| {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {mean_batch:.1f} | "
                     f"{s['throughput'] / best:.2f} |")
    raw1 = raw[min(raw)][0] * 1000
    c1 = next((s for level, s, _ in served if level == 1), None)
    lines += ["", f"Raw best: {best:.1f} images/s at batch {best_batch}; raw batch-1 latency "
                  f"{raw1:.2f} ms" + (f"; served c=1 p50 is raw + {c1['p50_ms'] - raw1:.1f} ms"
                                      if c1 else "") + ".",
              f"Resident memory: worker {memory['worker']:.0f} MB; web processes "
              + ", ".join(f"{m:.0f} MB" for m in memory["web"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--version", type=int, help="default: the newest")
    parser.add_argument("--repository", default=str(PROJECT_ROOT / "models"))
    parser.add_argument("--image", default=str(stress_test.DEFAULT_IMAGE))
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--requests", type=int, default=400,
                        help="requests per concurrency level (x level/8 above 8)")
    parser.add_argument("--seconds", type=float, default=60, help="time cap per measurement")
    parser.add_argument("--report", help="folder to write report.md into")
    args = parser.parse_args(argv)

    version = args.version or max(repository.versions(args.repository, args.model))
    spec = repository.load_spec(args.repository, args.model, version)
    raw = raw_benchmark(spec, [int(b) for b in args.batches.split(",")], min(args.seconds, 5))
    work = Path(tempfile.mkdtemp(prefix="beagle-bench-"))
    work.chmod(0o755)
    own_redis = RedisServer(work / "redis").start()
    try:
        settings = settings_module.load(
            {}, redis_url=own_redis.url, port=free_port(), model_repository=args.repository,
            models=f"{args.model}:{version}", default_model=args.model)
        served, memory = served_benchmark(
            settings, work, Path(args.image).read_bytes(),
            [int(c) for c in args.concurrency.split(",")], args.requests, args.seconds)
    finally:
        own_redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = report(spec, raw, served, memory)
    print(text)
    if args.report:
        Path(args.report).mkdir(parents=True, exist_ok=True)
        (Path(args.report) / "report.md").write_text(text)


if __name__ == "__main__":
    main()
