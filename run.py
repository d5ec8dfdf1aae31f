"""llmlab's one command line: `python run.py --option X [flags]`.

Each option is a (module, add-arguments, main) triple in OPTIONS; its flags are only those of
that option, so `python run.py --option pico --help` lists pico's flags alone. Common flags:
--seed, --use_gpu, --threads. The resolved arguments are printed at start.

Options, with an example each (data paths as in ../shared/data, see README):
  generate     python run.py --option generate
  chat         python run.py --option chat --prompt "What is the capital of France?"
  prompt       python run.py --option prompt --batch_size 10 --train data/sst-train.txt \
                 --dev data/sst-dev.txt --test data/sst-test.txt \
                 --label-names data/sst-label-mapping.json \
                 --dev_out sst-dev-prompting-output.txt --test_out sst-test-prompting-output.txt
  finetune     python run.py --option finetune --epochs 5 --lr 2e-5 --batch_size 80 ... (as prompt)
  lora         python run.py --option lora --epochs 5 --lr 2e-5 --batch_size 80 ... \
                 --lora_rank 4 --lora_alpha 1.0
  ssm          python run.py --option ssm --train ../shared/data/dbpedia14/train.json \
                 --val ../shared/data/dbpedia14/val.json --test ../shared/data/dbpedia14/test.json
  s4           python run.py --option s4 (same flags as ssm)
  ssm_compare  python run.py --option ssm_compare (same flags as ssm)
  pico         python run.py --option pico --tinystories_weight 0.0 \
                 --input_files ../shared/data/pico/3seqs.txt --prompt "0 1 2 3 4"
  pico_compare python run.py --option pico_compare (same flags as pico)
"""
import argparse
import importlib
import random
import sys

# option -> (module, function adding the option's flags, function running it)
OPTIONS = {
    "generate": ("run", "add_generate_arguments", "run_generate"),
    "chat": ("run", "add_chat_arguments", "run_chat"),
    "prompt": ("classifier", "add_arguments", "main"),
    "finetune": ("classifier", "add_arguments", "main"),
    "lora": ("classifier", "add_arguments", "main"),
    "ssm": ("s4", "add_arguments", "main"),
    "s4": ("s4", "add_arguments", "main"),
    "ssm_compare": ("s4", "add_arguments", "main"),
    "pico": ("pico_train", "add_arguments", "main"),
    "pico_compare": ("pico_train", "add_arguments", "main"),
}


