"""Benchmark a model in one run, runtime by runtime: the raw compiled model, then the stack.

For each runtime: (a) raw, the worker's own forward pass in this process, by batch size;
(b) served, Apache -> Redis -> one worker on this machine, closed loops at each concurrency:
req/s, p50/p99, the mean batch the worker formed, and served / raw-best throughput. The
worker runs with max_batch_size set to the runtime's raw-best batch, as an operator would
after reading (a). Writes report.md, results.json and bench.png (throughput and latency
against concurrency) to --report.

    python -m stress.bench                                 # MobileNetV2, all runtimes
    python -m stress.bench --model digits --runtimes tensorflow
    python -m stress.bench --model resnet50 --image my_photo.jpg --concurrency 1,8,32

A model that is not in --repository but is a keras.applications architecture is exported
first, with random weights (same compute, no download), for each runtime.
"""
import argparse
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from PIL import Image

from app import repository, runtimes, settings as settings_module
from tools.devstack import RedisServer, Stack, free_port
from app.keys import Keys
from app.settings import PROJECT_ROOT
from stress import stress_test


def photo():
    """A 640x480 JPEG photo at quality 75 (about 62 KB), made from the one scikit-learn
    ships, as a typical client would send it."""
    from sklearn.datasets import load_sample_image
    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).resize((640, 480)).save(buffer, "JPEG",
                                                                          quality=75)
    return buffer.getvalue()


def pick_image(args):
    """(image bytes, what they are): --image, a bundled digit for small models, else
    the photo."""
    if args.image:
        return Path(args.image).read_bytes(), Path(args.image).name
    if args.model in repository.names(args.repository):
        versions = repository.versions(args.repository, args.model)
        if repository.load_spec(args.repository, args.model, versions[-1]).height < 64:
            return stress_test.DEFAULT_IMAGE.read_bytes(), "a bundled digit PNG"
    return photo(), "a 640x480 JPEG photo (q75)"


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


