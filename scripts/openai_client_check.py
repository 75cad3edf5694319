"""Drives imagegate's POST /v1/images/generations with the official OpenAI Python
client, as an application written for OpenAI would, and checks what comes back.

    python openai_client_check.py BASE_URL API_KEY

Prints one JSON object with what it saw; exits non-zero on the first mismatch.
"""

import base64
import json
import sys
import urllib.request

import openai
from openai import OpenAI


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def main():
    base, key = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
    seen = {"openai_version": openai.__version__}

    # response_format=url: n images, each a CDN URL serving an image.
    r = client.images.generate(
        prompt="a paper crane on a desk", model="dall-e-3", n=2, size="512x512",
        quality="standard", style="natural", response_format="url", user="test-user",
    )
    assert len(r.data) == 2, r
    urls = [d.url for d in r.data]
    assert len(set(urls)) == 2, urls
    for url in urls:
        status, ctype, body = fetch(url)
        assert status == 200 and ctype.startswith("image/") and len(body) > 100, (url, status, ctype)
    seen["url_created"] = r.created
    seen["urls"] = urls

    # response_format=b64_json: the same image's bytes inline.
    r = client.images.generate(
        prompt="a paper crane on a desk", model="dall-e-3", size="512x512",
        response_format="b64_json",
    )
    raw = base64.b64decode(r.data[0].b64_json)
    status, _, first = fetch(urls[0])
    assert raw == first, "b64_json and the first url differ for seed 0"
    seen["b64_bytes"] = len(raw)
    seen["b64_is_avif"] = raw[4:12] == b"ftypavif"

    # Errors arrive as the client's typed exceptions, with OpenAI's fields.
    try:
        client.images.generate(prompt="a crane", n=11)
        raise AssertionError("n=11 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == "n", (e.status_code, e.body)
        seen["bad_n"] = {"code": e.code, "param": e.param, "type": e.type}
    try:
        client.images.generate(prompt="a forbiddenword crane")
        raise AssertionError("a blocked prompt was accepted")
    except openai.BadRequestError as e:
        assert e.code == "content_policy_violation", e.body
        seen["blocked"] = {"code": e.code, "type": e.type}
    bad_key = OpenAI(base_url=base + "/v1", api_key="ig_" + "0" * 16 + "_" + "0" * 64, max_retries=0)
    try:
        bad_key.images.generate(prompt="a crane")
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
        seen["bad_key"] = {"code": e.code, "type": e.type}
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
