#!/usr/bin/env bash
# Builds the serving image (docker/serve.Dockerfile) for one champion in the onnx, openvino or causal-ort format:
#   docker/build-serve.sh models:/frugal-default@champion   # a registry alias (or models:/NAME/VERSION)
#   docker/build-serve.sh path/to/bundle                    # a bundle folder (tasks/package.py's layout) or a model folder
# and prints the image's size. The alias is resolved once: the image serves that version for good.
#
# Why a script: the context must hold the bundle, frugal/, two configs and the lock, and nothing
# else (never .venv/, data/ or mlartifacts/), so it is assembled in a temporary folder outside
# the repo, as docker/build-images.sh does for the team stack.
# Settings (environment):
#   FRUGAL_SERVE_IMAGE   image name (default frugal/serve:local)
#   FRUGAL_BASE_IMAGE    base image (default frugal/debian-bookworm:local, built by base-image.sh if missing)
#   FRUGAL_EXTRA_CA_DIR  *.crt files pip in the build must trust (default /usr/local/share/ca-certificates;
#                        set it empty to add none)
#   MLFLOW_TRACKING_URI  the registry a models:/ source is read from (default: sqlite:///<project>/mlflow.db,
#                        the project being FRUGAL_PROJECT_DIR or this repo, as `frugal serve` finds it)
#   PYTHON               a Python with mlflow, for a models:/ source (default python3)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
IMAGE=${FRUGAL_SERVE_IMAGE:-frugal/serve:local}
BASE=${FRUGAL_BASE_IMAGE:-frugal/debian-bookworm:local}
CA_DIR=${FRUGAL_EXTRA_CA_DIR-/usr/local/share/ca-certificates}
PYTHON=${PYTHON:-python3}

if [[ $# -ne 1 ]]; then
    echo "usage: $0 models:/NAME@ALIAS | models:/NAME/VERSION | BUNDLE_DIR" >&2
    exit 2
fi
source=$1

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [[ $BASE == frugal/debian-bookworm:* ]]; then
        FRUGAL_BASE_IMAGE=$BASE "$here/base-image.sh"
    else
        echo "build-serve: base image $BASE is missing (docker pull it, or unset FRUGAL_BASE_IMAGE)" >&2
        exit 1
    fi
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/frugal-serve-build.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/app/configs" "$ctx/requirements" "$ctx/certs"

# The bundle: downloaded from the registry (the alias pinned to its current version), or copied.
if [[ $source == models:/* ]]; then
    export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///${FRUGAL_PROJECT_DIR:-$repo}/mlflow.db}
    export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false   # a bar per file on stderr, nothing else
    model_source=$("$PYTHON" - "$source" "$ctx/download" <<'EOF'
import os
import shutil
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

uri, dest = sys.argv[1], Path(sys.argv[2])
name, at, alias = uri.removeprefix("models:/").partition("@")
if not at:
    name, _, alias = name.rpartition("/")
if not name or not (alias if at else alias.isdigit()):
    sys.exit(f"build-serve: {uri} is neither models:/NAME@ALIAS nor models:/NAME/VERSION")
try:
    version = MlflowClient().get_model_version_by_alias(name, alias).version if at else alias
    got = Path(download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dest)))
except Exception as exc:  # one line naming the store, not a traceback
    sys.exit(f"build-serve: cannot fetch {uri} from {os.environ['MLFLOW_TRACKING_URI']}: {exc}")
shutil.move(str(got), str(dest.parent / "bundle"))
print(f"models:/{name}/{version}")
EOF
)
    rm -rf "$ctx/download"
elif [[ -d $source ]]; then
    model_source=$(cd "$source" && pwd)
    cp -R "$model_source" "$ctx/bundle"
else
    echo "build-serve: $source is neither models:/NAME@ALIAS, models:/NAME/VERSION nor a folder" >&2
    exit 2
fi

# The image has the model's runtime (docker/serve-runtime-<format>.txt; causal-ort: a generative champion) and no torch: refuse a format without one
# here, not at container start.
model_dir=$ctx/bundle/artifacts/model
[[ -d $model_dir ]] || model_dir=$ctx/bundle
if [[ ! -f $model_dir/frugal.json ]]; then
    echo "build-serve: $model_source holds no frugal model folder (no artifacts/model/frugal.json)" >&2
    exit 1
fi
format=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["format"])' "$model_dir/frugal.json")
runtime=$here/serve-runtime-$format.txt
if [[ ! -f $runtime ]]; then
    formats=$(cd "$here" && ls serve-runtime-*.txt | sed 's/serve-runtime-//; s/\.txt//' | paste -sd, -)
    echo "build-serve: $model_source is a '$format' model; this image serves the formats $formats only (it has no torch)." >&2
    echo "  Fix: serve it with \`frugal serve\` where torch is installed, or make an int8 variant (int8, onnx_int8, openvino; genai for task generate) the champion." >&2
    exit 1
fi

# The code as git sees it (tracked and untracked, minus ignored files such as __pycache__), two
# configs next to it, and the requirements.
(cd "$repo" && git ls-files -z --cached --others --exclude-standard -- frugal \
    | while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done \
    | xargs -0 cp --parents -t "$ctx/app")
cp "$repo/configs/serve.yaml" "$ctx/app/configs/serve.yaml"
cp "$here/serve-image.yaml" "$ctx/app/configs/image.yaml"
cp "$here/serve-requirements.txt" "$ctx/requirements/serve.txt"
cp "$runtime" "$ctx/requirements/runtime.txt"
cp "$repo/requirements/lock.txt" "$ctx/requirements/lock.txt"
cp "$here/serve.Dockerfile" "$ctx/Dockerfile"
if [[ -n $CA_DIR && -d $CA_DIR ]]; then
    find "$CA_DIR" -maxdepth 2 -name '*.crt' -type f -exec cp -t "$ctx/certs" {} +
fi

commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=true
[[ $commit == unknown || -n $(git -C "$repo" status --porcelain 2>/dev/null) ]] || dirty=false
echo "build-serve: $model_source ($format), context $(du -sh "$ctx" | cut -f1)"
start=$(date +%s)
docker build -t "$IMAGE" --build-arg "BASE=$BASE" --build-arg "MODEL_SOURCE=$model_source" \
    --build-arg "GIT_COMMIT=$commit" --build-arg "GIT_DIRTY=$dirty" "$ctx"
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "build-serve: $IMAGE built in $(( $(date +%s) - start )) s, $(awk -v s="$size" 'BEGIN {printf "%.0f MB", s/1e6}') ($size bytes)"
