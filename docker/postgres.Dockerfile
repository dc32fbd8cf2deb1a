# PostgreSQL 15 from Debian for the team stack's two databases (Prefect's and MLflow's).
# Built FROM the debootstrap base because Docker Hub's postgres image is not reachable everywhere;
# where it is, set FRUGAL_POSTGRES_IMAGE=postgres:16 and compose uses the official image instead:
# this image keeps its interface (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, data in
# /var/lib/postgresql/data, port 5432, pg_isready on the PATH).
ARG BASE=frugal/debian-bookworm:local
FROM ${BASE}

# No default cluster at install time: the entrypoint creates the one cluster in the volume.
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 2775 /var/run/postgresql

COPY project/docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
# A named volume starts as a copy of this directory, owned by postgres, so no root step is needed.
VOLUME /var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
# Through sh: the script needs no exec bit, which the legacy builder cannot set (no COPY --chmod).
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
