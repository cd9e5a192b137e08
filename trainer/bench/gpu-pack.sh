#!/usr/bin/env bash
# Builds, here, everything the GPU check (trainer/bench/gpu-check.sh) runs on a GPU machine that
# has no network and no Rust: the release `trainer` with the cuda and wgpu backends in one
# binary (`--features cuda,vulkan`: burn-cuda with NVRTC, and wgpu with its SPIR-V compiler),
# and the release `pipeline`, stripped and xz-compressed into gpu-bins/ (ignored by git) with
# their SHA256SUMS and a MANIFEST (sizes raw, stripped and compressed, the newest glibc symbol
# version each needs, the commit). Carry that folder with the repository (64 MiB in all).
#
#   trainer/bench/gpu-pack.sh [OUT_DIR]        # default gpu-bins
#   GPU_PACK_FEATURES=cuda trainer/bench/gpu-pack.sh   # without wgpu
#
# Needs what the repository's build needs (no GPU, no CUDA toolkit, no Vulkan SDK), plus
# `strip` (binutils) and `xz`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-gpu-bins}
features=${GPU_PACK_FEATURES:-cuda,vulkan}
mkdir -p "$out"

build() { # build PACKAGE [FEATURES]
    local args=(build --release --locked -p "$1") cargo=cargo
    [ -n "${2:-}" ] && args+=(--features "$2")
    # SPIR-V with cubecl-spirv's shared-memory fix (trainer/vulkan/cargo), so that the
    # rehearsal's wgpu parts run on lavapipe too; GPU drivers take the compiler's other path.
    [[ ${2:-} == *vulkan* ]] && cargo=trainer/vulkan/cargo
    echo "== $cargo ${args[*]}" >&2
    "$cargo" "${args[@]}" >&2
}
build trainer-cli "$features"
cp target/release/trainer "$out/trainer"
build pipeline-cli
cp target/release/pipeline "$out/pipeline"

{
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!gpu-bins' || echo ' (with uncommitted changes)')"
    echo "trainer features: $features"
} > "$out/MANIFEST"
for bin in trainer pipeline; do
    raw=$(stat -c %s "$out/$bin")
    strip "$out/$bin"
    stripped=$(stat -c %s "$out/$bin")
    glibc=$(objdump -T "$out/$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
    rm -f "$out/$bin.xz"
    xz -T0 -9 "$out/$bin"
    packed=$(stat -c %s "$out/$bin.xz")
    echo "$bin: $raw bytes built, $stripped stripped, $packed compressed (xz -9); needs $glibc or newer" |
        tee -a "$out/MANIFEST"
done
(cd "$out" && sha256sum trainer.xz pipeline.xz > SHA256SUMS)
echo "packed into $out/ ($(du -sb "$out" | cut -f1) bytes)"
