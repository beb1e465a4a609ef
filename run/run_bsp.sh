#!/usr/bin/env bash
# BSP over N workers: run/run_bsp.sh N [config.yaml] [--set key=value ...]
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"   # also through ./run_bsp.sh
parse_args "$@"
launch BSP "$WORKERS"
