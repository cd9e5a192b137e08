#!/usr/bin/env bash
# The GPU check (README, "NVIDIA GPUs"), run on a GPU machine from carried files: nothing is
# built or fetched there. Make the files here with trainer/bench/gpu-pack.sh (gpu-bins/: the
# release trainer with cuda and wgpu, the pipeline, xz-compressed), carry the repository with
# gpu-bins/, then, from the repository root:
#
#   trainer/bench/gpu-check.sh                         # on an NVIDIA machine: --device cuda
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 trainer/bench/gpu-check.sh   # the rehearsal here
#
# It writes $OUT/gpu-check.md (the summary table) and $OUT/gpu-check.log (everything printed),
# OUT defaulting to ./gpu-check-out. In order, each part under its own timeout:
#   1. the machine: nvidia-smi, glibc, the carried binaries unpacked and their sha256 checked;
#   2. `trainer selftest` (the golden parity cases) on the device in f32 and bf16, and on wgpu;
#   3. `trainer bench`, vit-tiny batch 8 and vit-small batch 64, f32 and bf16, on the device and
#      on wgpu, next to PyTorch's step on the same device (torch_msn_step.py, --amp bf16 for the
#      bf16 rows) when python3 has torch for it: images/s and peak GPU memory (nvidia-smi);
#   4. 200 pretraining steps of a vit-micro on a small synthetic dataset in f32, bf16 and f16
#      (dynamic loss scale): the mean loss of the last 50 steps of each and its difference from
#      f32, and the f16 run's last loss scale;
#   5. on CUDA, the same dataset, 10 steps on one GPU plainly and through NCCL with one rank
#      (`--all-reduce nccl`): the losses must be equal, step for step.
# GPU_CHECK_WGPU=0 leaves wgpu out (default: in, when the trainer has it and libvulkan.so.1 is
# there). GPU_CHECK_QUICK=1 runs 1 timed step per bench at batch 2 with views of 64 and 32
# pixels, and 20 pretraining steps, with 900 s limits for the selftest and bench parts (the
# rehearsal on a CPU: there wgpu is Mesa's lavapipe, where CubeCL's first autotuning of the
# kernels takes minutes; the autotune cache is target/environment/). GPU_CHECK_BINS names the folder of carried files (default gpu-bins).
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=${OUT:-$root/gpu-check-out}
mkdir -p "$out"
log="$out/gpu-check.log"
table="$out/gpu-check.md"
: > "$log"
say() { echo "$*" | tee -a "$log"; }
row() { echo "$*" >> "$table"; }
run() { # run LABEL TIMEOUT CMD...: a part that may fail without stopping the others
    local label=$1 limit=$2
    shift 2
    say "== $label"
    timeout "$limit" "$@" > "$out/last.txt" 2>&1
    local rc=$?
    tee -a "$log" < "$out/last.txt" | tail -n 30
    say "-- $label: exit $rc"
    return "$rc"
}
start=$(date +%s)
device=${GPU_CHECK_DEVICE:-cuda}
quick=${GPU_CHECK_QUICK:-0}
bins=${GPU_CHECK_BINS:-gpu-bins}
gpu=0
[ "$device" != cpu ] && command -v nvidia-smi > /dev/null && gpu=1

echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), device $device" > "$table"

# 1. The machine and the carried binaries.
if [ "$gpu" = 1 ]; then
    run "GPU" 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    row "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
fi
say "glibc: $(ldd --version 2>&1 | head -n 1)"
[ -f "$bins/MANIFEST" ] && { cat "$bins/MANIFEST" | tee -a "$log"; sed 's/^/    /' "$bins/MANIFEST" >> "$table"; }
tools=$(mktemp -d)
unpack() { # unpack NAME: $bins/NAME.xz into $tools/NAME (xz, else Python's lzma)
    if command -v xz > /dev/null; then
        xz -dc "$bins/$1.xz" > "$tools/$1"
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$bins/$1.xz" "$tools/$1"
    fi && chmod +x "$tools/$1"
}
if ! (cd "$bins" && sha256sum -c SHA256SUMS) >> "$log" 2>&1 || ! unpack trainer || ! unpack pipeline; then
    say "the carried binaries in $bins/ are missing or damaged (trainer/bench/gpu-pack.sh makes them)"
    exit 1
