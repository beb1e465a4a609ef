#!/usr/bin/env bash
# EASGD: 1 server (rank 0) + N workers: run/run_easgd.sh N [config.yaml] [--set key=value ...]
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"   # also through ./run_easgd.sh
parse_args "$@"
# ULFM: a worker that dies is reported to the server, which drops it; the others go on.
launch EASGD $((WORKERS + 1)) --with-ft ulfm
