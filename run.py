"""llmlab's one command line: `python run.py --option X [flags]`.

OPTIONS maps each option to its driver, a file named run_<name>.py (the one naming rule: the code
behind an option is a driver, and no concept or plumbing file imports one); every driver has
add_arguments(parser, option), adding only that option's flags (so `python run.py --option pico
--help` lists pico's flags alone), and main(args). Common flags: --seed, --use_gpu, --threads,
--rendezvous_timeout_s (under torchrun: how long the process group may take to form).
Each driver's PATHS table (options.PathFlags) is checked right after parsing (check_paths): no
output names an input, every output can be written. The device is chosen once, by
distributed.pick_device, and handed to the option as args.device.
The resolved arguments are printed at start.

Options, with an example each (data paths as in ../shared/data, see README):
  generate     python run.py --option generate
  chat         python run.py --option chat --prompt "What is the capital of France?"
               python run.py --option chat --conversation chat.json --show_template \
                 --compare_template --temperatures 0,0.7 [--repetition_penalty 1.3] [--out t.json]
  prompt       python run.py --option prompt --batch_size 10 --train data/sst-train.txt \
                 --dev data/sst-dev.txt --test data/sst-test.txt \
                 --label-names data/sst-label-mapping.json \
                 --dev_out sst-dev-prompting-output.txt --test_out sst-test-prompting-output.txt
  finetune     python run.py --option finetune --epochs 5 --lr 2e-5 --batch_size 80 ... (as prompt)
  lora         python run.py --option lora --epochs 5 --lr 2e-5 --batch_size 80 ... \
                 --lora_rank 4 --lora_alpha 1.0
  ssm          python run.py --option ssm --train ../shared/data/dbpedia14/train.json \
                 --val ../shared/data/dbpedia14/val.json --test ../shared/data/dbpedia14/test.json
               python run.py --option ssm --layer mamba (the selective SSM, mamba.py)
  s4           python run.py --option s4 (same flags as ssm)
  ssm_compare  python run.py --option ssm_compare (same flags as ssm)
  sft          python run.py --option sft --train ../shared/data/boolq/train.json --val_ratio 0.1 \
                 --split_seed 0 --lora_targets heavy --lora_rank 16 --lora_alpha 32 --epochs 1 \
                 --out_dir runs/boolq-heavy [--test test.json] \
                 [--eval_data ../shared/data/mc/arc_easy_train.jsonl --eval_limit 200]
               python run.py --option sft --adapter runs/boolq-heavy/adapter --test test.json \
                 --submission submission.csv
               (LoRA variants: --method dora, --lora_scaling rs, --loraplus_ratio 16,
                --lora_init pissa; combinable)
  sft_compare  python run.py --option sft_compare --train ../shared/data/boolq/train.json \
                 --val_ratio 0.1 --split_seed 0 --epochs 1     (light / medium / heavy / full)
  peft_compare python run.py --option peft_compare --train ../shared/data/emotion/train.txt \
                 --val ../shared/data/emotion/val.txt     (lora, rslora, dora, loraplus, pissa,
                                                           ia3, prompt, ptuning, prefix, full)
  sweep        python run.py --option sweep --train ../shared/data/boolq/train.json \
                 --ranks 1,16,128,256 --alphas 0,1,16,128,256
  memory       python run.py --option memory --preset llama32_1b --batch_size 8 --max_len 512 \
                 --dtype bfloat16 [--measure_steps 2] [--json memory.json]
  pico         python run.py --option pico --tinystories_weight 0.0 \
                 --input_files ../shared/data/pico/3seqs.txt --prompt "0 1 2 3 4"
  pico_compare python run.py --option pico_compare (same flags as pico)
  tokenizers   python run.py --option tokenizers [--tokenizer FILE] [--text FILE]
  eval         python run.py --option eval --data ../shared/data/mc/arc_easy_train.jsonl \
                 [--adapter runs/sft/adapter] [--limit 100] [--json eval.json]
  export       python run.py --option export --format gguf --dtype q4_1 --out smollm2.gguf \
                 [--adapter runs/sft/adapter]      (--format hf --out FOLDER: transformers)
"""
import argparse
import contextlib
import random
import sys

