#!/usr/bin/env python3
"""imagegate's image half against libvips and avifenc, on the same images, in one run.

Run through benches/compare.sh, which checks every tool first and builds the
measuring tools (benches/tools). For each corpus image:

  reference  `vips thumbnail IMG 768` written as PNG: every output is scored with
             SSIMULACRA2 against this same resized picture (a libvips resize, so any
             difference between our Lanczos3 and libvips' counts against us).
  target     the score of imagegate's default AVIF settings (libaom, quality 60, speed 8, 8-bit)
             on that image; every other encoder is searched (bisection over its
             quality knob) for the cheapest setting that scores at least target - 1,
             so time and bytes are compared at equal score (+-1).
  timing     each chosen setting runs --repeats times as a whole process; the
             median wall time and the median CPU time (user + sys) are reported.

Rows:
  imagegate avif aom sN      resize-encode: decode 1024 PNG, resize, libaom all-intra 4:2:0
                             (one thread); aom s8 8-bit is the default, whose score is the target
  imagegate avif aom s8 2 threads
                             the same with libaom on two threads (two tile columns): what the
                             service does for a lone encode when another CPU worker is idle,
                             and the row to set beside vipsthumbnail, which uses every core
  imagegate avif rav1e sN    the same with ravif/rav1e (4:4:4), the encoder before libaom
  vipsthumbnail avif aom s8  decode, resize, libheif + libaom at speed 8 (effort 1)
  avifenc aom/svt/rav1e      encode the 768 reference only (no decode of 1024, no resize)
  imagegate jpeg / vips jpeg the JPEG fallback at equal score
Ratios are each row over vipsthumbnail avif, per image, medians over images: below 1
means faster or smaller than libvips.

With --imagegate BINARY it also runs the whole post-generation path per image,
`imagegate process IMG` on the embedded defaults with variants 256/512/768 (decode,
classify, watermark, resize, AVIF + JPEG encodes on the CPU pool, store, ledger), and
reports the stage times the pipeline itself records.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The row every ratio is taken against.
BASE = "vipsthumbnail avif (aom s8)"


def run(cmd):
    """Runs cmd; returns (wall seconds, CPU seconds of the child, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.tools = Path(args.tools)

    def score(self, reference, output):
        if output.suffix == ".avif":
            png = output.with_suffix(".dec.png")
            run(["avifdec", str(output), str(png)])
            output = png
        _, _, out = run([str(self.tools / "ssim2"), str(reference), str(output)])
        return float(out.strip())

    # Each encoder: (name, knob range, higher knob = better quality?, command builder)
    def encoders(self, image, reference):
        re = str(self.tools / "resize-encode")

        def ours(fmt, speed, depth=8, encoder="aom", threads=1):
            return lambda q, out: [re, str(image), str(out), "768", fmt, str(q), str(speed), str(depth), encoder,
                                   str(threads)]

        def vips_avif(q, out):
            return ["vipsthumbnail", str(image), "-s", "768", "-o", f"{out}[Q={q},effort=1,strip]"]

        def vips_jpeg(q, out):
            return ["vipsthumbnail", str(image), "-s", "768", "-o", f"{out}[Q={q},strip]"]

        def avifenc(codec, speed):
            return lambda q, out: ["avifenc", "-c", codec, "-s", str(speed), "-y", "420", "-j", "1",
                                   "--min", str(q), "--max", str(q), "--minalpha", "0", "--maxalpha", "0",
                                   str(reference), str(out)]

        return [
            ("imagegate avif aom s8", (1, 100), True, ".avif", ours("avif", 8)),
            ("imagegate avif aom s8 2 threads", (1, 100), True, ".avif", ours("avif", 8, threads=2)),
            ("imagegate avif aom s7", (1, 100), True, ".avif", ours("avif", 7)),
            ("imagegate avif aom s9", (1, 100), True, ".avif", ours("avif", 9)),
            ("imagegate avif aom s8 10-bit", (1, 100), True, ".avif", ours("avif", 8, 10)),
            ("imagegate avif rav1e s8", (1, 100), True, ".avif", ours("avif", 8, 8, "rav1e")),
            ("imagegate avif rav1e s10", (1, 100), True, ".avif", ours("avif", 10, 8, "rav1e")),
            (BASE, (1, 100), True, ".avif", vips_avif),
            ("avifenc aom s8", (0, 63), False, ".avif", avifenc("aom", 8)),
            ("avifenc svt s8", (0, 63), False, ".avif", avifenc("svt", 8)),
            ("avifenc rav1e s8", (0, 63), False, ".avif", avifenc("rav1e", 8)),
            ("imagegate jpeg", (1, 100), True, ".jpg", ours("jpeg", 8)),
            ("vipsthumbnail jpeg", (1, 100), True, ".jpg", vips_jpeg),
        ]

    def selected(self, name):
        if not self.args.encoders or name == BASE:
            return True
        return any(word.strip() and word.strip() in name for word in self.args.encoders.split(","))

    def search(self, name, knob_range, increasing, suffix, build, reference, target):
        """Cheapest knob value scoring >= target - 1 (bisection; scores rise with quality)."""
        lo, hi = knob_range
        tried = {}

        def trial(knob):
            if knob not in tried:
                out = self.work / f"{abs(hash(name))}-{knob}{suffix}"
                run(build(knob, out))
                tried[knob] = (self.score(reference, out), out.stat().st_size, out)
            return tried[knob]

        # quality(k) is increasing in k after this mapping.
        def knob(k):
            return k if increasing else hi - (k - lo)

        a, b = lo, hi
        if trial(knob(b))[0] < target - 1:
            return knob(b), trial(knob(b))
        while a < b:
            mid = (a + b) // 2
            if trial(knob(mid))[0] >= target - 1:
                b = mid
            else:
                a = mid + 1
        return knob(a), trial(knob(a))

    def time_it(self, build, knob, suffix):
        walls, cpus = [], []
        out = self.work / f"timed{suffix}"
        for _ in range(self.args.repeats):
            wall, cpu, _ = run(build(knob, out))
            walls.append(wall)
            cpus.append(cpu)
        return statistics.median(walls), statistics.median(cpus)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared" / "corpus"))
    p.add_argument("--tools", required=True, help="directory holding resize-encode and ssim2")
    p.add_argument("--images", type=int, default=0, help="only the first N corpus images (0: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--imagegate", help="imagegate binary: also time the whole post-generation path")
    p.add_argument("--post-generation-only", action="store_true",
                   help="with --imagegate: only the post-generation path, not the encoder comparison")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--encoders", help="only the rows whose names contain one of these comma-separated "
                   "words (e.g. 'aom s8,vipsthumbnail avif'); vipsthumbnail avif, the base of the "
                   "ratios, is always kept")
    args = p.parse_args()

    images = sorted(Path(args.corpus).glob("*.png"))
    if args.images:
        images = images[: args.images]
    if not images:
        raise SystemExit(f"no PNG images in {args.corpus}")

    rows = {}
    if args.post_generation_only:
        if not args.imagegate:
            raise SystemExit("--post-generation-only needs --imagegate")
        rows["post-generation path"] = post_generation(args, images)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="imagegate-compare-") as tmp:
        work = Path(tmp)
        bench = Bench(args, work)
        for image in images:
            reference = work / f"{image.stem}-ref768.png"
            run(["vips", "thumbnail", str(image), str(reference), "768"])
            encoders = bench.encoders(image, reference)
            # The target: imagegate's shipping AVIF settings on this image.
            default_out = work / "default.avif"
            run(encoders[0][4](60, default_out))
            target = bench.score(reference, default_out)
            print(f"{image.name}: target SSIMULACRA2 {target:.2f}", file=sys.stderr)
            for name, knob_range, increasing, suffix, build in encoders:
                if not bench.selected(name):
                    continue
                knob, (score, size, _) = bench.search(name, knob_range, increasing, suffix, build, reference, target)
                wall, cpu = bench.time_it(build, knob, suffix)
                rows.setdefault(name, []).append(
                    {"image": image.name, "target": target, "knob": knob, "score": score,
                     "bytes": size, "wall_s": wall, "cpu_s": cpu})
                print(f"  {name:28} knob {knob:>3} score {score:6.2f} {size:>7} B "
                      f"wall {wall * 1000:7.1f} ms cpu {cpu * 1000:7.1f} ms", file=sys.stderr)

    base = rows[BASE]
    print(f"\n{len(images)} images from {args.corpus}, 768 px wide, medians over images "
          f"(each timing the median of {args.repeats} runs)\n")
    print("| encoder | score (median) | within ±1 | bytes (median) | wall ms | CPU ms | "
          "wall ÷ vipsthumbnail | bytes ÷ vipsthumbnail |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in rows.items():
        within = sum(abs(r["score"] - r["target"]) <= 1 for r in rs)
        wall_ratio = statistics.median(r["wall_s"] / b["wall_s"] for b, r in zip(base, rs))
        bytes_ratio = statistics.median(r["bytes"] / b["bytes"] for b, r in zip(base, rs))
        print(f"| {name} | {statistics.median(r['score'] for r in rs):.1f} | {within}/{len(rs)} | "
              f"{statistics.median(r['bytes'] for r in rs):,.0f} | "
              f"{statistics.median(r['wall_s'] for r in rs) * 1000:.1f} | "
              f"{statistics.median(r['cpu_s'] for r in rs) * 1000:.1f} | {wall_ratio:.2f} | {bytes_ratio:.2f} |")
    if args.imagegate:
        rows["post-generation path"] = post_generation(args, images)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def post_generation(args, images):
    """`imagegate process` per image; the stage rows of its answer, medians over images."""
    root = Path(__file__).resolve().parents[1]
    results = []
    for image in images:
        runs = []
        for _ in range(args.repeats):
            # A fresh store and ledger per run: a second run on the same ones would be a
            # cache hit (the key is the source's blake3), not the path being measured.
            with tempfile.TemporaryDirectory(prefix="imagegate-process-") as tmp:
                env = dict(os.environ)
                env.update({
                    "IMAGEGATE_STORAGE__ROOT": f"{tmp}/objects",
                    "IMAGEGATE_LEDGER__URL": f"sqlite://{tmp}/ledger.db",
                    "IMAGEGATE_PROFILES__DEFAULT__VARIANTS": "[256, 512, 768]",
                    "RUST_LOG": "warn",
                })
                started = time.perf_counter()
                proc = subprocess.run([args.imagegate, "process", str(image)], cwd=root, env=env,
                                      capture_output=True, text=True)
                wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(f"imagegate process {image.name} failed: {proc.stderr.strip()[:500]}")
            body = json.loads(proc.stdout)
            if body["cache"] != "miss":
                raise SystemExit(f"imagegate process {image.name} was a {body['cache']}, not a miss")
            runs.append((wall, {c["stage"]: c for c in body["cost"]["stages"]}))
        results.append({
            "image": image.name,
            "process_wall_s": statistics.median(r[0] for r in runs),
            "stages": {name: {"wall_ms": statistics.median(r[1][name]["ms"] for r in runs),
                              "cpu_ms": statistics.median(r[1][name]["cpu_ms"] for r in runs)}
                       for name in runs[0][1]},
        })
        print(f"  post-generation {image.name}: {results[-1]['process_wall_s'] * 1000:.0f} ms", file=sys.stderr)
    names = list(results[0]["stages"])
    print(f"\nWhole post-generation path, `imagegate process` (variants 256/512/768, AVIF + JPEG), "
          f"medians over {len(results)} images of the median of {args.repeats} runs\n")
    print("| stage | wall ms | CPU ms |")
    print("|---|---:|---:|")
    for name in names:
        print(f"| {name} | {statistics.median(r['stages'][name]['wall_ms'] for r in results):.1f} | "
              f"{statistics.median(r['stages'][name]['cpu_ms'] for r in results):.1f} |")
    print(f"| whole process (start-up included) | "
          f"{statistics.median(r['process_wall_s'] for r in results) * 1000:.1f} | |")
    return results


if __name__ == "__main__":
    main()
