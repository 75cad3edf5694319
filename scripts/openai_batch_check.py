"""Drives imagegate's OpenAI Batch API surface with the official OpenAI Python client,
as an application written for OpenAI's Batch API would: uploads a JSONL of
/v1/images/generations requests, creates a batch, polls it, and reads the output
file. Every line must come back with a CDN URL that serves an image.

    python openai_batch_check.py BASE_URL API_KEY LINES

Prints one JSON object with what it saw; exits non-zero on the first mismatch.
"""

import io
import json
import sys
import time
import urllib.request

import openai
from openai import OpenAI


def main():
    base, key, lines = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
    seen = {"openai_version": openai.__version__}

    requests = [
        {
            "custom_id": f"tile-{i}",
            "method": "POST",
            "url": "/v1/images/generations",
            "body": {"prompt": f"a ceramic tile, pattern {i}", "size": "512x512"},
        }
        for i in range(lines)
    ]
    jsonl = "\n".join(json.dumps(r) for r in requests).encode()
    uploaded = client.files.create(file=("tiles.jsonl", io.BytesIO(jsonl)), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(jsonl), uploaded
    seen["file"] = uploaded.id

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/images/generations",
        completion_window="24h",
        metadata={"purpose": "catalogue"},
    )
    assert batch.status in ("validating", "in_progress", "completed"), batch
    assert batch.request_counts.total == lines, batch
    seen["batch"] = batch.id
    seen["statuses"] = [batch.status]

    deadline = time.time() + 300
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.time() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
        if batch.status != seen["statuses"][-1]:
            seen["statuses"].append(batch.status)
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == lines and batch.request_counts.failed == 0, batch
    assert batch.error_file_id is None, batch
    assert batch.metadata == {"purpose": "catalogue"}, batch.metadata

    output = client.files.content(batch.output_file_id).text
    answers = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert sorted(a["custom_id"] for a in answers) == sorted(r["custom_id"] for r in requests)
    urls = []
    for a in answers:
        assert a["error"] is None and a["response"]["status_code"] == 200, a
        url = a["response"]["body"]["data"][0]["url"]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and r.headers.get("Content-Type").startswith("image/"), url
        urls.append(url)
    assert len(set(urls)) == lines, "each line is an image of its own"
    seen["urls"] = len(urls)
    seen["listed"] = [b.id for b in client.batches.list(limit=5).data]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
