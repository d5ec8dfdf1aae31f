#!/usr/bin/env bash
# Issue 13 (multi-process training) on the default model (SmolLM2-135M-Instruct), 2-core CPU:
# full fine-tuning on emotion as one process (batch 8), DDP and FSDP with 2 gloo processes
# (batch 4 each: the same global batch), all on the split (unfused) projections, so the three
# runs do the same arithmetic. Reductions: 64 training / 32 validation lines (--seed 1337),
# --max_len 128, one epoch, no zero-shot pass. Each run's stdout and history go to
# runs/issue13/<name>/; `summary` prints the step losses side by side.
#   bash benchmarks/issue13_cpu.sh [run|summary]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=runs/issue13
common="--option sft --method full --lr 2e-5 --train ../shared/data/emotion/train.txt
  --val ../shared/data/emotion/val.txt --epochs 1 --max_train_examples 64 --max_eval_examples 32
  --max_len 128 --eval_batch_size 16 --no-zero_shot --no-fused --seed 1337"
torchrun="$PY -m torch.distributed.run --nproc_per_node 2 --standalone"

if [[ ${1:-run} == run ]]; then
  for name in one ddp fsdp; do
    mkdir -p $OUT/$name
    case $name in
      one)  launch="$PY";        extra="--batch_size 8 --threads 2" ;;
      ddp)  launch="$torchrun";  extra="--batch_size 4 --threads 1" ;;
      fsdp) launch="$torchrun";  extra="--batch_size 4 --threads 1 --fsdp" ;;
    esac
    start=$(date +%s.%N)
    $launch run.py $common $extra --out_dir $OUT/$name 2>$OUT/$name/stderr.txt \
      | grep -v '^args:' | tee $OUT/$name/stdout.txt
    echo "$name wall $(echo "$(date +%s.%N) - $start" | bc) s" | tee $OUT/$name/wall.txt
  done
fi
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {n: json.loads((out / n / "sft-history.json").read_text()) for n in ("one", "ddp", "fsdp")}
for n, h in runs.items():
    print(n, "losses", " ".join(f"{s['loss']:.6f}" for s in h["steps"]),
          "| peak MiB", round(h["epochs"][-1]["peak_memory_mb"]),
          "| train s", round(h["epochs"][-1]["train_time_s"], 1),
          "|", (out / n / "wall.txt").read_text().strip())
PY
