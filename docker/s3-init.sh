#!/bin/sh
# One-shot step of the team stack: creates the buckets (FRUGAL_BUCKETS, space separated) in the
# S3 store at AWS_ENDPOINT_URL_S3, waiting up to 60 s for the store to answer. Creating a bucket
# that exists is not an error, so the step can run on every `docker compose up`.
set -eu
exec python3 - <<'EOF'
import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
buckets = os.environ.get("FRUGAL_BUCKETS", "mlflow frugal-results").split()
s3 = boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
deadline = time.monotonic() + 60
while True:
    try:
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        break
    except (EndpointConnectionError, ConnectionError) as exc:
        if time.monotonic() > deadline:
            sys.exit(f"s3-init: {endpoint} did not answer within 60 s: {exc}")
        time.sleep(1)
for name in buckets:
    if name in existing:
        print(f"s3-init: bucket {name} exists")
        continue
    try:
        s3.create_bucket(Bucket=name)
        print(f"s3-init: created bucket {name}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
EOF
