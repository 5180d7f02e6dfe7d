"""The benchmark, in one run: the raw compiled model, Beagle serving it, and (--peer
litserve) LitServe serving the same model file, both driven by the same C load generator.

    python -m stress.bench                                  # MobileNetV2, TF and ONNX Runtime
    python -m stress.bench --model null --peer litserve     # the stacks alone, side by side
    python -m stress.bench --model digits --runtimes tensorflow
    make bench MODEL=null PEER=litserve

For each runtime: (a) raw: the worker's forward pass in this process, by batch size;
(b) served: closed loops of at least --requests requests and --min-seconds seconds at each
concurrency (wrk, stress/wrk.py) through Apache -> Redis -> one worker with max_batch_size
--max-batch-size (over /predict and, with --protocols predict,v2, the Open Inference
Protocol's binary infer), then through the peer with the same batch size, in --rounds
rounds where they take turns: req/s, p50/p99, and the CPU milliseconds each part of the
stack spends per request (stress/cpu.py), and the load generator's; medians, spreads and
per-round ratios. The model is
MobileNetV2 with random weights (same compute, offline), exported for each runtime; `null`
is an ONNX graph that computes nothing (stress/null_model.py). The image is a 224x224 JPEG.
Writes report.md, results.json and bench.png to --report (stress/bench_report.py).
"""

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app import config
from app.config import PROJECT_ROOT
from app.keys import Keys
from app.redis_connection import client as redis_client
from app.registry import Directory
from app.web.v2_tensors import HEADER_LENGTH, LENGTH
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


@dataclass
class Contender:
    """One server and protocol under load: where it posts, what, how to read the CPU its
    parts used (and, for Beagle, its workers' batch counts), and its process groups."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    parts: Callable[[], dict]
    batches: Callable[[], tuple[int, int]] | None = None
    groups: tuple[int, ...] = ()


def multipart(image, api_key=""):
    """/predict's body: ``image`` as multipart field image."""
    boundary = "beagle-bench-boundary"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="image"; filename="image.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, _keyed({"Content-Type": f"multipart/form-data; boundary={boundary}"}, api_key)


def v2_binary(image, api_key=""):
    """An Open Inference Protocol infer request: ``image`` as a binary BYTES input, the top
    5 classes asked for in binary, as tritonclient sends it (the same work as /predict's
    answer; the whole probability vector costs more to carry)."""
    element = LENGTH.pack(len(image)) + image
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True, "classification": 5}}
            ],
        }
    ).encode()
    return header + element, _keyed({HEADER_LENGTH: str(len(header))}, api_key)


def _keyed(headers, api_key):
    return {**headers, "Authorization": f"Bearer {api_key}"} if api_key else headers


def rounds(contenders, args):
    """Each contender at each concurrency, in --rounds rounds (A B A B ...: drift hits every
    contender alike): {name: [{concurrency, rounds: [{summary, failures, cpu_ms,
    mean_batch}]}]}."""
    found = {
        c.name: [{"concurrency": n, "rounds": []} for n in args.concurrency_levels]
        for c in contenders
    }
    try:
        for number in range(1, args.rounds + 1):
            for contender in contenders:
                alone(contender, contenders)
                others = paused(contender, contenders)
                for row in found[contender.name]:
                    row["rounds"].append(one_level(contender, row["concurrency"], args, others))
                    measured = row["rounds"][-1]
                    print(
                        f"  round {number}, {contender.name}, c={row['concurrency']}: "
                        f"{measured['summary']['throughput']:.1f} req/s, "
                        f"p99 {measured['summary']['p99_ms']:.0f} ms, "
                        f"server CPU {bench_report.server_ms(measured):.2f} ms/req"
                        + "".join(
                            f", {failure['count']} × {status}"
                            for status, failure in measured["failures"].items()
                        ),
                        flush=True,
                    )
    finally:
        run_only(contenders, None)  # stopped processes would not hear the signal to stop
    return found


def run_only(contenders, keep):
    """Resume the process groups in ``keep`` (None: all) and stop every other contender's."""
    for group in {group for contender in contenders for group in contender.groups}:
        resume = keep is None or group in keep
        with suppress(ProcessLookupError):  # a server that died: its stop will say so
            os.killpg(group, signal.SIGCONT if resume else signal.SIGSTOP)


def alone(running, contenders):
    """Let only ``running``'s processes run, and warm it up. An idle server still takes
    CPU (LitServe's loops poll its queues), which would come out of the turn of the server
    under load."""
    run_only(contenders, set(running.groups))
    for _ in range(10):  # a paused Beagle's heartbeats lapsed: its workers renew them
        if wrk.run(running.url, running.body, running.headers, 60, 4)["failed"] == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{running.name} failed its warm-up after being resumed")


def paused(running, contenders):
    """CPU seconds used so far by the servers other than ``running``'s (paused: none)."""
    others = {c.groups: c.parts for c in contenders if c.groups != running.groups}
    return lambda: sum(sum(parts().values()) for parts in others.values())


