"""Tests for run_tokenizers.py (`run.py --option tokenizers`).

Run: .venv/bin/python -m pytest tests/test_run_tokenizers.py -q      (about 15 s on 2 CPU cores)

Oracles: counts worked out by hand (UTF-8 bytes of é, ö, Cyrillic and an emoji; the <unk> of a
SentencePiece trained without byte fallback); the text itself (round trips, the pieces joined back
give the text's start: logical order); Unicode's bidi classes for the RTL rule; on the shared
samples, transformers' LlamaTokenizer (a `tokenizers` BPE with byte fallback built from the Llama 2
pieces), transformers' TikTokenConverter (Llama 3) and a `tokenizers` BPE from SmolLM2's GGUF vocab
and merges (whose byte-level token strings we map back to bytes with transformers' copy of GPT-2's
table), plus SOURCE.md's token counts. Real-data tests skip with a reason when ../shared/data or
the default model is absent; bad flags must fail before any tokenizer is loaded.
"""
import io
import json
import re
from types import SimpleNamespace

import pytest
import sentencepiece

import run
import tokenizer as T
import run_tokenizers as L
from conftest import need_data

SAMPLES = ("en.txt", "fa.txt")


def sample(name):
    return need_data("tokenizers", "samples", name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------
# metrics counted by hand

def test_metrics_of_a_byte_tokenizer_counted_by_hand():
    """'héllo wörld': 2 words, 11 characters, 13 UTF-8 bytes = 13 byte tokens; é and ö are two
    bytes each, so 4 tokens are not whole characters."""
    m = L.measure(T.ByteTokenizer(), "héllo wörld", show_pieces=9)
    assert (m["words"], m["chars"], m["bytes"], m["tokens"]) == (2, 11, 13, 13)
    assert (m["tokens_per_word"], m["bytes_per_token"]) == (6.5, 1.0)
    assert m["chars_per_token"] == pytest.approx(11 / 13)
    assert (m["byte_pieces"], m["unknown"], m["round_trip"]) == (4, 0, True)
    assert m["fallback_share"] == pytest.approx(4 / 13)
    assert m["pieces"] == ["h", "<0xC3>", "<0xA9>", "l", "l", "o", "▁", "w", "<0xC3>"]
    assert m["first_ids"] == list("héllo wö".encode("utf-8"))[:9]


def test_metrics_of_a_tiny_trained_sentencepiece():
    """Trained on Latin words only: Cyrillic ж у к (2 bytes each) and 😀 (4 bytes) must come out
    as exactly their 10 UTF-8 bytes as <0xNN> pieces, in order; every space kept."""
    corpus = ["low lower lowest newer newest wider widest"] * 20
    tok = T.train_sentencepiece(corpus, 290, exact_whitespace=True)
    text = "lowest  жук 😀 newer"
    m = L.measure(tok, text, show_pieces=100)
    expected = [f"<0x{b:02X}>" for b in "жук😀".encode("utf-8")]
    assert [p for p in m["pieces"] if p.startswith("<0x")] == expected
    assert (m["byte_pieces"], m["unknown"], m["round_trip"], m["words"]) == (10, 0, True, 4)
    assert "".join(m["pieces"]).count("▁") == text.count(" ")
    assert m["tokens"] == len(tok.processor.encode_as_pieces(text))   # sentencepiece's own count


def test_unknown_pieces_of_a_sentencepiece_without_byte_fallback():
    """A model trained without byte fallback maps the unseen ж to one <unk>: counted as unknown,
    not as a byte piece, and the round trip fails (decode gives ' ⁇ ')."""
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["low lower lowest newer newest"] * 20), model_writer=proto,
        vocab_size=30, hard_vocab_limit=False, minloglevel=2)
    tok = T.SentencePieceTokenizer(proto.getvalue(), kind="bpe")
    m = L.measure(tok, "low ж low")
    assert (m["unknown"], m["byte_pieces"], m["round_trip"]) == (1, 0, False)
    assert "\\<unk>" in L.markdown_escape("<unk>")        # would vanish as an HTML tag otherwise


def test_readable_bytes_and_visible_characters():
    """Partial characters as <0xNN>, whole ones as text, invisible ones named."""
    assert L.readable_bytes(" س".encode("utf-8")[:2]) == "▁<0xD8>"
    assert L.readable_bytes("€".encode("utf-8")[1:]) == "<0x82><0xAC>"
    assert L.readable_bytes(b"\xe2\x82") == "<0xE2><0x82>"
    assert L.readable_bytes("می\u200cشود\n\t".encode("utf-8")) == "می<U+200C>شود↵⇥"
    assert L.visible("a\u00a0b\u200fc") == "a<U+00A0>b<U+200F>c"
    assert L.markdown_escape("a|b*c_<0xE2><U+200C>") == "a\\|b\\*c\\_<0xE2><U+200C>"


