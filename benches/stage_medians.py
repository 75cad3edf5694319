#!/usr/bin/env python3
"""Median wall and CPU time per stage for 1024x1024 generations, and cache-hit latency.

Drives a running imagegate (release build, embedded defaults or any config) over HTTP
and reads its SQLite ledger, so the numbers are the ones the ledger records.

    scripts/serve.sh &                      # or: target/release/imagegate serve
    benches/stage_medians.py --url http://127.0.0.1:8080 --ledger data/ledger.db

Standard library only. Misses use distinct prompts (so each one generates); hits
repeat one request sequentially over a kept-alive connection.
"""
import argparse
import http.client
import json
import sqlite3
import statistics
import time
import urllib.parse
import uuid


def post(conn, body):
    conn.request("POST", "/v1/images", body=json.dumps(body), headers={"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--ledger", default="data/ledger.db")
    ap.add_argument("--misses", type=int, default=15)
    ap.add_argument("--hits", type=int, default=500)
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=300)

    run = uuid.uuid4().hex[:8]
    ids = []
    for i in range(args.misses):
        body = post(conn, {"prompt": f"stage medians {run} picture {i}", "size": "1024x1024"})
        assert body["cache"] == "miss", body["cache"]
        ids.append(body["id"])

    db = sqlite3.connect(args.ledger)
    marks = ",".join("?" * len(ids))
    rows = db.execute(
        f"SELECT s.stage, s.wall_ms, s.cpu_ms, s.micros FROM stages s JOIN requests r ON r.id = s.request "
        f"WHERE r.content_key IN ({marks}) AND r.cache = 'miss'",
        ids,
    ).fetchall()
    order = ["generate", "decode", "safety", "resize", "watermark", "encode", "upload"]
    print(f"{len(ids)} misses at 1024x1024 (profile default); medians per stage")
    print(f"{'stage':<10} {'wall ms':>9} {'cpu ms':>9} {'usd':>10}")
    for stage in order:
        sel = [r for r in rows if r[0] == stage]
        if not sel:
            continue
        print(
            f"{stage:<10} {statistics.median(r[1] for r in sel):>9.1f} {statistics.median(r[2] for r in sel):>9.1f}"
            f" {statistics.median(r[3] for r in sel) / 1e6:>10.6f}"
        )
    totals = db.execute(
        f"SELECT wall_ms, micros FROM requests WHERE content_key IN ({marks}) AND cache = 'miss'", ids
    ).fetchall()
    print(f"{'request':<10} {statistics.median(t[0] for t in totals):>9.1f} {'':>9} {statistics.median(t[1] for t in totals) / 1e6:>10.6f}")

    hit_body = {"prompt": f"stage medians {run} picture 0", "size": "1024x1024"}
    latencies = []
    for _ in range(args.hits):
        t = time.perf_counter()
        body = post(conn, hit_body)
        latencies.append((time.perf_counter() - t) * 1e3)
        assert body["cache"] == "hit"
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\ncache hit, {args.hits} sequential requests on one connection: "
          f"median {statistics.median(latencies):.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
