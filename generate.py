"""`run.py --option generate` and `--option chat`: a pretrained Llama continues text.

generate (seed 001): the prompt (by default seed 001's Frankenstein sentence) is continued twice,
at temperature 0.0 (greedy: argmax of the logits each step) and 1.0 (a sample from the softmax,
optionally truncated by top-k / top-p / epsilon / min-p, sample.py), each written to its file.
chat: the user's message is wrapped in the model's own chat template (chat_templates.py: ChatML
for SmolLM2, Llama 3 headers, Llama 2 [INST]) and the assistant's reply is generated until an
end-of-turn token.
Both stream: text is printed as soon as its bytes form whole characters (tokenizer.StreamDecoder).
The sampling flags become sample.SamplingConfig objects, checked before the model is loaded, so a
bad flag fails in one line before any work. The model is loaded once by `load_model`, which every
option that generates shares.

Shapes: prompt ids are lists of T ints; generation is sample.generate_batch at batch 1.
Tests: tests/test_run.py (the files hold exactly the prompt plus Llama.generate's greedy text;
the chat answer names Paris; bad model paths and bad sampling flags are one-line errors, raised
before any model is loaded).
"""
import dataclasses
import time

import torch

import atomic
import sample
import weights
from tokenizer import StreamDecoder

FRANKENSTEIN = ("Victor Frankenstein, a young scientist obsessed with uncovering the secrets of "
                "life, succeeds in animating a creature assembled from")


# ----------------------------------------------------------------------------
# flags

# the sampling flags: name, type, help (sample.SamplingConfig checks their ranges)
SAMPLING_FLAGS = [
    ("top_k", int, "keep the k most likely tokens (k >= 1)"),
    ("top_p", float, "nucleus sampling mass p, 0 < p <= 1"),
    ("epsilon", float, "epsilon sampling: drop tokens with probability below epsilon, [0, 1)"),
    ("min_p", float, "min-p sampling: drop tokens below min_p * max probability, [0, 1]"),
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
    for name, kind, text in SAMPLING_FLAGS:
        aliases = [f"--{name.replace('_', '-')}"] if "_" in name else []
        parser.add_argument(f"--{name}", *aliases, type=kind, default=None, help=text)


def add_arguments(parser, option):
    add_model_arguments(parser)
    if option == "chat":
        parser.add_argument("--prompt", default="What is the capital of France?",
                            help="the user's message")
        parser.add_argument("--system", default=None, help="optional system message")
        parser.add_argument("--temperature", type=float, default=0.0,
                            help="0 means greedy; a finite number >= 0")
        return
    parser.add_argument("--prompt", default=FRANKENSTEIN,
                        help="text to continue (seed 001's prompt by default)")
    parser.add_argument("--generated_sentence_low_temp_out",
                        default="generated-sentence-temp-0.txt",
                        help="where the temperature 0.0 continuation is written")
    parser.add_argument("--generated_sentence_high_temp_out",
                        default="generated-sentence-temp-1.txt",
                        help="where the temperature 1.0 continuation is written")


def sampling_configs(args, temperatures):
    """One sample.SamplingConfig per temperature from the sampling flags; a bad flag raises its
    one-line ValueError here, before the model is loaded."""
    base = sample.SamplingConfig(top_k=args.top_k, top_p=args.top_p, epsilon=args.epsilon,
                                 min_p=args.min_p)
    return [dataclasses.replace(base, temperature=t) for t in temperatures]


# ----------------------------------------------------------------------------
# loading and streaming

def load_model(args):
    """(Llama, Tokenizer) from --pretrained-model-path on args.device in --dtype; int4 quantizes."""
    import quantize
    start = time.perf_counter()
    dtype = torch.float32 if args.dtype == "int4" else getattr(torch, args.dtype)
    model, tokenizer = weights.load_pretrained(args.pretrained_model_path, device=args.device,
                                               dtype=dtype, require_tokenizer=True)
    if args.dtype == "int4":
        quantize.quantize_model_int4(model)
    print(f"loaded {args.pretrained_model_path or weights.default_model_path()} "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    return model, tokenizer


def stream(model, tokenizer, prompt_ids, sampling, args):
    """Generate from prompt_ids with a SamplingConfig, printing text as it arrives; returns the
    generated text."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    decoder, pieces = StreamDecoder(tokenizer), []

    def show(piece):
        pieces.append(piece)
        print(piece, end="", flush=True)

    model.generate(prompt_ids, args.max_new_tokens, sampling, stop_tokens=tokenizer.stop_ids,
                   generator=generator, on_token=lambda t: show(decoder.push(t)))
    show(decoder.flush())
    print(flush=True)
    return "".join(pieces)  # streamed pieces keep SentencePiece's leading spaces; decode drops them


# ----------------------------------------------------------------------------
# the two options

def run_generate(args):
    """Seed 001's text continuation: temperature 0.0 and 1.0, each written to its file."""
    configs = sampling_configs(args, [0.0, 1.0])
    model, tokenizer = load_model(args)
    prompt_ids = tokenizer.encode(args.prompt, bos=tokenizer.add_bos)  # SmolLM2 has no BOS
    for sampling, path in zip(configs, [args.generated_sentence_low_temp_out,
                                        args.generated_sentence_high_temp_out]):
        print(f"Temperature is {sampling.temperature}")
        print(args.prompt, end="", flush=True)
        text = stream(model, tokenizer, prompt_ids, sampling, args)
        atomic.write_text_atomic(path, args.prompt + text)
        print("---------------")
        print(f"Wrote generated sentence to {path}.")


def run_chat(args):
    """One chat turn with the model's chat template (ChatML for SmolLM2, headers for Llama 3)."""
    [sampling] = sampling_configs(args, [args.temperature])
    model, tokenizer = load_model(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append({"role": "user", "content": args.prompt})
    prompt_ids = tokenizer.encode_chat(messages)
    print(f"user: {args.prompt}\nassistant: ", end="", flush=True)
    stream(model, tokenizer, prompt_ids, sampling, args)


def main(args):
    """Run --option chat or generate; flags are checked before the model is loaded."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens {args.max_new_tokens}: must be >= 1 (seed 001 uses "
                         "75)")
    (run_chat if args.option == "chat" else run_generate)(args)
