#!/usr/bin/env python3
"""A simulated day of traffic through a release imagegate, and what each lever saves,
computed from the ledger (`imagegate report --format json`), per 1,000 delivered
images.

Run through benches/simulated_day.sh. The day: --requests image requests (default
2,000; the ratios per 1,000 images do not depend on the count), --repeat-share of them
repeating an earlier prompt (cache hits), --defer-share asking for `deliver_by: 2h`.
The price book is the shipped one plus a "peak hours" surge (2x the local provider's
price) from now for --peak-minutes (rounded to the minute; it must outlast sending
the requests, which the script checks), so live requests pay peak and deferred ones
wait for its end. The profile stores 768 and 1024 px in AVIF
and JPEG; the app is assumed to serve the 768 px AVIF.

Levers, each switched off alone and all at once:
  cache     every hit would have paid its key's original generation (ledger: cache.saved)
  deferral  each deferred job would have paid its live quote (ledger: jobs)
  format    serving the 768 px JPEG instead of the AVIF (projected egress)
  width     serving the 1024 px AVIF instead of the 768 px (projected egress)
Recorded costs (generation, moderation, encoding, storage) come from the ledger;
egress is projected from the stored bytes at `expected_views_per_image` and
`egress_usd_per_gb` (config/imagegate.toml), as `imagegate report` projects it.
"""
import argparse
import concurrent.futures
import datetime
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SUBJECTS = ["lighthouse", "fox", "tram", "kiln", "quay", "orchard", "glacier", "market",
            "violin", "bakery", "harbour", "windmill", "library", "canyon", "greenhouse"]
STYLES = ["watercolor", "ink", "gouache", "pastel", "woodcut", "oil", "charcoal"]


def peak_surge(minutes: int):
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now.replace(second=0, microsecond=0)
    end = start + datetime.timedelta(minutes=minutes + 1)
    text = (f'[[surge]]\nprovider = "local"\nstart = "{start:%H:%M}"\n'
            f'end = "{end:%H:%M}"\nmultiplier = 2.0\n')
    return text, end


def write_config(work: Path, models: Path, peak_minutes: int):
    surge, peak_ends = peak_surge(peak_minutes)
    book = work / "pricing.toml"
    book.write_text((ROOT / "config/pricing.toml").read_text() + "\n" + surge)
    data = work / "data"
    config = work / "imagegate.toml"
    config.write_text(f"""
pricing = "{book}"

[server]
listen = "127.0.0.1:0"

[concurrency]
cpu_workers = 2

[[providers]]
kind = "local"
latency_ms = 5

[storage]
kind = "local"
root = "{data}/objects"

[ledger]
url = "sqlite://{data}/ledger.db"

[safety]
classifier = true
model = "{models}/open-nsfw.onnx"
runtime_library = "{models}/libonnxruntime.so.1.31.1"

[profiles.default]
variants = [768, 1024]
formats = ["avif", "jpeg"]

[deferred]
poll_ms = 200
workers = 2
""")
    return config, peak_ends


