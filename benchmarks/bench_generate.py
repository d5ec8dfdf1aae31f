"""Benchmark: `run.py --option generate` speed, ours vs transformers, same prompt, same machine, same run.

Measures, for the default model (SmolLM2-135M-Instruct GGUF) or --model:
  load       seconds from nothing to a model ready on the device
  first      seconds from the prompt to the first new token (prefill + one step)
  decode     tokens/s of the following greedy steps (KV cache on for both)
transformers loads the same GGUF (dequantized to fp32) and decodes the same prompt ids greedily.
Ours runs three times: fp32 (the same arithmetic as transformers), `--dtype int4` (quantize.py: the
weights as 4-bit groups of 32, which is what the Q4_1 GGUF file stores; load includes quantizing),
and int4 + fused.fuse (q/k/v and gate/up stacked: 4 int4 kernels per layer instead of 7).
benchmarks/bench_speed.py measures more (batch 8, training, scoring, llama.cpp).

    .venv/bin/python benchmarks/bench_generate.py [--new_tokens 128] [--threads N]

Prints a markdown table row per implementation plus the machine; paste it into BENCHMARKS.md.
"""
import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fused  # noqa: E402
import quantize  # noqa: E402
import weights  # noqa: E402

PROMPT = ("Victor Frankenstein, a young scientist obsessed with uncovering the secrets of life, "
          "succeeds in animating a creature assembled from")


def time_ours(path, prompt, new_tokens, int4=False, fuse=False):
    start = time.perf_counter()
    model, tokenizer = weights.load_pretrained(path)
    if int4:
        quantize.quantize_model_int4(model)
    if fuse:
        fused.fuse(model)
    load_s = time.perf_counter() - start
    ids = tokenizer.encode(prompt, bos=True)
    stamps = []
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, new_tokens, stop_tokens=(),    # greedy: sample.GREEDY
                             on_token=lambda t: stamps.append(time.perf_counter()))
    first_s = stamps[0] - start
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return load_s, first_s, decode, ids, tokenizer.decode(out)


def token_stamps():
    """A transformers streamer that records the time of every put (the first put is the prompt)."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    return Stamps()


def time_transformers(path, ids, new_tokens):
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name,
                                                 dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - start
    streamer = token_stamps()
    x = torch.tensor([ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             streamer=streamer, attention_mask=torch.ones_like(x))
    stamps = streamer.times[1:]  # the streamer's first put is the prompt itself
    first_s = stamps[0] - start
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return load_s, first_s, decode, out[0, len(ids):].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="GGUF path (default: the installed SmolLM2)")
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model or str(weights.default_model_path())
    load_s, first_s, decode, ids, text = time_ours(path, PROMPT, args.new_tokens)
    q_load, q_first, q_decode, _, q_text = time_ours(path, PROMPT, args.new_tokens, int4=True)
    f_load, f_first, f_decode, _, f_text = time_ours(path, PROMPT, args.new_tokens, int4=True,
                                                     fuse=True)
    hf_load, hf_first, hf_decode, hf_ids = time_transformers(path, ids, args.new_tokens)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, "
          f"prompt {len(ids)} tokens, {args.new_tokens} new tokens")
    print("| implementation | load s | first token s | decode tok/s |")
    print("|---|---|---|---|")
    print(f"| llmlab (KV cache, fp32) | {load_s:.2f} | {first_s:.3f} | {decode:.1f} |")
    print(f"| llmlab (KV cache, --dtype int4) | {q_load:.2f} | {q_first:.3f} | {q_decode:.1f} |")
    print(f"| llmlab (KV cache, --dtype int4, fused) | {f_load:.2f} | {f_first:.3f} | "
          f"{f_decode:.1f} |")
    print(f"| transformers {__import__('transformers').__version__} | {hf_load:.2f} | {hf_first:.3f} "
          f"| {hf_decode:.1f} |")
    print(f"speedup decode: fp32 {decode / hf_decode:.2f}x, int4 {q_decode / hf_decode:.2f}x, "
          f"int4 fused {f_decode / hf_decode:.2f}x (same text as int4: {f_text == q_text}); "
          f"load to first token (ours): fp32 {load_s + first_s:.2f} s, int4 {q_load + q_first:.2f} s")
    print("ours fp32:", repr(text[:200]))
    print("ours int4:", repr(q_text[:200]))


if __name__ == "__main__":
    main()
