"""An S3-compatible server for tests: moto's standalone server on loopback, once per session.

Registered as a plugin in tests/conftest.py, so every test module can ask for `s3_url` (the
server's endpoint) or `s3` (AWS variables pointing at it, bucket BUCKET made, a boto3 client).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

BUCKET = "reels"


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """One moto S3 server for the session, on a free loopback port."""
    from moto.server import ThreadedMotoServer  # here: collecting other tests needs no moto

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> object:
    for k, v in {"AWS_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    import boto3

    client = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    return client
