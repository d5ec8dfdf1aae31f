#!/usr/bin/env bash
# Issue 10 (instruction fine-tuning) reduced CPU runs on the default model (SmolLM2-135M-Instruct).
# Reductions are stated in each command: training/validation subsets (--max_train_examples,
# --max_eval_examples, seeded by --seed 1337), --max_len, one epoch. Outputs under runs/issue10/.
#   [EXTRA="--threads 1"] bash benchmarks/issue10_cpu.sh [emotion|boolq_compare|emotion_compare|sweep|all|boolq_full]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
D=../shared/data
OUT=runs/issue10
what=${1:-all}
common="--epochs 1 --batch_size 8 --lr 2e-4 --lora_rank 16 --lora_alpha 32 --eval_batch_size 32 ${EXTRA:-}"

if [[ $what == emotion || $what == all ]]; then
  # emotion, heavy LoRA on 2,000 training lines, 500 validation lines of val.txt
  $PY run.py --option sft --train $D/emotion/train.txt --val $D/emotion/val.txt \
    --max_train_examples 2000 --max_eval_examples 500 --max_len 128 --eval_every_steps 125 \
    --lora_targets heavy $common --out_dir $OUT/emotion-heavy
fi
if [[ $what == boolq_compare || $what == all ]]; then
  # BoolQ true/false, 90/10 stratified split (seed 0); 600 training / 200 validation questions
  $PY run.py --option sft_compare --train $D/boolq/train.json --val_ratio 0.1 --split_seed 0 \
    --max_train_examples 600 --max_eval_examples 200 --max_len 96 --eval_every_steps 40 \
    $common --out_dir $OUT/boolq-compare
fi
if [[ $what == emotion_compare || $what == all ]]; then
  # emotion, all four settings on 600 training / 200 validation lines
  $PY run.py --option sft_compare --train $D/emotion/train.txt --val $D/emotion/val.txt \
    --max_train_examples 600 --max_eval_examples 200 --max_len 128 --eval_every_steps 40 \
    $common --out_dir $OUT/emotion-compare
fi
if [[ $what == sweep || $what == all ]]; then
  # seed 002's grid on a BoolQ subset: 160 training / 100 validation questions, light targets
  $PY run.py --option sweep --train $D/boolq/train.json --val_ratio 0.1 --split_seed 0 \
    --max_train_examples 160 --max_eval_examples 100 --max_len 96 --lora_targets light \
    --ranks 1,16,128,256 --alphas 0,1,16,128,256 --epochs 1 --batch_size 8 --lr 2e-4 \
    --eval_batch_size 32 ${EXTRA:-} --out_dir $OUT/boolq-sweep
fi
if [[ $what == boolq_full ]]; then
  # BoolQ true/false on the whole 90/10 split (8,484 training / 943 validation questions), heavy LoRA
  $PY run.py --option sft --train $D/boolq/train.json --val_ratio 0.1 --split_seed 0 \
    --max_len 96 --eval_every_steps 350 --lora_targets heavy $common --out_dir $OUT/boolq-full-heavy
fi
