"""Tokenizers for the models llmlab runs and trains: text <-> token ids, streaming decode.

Four file formats, two algorithms, plus two tokenizers made here:
    sentencepiece    Llama 2 `tokenizer.model` (SentencePiece BPE, byte fallback), via sentencepiece
    tiktoken_llama3  Llama 3 `tokenizer.model` (base64 byte strings and ranks), via tiktoken
    gguf             GGUF metadata `tokenizer.ggml.*` (gguf_reader.read_gguf): byte-level BPE
                     (SmolLM2) via tiktoken, SentencePiece (Llama 2) via gguf_sentencepiece.py
    hf_json          Hugging Face byte-level BPE `tokenizer.json` (vocab + merges), via tiktoken
    train_sentencepiece  a SentencePiece BPE or unigram model trained on a corpus (pico, the SSM)
    ByteTokenizer    UTF-8 bytes after k reserved special ids: id = byte + k

Byte-pair encoding (Sennrich, Haddow & Birch 2016, arXiv:1508.07909, Algorithm 1 learns merges;
encoding replays them) on UTF-8 bytes (GPT-2: Radford et al. 2019, Section 2.2), so no text is
out of vocabulary:
    pieces = regex.findall(pattern, text)              pre-tokenization: merges never cross pieces
    for each piece: parts = its single bytes
        repeat: (a, b) = argmin over adjacent pairs of rank(a + b)    (lowest rank = learnt first)
                replace a, b by a + b                  until no adjacent pair is in the vocabulary
        ids += [rank(part) for part in parts]          rank == token id in every file read here
`bpe_merge_reference` is this loop in Python; tiktoken runs it in Rust (the fast path: ~15x
faster on the samples, regex included). Hugging Face files list merges in learnt order instead
of ranks; when merge k makes a token whose id grows with k (GPT-2, Llama 3, SmolLM2) both rules
pick the same pair, which `byte_level_ranks` checks. Vocab files spell bytes as printable
characters: GPT-2's `bytes_to_unicode` keeps 188 printable Latin-1 bytes, maps 68 to chr(256 + n).
Patterns: GPT-2's; Llama 3's (digit runs of at most 3; vocabulary = tiktoken's 100K + 28K tokens,
Grattafiori et al. 2024, arXiv:2407.21783, Section 3.2); SmolLM2's `smollm` (Allal et al. 2025,
arXiv:2502.02737) = HF `Digits(individual_digits)` then GPT-2's regex, as one regex whose
`\\s+(?=\\p{N})` branch keeps a space run before a digit whole.

SentencePiece (Kudo & Richardson 2018, arXiv:1808.06226) writes spaces as U+2581 "▁", adds a dummy
prefix "▁", runs BPE over characters and falls back to byte tokens <0xNN> (Llama 2: Touvron et
al. 2023, arXiv:2307.09288, Section 2.2: 32k tokens, digits split).

Chat templates (ChatML, Llama 3, Llama 2) are rendered by chat_templates.py; `encode_chat`
tokenizes the rendered string with special tokens parsed.
Plain `encode(text)` never turns "<|im_end|>" typed by a user into a control token (prompt
injection); `allow_special=True` or `encode_chat` does.

Shapes: ids are Python lists of T ints in [0, V), V = vocab_size; no tensors in this file.
Tests: tests/test_tokenizer.py compares every format with an independent implementation on the
English and Persian samples and on digits, whitespace runs, newlines and emoji: sentencepiece ids
with transformers' LlamaTokenizer (tokenizers BPE + byte fallback), Llama 3 with transformers'
TikTokenConverter, GGUF and tokenizer.json with a `tokenizers` BPE from the same vocab and merges;
`bpe_merge_reference` vs tiktoken; chat strings vs jinja2 templates; streaming vs decode;
trained SentencePiece and bytes: exact round trips, line-by-line == one-call ids, bad files.
Size: ~600 lines: three tokenizer families behind one interface (encode, decode, chat, stream).
"""
import base64
import codecs
import io
import json
import re
import unicodedata
from pathlib import Path

import sentencepiece
import tiktoken

import chat_templates
import file_checks
import gguf_reader
import gguf_sentencepiece

