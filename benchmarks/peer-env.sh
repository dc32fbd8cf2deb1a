#!/usr/bin/env bash
# Makes the peer recipe's environment (benchmarks/peer.py) at .frugal/envs/peer from requirements/peer-lock.txt.
# Its own environment: optimum-intel 2.2 pins transformers < 5.6, frugal's lock has a newer one. As for the Flower
# environment, torch is installed first and pinned (no resolver picks a CUDA build), then every locked package
# without dependency resolution: optimum-intel's torchvision and openvino-tokenizers are not needed to export and
# quantize a text classifier, and are left out on purpose. A stamp of the lock's hash, written last, marks it complete.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
env=${FRUGAL_PEER_ENV:-$repo/.frugal/envs/peer}
lock=$repo/requirements/peer-lock.txt
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [[ -f $env/.frugal-lock-sha256 && $(cat "$env/.frugal-lock-sha256") == "$want" ]]; then
    echo "peer-env: $env is ready"
    exit 0
fi
rm -rf "$env"
python3 -m venv "$env"
"$env/bin/pip" install -q --upgrade pip
"$env/bin/pip" install -q "$(grep -m1 '^torch==' "$lock")"
"$env/bin/pip" install -q --no-deps -r "$lock"
echo "$want" > "$env/.frugal-lock-sha256"
echo "peer-env: made $env"
