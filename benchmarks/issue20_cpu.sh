#!/usr/bin/env bash
# Issues 19 and 20 CPU runs on the default model (SmolLM2-135M-Instruct), recorded in BENCHMARKS.md.
#   [EXTRA="--threads 1"] bash benchmarks/issue20_cpu.sh [emotion_full|boolq_full|eval_base_vs_tuned|cost|
#                                                        cfimdb_finetune|cfimdb_lora|sst_finetune|sst_lora]
# emotion_full: the whole 16,000-line emotion train set, one epoch, heavy LoRA, packed (the
#   default; max_len 256 so that two or three examples share a row), scored on all 2,000 lines of
#   val.txt at the end (the zero-shot score of the same prompts: add --zero_shot).
# boolq_full: BoolQ questions only (the file has no passages), the 90/10 split stratified by answer.
# eval_base_vs_tuned: --option eval of the base model and the emotion_full adapter on the shared MC
#   files (first 500 questions of each).
# cost: a short emotion run with --eval_data: the "what fine-tuning cost" table.
# cfimdb_finetune / cfimdb_lora / sst_finetune / sst_lora: seed 001's command lines unreduced
#   (every example at full length, 5 epochs, lr 2e-5, batch 10 for CFIMDB and 80 for SST; LoRA
#   r 4 alpha 1), packed (the default), outputs in OUT/<data>-<option>/; checkpointed every 20
#   steps and started with --resume_or_start, so the same command continues a killed run (hours
#   here: run it again until it prints its accuracies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
D=../shared/data
OUT=runs/issue20
what=${1:-emotion_full}
lora="--lora_targets heavy --lora_rank 16 --lora_alpha 32 --lr 2e-4 --epochs 1 --batch_size 8"
mc="$D/mc/arc_easy_train.jsonl $D/mc/arc_challenge_train.jsonl $D/mc/openbookqa_train.jsonl"

case $what in
  emotion_full)
    $PY run.py --option sft --train $D/emotion/train.txt --val $D/emotion/val.txt $lora \
      --max_len 256 --no-zero_shot --checkpoint_every_steps 250 --no_progress ${EXTRA:-} \
      --out_dir $OUT/emotion-full ;;
  boolq_full)
    $PY run.py --option sft --train $D/boolq/train.jsonl --val_ratio 0.1 --split_seed 0 $lora \
      --max_len 256 --eval_every_steps 500 --checkpoint_every_steps 250 --no_progress ${EXTRA:-} \
      --out_dir $OUT/boolq-full ;;
  eval_base_vs_tuned)
    $PY run.py --option eval --data $mc --limit 500 --adapter $OUT/emotion-full/adapter \
      --json $OUT/eval-base-vs-emotion.json --out_dir $OUT/eval ${EXTRA:-} ;;
  cost)
    $PY run.py --option sft --train $D/emotion/train.txt --val $D/emotion/val.txt $lora \
      --max_train_examples 800 --max_eval_examples 200 --max_len 256 --no_progress \
      --eval_data $mc --eval_limit 200 ${EXTRA:-} --out_dir $OUT/emotion-cost ;;
  cfimdb_finetune|cfimdb_lora|sst_finetune|sst_lora)
    set=${what%_*}; option=${what#*_}; kind=$([ $option = lora ] && echo lora || echo finetuning)
    batch=$([ $set = sst ] && echo 80 || echo 10)
    extra=$([ $option = lora ] && echo "--lora_rank 4 --lora_alpha 1.0" || true)
    mkdir -p $OUT/$set-$option
    $PY run.py --option $option --epochs 5 --lr 2e-5 --batch_size $batch \
      --train $D/$set/$set-train.txt --dev $D/$set/$set-dev.txt \
      --test $D/$set/$set-test.txt --label-names $D/$set/$set-label-mapping.json \
      --dev_out $OUT/$set-$option/$set-dev-$kind-output.txt \
      --test_out $OUT/$set-$option/$set-test-$kind-output.txt $extra \
      --checkpoint_every_steps 20 --resume_or_start --no_progress ${EXTRA:-} \
      --out_dir $OUT/$set-$option ;;
  *) echo "unknown: $what" >&2; exit 2 ;;
esac
