#!/usr/bin/env bash
# Downpour: downpour.servers parameter servers (ranks 0..S-1) + N workers:
# run/run_downpour.sh N [config.yaml] [--set key=value ...]
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"   # also through ./run_downpour.sh
parse_args "$@"
servers=$(config_value downpour.servers)
# ULFM: a worker that dies is reported to the servers, which drop it; the others go on.
launch DOWNPOUR $((WORKERS + servers)) --with-ft ulfm
