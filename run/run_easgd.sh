#!/usr/bin/env bash
# EASGD: 1 server (rank 0) + N workers: run/run_easgd.sh N [config.yaml] [--set key=value ...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
launch EASGD $((WORKERS + 1))
