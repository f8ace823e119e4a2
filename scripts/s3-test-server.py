#!/usr/bin/env python3
"""An S3-API server for the tests: moto's, on a loopback port the OS picks.

Usage: s3-test-server.py BUCKET...  Creates the buckets, prints `s3 listening http://HOST:PORT`,
and serves until its standard input closes (the test that started it ends).
"""
import sys

import boto3
from moto.server import ThreadedMotoServer


def main() -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    for bucket in sys.argv[1:]:
        s3.create_bucket(Bucket=bucket)
    print(f"s3 listening {endpoint}", flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
