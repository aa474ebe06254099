"""A real S3-compatible server on loopback for the storage tests: moto in server mode.

``moto_server()`` starts ``python -m moto.server -H 127.0.0.1 -p PORT`` on a free port, waits
until the port accepts connections (polled, no fixed sleep) and stops the server at the end.
The ``s3`` fixture points the standard AWS environment (keys, ``AWS_ENDPOINT_URL``) at the
module's server and gives each test its own versioned bucket, so "written exactly once"
is checked by counting object versions. Import into a test module:
``from s3_fixtures import s3, s3_endpoint``.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

KEY, SECRET, REGION = "testing", "testing", "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(env: dict | None = None, timeout: float = 60.0):
    """Yield the endpoint URL of a fresh moto server (extra ``env`` for it, e.g. to enforce auth)."""
    pytest.importorskip("moto.server")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=dict(os.environ, **(env or {})), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"moto server exited with {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server not listening on port {port} after {timeout:.0f}s") from None
                time.sleep(0.05)  # poll interval, not a wait for readiness
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs")
    with moto_server() as endpoint:
        yield endpoint


@dataclass
class S3Bucket:
    endpoint: str
    bucket: str
    client: object  # boto3 S3 client, for checks the job itself must not need

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}".rstrip("/")

    @property
    def storage_options(self) -> dict:
        """The same server given as job-file options (for Ray workers, whose environment is their own)."""
        return {"key": KEY, "secret": SECRET, "endpoint_url": self.endpoint, "client_kwargs": {"region_name": REGION}}

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def versions(self, prefix: str = "") -> dict[str, int]:
        """key -> how many times it was written (the bucket is versioned)."""
        counts: dict[str, int] = {}
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix):
            for v in page.get("Versions", []):
                counts[v["Key"]] = counts.get(v["Key"], 0) + 1
        return counts

    def open_uploads(self) -> list:
        return self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])


@pytest.fixture
def s3(s3_endpoint, monkeypatch) -> S3Bucket:
    boto3 = pytest.importorskip("boto3")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION, aws_access_key_id=KEY,
                          aws_secret_access_key=SECRET)
    bucket = f"dreamfleet-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return S3Bucket(s3_endpoint, bucket, client)
