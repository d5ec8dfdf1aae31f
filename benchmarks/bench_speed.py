"""Benchmark: training and inference speed, ours vs transformers (+ peft), same shapes, one process.

Workloads, each run through our code and, when installed, through transformers (+ peft) on the
same weights (ours converted with weights.hf_state_dict), the same tokens and the same loss:
  lora_light, lora_heavy  LoRA r 16, alpha 32 (q, v / all seven projections), AdamW: tokens/s
                          of forward + backward + step, peak memory of a step
  full                    full fine-tuning, AdamW
  decode_b1, decode_b8    greedy decoding, prompt 128 tokens, 256 new, KV cache on both sides:
                          new tokens/s after the first (ours fp32, and ours int4 on CPU)
  score                   seed 001's zero-shot prompting path, scoring.label_scores (single-
                          token labels: one forward, the last real position): examples/s
  llama.cpp               the CPU decoding anchor (llama-cpp-python on the same GGUF, same prompt
                          ids, same thread count, greedy), when importable
Loss, both sides: next-token cross-entropy over every position (transformers' labels=input_ids),
the mean over B*(T-1) predictions; ours through fused.lm_loss_chunked (the (B, T, V) logits are
never built). Ours runs the fast paths of fused.py (fuse: stacked q/k/v and gate/up, LoRA branch
in one addmm) and, with --compile (default on a GPU), fused.compile_model (training) /
fused.compile_decode (decoding: CUDA graphs over the static KV cache). The first-step losses
are printed side by side, and the greedy ids and label scores compared: they must agree.

Shapes: smollm2 (SmolLM2-135M, the real weights: weights.load_pretrained) and, on a GPU only,
llama32_1b (llama.LlamaConfig.llama32_1b(), random weights). fp32 on CPU, bf16 on GPU; batch 4 x
128 tokens on CPU, 8 x 512 on GPU (--batch, --seq). Peak memory: CUDA's max_memory_allocated,
or on CPU the growth of the process's resident set during the step (sampled every 2 ms after
malloc_trim; an estimate, comparable side by side).

    .venv/bin/python benchmarks/bench_speed.py                        # CPU, torch's threads
    .venv/bin/python benchmarks/bench_speed.py --threads 1,2 --json runs/speed.json
    .venv/bin/python benchmarks/bench_speed.py --smoke                # tiny shapes, no claims

Timings are meaningless on a loaded machine: run it when `uptime`'s load average is below ~1.2.
llama.cpp: `pip install llama-cpp-python` (builds llama.cpp, ~20 minutes on 2 cores; not in
setup.sh --dev); without it that row says skipped.
"""
import argparse
import copy
import ctypes
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import atomic  # noqa: E402
import bench_generate  # noqa: E402  (benchmarks/, beside this file)
import classifier  # noqa: E402
import scoring  # noqa: E402
import data  # noqa: E402
import fused  # noqa: E402
import llama  # noqa: E402
import lora  # noqa: E402
import optimizer  # noqa: E402
import quantize  # noqa: E402
import sample  # noqa: E402
import weights  # noqa: E402

LABELS = ["terrible", "bad", "okay", "good", "great"]      # SST's five classes, one token each
COMPILE = {"none": (), "train": ("train",), "decode": ("decode",), "all": ("train", "decode"),
           "auto": None}                                    # auto: all on a GPU, none on a CPU

# ----------------------------------------------------------------------------
# measuring


