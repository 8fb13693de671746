#!/usr/bin/env bash
# One prepared calibration run on a GPU machine: measure the micro-benchmarks (and e2e passes) into
# $OUT/raw_micro.json (format of shared/calibration/h200_micro.json), within BUDGET_S seconds, then print
# a short summary. PyTorch must be installed already (this script never installs it).
#   bash benchmarks/gpu_calibration.sh [--quick] [--no-e2e]
# The JSON is rewritten after each section, so a run cut off by the budget keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
BUDGET_S=${BUDGET_S:-360}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ! "$PY" -c "import simulator.calibration.microbench" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || echo "gpu_calibration: pip install -e . failed; running from the checkout" >&2
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader 2>/dev/null || true
start=$(date +%s)
timeout -k 10 "$BUDGET_S" "$PY" -m simulator.calibration.microbench --out "$OUT/raw_micro.json" "$@"
rc=$?
echo "gpu_calibration: microbench exit $rc after $(( $(date +%s) - start )) s (budget ${BUDGET_S} s)"
[ -f "$OUT/raw_micro.json" ] || exit "$rc"
"$PY" - "$OUT/raw_micro.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
env = d.get("env", {})
print(f"{env.get('name')}: {env.get('sm_count')} SMs, {(env.get('mem_bytes') or 0) / 2**30:.0f} GiB, "
      f"torch {env.get('torch')}, CUDA {env.get('cuda')}")
print("sections:", ", ".join(f"{k} {len(v)}" for k, v in d.items() if isinstance(v, list)))
best = lambda k, f: max((e[f] for e in d.get(k, [])), default=float("nan"))
print(f"best gemm {best('gemm', 'tflops'):.0f} TFLOP/s, bmm {best('bmm', 'tflops'):.0f}, "
      f"flash prefill {best('sdpa_prefill', 'tflops'):.0f}; decode attention {best('sdpa_decode', 'gbps'):.0f} GB/s, "
      f"copy {best('copy', 'gbps_rw'):.0f} GB/s r+w")
for e in d.get("launch", []):
    print(f"launch {e['op']}: {e['s'] * 1e6:.1f} us")
for e in d.get("e2e_dev", []):
    times = ", ".join(f"{k} {e[k] * 1e3:.2f} ms" for k in ("s", "s_eager", "s_cuda_graph") if e.get(k) is not None)
    print(f"e2e {e['case']} {e['phase']} batch {e['batch']}: {times}")
PY
exit "$rc"