import numpy as np
import torch

import distributed
import options
import run_chat
import run_classifier
import run_eval
import run_export
import run_generate
import run_memory
import run_pico
import run_sft
import run_sft_studies
import run_ssm
import run_tokenizers
import weights

# option -> the module that runs it: module.add_arguments(parser, option), module.main(args)
OPTIONS = {
    "generate": run_generate,
    "chat": run_chat,
    "prompt": run_classifier,
    "finetune": run_classifier,
    "lora": run_classifier,
    "ssm": run_ssm,
    "s4": run_ssm,
    "ssm_compare": run_ssm,
    "sft": run_sft,
    "memory": run_memory,
    "sft_compare": run_sft_studies,
    "peft_compare": run_sft_studies,
    "sweep": run_sft_studies,
    "pico": run_pico,
    "pico_compare": run_pico,
    "tokenizers": run_tokenizers,
    "eval": run_eval,
    "export": run_export,
}


def seed_everything(seed):
    """Seed Python, numpy and torch (CPU and CUDA) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported as one line (no usage block) and exit code 2."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser(option):
    parser = Parser(description=__doc__.split("\n")[0],
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--option", choices=sorted(OPTIONS), default="generate",
                        help="what to run (see the list in run.py's docstring)")
    parser.add_argument("--seed", type=options.nonnegative_int, default=1337,
                        help="random seed (Python, numpy, torch)")
    parser.add_argument("--use_gpu", "--use-gpu", action="store_true",
                        help="run on CUDA (error if no GPU is visible)")
    parser.add_argument("--threads", type=options.positive_int, default=None,
                        help="CPU threads for torch (default: torch's choice, one per core)")
    parser.add_argument("--rendezvous_timeout_s", "--rendezvous-timeout-s",
                        type=options.positive_float, default=distributed.RENDEZVOUS_TIMEOUT_S,
                        help="under torchrun: stop with one line when the process group has not "
                        "formed after this many seconds (the backend's own wait is 30 minutes)")
    OPTIONS[option].add_arguments(parser, option)
    return parser


def check_paths(args):
    """The option's path flags (the driver's PATHS, options.check_paths): every output can be
    written, and none is an input file or lies in an input folder (nor is a file the loader reads
    beside a model file); no --pretrained-model-path means the default model."""
    values = dict(vars(args))
    if "pretrained_model_path" in values and values["pretrained_model_path"] is None:
        with contextlib.suppress(FileNotFoundError):          # not installed: said at load
            values["pretrained_model_path"] = str(weights.default_model_path())
    beside = [(f"{flag} (read beside the model)", str(path)) for flag in ("--pretrained-model-path", "--compare_model")
              for model in [values.get(flag.lstrip("-").replace("-", "_"))] if model
              for path in weights.companion_files(model)]       # config.json beside a model file
    options.check_paths(values, OPTIONS[args.option].PATHS, beside)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    first = Parser(add_help=False)
    first.add_argument("--option", choices=sorted(OPTIONS), default="generate")
    known, _ = first.parse_known_args(argv)
    parser = build_parser(known.option)
    args = parser.parse_args(argv)
    try:
        check_paths(args)                       # before any file is read or written
        distributed.init_from_env(args.use_gpu, args.rendezvous_timeout_s)  # torchrun: join
        args.device = distributed.pick_device(args.use_gpu)
    except ValueError as err:
        parser.error(str(err))
    print("args:", " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())), flush=True)
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        OPTIONS[args.option].main(args)
    except (ValueError, FileNotFoundError) as err:
        # User errors: one clear line, no traceback (internal bugs still raise).
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