class PeakMemory:
    """Peak bytes of one region: CUDA's allocator counter, or on CPU the resident set's growth
    (free memory handed back first with malloc_trim, then /proc/self/statm every 2 ms)."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss() - self.start)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.start = self.rss()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop.set()
            self.thread.join()
            self.peak = max(self.peak, self.rss() - self.start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, steps, device):
    """Warm-up step (its loss is returned), then `steps` timed steps, the first under PeakMemory.
    -> (loss of the first step, median seconds per step, peak bytes)."""
    loss = float(step())
    times, peak = [], 0
    for i in range(steps):
        sync(device)
        start = time.perf_counter()
        if i == 0:
            with PeakMemory(device) as meter:
                step()
            peak = meter.peak
        else:
            step()
        sync(device)
        times.append(time.perf_counter() - start)
    return loss, sorted(times)[len(times) // 2], peak


# ----------------------------------------------------------------------------
# the models: ours, and transformers' twin with the same weights


def build_ours(shape, device, dtype, smoke):
    """-> (our Llama in eval mode on device, tokenizer or None)."""
    if smoke:
        torch.manual_seed(0)
        return llama.Llama(llama.LlamaConfig.tiny()).to(device, dtype).eval(), None
    if shape == "smollm2":
        return weights.load_pretrained(device=device, dtype=dtype)
    torch.manual_seed(0)
    with torch.device(device):
        model = llama.Llama(llama.LlamaConfig.llama32_1b())
    return model.to(dtype).eval(), None


def hf_config(c):
    import transformers
    rope = dict(rope_type="default", rope_theta=c.rope_theta)
    if c.rope_scaling:
        rope = dict(rope_type="llama3", rope_theta=c.rope_theta, factor=c.rope_scaling["factor"],
                    low_freq_factor=c.rope_scaling["low_freq_factor"],
                    high_freq_factor=c.rope_scaling["high_freq_factor"],
                    original_max_position_embeddings=c.rope_scaling["original_max_seq_len"])
    return transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, rope_parameters=rope,
        tie_word_embeddings=c.tie_embeddings, attn_implementation="sdpa")


def build_hf(ours):
    """transformers' LlamaForCausalLM holding our weights (q/k rows back to half-split), built in
    fp32 and its parameters cast to our dtype: RoPE's inv_freq buffer stays fp32, as
    from_pretrained(dtype=...) leaves it."""
    import transformers
    weight = ours.norm.weight
    with torch.device(weight.device):
        hf = transformers.LlamaForCausalLM(hf_config(ours.config))
    state = weights.hf_state_dict(ours.config, ours.state_dict())
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    for p in hf.parameters():
        p.data = p.data.to(weight.dtype)
    return hf.eval()


def have(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


# ----------------------------------------------------------------------------
# training: LoRA (light, heavy) and full fine-tuning


def train_step_ours(base, method, compile_model):
    model = copy.deepcopy(base).train()
    if method == "full":
        model.requires_grad_(True)
    else:
        lora.inject_lora(model, lora.LoraConfig(r=16, alpha=32.0, target_modules=method[5:]))
    fused.fuse(model)
    if compile_model:
        fused.compile_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer.AdamW(params, lr=1e-5, foreach=True)

    def step(tokens):
        loss, count = fused.lm_loss_chunked(model, tokens)
        loss = loss / count
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def train_step_hf(base, method):
    import peft
    model = build_hf(base).train()
    if method != "full":
        targets = lora.PRESETS[method[5:]]
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                           target_modules=targets))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, eps=1e-6, foreach=True)

    def step(tokens):
        loss = model(input_ids=tokens, labels=tokens, use_cache=False).loss   # no KV cache built
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def bench_training(base, args, device, results):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, base.config.vocab_size, (args.batch, args.seq), generator=g)
    tokens = tokens.to(device)
    for method in ("lora_light", "lora_heavy", "full"):
        sides = {"ours": train_step_ours(base, method, "train" in args.compile)}
        if have("transformers") and (method == "full" or have("peft")):
            sides["transformers"] = train_step_hf(base, method)
        row = {}
        for side, step in sides.items():
            loss, seconds, peak = time_steps(lambda: step(tokens), args.steps, device)
            row[side] = dict(value=args.batch * args.seq / seconds, loss=loss, peak=peak)
            del step
        sides.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results.append(dict(workload=method, unit="tok/s", **row))


# ----------------------------------------------------------------------------
# decoding (ours fp32 / int4, transformers, llama.cpp) and scoring


def decode_ours(model, prompts, new_tokens, decode_fn=None):
    """-> (new tokens/s over the steps after the first, the new ids of row 0)."""
    stamps = []

    def stamp(row, token):
        if row == 0:                              # one stamp per step
            stamps.append(time.perf_counter())
    model.setup_cache(len(prompts), len(prompts[0]) + new_tokens)
    if decode_fn is not None:                     # compile (and capture) outside the timing
        sample.generate_batch(model, prompts, 0, 3, stop_tokens=(), decode_fn=decode_fn)
    out = sample.generate_batch(model, prompts, 0, new_tokens, stop_tokens=(),
                                on_token=stamp, decode_fn=decode_fn)
    return len(prompts) * (len(stamps) - 1) / (stamps[-1] - stamps[0]), out[0]


def decode_hf(hf, prompts, new_tokens):
    x = torch.tensor(prompts, device=hf.device)
    streamer = bench_generate.token_stamps()
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, do_sample=False, streamer=streamer,
                      pad_token_id=0)
    stamps = streamer.times[1:]                   # the first put is the prompt itself
    return len(prompts) * (len(stamps) - 1) / (stamps[-1] - stamps[0]), out[0, x.shape[1]:].tolist()


def decode_llama_cpp(path, prompt, new_tokens, threads):
    import llama_cpp
    from bench_export import plain_weight_buffers        # why: its docstring
    with plain_weight_buffers(llama_cpp):
        model = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + new_tokens + 8,
                                n_threads=threads, n_threads_batch=threads, n_batch=len(prompt),
                                verbose=False)
    stamps, out = [], []
    for token in model.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        stamps.append(time.perf_counter())
        out.append(token)
        if len(out) == new_tokens:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), out


def prompts_for(vocab, batch, length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=g).tolist()


def bench_decoding(base, args, device, results, threads):
    for batch in (1, 8):
        prompts = prompts_for(base.config.vocab_size, batch, args.prompt)
        row = {}
        with torch.inference_mode():
            model = copy.deepcopy(base)
            fused.fuse(model)
            step = fused.compile_decode(model) if "decode" in args.compile else None
            row["ours"], ours_ids = decode_ours(model, prompts, args.new_tokens, step)
            if device.type == "cpu":
                quantize.quantize_model_int4(model)
                fused.fuse(model)                        # int4 stacked: one kernel per group
                step = fused.compile_decode(model) if "decode" in args.compile else None
                row["ours_int4"], _ = decode_ours(model, prompts, args.new_tokens, step)
            del model, step
            if have("transformers"):
                row["transformers"], hf_ids = decode_hf(build_hf(base), prompts, args.new_tokens)
                row["same_ids_as_transformers"] = hf_ids == ours_ids
        results.append(dict(workload=f"decode_b{batch}", unit="tok/s",
                            **{k: v if isinstance(v, bool) else dict(value=v)
                               for k, v in row.items()}))
    anchor = llama_cpp_row(base, args, device, threads)
    if anchor is not None:
        results.append(anchor)


def llama_cpp_row(base, args, device, threads):
    if args.smoke or device.type != "cpu" or args.shape != "smollm2":
        return None
    if not have("llama_cpp"):
        print("llama.cpp: skipped (llama_cpp not importable); install it with "
              "`.venv/bin/pip install llama-cpp-python` (~20 minutes to build on 2 cores; not in "
              "setup.sh --dev), then rerun this command")
        return dict(workload="decode_b1_llama.cpp", unit="tok/s", skipped="llama_cpp not installed")
    prompt = prompts_for(base.config.vocab_size, 1, args.prompt)[0]
    rate, _ = decode_llama_cpp(weights.default_model_path(), prompt, args.new_tokens, threads)
    return dict(workload="decode_b1_llama.cpp", unit="tok/s", **{"llama.cpp": dict(value=rate)})


def score_hf(hf, prompts, label_ids, pad_id):
    tokens, mask = data.pad_batch(prompts, pad_id)
    tokens, mask = tokens.to(hf.device), mask.to(hf.device)
    logits = hf(input_ids=tokens, attention_mask=mask).logits                   # (B, T, V)
    last = logits[torch.arange(len(prompts)), mask.sum(1) - 1]                 # (B, V)
    return torch.log_softmax(last.float(), -1)[:, [label[0] for label in label_ids]]


def bench_scoring(base, tokenizer, args, device, results):
    """Examples/s of scoring.label_scores, batches of 8 prompts of 40..80 tokens."""
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(40, 81, (args.score_examples,), generator=g).tolist()
    prompts = [torch.randint(1, base.config.vocab_size, (n,), generator=g).tolist() for n in lengths]
    label_ids = (classifier.label_token_ids(tokenizer, LABELS) if tokenizer is not None
                 else [[i + 1] for i in range(len(LABELS))])
    assert all(len(label) == 1 for label in label_ids), label_ids
    batches = [prompts[i:i + 8] for i in range(0, len(prompts), 8)]
    model = copy.deepcopy(base)
    fused.fuse(model)
    runs = {"ours": lambda b: scoring.label_scores(model, b, label_ids, 0)}
    if have("transformers"):
        hf = build_hf(base)
        runs["transformers"] = lambda b: score_hf(hf, b, label_ids, 0)
    row = {}
    with torch.inference_mode():
        for side, run in runs.items():
            run(batches[0])                                                     # warm-up
            sync(device)
            start = time.perf_counter()
            scores = torch.cat([run(b).float().cpu() for b in batches])
            sync(device)
            row[side] = dict(value=len(prompts) / (time.perf_counter() - start))
            row.setdefault("scores", []).append(scores)
    if len(row["scores"]) == 2:
        row["max_score_diff"] = float((row["scores"][0] - row["scores"][1]).abs().max())
    del row["scores"]
    results.append(dict(workload="score", unit="examples/s", **row))


# ----------------------------------------------------------------------------
# the table


def ratio(row):
    ours, theirs = row.get("ours"), row.get("transformers")
    if ours and theirs:
        return ours["value"] / theirs["value"]
    return None


def format_rows(results):
    lines = ["| shape | threads | workload | ours | ours int4 | transformers | llama.cpp | "
             "ours / transformers | int4 / transformers | peak MiB ours / transformers | "
             "first loss ours / transformers |", "|" + "---|" * 11]

    def value(row, key):
        return f"{row[key]['value']:,.1f}" if key in row else ""
    for row in results:
        r, theirs = ratio(row), row.get("transformers")
        int4 = (f"{row['ours_int4']['value'] / theirs['value']:.2f}x"
                if "ours_int4" in row and theirs else "")
        peaks = (f"{row['ours']['peak'] / 2**20:,.0f} / "
                 f"{theirs['peak'] / 2**20:,.0f}" if theirs and "peak" in theirs else "")
        losses = (f"{row['ours']['loss']:.4f} / {theirs['loss']:.4f}"
                  if theirs and "loss" in theirs else "")
        lines.append(f"| {row['shape']} | {row['threads']} | {row['workload']} ({row['unit']}) | "
                     f"{value(row, 'ours')} | {value(row, 'ours_int4')} | "
                     f"{value(row, 'transformers')} | {value(row, 'llama.cpp')} | "
                     f"{'' if r is None else f'{r:.2f}x'} | {int4} | {peaks} | {losses} |")
    return "\n".join(lines)


def agreement_line(results):
    """The same-work checks: greedy ids equal to transformers', scores' largest difference."""
    parts = [f"{r['shape']} t{r['threads']} {r['workload']}: same greedy ids "
             f"{r['same_ids_as_transformers']}" for r in results if "same_ids_as_transformers" in r]
    parts += [f"{r['shape']} t{r['threads']} score: max |log p diff| {r['max_score_diff']:.1e}"
              for r in results if "max_score_diff" in r]
    return "checks vs transformers: " + ("; ".join(parts) or "none (not installed)")


def machine_line(args, device):
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    name = torch.cuda.get_device_name() if device.type == "cuda" else (
        platform.processor() or platform.machine())
    return (f"machine: {name}, {os.cpu_count()} cores, torch {torch.__version__}, load average "
            f"{load:.2f} at start, batch {args.batch} x {args.seq} tokens (training), prompt "
            f"{args.prompt} + {args.new_tokens} new (decoding), compiled: "
            f"{', '.join(args.compile) or 'nothing'}")


# ----------------------------------------------------------------------------
# main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny config, 1 timed step, 4 new tokens: checks the script only")
    parser.add_argument("--threads", default=None,
                        help="comma list of torch thread counts, e.g. 1,2 (default: torch's)")
    parser.add_argument("--shapes", default=None,
                        help="comma list of smollm2, llama32_1b (default: smollm2 on CPU, both "
                             "on a GPU)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (4 CPU, 8 GPU)")
    parser.add_argument("--seq", type=int, default=None, help="training tokens (128 CPU, 512 GPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per side")
    parser.add_argument("--prompt", type=int, default=128, help="decoding prompt tokens")
    parser.add_argument("--new_tokens", "--new-tokens", type=int, default=256,
                        help="tokens to decode")
    parser.add_argument("--score_examples", "--score-examples", type=int, default=64,
                        help="prompts to score")
    parser.add_argument("--compile", choices=list(COMPILE), default="auto",
                        help="torch.compile ours: train (fused.compile_model), decode "
                             "(fused.compile_decode), all, none; auto: all on a GPU, none on a "
                             "CPU (there the compiled decode step was slower, compiling takes "
                             "minutes)")
    parser.add_argument("--json", default=None, help="write the results here (atomic)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.prompt, args.new_tokens, args.score_examples = 1, 8, 4, 8
    cuda = torch.cuda.is_available()
    args.compile = COMPILE[args.compile] if args.compile != "auto" else (
        COMPILE["all"] if cuda else COMPILE["none"])
    args.batch = args.batch or (2 if args.smoke else 8 if cuda else 4)
    args.seq = args.seq or (16 if args.smoke else 512 if cuda else 128)
    return args


def run_shape(shape, args, device, threads, results):
    args.shape = shape
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base, tokenizer = build_ours(shape, device, dtype, args.smoke)
    start = len(results)
    bench_training(base, args, device, results)
    bench_decoding(base, args, device, results, threads)
    bench_scoring(base, tokenizer, args, device, results)
    for row in results[start:]:
        row.update(shape="tiny" if args.smoke else shape, threads=threads)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = (args.shapes or ("smollm2,llama32_1b" if device.type == "cuda" else "smollm2"))
    shapes = shapes.split(",")
    if "llama32_1b" in shapes and device.type != "cuda":
        raise SystemExit("--shapes llama32_1b runs on a GPU only (random 1B weights in bf16)")
    threads_list = ([int(t) for t in args.threads.split(",")] if args.threads
                    else [torch.get_num_threads()])
    print(machine_line(args, device), flush=True)
    if not have("transformers"):
        print("transformers not installed: ours only (pip install -r requirements-dev.txt)")
    results = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for shape in shapes:
            run_shape(shape, args, device, threads, results)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(format_rows(results))
    print(agreement_line(results))
    print(f"load average at the end: {load:.2f}" + ("  (smoke run: no timing claims)"
                                                    if args.smoke else ""))
    if args.json:
        atomic.save_json_atomic(args.json, dict(machine=machine_line(args, device),
                                                results=results))
    return results


if __name__ == "__main__":
    main()
