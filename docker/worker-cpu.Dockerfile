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
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PATH=/opt/venv/bin:$PATH
# pip from PyPI, not Debian's 23.0: builds sdists (antlr4-python3-runtime) the PEP 517 way.
RUN python3 -m venv /opt/venv && pip install -q pip==26.3

# torch first (README: otherwise pip picks a CUDA build), from a local wheel when one was given.
COPY project/requirements/lock.txt /opt/frugal/requirements/lock.txt
COPY wheels/ /tmp/wheels/
RUN set -e; wheel=$(ls /tmp/wheels/torch-${TORCH_VERSION}[+-]*.whl 2>/dev/null | head -n 1 || true); \
    if [ -n "$wheel" ]; then pip install -q -c /opt/frugal/requirements/lock.txt "$wheel"; \
    else pip install -q -c /opt/frugal/requirements/lock.txt --extra-index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; fi

# Then the dependencies, from pyproject.toml alone (README.md, which its metadata names, as an
# empty stand-in): editing the code or the README does not redo this layer. The project itself
# is uninstalled again, so the venv copied below holds dependencies only and stays the same
# layer until they change. The `team` extra adds the S3 and PostgreSQL clients the stack needs.
COPY project/pyproject.toml /opt/frugal/
RUN cd /opt/frugal && touch README.md \
 && pip install -q -c requirements/lock.txt -e ".[${EXTRAS}]" \
 && pip uninstall -q -y frugal

# The runtime image: the venv without the wheels and build layers above, then the code.
FROM ${BASE}
ARG EXTRAS=team
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null \
 && useradd --create-home --uid 1000 --shell /bin/bash frugal \
 && install -d -o frugal -g frugal /var/lib/frugal
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
# The code, installed editable: frugal finds configs/ next to its package (frugal/paths.py).
# A code change rebuilds only these two small layers.
COPY project/ /opt/frugal/
RUN cd /opt/frugal && pip install -q --no-deps -e ".[${EXTRAS}]" && pip check
# FRUGAL_PROJECT_DIR: where flow runs keep data/, checkpoints and caches (in the volume at
# /var/lib/frugal in compose), one level down so that the data versions' DVC remote, which frugal
# puts beside the project (tasks/version.py), lands in the volume too and not in root's /var/lib;
# the source under /opt/frugal stays read-only to the worker user.
ENV PYTHONUNBUFFERED=1 FRUGAL_PROJECT_DIR=/var/lib/frugal/project \
    FRUGAL_POOL=frugal-cpu PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 \
    TOKENIZERS_PARALLELISM=false
# The image carries no .git: the commit it was built from, for whoever inspects the image or a
# container (last, so a new commit only rebuilds these metadata layers).
ARG GIT_COMMIT=unknown
ARG GIT_DIRTY=true
LABEL org.opencontainers.image.revision=$GIT_COMMIT
ENV FRUGAL_GIT_COMMIT=$GIT_COMMIT FRUGAL_GIT_DIRTY=$GIT_DIRTY
USER frugal
# OpenVINO's and NNCF's telemetry opted out (the consent file its `opt_in_out --opt_out` writes): without it NNCF
# forks processes from threads to send events, which hung a pipeline on this image's Python 3.11.2 (a fork
# while another thread held the logging lock), and a worker has nothing to send them to anyway.
RUN mkdir -p /home/frugal/intel && printf 0 > /home/frugal/intel/openvino_telemetry
WORKDIR /opt/frugal
# A Prefect process worker on the pool FRUGAL_POOL (it creates the pool if missing). Through sh
# for the variable; exec, so the worker is PID 1 and `docker stop` reaches it.
CMD ["sh", "-c", "exec frugal worker --pool \"$FRUGAL_POOL\""]
