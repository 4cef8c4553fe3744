#!/usr/bin/env bash
# Builds, on this (CPU) machine, every executable the GPU machine runs, and copies them into
# gpu-bundle/ (git-ignored) under fixed names. benches/device.sh runs them there; it builds nothing.
#
# To bundle another executable, add "<kind>:<cargo target name> <file name in the bundle>" to
# TARGETS, with kind one of test, bench, bin.
set -euo pipefail
cd "$(dirname "$0")/.."

BUNDLE=gpu-bundle
LIMIT_MIB=64
TARGETS=(
    "bin:lancet lancet"
    "test:gpu gpu-tests"
    "bench:attention attention-bench"
    "bench:gemm gemm-bench"
)

cargo build --release
messages=$(mktemp)
trap 'rm -f "$messages"' EXIT
cargo test --release --no-run --message-format=json >"$messages"
cargo bench --no-run --message-format=json >>"$messages"

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
for entry in "${TARGETS[@]}"; do
    target=${entry% *} dest=${entry#* }
    # The executable cargo reported for this target (the last build wins), not a guessed hash;
    # binaries from the release build itself (`cargo bench` would report its own build of them).
    if [[ ${target%%:*} == bin ]]; then
        cp "target/release/${target#*:}" "$BUNDLE/$dest"
        echo "bundle: $BUNDLE/$dest <- target/release/${target#*:}"
        continue
    fi
    exe=$(python3 - "$messages" "${target%%:*}" "${target#*:}" <<'PY'
import json, sys
path, kind, name = sys.argv[1:]
found = None
for line in open(path):
    msg = json.loads(line) if line.startswith("{") else {}
    t = msg.get("target", {})
    if msg.get("reason") == "compiler-artifact" and t.get("name") == name and kind in t.get("kind", []):
        found = msg.get("executable") or found
print(found or "")
PY
)
    if [[ -z $exe ]]; then
        echo "bundle: cargo reported no executable for $target" >&2
        exit 1
    fi
    cp "$exe" "$BUNDLE/$dest"
    echo "bundle: $BUNDLE/$dest <- ${exe#"$PWD"/}"
done

size_kib=$(du -sk "$BUNDLE" | cut -f1)
echo "bundle: $((size_kib / 1024)) MiB in $BUNDLE/"
if ((size_kib > LIMIT_MIB * 1024)); then
    echo "bundle: larger than $LIMIT_MIB MiB" >&2
    exit 1
fi
