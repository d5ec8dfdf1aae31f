"""Benchmark: the exported GGUF run by llama.cpp (llama-cpp-python) against `run.py --option
generate`, token for token, and their speeds side by side.

Steps: `run.py --option export --format gguf --dtype D` writes the model (default: the installed
SmolLM2-135M-Instruct) to OUT_DIR/export.gguf; then
  ids     llama.cpp greedy-decodes the prompt (our token ids, so tokenization cannot differ) for
          --new_tokens tokens; ours are `--option generate`'s temperature-0 ids (run_generate's
          load_model, sampling and stop tokens, on the same exported file). The first
          len(ours) ids must be equal (ours stop early only at an end-of-text id, which llama.cpp
          must then produce too). llama.cpp also tokenizes the prompt itself: equal ids expected.
  chat    llama.cpp's create_chat_completion (the chat template the export carries) and our
          encode_chat + greedy generate must give the same answer and both stop at the template's
          end of turn (finish_reason "stop", not "length").
  speed   load s, first token s, decode tok/s for both, batch 1, on this machine.
--dtype f32 (default) gives llama.cpp our fp32 weights: its matmuls differ from ours only in
summation order, so greedy ids agree unless two logits tie within ~1e-5. With q8_0 / q4_x
llama.cpp also quantizes the activations (Q8 dot products), so ids may part after a few tokens.

    .venv/bin/python benchmarks/bench_export.py [--model M] [--adapter DIR] [--chat TEXT]
        [--dtype f32] [--new_tokens 32] [--threads N] [--out_dir /tmp/llmlab_bench_export]
        [--json FILE]

Without llama_cpp importable it prints one line (what to install) and exits 0: llama-cpp-python
builds llama.cpp from source (~20 minutes on 2 cores), so setup.sh does not install it.
Tested in tests/test_bench_export.py (the one line without llama_cpp; ours == the text
`run.py --option generate` writes, on a tiny model; where llama-cpp-python is installed, real
llama.cpp on a tiny export).
"""
import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run  # noqa: E402
import run_generate  # noqa: E402

INSTALL = ("bench_export: llama_cpp not importable; install it with `.venv/bin/pip install "
           "llama-cpp-python` (builds llama.cpp, ~20 minutes on 2 cores), then rerun")
CHAT = "What is the capital of France? Answer in one sentence."     # the user turn (--chat)
CHAT_TOKENS = 64                 # the most new tokens of the chat answer; stopping earlier = EOT


def have_llama_cpp():
    try:
        import llama_cpp  # noqa: F401
        return True
    except ImportError:
        return False


def generate_args(path, new_tokens):
    """The flags `run.py --option generate` would have (fp32 on the CPU, default sampling)."""
    sampling = {name: default for name, _, default, _ in run_generate.SAMPLING_FLAGS}
    return argparse.Namespace(pretrained_model_path=str(path), device="cpu", dtype="float32",
                              max_new_tokens=new_tokens, seed=1337, compile=False, **sampling)


def ours(path, prompt, new_tokens, chat):
    """--option generate's temperature-0 path, timed -> dict(ids, load_s, first_s, tok_s, ...)."""
    args = generate_args(path, new_tokens)
    greedy = run_generate.sampling_configs(args, [0.0])[0]
    start = time.perf_counter()
    model, tok = run_generate.load_model(args)
    load_s = time.perf_counter() - start
    prompt_ids = tok.encode(prompt, bos=tok.add_bos)
    stamps, start = [], time.perf_counter()
    with torch.inference_mode():
        ids = model.generate(prompt_ids, new_tokens, greedy, stop_tokens=tok.stop_ids,
                             on_token=lambda t: stamps.append(time.perf_counter()))
        chat = model.generate(tok.encode_chat(conversation(chat)), CHAT_TOKENS, greedy,
                              stop_tokens=tok.stop_ids)
    return dict(prompt_ids=prompt_ids, ids=ids, text=tok.decode(ids), load_s=load_s,
                first_s=stamps[0] - start, tok_s=rate(stamps), chat=tok.decode(chat),
                chat_stopped=len(chat) < CHAT_TOKENS)


def rate(stamps):
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")