def post(base: str, body: dict):
    req = urllib.request.Request(base + "/v1/images", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def get(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=60) as r:
        return json.load(r)


def workload(n: int, repeat_share: float, defer_share: float, seed: int):
    rng = random.Random(seed)
    made = []
    day = []
    for i in range(n):
        if made and rng.random() < repeat_share:
            prompt = rng.choice(made)
        else:
            prompt = (f"a {rng.choice(STYLES)} {rng.choice(SUBJECTS)}, study {i}")
            made.append(prompt)
        body = {"prompt": prompt}
        if rng.random() < defer_share:
            body["deliver_by"] = "2h"
        day.append(body)
    return day


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeat-share", type=float, default=0.30)
    ap.add_argument("--defer-share", type=float, default=0.40)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--peak-minutes", type=int, default=10)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="imagegate-day-") as tmp:
        work = Path(tmp)
        config, peak_ends = write_config(work, Path(args.models), args.peak_minutes)
        log = open(work / "server.log", "w")
        server = subprocess.Popen([args.binary, "--config", str(config), "serve"],
                                  stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = server.stdout.readline()
            if "listening on" not in line:
                sys.exit(f"simulated_day: the server did not start: {line}")
            base = line.strip().rsplit(" ", 1)[-1]
            day = workload(args.requests, args.repeat_share, args.defer_share, args.seed)
            started = time.monotonic()
            jobs = []
            statuses = {}
            # Repeats of a prompt whose first request is still in flight still count:
            # single flight makes them one generation.
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                for status, answer in pool.map(lambda b: post(base, b), day):
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 202:
                        jobs.append(answer["id"])
                    elif status != 200:
                        sys.exit(f"simulated_day: a request failed: {status} {answer}")
            if datetime.datetime.now(datetime.timezone.utc) >= peak_ends:
                sys.exit("simulated_day: sending outlasted the peak; raise --peak-minutes")
            print(f"simulated_day: {len(day)} requests sent in "
                  f"{time.monotonic() - started:.0f} s ({statuses}); "
                  f"{len(jobs)} jobs deferred, waiting for them", file=sys.stderr)
            pending = set(jobs)
            while pending:
                for job in list(pending):
                    state = get(base, f"/v1/jobs/{job}")
                    if state["status"] not in ("queued", "running"):
                        if state["status"] != "succeeded":
                            sys.exit(f"simulated_day: job {job} ended {state}")
                        pending.discard(job)
                if pending:
                    time.sleep(2)
        finally:
            server.terminate()
            server.wait(timeout=60)
        out = subprocess.run([args.binary, "--config", str(config), "report", "--format", "json"],
                             check=True, capture_output=True, text=True)
        report = json.loads(out.stdout)
    print_table(report, args)


def print_table(report: dict, args):
    images = args.requests
    recorded = report["total"]["micros"] / 1e6
    savings = report["savings"]
    variants = {(v["width"], v["format"]): v for v in report["delivery"]["variants"]}

    def egress(width, fmt):
        return variants[(width, fmt)]["projected_usd_per_image"] * images

    served = egress(768, "avif")
    cache = savings["cache_saved_usd"]
    deferral = savings["deferral"]["saved_usd"]
    fmt = egress(768, "jpeg") - served
    width = egress(1024, "avif") - served
    per_1k = lambda usd: usd / images * 1000
    rows = [
        ("all levers on", recorded + served),
        ("without the cache", recorded + served + cache),
        ("without deferral", recorded + served + deferral),
        ("JPEG instead of AVIF (768 px)", recorded + served + fmt),
        ("1024 px instead of 768 px (AVIF)", recorded + served + width),
        ("no lever", recorded + served + cache + deferral + fmt + width),
    ]
    base = rows[0][1]
    print(f"\nsimulated day: {images} requests, {args.repeat_share:.0%} repeated prompts, "
          f"{args.defer_share:.0%} deferrable; cost per 1,000 delivered images "
          f"(recorded in the ledger + egress projected at "
          f"{report['delivery']['expected_views_per_image']:.0f} views)\n")
    print("| scenario | USD per 1k images | vs all levers |")
    print("|---|---:|---:|")
    for name, total in rows:
        print(f"| {name} | {per_1k(total):.4f} | {total / base:.2f}x |")
    print(f"\nrecorded in the ledger: {recorded:.6f} USD (generation, moderation, encoding, "
          f"storage); cache hits {savings['cache_hits']} saved {cache:.6f} USD; "
          f"{savings['deferral']['jobs']} deferred jobs saved {deferral:.6f} USD")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "requests": images, "rows": {n: per_1k(t) for n, t in rows},
            "recorded_usd": recorded, "savings": savings}, indent=2))


if __name__ == "__main__":
    main()
