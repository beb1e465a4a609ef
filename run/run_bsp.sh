#!/usr/bin/env bash
# BSP over N workers: run/run_bsp.sh N [config.yaml] [--set key=value ...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
launch BSP "$WORKERS"
