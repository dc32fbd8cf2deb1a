# GPU worker of the team stack: a Prefect process worker on the pool FRUGAL_POOL (default
# frugal-gpu) for the heavy steps (fine-tuning, distillation, pruning recovery, LoRA, 4-bit).
# Same layout as docker/worker-cpu.Dockerfile (read that first); the differences:
#   - BASE is a CUDA image from Docker Hub (nvidia/cuda), Ubuntu 24.04 with Python 3.12;
#   - torch comes from PyPI, whose default torch==2.13.0 wheel carries its own CUDA libraries
#     (nvidia-*-cu13 wheels: CUDA 13.0, so the host driver must be >= 580), plus the `gpu`
#     extra (bitsandbytes);
#   - the host needs the NVIDIA Container Toolkit; compose reserves the GPUs (deploy.resources).
# Build: docker/build-images.sh worker-gpu   (FRUGAL_GPU_BASE picks another base image)
# For a driver older than 580 use a CUDA 12.8 torch build instead:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 docker/build-images.sh worker-gpu
# and set CUDA_REQUIRE accordingly. Not built or run on the machine that wrote it (no Docker Hub,
# no GPU there): see docs/team-stack.md.
ARG BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${BASE} AS build
ARG TORCH_VERSION=2.13.0
# Empty: PyPI's default (CUDA) build. A PyTorch index URL selects another CUDA version.
ARG TORCH_INDEX_URL=
ARG EXTRAS=team,gpu
# Python from the distribution (Ubuntu 24.04: 3.12, Debian bookworm: 3.11; both supported).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install -q pip==26.3

COPY project/requirements/lock.txt /opt/frugal/requirements/lock.txt
RUN if [ -n "$TORCH_INDEX_URL" ]; then set -- --extra-index-url "$TORCH_INDEX_URL"; fi; \
    pip install -q -c /opt/frugal/requirements/lock.txt "$@" "torch==${TORCH_VERSION}"
# Dependencies only (as in worker-cpu.Dockerfile), so code edits reuse this layer.
COPY project/pyproject.toml /opt/frugal/
RUN cd /opt/frugal && touch README.md \
 && pip install -q -c requirements/lock.txt -e ".[${EXTRAS}]" \
 && pip uninstall -q -y frugal

FROM ${BASE}
# What the NVIDIA Container Toolkit checks before it starts the container: the driver must run
# the CUDA version torch was built for (13.0 for PyPI's torch 2.13.0), not the base image's.
ARG CUDA_REQUIRE="cuda>=13.0"
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null \
 && (id -u frugal >/dev/null 2>&1 || useradd --create-home --shell /bin/bash frugal) \
 && install -d -o frugal -g frugal /var/lib/frugal
ARG EXTRAS=team,gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
COPY project/ /opt/frugal/
RUN cd /opt/frugal && pip install -q --no-deps -e ".[${EXTRAS}]" && pip check
# The project one level down in the volume, so its DVC remote lands there too (worker-cpu.Dockerfile).
ENV PYTHONUNBUFFERED=1 FRUGAL_PROJECT_DIR=/var/lib/frugal/project \
    FRUGAL_POOL=frugal-gpu PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 \
    TOKENIZERS_PARALLELISM=false \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA=${CUDA_REQUIRE}
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