fi
trainer=$tools/trainer
pipeline=$tools/pipeline
run "trainer --version" 10 "$trainer" --version

wgpu=${GPU_CHECK_WGPU:-1}
# The Vulkan loader wants a runtime folder; without one, lavapipe crashed here (exit 139).
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR=$(mktemp -d)
    export XDG_RUNTIME_DIR
fi
if [ "$wgpu" = 1 ] && ! "$trainer" --device wgpu ehr-columns > /dev/null 2>&1; then
    say "wgpu: $("$trainer" --device wgpu ehr-columns 2>&1 | tail -n 1); its rows are left out"
    wgpu=0
elif [ "$wgpu" = 1 ] && ! { PATH=$PATH:/sbin:/usr/sbin ldconfig -p 2> /dev/null | grep -q 'libvulkan\.so\.1'; }; then
    say "wgpu: no libvulkan.so.1 on this machine; its rows are left out"
    wgpu=0
fi

# 2. Parity on the device.
row ""
row "| selftest | device | precision | result |"
row "|---|---|---|---|"
# The limits of the selftest and bench parts: seconds on a GPU; minutes on lavapipe.
slow=240 slower=300
[ "$quick" = 1 ] && slow=900 slower=900
selftest() { # selftest DEVICE PRECISION
    run "selftest --device $1 --precision $2" "$slow" "$trainer" --device "$1" --precision "$2" selftest
    local rc=$? result
    result=$(grep -E '^(all|FAIL)' "$out/last.txt" | head -n 3 | tr '\n' ' ' | cut -c1-300)
    [ "$rc" != 0 ] && result="exit $rc: ${result:-$(tail -n 1 "$out/last.txt" | cut -c1-200)}"
    row "| golden cases | $1 | $2 | $result |"
}
selftest "$device" f32
selftest "$device" bf16
[ "$wgpu" = 1 ] && selftest wgpu f32

# 3. Speed beside PyTorch.
steps=10 warmup=3 sizes=()
[ "$quick" = 1 ] && steps=1 warmup=0 sizes=(--global-size 64 --focal-size 32)
py=${PYTHON:-python3}
torch_device=$device
[ "$device" = cpu ] || torch_device=cuda
has_torch=0
"$py" -c "import torch, sys; sys.exit(0 if '$torch_device' == 'cpu' or torch.cuda.is_available() else 1)" \
    2> /dev/null && has_torch=1
peak_mib() { # peak_mib PID: the most GPU memory in use while PID runs, above what was in use before
    local pid=$1 base peak=0 used
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2> /dev/null | head -n 1)
    while kill -0 "$pid" 2> /dev/null; do
        used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2> /dev/null | head -n 1)
        [ -n "$used" ] && [ "$used" -gt "$peak" ] && peak=$used
        sleep 0.5
    done
    echo $((peak - ${base:-0}))
}
timed() { # timed LABEL CMD...: runs it, then prints "images/s|peak GPU MiB" from its output
    local label=$1
    shift
    run "$label" "$slower" "$@" >&2 &
    local pid=$! mem="-"
    [ "$gpu" = 1 ] && mem=$(peak_mib "$pid")
    wait "$pid"
    local rc=$? ips why
    ips=$(grep -oE '^[0-9.]+ images/s' "$out/last.txt" | tail -n 1 | cut -d' ' -f1)
    # Why it failed, in the table: the limit, or the last line printed (the trainer's reason).
    why=$(tail -n 1 "$out/last.txt" | sed -E 's/^ *caused by: //' | tr '|' '/' | cut -c1-160)
    [ "$rc" = 124 ] && why="past the $slower s limit"
    echo "${ips:-failed (exit $rc: $why)}|$mem"
}
row ""
row "| step | model | batch | precision | images/s | peak GPU MiB (nvidia-smi) |"
row "|---|---|---|---|---|---|"
specs=("vit-tiny 8" "vit-small 64")
[ "$quick" = 1 ] && specs=("vit-tiny 2" "vit-small 2")
for spec in "${specs[@]}"; do
    set -- $spec
    model=$1 batch=$2
    for precision in f32 bf16; do
        for d in "$device" $([ "$wgpu" = 1 ] && echo wgpu); do
            r=$(timed "trainer bench --device $d --precision $precision $model $batch" "$trainer" --device "$d" \
                --precision "$precision" bench --model "$model" --batch-size "$batch" --steps "$steps" --warmup "$warmup" \
                "${sizes[@]}")
            row "| burn ($d) | $model | $batch | $precision | ${r%%|*} | ${r##*|} |"
        done
        if [ "$has_torch" = 1 ]; then
            amp=off
            [ "$precision" = bf16 ] && amp=bf16
            r=$(timed "PyTorch $model $batch amp $amp on $torch_device" "$py" trainer/bench/torch_msn_step.py \
                --device "$torch_device" --model "$model" --batch-size "$batch" --ehr-width 13 --amp "$amp" \
                --steps "$steps" --warmup "$warmup" "${sizes[@]}")
            row "| PyTorch ($torch_device, amp $amp) | $model | $batch | $precision | ${r%%|*} | ${r##*|} |"
        fi
    done
