#!/usr/bin/env bash
# Runs the prebuilt bundle (benches/bundle.sh) on the GPU machine: the GPU tests, the attention
# and FP8 GEMM benchmarks, and PyTorch's cuDNN attention and `_scaled_mm` for comparison
# (group `checks`); the gated GEMM's tests and the headline's profile with it off and on
# (group `gated`); the gated GEMM kernel alone, built with nvcc around lancet's dump (group
# `probe`); the headline forward pass side by side with PyTorch's recipes on the same
# checkpoint (group `headline`); parity with transformers (group `parity`); scaling sweeps (group
# `sweep`); start-up times with empty and warm caches (group `startup`, best run first on a
# fresh machine: its first process then also reads the CUDA libraries from disk). Builds nothing. Logs and JSON go to $OUT (./out when unset); a short summary is
# printed last.
#
# Usage: benches/device.sh [GROUP...]   GROUP: all (the default), startup, checks, gated, probe,
# headline, parity, sweep. Several groups run in the order the script has them; keep each call
# under its 10-minute limit (gated, probe and headline together take about 5 minutes).
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

# FP8 attention needs a newer cuDNN than the system's 9.14 (wrong at head_dim 64): use PyTorch's
# pip cuDNN when there is one and the caller named none.
if [[ -z ${LANCET_CUDNN:-} ]]; then
    LANCET_CUDNN=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")' 2>/dev/null) \
        && export LANCET_CUDNN || unset LANCET_CUDNN
fi
echo "LANCET_CUDNN=${LANCET_CUDNN:-(unset: the system cuDNN)}" | tee "$OUT/cudnn.txt"

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

for exe in lancet gpu-tests attention-bench gemm-bench; do
    [[ -x $BUNDLE/$exe ]] || { echo "missing $BUNDLE/$exe: run benches/bundle.sh on the build machine" >&2; exit 1; }
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
    >"$OUT/gpu.txt" 2>&1

GROUPS_ASKED=" ${*:-all} "
want() { [[ $GROUPS_ASKED == *" all "* || $GROUPS_ASKED == *" $1 "* ]]; }

if want startup; then
# Before anything else, so that on a fresh machine its first process is the machine's first.
step startup python3 benches/startup.py --lancet "$BUNDLE/lancet" --json "$OUT/startup.json"
fi

if want checks; then
step gpu-tests "$BUNDLE/gpu-tests"
step attention-bench "$BUNDLE/attention-bench" --json "$OUT/attention_lancet.json"
step torch-attention python3 benches/torch_attention.py --json "$OUT/attention_torch.json"
# lancet, PyTorch, lancet again: the GPU's clocks drift with its temperature and power, so the
# comparison uses the mean of the two lancet runs that bracket PyTorch's.
step gemm-bench "$BUNDLE/gemm-bench" --json "$OUT/gemm_lancet.json"
step torch-gemm python3 benches/torch_gemm.py --json "$OUT/gemm_torch.json"
step gemm-bench-2 "$BUNDLE/gemm-bench" --json "$OUT/gemm_lancet_2.json"
fi

if want gated; then
# The gated GEMM (lancet's own FP8 GEMM with SwiGLU + quantize in its epilogue): its GPU
# tests alone, then where the headline's time goes with it off, on, and on with the staged
# epilogue (same process kind, one after the other, so the per-step medians compare).
# (Bounded: a kernel that deadlocks would otherwise hold the call until its limit.)
step gated-tests timeout 300 "$BUNDLE/gpu-tests" gated_gemm
for variant in off on staged; do
    flags=(--gated-gemm on)
    [[ $variant == off ]] && flags=(--gated-gemm off)
    [[ $variant == staged ]] && flags+=(--gated-epilogue staged)
    step "gated-profile-$variant" timeout 120 "$BUNDLE/lancet" bench --preset llama-3.2-1b --layers 8 --batch 2 \
        --seq 2048 --precision fp8 --attention fp8 "${flags[@]}" --profile --json
done
fi