# ----------------------------------------------------------------------------
# constants: pre-tokenizer patterns, Llama 3 special tokens

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SMOLLM_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})"""
                  r"""|\s+(?!\S)|\s+""")
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# llama.cpp's names (GGUF `tokenizer.ggml.pre`) for the patterns above
GGUF_PRE_PATTERNS = {"default": GPT2_PATTERN, "gpt-2": GPT2_PATTERN, "smollm": SMOLLM_PATTERN,
                     "llama-bpe": LLAMA3_PATTERN, "llama3": LLAMA3_PATTERN}

# Llama 3.1 / 3.2 names for ids 128000..128255 (Hugging Face checkpoints and GGUF files use these;
# Llama 3.0 called 128004, 128005, 128008, 128010 reserved_special_token_2..5)
LLAMA3_NAMED_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                         "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                         "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA3_NUM_SPECIALS = 256
# special tokens that end a turn or a document in the formats above: generation stops on them
STOP_TOKEN_NAMES = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")


def llama3_special_tokens(num_base_tokens=128000):
    """Meta's 256 special tokens -> ids num_base_tokens.. (reserved ones numbered from 3 up)."""
    names = LLAMA3_NAMED_SPECIALS + [f"<|reserved_special_token_{i}|>"
                                     for i in range(3, LLAMA3_NUM_SPECIALS - 8)]
    return {name: num_base_tokens + i for i, name in enumerate(names)}


# ----------------------------------------------------------------------------
# byte-level BPE: pure functions