# ----------------------------------------------------------------------------
# right-to-left display

def test_rtl_pieces_are_isolated_and_keep_logical_order():
    """Each piece with an R/AL letter is FSI ... PDI; others untouched; removing the isolates
    gives the pieces back in their logical (encoding) order."""
    pieces = ["▁حر", "کت", "▁3", "abc", "،", "<0xD8>", "▁שלום"]
    shown = L.display_pieces(pieces)
    parts = shown.split(" ")
    assert parts[:2] == [L.FSI + "▁حر" + L.PDI, L.FSI + "کت" + L.PDI]
    assert parts[2:6] == ["▁3", "abc", "،", "<0xD8>"]           # no R/AL letter: no isolate
    assert parts[6] == L.FSI + "▁שלום" + L.PDI                   # Hebrew is R
    assert shown.count(L.FSI) == shown.count(L.PDI) == 3
    assert shown.replace(L.FSI, "").replace(L.PDI, "") == " ".join(pieces)


# ----------------------------------------------------------------------------
# oracles on the shared samples

def test_llama2_counts_match_transformers_llama_tokenizer():
    """Tokens and <0xNN> pieces of fa.txt / en.txt == transformers' LlamaTokenizer built from the
    same pieces (as tests/test_tokenizer.py builds it); SOURCE.md's counts."""
    transformers = pytest.importorskip("transformers")
    from transformers.tokenization_utils_base import generate_merges
    tok = T.Tokenizer.from_file(need_data("tokenizers", "llama2-tokenizer.model"))
    sp = tok.processor
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    hf = transformers.LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab, scores))
    for name, expected in zip(SAMPLES, (1716, 3528)):
        text = sample(name)
        pieces = hf.convert_ids_to_tokens(hf.encode(text, add_special_tokens=False))
        m = L.measure(tok, text)
        assert m["tokens"] == len(pieces) == expected
        assert m["byte_pieces"] == sum(bool(re.fullmatch(r"<0x[0-9A-F]{2}>", p)) for p in pieces)


def _partial_tokens(strings):
    """Byte-level token strings (GPT-2 alphabet) that are not valid UTF-8 on their own."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    byte_of = {char: b for b, char in convert.bytes_to_unicode().items()}
    count = 0
    for s in strings:
        try:
            bytes(byte_of[c] for c in s).decode("utf-8")
        except UnicodeDecodeError:
            count += 1
    return count


def test_llama3_counts_match_tiktoken_converter():
    """Tokens and partial-character tokens == transformers' TikTokenConverter; SOURCE.md's
    counts."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    path = need_data("tokenizers", "llama3-tokenizer.model")
    hf = convert.TikTokenConverter(vocab_file=str(path)).converted()
    tok = T.Tokenizer.from_file(path)
    for name, expected in zip(SAMPLES, (1261, 1221)):
        text = sample(name)
        hf_tokens = hf.encode(text, add_special_tokens=False).tokens
        m = L.measure(tok, text)
        assert m["tokens"] == len(hf_tokens) == expected
        assert m["byte_pieces"] == _partial_tokens(hf_tokens)