if want probe; then
# The gated GEMM kernel alone, outside lancet (for tuning it here): lancet dumps the kernel it
# generates (each epilogue), nvcc builds benches/gated_gemm_probe.cu around it, and the probe
# checks it against a naive kernel and times it at the headline's MLP shape. Variants: the
# epilogue in registers (the default), the same with clusters of 2 (multicast) and with 3 ring
# stages, and the staged epilogue.
dir=$(cd "$OUT" && pwd)/probe-kernels  # absolute: the probe #includes it
for epilogue in registers staged; do
    step "probe-dump-$epilogue" "$BUNDLE/lancet" compile --preset llama-3.2-1b --layers 1 --batch 1 --seq 128 \
        --attention fp8 --gated-epilogue "$epilogue" --no-nvrtc --dump-kernels "$dir/$epilogue" --force
    kernel=$(basename "$(ls "$dir/$epilogue"/gated_gemm_silu_*.cu 2>/dev/null | head -n 1)" .cu)
    cp "$dir/$epilogue/$kernel.cu" "$dir/$epilogue.cu" 2>/dev/null
    echo "$kernel" >"$dir/$epilogue.name"
done
# The multicast variant (clusters of 2), which lowering does not choose: the same source as the
# template renders it with cluster = 2. And the registers epilogue with the staged one's 3 ring
# stages, which tells the ring's cost apart from the staged epilogue's gain.
if [[ -f $dir/registers.cu ]]; then
    sed -e 's/^constexpr int CLUSTER = 1;/constexpr int CLUSTER = 2;/' \
        -e 's/__launch_bounds__(384, 1) /__launch_bounds__(384, 1) __cluster_dims__(2, 1, 1) /' \
        "$dir/registers.cu" >"$dir/registers-cluster2.cu"
    sed -e 's/^constexpr int STAGES = 4;/constexpr int STAGES = 3;/' "$dir/registers.cu" >"$dir/registers-3stages.cu"
    for v in registers-cluster2 registers-3stages; do cp "$dir/registers.name" "$dir/$v.name"; done
fi
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
for variant in registers registers-cluster2 registers-3stages staged; do
    step "probe-build-$variant" "$NVCC" -O2 -std=c++17 -gencode=arch=compute_90a,code=sm_90a \
        "-DKERNEL_FILE=\"$dir/$variant.cu\"" "-DKERNEL=$(cat "$dir/$variant.name" 2>/dev/null)" \
        benches/gated_gemm_probe.cu -lcuda -o "$OUT/gated-probe-$variant"
    step "probe-$variant" timeout 120 "$OUT/gated-probe-$variant"
done
fi

if want headline; then
# The headline: Llama-3.2-1B shapes, 8 layers, batch 2, sequence 2048, on one random checkpoint
# that both sides load: lancet's rows (FP8 cold and warm, fusion off, bf16) and PyTorch's six,
# each checked against PyTorch's bf16 eager output.
step side-by-side python3 benches/side_by_side.py --lancet "$BUNDLE/lancet" --json "$OUT/side_by_side.json"
fi

if want parity; then
# A random transformers LlamaModel: transformers, PyTorch's FP8 pipeline and lancet (GPU bf16 and
# FP8, CPU f32) against transformers' f32 forward pass.
step hf-parity python3 benches/hf_parity.py --lancet "$BUNDLE/lancet" --json "$OUT/hf_parity.json"
fi

if want sweep; then
# Sequence, batch and depth sweeps of lancet FP8 against PyTorch's best row.
step sweep python3 benches/sweep.py --lancet "$BUNDLE/lancet" --json "$OUT/sweep.json"
fi