def bytes_to_unicode():
    """GPT-2's table byte -> printable character (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]      # controls, space, 0x7f-0xa0, 0xad
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(shifted)}}


def bpe_merge_reference(piece, ranks):
    """Readable BPE of one pre-token `piece` (bytes) -> list of ranks (the tiktoken rule).

    Starts from single bytes and merges the adjacent pair whose concatenation has the lowest
    rank until none is in `ranks`. tiktoken first returns a piece that is a whole token as one
    id (Hugging Face's `ignore_merges`); we do the same so both paths agree.
    """
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        candidates = [(ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1)
                      if parts[i] + parts[i + 1] in ranks]
        if not candidates:
            break
        _, i = min(candidates)                     # lowest rank; leftmost on ties
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[part] for part in parts]


def byte_level_ranks(tokens, merges, specials, source):
    """Vocab {token string: id} in the bytes_to_unicode alphabet -> tiktoken ranks {bytes: id}.

    Ids serve as ranks; `merges` ("a b" strings or [a, b] pairs, learnt order) must create tokens
    with non-decreasing ids, which makes tiktoken's lowest-rank rule pick the same pair as Hugging
    Face's lowest-merge-index rule. `specials` are skipped (they are not byte strings).
    """
    decode = {char: byte for byte, char in bytes_to_unicode().items()}
    ranks = {}
    for text, token_id in tokens.items():
        if text in specials:
            continue
        if any(char not in decode for char in text):
            raise ValueError(f"{source}: token {token_id} {text!r} is not in the byte-level "
                             "alphabet; only GPT-2-style byte-level BPE vocabularies are supported")
        ranks[bytes(decode[char] for char in text)] = token_id
    last = -1
    for k, merge in enumerate(merges):
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and set(map(type, pair)) == {str}):
            raise ValueError(f"{source}: merge {k} {merge!r} is not 'left right'; corrupt file")
        left, right = pair
        made = tokens.get(left + right)
        if made is None or made < last:
            raise ValueError(f"{source}: merge {k} {merge!r} does not create a token with a "
                             "larger id than the merges before it; tokenizer.py needs ids in "
                             "merge order (true for GPT-2, Llama 3, SmolLM2 files)")
        last = made
    return ranks


def missing_byte_ranks(ranks, first_rank):
    """Ranks for the single bytes a vocabulary lacks (tiktoken needs all 256; ids to drop later)."""
    missing = [bytes([b]) for b in range(256) if bytes([b]) not in ranks]
    return {b: first_rank + i for i, b in enumerate(missing)}


# ----------------------------------------------------------------------------
# tokenizers

class Tokenizer:
    """Text <-> ids for one model: shared chat, special-token and streaming logic.
    Subclasses implement _encode_ordinary (no special tokens parsed), decode and token_bytes."""

    def __init__(self, *, kind, bos_id, eos_id, pad_id, vocab_size, special_tokens,
                 add_bos, chat_format=None, default_system=None):
        self.kind = kind                          # spec kind loaded from, or type trained as
        self.bos_id = bos_id                      # begin-of-sequence id (None: the vocab has none)
        self.eos_id = eos_id                      # end-of-sequence id
        self.pad_id = pad_id                      # id used for padding (masked, never attended)
        self.vocab_size = vocab_size              # V: ids are in [0, V)
        self.special_tokens = dict(special_tokens)  # control tokens {text: id}
        self.special_ids = set(self.special_tokens.values())
        self.add_bos = add_bos                    # the model expects bos_id first
        self.chat_format = chat_format            # key of chat_templates.CHAT_RENDERERS or None
        self.default_system = default_system      # ChatML system turn added when none is given
        self.stop_ids = ({eos_id} | {i for t, i in self.special_tokens.items()   # generation
                                     if t in STOP_TOKEN_NAMES}) - {None}         # stops on any

    def __repr__(self):
        return (f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id}, chat_format={self.chat_format!r})")

    def encode(self, text, bos=False, eos=False, allow_special=False):
        """text -> ids; special-token text is plain text unless allow_special (chat prompts)."""
        if not isinstance(text, str):
            raise ValueError(f"encode: expected a str, got {type(text).__name__}")
        if (bos and self.bos_id is None) or (eos and self.eos_id is None):
            raise ValueError(f"encode: this {self.kind} tokenizer has no bos/eos token; "
                             "call encode with bos=False, eos=False")
        ids = self._encode_special(text) if allow_special else self._encode_ordinary(text)
        if bos or eos:              # no copy otherwise: streaming encodes megabytes at a time
            ids = ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])
        return ids

    def _encode_special(self, text):
        """Split on special-token strings, encode the text between them without specials."""
        if not self.special_tokens:
            return self._encode_ordinary(text)
        names = sorted(self.special_tokens, key=len, reverse=True)    # longest match first
        ids = []
        for i, chunk in enumerate(re.split("(" + "|".join(map(re.escape, names)) + ")", text)):
            if i % 2:
                ids.append(self.special_tokens[chunk])
            elif chunk:
                ids += self._encode_ordinary(chunk)
        return ids

    def apply_chat_template(self, messages, add_generation_prompt=True):
        """messages [{"role", "content"}, ...] -> the prompt string the model was tuned on."""
        if self.chat_format is None:
            raise ValueError(f"{self.kind} tokenizer has no chat template; use a chat-tuned model "
                             "(SmolLM2-Instruct GGUF, Llama 3 Instruct) or plain --option generate")
        render = chat_templates.CHAT_RENDERERS[self.chat_format]
        if self.chat_format == "chatml":
            return render(messages, add_generation_prompt, self.default_system)
        return render(messages, add_generation_prompt)

    def encode_chat(self, messages, add_generation_prompt=True):
        """Chat prompt ids: template rendered, specials parsed; BOS once (the template's own)."""
        ids = self.encode(self.apply_chat_template(messages, add_generation_prompt),
                          allow_special=True)
        if self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special=False):
        raise NotImplementedError

    def token_bytes(self, token_id):
        """The bytes one token stands for in running text (b"" for control tokens)."""
        raise NotImplementedError

    def _check_ids(self, ids):
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode: token id {bad[0]} is outside this tokenizer's vocabulary "
                             f"[0, {self.vocab_size}); is the tokenizer from the same model?")
        return ids

    @classmethod
    def from_file(cls, path):
        """Load any supported file (or a folder holding tokenizer.json / tokenizer.model)."""
        path = resolve_tokenizer_path(path)
        return load_tokenizer({"kind": detect_tokenizer_kind(path), "path": str(path)})


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model from its bytes: Llama 2's tokenizer.model (load_sentencepiece) or one
    trained on a corpus (train_sentencepiece). With no pad piece (Llama 2) pad_id is <unk>'s id,
    which byte fallback never produces, so padding can't be mistaken for text or eos."""

    def __init__(self, model_proto, kind="sentencepiece", add_bos=False, chat_format=None,
                 source="SentencePiece model"):
        try:
            self.processor = sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as err:
            raise ValueError(f"{source}: not a SentencePiece model ({err}); pass a "
                             "tokenizer.model file, or delete the file to train it again") from None
        self.model_proto = model_proto            # the serialized model, saved with checkpoints
        newline = sp.piece_to_id("\n")            # an id of its own only if "\n" is a piece
        self.newline_id = None if newline == sp.unk_id() else newline
        control = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i)}
        super().__init__(kind=kind, bos_id=sp.bos_id() if sp.bos_id() >= 0 else None,
                         eos_id=sp.eos_id() if sp.eos_id() >= 0 else None,
                         pad_id=sp.pad_id() if sp.pad_id() >= 0 else max(sp.unk_id(), 0),
                         vocab_size=sp.get_piece_size(), special_tokens=control, add_bos=add_bos,
                         chat_format=chat_format)

    def _encode_ordinary(self, text):
        """One call, or line by line where "\\n" is a piece (the same ids, ~2x faster)."""
        if self.newline_id is None:
            return self.processor.encode(text)
        ids = []
        for i, line_ids in enumerate(self.processor.encode(text.split("\n"))):
            ids.extend([self.newline_id, *line_ids] if i else line_ids)
        return ids

    def decode(self, ids, skip_special=False):
        """ids -> text (SentencePiece drops control tokens and the leading dummy-prefix space)."""
        return self.processor.decode(self._check_ids(ids))

    def token_bytes(self, token_id):
        sp, token_id = self.processor, int(token_id)
        if sp.is_byte(token_id):
            return bytes([int(sp.id_to_piece(token_id)[3:5], 16)])   # "<0xE2>" -> b"\xe2"
        if sp.is_control(token_id) or sp.is_unknown(token_id):
            return b""
        return sp.id_to_piece(token_id).replace("\u2581", " ").encode("utf-8")


