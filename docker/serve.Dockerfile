# Serving image for a frugal bundle (an MLflow pyfunc). Build it from a folder holding the bundle:
#   mlflow artifacts download -u models:/frugal-default@champion -d build/bundle
#   docker build -f docker/serve.Dockerfile -t frugal-serve build/bundle
#   docker run -p 8080:8080 frugal-serve
#   curl -s localhost:8080/invocations -H 'Content-Type: application/json' -d '{"inputs": {"text": ["I love it"]}}'
# The bundle's requirements.txt pins the lightest runtime that serves the champion
# (onnxruntime + tokenizers for an ONNX champion; torch + transformers otherwise).
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 FRUGAL_THREADS=2
WORKDIR /opt/model
COPY requirements.txt /opt/model/requirements.txt
# CPU-only torch wheels when the bundle needs torch: the default index would pull CUDA.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
COPY . /opt/model
EXPOSE 8080
CMD ["mlflow", "models", "serve", "-m", "/opt/model", "--env-manager", "local", "-h", "0.0.0.0", "-p", "8080"]
