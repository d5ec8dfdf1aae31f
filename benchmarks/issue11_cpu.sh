#!/usr/bin/env bash
# Issue 11 (beyond LoRA) reduced CPU runs on the default model (SmolLM2-135M-Instruct): every PEFT
# method on one task and budget. Reductions: --max_train_examples / --max_eval_examples subsets
# (seeded by --seed 1337), --max_len, one epoch. Outputs under runs/issue11/.
#   [EXTRA="--threads 1"] bash benchmarks/issue11_cpu.sh [emotion|boolq|tokenizers|all]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
D=../shared/data
OUT=runs/issue11
what=${1:-all}
common="--epochs 1 --batch_size 8 --lr 2e-4 --lora_rank 16 --lora_alpha 32 --eval_batch_size 32 ${EXTRA:-}"

if [[ $what == emotion || $what == all ]]; then
  $PY run.py --option peft_compare --train $D/emotion/train.txt --val $D/emotion/val.txt \
    --max_train_examples 600 --max_eval_examples 200 --max_len 128 --eval_every_steps 40 \
    $common --out_dir $OUT/emotion
fi
if [[ $what == boolq || $what == all ]]; then
  # the true/false task: the best non-LoRA method against the best LoRA run (seed 000's bonus)
  $PY run.py --option peft_compare --train $D/boolq/train.json --val_ratio 0.1 --split_seed 0 \
    --max_train_examples 600 --max_eval_examples 200 --max_len 96 --eval_every_steps 40 \
    $common --out_dir $OUT/boolq
fi
if [[ $what == tokenizers || $what == all ]]; then
  $PY run.py --option tokenizers --out_dir $OUT/tokenizers
fi