{
    echo
    echo "===================== summary ====================="
    cat "$OUT/gpu.txt" "$OUT/cudnn.txt"
    printf '%s\n' "${results[@]}"
    echo
    if want checks; then
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
    echo
    echo "gemm correctness (rel L2 vs the CPU reference on the same rounded inputs):"
    grep -oE 'check gemm [^;]*' "$OUT/gpu-tests.log" | sed -E 's/^check gemm /  /'
    python3 - "$OUT/gemm_lancet.json" "$OUT/gemm_lancet_2.json" "$OUT/gemm_torch.json" <<'PY'
import json, sys
def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None
first, second, torch_report = (load(p) for p in sys.argv[1:])
if first is None:
    sys.exit("no lancet GEMM results")
rounds = [r for r in (first, second) if r]
lancet = [{(r["case"], r["variant"]): r for r in report["rows"]} for report in rounds]
torch = {(r["case"], r["variant"]): r for r in torch_report["rows"]} if torch_report else {}
print(f"\nFP8 GEMMs at M = {first['m']}, {first['device']}, median ms per call (TFLOP/s)")
print(f"lancet on cuBLASLt {first['cublaslt']} ({len(rounds)} runs, before and after PyTorch's), "
      f"PyTorch {torch_report['torch'] if torch_report else '(no results)'}; fast accumulation unless noted")
pairs = [
    ("autotuned", "fast accumulation"),
    ("autotuned, CUDA graph", "fast accumulation, CUDA graph"),
    ("heuristic top-1", "fast accumulation"),
    ("autotuned, no fast accumulation", "no fast accumulation"),
    ("autotuned, no residual", "fast accumulation"),
    ("autotuned", "fast accumulation + residual add"),
]
cell = lambda r: f"{r['median_ms']:.4f} ({r['tflops']:.0f})" if r else "-"
print(f"{'case':<8} {'lancet variant':<32} {'lancet run 1':>15} {'lancet run 2':>15} "
      f"{'torch variant':<33} {'torch':>15} {'lancet/torch':>12}")
for case in dict.fromkeys(r["case"] for r in first["rows"]):
    for ours, theirs in pairs:
        mine = [rows.get((case, ours)) for rows in lancet]
        t = torch.get((case, theirs))
        if not mine[0] or (theirs.endswith("add") and not t):
            continue
        runs = [r for r in mine if r]
        mean = sum(r["median_ms"] for r in runs) / len(runs)
        ratio = f"{mean / t['median_ms']:12.3f}" if t else ""
        second_cell = cell(mine[1]) if len(mine) > 1 else "-"
        print(f"{case:<8} {ours:<32} {cell(mine[0]):>15} {second_cell:>15} {theirs:<33} {cell(t):>15} {ratio}")
for t in first["tuning"]:
    print(f"tuning {t['case']}: {t['tuning_ms']:.1f} ms ({len(t['candidates'])} candidates), "
          f"restore {t.get('restore_ms', float('nan')):.2f} ms; {t['chosen']}, "
          f"workspace {t['chosen_workspace_size']} B (largest candidate {t['max_candidate_workspace_size']} B)")
PY
    fi
    if want gated; then
    echo "gated GEMM tests: $(grep -E '^test result' "$OUT/gated-tests.log" || echo 'no result line')"
    grep -E '^test .* FAILED$' "$OUT/gated-tests.log"
    grep -oE 'check exec [^;]*; fusion [a-z]+; gated GEMMs [0-9]+' "$OUT/gated-tests.log" | sed -E 's/^check exec /  /'
    python3 - "$OUT/gated-profile-off.log" "$OUT/gated-profile-on.log" "$OUT/gated-profile-staged.log" <<'PY'
import json, sys
print("\nheadline with the gated GEMM off, on, and on with the staged epilogue (lancet bench --profile; ms)")
for path in sys.argv[1:]:
    try:
        text = open(path).read()
        start = 0 if text.startswith("{") else text.index("\n{") + 1  # stderr may come first
        r, _ = json.JSONDecoder().raw_decode(text[start:])
    except (OSError, ValueError) as e:
        print(f"  {path}: no report ({e})")
        continue
    steps = ", ".join(f"{k} {v['ms']:.3f} ({v['launches']})" for k, v in r["profile_ms"].items())
    print(f"  {path.rsplit('-', 1)[-1][:-4]:>6}: replay {r['steady_state']['cuda_graph']['median_ms']:.3f}; {steps}")
PY
    fi
    for group in startup probe-build-registers probe-registers probe-build-registers-cluster2 probe-registers-cluster2 \
        probe-build-registers-3stages probe-registers-3stages probe-build-staged probe-staged side-by-side hf-parity \
        sweep; do
        if [[ -f $OUT/$group.log ]]; then
            echo
            echo "--- $group (last lines of $group.log) ---"
            tail -n 30 "$OUT/$group.log"
        fi
    done
} 2>&1 | tee "$OUT/summary.txt"