class BytePairTokenizer(Tokenizer):
    """Byte-level BPE run by tiktoken: ranks {bytes: id}, a pre-tokenizer regex, special tokens.

    Ids >= drop_from are the ranks given to bytes the vocabulary lacks (see missing_byte_ranks);
    they are removed from encodings, as Hugging Face's BPE skips symbols it has no token for.
    """

    def __init__(self, *, name, ranks, pattern, special_tokens, drop_from=None, normalize=None,
                 **info):
        super().__init__(special_tokens=special_tokens, **info)
        self.pattern = pattern                    # pre-tokenizer regex (\p classes: tiktoken's)
        self.drop_from = drop_from                # ids >= this stand for missing bytes
        self.normalize = normalize                # None or a Unicode form ("NFC") applied first
        ids = [*ranks.values(), *self.special_tokens.values()]    # tiktoken panics on duplicates
        if len(set(ids)) != len(ids) or not all(type(i) is int and 0 <= i < 1 << 31 for i in ids):
            raise ValueError(f"{name}: token ids are not distinct ints in [0, 2^31); corrupt file")
        self.encoding = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                          special_tokens=self.special_tokens)

    def _prepare(self, text, ids_of):
        text = unicodedata.normalize(self.normalize, text) if self.normalize else text
        ids = ids_of(text)
        if self.drop_from is not None:
            ids = [i for i in ids if i < self.drop_from]
        return ids

    def _encode_ordinary(self, text):
        return self._prepare(text, self.encoding.encode_ordinary)

    def _encode_special(self, text):
        return self._prepare(text, lambda t: self.encoding.encode(t, allowed_special="all"))

    def decode(self, ids, skip_special=False):
        """ids -> text; bytes that are not valid UTF-8 become U+FFFD."""
        ids = self._check_ids(ids)
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return self.encoding.decode(ids, errors="replace")

    def token_bytes(self, token_id):
        token_id = int(token_id)
        if token_id in self.special_ids:
            return b""
        return self.encoding.decode_single_token_bytes(token_id)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes after k reserved special ids: id = byte + k, V = 256 + k; exact round trip.
    ByteTokenizer(): pico's (V = 256); ByteTokenizer(pad_id=0, bos_id=1): the SSM's (V = 258)."""

    def __init__(self, pad_id=None, bos_id=None, eos_id=None):
        named = {"<pad>": pad_id, "<s>": bos_id, "</s>": eos_id}
        specials = {name: i for name, i in named.items() if i is not None}
        if sorted(specials.values()) != list(range(len(specials))):
            raise ValueError(f"ByteTokenizer special ids {specials}: use 0, 1, ... each once "
                             "(the bytes take the ids after them)")
        super().__init__(kind="byte", bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
                         vocab_size=256 + len(specials), special_tokens=specials, add_bos=False)
        self.offset = len(specials)               # id of byte 0

    def _encode_ordinary(self, text):
        ids = list(text.encode("utf-8"))
        return [b + self.offset for b in ids] if self.offset else ids

    def decode(self, ids, skip_special=False):
        """ids -> text; special ids print nothing, invalid UTF-8 becomes U+FFFD."""
        return b"".join(self.token_bytes(i) for i in self._check_ids(ids)).decode(
            "utf-8", errors="replace")

    def token_bytes(self, token_id):
        token_id = int(token_id)
        return bytes([token_id - self.offset]) if token_id >= self.offset else b""


# ----------------------------------------------------------------------------
# streaming

class StreamDecoder:
    """Incremental detokenizer: push(id) returns the text that became printable.

    A character split over byte tokens (Persian, emoji through byte fallback or byte-level BPE)
    is held back until its last byte arrives; control tokens print nothing. Concatenating every
    push and the final flush() gives the decoded text (SentencePiece: with its leading space).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id):
        return self._utf8.decode(self.tokenizer.token_bytes(int(token_id)))

    def flush(self):
        """Text still held back (an unfinished UTF-8 sequence prints as U+FFFD)."""
        return self._utf8.decode(b"", final=True)


