#!/usr/bin/env bash
# Refit the calibrated hardware profiles from the measurements in hardware_profiles/measurements/.
# H200: measured. H100 SXM and the origin's generic-64gb (H100 class): the same GH100 silicon
# (132 SMs, same clocks and tensor cores), so the H200's roofline fractions carry over to their own
# datasheet peaks; A100 (another architecture) keeps datasheet constants only.
# After a GPU run of benchmarks/gpu_calibration.sh (its files in $OUT), refit from what it measured:
#   DATA=$OUT/raw_micro.json HOST_CALLS=$OUT/raw_host_calls.json EXTRA=$OUT/raw_extra.json bash scripts/refit_profiles.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MOESIM=${MOESIM:-moesim}
DATA=${DATA:-hardware_profiles/measurements/h200_micro.json}
HOST_CALLS=${HOST_CALLS:-hardware_profiles/measurements/host_calls.json}
extra=()
[ -n "${EXTRA:-}" ] && extra=(--extra "$EXTRA")
for name in h200-sxm-141gb h100-sxm-80gb generic-64gb; do
  "$MOESIM" calibrate --from-json "$DATA" --measured-on hardware_profiles/datasheet/h200-sxm-141gb.yaml \
    --base "hardware_profiles/datasheet/$name.yaml" \
    --host-calls "$HOST_CALLS" "${extra[@]}" \
    --out "hardware_profiles/$name.yaml" --name "$name"
done
