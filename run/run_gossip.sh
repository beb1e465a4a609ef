#!/usr/bin/env bash
# Gossip (GoSGD, or Elastic Gossip with --set gossip.variant=elastic) over N workers:
# run/run_gossip.sh N [config.yaml] [--set key=value ...]
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"   # also through ./run_gossip.sh
parse_args "$@"
launch GOSSIP "$WORKERS"
