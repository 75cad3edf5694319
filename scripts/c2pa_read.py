"""Reads each file's C2PA manifest store with c2pa-python (the Content Authenticity
Initiative's own reader, not the c2pa crate imagegate signs with) and prints one JSON
object per file on stdout: {"file", "mime", "store"} where store is the reader's
report (active_manifest, manifests, validation_state, validation_results), or
{"file", "mime", "error"} when the reader refuses the file.

  python c2pa_read.py FILE...

Nothing is fetched: no remote manifests, no OCSP. Run it with the interpreter
scripts/python-venv.sh makes from scripts/requirements/c2pa-python.txt.
"""

import json
import sys

import c2pa

MIME = {
    ".avif": "image/avif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".png": "image/png",
}

SETTINGS = {
    "verify": {
        "ocsp_fetch": False,
        "remote_manifest_fetch": False,
        "verify_trust": True,
    }
}


def read(path):
    mime = next((m for ext, m in MIME.items() if path.lower().endswith(ext)), None)
    if mime is None:
        return {"file": path, "mime": None, "error": "unknown extension"}
    context = c2pa.Context.from_dict(SETTINGS)
    try:
        with open(path, "rb") as stream:
            with c2pa.Reader(mime, stream, context=context) as reader:
                return {"file": path, "mime": mime, "store": json.loads(reader.json())}
    except c2pa.C2paError as e:
        return {"file": path, "mime": mime, "error": f"{type(e).__name__}: {e}"}


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    for path in sys.argv[1:]:
        print(json.dumps(read(path)))


if __name__ == "__main__":
    main()
