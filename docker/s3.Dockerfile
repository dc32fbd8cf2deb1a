# The team stack's S3-compatible object store when MinIO's image cannot be pulled: moto's server
# (PyPI `moto`), S3 only. Why moto: MinIO is not in Debian, and of the S3 servers that install
# from a package registry moto is the maintained one that speaks what boto3 / s3fs send today
# (multipart uploads, the default CRC checksums). Its limit: objects live only as long as the
# container (memory, large ones spilled to temp files) - `docker compose down` or a restart
# empties the buckets. Keep nothing you need in it; use docker/compose.minio.yaml where the
# official minio/minio image is reachable.
# Build context: the folder docker/build-images.sh assembles (project/, certs/, wheels/).
ARG BASE=frugal/debian-bookworm:local
FROM ${BASE}

# Extra CA certificates of the build host (e.g. a TLS-inspecting proxy in front of PyPI);
# empty on most machines. pip is pointed at the system bundle that now includes them.
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH

# moto[s3] + flask is the S3 server without the other ~150 AWS services' dependencies
# (moto[server] pulls cfn-lint, docker, graphql, ...). boto3 serves the bucket-creating step.
ARG S3_PACKAGES="moto[s3]==5.2.5 flask==3.1.3 flask-cors==6.0.5 boto3==1.43.117"
RUN python3 -m venv /opt/venv && pip install -q $S3_PACKAGES

COPY project/docker/s3-init.sh /usr/local/bin/s3-init.sh
USER 65534:65534
EXPOSE 9000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
