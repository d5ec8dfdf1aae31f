"""`run.py --option generate`: a pretrained Llama continues text; the pieces every generating
option shares (model flags, the sampling flags table, load_model, stream).

generate (seed 001): the prompt (by default seed 001's Frankenstein sentence) is continued twice,
at temperature 0.0 (greedy: argmax of the logits each step) and 1.0 (a sample from the softmax,
optionally truncated by top-k / top-p / epsilon / min-p and with a repetition penalty,
sample.py), each written to its file. `--option chat` (run_chat.py) uses the same pieces.
Text streams: it is printed as soon as its bytes form whole characters (tokenizer.StreamDecoder).
The sampling flags (SAMPLING_FLAGS) become sample.SamplingConfig objects, checked before the model
is loaded, so a bad flag fails in one line before any work. `load_model` loads a model for every
option that generates.

--compile: the one-token decode step runs as one compiled graph (fused.compile_decode; the
cache is read whole with start_pos a 0-d tensor, so one graph serves every step; on a GPU the
inductor backend records CUDA graphs). The tokens are the eager model's (tests/test_run.py).

Shapes: prompt ids are lists of T ints; generation is sample.generate_batch at batch 1.
Tests: tests/test_run.py (the files hold exactly the prompt plus Llama.generate's greedy text;
bad model paths and bad sampling flags are one-line errors, raised before any model is loaded).
"""
import dataclasses
import time
import weakref

import torch

import atomic
import fused
import options
import quantize
import sample
import weights
from tokenizer import StreamDecoder

_DECODE_STEPS = weakref.WeakKeyDictionary()     # model -> its compiled decode step (--compile)
FRANKENSTEIN = ("Victor Frankenstein, a young scientist obsessed with uncovering the secrets of "
                "life, succeeds in animating a creature assembled from")


# ----------------------------------------------------------------------------
# flags

# the sampling flags: name (= the sample.SamplingConfig field, which checks its range), type,
# default, help. --temperature is each option's own (generate runs 0.0 and 1.0).
SAMPLING_FLAGS = [
    ("top_k", int, None, "keep the k most likely tokens (k >= 1)"),
    ("top_p", float, None, "nucleus sampling mass p, 0 < p <= 1"),
    ("epsilon", float, None, "epsilon sampling: drop tokens with probability < epsilon, [0, 1)"),
    ("min_p", float, None, "min-p sampling: drop tokens below min_p * max probability, [0, 1]"),
    ("repetition_penalty", float, 1.0, "CTRL repetition penalty theta > 0: every token already in "
     "the prompt or the answer gets its logit divided by theta (multiplied when negative); "
     "1 = off, 1.2 is CTRL's value"),
]


def add_model_arguments(parser):
    """The model flags every generating option shares."""
    weights.add_model_path_argument(parser)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "int4"],
                        default="float32",
                        help="weights and activations dtype (bfloat16 is for GPUs; int4: 4-bit "
                        "weights in groups of 32, the fast CPU decoding path, see quantize.py)")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=75,
                        help="tokens to generate, >= 1 (seed 001 uses 75)")
    options.add_compile_arguments(parser, "the one-token decode step (fused.compile_decode: one "
                                  "graph over a static cache, CUDA graphs on a GPU)")
    for name, kind, default, text in SAMPLING_FLAGS:
        aliases = [f"--{name.replace('_', '-')}"] if "_" in name else []
        parser.add_argument(f"--{name}", *aliases, type=kind, default=default, help=text)


# path flags, checked by run.py before any work (options.check_paths)
PATHS = options.PathFlags(inputs=("--pretrained-model-path",), outputs=(
    "--generated_sentence_low_temp_out", "--generated_sentence_high_temp_out"))


def add_arguments(parser, option):
    add_model_arguments(parser)
    parser.add_argument("--prompt", default=FRANKENSTEIN,
                        help="text to continue (seed 001's prompt by default)")
    parser.add_argument("--generated_sentence_low_temp_out", type=options.output_file,
                        default="generated-sentence-temp-0.txt",
                        help="where the temperature 0.0 continuation is written")
    parser.add_argument("--generated_sentence_high_temp_out", type=options.output_file,
                        default="generated-sentence-temp-1.txt",
                        help="where the temperature 1.0 continuation is written")


