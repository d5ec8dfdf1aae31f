"""Tests for pico.py, run_pico.py and data.py's streaming text: fast paths against references,
causality, streaming, errors, checkpoints, the CLI.

Run: .venv/bin/pytest tests/test_pico.py -q   (tiny configs, CPU, well under a minute)

Oracles: the loop k-gram (course formulation) for the unfold path; the recurrent forms for linear
attention (cumsum) and GLA (chunked); the explicit masked softmax for SDPA; torch's F.rms_norm for
RMSNorm; perturbing future tokens for causality; tracemalloc for the streaming reader's memory;
the bytes of the file for the block stream; an uninterrupted run for checkpoint resume; the
previous checkpoint's weights for a save that fails midway.
"""
import json
import tracemalloc

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import data
import pico
import run_pico
import run
import train
from tokenizer import ByteTokenizer

VARIANTS = [dict(model="lstm"), dict(model="kgram"), dict(model="kgram", kgram_k=5, mlp_layers=2),
            dict(positional="rope"), dict(positional="nope"), dict(positional="learned"),
            dict(norm_placement="post"), dict(attention="linear"), dict(attention="gla")]


def tiny_model(**overrides):
    torch.manual_seed(0)
    return pico.build_model(pico.PicoConfig.tiny(**overrides))


# ---------------------------------------------------------------------------- maths

def test_rmsnorm_matches_torch():
    norm = pico.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 16)
    # fp32 throughout: only summation order differs, so float32 default tolerances apply
    torch.testing.assert_close(norm(x), F.rms_norm(x, (16,), norm.weight, eps=1e-5))


def test_kgram_unfold_equals_loop():
    for k in (1, 3, 6):
        model = tiny_model(model="kgram", kgram_k=k, mlp_layers=2)
        tokens = torch.randint(0, 37, (3, 11))                         # T > k and positions t < k
        torch.testing.assert_close(model(tokens), model.forward_reference(tokens))


def test_linear_attention_cumsum_and_chunked_equal_recurrent():
    q, k, v = torch.randn(3, 2, 3, 19, 8, dtype=torch.float64).unbind(0)
    q, k = pico.elu_feature_map(q), pico.elu_feature_map(k)
    # float64: the two forms sum the same terms in a different order
    reference = pico.linear_attention_recurrent(q, k, v)
    torch.testing.assert_close(pico.linear_attention_cumsum(q, k, v), reference)
    for chunk in (1, 4, 16, 32):                                        # 19 % 4 != 0: padding
        torch.testing.assert_close(pico.linear_attention_chunked(q, k, v, chunk), reference)


@pytest.mark.parametrize("T, chunk", [(16, 4), (19, 4), (7, 16), (20, 1)])
def test_gla_chunked_equals_recurrent(T, chunk):
    q, k, v = torch.randn(3, 2, 3, T, 8, dtype=torch.float64).unbind(0)
    log_alpha = F.logsigmoid(3 * torch.randn(2, 3, T, 8, dtype=torch.float64))  # strong decays too
    log_alpha = log_alpha.clamp(min=-80.0 / chunk)                      # the model's clamp
    args = [t.requires_grad_() for t in (q, k, v, log_alpha)]
    fast, ref = pico.gla_chunked(*args, chunk), pico.gla_recurrent(*args)
    torch.testing.assert_close(fast, ref)
    grads_fast = torch.autograd.grad(fast.square().sum(), args)
    grads_ref = torch.autograd.grad(ref.square().sum(), args)
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b)


def test_sdpa_equals_math_attention_and_weights_are_causal():
    model = tiny_model(positional="rope")
    tokens = torch.randint(0, 37, (2, 13))
    logits_fast = model(tokens)
    logits_math, maps = model(tokens, return_attention=True)
    # float32, SDPA vs explicit softmax: differences are rounding only
    torch.testing.assert_close(logits_fast, logits_math, atol=1e-5, rtol=1e-4)
    for weights in maps:                                                # (B, H, T, T)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 13))
        assert weights.triu(1).abs().max() == 0


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: "-".join(map(str, o.values())))
def test_every_model_is_causal(overrides):
    model = tiny_model(**overrides).eval()
    tokens = torch.randint(0, 37, (2, 20))
    changed = tokens.clone()
    changed[:, 9:] = torch.randint(0, 37, (2, 11))
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :9], after[:, :9], atol=1e-6, rtol=1e-5)
    assert (before[:, 9:] - after[:, 9:]).abs().max() > 1e-4             # the future does matter


# ---------------------------------------------------------------------------- generation

def test_generation_uses_nucleus_sampling_from_sample_py(monkeypatch):
    import sample
    assert not hasattr(pico, "nucleus_sampling")                       # not reimplemented here
    calls = []
    original = sample.nucleus_sampling

    def spy(logits, p, generator=None):
        calls.append(p)
        return original(logits, p, generator)
    monkeypatch.setattr(sample, "nucleus_sampling", spy)
    model = tiny_model()
    generator = torch.Generator().manual_seed(0)
    out = pico.generate(model, [1, 2, 3], 30, top_p=0.9, generator=generator)
    assert len(out) == 30 and calls == [0.9] * 30                        # context cropped past T=24
    # p -> 0 keeps only the top token: the same text as greedy decoding
    assert pico.generate(model, [1, 2, 3], 10, top_p=1e-9, generator=generator) == \
        pico.generate(model, [1, 2, 3], 10, top_p=None)


def test_diversity_metrics_by_hand():
    words = "a b a b a b".split()
    assert pico.distinct_n([words], 1) == pytest.approx(2 / 6)
    assert pico.distinct_n([words], 2) == pytest.approx(2 / 5)
    assert pico.repetition_rate(words, 4) == pytest.approx(1 - 2 / 3)   # abab, baba, abab
    assert pico.repetition_rate("a b c d e".split(), 4) == 0.0


# ---------------------------------------------------------------------------- data

def test_streaming_reader_keeps_memory_flat(tmp_path):
    path = tmp_path / "big.txt"
    line = "Once upon a time there was a tiny model that read a very big file.\n"
    with open(path, "w") as f:
        for i in range(60_000):                                         # ~4 MB
            f.write(f"{i} {line}")
    content = path.read_bytes()
    block = 64
    tracemalloc.start()
    count, first, last = 0, None, None
    for b in data.iter_blocks(path, ByteTokenizer(), block, chunk_bytes=32 * 1024):
        first = b if first is None else first
        last, count = b, count + 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000 < len(content)                              # a few chunks, not the file
    assert count == (len(content) - 1) // block
    assert bytes(first.tolist()) == content[:block + 1]
    assert bytes(last.tolist()) == content[(count - 1) * block:count * block + 1]


def test_chunks_keep_utf8_and_text(tmp_path):
    text = "é漢 ünïcode line\n" * 50 + "no newline at the end é"
    path = tmp_path / "u.txt"
    path.write_text(text, encoding="utf-8")
    chunks = list(data.iter_text_chunks(path, chunk_bytes=7))            # cuts inside characters
    assert "".join(chunks) == text and len(chunks) > 10


def test_bpe_round_trip_and_split():
    pytest.importorskip("sentencepiece")
    from conftest import need_data
    path = need_data("pico", "3seqs.txt")
    tokenizer = pico.train_bpe_tokenizer([path], vocab_size=300, max_bytes=100_000)
    text = "0 1 2 3 4\n\n5 8 13  é\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode(text) == tokenizer.processor.encode(text)   # line by line == one call
    train_blocks = sum(1 for _ in data.iter_split(path, tokenizer, 64, "train", 10, 1 << 16))
    test_blocks = sum(1 for _ in data.iter_split(path, tokenizer, 64, "test", 10, 1 << 16))
    assert test_blocks == (train_blocks + test_blocks) // 10


def test_mixing_follows_the_weights():
    ones = lambda: iter([torch.ones(5, dtype=torch.long)] * 10_000)     # noqa: E731
    zeros = lambda: iter([torch.zeros(5, dtype=torch.long)] * 10_000)   # noqa: E731
    batches = data.LMBatches([(0.8, ones), (0.2, zeros)], batch_size=100, shuffle_buffer=50,
                             seed=0, max_batches=20)
    share = torch.cat(list(batches)).float().mean()
    assert abs(share - 0.8) < 0.03                                      # 2000 draws: sd ~ 0.009


# ---------------------------------------------------------------------------- errors and CLI

def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as err:
        run.main(["--option", "pico", "--tokenizer", "byte", *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_input_gives_one_error_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "is empty" in run_cli(capsys, "--input_files", str(empty), "--tinystories_weight", "0")
    short = tmp_path / "short.txt"
    short.write_text("0 1 2 3 4\n" * 3)
    message = run_cli(capsys, "--input_files", str(short), "--tinystories_weight", "0",
                      "--block_size", "1024")
    assert "--block_size 1024" in message and "30 tokens" in message
    assert "no such file" in run_cli(capsys, "--input_files", str(tmp_path / "nope.txt"),
                                     "--tinystories_weight", "0")


def test_checkpoint_of_another_kind_or_format_is_refused(tmp_path, capsys):
    model = tiny_model(model="lstm")
    checkpoint.save_pico(tmp_path / "ckpt", model, ByteTokenizer())
    with pytest.raises(ValueError, match="holds a 'lstm' model but --model is 'transformer'"):
        checkpoint.load_pico(tmp_path / "ckpt", "transformer")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a pico checkpoint"):
        checkpoint.load_pico(tmp_path / "llama")


def test_checkpoint_resume_matches_uninterrupted_training(tmp_path):
    batches = [torch.randint(0, 37, (4, 25)) for _ in range(4)]

    def steps(model, optimizer, some):
        for batch in some:
            optimizer.zero_grad()
            loss, n = run_pico.lm_loss(model, batch)
            (loss / n).backward()
            optimizer.step()

    config = train.TrainConfig(lr=1e-2)
    model = tiny_model(attention="gla")
    optimizer = train.make_optimizer(model, config)
    steps(model, optimizer, batches[:2])
    checkpoint.save_pico(tmp_path / "ckpt", model, ByteTokenizer(), optimizer,
                              {"steps": 2})
    steps(model, optimizer, batches[2:])                                # uninterrupted run

    resumed, tokenizer, meta = checkpoint.load_pico(tmp_path / "ckpt", "transformer")
    assert tokenizer.kind == "byte" and meta["steps"] == 2 and resumed.cfg == model.cfg
    resumed_optimizer = train.make_optimizer(resumed, config)
    checkpoint.load_pico_optimizer(tmp_path / "ckpt", resumed_optimizer, meta)
    steps(resumed, resumed_optimizer, batches[2:])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)                      # identical arithmetic


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Oracle: the first checkpoint's weights. A save killed before pico.json (the last file)
    leaves the old folder; one killed between the two renames leaves it as <name>.old."""
    import atomic
    old_model, new_model = tiny_model(model="lstm"), tiny_model(model="lstm", dim=8)
    ckpt = tmp_path / "ckpt"
    checkpoint.save_pico(ckpt, old_model, ByteTokenizer(), extra={"steps": 1})

    def killed(path, obj):
        raise KeyboardInterrupt("killed while writing pico.json")
    monkeypatch.setattr(atomic, "save_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_pico(ckpt, new_model, ByteTokenizer(), extra={"steps": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]     # no half-written folder
    loaded, _, meta = checkpoint.load_pico(ckpt, "lstm")
    assert meta["steps"] == 1 and loaded.cfg == old_model.cfg
    for name, tensor in old_model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    ckpt.rename(tmp_path / "ckpt.old")                # the instant between the two renames
    assert checkpoint.load_pico(ckpt, "lstm")[2]["steps"] == 1
    checkpoint.save_pico(ckpt, new_model, ByteTokenizer(), extra={"steps": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert checkpoint.load_pico(ckpt, "lstm")[2]["steps"] == 2


def test_cli_trains_saves_resumes_and_plots(tmp_path):
    data = tmp_path / "seqs.txt"
    data.write_text("".join(" ".join(str(i + j) for j in range(12)) + "\n" for i in range(300)))
    common = ["--option", "pico", "--tokenizer", "byte", "--input_files", str(data),
              "--tinystories_weight", "0", "--block_size", "16", "--embed_size", "16",
              "--hidden_dim", "32", "--n_heads", "2", "--batch_size", "4",
              "--max_steps_per_epoch", "3",
              "--eval_every_steps", "2", "--eval_batches", "2", "--max_new_tokens", "5",
              "--sweep_ps", "0.5", "1.0", "--sweep_samples", "2", "--prompt", "0 1 2",
              "--out_dir", str(tmp_path / "out")]
    run.main(common)
    out = tmp_path / "out"
    for suffix in ("curves.png", "gap.png", "attention.png", "psweep.png", "history.json"):
        assert (out / f"pico-transformer-{suffix}").is_file(), suffix
    assert json.loads((out / "pico-transformer" / "pico.json").read_text())["steps"] == 3
    run.main(common + ["--resume", str(out / "pico-transformer")])
    assert json.loads((out / "pico-transformer" / "pico.json").read_text())["steps"] == 6


def test_compare_writes_table_and_figure(tmp_path):
    data = tmp_path / "seqs.txt"
    data.write_text("".join(" ".join(str(i + j) for j in range(12)) + "\n" for i in range(300)))
    run.main(["--option", "pico_compare", "--tokenizer", "byte", "--input_files", str(data),
              "--tinystories_weight", "0", "--block_size", "16", "--embed_size", "16",
              "--hidden_dim", "32", "--n_heads", "2", "--batch_size", "4",
              "--max_steps_per_epoch", "2", "--eval_batches", "1", "--max_new_tokens", "4",
              "--compare_models", "kgram", "gla", "--out_dir", str(tmp_path)])
    table = (tmp_path / "pico-compare.md").read_text()
    assert all(f"| {v} |" in table for v in ("kgram", "gla"))
    assert (tmp_path / "pico-compare.png").is_file()
