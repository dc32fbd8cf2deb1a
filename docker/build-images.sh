#!/usr/bin/env bash
# Builds the team stack's images from this working tree:
#   docker/build-images.sh                 # base (if missing), postgres, s3, redis, worker-cpu
#   docker/build-images.sh worker-gpu      # only the GPU worker (see docker/worker-gpu.Dockerfile)
# Images: frugal/<name>:$FRUGAL_IMAGE_TAG (default tag: local), the names docker/compose.yaml uses.
#
# Why a script rather than `docker compose build`: the build context is assembled in a temporary
# folder outside the repo, holding only what the images need, so that
#   - the context never carries .venv/, data/ or mlartifacts/ (gigabytes; the legacy builder
#     has no per-Dockerfile .dockerignore),
#   - a local torch wheel and the host's extra CA certificates can go in without being copied
#     into the work tree.
# Settings (environment):
#   FRUGAL_IMAGE_TAG     tag of the images (default local)
#   FRUGAL_BASE_IMAGE    base image (default frugal/debian-bookworm:local, built by base-image.sh)
#   FRUGAL_WHEELS        folder of wheels offered to pip, e.g. one holding torch-2.13.0+cpu-*.whl
#                        (default: $PIP_FIND_LINKS when that is a folder; else torch comes from
#                        TORCH_INDEX_URL)
#   FRUGAL_EXTRA_CA_DIR  *.crt files the images should trust, e.g. a TLS-inspecting proxy's CA
#                        (default /usr/local/share/ca-certificates, the host's locally added CAs;
#                        set it empty to add none)
#   TORCH_INDEX_URL      passed to the worker builds when set
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
TAG=${FRUGAL_IMAGE_TAG:-local}
BASE=${FRUGAL_BASE_IMAGE:-frugal/debian-bookworm:local}
WHEELS=${FRUGAL_WHEELS-${PIP_FIND_LINKS:-}}
CA_DIR=${FRUGAL_EXTRA_CA_DIR-/usr/local/share/ca-certificates}
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(postgres s3 redis worker-cpu)

for t in "${targets[@]}"; do
    case $t in postgres|s3|redis|worker-cpu|worker-gpu) ;; *) echo "build-images: unknown image '$t' (postgres, s3, redis, worker-cpu, worker-gpu)" >&2; exit 2;; esac
done

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [[ $BASE == frugal/debian-bookworm:* ]]; then
        FRUGAL_BASE_IMAGE=$BASE "$here/base-image.sh"
    else
        echo "build-images: base image $BASE is missing (docker pull it, or unset FRUGAL_BASE_IMAGE)" >&2
        exit 1
    fi
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/frugal-build.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/project" "$ctx/wheels" "$ctx/certs"

# The working tree as git sees it: tracked and untracked files, minus what .gitignore excludes
# (and minus tracked files deleted in the work tree).
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done \
    | xargs -0 cp --parents -t "$ctx/project")

if [[ -n $WHEELS && -d $WHEELS ]]; then
    for w in "$WHEELS"/*.whl; do
        [[ -e $w ]] || continue
        ln "$w" "$ctx/wheels/" 2>/dev/null || cp "$w" "$ctx/wheels/"   # hard link: no 200 MB copy
    done
fi
if [[ -n $CA_DIR && -d $CA_DIR ]]; then
    find "$CA_DIR" -maxdepth 2 -name '*.crt' -type f -exec cp -t "$ctx/certs" {} +
fi
echo "build-images: context $(du -sh "$ctx" | cut -f1) ($(ls "$ctx/wheels" | wc -l) wheels, $(ls "$ctx/certs" | wc -l) extra CAs)"

# The image has no .git; the commit and whether the tree had changes go in as build args.
commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=true
[[ $commit == unknown || -n $(git -C "$repo" status --porcelain 2>/dev/null) ]] || dirty=false
common=(--build-arg "GIT_COMMIT=$commit" --build-arg "GIT_DIRTY=$dirty")
[[ -z ${TORCH_INDEX_URL:-} ]] || common+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")

for t in "${targets[@]}"; do
    # The GPU image starts from a CUDA image by default; FRUGAL_GPU_BASE picks another one.
    args=("${common[@]}" --build-arg "BASE=$BASE")
    [[ $t != worker-gpu ]] || args=("${common[@]}" --build-arg "BASE=${FRUGAL_GPU_BASE:-nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04}")
    start=$(date +%s)
    echo "build-images: building frugal/$t:$TAG"
    docker build -f "$ctx/project/docker/$t.Dockerfile" -t "frugal/$t:$TAG" "${args[@]}" "$ctx"
    size=$(docker image inspect -f '{{.Size}}' "frugal/$t:$TAG" | awk '{printf "%.0f MB", $1/1e6}')
    echo "build-images: frugal/$t:$TAG built in $(( $(date +%s) - start )) s, $size"
done
