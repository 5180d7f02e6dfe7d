"""The benchmark, in one run: the raw compiled model, Beagle serving it, and (--peer
litserve) LitServe serving the same model file, both driven by the same C load generator.

    python -m stress.bench                                  # MobileNetV2, TF and ONNX Runtime
    python -m stress.bench --model null --peer litserve     # the stacks alone, side by side
    python -m stress.bench --model digits --runtimes tensorflow
    make bench MODEL=null PEER=litserve

For each runtime: (a) raw: the worker's forward pass in this process, by batch size;
(b) served: closed loops of --requests requests at each concurrency (wrk, stress/wrk.py)
through Apache -> Redis -> one worker with max_batch_size --max-batch-size, then through
the peer with the same batch size: req/s, p50/p99, and the CPU milliseconds each part of
the stack spends per request (stress/cpu.py), and the load generator's. The model is
MobileNetV2 with random weights (same compute, offline), exported for each runtime; `null`
is an ONNX graph that computes nothing (stress/null_model.py). The image is a 224x224 JPEG.
Writes report.md, results.json and bench.png to --report (stress/bench_report.py).
"""

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from app import config
from app.config import PROJECT_ROOT
from app.keys import Keys
from app.redis_connection import client as redis_client
from app.registry import Directory
from app.worker import repository, runtimes
from stress import bench_report, cpu, null_model, wrk
from stress.peer import LitServe
from tools.devstack import RedisServer, Stack, free_port
from tools.exporting import ARCHITECTURES, export

PEERS = ("litserve",)


def photo(side=224):
    """A JPEG at quality 75 of the photo scikit-learn ships, ``side`` pixels square."""
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).resize((side, side)).save(
        buffer, "JPEG", quality=75
    )
    return buffer.getvalue()


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


def levels(url, image, args, parts, batches=None):
    """The closed loops at each concurrency: [{concurrency, summary, cpu_ms, mean_batch}],
    cpu_ms being {part: CPU ms per request} with the load generator's as "client";
    ``batches()``, if given, (forward passes, requests) so far."""
    wrk.run(url, image, 60, 4, api_key=args.api_key)  # warm everything up
    rows = []
    for level in args.concurrency_levels:
        before, passes = parts(), batches and batches()
        summary = wrk.run(url, image, args.requests, level, args.seconds, args.api_key)
        used = cpu.per_request_ms(before, parts(), summary["requests"])
        used["client"] = summary.pop("client_cpu_s") * 1000 / max(1, summary["requests"])
        rows.append({"concurrency": level, "summary": summary, "cpu_ms": used})
        if batches:
            time.sleep(1.2)  # the workers' next heartbeats carry their counts
            ran, served = (after - was for after, was in zip(batches(), passes, strict=True))
            rows[-1]["mean_batch"] = served / max(1, ran)
        print(
            f"  c={level}: {summary['throughput']:.1f} req/s, p99 {summary['p99_ms']:.0f} ms, "
            f"server CPU {sum(v for k, v in used.items() if k != 'client'):.2f} ms/req",
            flush=True,
        )
    return rows


def serve_beagle(spec, args, image, work):
    prefix = f"bench-{spec.runtime}"
    own_redis = RedisServer(work / f"redis-{spec.runtime}", key_prefix=prefix).start()
    settings = config.load(
        {},
        redis_url=own_redis.url,
        port=free_port(),
        key_prefix=prefix,
        model_repository=str(spec.path.parent.parent),
        models=f"{spec.name}:{spec.version}",
        default_model=spec.name,
        max_batch_size=args.max_batch_size,
        worker_threads=args.worker_threads,
        **dict(item.split("=", 1) for item in args.set),
    )
    run_dir = work / f"run-{spec.runtime}"
    stack = Stack(settings, run_dir, workers=args.workers, role_urls=own_redis.role_urls).start()
    directory = Directory(
        redis_client(settings, socket_timeout=5),
        Keys(settings.key_prefix),
        settings.heartbeat_ttl,
    )
    workers = [worker.process.pid for worker in stack.workers]
    try:

        def parts():
            return cpu.beagle_parts(stack.apache.process.pid, workers, own_redis.process.pid)

        def batches():
            status = directory.workers()
            return sum(s["batches"] for s in status), sum(s["requests"] for s in status)

        rows = levels(stack.url + "/predict", image, args, parts, batches)
        return {
            "levels": rows,
            "memory_mb": {
                "worker": sum(cpu.rss_mb(pid) for pid in workers),
                "web": [
                    cpu.rss_mb(pid)
                    for pid in cpu.children(stack.apache.process.pid)
                    if cpu.is_wsgi_daemon(pid)
                ],
            },
        }
    finally:
        stack.stop()
        own_redis.stop()


