#!/usr/bin/env bash
# Regenerate the golden summaries that tests/test_golden.py compares with. Run only when a change of the
# figures is meant, then review `git diff tests/golden` before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
MOESIM=${MOESIM:-.venv/bin/moesim}  # may be a command line, e.g. "python -m simulator.cli"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for scenario in scenarios/seed_moe_4gpu.yaml tests/golden/golden_tiny_pp.yaml; do
  name=$(basename "$scenario" .yaml)
  # the default run (folded, decode sampled) and --full (every step on every GPU)
  $MOESIM run "$scenario" --out "$tmp/$name" --no-dag >/dev/null
  cp "$tmp/$name/summary.json" "tests/golden/$name.summary.json"
  cp "$tmp/$name/summary.md" "tests/golden/$name.summary.md"
  $MOESIM run "$scenario" --out "$tmp/$name.full" --no-dag --full >/dev/null
  cp "$tmp/$name.full/summary.json" "tests/golden/$name.full.summary.json"
  cp "$tmp/$name.full/summary.md" "tests/golden/$name.full.summary.md"
done
git diff --stat -- tests/golden || true