# ----------------------------------------------------------------------------
# loaders, and SentencePiece trained on a corpus

def load_sentencepiece(path):
    """Llama 2's tokenizer.model: SentencePiece BPE with byte fallback, bos first, [INST] chat."""
    return SentencePieceTokenizer(Path(path).read_bytes(), add_bos=True, chat_format="llama2",
                                  source=path)


def train_sentencepiece(sentences, vocab_size, model_type="bpe", normalization="identity",
                        exact_whitespace=False, pad_id=-1, unk_id=0, bos_id=1, eos_id=2):
    """A SentencePieceTokenizer trained in memory on `sentences` (an iterable of str).

    model_type: "bpe" (merges, Sennrich et al. 2016) or "unigram" (a unigram language model
    pruned by EM, Kudo 2018, arXiv:1804.10959). normalization: a SentencePiece rule, "identity",
    "nmt_nfkc" or "nmt_nfkc_cf" (NFKC + case folding). exact_whitespace: keep every space, no
    dummy prefix, "\\n" a piece of its own, so decode(encode(s)) == s (pico); else SentencePiece's
    default (space runs folded, "▁" prefixed). Byte fallback: no text is unknown. Special ids:
    -1 = none (defaults: SentencePiece's). kind = model_type. Two threads: the same model anywhere.
    """
    whitespace = (dict(remove_extra_whitespaces=False, add_dummy_prefix=False,
                       user_defined_symbols=["\n"]) if exact_whitespace else {})
    proto = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size,
            model_type=model_type, normalization_rule_name=normalization, byte_fallback=True,
            pad_id=pad_id, unk_id=unk_id, bos_id=bos_id, eos_id=eos_id, hard_vocab_limit=False,
            max_sentence_length=1 << 16, num_threads=2, minloglevel=2, **whitespace)
    except RuntimeError as err:     # e.g. fewer ids than 256 bytes + the text's characters
        reason = str(err).split(" Increase")[0].strip().replace("\n", " ")
        raise ValueError(f"SentencePiece training with vocab_size {vocab_size} failed ({reason}); "
                         "give a larger vocabulary (--vocab_size) or more text") from None
    return SentencePieceTokenizer(proto.getvalue(), kind=model_type)


