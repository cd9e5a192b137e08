#!/usr/bin/env bash
# The GPU check, prepared for a lent NVIDIA machine (README, "GPUs"). Run from the repository
# root. It prints, and writes to $OUT/gpu-check.txt (or ./gpu-check.txt):
#   1. the GPU, its driver and memory (nvidia-smi);
#   2. the golden parity tests and the half-precision test on the GPU (burn-cuda);
#   3. `trainer bench` on cuda (and wgpu when built with it) next to the reference PyTorch step
#      on the same GPU (`torch_msn_step.py --device cuda`, when torch with CUDA is importable),
#      vit-tiny at the paper's sizes, batch 8;
#   4. vit-small at batch 64 in f32 and bf16 on cuda: images/s and peak GPU memory;
#   5. data parallelism: on a small synthetic dataset (`pipeline synth` + `build`), 10 steps of
#      `trainer pretrain` on cuda:0, then the same through NCCL on one GPU (`--all-reduce nccl`:
#      the group's code path with one rank; its losses must equal the plain run's), and, when
#      the machine has two GPUs or more, on cuda:0,cuda:1 through NCCL and through host memory.
#
# Building: by default it builds the trainer and its test binaries with `--features cuda` (plus
# `wgpu` with GPU_CHECK_WGPU=1), which needs no GPU and no CUDA toolkit. To save device time,
# build elsewhere and point at the results:
#   TRAINER_BIN=path/to/trainer  PIPELINE_BIN=path/to/pipeline  GPU_TEST_BINS="path/to/golden-... path/to/half-..."
# Each part runs under a timeout; the time after the build has not been measured (never run on
# a GPU yet).
set -uo pipefail
cd "$(dirname "$0")/../.."
report="${OUT:-.}/gpu-check.txt"
: > "$report"
say() { echo "$*" | tee -a "$report"; }
run() { # run LABEL TIMEOUT CMD...: a part that may fail without stopping the others
    local label=$1 limit=$2
    shift 2
    say "== $label"
    timeout "$limit" "$@" 2>&1 | tee -a "$report" | tail -n 40
    local rc=${PIPESTATUS[0]}
    say "-- $label: exit $rc"
    return "$rc"
}

start=$(date +%s)
run "GPU" 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv

features=cuda
[ "${GPU_CHECK_WGPU:-0}" = 1 ] && features=cuda,wgpu
if [ -z "${TRAINER_BIN:-}" ]; then
    run "build (--features $features)" 3000 cargo build --release --locked -p trainer-cli -p pipeline-cli --features "trainer/$features"
    TRAINER_BIN=target/release/trainer
    PIPELINE_BIN=${PIPELINE_BIN:-target/release/pipeline}
fi
if [ -z "${GPU_TEST_BINS:-}" ]; then
    run "build the GPU tests" 3000 cargo test --release --locked -p trainer --features "$features" \
        --test golden --test half --no-run
    GPU_TEST_BINS=$(ls -t target/release/deps/golden-* target/release/deps/half-* 2>/dev/null | grep -v '\.d$' | head -n 2)
fi
say "build done after $(( $(date +%s) - start )) s; checks start"
checks=$(date +%s)

for t in $GPU_TEST_BINS; do
    run "$(basename "$t") on cuda" 240 env CXR_TEST_DEVICE=cuda "$t" --test-threads 1
done

bench() { # bench DEVICE PRECISION MODEL BATCH
    run "trainer bench --device $1 --precision $2 --model $3 --batch-size $4" 300 \
        "$TRAINER_BIN" --device "$1" --precision "$2" bench --model "$3" --batch-size "$4" --steps 10 --warmup 3
}
bench cuda f32 vit-tiny 8
[ "${GPU_CHECK_WGPU:-0}" = 1 ] && bench wgpu f32 vit-tiny 8

py=${PYTHON:-python3}
if "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    run "PyTorch, vit-tiny batch 8 on cuda" 300 "$py" trainer/bench/torch_msn_step.py --device cuda \
        --model vit-tiny --batch-size 8 --ehr-width 13 --steps 10 --warmup 3
    run "PyTorch, vit-small batch 64 on cuda" 300 "$py" trainer/bench/torch_msn_step.py --device cuda \
        --model vit-small --batch-size 64 --ehr-width 13 --steps 10 --warmup 3
else
    say "== PyTorch with CUDA is not importable by $py: no reference figures on this machine"
fi

for precision in f32 bf16; do
    bench cuda "$precision" vit-small 64 &
    pid=$!
    peak=0
    while kill -0 "$pid" 2>/dev/null; do
        used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1)
        [ -n "$used" ] && [ "$used" -gt "$peak" ] && peak=$used
        sleep 1
    done
    wait "$pid"
    say "peak GPU memory in use during vit-small batch 64 $precision (nvidia-smi): $peak MiB"
done

ddp=$(mktemp -d)
if run "synthetic dataset for the data-parallel runs" 120 sh -c \
    "'${PIPELINE_BIN:-target/release/pipeline}' synth --out '$ddp/archive' --subjects 60 --images jpg --image-size 128x128 &&
     '${PIPELINE_BIN:-target/release/pipeline}' build --mimic-root '$ddp/archive' --out '$ddp/datasets' --images jpg --image-size 64"; then
    dataset=$(ls -d "$ddp"/datasets/*/ | head -n 1)
    pretrain() { # pretrain NAME DEVICES [ARGS...]
        local name=$1 devices=$2
        shift 2
        run "pretrain on $devices $*" 180 "$TRAINER_BIN" --device "$devices" "$@" pretrain --dataset "$dataset" \
            --out "$ddp/$name" --model vit-tiny --ehr demographics --global-size 64 --focal-size 32 \
            --batch-size 32 --max-steps 10
    }
    losses() { sed -E 's/.*"step":([0-9]+),"loss":([^,]+),.*/\1 \2/' "$ddp/$1/metrics.jsonl"; }
    pretrain one cuda:0
    pretrain nccl1 cuda:0 --all-reduce nccl
    if [ -s "$ddp/one/metrics.jsonl" ] && [ "$(losses one)" = "$(losses nccl1)" ]; then
        say "NCCL on one GPU: the same losses as the plain run, step for step"
    else
        say "NCCL on one GPU: losses DIFFER from the plain run"; paste <(losses one) <(losses nccl1) | tee -a "$report"
    fi
    if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
        pretrain nccl2 cuda:0,cuda:1
        pretrain host2 cuda:0,cuda:1 --all-reduce host
        say "two GPUs, losses (step, NCCL, host):"; paste <(losses nccl2) <(losses host2 | cut -d' ' -f2) | tee -a "$report"
    else
        say "one GPU: no two-GPU data-parallel run on this machine"
    fi
fi

say "checks took $(( $(date +%s) - checks )) s"
