"""Tests for gguf_sentencepiece.py and tokenizer.load_gguf_sentencepiece: a GGUF 'llama'
(SentencePiece) vocabulary read back as a tokenizer.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_gguf_sentencepiece.py -q  (CPU, ~3 s)

Oracles: the sentencepiece library on Llama 2's own tokenizer.model (the shared data's
tokenizers/llama2-tokenizer.model): ids and decoded text on ASCII, digits, accents, CJK, emoji,
whitespace runs, tabs and newlines must be equal to those of the GGUF keys gguf_writer wrote
from it (read back through the hand-written ModelProto, and through the Python reference
encoder); jinja2 for the Llama 2 chat template an export carries (== chat_templates.render_llama2).
"""
import jinja2
import pytest
import sentencepiece
import torch

import chat_templates
import gguf_sentencepiece
import gguf_writer
import hf_writer
import llama
import tokenizer as T
import weights
from conftest import need_data

TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog.",
         "12345 3.14159 1,000,000 2024-01-31", "café naïve Ångström résumé façade",
         "日本語のテキスト 中文 한국어", "emoji 🤗🚀 and a family 👩\u200d👩\u200d👧",
         "  two  spaces\n\nnewlines\t tab", "a   \n   b", " ", "\n", "",
         "[INST] hi [/INST] </s> <s>", "سلام دنیا", "\x00\x7f control \u2581 already",
         "trailing spaces   "]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What's 2+2?"}]


@pytest.fixture(scope="module")
def llama2():
    """-> (Llama 2's tokenizer.model path, our SentencePiece tokenizer, its GGUF keys)."""
    path = need_data("tokenizers", "llama2-tokenizer.model")
    tok = T.Tokenizer.from_file(path)
    return path, tok, gguf_writer.tokenizer_keys(tok, tok.vocab_size)


def test_gguf_keys_encode_and_decode_as_sentencepiece(llama2):
    path, _, keys = llama2
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    tok = T.load_gguf_tokenizer(keys)
    assert isinstance(tok, T.SentencePieceTokenizer) and tok.vocab_size == sp.get_piece_size()
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 2, 0, True)
    assert tok.special_tokens == {"<s>": 1, "</s>": 2}
    for text in TEXTS + ["".join(TEXTS) * 3]:
        ids = sp.encode(text)
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == sp.decode(ids), text
    assert tok.encode("x", bos=True, eos=True) == [1, *sp.encode("x"), 2]
    byte = sp.piece_to_id("<0xF0>")                                     # byte fallback piece
    assert tok.token_bytes(byte) == b"\xf0" and tok.token_bytes(1) == b""


def test_reference_encoder_equals_sentencepiece(llama2):
    """spm_encode_reference: highest score of the merged piece first, byte fallback after."""
    path, _, keys = llama2
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    vocab = (keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.scores"],
             keys["tokenizer.ggml.token_type"])
    for text in TEXTS:
        assert gguf_sentencepiece.spm_encode_reference(text, *vocab) == sp.encode(text), text
    # no dummy prefix: "Hello" then starts without "▁", as sentencepiece with add_dummy_prefix off
    no_prefix = T.load_gguf_tokenizer({**keys, "tokenizer.ggml.add_space_prefix": False})
    for text in ("Hello world", " lead", "日本"):
        assert no_prefix.encode(text) == gguf_sentencepiece.spm_encode_reference(
            text, *vocab, add_space_prefix=False)
    assert no_prefix.encode("Hello") != sp.encode("Hello")


def test_llama2_chat_template_is_render_llama2():
    template = jinja2.Environment().from_string(chat_templates.LLAMA2_CHAT_TEMPLATE)
    for messages in (CHAT, CHAT[1:], CHAT[1:2]):
        rendered = template.render(messages=messages, bos_token="<s>", eos_token="</s>")
        assert rendered == chat_templates.render_llama2(messages)


def test_exported_sentencepiece_gguf_loads_with_the_same_ids(llama2, tmp_path):
    """weights.load_pretrained on a GGUF written with Llama 2's vocabulary: the tokenizer
    encodes text and chat as the tokenizer.model does (the Llama 2 template travels)."""
    _, tok, keys = llama2
    torch.manual_seed(0)
    model = llama.Llama(llama.LlamaConfig.tiny(vocab_size=tok.vocab_size, dim=32, n_heads=2,
                                               n_layers=1)).eval()
    assert keys["tokenizer.chat_template"] == chat_templates.LLAMA2_CHAT_TEMPLATE
    gguf_writer.write_llama_gguf(tmp_path / "sp.gguf", model.config, model.state_dict(), keys)
    again, tok2 = weights.load_pretrained(tmp_path / "sp.gguf")
    assert tok2.kind == "gguf" and tok2.chat_format == "llama2"
    for text in TEXTS:
        assert tok2.encode(text, bos=True) == tok.encode(text, bos=True), text
    assert tok2.encode_chat(CHAT) == tok.encode_chat(CHAT)
    assert gguf_writer.tokenizer_keys(tok2, tok.vocab_size) == keys    # re-export: same keys


def test_model_type_read_back_and_unigram_not_written_as_bpe(llama2, tmp_path):
    """A unigram model is not BPE: GGUF's 'llama' tokenizer would split text differently, so
    --format gguf refuses it in one line and the HF folder gets its tokenizer.model only."""
    _, tok, keys = llama2
    assert gguf_sentencepiece.model_type(tok.model_proto) == gguf_sentencepiece.BPE
    again = T.load_gguf_tokenizer(keys)
    assert gguf_sentencepiece.model_type(again.model_proto) == gguf_sentencepiece.BPE
    unigram = T.train_sentencepiece(["a b c d e f g hello world"] * 50, 300, model_type="unigram")
    assert gguf_sentencepiece.model_type(unigram.model_proto) == 1
    with pytest.raises(ValueError, match="unigram model; .* export with --format hf"):
        gguf_writer.tokenizer_keys(unigram, unigram.vocab_size)
    hf_writer.write_tokenizer_files(tmp_path, unigram, None, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.model",
                                                          "tokenizer_config.json"]


def test_bad_sentencepiece_keys_are_one_line(llama2):
    _, _, keys = llama2
    no_unknown = {**keys, "tokenizer.ggml.token_type": [1] + keys["tokenizer.ggml.token_type"][1:]}
    with pytest.raises(ValueError, match="has no unknown token"):
        T.load_gguf_tokenizer(no_unknown, "x.gguf")
    short = {**keys, "tokenizer.ggml.scores": keys["tokenizer.ggml.scores"][:10]}
    with pytest.raises(ValueError, match="x.gguf: tokenizer.ggml.scores / token_type do not fit"):
        T.load_gguf_tokenizer(short, "x.gguf")
    with pytest.raises(ValueError, match="empty or repeated token"):
        T.load_gguf_tokenizer({**keys, "tokenizer.ggml.tokens": ["a"] * 32000}, "x.gguf")
    with pytest.raises(ValueError, match=r"bos_token_id 100 \('.*'\) is not a control token"):
        T.load_gguf_tokenizer({**keys, "tokenizer.ggml.bos_token_id": 100}, "x.gguf")
    with pytest.raises(ValueError, match="'bert'"):
        T.load_gguf_tokenizer({**keys, "tokenizer.ggml.model": "bert"}, "x.gguf")
