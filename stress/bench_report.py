"""The benchmark's report: report.md (tables side by side, with ratios and each part's
CPU per request), results.json (the run's options and every figure) and bench.png
(throughput, p99 latency and CPU per request by part, for each runtime and server).

    python -m stress.bench_report reports/bench    # render again from results.json
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

BEAGLE_PARTS = ("apache", "mod_wsgi", "redis", "worker loop", "forward pass")


def write(folder, results, args, image):
    """Write the three files for ``results``, run with ``args`` posting ``image``."""
    run = {
        name: getattr(args, name)
        for name in (
            "model",
            "peer",
            "requests",
            "min_seconds",
            "rounds",
            "max_batch_size",
            "workers",
            "worker_threads",
            "peer_batch_timeout",
            "set",
        )
    }
    run.update(
        date=time.strftime("%Y-%m-%d"),
        cores=len(os.sched_getaffinity(0)),
        image_kb=len(image) // 1024,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"run": run, "results": results}, indent=1))
    render(folder)


def render(folder):
    saved = json.loads((folder / "results.json").read_text())
    text = markdown(saved["results"], SimpleNamespace(**saved["run"]))
    (folder / "report.md").write_text(text)
    plot(saved["results"], folder / "bench.png")
    print(text)
    print(f"wrote {folder / 'report.md'}, {folder / 'results.json'}, {folder / 'bench.png'}")


def summarize(row):
    """One concurrency level over its rounds: the median of each figure (counts summed),
    each round's figures kept in "rounds" and the spread (min, max) of the main ones."""
    rounds = row["rounds"]
    summary = {
        key: (sum if key in ("requests", "failed") else statistics.median)(
            [r["summary"][key] for r in rounds]
        )
        for key in rounds[0]["summary"]
    }
    cpu_ms = {
        part: statistics.median([r["cpu_ms"][part] for r in rounds]) for part in rounds[0]["cpu_ms"]
    }
    level = {
        "concurrency": row["concurrency"],
        "summary": summary,
        "cpu_ms": cpu_ms,
        "rounds": rounds,
    }
    if "mean_batch" in rounds[0]:
        level["mean_batch"] = statistics.median([r["mean_batch"] for r in rounds])
    level["spread"] = {
        name: [min(values), max(values)]
        for name, values in (
            ("throughput", [r["summary"]["throughput"] for r in rounds]),
            ("p99_ms", [r["summary"]["p99_ms"] for r in rounds]),
            ("server_ms", [server_ms(r) for r in rounds]),
        )
    }
    return level


def per_round(own, other, figure):
    """``own``'s ``figure`` over ``other``'s, round by round (the same round ran both)."""
    return [
        mine["summary"][figure] / theirs["summary"][figure]
        for mine, theirs in zip(own["rounds"], other["rounds"], strict=True)
    ]


def server_ms(row):
    """CPU ms per request of the serving stack's processes (the client's excluded)."""
    return sum(ms for part, ms in row["cpu_ms"].items() if part != "client")


def paused_ms(results):
    """The most CPU ms a paused server used while another's level ran."""
    return max(
        (
            measured.get("paused_cpu_ms", 0.0)
            for result in results
            for server in result["served"].values()
            for level in server["levels"]
            for measured in level["rounds"]
        ),
        default=0.0,
    )


def markdown(results, args):
    peer = args.peer
    lines = [
        f"# Benchmark: {args.model}",
        "",
        f"{args.date}, {args.cores} cores. Load: wrk "
        f"(C), closed loops of at least {args.requests} requests and {args.min_seconds:g} s "
        f"per concurrency level, {args.rounds} rounds ("
        + (
            f"the servers take turns, the one not under load paused: it used at most "
            f"{paused_ms(results):.0f} ms of CPU in a level; "
            if peer
            else ""
        )
        + "figures are "
        f"medians over the rounds, min–max beside them, ratios per round), posting a "
        f"{args.image_kb} KB JPEG (Beagle v2: the same JPEG as a binary BYTES tensor). Max batch "
        f"{args.max_batch_size}, {args.workers} model worker(s) with "
        f"{args.worker_threads or 'one per core'} runtime threads each on "
        + (
            f"both servers ({peer} runs Beagle's compiled forward pass and image intake, "
            f"so that only the serving differs); {peer}'s batch timeout "
            f"{args.peer_batch_timeout:g} s, Beagle's 0."
            if peer
            else "Beagle."
        )
        + (f" Beagle settings: {', '.join(args.set)}." if args.set else ""),
        "",
    ]
    for result in results:
        lines += [
            f"## {result['runtime']}",
            "",
            "| batch | raw latency ms | raw images/s |",
            "|---:|---:|---:|",
        ]
        lines += [
            f"| {b} | {r['latency_ms']:.3g} | {r['images_per_s']:.1f} |"
            for b, r in result["raw"].items()
        ]
        lines += [""] + served_table(result, peer) + [""] + failures(result)
        lines += cpu_table(result, peer) + [""]
        beagle = result["served"]["beagle"]
        lines += [
            f"Resident memory: Beagle's worker{'s' if args.workers > 1 else ''} "
            f"{beagle['memory_mb']['worker']:.0f} MB, web "
            + ", ".join(f"{m:.0f} MB" for m in beagle["memory_mb"]["web"])
            + (f"; {peer} {result['served'][peer]['memory_mb']['server']:.0f} MB" if peer else "")
            + ".",
            "",
        ]
    return "\n".join(lines)