def seed_everything(seed):
    """Seed Python, numpy and torch (CPU and CUDA) so runs repeat."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def build_parser(option):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--option", choices=sorted(OPTIONS), default="generate",
                        help="what to run (see the list in run.py's docstring)")
    parser.add_argument("--seed", type=int, default=1337, help="random seed (Python, numpy, torch)")
    parser.add_argument("--use_gpu", "--use-gpu", action="store_true",
                        help="run on CUDA (error if no GPU is visible)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice, one per core)")
    module_name, add_name, _ = OPTIONS[option]
    getattr(importlib.import_module(module_name), add_name)(parser, option)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--option", choices=sorted(OPTIONS), default="generate")
    known, _ = first.parse_known_args(argv)
    parser = build_parser(known.option)
    args = parser.parse_args(argv)
    if args.use_gpu:
        import torch
        if not torch.cuda.is_available():
            parser.error("--use_gpu was given but no CUDA GPU is visible; drop --use_gpu to run on CPU")
    print("args:", " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())), flush=True)
    seed_everything(args.seed)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    module_name, _, main_name = OPTIONS[args.option]
    try:
        getattr(importlib.import_module(module_name), main_name)(args)
    except (ValueError, FileNotFoundError) as err:
        # User errors: one clear line, no traceback (internal bugs still raise).
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------
# --option generate / chat: the default model (or --pretrained-model-path) continues a prompt

FRANKENSTEIN = ("Victor Frankenstein, a young scientist obsessed with uncovering the secrets of life, "
                "succeeds in animating a creature assembled from")


def _add_model_arguments(parser):
    parser.add_argument("--pretrained-model-path", "--pretrained_model_path", dest="pretrained_model_path",
                        default=None, help="a .gguf file, a llama2.c .pt, or a Hugging Face / llmlab folder "
                        "(default: SmolLM2-135M-Instruct installed by setup.sh)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "int4"], default="float32",
                        help="weights and activations dtype (bfloat16 is for GPUs; int4: 4-bit "
                        "weights in groups of 32, the fast CPU decoding path, see quantize.py)")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=75,
                        help="tokens to generate (seed 001 uses 75)")
    parser.add_argument("--top_k", "--top-k", type=int, default=None, help="keep the k most likely tokens")
    parser.add_argument("--top_p", "--top-p", type=float, default=None, help="nucleus sampling mass p")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="epsilon sampling: drop tokens with probability below epsilon")
    parser.add_argument("--min_p", "--min-p", type=float, default=None,
                        help="min-p sampling: drop tokens below min_p * max probability")


def add_generate_arguments(parser, option):
    _add_model_arguments(parser)
    parser.add_argument("--prompt", default=FRANKENSTEIN, help="text to continue (seed 001's prompt by default)")
    parser.add_argument("--generated_sentence_low_temp_out", default="generated-sentence-temp-0.txt",
                        help="where the temperature 0.0 continuation is written")
    parser.add_argument("--generated_sentence_high_temp_out", default="generated-sentence-temp-1.txt",
                        help="where the temperature 1.0 continuation is written")


def add_chat_arguments(parser, option):
    _add_model_arguments(parser)
    parser.add_argument("--prompt", default="What is the capital of France?", help="the user's message")
    parser.add_argument("--system", default=None, help="optional system message")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")


def _load(args):
    import time
    import torch
    import weights
    device = "cuda" if args.use_gpu else "cpu"
    start = time.perf_counter()
    dtype = torch.float32 if args.dtype == "int4" else getattr(torch, args.dtype)
    model, tokenizer = weights.load_pretrained(args.pretrained_model_path, device=device, dtype=dtype)
    if args.dtype == "int4":
        import quantize
        quantize.quantize_model_int4(model)
    print(f"loaded {args.pretrained_model_path or weights.default_model_path()} "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    return model, tokenizer


def _stream(model, tokenizer, prompt_ids, temperature, args):
    """Generate from prompt_ids, printing text as it arrives; returns the generated text."""
    import torch
    from tokenizer import StreamDecoder
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    stream, pieces = StreamDecoder(tokenizer), []

    def show(piece):
        pieces.append(piece)
        print(piece, end="", flush=True)

    model.generate(prompt_ids, args.max_new_tokens, temperature=temperature, top_k=args.top_k,
                   top_p=args.top_p, epsilon=args.epsilon, min_p=args.min_p,
                   stop_tokens=tokenizer.stop_ids, generator=generator,
                   on_token=lambda t: show(stream.push(t)))
    show(stream.flush())
    print(flush=True)
    return "".join(pieces)  # streamed pieces keep SentencePiece's leading spaces, decode() drops them


def run_generate(args):
    """Seed 001's text continuation: temperature 0.0 and 1.0, each written to its file."""
    import train
    model, tokenizer = _load(args)
    prompt_ids = tokenizer.encode(args.prompt, bos=tokenizer.add_bos)  # SmolLM2 has no BOS
    for temperature, path in [(0.0, args.generated_sentence_low_temp_out),
                              (1.0, args.generated_sentence_high_temp_out)]:
        print(f"Temperature is {temperature}")
        print(args.prompt, end="", flush=True)
        text = _stream(model, tokenizer, prompt_ids, temperature, args)
        train.write_text_atomic(path, args.prompt + text)
        print("---------------")
        print(f"Wrote generated sentence to {path}.")


def run_chat(args):
    """One chat turn with the model's chat template (ChatML for SmolLM2, headers for Llama 3)."""
    model, tokenizer = _load(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append({"role": "user", "content": args.prompt})
    prompt_ids = tokenizer.encode_chat(messages)
    print(f"user: {args.prompt}\nassistant: ", end="", flush=True)
    _stream(model, tokenizer, prompt_ids, args.temperature, args)


if __name__ == "__main__":
    main()