def test_smollm2_partial_tokens_match_a_tokenizers_bpe(default_model_path):
    """SmolLM2 from its GGUF: tokens and partial-character tokens == a `tokenizers` BPE from the
    vocab + merges the `gguf` package reads, with SmolLM2's Digits + ByteLevel pre-tokenizer."""
    gguf, tk = pytest.importorskip("gguf"), pytest.importorskip("tokenizers")
    fields = gguf.GGUFReader(str(default_model_path)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    hf = tk.Tokenizer(tk.models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    hf.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Digits(individual_digits=True),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok = T.Tokenizer.from_file(default_model_path)
    for name in SAMPLES:
        text = sample(name)
        hf_tokens = hf.encode(text).tokens
        m = L.measure(tok, text)
        assert m["tokens"] == len(hf_tokens)
        assert m["byte_pieces"] == _partial_tokens(hf_tokens)
    assert m["byte_pieces"] > 0                                 # fa.txt: bytes of letters


# ----------------------------------------------------------------------------
# the command line

def test_cli_on_the_shared_samples_writes_the_three_files(tmp_path, capsys):
    need_data("tokenizers", "samples")
    run.main(["--option", "tokenizers", "--out_dir", str(tmp_path)])
    printed = capsys.readouterr().out
    md = (tmp_path / "tokenizers.md").read_text(encoding="utf-8")
    report = json.loads((tmp_path / "tokenizers.json").read_text(encoding="utf-8"))
    assert (tmp_path / "tokenizers.png").read_bytes()[:4] == b"\x89PNG"
    assert md in printed and "vocabulary sizes:" in printed
    names = [t["name"] for t in report["tokenizers"]]
    assert {"sp-bpe-1000", "llama2", "llama3"} <= set(names)
    rows = {(r["tokenizer"], r["text"]): r for r in report["results"]}
    assert len(rows) == len(names) * 2 and all(r["round_trip"] for r in rows.values())
    assert (rows["llama2", "fa"]["tokens"], rows["llama3", "fa"]["tokens"]) == (3528, 1221)
    fa = sample("fa.txt")
    pieces = rows["llama3", "fa"]["pieces"]                    # whole characters, no bytes
    assert "".join(pieces).replace("▁", " ") == fa[:len("".join(pieces))]
    cell = next(line for line in md.splitlines() if line.startswith("| llama3 |")
                and "| fa |" in line).rsplit("|", 2)[1].strip()
    assert cell.count(L.FSI) == len(pieces) and cell.count(L.PDI) == len(pieces)
    assert cell.replace(L.FSI, "").replace(L.PDI, "") == " ".join(pieces)


def test_cli_given_files_and_skipped_defaults(tmp_path, capsys, monkeypatch):
    """No shared data and no default model: the defaults are notes, the given files are used."""
    monkeypatch.setattr(L, "DATA", tmp_path / "nowhere")

    def no_model():
        raise FileNotFoundError("default model not installed: run `bash setup.sh`")
    monkeypatch.setattr(L.weights, "default_model_path", no_model)
    text, corpus = tmp_path / "a.txt", tmp_path / "corpus.txt"
    text.write_text("hello world\nhello\n", encoding="utf-8")
    corpus.write_text("hello world, the world says hello\n" * 30, encoding="utf-8")
    model = tmp_path / "spm.model"
    model.write_bytes(T.train_sentencepiece(["low lower lowest"] * 20, 280).model_proto)
    run.main(["--option", "tokenizers", "--text", str(text), "--tokenizer", str(model),
              "--train_text", str(corpus), "--train_vocab_size", "300",
              "--train_model_type", "bpe", "--out_dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "note: skipping llama2" in out and "note: skipping smollm2" in out
    report = json.loads((tmp_path / "out" / "tokenizers.json").read_text(encoding="utf-8"))
    assert [r["tokenizer"] for r in report["results"]] == ["spm.model", "sp-bpe-300"]
    assert report["texts"] == {"a": {"words": 3, "chars": 18, "bytes": 18}}


@pytest.mark.parametrize("flags, words", [
    (["--text", "/no/such/text.txt"], "--text /no/such/text.txt: no such file"),
    (["--train_vocab_size", "0"], "--train_vocab_size 0: must be a positive"),
    (["--tokenizer", "/no/such/tokenizer.model"], "--tokenizer /no/such/tokenizer.model"),
    (["--show_pieces", "-1"], "--show_pieces -1"),
    (["--train_text", "CORPUS", "--train_vocab_size", "100"], "--train_vocab_size 100 with"),
])
def test_bad_flags_are_one_line_errors_before_loading(flags, words, tmp_path, capsys,
                                                      monkeypatch):
    def never(path):
        raise AssertionError("a tokenizer was loaded before the flags were checked")
    monkeypatch.setattr(L.Tokenizer, "from_file", never)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world, the world says hello\n" * 30, encoding="utf-8")
    text = tmp_path / "t.txt"
    text.write_text("hello", encoding="utf-8")
    flags = [str(corpus) if f == "CORPUS" else f for f in flags]
    flags = flags if "--text" in flags else flags + ["--text", str(text)]
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "tokenizers", "--out_dir", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_check_arguments_reads_texts_with_unique_names(tmp_path):
    """Two --text files with the same stem get distinct row names."""
    (tmp_path / "x").mkdir()
    first, second = tmp_path / "a.txt", tmp_path / "x" / "a.txt"
    for path in (first, second):
        path.write_text("some words", encoding="utf-8")
    args = SimpleNamespace(train_vocab_size=10, show_pieces=1, out_dir=str(tmp_path / "o"),
                           tokenizer=None, text=[str(first), str(second)],
                           train_text=str(first))
    texts, train_path = L.check_arguments(args)
    assert list(texts) == ["a", "a#2"] and train_path == str(first)


def test_missing_default_texts_are_notes_then_one_error(tmp_path, capsys, monkeypatch):
    """Without the shared samples and without --text: a note per sample, then one error line."""
    monkeypatch.setattr(L, "DATA", tmp_path / "nowhere")
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "tokenizers", "--out_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out.count("note: skipping default text") == 2
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "no text to measure" in err[0] and "--text FILE" in err[0]
