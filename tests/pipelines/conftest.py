"""Fixtures of the batch-job tests (tests/pipelines); the model checkpoints and the session's
Ray cluster are in tests/conftest.py."""

from __future__ import annotations

import pytest
from serve_support import free_port


@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    """An S3-compatible server (moto, server mode) on loopback with a bucket `corpus`: yields a
    boto3 client and the storage options that reach it from the job's workers."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch_module.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="corpus")
    # Workers of the session cluster do not share this process's environment, so the endpoint
    # and credentials travel inside the filesystem object, as storage options.
    options = {
        "endpoint_override": endpoint,
        "access_key": "testing",
        "secret_key": "testing",
        "region": "us-east-1",
    }
    yield client, options
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch
