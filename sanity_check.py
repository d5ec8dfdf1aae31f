"""Sanity check of every llmlab component: one line each (name, oracle, max |diff|, PASS/FAIL).

    .venv/bin/python sanity_check.py [--data ../shared/data] [--model path] [--skip_model]

Each check compares our code with an independent oracle that ships with the runtime (torch
built-ins, a second formulation of the same maths, a round trip through the file format) so it
runs without the test-only reference libraries; tests/ holds the comparisons with transformers,
peft, safetensors and gguf. With llama2.c's `stories42M.pt` and minllama's `sanity_check.data`
in the working folder it also runs minllama's original check (seed 001). Exits 1 if any fails.
"""
import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import adapters
import classifier
import data
import scoring
import llama
import lora
import mamba
import optimizer
import pico
import quantize
import rope
import s4
import sample
import sft
import ssm
import tokenizer
import weights

RESULTS = []


def report(name, oracle, diff, tol):
    """Print one line; diff is a max |difference| (float) or a bool (True = pass)."""
    ok = bool(diff) if isinstance(diff, bool) else diff <= tol
    shown = "-" if isinstance(diff, bool) else f"{diff:.2e}"
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}  {name:<34} vs {oracle:<36} max|diff| {shown:>9}  (tol {tol:g})")


def maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------------------
# model components

def check_norms():
    x = torch.randn(4, 7, 32)
    ours = llama.LayerNorm(32)
    ref = torch.nn.LayerNorm(32, eps=ours.eps)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(32))
        ref.bias.copy_(torch.randn(32))
        ours.weight.copy_(ref.weight)
        ours.bias.copy_(ref.bias)
    report("LayerNorm", "torch.nn.LayerNorm", maxdiff(ours(x), ref(x)), 1e-5)
    rms = llama.RMSNorm(32)
    report("RMSNorm", "F.rms_norm", maxdiff(rms(x), F.rms_norm(x, (32,), rms.weight, rms.eps)), 1e-5)


def check_int4():
    layer = quantize.Int4Linear(torch.nn.Linear(128, 64, bias=False))
    x = torch.randn(3, 128)
    ref = F.linear(x.bfloat16().float(), layer.dequantize())   # the kernel runs in bf16
    report("int4 linear (quantize.py)", "F.linear, dequantized weight", maxdiff(layer(x), ref), 5e-2)


def check_attention():
    q, k, v = torch.randn(2, 6, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    ours = llama.compute_query_key_value_scores(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    report("attention (math, GQA, causal)", "F.scaled_dot_product_attention", maxdiff(ours, ref), 1e-5)


def check_rope():
    n_heads, head_dim, T = 4, 16, 11
    freqs = rope.precompute_freqs_cis(head_dim, T, 10000.0)
    w = torch.randn(n_heads * head_dim, 24)
    x = torch.randn(1, T, 24)
    q_meta = (x @ w.T).view(1, T, n_heads, head_dim)
    w_half = rope.permute_interleaved_to_half(w, n_heads, head_dim)
    q_half = (x @ w_half.T).view(1, T, n_heads, head_dim)
    a, _ = rope.apply_rotary_emb(q_meta, q_meta, freqs)
    b, _ = rope.apply_rotary_emb_half(q_half, q_half, freqs)
    back = rope.permute_half_to_interleaved(b.reshape(T, -1).T, n_heads, head_dim).T
    report("RoPE interleaved vs half-split", "same rotation after row permutation",
           maxdiff(a.reshape(T, -1), back), 1e-5)


def check_kv_cache():
    torch.manual_seed(0)
    model = llama.Llama(llama.LlamaConfig.tiny()).eval()
    tokens = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        full, _ = model(tokens)
        model.setup_cache(1, 12)
        steps = [model(tokens[:, :5], start_pos=0)[0]]
        steps += [model(tokens[:, t:t + 1], start_pos=t)[0] for t in range(5, 12)]
    report("KV cache decode", "full forward without cache", maxdiff(torch.cat(steps, 1), full), 1e-4)
    with torch.no_grad():
        cached = model.generate(tokens[0, :4].tolist(), 8)
        plain = sample.generate_no_cache(model, tokens[0, :4].tolist(), 8)
    report("greedy generate with cache", "generate_no_cache", list(cached) == list(plain), 0)


def check_sampling():
    logits = torch.randn(50)
    g = torch.Generator().manual_seed(0)
    greedy = sample.nucleus_sampling(logits, 1e-9, generator=g)
    report("nucleus_sampling p->0", "argmax", int(greedy) == int(logits.argmax()), 0)


def check_adamw():
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    ours = optimizer.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-8)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-8)
    x = torch.randn(16, 8)
    for _ in range(50):
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    report("AdamW (50 steps)", "torch.optim.AdamW", maxdiff(a.weight, b.weight), 1e-6)


def check_lora():
    torch.manual_seed(0)
    model = llama.Llama(llama.LlamaConfig.tiny()).eval()
    lora.inject_lora(model, lora.LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["wq", "wv"]))
    for layer in lora.lora_layers(model).values() if isinstance(lora.lora_layers(model), dict) \
            else [m for _, m in lora.lora_layers(model)]:
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        unmerged = model(tokens)[0]
        lora.merge_lora(model)
        merged = model(tokens)[0]
    report("LoRA merged", "unmerged LoRA forward", maxdiff(merged, unmerged), 1e-5)


# ----------------------------------------------------------------------------
# loaders and tokenizers

def check_safetensors_and_pt():
    torch.manual_seed(0)
    config = llama.LlamaConfig.tiny()
    model = llama.Llama(config).eval()
    state = {k: v for k, v in model.state_dict().items()}
    tokens = torch.randint(0, config.vocab_size, (1, 7))
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        weights.save_model_folder(Path(tmp) / "ckpt", config, state)
        loaded, _ = weights.load_pretrained(Path(tmp) / "ckpt")
        report("safetensors checkpoint round trip", "logits of the saved model",
               maxdiff(loaded(tokens)[0], model(tokens)[0]), 0.0)
        args = dict(dim=config.dim, n_layers=config.n_layers, n_heads=config.n_heads,
                    n_kv_heads=config.n_kv_heads, vocab_size=config.vocab_size,
                    hidden_dim=config.hidden_dim, max_seq_len=config.max_seq_len,
                    norm_eps=config.norm_eps)
        torch.save({"model": state, "model_args": args}, Path(tmp) / "tiny.pt")
        loaded, _ = weights.load_pretrained(Path(tmp) / "tiny.pt")
        report("llama2.c .pt loader", "logits of the saved model",
               maxdiff(loaded(tokens)[0], model(tokens)[0]), 0.0)


def check_tokenizers(data):
    samples = "Hello world! 12345   spaces\n\nنمونه متن فارسی ۳۰ 🙂"
    paths = [("Llama 2 SentencePiece", data / "tokenizers" / "llama2-tokenizer.model"),
             ("Llama 3 tiktoken", data / "tokenizers" / "llama3-tokenizer.model")]
    for name, path in paths:
        if not path.exists():
            print(f"SKIP  {name:<34} ({path} not found)")
            continue
        tok = tokenizer.Tokenizer.from_file(path)
        report(f"{name} round trip", "decode(encode(text)) == text",
               tok.decode(tok.encode(samples)) == samples, 0)


def check_default_model(path):
    model, tok = weights.load_pretrained(path)
    ids = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    with torch.no_grad():
        answer = tok.decode(model.generate(ids, 20, stop_tokens=tok.stop_ids))
    report("default model (SmolLM2 GGUF) chat", f"answer contains Paris: {answer.strip()[:40]!r}",
           "Paris" in answer, 0)
    report("tokenizer (GGUF BPE) round trip", "decode(encode(text)) == text",
           tok.decode(tok.encode("Héllo  world 2024!\n\tok")) == "Héllo  world 2024!\n\tok", 0)


# ----------------------------------------------------------------------------
# SSM, S4, pico

def check_ssm():
    torch.manual_seed(0)
    H, N, L = 3, 8, 64
    A = torch.complex(-torch.rand(H, N) - 0.1, torch.randn(H, N))
    B, C = torch.randn(H, N, dtype=torch.cfloat), torch.randn(H, N, dtype=torch.cfloat)
    dt = torch.full((H,), 0.05)
    u = torch.randn(2, H, L)
    for name, disc in [("ZOH", ssm.discretize_zoh), ("bilinear", ssm.discretize_bilinear)]:
        A_bar, B_bar = disc(A, B, dt)
        y_scan, _ = ssm.scan(A_bar, B_bar, C, u)
        y_fft = s4.causal_fft_conv(u, s4.ssm_kernel(A_bar, B_bar, C, L))
        report(f"SSM FFT convolution ({name})", "recurrent scan", maxdiff(y_fft, y_scan), 1e-4)
    x, dt, A = torch.randn(2, H, L + 5), 0.5 * torch.rand(2, H, L + 5), -torch.rand(H, N) * 3
    B, C = torch.randn(2, L + 5, N), torch.randn(2, L + 5, N)
    y_loop, _ = mamba.selective_scan_reference(x, dt, A, B, C, D=torch.ones(H))
    y_fast, _ = mamba.selective_scan_chunked(x, dt, A, B, C, D=torch.ones(H))
    report("Mamba selective scan (chunked)", "loop over t", maxdiff(y_fast, y_loop), 1e-4)


def check_pico():
    torch.manual_seed(0)
    cfg = pico.PicoConfig.tiny(model="kgram")
    model = pico.build_model(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        report("k-gram MLP (unfold)", "loop over positions",
               maxdiff(model(tokens), model.forward_reference(tokens)), 1e-5)
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    report("linear attention (cumsum)", "recurrent form",
           maxdiff(pico.linear_attention_cumsum(q, k, v), pico.linear_attention_recurrent(q, k, v)), 1e-4)


# ----------------------------------------------------------------------------
# minllama's original check (needs its files)

def check_minllama(folder):
    """minllama's own check: stories42M logits (last position) and hidden states on fixed ids.
    The course variant swaps RMSNorm for LayerNorm (seed 001), so either norm may have made the
    reference file: both are tried and the matching one is named."""
    ckpt, data = folder / "stories42M.pt", folder / "sanity_check.data"
    if not (ckpt.exists() and data.exists()):
        print("SKIP  minllama sanity_check.data           (stories42M.pt and sanity_check.data not here)")
        return
    ref = torch.load(data, weights_only=True)  # a dict of tensors: no code runs
    sent_ids = torch.tensor([[101, 7592, 2088, 102, 0, 0, 0, 0],
                             [101, 7592, 15756, 2897, 2005, 17953, 2361, 102]])
    config, state, _ = weights.read_model_file(ckpt)
    best = None
    for norm in ("rmsnorm", "layernorm"):
        model = llama.Llama(llama.LlamaConfig(**{**vars(config), "norm": norm})).eval()
        model.load_state_dict({**model.state_dict(), **state})  # LayerNorm biases stay zero
        with torch.no_grad():
            logits, hidden = model(sent_ids, last_only=True)
        diff = max(maxdiff(logits, ref["logits"]), maxdiff(hidden, ref["hidden_states"]))
        best = min(best or (math.inf, norm), (diff, norm))
    report(f"stories42M ({best[1]})", "minllama sanity_check.data", best[0], 1e-4)


def check_adapters():
    """IA3 with l = 1 is the base model; a prefix read from the KV cache == without it."""
    torch.manual_seed(0)
    base = llama.Llama(llama.LlamaConfig.tiny()).eval()
    tokens = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        before = base(tokens)[0]
        adapters.inject_ia3(base, adapters.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"]))
        report("IA3 with l = 1", "the base model", maxdiff(base(tokens)[0], before), 1e-6)
        model = adapters.adapt(llama.Llama(llama.LlamaConfig.tiny()).eval(),
                               adapters.PrefixTuningConfig(num_virtual_tokens=3))
        prompt = tokens[0, :5].tolist()
        cached = sample.generate_batch(model, [prompt], 0, 8)[0]
        plain = sample.generate_no_cache(model, prompt, 8)
    report("prefix tuning, cached decode", "the same prefix without a cache", cached == plain, 0)


def check_sft_and_scores():
    """The answer-only loss and the KV-cache label scores against their readable oracles."""
    torch.manual_seed(0)
    model = llama.Llama(llama.LlamaConfig.tiny()).eval()
    sequences = [([5, 6, 7, 8, 9], 3), ([10, 11, 12], 2)]
    batch = sft.collate(sequences, pad_id=0)
    with torch.no_grad():
        fast, _ = sft.answer_loss(model, batch)
        ref, _ = sft.answer_loss_reference(model, batch)
        report("SFT answer-only loss", "full-logit cross_entropy", maxdiff(fast, ref), 1e-4)
        labels, prompts = [[20, 21], [22], [20, 23, 24]], [[1, 2, 3, 4], [5, 6]]
        scores = scoring.label_scores(model, prompts, labels, pad_id=0)
        brute = torch.stack([scoring.label_scores_reference(model, p, labels) for p in prompts])
    report("label scores (KV cache)", "one forward per prompt and label", maxdiff(scores, brute), 1e-4)
    with torch.no_grad():
        pairs = [([1, 2, 3], [20, 21]), ([1, 2, 3], [22]), ([5, 6], [20, 23, 24])]
        tree = scoring.continuation_logprobs(model, pairs, pad_id=0)
        full = [float(scoring.continuation_logprobs_reference(model, c, x)) for c, x in pairs]
    report("eval choices (tree rows)", "one forward per choice", maxdiff(
        torch.tensor(tree), torch.tensor(full)), 1e-4)
    sequences = [([7, 8, 5, 6, 7, 8, 9], 5), ([7, 8, 10, 11, 12], 4), ([7, 8, 13, 14], 3)]
    with torch.no_grad():
        packed, _ = sft.answer_loss(model, sft.packed(sequences, pad_id=0, max_len=16))
        padded, _ = sft.answer_loss(model, sft.collate(sequences, pad_id=0))
    report("SFT packed rows (shared prefix)", "the unpacked padded batch", maxdiff(packed, padded),
           1e-4)
    head = classifier.LlamaEmbeddingClassifier(model, num_labels=2, hidden_dropout_prob=0.0).eval()
    texts = [ids for ids, _ in sequences]
    with torch.no_grad():
        packed = classifier.batch_logits(head, classifier.packed_batch(texts, [0, 1, 0], 0, 16))[0]
        padded = classifier.batch_logits(head, data.Batches(texts, [0, 1, 0], 3, 0).pad(texts, [0, 1, 0]))[0]
    report("classifier head, packed rows", "the padded batch", maxdiff(packed, padded), 1e-4)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent / "shared" / "data"),
                        help="shared data folder (for the tokenizer files)")
    parser.add_argument("--model", default=None, help="model for the chat check (default: SmolLM2 GGUF)")
    parser.add_argument("--skip_model", action="store_true", help="skip the default-model chat check")
    args = parser.parse_args()
    checks = [check_norms, check_attention, check_int4, check_rope, check_kv_cache, check_sampling,
              check_adamw, check_lora, check_safetensors_and_pt, lambda: check_tokenizers(Path(args.data)),
              check_ssm, check_pico, check_adapters, check_sft_and_scores,
              lambda: check_minllama(Path.cwd())]
    if not args.skip_model:
        checks.append(lambda: check_default_model(args.model))
    for check in checks:
        try:
            check()
        except Exception as err:  # a crash in one component is reported, the others still run
            report(getattr(check, "__name__", "check"), f"crashed: {type(err).__name__}: {err}"[:60],
                   False, 0)
    print(f"{sum(RESULTS)} passed, {len(RESULTS) - sum(RESULTS)} failed")
    sys.exit(0 if all(RESULTS) else 1)


if __name__ == "__main__":
    main()
