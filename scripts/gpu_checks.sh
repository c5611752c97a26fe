#!/usr/bin/env bash
# Every GPU-only check in one run, for a CUDA machine that has Python 3.12 with CUDA torch but not
# cgnet's other dependencies (fetch them first with scripts/device_wheels.sh; carry .whl/ along).
# Results go to $OUT (default ./gpu_results): environment, inference and training benchmarks (JSON
# + Markdown for docs/benchmarks.md), and bf16 / fp16 mixed-precision training runs on the GPU.
# Each step has its own time limit, so one failing step still leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CGNET_CACHE_DIR=/tmp/cgnet-cache WANDB_MODE=disabled
LOG="$OUT/gpu_checks.log"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log its output and exit status
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tail -n 60 | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

{
    nvidia-smi -L
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$LOG"

WEIGHTS=(num_classes=19)
if [ -f .whl/cgnet_official_camvid_m3n21.pth ]; then
    WEIGHTS=(ckpt_path="$PWD/.whl/cgnet_official_camvid_m3n21.pth" num_classes=11)
fi

step inference 180 python3 -m cgnet.benchmark device=cuda "${WEIGHTS[@]}" \
    'variants=[eager,fast,compile,cuda_graphs,compile_cuda_graphs,bf16]' repeats=50 warmup=10 \
    train_throughput.enabled=false output="$OUT/gpu_inference.json" markdown="$OUT/gpu_inference.md"

# The paper's Cityscapes batch and crop: plain fp32 eager against the project's bf16-mixed step.
step training 120 python3 -m cgnet.benchmark device=cuda num_classes=19 'sizes=[[1024,2048]]' \
    'variants=[eager]' repeats=1 warmup=0 train_throughput.batch=16 'train_throughput.crop=[680,680]' \
    train_throughput.bf16=true train_throughput.steps=20 train_throughput.warmup=5 \
    output="$OUT/gpu_training.json" markdown="$OUT/gpu_training.md"

# Lightning on the GPU with mixed precision, end to end on the synthetic scenes.
for precision in bf16-mixed 16-mixed; do
    step "train-$precision" 75 python3 -m cgnet.train trainer=gpu trainer.precision="$precision" \
        trainer.max_epochs=2 trainer.check_val_every_n_epoch=1 data.num_train=64 data.num_val=10 \
        data.num_workers=4 paths.log_dir=/tmp/cgnet-logs hydra.run.dir="/tmp/cgnet-logs/$precision"
    cp "/tmp/cgnet-logs/$precision/summary.json" "$OUT/train_$precision.json" 2>/dev/null
done
# trainer.deterministic=true on CUDA: torch refuses ops without a deterministic CUDA kernel (bilinear
# upsampling's backward may be one); the log says whether the project's training step passes.
step deterministic 60 python3 -m cgnet.train trainer=gpu trainer.deterministic=true \
    trainer.max_epochs=1 data.num_train=32 data.num_val=10 data.num_workers=2 preview=false \
    paths.log_dir=/tmp/cgnet-logs hydra.run.dir=/tmp/cgnet-logs/deterministic
ls -l "$OUT"
