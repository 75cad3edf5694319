#!/usr/bin/env python3
"""What S3 costs in time: upload latency per generated image and per object, and
what a cache hit through the S3 tier (manifest GET by a replica that never saw the
key) costs compared with a memory hit. Runs against a real single-node Garage.

    cargo build -p imagegate --release
    cargo build -p imagegate-testkit --example garage
    benches/s3_tier.py --imagegate target/release/imagegate \
        --garage target/debug/examples/garage --images 20

Prints medians (and p90) in ms. Each replica has its own SQLite ledger; both share
the bucket. Refuses to run without its binaries.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_replica(binary, s3, workdir, name):
    port = free_port()
    data = os.path.join(workdir, name)
    os.makedirs(data, exist_ok=True)
    models = os.environ.get("IMAGEGATE_MODELS_DIR", os.path.join(ROOT, "models"))
    config = f"""
pricing = "{ROOT}/config/pricing.toml"
[server]
listen = "127.0.0.1:{port}"
[[providers]]
kind = "local"
latency_ms = 0
[storage]
kind = "s3"
endpoint = "{s3['endpoint']}"
region = "{s3['region']}"
bucket = "{s3['bucket']}"
prefix = "bench"
path_style = true
access_key_id_env = "BENCH_S3_KEY_ID"
secret_access_key_env = "BENCH_S3_SECRET"
public_base_url = "{s3['web_base_url']}"
[ledger]
url = "sqlite://{data}/ledger.db"
[safety]
classifier = true
model = "{models}/open-nsfw.onnx"
runtime_library = "{models}/libonnxruntime.so.1.31.1"
[profiles.default]
variants = [256, 512, 768]
formats = ["avif", "jpeg"]
avif = {{ quality = 60, speed = 9 }}
safety = {{ blur_at = 0.2, block_at = 0.8 }}
"""
    path = os.path.join(data, "imagegate.toml")
    with open(path, "w") as f:
        f.write(config)
    env = dict(os.environ, BENCH_S3_KEY_ID=s3["access_key_id"], BENCH_S3_SECRET=s3["secret_access_key"])
    proc = subprocess.Popen([binary, "--config", path, "serve"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    line = proc.stdout.readline()
    if not line.startswith("imagegate listening on "):
        sys.exit(f"replica {name} did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}"


def post(base, body):
    req = urllib.request.Request(base + "/v1/images", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.loads(r.read())
    return (time.perf_counter() - started) * 1e3, answer


def stage(answer, name):
    return next(s for s in answer["cost"]["stages"] if s["stage"] == name)


def summary(label, values):
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    print(f"{label:<48} median {statistics.median(values):8.2f}  p90 {p90:8.2f}  (n={len(values)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--imagegate", required=True)
    ap.add_argument("--garage", required=True, help="the imagegate-testkit garage example")
    ap.add_argument("--images", type=int, default=20)
    args = ap.parse_args()
    for b in (args.imagegate, args.garage):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} is not built (see this script's docstring)")
    garage = subprocess.Popen([args.garage], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    s3 = json.loads(garage.stdout.readline())
    work = tempfile.mkdtemp(prefix="s3-tier-")
    a, a_base = start_replica(args.imagegate, s3, work, "a")
    uploads, per_object, miss_ms = [], [], []
    prompts = [f"a lighthouse number {i}" for i in range(args.images)]
    for p in prompts:
        ms, answer = post(a_base, {"prompt": p})
        assert answer["cache"] == "miss", answer
        up = stage(answer, "upload")
        uploads.append(up["ms"])
        per_object.append(up["ms"] / up["detail"]["objects"])
        miss_ms.append(ms)
    b, b_base = start_replica(args.imagegate, s3, work, "b")
    store_hit, store_lookup, memory_hit = [], [], []
    for p in prompts:
        ms, answer = post(b_base, {"prompt": p})
        assert answer["cache"] == "hit" and stage(answer, "cache")["detail"]["tier"] == "store", answer
        store_hit.append(ms)
        store_lookup.append(stage(answer, "cache")["ms"])
    for _ in range(5):
        for p in prompts:
            ms, answer = post(b_base, {"prompt": p})
            assert stage(answer, "cache")["detail"]["tier"] == "memory"
            memory_hit.append(ms)
    for proc in (a, b):
        proc.terminate()
        proc.wait()
    garage.stdin.close()
    garage.wait()
    objects = int(round(statistics.median(uploads) / statistics.median(per_object)))
    print(f"Garage 2.5.0 single node on loopback; {args.images} images x {objects} objects "
          f"(6 variants + manifest)")
    summary("upload stage per image (all objects), ms", uploads)
    summary("upload per object (stage / objects), ms", per_object)
    summary("whole miss, client side, ms", miss_ms)
    summary("store-tier hit (other replica), client side, ms", store_hit)
    summary("store-tier hit, server-side lookup stage, ms", store_lookup)
    summary("memory hit, client side, ms", memory_hit)


if __name__ == "__main__":
    main()