def load_llama3_tiktoken(path):
    """Meta's Llama 3 tokenizer.model: lines `<base64 bytes> <rank>`, plus 256 specials in code."""
    ranks = {}
    for n, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if line.strip():
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as err:
                raise ValueError(f"{path}: line {n} is not `<base64> <rank>` ({err}); "
                                 "pass Meta's Llama 3 tokenizer.model") from None
    specials = llama3_special_tokens(len(ranks))
    return BytePairTokenizer(name=str(path), ranks=ranks, pattern=LLAMA3_PATTERN,
                             special_tokens=specials, kind="tiktoken_llama3",
                             bos_id=specials["<|begin_of_text|>"],
                             eos_id=specials["<|end_of_text|>"],
                             pad_id=specials["<|finetune_right_pad_id|>"],
                             vocab_size=len(ranks) + len(specials), add_bos=True,
                             chat_format="llama3")


def load_gguf_tokenizer(metadata, source="GGUF metadata"):
    """Byte-level BPE from GGUF keys tokenizer.ggml.{tokens, token_type, merges, pre, *_token_id}.

    token_type 1 (normal) and 6 (byte) tokens are BPE ranks (id == rank); the others (3 control,
    4 user-defined, ...) are special tokens.
    """
    gguf_reader.check_metadata(metadata, source, need_tokens=True)   # types, ids in the vocab
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":                # 'llama' (SentencePiece) or an error: gguf_sentencepiece.py
        return SentencePieceTokenizer(**gguf_sentencepiece.tokenizer_fields(metadata, source))
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_PATTERNS:
        raise ValueError(f"{source}: unknown pre-tokenizer tokenizer.ggml.pre={pre!r}; "
                         f"known: {sorted(GGUF_PRE_PATTERNS)}")
    tokens = [t.decode("utf-8") if isinstance(t, bytes) else t
              for t in metadata["tokenizer.ggml.tokens"]]
    types = list(metadata.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    specials = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind not in (1, 6)}
    ranks = byte_level_ranks({t: i for i, t in enumerate(tokens)},
                             metadata.get("tokenizer.ggml.merges", []), specials, source)
    extra = missing_byte_ranks(ranks, len(tokens))
    chat_format, default_system = chat_templates.chat_format_from_template(
        metadata.get("tokenizer.chat_template"))
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    return BytePairTokenizer(name=str(source), ranks={**ranks, **extra},
                             pattern=GGUF_PRE_PATTERNS[pre], special_tokens=specials,
                             drop_from=len(tokens) if extra else None, kind="gguf",
                             bos_id=metadata.get("tokenizer.ggml.bos_token_id"), eos_id=eos,
                             pad_id=metadata.get("tokenizer.ggml.padding_token_id", eos),
                             vocab_size=len(tokens),
                             add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
                             chat_format=chat_format, default_system=default_system)


def hf_pretokenizer_pattern(pre, source):
    """The regex a tokenizer.json pre_tokenizer amounts to (Split, ByteLevel, Digits+ByteLevel)."""
    pre = pre or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = {s.get("type"): s for s in steps}
    names, byte_level = [s.get("type") for s in steps], kinds.get("ByteLevel", {})
    if byte_level.get("add_prefix_space"):
        raise ValueError(f"{source}: ByteLevel add_prefix_space=true is not supported")
    if names == ["Split", "ByteLevel"] and not byte_level.get("use_regex", True) \
            and "Regex" in kinds["Split"].get("pattern", {}):
        return kinds["Split"]["pattern"]["Regex"]              # Llama 3 style
    if names == ["ByteLevel"] and byte_level.get("use_regex", True):
        return GPT2_PATTERN
    if names == ["Digits", "ByteLevel"] and kinds["Digits"].get("individual_digits") \
            and byte_level.get("use_regex", True):
        return SMOLLM_PATTERN                                  # SmolLM2's tokenizer.json
    raise ValueError(f"{source}: unsupported pre_tokenizer {names}; supported: Split(Regex) + "
                     "ByteLevel(use_regex=false), ByteLevel, Digits(individual) + ByteLevel")


def _hf_sidecar(path, name):
    sidecar = Path(path).with_name(name)
    return file_checks.read_json(sidecar) if sidecar.is_file() else {}


END = "<|endoftext|>"        # GPT-2 / SmolLM2 base: bos = eos = end of document