def sampling_configs(args, temperatures):
    """One sample.SamplingConfig per temperature from the sampling flags; a bad flag raises its
    one-line ValueError here, before the model is loaded."""
    base = sample.SamplingConfig(**{name: getattr(args, name) for name, *_ in SAMPLING_FLAGS})
    return [dataclasses.replace(base, temperature=t) for t in temperatures]


def check_max_new_tokens(args):
    """--max_new_tokens >= 1, checked before the model loads."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens {args.max_new_tokens}: must be >= 1 (seed 001 uses "
                         "75)")


# ----------------------------------------------------------------------------
# loading and streaming

def load_model(args, path=None):
    """(Llama, Tokenizer) from path (default --pretrained-model-path) on args.device in --dtype.
    int4: quantized from the fp32 weights (so a Q4_1 file's codes come back exactly), the rest of
    the model then runs in bf16, the kernel's own activation type (no fp32 <-> bf16 round trip
    around every matmul). Then the fast path: q/k/v and gate/up as one matmul (fused.py)."""
    path = args.pretrained_model_path if path is None else path
    start = time.perf_counter()
    dtype = torch.float32 if args.dtype == "int4" else getattr(torch, args.dtype)
    model, tokenizer = weights.load_pretrained(path, device=args.device, dtype=dtype,
                                               require_tokenizer=True)
    if args.dtype == "int4":
        quantize.quantize_model_int4(model)
        model.to(torch.bfloat16)
    fused.fuse(model)
    print(f"loaded {path or weights.default_model_path()} in {time.perf_counter() - start:.1f} s",
          flush=True)
    return model, tokenizer


def decode_step(model, args):
    """None (the eager model decodes), or with --compile the model's compiled decode step,
    made once per model: every later call reuses its graph (and on a GPU its CUDA graphs)."""
    if not getattr(args, "compile", False):
        return None
    if model not in _DECODE_STEPS:
        _DECODE_STEPS[model] = fused.compile_decode(model, backend=args.compile_backend)
    return _DECODE_STEPS[model]


def stream(model, tokenizer, prompt_ids, sampling, args):
    """Generate from prompt_ids with a SamplingConfig (randomness seeded by --seed, so a run
    repeats), printing text as it arrives; returns (the generated text, its token ids)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    decoder, pieces = StreamDecoder(tokenizer), []

    def show(piece):
        pieces.append(piece)
        print(piece, end="", flush=True)

    ids = model.generate(prompt_ids, args.max_new_tokens, sampling, stop_tokens=tokenizer.stop_ids,
                         generator=generator, on_token=lambda t: show(decoder.push(t)),
                         decode_fn=decode_step(model, args))
    show(decoder.flush())
    print(flush=True)
    return "".join(pieces), ids  # the pieces keep SentencePiece's leading space; decode drops it


# ----------------------------------------------------------------------------
# the option

def run_generate(args):
    """Seed 001's text continuation: temperature 0.0 and 1.0, each written to its file."""
    configs = sampling_configs(args, [0.0, 1.0])
    model, tokenizer = load_model(args)
    prompt_ids = tokenizer.encode(args.prompt, bos=tokenizer.add_bos)  # SmolLM2 has no BOS
    for sampling, path in zip(configs, [args.generated_sentence_low_temp_out,
                                        args.generated_sentence_high_temp_out]):
        print(f"Temperature is {sampling.temperature}")
        print(args.prompt, end="", flush=True)
        text, _ = stream(model, tokenizer, prompt_ids, sampling, args)
        atomic.write_text_atomic(path, args.prompt + text)
        print("---------------")
        print(f"Wrote generated sentence to {path}.")


def main(args):
    """Run --option generate; flags are checked before the model is loaded."""
    check_max_new_tokens(args)
    run_generate(args)
