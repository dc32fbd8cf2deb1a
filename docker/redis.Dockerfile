# Redis from Debian for the team stack's shared lock manager (prefect-redis: one holder per cached
# stage across every worker machine). Built FROM the debootstrap base because Docker Hub's redis
# image is not reachable everywhere; where it is, FRUGAL_REDIS_IMAGE=redis:7 works the same.
# Locks only: nothing is saved to disk, a restart frees every lock (their holders then recompute
# or find the stage's cached result).
ARG BASE=frugal/debian-bookworm:local
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER redis
EXPOSE 6379
# Reachable only on the stack's network (compose publishes no port for it), hence no protected mode.
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
