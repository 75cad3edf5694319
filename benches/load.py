#!/usr/bin/env python3
"""The HTTP paths of a release imagegate under load, on the embedded defaults
(local provider, local store, SQLite ledger) in a scratch directory.

Run through benches/load.sh. Measures, in one run (--hits-only, --misses-only and
--rss-only pick parts):
  cold start   spawn to the first 200 from GET /healthz and from GET /readyz
               (median of --starts starts on an existing ledger)
  hits         wrk, one repeated POST /v1/images body, after one miss made it a hit:
               req/s, p50, p99 at --hit-connections connections
  misses       wrk, every request a new prompt, at 8 connections for --miss-seconds
  peak RSS     VmHWM of the server after --rss-connections concurrent misses
wrk and the server share this machine's cores, so every number is a lower bound.
"""
import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HIT_LUA = """
wrk.method = "POST"
wrk.body = '{"prompt":"a lighthouse on a cliff at dusk, benchmark"}'
wrk.headers["Content-Type"] = "application/json"
"""

MISS_LUA = """
local counter = 0
local salt = "0"
-- A salt from the driver (wrk's own random numbers repeat between runs), so every
-- prompt is new even against a ledger that earlier runs filled.
init = function(args)
  salt = args[1]
end
request = function()
  counter = counter + 1
  local body = string.format('{"prompt":"load test miss %d %d"}', salt, counter)
  return wrk.format("POST", "/v1/images", {["Content-Type"] = "application/json"}, body)
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, scratch, port):
        self.binary, self.scratch, self.port = binary, scratch, port
        self.env = dict(os.environ)
        self.env.update({
            "IMAGEGATE_SERVER__LISTEN": f"127.0.0.1:{port}",
            "IMAGEGATE_STORAGE__ROOT": str(scratch / "objects"),
            "IMAGEGATE_STORAGE__PUBLIC_BASE_URL": f"http://127.0.0.1:{port}/cdn",
            "IMAGEGATE_LEDGER__URL": f"sqlite://{scratch}/ledger.db",
            "RUST_LOG": "warn",
        })
        self.proc = None

    def start(self):
        started = time.perf_counter()
        self.proc = subprocess.Popen([self.binary, "serve"], cwd=ROOT, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.scratch / "server.log", "ab"))
        healthy = self.wait_for("/healthz", started)
        ready = self.wait_for("/readyz", started)
        return healthy, ready

    def wait_for(self, path, started):
        deadline = started + 60
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"imagegate exited with {self.proc.returncode}; see {self.scratch}/server.log")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.002)
        raise SystemExit(f"{path} did not answer 200 within 60 s")

    def peak_rss_mb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise SystemExit("no VmHWM in /proc")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit("imagegate did not stop within 60 s of SIGTERM")


def post(port, body, timeout=300):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/images", body=json.dumps(body), headers={"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(port, lua, connections, seconds, scratch, timeout="120s"):
    script = scratch / "wrk.lua"
    script.write_text(lua)
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", timeout,
                          "--latency", "-s", str(script), f"http://127.0.0.1:{port}/v1/images",
                          "--", str(time.time_ns())],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {}
    for p, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        pct[p] = float(value) * UNITS[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50_ms": pct.get("50"), "p99_ms": pct.get("99"), "requests": total,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else None}


def ledger_hits(scratch):
    import sqlite3
    with sqlite3.connect(scratch / "ledger.db") as db:
        return db.execute("SELECT COUNT(*) FROM requests WHERE cache = 'hit'").fetchone()[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=str(ROOT / "target" / "release" / "imagegate"))
    p.add_argument("--starts", type=int, default=5)
    p.add_argument("--hit-seconds", type=int, default=15)
    p.add_argument("--hit-connections", type=int, nargs="+", default=[16, 64])
    p.add_argument("--miss-seconds", type=int, default=30)
    p.add_argument("--rss-connections", type=int, default=64)
    p.add_argument("--rss-seconds", type=int, default=60)
    p.add_argument("--hits-only", action="store_true",
                   help="measure only the hits: no cold starts, misses or peak RSS")
    p.add_argument("--misses-only", action="store_true",
                   help="measure only the misses and the peak RSS: no cold starts or hits")
    p.add_argument("--rss-only", action="store_true",
                   help="measure only the peak RSS at --rss-connections concurrent misses")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args()
    if sum([args.hits_only, args.misses_only, args.rss_only]) > 1:
        p.error("--hits-only, --misses-only and --rss-only exclude each other")

    results = {}
    with tempfile.TemporaryDirectory(prefix="imagegate-load-") as tmp:
        scratch = Path(tmp)
        port = free_port()
        server = Server(args.binary, scratch, port)

        if not (args.hits_only or args.misses_only or args.rss_only):
            # Cold starts: the first creates the ledger; the rest open it, as a restart does.
            server.start()
            server.stop()
            starts = []
            for _ in range(args.starts):
                starts.append(server.start())
                server.stop()
            results["cold_start_ms"] = {
                "healthz_median": statistics.median(s[0] for s in starts) * 1000,
                "ready_median": statistics.median(s[1] for s in starts) * 1000,
                "all": [[round(a * 1000, 1), round(b * 1000, 1)] for a, b in starts],
            }
            print(f"cold start: /healthz {results['cold_start_ms']['healthz_median']:.0f} ms, "
                  f"/readyz {results['cold_start_ms']['ready_median']:.0f} ms (median of {args.starts})",
                  file=sys.stderr)

        if not (args.misses_only or args.rss_only):
            measure_hits(args, server, port, scratch, results)
        if args.hits_only:
            # Every hit answered must be in the ledger once the server has stopped.
            server.stop()
            results["ledger_hit_rows"] = ledger_hits(scratch)
        else:
            if not args.rss_only:
                measure_misses(server, port, scratch, args.miss_seconds, results)
            measure_rss(server, port, scratch, args.rss_connections, args.rss_seconds, results)

    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def measure_hits(args, server, port, scratch, results):
    """Leaves the server running, for the misses or the ledger count after the hits."""
    server.start()
    first = post(port, {"prompt": "a lighthouse on a cliff at dusk, benchmark"})
    if first["cache"] != "miss":
        raise SystemExit(f"expected the first request to miss, got {first['cache']}")
    results["hits"] = {}
    for c in args.hit_connections:
        r = wrk(port, HIT_LUA, c, args.hit_seconds, scratch)
        if r["non_2xx"] or r["socket_errors"]:
            raise SystemExit(f"hits at {c} connections failed: {r}")
        results["hits"][c] = r
        print(f"hits, {c} connections: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
              file=sys.stderr)


def measure_misses(server, port, scratch, seconds, results):
    """On the running server when the hits ran first, else on a fresh one."""
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    r = wrk(port, MISS_LUA, 8, seconds, scratch)
    if r["non_2xx"]:
        raise SystemExit(f"misses failed: {r}")
    results["misses"] = r
    print(f"misses, 8 connections: {r['rps']:.2f} req/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
          file=sys.stderr)
    server.stop()


def measure_rss(server, port, scratch, connections, seconds, results):
    # Peak memory from a fresh process: only the concurrent misses count.
    server.start()
    idle = server.peak_rss_mb()
    r = wrk(port, MISS_LUA, connections, seconds, scratch, timeout="300s")
    peak = server.peak_rss_mb()
    server.stop()
    results["rss"] = {"idle_peak_mb": idle, "peak_mb": peak, "connections": connections,
                      "completed": r["requests"], "non_2xx": r["non_2xx"], "rps": r["rps"]}
    print(f"peak RSS at {connections} concurrent misses: {peak:.0f} MB "
          f"(after start-up {idle:.0f} MB; {r['requests']} misses served, {r['non_2xx']} refused)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
