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
# Each run starts with an empty plan cache (a fresh folder, unless the caller names one).
LANCET_CACHE_DIR=${LANCET_CACHE_DIR:-$(mktemp -d)}
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
    grep -oE 'check attention [^;]*' "$OUT/gpu-tests.log" | sed -E 's/^check attention /  /'
    python3 - "$OUT/attention_lancet.json" "$OUT/attention_torch.json" <<'PY'
import json, sys
try:
    lancet = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"no lancet benchmark results: {e}")
try:
    torch_report = json.load(open(sys.argv[2]))
    torch = {r["case"]: r for r in torch_report["cases"]}
    torch_cudnn = torch_report["cudnn"]
except (OSError, ValueError, KeyError):
    torch, torch_cudnn = {}, "(no results)"
print(f"\nattention, {lancet['device']}, median ms per call")
print(f"lancet on cuDNN {lancet['cudnn']}, PyTorch on cuDNN {torch_cudnn}")
print(f"{'case':<28} {'lancet':>8} {'TFLOP/s':>8} {'torch':>8} {'TFLOP/s':>8} {'lancet/torch':>12}")
for r in lancet["cases"]:
    t = torch.get(r["case"].replace(" (graph)", ""))
    tm = f"{t['median_ms']:8.4f} {t['tflops']:8.1f} {r['median_ms'] / t['median_ms']:12.3f}" if t else ""
    print(f"{r['case']:<28} {r['median_ms']:8.4f} {r['tflops']:8.1f} {tm}")
c = lancet["plan_cost"]
print(
    f"plan ({lancet['cases'][0]['case']}), fresh processes: first build {c['cold_build']['lookup_ms']:.0f} ms "
    f"(with CUDA's JIT cache filled {c['build_with_cuda_cache']['lookup_ms']:.0f} ms), "
    f"restore from disk {c['restore_ms']:.1f} ms; in-process lookup {c['lookup_ms'] * 1e3:.2f} us; "
    f"{c['plan_bytes']} bytes on disk"
)
PY
} 2>&1 | tee "$OUT/summary.txt"
