#!/usr/bin/env bash
# Every GPU-only check in one run, for a CUDA machine that has Python 3.12 with CUDA torch but not
# cgnet's other dependencies (fetch them first with `make device-wheels`; carry .whl/ along).
# Steps, most valuable first, each with its own time limit so one failure keeps the others:
#   inference  batch-1 1024x2048 variants: eager, folded, CUDA graphs, fused Triton, auto-tuned
#              fp32/fp16/bf16, each with a device-time profile of one call
#   training   training-step throughput, batch 16, 680x680 (fp32 eager vs the project's bf16 step,
#              with and without the fused f_loc + f_sur op), with a device-time profile of each
#   train      Lightning runs: 200-step loss curves (fp32 eager vs bf16/fp16-mixed/fused/compiled), host
#              syncs inside steps, trainer.deterministic=true, one-rank NCCL DDP warnings
#   batched    the half-precision inference variants at batch 8
#   kernels    the fused Triton kernels (inference, and the training op's forward and backward)
#              against eager, compiled on the GPU
# Their limits add up to 440 s. Two more steps run only when named (`STEPS="compiled data"`), as
# they take minutes:
#   compiled   the `training` step under torch.compile (its first step compiles for a minute or more)
#   data       PNG vs prepared (litdata) loaders with GPU augmentation, 2048x1024 scenes, 680 crops
# `STEPS="inference train" scripts/gpu_checks.sh` runs a subset. Writes at most 8 files to $OUT
# (default ./gpu_results) and prints one summary table at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_results}
mkdir -p "$OUT"
STEPS=${STEPS:-inference training train batched kernels}
export PYTHONUNBUFFERED=1 CGNET_CACHE_DIR=/tmp/cgnet-cache WANDB_MODE=disabled NO_ALBUMENTATIONS_UPDATE=1
LOG="$OUT/gpu_checks.log"
START=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: run when selected, with a limit; log output and exit status
    local name=$1 limit=$2
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "=== $name (+$(($(date +%s) - START))s, limit ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    local status=$?
    echo "=== $name: exit $status after +$(($(date +%s) - START))s" | tee -a "$LOG"
}

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, triton, pytorch_lightning as pl; print('torch', torch.__version__, 'triton', triton.__version__, 'lightning', pl.__version__, torch.cuda.get_device_name())"
    nproc
} 2>&1 | tee -a "$LOG"

WEIGHTS=(num_classes=19)
if [ -f .whl/cgnet_official_camvid_m3n21.pth ]; then
    WEIGHTS=(ckpt_path="$PWD/.whl/cgnet_official_camvid_m3n21.pth" num_classes=11)
fi
BENCH=(python3 -m cgnet.benchmark device=cuda isolate=false "${WEIGHTS[@]}" 'sizes=[[1024,2048]]')

step inference 115 "${BENCH[@]}" batch=1 repeats=30 warmup=5 train_throughput.enabled=false \
    'variants=[eager,fast,cuda_graphs,fused,fused_convs,auto,auto_fp16,auto_bf16]' profile=true \
    output="$OUT/inference.json"
# The paper's Cityscapes batch and crop: plain fp32 eager against the project's bf16-mixed step,
# without and with the fused f_loc + f_sur op (the `compiled` step: all of it under torch.compile).
TRAIN_STEP=(python3 -m cgnet.benchmark device=cuda isolate=false num_classes=19 'sizes=[[64,128]]'
    'variants=[eager]' repeats=1 warmup=0 train_throughput.batch=16 'train_throughput.crop=[680,680]'
    train_throughput.bf16=true train_throughput.steps=15 train_throughput.fused_context=true)
step training 75 "${TRAIN_STEP[@]}" train_throughput.warmup=5 profile=true \
    output="$OUT/training.json"
step train 110 python3 scripts/gpu_train_checks.py "$OUT/train_checks.json"
step data 40 python3 -m cgnet.data.benchmark --prepared --augment-on device --crop 680 680 \
    --batch-size 16 --images 16 --samples 64 --workers 1 15 --gpu-rate 1500 \
    --json "$OUT/data.json"
step batched 60 "${BENCH[@]}" batch=8 repeats=10 warmup=3 train_throughput.enabled=false \
    'variants=[eager,auto_fp16,auto_bf16]' output="$OUT/batched.json"
# 128 tests, each compiling its kernels' specialisations; up to 10 failures are listed, not just one
step kernels 80 python3 -m pytest tests/test_kernels.py tests/models/test_context_kernels.py -q \
    -p no:cacheprovider -n 0 --maxfail=10

step compiled 150 "${TRAIN_STEP[@]}" train_throughput.warmup=3 train_throughput.compile=true \
    output="$OUT/training_compiled.json"

python3 scripts/gpu_summary.py "$OUT" | tee "$OUT/summary.md"
