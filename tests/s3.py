"""An S3 server on loopback (moto's) for tests of output to filesystem URLs: a bucket in, the
URL of a prefix in it out, reachable by pyarrow through `endpoint_override`."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

# fake keys (moto takes any): set in the test's environment and in the Ray workers'
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "AKIATESTFAKEKEYID0000",
            "AWS_SECRET_ACCESS_KEY": "TESTSECRETfakeAWSsecretAccessKey0000000",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def s3_prefix() -> Iterator[str]:
    """`s3://<new bucket>/prefix?endpoint_override=127.0.0.1:<port>&scheme=http` while it runs
    (the caller sets FAKE_AWS in the environment first)."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        where = f"endpoint_override={host}:{port}&scheme=http"
        bucket = f"runs-{secrets.token_hex(4)}"   # moto's buckets outlive its server: a new one
        fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{where}&allow_bucket_creation=true")
        fs.create_dir(bucket)
        yield f"s3://{bucket}/prefix?{where}"
    finally:
        server.stop()
