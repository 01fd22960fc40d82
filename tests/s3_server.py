"""A real S3 endpoint for tests: moto's server on a free loopback port.

    with moto_s3(buckets=["graphs"]) as endpoint:
        env = {**os.environ, **s3_env(endpoint)}        # for a subprocess
        subprocess.run([...], env=env, timeout=60)

    with moto_s3(buckets=["graphs"], set_env=True):    # this process too, restored on exit
        convert(graph, "s3://graphs/cora", 2)

Nothing global is touched unless `set_env=True`. Moto keeps its data in module-level state, so
the store is wiped on exit: the next server starts empty.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


def s3_env(endpoint: str) -> dict[str, str]:
    """What a process needs to reach the server: both endpoint variables, dummy credentials, a region."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


def create_bucket(endpoint: str, name: str) -> None:
    """Create bucket `name` on the server at `endpoint`."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=name)


@contextmanager
def _patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def moto_s3(buckets: Iterable[str] = (), set_env: bool = False) -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 (a free port) and yield its endpoint URL, e.g. http://127.0.0.1:43121.

    `buckets` are created before yielding. With `set_env=True`, this process's environment gets
    `s3_env(endpoint)` for the duration (restored on exit).
    """
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        for bucket in buckets:
            create_bucket(endpoint, bucket)
        if set_env:
            with _patched_environ(s3_env(endpoint)):
                yield endpoint
        else:
            yield endpoint
    finally:
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        try:
            urllib.request.urlopen(reset, timeout=10).close()
        finally:
            server.stop()