def served_table(result, peer):
    lines = [
        "| concurrency | server | req/s (min–max) | p50 ms | p99 ms (min–max) "
        "| server CPU ms/req (min–max) | mean batch |"
        + (" ÷ peer req/s, per round | ÷ peer p99, per round |" if peer else ""),
        "|---:|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if peer else ""),
    ]
    rows = {name: served["levels"] for name, served in result["served"].items()}
    for n, level in enumerate(next(iter(rows.values()))):
        for name in rows:
            own = rows[name][n]
            s, spread = own["summary"], own["spread"]
            failed = f" ({s['failed']} failed)" if s["failed"] else ""
            line = (
                f"| {level['concurrency']} | {name} | {s['throughput']:.1f}{failed} "
                f"({_range(spread['throughput'], '.0f')}) | {s['p50_ms']:.1f} | "
                f"{s['p99_ms']:.1f} ({_range(spread['p99_ms'], '.0f')}) | "
                f"{server_ms(own):.2f} ({_range(spread['server_ms'], '.2f')}) | "
                + (f"{own['mean_batch']:.1f} |" if "mean_batch" in own else " |")
            )
            if peer:
                line += (
                    " | |"
                    if name == peer
                    else f" {_ratios(per_round(own, rows[peer][n], 'throughput'))} | "
                    f"{_ratios(per_round(own, rows[peer][n], 'p99_ms'))} |"
                )
            lines.append(line)
    return lines


def failures(result):
    """Each answer other than 200, by server, level, round and status, with the first
    one's body (what the server said was wrong); then the socket errors wrk counted (a
    connection that failed to connect, read, write or answer in time: no answer at all)."""
    rounds = [
        (name, level["concurrency"], n, measured)
        for name, served in result["served"].items()
        for level in served["levels"]
        for n, measured in enumerate(level["rounds"], 1)
    ]
    seen = [
        f"- {name}, c={c}, round {n}: {failure['count']} × {status}: `{failure['first']}`"
        for name, c, n, measured in rounds
        for status, failure in measured.get("failures", {}).items()
    ]
    errors = [
        f"- {name}, c={c}, round {n}: {count}"
        for name, c, n, measured in rounds
        if (count := measured.get("summary", {}).get("socket_errors", 0))
    ]
    return (["Answers other than 200:", "", *seen, ""] if seen else []) + (
        ["Socket errors (wrk: connect, read, write or timeout):", "", *errors, ""] if errors else []
    )


def _range(values, spec):
    return "–".join(format(v, spec) for v in values)


def _ratios(ratios):
    """The median ratio, then each round's."""
    return f"**{statistics.median(ratios):.2f}** ({', '.join(f'{r:.2f}' for r in ratios)})"


def cpu_table(result, peer):
    parts = [*BEAGLE_PARTS, *([peer] if peer else [])]
    lines = [
        "CPU milliseconds per request, by part:",
        "",
        "| concurrency | server | " + " | ".join(parts) + " | server total | load client |",
        "|---:|---|" + "---:|" * (len(parts) + 2),
    ]
    for name, served in result["served"].items():
        for row in served["levels"]:
            cells = [f"{row['cpu_ms'][p]:.2f}" if p in row["cpu_ms"] else "" for p in parts]
            lines.append(
                f"| {row['concurrency']} | {name} | "
                + " | ".join(cells)
                + f" | {server_ms(row):.2f} | {row['cpu_ms']['client']:.2f} |"
            )
    return lines


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency, used) = plt.subplots(1, 3, figsize=(16, 4.4))
    for result in results:
        for name, served in result["served"].items():
            levels = [row["concurrency"] for row in served["levels"]]
            style = "-" if name.startswith("beagle") else "--"
            label = f"{result['runtime']}: {name}"
            (line,) = throughput.plot(
                levels,
                [row["summary"]["throughput"] for row in served["levels"]],
                style,
                marker="o",
                label=label,
            )
            latency.plot(
                levels,
                [row["summary"]["p99_ms"] for row in served["levels"]],
                style,
                marker="x",
                color=line.get_color(),
                label=f"{label} p99",
            )
    cpu_bars(used, results)
    throughput.set(
        xscale="log", xlabel="concurrency", ylabel="requests/s", title="served throughput"
    )
    latency.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="ms", title="p99 latency")
    for axes in (throughput, latency):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def cpu_bars(axes, results):
    """CPU ms per request by part at the highest concurrency: a stacked bar a server."""
    servers = [
        (result["runtime"], name, served["levels"][-1])
        for result in results
        for name, served in result["served"].items()
    ]
    peers = sorted({name for _, name, _ in servers if not name.startswith("beagle")})
    bottoms = [0.0] * len(servers)
    for part in [*BEAGLE_PARTS, *peers, "client"]:
        heights = [row["cpu_ms"].get(part, 0.0) for _, _, row in servers]
        if any(heights):
            axes.bar(
                range(len(servers)),
                heights,
                bottom=bottoms,
                label="load client" if part == "client" else part,
            )
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axes.set_xticks(
        range(len(servers)),
        [f"{runtime}\n{name}\nc={row['concurrency']}" for runtime, name, row in servers],
        fontsize=8,
    )
    axes.set(ylabel="CPU ms per request", title="CPU per request, by part")
    axes.legend(fontsize=8)


if __name__ == "__main__":
    render(Path(sys.argv[1]))
