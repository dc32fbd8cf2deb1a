#!/bin/sh
# Command of the worker images: a Prefect process worker on the pool $FRUGAL_POOL.
# `frugal worker --pool` (which wraps `prefect worker start --type process` with frugal's
# settings) where this build of the project implements it; otherwise the Prefect command
# itself. Either creates the pool if it is missing.
set -eu
: "${FRUGAL_POOL:?set FRUGAL_POOL to the work pool to serve, e.g. frugal-cpu}"
# Both checks: the CLI may list the command before the module behind it exists.
if frugal worker --help >/dev/null 2>&1 && python -c "import flows.deploy" >/dev/null 2>&1; then
    exec frugal worker --pool "$FRUGAL_POOL"
fi
echo "worker-start: no working 'frugal worker' in this build; running prefect worker start" >&2
exec prefect worker start --pool "$FRUGAL_POOL" --type process
