#!/usr/bin/env bash
# Runs the prebuilt bundle (benches/bundle.sh) on the GPU machine: the GPU tests, the attention
# benchmark, and PyTorch's cuDNN attention for comparison. Builds nothing. Logs and JSON go to
# $OUT (./out when unset); a short summary is printed last.
#
# To add a step: one `step NAME COMMAND...` line (its output goes to $OUT/NAME.log), and a few
# lines in the summary below.
set -uo pipefail
cd "$(dirname "$0")/.."

BUNDLE=gpu-bundle
OUT=${OUT:-out}
mkdir -p "$OUT"
# Every run starts with an empty plan cache, so first-build costs are real.
LANCET_CACHE_DIR=$(mktemp -d)
export LANCET_CACHE_DIR

results=()
step() {
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    results+=("$name: exit $rc, $((SECONDS - start)) s")
    echo "   exit $rc after $((SECONDS - start)) s"
}

for exe in gpu-tests attention-bench; do
    [[ -x $BUNDLE/$exe ]] || { echo "missing $BUNDLE/$exe: run benches/bundle.sh on the build machine" >&2; exit 1; }
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
    >"$OUT/gpu.txt" 2>&1

step gpu-tests "$BUNDLE/gpu-tests"
step attention-bench "$BUNDLE/attention-bench" --json "$OUT/attention_lancet.json"
step torch-attention python3 benches/torch_attention.py --json "$OUT/attention_torch.json"

{
    echo
    echo "===================== summary ====================="
    cat "$OUT/gpu.txt"
    printf '%s\n' "${results[@]}"
    echo
    echo "gpu tests: $(grep -E '^test result' "$OUT/gpu-tests.log" || echo 'no result line')"
    grep -E '^test .* FAILED$' "$OUT/gpu-tests.log"
    echo "attention correctness (rel L2 vs the f32 CPU reference):"
    grep -E '^check attention' "$OUT/gpu-tests.log" | sed -E 's/^check attention /  /; s/;.*//'
    python3 - "$OUT/attention_lancet.json" "$OUT/attention_torch.json" <<'PY'
import json, sys
try:
    lancet = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"no lancet benchmark results: {e}")
try:
    torch = {r["case"]: r for r in json.load(open(sys.argv[2]))["cases"]}
except (OSError, ValueError, KeyError):
    torch = {}
print(f"\nattention, {lancet['device']}, lancet on cuDNN {lancet['cudnn']} (median ms per call)")
print(f"{'case':<28} {'lancet':>8} {'TFLOP/s':>8} {'torch':>8} {'TFLOP/s':>8} {'lancet/torch':>12}")
for r in lancet["cases"]:
    t = torch.get(r["case"].replace(" (graph)", ""))
    tm = f"{t['median_ms']:8.4f} {t['tflops']:8.1f} {r['median_ms'] / t['median_ms']:12.3f}" if t else ""
    print(f"{r['case']:<28} {r['median_ms']:8.4f} {r['tflops']:8.1f} {tm}")
c = lancet["plan_cost"]
print(
    f"plan: build {c['build_ms']:.0f} ms (finalize {c['finalize_ms']:.0f}), restore in a new process "
    f"{c['restore_ms']:.1f} ms, lookup {c['lookup_ms'] * 1e3:.2f} us, {c['plan_bytes']} bytes on disk"
)
PY
} 2>&1 | tee "$OUT/summary.txt"
