"""A real S3-compatible server for tests: ``moto_server`` in its own process, on loopback.

Its own process, not moto's in-process ``ThreadedMotoServer``: Rust and Arrow clients (deltalake) hang
against a server that shares their process (ECOSYSTEM.md 0.7). moto honours conditional writes
(``If-None-Match: *`` answers 412), the primitive the publishers rely on.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUCKET = "releases"
KEY = SECRET = "testing"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(*, bucket: str = BUCKET) -> Iterator[str]:
    """Start ``moto_server``, create ``bucket``, yield the endpoint URL; stop the server on exit."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=url, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                     region_name=REGION).create_bucket(Bucket=bucket)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def fsspec_options(url: str) -> dict[str, Any]:
    """``publish.storage_options`` of a ``files`` target on the server (s3fs)."""
    return {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": url, "region_name": REGION},
            "skip_instance_cache": True}


def delta_options(url: str) -> dict[str, str]:
    """``publish.storage_options`` of a ``delta`` target (object_store keys; moto speaks plain HTTP)."""
    return {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": REGION, "AWS_ALLOW_HTTP": "true"}


def iceberg_options(url: str) -> dict[str, str]:
    """``publish.storage_options`` of an ``iceberg`` warehouse (pyiceberg FileIO properties).

    The s3fs FileIO: pyarrow's S3 FileIO gets an error inside a 200 response to CompleteMultipartUpload
    from moto 5.2.5 when it writes table metadata.
    """
    return {"s3.endpoint": url, "s3.access-key-id": KEY, "s3.secret-access-key": SECRET, "s3.region": REGION,
            "py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO"}
