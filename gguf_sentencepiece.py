"""A GGUF `tokenizer.ggml.model = llama` vocabulary (llama.cpp's SPM tokenizer) read back as the
SentencePiece model it came from, and SentencePiece BPE encoding written out in Python.

A SentencePiece BPE model (Kudo & Richardson 2018, arXiv:1808.06226; Llama 2: Touvron et al.
2023, arXiv:2307.09288, Section 2.2) is a table of pieces (text, score, type) plus a normalizer.
llama.cpp's converter copies that table into GGUF as tokenizer.ggml.tokens / scores /
token_type (its token types are SentencePiece's piece types: 1 normal, 2 unknown, 3 control,
4 user-defined, 5 unused, 6 byte) and keeps the normalizer as two flags,
tokenizer.ggml.add_space_prefix (default true) and tokenizer.ggml.remove_extra_whitespaces
(default false). Encoding text with it (sentencepiece bpe_model.cc; llama.cpp llm_tokenizer_spm):
    s = "▁" + text with every " " written as U+2581 "▁"      (the dummy prefix, identity rule)
    parts = the characters of s
    repeat: (a, b) = argmax over adjacent pairs with a + b a piece of score(a + b)
            (leftmost on ties); replace a, b by a + b             until no pair is a piece
    ids = [id(part) if part is a piece, else the byte pieces <0xNN> of its UTF-8 bytes
           (byte fallback), else <unk>]
So merges follow the score of the merged piece (the learnt order: earlier merges score higher),
not a merge list as byte-level BPE does (tokenizer.bpe_merge_reference).

`spm_encode_reference` is that loop in Python (readable, O(T^2); space runs kept, as Llama 2's
remove_extra_whitespaces = false); `model_proto` writes the table
back as a SentencePiece ModelProto (protobuf, sentencepiece_model.proto) so the sentencepiece
library runs it (the fast path, C++, with decoding and byte pieces for free). Protobuf wire
format, the subset written here: a field is varint(number << 3 | wire type), then a varint
(type 0: ints, enums, bools), 4 little-endian bytes (type 5: float) or varint(length) + bytes
(type 2: strings and nested messages). ModelProto fields: 1 pieces {1 piece, 2 score, 3 type},
2 trainer_spec {3 model_type (1 unigram, 2 BPE: `model_type` reads it back), 35 byte_fallback,
45-48 unk/bos/eos/pad piece},
3 normalizer_spec {1 name, 3 add_dummy_prefix, 4 remove_extra_whitespaces}. bos / eos must be
control pieces (as SentencePiece's are); with a padding id that is not one, the pad is <unk>'s
id (tokenizer.SentencePieceTokenizer's rule; what an export of Llama 2 writes).
`tokenizer_fields` gives tokenizer.load_gguf_tokenizer the SentencePieceTokenizer's arguments
(add_bos_token, the chat format of tokenizer.chat_template).

Shapes: ids are Python lists of ints; no tensors in this file.
Tested in tests/test_gguf_sentencepiece.py: Llama 2's tokenizer.model written as GGUF keys
(gguf_writer.tokenizer_keys) and read back encodes and decodes as sentencepiece does on ASCII,
digits, accents, CJK, emoji, whitespace runs and newlines, and spm_encode_reference agrees;
an exported SentencePiece GGUF loads through weights.load_pretrained with the same ids.
"""
import struct

import chat_templates

# tokenizer.ggml.token_type values == SentencePiece piece types (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"                 # "▁": SentencePiece's visible space
BPE = 2                          # TrainerSpec.ModelType


# ----------------------------------------------------------------------------
# the encoding rule, readable


def spm_encode_reference(text, tokens, scores, types, add_space_prefix=True):
    """text -> ids with the SentencePiece BPE rule of the module docstring (no special tokens)."""
    if not text:
        return []
    ids = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED)}
    byte_ids = {t: i for i, t in enumerate(tokens) if types[i] == BYTE}
    text = text.replace(" ", SPACE)
    parts = list(SPACE + text if add_space_prefix else text)
    while len(parts) > 1:
        candidates = [(scores[ids[parts[i] + parts[i + 1]]], -i) for i in range(len(parts) - 1)
                      if parts[i] + parts[i + 1] in ids]
        if not candidates:
            break
        i = -max(candidates)[1]                    # highest score; leftmost on ties
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    out = []
    for part in parts:
        if part in ids:
            out.append(ids[part])
        elif byte_ids:
            out += [byte_ids[f"<0x{b:02X}>"] for b in part.encode("utf-8")]
        else:
            out.append(types.index(UNKNOWN))
    return out


