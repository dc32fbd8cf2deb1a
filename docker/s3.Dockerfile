# The team stack's S3-compatible object store when MinIO's image cannot be pulled: MiniStack's S3
# (PyPI `ministack`, an AWS emulator) with its on-disk persistence, objects and buckets in the
# volume at /var/lib/s3. Why MiniStack: MinIO is not in Debian, and of the S3 servers that
# install from a package registry it is the maintained one that keeps objects on disk (moto, the
# stand-in before it, kept them in memory: a restart of the container emptied the buckets) and
# speaks what boto3 / s3fs send today (multipart uploads, the default CRC checksums). Objects
# survive `docker compose restart s3` and `down` + `up` (not `down -v`): tests/test_team_stack.py.
# docker/compose.minio.yaml swaps in MinIO where the official image is reachable.
# Build context: the folder docker/build-images.sh assembles (project/, certs/, wheels/).
ARG BASE=frugal/debian-bookworm:local
FROM ${BASE}

# Extra CA certificates of the build host (e.g. a TLS-inspecting proxy in front of PyPI);
# empty on most machines. pip is pointed at the system bundle that now includes them.
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH

# ministack pins botocore; boto3 at the same release serves the bucket-creating step (s3-init).
ARG S3_PACKAGES="ministack==1.5.33 boto3==1.43.106"
RUN python3 -m venv /opt/venv && pip install -q $S3_PACKAGES \
 && install -d -o 65534 -g 65534 /var/lib/s3

COPY project/docker/s3-init.sh /usr/local/bin/s3-init.sh
# S3_PERSIST: objects as files under S3_DATA_DIR, written as they arrive (a SIGKILL loses none);
# PERSIST_STATE: the rest of the emulator's state (bucket settings), saved on shutdown.
ENV GATEWAY_PORT=9000 S3_PERSIST=1 S3_DATA_DIR=/var/lib/s3/objects PERSIST_STATE=1 STATE_DIR=/var/lib/s3/state \
    LOG_LEVEL=WARNING
# A named volume starts as a copy of this directory, owned by the server's user.
VOLUME /var/lib/s3
USER 65534:65534
EXPOSE 9000
CMD ["ministack"]
