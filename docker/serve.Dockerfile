# Serving image for an ONNX or OpenVINO champion: `frugal serve` (API keys, plans, metering, feedback,
# /metrics; README "Serving") on the model's runtime (onnxruntime or openvino) + tokenizers, without
# torch, transformers or MLflow.
#   docker/build-serve.sh models:/frugal-default@champion         # or a bundle folder -> frugal/serve:local
#   docker run -d --name frugal-serve -p 127.0.0.1:8000:8000 -v frugal-serve:/var/lib/frugal frugal/serve:local
#   docker exec frugal-serve frugal keys create --name me --plan free
#   curl -s 127.0.0.1:8000/v1/predict -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"texts": ["I love it"]}'
# The build context is a folder docker/build-serve.sh assembles (this file alone cannot build it):
#   bundle/        the champion's bundle (tasks/package.py): the model folder is bundle/artifacts/model
#   app/           the frugal/ package and configs/serve.yaml + configs/image.yaml (docker/serve-image.yaml)
#   requirements/  serve.txt (docker/serve-requirements.txt), runtime.txt (docker/serve-runtime-<format>.txt)
#                  and lock.txt (requirements/lock.txt)
#   certs/         extra CA certificates pip must trust (FRUGAL_EXTRA_CA_DIR), often none
# The image serves the baked-in bundle as a folder: no registry, so GET /v1/model has no measured
# figures and metering records a cost of 0 (README "The model"). Keys, usage and feedback live in
# /var/lib/frugal/serve.db (a volume), or in FRUGAL_DATABASE_URL (e.g. postgresql://...).
# Plain Dockerfile syntax (no RUN --mount, no COPY --chmod): the legacy builder builds it too.
ARG BASE=frugal/debian-bookworm:local
FROM ${BASE}

# Extra CA certificates of the build host (e.g. a TLS-inspecting proxy in front of PyPI).
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null \
 && useradd --uid 1000 --home-dir /var/lib/frugal --no-create-home --shell /usr/sbin/nologin frugal \
 && install -d -o frugal -g frugal /var/lib/frugal
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PATH=/opt/venv/bin:$PATH

# Dependencies first, so a new model or a code change rebuilds only the small layers below. The
# lock as constraints pins their dependencies too; `pip check` proves the set is complete.
COPY requirements/ /opt/frugal/requirements/
RUN python3 -m venv /opt/venv \
 && pip install -q -r /opt/frugal/requirements/serve.txt -r /opt/frugal/requirements/runtime.txt \
      -c /opt/frugal/requirements/lock.txt \
 && pip check

# The code on PYTHONPATH rather than installed: the project's metadata names the whole training
# stack. configs/ sits next to the package, where frugal/paths.py looks for it.
COPY app/ /opt/frugal/
RUN printf '#!/bin/sh\nexec python -m frugal.cli "$@"\n' > /usr/local/bin/frugal && chmod 755 /usr/local/bin/frugal
COPY bundle/ /opt/bundle/
ENV PYTHONPATH=/opt/frugal PYTHONUNBUFFERED=1 FRUGAL_PROJECT_DIR=/var/lib/frugal TOKENIZERS_PARALLELISM=false

# What the image was built from (it has no .git and no registry): last, so they change only these layers.
ARG MODEL_SOURCE=unknown
ARG GIT_COMMIT=unknown
ARG GIT_DIRTY=true
LABEL org.opencontainers.image.revision=$GIT_COMMIT org.frugal.model=$MODEL_SOURCE
ENV FRUGAL_MODEL_SOURCE=$MODEL_SOURCE FRUGAL_GIT_COMMIT=$GIT_COMMIT FRUGAL_GIT_DIRTY=$GIT_DIRTY

VOLUME /var/lib/frugal
USER frugal
WORKDIR /var/lib/frugal
EXPOSE 8000
# Healthy once the model is loaded (/readyz); it assumes the default port 8000.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# `frugal` execs python, so the server is PID 1 and `docker stop` (SIGTERM) reaches uvicorn.
CMD ["frugal", "serve", "--serve-config", "image"]