# ----------------------------------------------------------------------------
# protobuf, the few wire types a ModelProto needs


def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _int_field(number, value):
    return _varint(number << 3) + _varint(int(value))


def _bytes_field(number, data):
    data = data.encode("utf-8") if isinstance(data, str) else data
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _float_field(number, value):
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def _read_varint(data, pos):
    value, shift = 0, 0
    while True:
        byte = data[pos]
        value, pos, shift = value | (byte & 0x7F) << shift, pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _fields(data):
    """A protobuf message -> {field number: last value} (varints as ints, the rest as bytes)."""
    fields, pos = {}, 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        wire = key & 7
        if wire == 0:
            fields[key >> 3], pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            fields[key >> 3], pos = data[pos:pos + size], pos + size
        else:                                    # 5: 4 bytes, 1: 8 bytes
            size = 4 if wire == 5 else 8
            fields[key >> 3], pos = data[pos:pos + size], pos + size
    return fields


def model_type(proto):
    """TrainerSpec.model_type of a serialized ModelProto: 1 unigram, 2 BPE (the default: 1)."""
    return _fields(_fields(proto).get(2, b"")).get(3, 1)


def model_proto(metadata, source="GGUF metadata"):
    """GGUF tokenizer.ggml.* keys of a 'llama' vocabulary -> a serialized SentencePiece
    ModelProto (bytes) that sentencepiece.SentencePieceProcessor(model_proto=...) loads."""
    tokens = [t.decode("utf-8") if isinstance(t, bytes) else t
              for t in metadata["tokenizer.ggml.tokens"]]
    scores = list(metadata.get("tokenizer.ggml.scores", [0.0] * len(tokens)))
    types = list(metadata.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens)))
    if len(scores) != len(tokens) or not set(types) <= {NORMAL, UNKNOWN, CONTROL, USER_DEFINED,
                                                        UNUSED, BYTE}:
        raise ValueError(f"{source}: tokenizer.ggml.scores / token_type do not fit the "
                         f"{len(tokens)} tokens of a SentencePiece vocabulary; the file is corrupt")
    if "" in tokens or len(set(tokens)) != len(tokens):
        raise ValueError(f"{source}: tokenizer.ggml.tokens has an empty or repeated token; "
                         "SentencePiece pieces are distinct and non-empty; the file is corrupt")
    for key in ("bos", "eos"):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and types[token_id] != CONTROL:
            raise ValueError(f"{source}: tokenizer.ggml.{key}_token_id {token_id} "
                             f"({tokens[token_id]!r}) is not a control token (type 3), as "
                             "SentencePiece's bos / eos are; convert the model again")
    if UNKNOWN not in types:
        raise ValueError(f"{source}: the SentencePiece vocabulary has no unknown token (type 2); "
                         "convert the model again with its tokenizer.model")
    pieces = b"".join(_bytes_field(1, _bytes_field(1, t) + _float_field(2, s) + _int_field(3, k))
                      for t, s, k in zip(tokens, scores, types))
    byte_fallback = all(f"<0x{b:02X}>" in tokens for b in range(256))
    trainer = _int_field(3, BPE) + _int_field(35, byte_fallback)
    for number, key in ((45, "unknown"), (46, "bos"), (47, "eos"), (48, "padding")):
        token_id = types.index(UNKNOWN) if key == "unknown" else metadata.get(
            f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and types[token_id] == (UNKNOWN if key == "unknown" else CONTROL):
            trainer += _bytes_field(number, tokens[token_id])    # (a pad id may be <unk>'s)
    normalizer = (_bytes_field(1, "identity")
                  + _int_field(3, metadata.get("tokenizer.ggml.add_space_prefix", True))
                  + _int_field(4, metadata.get("tokenizer.ggml.remove_extra_whitespaces", False)))
    return pieces + _bytes_field(2, trainer) + _bytes_field(3, normalizer)


def tokenizer_fields(metadata, source="GGUF metadata"):
    """The tokenizer.SentencePieceTokenizer arguments of a 'llama' GGUF vocabulary (another
    tokenizer.ggml.model than 'gpt2', which tokenizer.py reads itself, is a one-line error)."""
    model = metadata.get("tokenizer.ggml.model")
    if model != "llama":
        raise ValueError(f"{source}: tokenizer.ggml.model is {model!r}; only byte-level BPE "
                         "('gpt2') and SentencePiece ('llama') GGUF vocabularies work")
    template = metadata.get("tokenizer.chat_template")
    return dict(model_proto=model_proto(metadata, source), kind="gguf", source=source,
                add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", True)),
                chat_format=chat_templates.chat_format_from_template(template)[0])
