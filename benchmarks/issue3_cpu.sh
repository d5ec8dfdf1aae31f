#!/usr/bin/env bash
# Issue 3 (seed 001) reduced CPU runs: the six seed-001 commands word for word (run.py for
# run_llama.py, data paths from ../shared/data), plus subset flags so each run takes < ~8 min on
# a shared 2-core CPU. Outputs (predictions, logs, history/curves, summary JSON) go to runs/issue3/.
# Usage (from the repository root): bash benchmarks/issue3_cpu.sh [prompt|finetune|lora|cfimdb400|lora_presets ...]
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${LLMLAB_DATA:-$ROOT/../shared/data}
OUT=$ROOT/runs/issue3
mkdir -p "$OUT" && cd "$OUT" || exit 1
PY="$ROOT/.venv/bin/python $ROOT/run.py"
SST="--train $DATA/sst/sst-train.txt --dev $DATA/sst/sst-dev.txt --test $DATA/sst/sst-test.txt --label-names $DATA/sst/sst-label-mapping.json"
CF="--train $DATA/cfimdb/cfimdb-train.txt --dev $DATA/cfimdb/cfimdb-dev.txt --test $DATA/cfimdb/cfimdb-test.txt --label-names $DATA/cfimdb/cfimdb-label-mapping.json"
# Reductions (stated in benchmarks/issue3_results.md; --max_eval_examples cuts dev, --max_test_examples
# test: the numbers recorded before the two flags were split used both).
R_SST_PROMPT="--max_eval_examples 200 --max_test_examples 200"
R_CF_PROMPT="--max_eval_examples 100 --max_test_examples 100 --max_sentence_len 256"
R_SST_TRAIN="--max_train_examples 320 --max_eval_examples 160 --max_test_examples 160"
R_CF_TRAIN="--max_train_examples 100 --max_eval_examples 60 --max_test_examples 60 --max_sentence_len 128"

run() {  # name, command...
    local name=$1; shift
    echo "== $name: $*" | tee "$name.log"
    local start=$(date +%s)
    /usr/bin/time -v "$@" >> "$name.log" 2>&1
    echo "== $name wall $(( $(date +%s) - start )) s" | tee -a "$name.log"
    grep -E "Accuracy|trainable|Maximum resident" "$name.log"
}

# The finetune/lora rows above were recorded with --head_input text (the default then); the
# "cfimdb400" runs compare both head inputs on a larger CFIMDB subset (400 train, 3 epochs).
R_CF_400="--max_train_examples 400 --max_eval_examples 120 --max_test_examples 120 --max_sentence_len 128 --epochs 3"

[ $# -eq 0 ] && set -- prompt finetune lora
for what in "$@"; do case $what in
prompt)
run sst-prompt $PY --option prompt --batch_size 10 $SST --dev_out sst-dev-prompting-output.txt --test_out sst-test-prompting-output.txt $R_SST_PROMPT
run cfimdb-prompt $PY --option prompt --batch_size 10 $CF --dev_out cfimdb-dev-prompting-output.txt --test_out cfimdb-test-prompting-output.txt $R_CF_PROMPT
;;
finetune)
run sst-finetune $PY --option finetune --epochs 5 --lr 2e-5 --batch_size 80 $SST --dev_out sst-dev-finetuning-output.txt --test_out sst-test-finetuning-output.txt $R_SST_TRAIN --epochs 1
run cfimdb-finetune $PY --option finetune --epochs 5 --lr 2e-5 --batch_size 10 $CF --dev_out cfimdb-dev-finetuning-output.txt --test_out cfimdb-test-finetuning-output.txt $R_CF_TRAIN --epochs 1
;;
lora)
run sst-lora $PY --option lora --epochs 5 --lr 2e-5 --batch_size 80 $SST --dev_out sst-dev-lora-output.txt --test_out sst-test-lora-output.txt --lora_rank 4 --lora_alpha 1.0 $R_SST_TRAIN --epochs 1
run cfimdb-lora $PY --option lora --epochs 5 --lr 2e-5 --batch_size 10 $CF --dev_out cfimdb-dev-lora-output.txt --test_out cfimdb-test-lora-output.txt --lora_rank 4 --lora_alpha 1.0 $R_CF_TRAIN --epochs 1
;;
cfimdb400)
for head in text prompt; do
run cfimdb400-finetune-$head $PY --option finetune --epochs 5 --lr 2e-5 --batch_size 10 $CF --dev_out cfimdb400-dev-finetuning-$head.txt --test_out cfimdb400-test-finetuning-$head.txt $R_CF_400 --head_input $head
run cfimdb400-lora-$head $PY --option lora --epochs 5 --lr 2e-5 --batch_size 10 $CF --dev_out cfimdb400-dev-lora-$head.txt --test_out cfimdb400-test-lora-$head.txt --lora_rank 4 --lora_alpha 1.0 $R_CF_400 --head_input $head
done
;;
lora_presets)
# seed 001's CFIMDB LoRA command with seed 000's target settings (--lora_targets light | medium |
# heavy, read by lora.resolve_targets); same reductions as the lora rows above.
for targets in light medium heavy; do
run cfimdb-lora-$targets $PY --option lora --epochs 5 --lr 2e-5 --batch_size 10 $CF --dev_out cfimdb-dev-lora-$targets.txt --test_out cfimdb-test-lora-$targets.txt --lora_rank 4 --lora_alpha 1.0 $R_CF_TRAIN --epochs 1 --lora_targets $targets
done
;;
esac; done