def one_level(contender, level, args, paused_cpu):
    """One closed loop at ``level``: its summary, the answers other than 200 by status,
    CPU ms per request by part (the load generator's as "client"), the CPU ms the paused
    servers used meanwhile (``paused_cpu`` reads their seconds) and, for Beagle, the mean
    batch."""
    before, paused_before = contender.parts(), paused_cpu()
    passes = contender.batches() if contender.batches else None
    summary = wrk.run(
        contender.url,
        contender.body,
        contender.headers,
        args.requests,
        level,
        args.seconds,
        args.min_seconds,
    )
    used = cpu.per_request_ms(before, contender.parts(), summary["requests"])
    used["client"] = summary.pop("client_cpu_s") * 1000 / max(1, summary["requests"])
    measured = {
        "failures": summary.pop("failures"),
        "summary": summary,
        "cpu_ms": used,
        "paused_cpu_ms": (paused_cpu() - paused_before) * 1000,
    }
    if contender.batches and passes:
        time.sleep(1.2)  # the workers' next heartbeats carry their counts
        ran, served = (after - was for after, was in zip(contender.batches(), passes, strict=True))
        measured["mean_batch"] = served / max(1, ran)
    return measured


@contextmanager
def beagle(spec, args, work):
    """Beagle serving ``spec``: (the stack, its parts' CPU, its batch counts)."""
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
    stack = Stack(
        settings, work / f"run-{spec.runtime}", workers=args.workers, role_urls=own_redis.role_urls
    )
    try:
        stack.start()
        directory = Directory(
            redis_client(settings, socket_timeout=5),
            Keys(settings.key_prefix),
            settings.heartbeat_ttl,
        )
        workers = [worker.process.pid for worker in stack.workers]

        def parts():
            return cpu.beagle_parts(stack.apache.process.pid, workers, own_redis.process.pid)

        def batches():
            status = directory.workers()
            return sum(s["batches"] for s in status), sum(s["requests"] for s in status)

        def memory():
            return {
                "worker": sum(cpu.rss_mb(pid) for pid in workers),
                "web": [
                    cpu.rss_mb(pid)
                    for pid in cpu.children(stack.apache.process.pid)
                    if cpu.is_wsgi_daemon(pid)
                ],
            }

        groups = (stack.apache.process.pid, *workers, own_redis.process.pid)
        yield stack.url, parts, batches, memory, groups
    finally:
        stack.stop()
        own_redis.stop()


@contextmanager
def peer(spec, args, work):
    """LitServe serving ``spec``: (its URL, its CPU, its memory)."""
    server = LitServe(
        spec,
        args.max_batch_size,
        args.peer_batch_timeout,
        args.workers,
        args.worker_threads,
        work / f"litserve-{spec.runtime}.log",
    ).start()
    tree = [server.process.pid]

    def memory():
        return {"server": sum(cpu.rss_mb(pid) for pid in [*tree, *cpu.descendants(tree[0])])}

    try:
        yield server.url, (lambda: cpu.tree_parts(tree[0], "litserve")), memory, (tree[0],)
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
    print(
        f"{runtime}: Beagle (Apache -> Redis -> worker) and {args.peer or 'no peer'}, "
        f"{args.rounds} rounds...",
        flush=True,
    )
    with ExitStack() as running:
        url, parts, batches, beagle_memory, groups = running.enter_context(beagle(spec, args, work))
        bodies = {"predict": multipart(image, args.api_key), "v2": v2_binary(image, args.api_key)}
        paths = {"predict": "/predict", "v2": f"/v2/models/{spec.name}/infer"}
        contenders = [
            Contender(
                "beagle" if protocol == "predict" else f"beagle {protocol}",
                url + paths[protocol],
                *bodies[protocol],
                parts,
                batches,
                groups,
            )
            for protocol in args.protocols.split(",")
        ]
        memory = {"beagle": beagle_memory}
        if args.peer:
            peer_url, peer_parts, memory[args.peer], peer_groups = running.enter_context(
                peer(spec, args, work)
            )
            contenders.append(
                Contender(
                    args.peer,
                    peer_url + "/predict",
                    *multipart(image),
                    peer_parts,
                    None,
                    peer_groups,
                )
            )
        found = rounds(contenders, args)
        served = {
            name: {
                "levels": [bench_report.summarize(row) for row in rows],
                "memory_mb": memory[name.split()[0]](),
            }
            for name, rows in found.items()
        }
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
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument(
        "--requests", type=int, default=5000, help="per concurrency level, at least"
    )
    parser.add_argument(
        "--min-seconds", type=float, default=10, help="per concurrency level, at least"
    )
    parser.add_argument("--seconds", type=float, default=120, help="time cap per level")
    parser.add_argument(
        "--rounds", type=int, default=3, help="Beagle and the peer take turns, this many times"
    )
    parser.add_argument(
        "--protocols",
        default="predict",
        help="Beagle's, comma-separated: predict (multipart /predict), v2 (binary infer)",
    )
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
