#!/usr/bin/env bash
# Set everything up, then run moesim on the bundled seed scenario (writes reports/seed_moe_4gpu/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/moesim run scenarios/seed_moe_4gpu.yaml "$@"