def serve_peer(spec, args, image, work):
    server = LitServe(
        spec,
        args.max_batch_size,
        args.peer_batch_timeout,
        args.workers,
        args.worker_threads,
        work / f"litserve-{spec.runtime}.log",
    ).start()
    try:
        rows = levels(
            server.url + "/predict",
            image,
            args,
            lambda: cpu.tree_parts(server.process.pid, "litserve"),
        )
        return {
            "levels": rows,
            "memory_mb": {
                "server": sum(
                    cpu.rss_mb(pid)
                    for pid in [server.process.pid, *cpu.descendants(server.process.pid)]
                )
            },
        }
    finally:
        server.stop()


def model_for(runtime, args, work):
    """The spec to benchmark for ``runtime``: the null model, one from the repository,
    or an architecture exported now with random weights."""
    if args.model == "null":
        return repository.load_spec(null_model.publish(work / "models").parent.parent, "null", 1)
    if args.model in repository.names(args.repository):
        spec = repository.load_spec(
            args.repository, args.model, max(repository.versions(args.repository, args.model))
        )
        if spec.runtime != runtime:
            raise SystemExit(
                f"{args.model} in {args.repository} is a {spec.runtime} model; "
                f"export it for {runtime} or bench --runtimes {spec.runtime}"
            )
        return spec
    if args.model not in ARCHITECTURES:
        raise SystemExit(
            f"{args.model}: not in {args.repository} nor an architecture "
            f"({', '.join(ARCHITECTURES)}) nor null"
        )
    name = f"{args.model}_{runtime}"
    export(args.model, name, 1, work / "models", runtime, "none")
    return repository.load_spec(work / "models", name, 1)


def bench_runtime(runtime, args, image, work):
    spec = model_for(runtime, args, work)
    print(f"{runtime}: raw forward pass of {spec.name} by batch size...", flush=True)
    raw = raw_benchmark(spec, [int(b) for b in args.batches.split(",")], args.raw_seconds)
    print(f"{runtime}: Beagle (Apache -> Redis -> worker)...", flush=True)
    served = {"beagle": serve_beagle(spec, args, image, work)}
    if args.peer:
        print(f"{runtime}: {args.peer}...", flush=True)
        served[args.peer] = serve_peer(spec, args, image, work)
    return {
        "runtime": runtime,
        "model": args.model,
        "shape": list(spec.shape),
        "raw": {
            str(b): {"latency_ms": lat * 1000, "images_per_s": ips} for b, (lat, ips) in raw.items()
        },
        "served": served,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument(
        "--model", default="mobilenet_v2", help="an architecture, a model of --repository, or null"
    )
    parser.add_argument("--runtimes", help="default: tensorflow,onnx (onnx for null)")
    parser.add_argument("--peer", choices=PEERS, help="serve the same model with it too")
    parser.add_argument("--repository", default=str(PROJECT_ROOT / "models"))
    parser.add_argument("--image", help="image to post (default: a 224x224 JPEG photo)")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=1000, help="per concurrency level")
    parser.add_argument("--seconds", type=float, default=120, help="time cap per level")
    parser.add_argument("--raw-seconds", type=float, default=3, help="per batch size")
    parser.add_argument("--max-batch-size", type=int, default=16, help="for both servers")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="model workers, on both servers (LitServe's workers_per_device)",
    )
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=0,
        help="each worker's runtime threads, on both (0: one per core)",
    )
    parser.add_argument("--api-key", default="", help="sent as a Bearer token")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Beagle setting for the served run (repeatable)",
    )
    parser.add_argument(
        "--peer-batch-timeout",
        type=float,
        default=0.001,
        help="LitServe's (at 0 it polls its queue in a busy loop)",
    )
    parser.add_argument("--report", default=str(PROJECT_ROOT / "reports" / "bench"))
    args = parser.parse_args(argv)
    args.concurrency_levels = [int(c) for c in args.concurrency.split(",")]
    chosen = args.runtimes or ("onnx" if args.model == "null" else "tensorflow,onnx")
    image = Path(args.image).read_bytes() if args.image else photo()
    work = Path(tempfile.mkdtemp(prefix="beagle-bench-"))
    work.chmod(0o755)
    try:
        results = [bench_runtime(runtime, args, image, work) for runtime in chosen.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bench_report.write(Path(args.report), results, args, image)


if __name__ == "__main__":
    main()