done
[ "$quick" = 1 ] && row "(quick: views of ${sizes[1]} and ${sizes[3]} pixels, one timed step, no warm-up: not a speed figure)"
[ "$has_torch" = 1 ] || row "(no PyTorch rows: $py has no torch for $torch_device)"

# 4 and 5. Training on a small synthetic dataset.
work=$(mktemp -d)
row ""
if run "synthetic dataset" 300 sh -c "'$pipeline' synth --out '$work/archive' --subjects 60 --images jpg \
    --image-size 128x128 && '$pipeline' build --mimic-root '$work/archive' --out '$work/datasets' --images jpg \
    --image-size 64"; then
    dataset=$(ls -d "$work"/datasets/*/ | head -n 1)
    pretrain() { # pretrain NAME STEPS [GLOBAL ARGS...]
        local name=$1 n=$2
        shift 2
        run "pretrain $name ($n steps)" 300 "$trainer" "$@" pretrain --dataset "$dataset" --out "$work/$name" \
            --model vit-micro --ehr demographics,scan,stay --batch-size 16 --max-steps "$n" --log quiet
    }
    losses() { sed -E 's/.*"step":([0-9]+),"loss":([^,]+),.*/\1 \2/' "$work/$1/metrics.jsonl" 2> /dev/null; }
    tail_mean() { losses "$1" | tail -n "$2" | awk '{ s += $2; n++ } END { if (n) printf "%.4f", s / n; else print "-" }'; }
    n=200 last=50
    [ "$quick" = 1 ] && n=20 last=5
    pretrain f32 "$n" --device "$device" --precision f32
    pretrain bf16 "$n" --device "$device" --precision bf16
    pretrain f16 "$n" --device "$device" --precision f16
    gap() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%+.4f", b - a }'; }
    a=$(tail_mean f32 "$last") b=$(tail_mean bf16 "$last") h=$(tail_mean f16 "$last")
    scale=$(grep -oE '"loss_scale":[0-9.e+]+' "$work/f16/metrics.jsonl" 2> /dev/null | tail -n 1 | cut -d: -f2)
    row "$n pretraining steps (vit-micro, batch 16): mean loss of the last $last, f32 $a, bf16 $b" \
        "(bf16 - f32 $(gap "$a" "$b")), f16 $h (f16 - f32 $(gap "$a" "$h"), last loss scale ${scale:--})"
    if [ "$device" = cuda ]; then
        pretrain plain 10 --device cuda
        pretrain nccl 10 --device cuda --all-reduce nccl
        if [ -s "$work/plain/metrics.jsonl" ] && [ "$(losses plain)" = "$(losses nccl)" ]; then
            row "NCCL with one rank: the same 10 losses as the plain run"
        else
            row "NCCL with one rank: losses differ from the plain run (or a run failed; see gpu-check.log)"
            paste <(losses plain) <(losses nccl) >> "$log"
        fi
    else
        row "NCCL: for CUDA GPUs only; not run on $device"
    fi
else
    row "no synthetic dataset (see gpu-check.log): parts 4 and 5 did not run"
fi
rm -rf "$work" "$tools"
row ""
row "checks took $(($(date +%s) - start)) s"
say "$(cat "$table")"
