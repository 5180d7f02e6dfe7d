"""The benchmark's load generator: wrk, written in C, so that the client costs little
and the same for every server it drives. A Lua script posts one body (a multipart image,
an Open Inference Protocol request, ...) with its headers over keep-alive connections (a
closed loop: each connection sends its next request when the last is answered); each of
wrk's threads stops once it has its share of the requests *and* the minimum time has
passed, and wrk prints the run's figures as JSON. Bounded in count and in time.
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path

SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
int getpid(void);
int kill(int pid, int signal);
]]
local function now()
  local t = ffi.new("bench_timespec")
  ffi.C.clock_gettime(1, t)  -- CLOCK_MONOTONIC
  return tonumber(t.tv_sec) + tonumber(t.tv_nsec) / 1e9
end

local file = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = file:read("*a")
file:close()
wrk.method = "POST"
for line in io.lines(os.getenv("BENCH_HEADERS")) do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

-- Globals, not locals: done() reads them from each thread with thread:get.
local threads = {}
function setup(thread) table.insert(threads, thread) end

share = tonumber(os.getenv("BENCH_SHARE"))
min_seconds = tonumber(os.getenv("BENCH_MIN_SECONDS"))
answered, failed, started, finished = 0, 0, 0, 0
-- By status: how many, and the first one's body (flat tables: wrk's thread:get copies
-- only those).
failures, failure_bodies = {}, {}
function init(args) started = now() end

-- wrk runs for its whole -d even after every thread stopped, so the last thread to
-- finish its share (a line each in BENCH_DONE) interrupts it, as Ctrl-C would.
function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then
    failed = failed + 1
    failures[status] = (failures[status] or 0) + 1
    failure_bodies[status] = failure_bodies[status] or body:sub(1, 300):gsub("%s+", " ")
  end
  if finished == 0 and answered >= share and now() - started >= min_seconds then
    finished = now()
    local done = io.open(os.getenv("BENCH_DONE"), "a")
    done:write("done\n")
    done:close()
    local lines = 0
    for _ in io.lines(os.getenv("BENCH_DONE")) do lines = lines + 1 end
    if lines >= tonumber(os.getenv("BENCH_THREADS")) then ffi.C.kill(ffi.C.getpid(), 2) end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local failed_total, first, last = 0, math.huge, 0
  local by_status, bodies = {}, {}
  for _, thread in ipairs(threads) do
    failed_total = failed_total + thread:get("failed")
    local its_bodies = thread:get("failure_bodies")
    for status, count in pairs(thread:get("failures")) do
      by_status[status] = (by_status[status] or 0) + count
      bodies[status] = bodies[status] or its_bodies[status]
    end
    first = math.min(first, thread:get("started"))
    last = math.max(last, thread:get("finished"))
  end
  local seconds = summary.duration / 1e6
  if last > first then seconds = last - first end
  io.write(string.format('BENCH {"requests": %d, "seconds": %.6f, "failed": %d, '
    .. '"socket_errors": %d, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, '
    .. '"max_ms": %.3f}\n', summary.requests, seconds, failed_total,
    summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
  local out = io.open(os.getenv("BENCH_FAILURES"), "w")
  for status, count in pairs(by_status) do
    out:write(string.format("%d\t%d\t%s\n", status, count, bodies[status]))
  end
  out:close()
end
"""


def run(url, body, headers, requests, concurrency, max_seconds=300, min_seconds=0.0):
    """Post ``body`` with ``headers`` over ``concurrency`` connections, ``requests`` times
    and for ``min_seconds`` at least (``max_seconds`` at most); the summary (requests,
    seconds, throughput, failed, p50/p90/p99/max ms), wrk's own CPU seconds
    (client_cpu_s) and the answers other than 200 by status (failures: how many, and the
    first one's body, cut at 300 bytes)."""
    threads = min(concurrency, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as work:
        script, posted = Path(work) / "post.lua", Path(work) / "body"
        script.write_text(SCRIPT)
        posted.write_bytes(body)
        (Path(work) / "headers").write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))
        env = {
            **os.environ,
            "BENCH_BODY": str(posted),
            "BENCH_HEADERS": str(Path(work) / "headers"),
            "BENCH_MIN_SECONDS": str(min_seconds),
            "BENCH_SHARE": str(max(1, requests // threads)),
            "BENCH_THREADS": str(threads),
            "BENCH_DONE": str(Path(work) / "done"),
            "BENCH_FAILURES": str(Path(work) / "failures"),
        }
        process = subprocess.Popen(
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(concurrency),
                "-d",
                f"{int(max_seconds)}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        failures = Path(work) / "failures"
        lines = failures.read_text().splitlines() if failures.exists() else []
    line = next((line for line in output.splitlines() if line.startswith("BENCH ")), None)
    if status != 0 or line is None:
        raise RuntimeError(f"wrk failed ({status}): {output[-2000:]}")
    summary = json.loads(line[len("BENCH ") :])
    summary["throughput"] = summary["requests"] / summary["seconds"]
    summary["client_cpu_s"] = usage.ru_utime + usage.ru_stime
    summary["failures"] = {
        status: {"count": int(count), "first": body}
        for status, count, body in (line.split("\t", 2) for line in lines)
    }
    return summary