@contextlib.contextmanager
def plain_weight_buffers(llama_cpp):
    """Load with llama_model_params.use_extra_bufts = False: llama.cpp then keeps quantized weights
    as written instead of repacking them for AVX-512 / AMX. On the machine of BENCHMARKS.md
    (llama-cpp-python 0.3.36, built with -march=native) the repacked buffers segfault on any prompt
    of more than a few tokens, for the Q4_1 file llama.cpp itself wrote as much as for ours; f32 is
    never repacked, so its speed is llama.cpp's own."""
    module = getattr(sys.modules.get(llama_cpp.Llama.__module__), "llama_cpp", None)
    default = getattr(module, "llama_model_default_params", None)
    if default is None:                          # another llama_cpp layout: load as it is
        yield
        return

    def params():
        p = default()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p
    module.llama_model_default_params = params
    try:
        yield
    finally:
        module.llama_model_default_params = default


def conversation(user):
    return [{"role": "user", "content": user}]


def llama_cpp_side(path, prompt, prompt_ids, new_tokens, threads, chat):
    """The same greedy decode and chat in llama.cpp -> dict like ours()."""
    import llama_cpp
    start = time.perf_counter()
    with plain_weight_buffers(llama_cpp):
        model = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=threads,
                                n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - start
    own_ids = model.tokenize(prompt.encode("utf-8"), add_bos=prompt_ids[:1] == [model.token_bos()],
                             special=False)
    stamps, ids, start = [], [], time.perf_counter()
    for token in model.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                repeat_penalty=1.0):
        stamps.append(time.perf_counter())
        ids.append(token)
        if len(ids) == new_tokens:
            break
    reply = model.create_chat_completion(messages=conversation(chat), max_tokens=CHAT_TOKENS, temperature=0.0,
                                         top_k=1, top_p=1.0, min_p=0.0,
                                         repeat_penalty=1.0)["choices"][0]
    return dict(own_prompt_ids=own_ids, ids=ids, load_s=load_s, first_s=stamps[0] - start,
                tok_s=rate(stamps), chat=reply["message"]["content"],
                chat_stopped=reply["finish_reason"] == "stop", version=llama_cpp.__version__)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model to export (default: SmolLM2)")
    parser.add_argument("--adapter", default=None, help="merged into the export (export --adapter)")
    parser.add_argument("--chat", default=CHAT, help="the user turn both sides answer")
    parser.add_argument("--dtype", default="f32", help="export --dtype (f32, f16, bf16, q8_0, ...)")
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out_dir", default="/tmp/llmlab_bench_export")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not have_llama_cpp():
        print(INSTALL)
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir) / "export.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    model_flag = ["--pretrained-model-path", args.model] if args.model else []
    adapter_flag = ["--adapter", args.adapter] if args.adapter else []
    run.main(["--option", "export", *model_flag, *adapter_flag, "--format", "gguf", "--dtype",
              args.dtype, "--out", str(out)])
    prompt = run_generate.FRANKENSTEIN
    mine = ours(out, prompt, args.new_tokens, args.chat)
    theirs = llama_cpp_side(out, prompt, mine["prompt_ids"], args.new_tokens, args.threads,
                            args.chat)
    same = theirs["ids"][:len(mine["ids"])] == mine["ids"]
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"torch {torch.__version__}, llama-cpp-python {theirs['version']}, export --dtype "
          f"{args.dtype}, prompt {len(mine['prompt_ids'])} tokens, {args.new_tokens} new tokens")
    print("| implementation | load s | first token s | decode tok/s |")
    print("|---|---|---|---|")
    for name, row in (("llmlab --option generate", mine), ("llama.cpp", theirs)):
        print(f"| {name} | {row['load_s']:.2f} | {row['first_s']:.3f} | {row['tok_s']:.1f} |")
    print(f"greedy ids equal: {same} ({len(mine['ids'])} tokens); prompt tokenized alike: "
          f"{theirs['own_prompt_ids'] == mine['prompt_ids']}")
    print(f"chat: same answer {theirs['chat'].strip() == mine['chat'].strip()}, stopped at end "
          f"of turn: ours {mine['chat_stopped']}, llama.cpp {theirs['chat_stopped']}")
    print("ours:", repr(mine["text"][:200]))
    print("chat, ours:", repr(mine["chat"][:200]))
    print("chat, llama.cpp:", repr(theirs["chat"][:200]))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(ours=mine, llama_cpp=theirs, same_ids=same,
                                                   dtype=args.dtype), indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
