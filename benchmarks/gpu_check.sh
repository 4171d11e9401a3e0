#!/usr/bin/env bash
# One GPU check, under 8 minutes on one GPU, printing one table at the end:
#   1. the CUDA tests (bf16 autocast forward/backward);
#   2. benchmarks/train_step.py for the base model at 224 x 560 (bf16 + SDPA + fused AdamW against fp32 and the
#      reference step, same run): ms per step, clips/s, peak GPU memory;
#   3. a 1-process NCCL `torchrun flatprep-train` of 50 steps on sample shards (2 subjects, 2.4 mm grid);
#   4. benchmarks/loader.py: packed clips from the shards to the GPU, prepared there (clips/s, same run as raw h5py).
# CI never needs it. Usage: bash benchmarks/gpu_check.sh [WORK_DIR]   (run from the repository root)
set -uo pipefail
WORK=${1:-$(mktemp -d /tmp/flatprep-gpu-check-XXXX)}
PY=${PYTHON:-python}
mkdir -p "$WORK"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} NIPYPE_NO_ET=1
declare -a ROWS
row() { ROWS+=("| $1 | $2 | $3 |"); }
timed() { local start=$SECONDS; "$@"; local rc=$?; echo $((SECONDS - start)) > "$WORK/.seconds"; return $rc; }

$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
  || { echo "gpu_check: no CUDA device visible to torch"; exit 2; }

# 1. CUDA tests
timed timeout 120 $PY -m pytest tests/test_model.py tests/test_data.py -q -k "cuda or bf16" > "$WORK/tests.txt" 2>&1
row "CUDA tests" "$(tail -1 "$WORK/tests.txt")" "$(cat "$WORK/.seconds") s"

# 2. base model step at 224 x 560, bf16 vs fp32 vs the reference
timed timeout 240 $PY benchmarks/train_step.py --sizes base --tubelets 2 --pixel-size 1.2 --batch 32 --steps 8 \
  --fp32-too > "$WORK/train_step.txt" 2>&1
while IFS= read -r line; do row "train step" "$line" ""; done < <(grep -E '^\| base' "$WORK/train_step.txt")
row "train step" "$(head -1 "$WORK/train_step.txt" | cut -c1-160)" "$(cat "$WORK/.seconds") s"

# 3. sample shards, then 50 steps of torchrun (1 process, NCCL)
timed timeout 200 bash -c "flatprep-sample '$WORK/bids' --subjects 2 --spaces fsaverage5 --duration 120 >/dev/null 2>&1 &&
  flatprep '$WORK/bids' '$WORK/out' participant --pixel-size 2.4 --nprocs 8 >/dev/null 2>&1 &&
  flatprep '$WORK/bids' '$WORK/out' group --split-ratios 0.5 0.5 0 --no-figures >/dev/null 2>&1"
row "sample shards" "exit $? ($(ls "$WORK/out/shards" 2>/dev/null | grep -c h5) shards)" "$(cat "$WORK/.seconds") s"
timed timeout 150 $PY -m torch.distributed.run --nproc-per-node 1 -m flatprep.pipelines.cli.train \
  --data "$WORK/out" --out-dir "$WORK/run" --set steps=50 --set device=cuda --set batch_size=8 \
  --set model_args.tubelet=4 --set eval_every=50 --set save_every=50 --set log_every=10 > "$WORK/train.txt" 2>&1
row "torchrun NCCL, 50 steps" "exit $?; $(grep -E 'step 50/50|val_loss' "$WORK/train.txt" | tail -2 | \
  sed 's/^.*INFO //' | tr '\n' ';' | cut -c1-150)" "$(cat "$WORK/.seconds") s"

# 4. loader -> GPU, packed path
timed timeout 150 $PY benchmarks/loader.py --clips 320 --workers 2 4 --epochs 2 --device cuda > "$WORK/loader.txt" 2>&1
while IFS= read -r line; do row "loader" "$line" ""; done < <(grep -E '^\| (packed|dense)' "$WORK/loader.txt")
row "loader" "$(grep -E 'mean' "$WORK/loader.txt" | cut -c1-120)" "$(cat "$WORK/.seconds") s"

echo
echo "flatprep GPU check ($($PY -c 'import torch; print(torch.cuda.get_device_name())'); logs in $WORK)"
echo "| check | result | time |"
echo "|---|---|---|"
printf '%s\n' "${ROWS[@]}"
