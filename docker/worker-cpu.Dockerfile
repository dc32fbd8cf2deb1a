# CPU worker of the team stack: a Prefect process worker on the pool FRUGAL_POOL (default
# frugal-cpu) that runs frugal's flows from the project installed at /opt/frugal.
# The stack also runs the Prefect server and the MLflow server from this image, so server and
# client are the very versions pinned in requirements/lock.txt.
#
# Build it with docker/build-images.sh, which assembles the build context in a temporary folder:
#   project/  the working tree's files (git ls-files: tracked + untracked, not ignored)
#   wheels/   optional local wheels, e.g. torch-2.13.0+cpu-*.whl (FRUGAL_WHEELS, default PIP_FIND_LINKS)
#   certs/    optional extra CA certificates (FRUGAL_EXTRA_CA_DIR, default /usr/local/share/ca-certificates)
# Plain Dockerfile syntax only (no RUN --mount, no COPY --chmod) so the legacy builder builds it too.
ARG BASE=frugal/debian-bookworm:local

FROM ${BASE} AS build
ARG TORCH_VERSION=2.13.0
# Where torch comes from when wheels/ has no torch wheel: PyTorch's CPU-only index (the default
# PyPI wheel would pull several GB of CUDA libraries into a CPU image).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=team
# What the `team` extra holds (S3 for MLflow artifacts and Prefect results, PostgreSQL for the
# MLflow server), pinned to versions that resolve with requirements/lock.txt. Listed here too
# so the image builds before the extra exists; once it does, the extra and these agree.
ARG TEAM_PACKAGES="boto3==1.43.117 s3fs==2026.9.0 psycopg2-binary==2.9.13"
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv

# torch first (README: otherwise pip picks a CUDA build), from a local wheel when one was given.
COPY project/requirements/lock.txt /opt/frugal/requirements/lock.txt
COPY wheels/ /tmp/wheels/
RUN set -e; wheel=$(ls /tmp/wheels/torch-${TORCH_VERSION}[+-]*.whl 2>/dev/null | head -n 1 || true); \
    if [ -n "$wheel" ]; then pip install -q -c /opt/frugal/requirements/lock.txt "$wheel"; \
    else pip install -q -c /opt/frugal/requirements/lock.txt --extra-index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; fi

# Dependencies next, from the project metadata alone: editing the code does not redo this layer.
# (A missing extra is only a pip warning, which is what lets EXTRAS name `team` before it exists.)
COPY project/pyproject.toml project/README.md /opt/frugal/
RUN cd /opt/frugal && pip install -q -c requirements/lock.txt -e ".[${EXTRAS}]" $TEAM_PACKAGES
# Then the code, installed editable: frugal finds configs/ next to its package (frugal/paths.py).
COPY project/ /opt/frugal/
RUN cd /opt/frugal && pip install -q --no-deps -c requirements/lock.txt -e ".[${EXTRAS}]" && pip check

# The runtime image: the venv and the project without the wheels and build layers above.
FROM ${BASE}
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null \
 && useradd --create-home --uid 1000 --shell /bin/bash frugal \
 && install -d -o frugal -g frugal /var/lib/frugal
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/frugal /opt/frugal
# FRUGAL_PROJECT_DIR: where flow runs keep data/, checkpoints and caches (a volume in compose);
# the source under /opt/frugal stays read-only to the worker user.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 FRUGAL_PROJECT_DIR=/var/lib/frugal \
    FRUGAL_POOL=frugal-cpu PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 \
    TOKENIZERS_PARALLELISM=false
USER frugal
WORKDIR /opt/frugal
# `frugal worker --pool` (wrapping `prefect worker start --type process`) where this checkout
# has it; until then the same Prefect command directly. A worker creates its pool if missing.
CMD ["sh", "-c", "if frugal worker --help >/dev/null 2>&1; then exec frugal worker --pool \"$FRUGAL_POOL\"; else exec prefect worker start --pool \"$FRUGAL_POOL\" --type process; fi"]