def _hf_special_id(config, key, names, ids):
    """Id of tokenizer_config.json's `key` token (str or {"content"}), else the first of names."""
    value = config.get(key)
    value = value.get("content") if isinstance(value, dict) else value
    for name in ([value] if value else []) + list(names):
        if name in ids:
            return ids[name]
    return None


def load_hf_json(path):
    """Hugging Face byte-level BPE tokenizer.json (+ tokenizer_config.json beside it, if any)."""
    data = file_checks.read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ValueError(f"{path}: model type {model.get('type')!r} (byte_fallback="
                         f"{model.get('byte_fallback')}) is not byte-level BPE; for Llama 2 pass "
                         "its tokenizer.model")
    normalizer = (data.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC", "NFKC"):
        raise ValueError(f"{path}: normalizer {normalizer!r} is not supported (None, NFC, NFKC)")
    specials = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    vocab = {**model["vocab"], **specials}
    ranks = byte_level_ranks(vocab, model.get("merges", []), specials, path)
    vocab_size = max(vocab.values()) + 1
    extra = missing_byte_ranks(ranks, vocab_size)
    config = _hf_sidecar(path, "tokenizer_config.json")
    chat_format, default_system = chat_templates.chat_format_from_template(
        config.get("chat_template"))
    bos = _hf_special_id(config, "bos_token", ("<|begin_of_text|>", "<s>", END), specials)
    eos = _hf_special_id(config, "eos_token", ("<|end_of_text|>", "</s>", END), specials)
    pad = _hf_special_id(config, "pad_token", (), specials)
    post = json.dumps(data.get("post_processor"))     # a TemplateProcessing that inserts bos
    add_bos = config.get("add_bos_token", any(i == bos and t in post for t, i in specials.items()))
    return BytePairTokenizer(name=str(path), ranks={**ranks, **extra},
                             pattern=hf_pretokenizer_pattern(data.get("pre_tokenizer"), path),
                             special_tokens=specials, drop_from=vocab_size if extra else None,
                             normalize=normalizer, kind="hf_json", bos_id=bos, eos_id=eos,
                             pad_id=eos if pad is None else pad, vocab_size=vocab_size,
                             add_bos=bool(add_bos), chat_format=chat_format,
                             default_system=default_system)


def resolve_tokenizer_path(path):
    """A tokenizer file, or the tokenizer.json / tokenizer.model inside a model folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: folder has no tokenizer.json or tokenizer.model; "
                                "pass the tokenizer file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found; check the path")
    return path


def detect_tokenizer_kind(path):
    """The spec kind of a tokenizer file, from its first bytes (not its name)."""
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.lstrip().startswith(b"{"):
        return "hf_json"
    if re.match(rb"[A-Za-z0-9+/]+=* \d+\r?\n", head):
        return "tiktoken_llama3"
    if head[:1] == b"\x0a":              # protobuf field 1 (pieces), length-delimited
        return "sentencepiece"
    raise ValueError(f"{path}: not a known tokenizer file (SentencePiece model, Llama 3 "
                     "tiktoken ranks, tokenizer.json or GGUF)")


def load_tokenizer(spec):
    """Tokenizer from a spec: {"kind": "gguf", "metadata": {...}} (or "path") |
    {"kind": "sentencepiece" | "tiktoken_llama3" | "hf_json", "path": ...}; the spec is kept as
    .spec (weights.save_model_folder copies what it names beside a saved model)."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    loaders = {"gguf": lambda p: load_gguf_tokenizer(gguf_reader.read_gguf(p).metadata, p),
               "sentencepiece": load_sentencepiece, "tiktoken_llama3": load_llama3_tiktoken,
               "hf_json": load_hf_json}
    if kind not in loaders or ("path" not in spec and not (kind == "gguf" and "metadata" in spec)):
        raise ValueError(f"tokenizer spec {spec!r}: kind must be one of {sorted(loaders)}, with a 'path'")
    with file_checks.format_errors(spec.get("path", "GGUF metadata"), f"{kind} tokenizer"):
        tok = (load_gguf_tokenizer(spec["metadata"], spec.get("path", "GGUF metadata"))
               if "metadata" in spec else loaders[kind](resolve_tokenizer_path(spec["path"])))
    tok.spec = spec
    return tok