def served_benchmark(settings, run_dir, image, levels, requests_per_level, seconds, body):
    """[{concurrency, summary, mean_batch}], {memory} through Apache, Redis and a worker."""
    stack = Stack(settings, run_dir)
    stack.start()
    keys = Keys(settings.key_prefix)
    client = redis.Redis.from_url(settings.redis_url)
    url = stack.url + "/predict"

    def worker_counts():
        status = json.loads(client.get(keys.worker(stack.workers[0].name)) or "{}")
        return status.get("batches", 0), status.get("requests", 0)

    try:
        stress_test.run(url, image, count=60, concurrency=4, body=body)  # warm everything up
        rows = []
        for level in levels:
            before = worker_counts()
            summary = stress_test.run(url, image, count=requests_per_level * max(1, level // 8),
                                      concurrency=level, max_seconds=seconds, body=body)
            time.sleep(1.5)  # the worker's next heartbeat carries its counts
            after = worker_counts()
            rows.append({"concurrency": level, "summary": summary,
                         "mean_batch": (after[1] - before[1]) / max(1, after[0] - before[0])})
        memory = {"worker_mb": rss_mb(stack.workers[0].process.pid),
                  "web_mb": [rss_mb(pid) for pid in web_pids(stack.apache.process.pid)]}
        return rows, memory
    finally:
        stack.stop()


def model_for(runtime, args, work):
    """The spec to benchmark for ``runtime``: from the repository, or exported now."""
    names = repository.names(args.repository)
    if args.model in names:
        spec = repository.load_spec(args.repository, args.model,
                                    max(repository.versions(args.repository, args.model)))
        if spec.runtime != runtime:
            raise SystemExit(f"{args.model} in {args.repository} is a {spec.runtime} model; "
                             f"export it for {runtime} or bench --runtimes {spec.runtime}")
        return spec
    from scripts.export_model import ARCHITECTURES, export
    if args.model not in ARCHITECTURES:
        raise SystemExit(f"{args.model}: not in {args.repository} nor an architecture "
                         f"({', '.join(ARCHITECTURES)})")
    name = f"{args.model}_{runtime}"
    export(args.model, name, 1, work / "models", runtime, "none")
    return repository.load_spec(work / "models", name, 1)


def bench_runtime(runtime, args, image, work):
    spec = model_for(runtime, args, work)
    print(f"{runtime}: raw forward pass of {spec.name} by batch size...", flush=True)
    raw = raw_benchmark(spec, [int(b) for b in args.batches.split(",")], args.raw_seconds)
    best_batch = max(raw, key=lambda b: raw[b][1])
    print(f"{runtime}: served through Apache -> Redis -> worker...", flush=True)
    own_redis = RedisServer(work / f"redis-{runtime}").start()
    try:
        settings = settings_module.load(
            {}, redis_url=own_redis.url, port=free_port(), key_prefix=f"bench-{runtime}",
            model_repository=str(spec.path.parent.parent), models=f"{spec.name}:{spec.version}",
            default_model=spec.name, max_batch_size=best_batch)
        served, memory = served_benchmark(settings, work / f"run-{runtime}", image,
                                          args.concurrency_levels, args.requests, args.seconds,
                                          args.body)
    finally:
        own_redis.stop()
    return {"runtime": runtime, "model": spec.name, "shape": list(spec.shape),
            "raw": {str(b): {"latency_ms": lat * 1000, "images_per_s": ips}
                    for b, (lat, ips) in raw.items()},
            "best_batch": best_batch, "served": served, **memory}


def markdown(results, image_note, body):
    lines = [f"# Benchmark: {results[0]['model'].rsplit('_', 1)[0]}", "",
             f"{time.strftime('%Y-%m-%d')}, {len(os.sched_getaffinity(0))} cores; "
             f"client: the threaded stress test (urllib3) on the same cores, posting "
             f"{image_note} as a {body} body.", ""]
    for result in results:
        raw = result["raw"]
        best = raw[str(result["best_batch"])]["images_per_s"]
        raw1 = raw[min(raw, key=int)]["latency_ms"]
        lines += [f"## {result['runtime']}", "",
                  "| batch | raw latency ms | raw images/s |", "|---:|---:|---:|"]
        lines += [f"| {b} | {r['latency_ms']:.2f} | {r['images_per_s']:.1f} |"
                  for b, r in raw.items()]
        lines += ["", "| concurrency | req/s | p50 ms | p99 ms | mean batch | served / raw best |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for row in result["served"]:
            s = row["summary"]
            failed = f" ({s['failed']} failed)" if s["failed"] else ""
            lines.append(f"| {row['concurrency']} | {s['throughput']:.1f}{failed} | "
                         f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {row['mean_batch']:.1f} | "
                         f"{s['throughput'] / best:.2f} |")
        first = result["served"][0]
        lines += ["", f"Raw best {best:.1f} images/s at batch {result['best_batch']} (the "
                      f"worker's max_batch_size here); raw batch-1 latency {raw1:.2f} ms, "
                      f"served c={first['concurrency']} p50 {first['summary']['p50_ms']:.1f} ms "
                      f"(+{first['summary']['p50_ms'] - raw1:.1f} ms). Resident memory: worker "
                      f"{result['worker_mb']:.0f} MB, web "
                      + ", ".join(f"{m:.0f} MB" for m in result["web_mb"]) + ".", ""]
    return "\n".join(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for result in results:
        levels = [row["concurrency"] for row in result["served"]]
        line, = throughput.plot(levels, [row["summary"]["throughput"] for row in
                                         result["served"]], marker="o", label=result["runtime"])
        best = result["raw"][str(result["best_batch"])]["images_per_s"]
        throughput.axhline(best, color=line.get_color(), linestyle=":", linewidth=1)
        latency.plot(levels, [row["summary"]["p50_ms"] for row in result["served"]], marker="o",
                     color=line.get_color(), label=f"{result['runtime']} p50")
        latency.plot(levels, [row["summary"]["p99_ms"] for row in result["served"]], marker="x",
                     linestyle="--", color=line.get_color(), label=f"{result['runtime']} p99")
    throughput.set(xscale="log", xlabel="concurrency", ylabel="requests/s",
                   title="served throughput (dotted: raw best)")
    latency.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="ms",
                title="served latency")
    for axes in (throughput, latency):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--runtimes", default="tensorflow,onnx,litert")
    parser.add_argument("--repository", default=str(PROJECT_ROOT / "models"))
    parser.add_argument("--image", help="image to post (default: a 640x480 photo, or for a "
                                        "model under 64 px a bundled digit)")
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=400,
                        help="requests per concurrency level (x level/8 above 8)")
    parser.add_argument("--seconds", type=float, default=60, help="time cap per level")
    parser.add_argument("--raw-seconds", type=float, default=3, help="per batch size")
    parser.add_argument("--body", choices=("raw", "multipart"), default="raw",
                        help="how the client sends the image (raw costs both ends less)")
    parser.add_argument("--report", default=str(PROJECT_ROOT / "reports" / "bench"))
    args = parser.parse_args(argv)
    args.concurrency_levels = [int(c) for c in args.concurrency.split(",")]

    image, note = pick_image(args)
    work = Path(tempfile.mkdtemp(prefix="beagle-bench-"))
    work.chmod(0o755)
    try:
        results = [bench_runtime(runtime, args, image, work)
                   for runtime in args.runtimes.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    text = markdown(results, f"{note}, {len(image) // 1024} KB", args.body)
    (report / "report.md").write_text(text)
    (report / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, report / "bench.png")
    print(text)
    print(f"wrote {report / 'report.md'}, {report / 'results.json'}, {report / 'bench.png'}")


if __name__ == "__main__":
    main()
