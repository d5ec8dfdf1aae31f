"""Hugging Face Llama folders written by hand: what transformers' LlamaForCausalLM.from_pretrained
and AutoTokenizer.from_pretrained read, and what weights.py reads back.

    config.json              LlamaConfig fields (weights_config.HF_CONFIG_KEYS inverted), rope
                             scaling as transformers' rope_scaling {"rope_type": "llama3", ...},
                             tie_word_embeddings, bos / eos / pad ids
    model.safetensors        HF names (weight_names.py), Q/K rows half-split (weights.hf_state_dict:
                             rope.permute_interleaved_to_half, the `permute` of transformers'
                             convert_llama_weights_to_hf.py), a tied lm_head left out; above
                             max_shard_bytes: model-0000k-of-0000n.safetensors shards and
                             model.safetensors.index.json {"metadata": {"total_size"}, "weight_map"}
    tokenizer.json           byte-level BPE: copied from the source's tokenizer.json, or built from
                             GGUF tokenizer keys (tokenizer_json: vocab by id, merges, the
                             pre-tokenizer llama.cpp's `pre` name stands for, specials as
                             added_tokens, bos prepended by a TemplateProcessing when add_bos);
                             SentencePiece: its tokenizer.model, and a tokenizer.json of BPE with
                             byte fallback (merges ranked by the merged piece's score,
                             sentencepiece_merges; "▁" prepended per text chunk) that transformers
                             reads without protobuf; a Llama 3 tiktoken tokenizer.model is copied
    tokenizer_config.json    bos / eos / pad tokens, add_bos_token, chat_template, model_max_length
    generation_config.json   eos_token_id: every id generation stops on (the end-of-turn token
                             and end-of-text: an exported chat model that keeps only one of them
                             never stops), bos, pad
The folder is built beside its target and swapped in whole (atomic.replace_folder_atomic).

Shapes: as weights.py (nn.Linear (out, in)); a dtype cast is the only change to a tensor's values.
Tested in tests/test_run_export.py: transformers loads the folder (logits equal ours within 1e-4
in fp32, its tokenizer encodes a chat conversation to our ids) and weights.py reads it back.
"""
import json
from pathlib import Path

import torch

import atomic
import gguf_reader
import gguf_sentencepiece
import gguf_writer
import tokenizer
import weights
import weights_config
from safetensors_io import write_safetensors

HF_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
MAX_SHARD_BYTES = 2 << 30          # 2 GiB per safetensors shard, as transformers' save_pretrained
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
               "use_regex": True}
# the tokenizers pre_tokenizer each GGUF tokenizer.ggml.pre name stands for (tokenizer.py's
# GGUF_PRE_PATTERNS, spelled as tokenizer.py's hf_pretokenizer_pattern reads them back)
PRE_TOKENIZERS = {
    "default": _BYTE_LEVEL, "gpt-2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tokenizer.LLAMA3_PATTERN}, "behavior": "Isolated",
         "invert": False}, {**_BYTE_LEVEL, "use_regex": False}]}}
PRE_TOKENIZERS["llama3"] = PRE_TOKENIZERS["llama-bpe"]

# ----------------------------------------------------------------------------
# config.json and generation_config.json


def hf_config_dict(config, tok=None, dtype="f32"):
    """transformers LlamaConfig fields of a LlamaConfig (+ the tokenizer's special ids)."""
    if config.norm != "rmsnorm":
        raise ValueError(f"the model uses norm={config.norm!r}; transformers' Llama has RMSNorm "
                         "only; keep it as an llmlab folder")
    fields = {key: getattr(config, name) for name, key in weights_config.HF_CONFIG_KEYS.items()}
    scaling = None
    if config.rope_scaling:
        scaling = {"rope_type": "llama3", **{k: v for k, v in config.rope_scaling.items()
                                             if k != "original_max_seq_len"},
                   "original_max_position_embeddings": config.rope_scaling["original_max_seq_len"]}
    out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **fields,
           "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
           "rope_theta": float(config.rope_theta), "rope_scaling": scaling,
           "torch_dtype": str(HF_DTYPES[dtype]).removeprefix("torch.")}
    if tok is not None:
        out.update(bos_token_id=tok.bos_id, eos_token_id=stop_ids(tok), pad_token_id=tok.pad_id)
    return out


def stop_ids(tok):
    """The ids generation stops on, eos first (one int when there is one)."""
    ids = [tok.eos_id] + sorted(tok.stop_ids - {tok.eos_id})
    ids = [i for i in ids if i is not None]
    return ids[0] if len(ids) == 1 else ids or None


# ----------------------------------------------------------------------------
# tokenizer files


def _bos_template(keys):
    """A TemplateProcessing that puts bos first when add_bos_token, else None."""
    tokens, bos = keys["tokenizer.ggml.tokens"], keys.get("tokenizer.ggml.bos_token_id")
    if not keys.get("tokenizer.ggml.add_bos_token") or bos is None:
        return None
    first = {"SpecialToken": {"id": tokens[bos], "type_id": 0}}
    return {"type": "TemplateProcessing",
            "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [first, {"Sequence": {"id": "A", "type_id": 0}}, first,
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos],
                                             "tokens": [tokens[bos]]}}}


def _added_tokens(tokens, types, keep):
    """added_tokens: every token whose type is not in keep (special unless user-defined)."""
    return [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": kind != gguf_writer.USER_DEFINED}
            for i, (t, kind) in enumerate(zip(tokens, types)) if kind not in keep]


def sentencepiece_merges(tokens, scores, types):
    """BPE merges [left, right] equivalent to SentencePiece's rule (merge the pair whose piece
    scores highest): every split of every normal piece into two normal pieces, ranked by the
    piece's score (then id, then the halves' ids), as transformers' SentencePieceExtractor."""
    normal = {t: i for i, (t, kind) in enumerate(zip(tokens, types))
              if kind in (gguf_writer.NORMAL, gguf_writer.USER_DEFINED)}
    ranked = []
    for piece, i in normal.items():
        splits = [(piece[:j], piece[j:]) for j in range(1, len(piece))
                  if piece[:j] in normal and piece[j:] in normal]
        splits.sort(key=lambda pair: (normal[pair[0]], normal[pair[1]]))
        ranked += [(-scores[i], i, n, list(pair)) for n, pair in enumerate(splits)]
    return [pair for *_, pair in sorted(ranked)]


def sentencepiece_tokenizer_json(keys):
    """tokenizer.json of a SentencePiece vocabulary (GGUF 'llama' keys): BPE with byte fallback,
    "▁" prepended to and written for spaces in each text between special tokens (as
    SentencePiece encodes each such chunk; transformers' legacy Llama layout)."""
    tokens, types = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]
    space = gguf_sentencepiece.SPACE
    unknown = [t for t, kind in zip(tokens, types) if kind == gguf_writer.UNKNOWN]
    normalizer = [{"type": "Replace", "pattern": {"String": " "}, "content": space}]
    if keys.get("tokenizer.ggml.add_space_prefix", True):
        normalizer.insert(0, {"type": "Prepend", "prepend": space})
    decoder = [{"type": "Replace", "pattern": {"String": space}, "content": " "},
               {"type": "ByteFallback"}, {"type": "Fuse"},
               {"type": "Strip", "content": " ", "start": 1, "stop": 0}]
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": _added_tokens(tokens, types, (gguf_writer.NORMAL, gguf_writer.BYTE)),
            "normalizer": {"type": "Sequence", "normalizers": normalizer}, "pre_tokenizer": None,
            "post_processor": _bos_template(keys),
            "decoder": {"type": "Sequence", "decoders": decoder},
            "model": {"type": "BPE", "dropout": None, "unk_token": (unknown or [None])[0],
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                      "vocab": {t: i for i, t in enumerate(tokens)},
                      "merges": sentencepiece_merges(tokens, keys["tokenizer.ggml.scores"], types)}}


def tokenizer_json(keys):
    """A tokenizers tokenizer.json from GGUF tokenizer keys: byte-level BPE (model gpt2) or
    SentencePiece (model llama, sentencepiece_tokenizer_json)."""
    if keys.get("tokenizer.ggml.model") == "llama":
        return sentencepiece_tokenizer_json(keys)
    if keys.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"GGUF tokenizer model {keys.get('tokenizer.ggml.model')!r}: only "
                         "byte-level BPE ('gpt2') and SentencePiece ('llama') convert to "
                         "tokenizer.json here")
    pre = keys.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"GGUF tokenizer.ggml.pre={pre!r} has no tokenizer.json pre-tokenizer "
                         f"here (known: {sorted(PRE_TOKENIZERS)})")
    tokens = keys["tokenizer.ggml.tokens"]
    types = keys.get("tokenizer.ggml.token_type", [gguf_writer.NORMAL] * len(tokens))
    added = _added_tokens(tokens, types, (gguf_writer.NORMAL, gguf_writer.BYTE))
    post = _bos_template(keys) or {"type": "ByteLevel", "add_prefix_space": False,
                                   "trim_offsets": False, "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": PRE_TOKENIZERS[pre], "post_processor": post,
            "decoder": {**_BYTE_LEVEL, "add_prefix_space": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": pre in ("llama-bpe", "llama3"),   # as llama.cpp does
                      "vocab": {t: i for i, t in enumerate(tokens)},
                      "merges": list(keys.get("tokenizer.ggml.merges", []))}}


def _token_text(tok, token_id):
    """The text of a special token id (None for None)."""
    if token_id is None:
        return None
    names = {i: t for t, i in tok.special_tokens.items()}
    if token_id in names:
        return names[token_id]
    if isinstance(tok, tokenizer.SentencePieceTokenizer):
        return tok.processor.id_to_piece(token_id)
    return tok.decode([token_id])


def tokenizer_config_dict(tok, chat_template, max_seq_len):
    """tokenizer_config.json: the special tokens, add_bos_token, the chat template."""
    sentencepiece = isinstance(tok, tokenizer.SentencePieceTokenizer)
    out = {"tokenizer_class": "PreTrainedTokenizerFast",     # tokenizer.json as written
           "bos_token": _token_text(tok, tok.bos_id), "eos_token": _token_text(tok, tok.eos_id),
           "pad_token": _token_text(tok, tok.pad_id), "add_bos_token": bool(tok.add_bos),
           "add_eos_token": False, "clean_up_tokenization_spaces": False,
           "model_max_length": max_seq_len}
    if sentencepiece:
        out.update(unk_token=_token_text(tok, tok.processor.unk_id()))
    if chat_template:
        out["chat_template"] = chat_template
    return out


def write_tokenizer_files(folder, tok, chat_template, max_seq_len):
    """tokenizer.json (or the source's tokenizer.model) + tokenizer_config.json into folder;
    chat_template None: the tokenizer's own."""
    spec = getattr(tok, "spec", None) or {}
    if isinstance(tok, tokenizer.SentencePieceTokenizer):     # also a GGUF 'llama' vocabulary
        atomic.write_bytes_atomic(folder / "tokenizer.model", tok.model_proto)
        if gguf_sentencepiece.model_type(tok.model_proto) == gguf_sentencepiece.BPE:
            keys = gguf_writer.tokenizer_keys(tok, tok.vocab_size)     # (unigram: .model only)
            text = json.dumps(sentencepiece_tokenizer_json(keys), ensure_ascii=False)
            atomic.write_text_atomic(folder / "tokenizer.json", text)
    elif spec.get("kind") == "gguf":
        keys = spec.get("metadata") or weights.tokenizer_metadata(
            gguf_reader.read_gguf(spec["path"]).metadata)
        text = json.dumps(tokenizer_json(keys), ensure_ascii=False)
        atomic.write_text_atomic(folder / "tokenizer.json", text)
    elif spec.get("kind") == "hf_json":
        atomic.write_bytes_atomic(folder / "tokenizer.json", Path(spec["path"]).read_bytes())
    elif spec.get("kind") == "tiktoken_llama3":
        atomic.write_bytes_atomic(folder / "tokenizer.model", Path(spec["path"]).read_bytes())
    else:
        raise ValueError(f"--format hf: a {tok.kind} tokenizer has no file to export")
    template = chat_template or gguf_writer.own_chat_template(tok)
    atomic.save_json_atomic(folder / "tokenizer_config.json",
                            tokenizer_config_dict(tok, template, max_seq_len))


# ----------------------------------------------------------------------------
# the folder


def shards(tensors, max_shard_bytes):
    """[{name: tensor}] in order, each at most max_shard_bytes (a larger tensor alone)."""
    groups, size = [{}], 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = tensor
        size += nbytes
    return groups


def _write_weights(folder, tensors, max_shard_bytes):
    groups = shards(tensors, max_shard_bytes)
    if len(groups) == 1:
        write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
        return
    weight_map = {}
    for k, group in enumerate(groups, 1):
        name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(folder / name, group, {"format": "pt"})
        weight_map.update({tensor: name for tensor in group})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    atomic.save_json_atomic(folder / "model.safetensors.index.json",
                            {"metadata": {"total_size": total}, "weight_map": weight_map})


def write_hf_folder(directory, config, state_dict, tok=None, dtype="f32", chat_template=None,
                    max_shard_bytes=MAX_SHARD_BYTES):
    """A canonical Llama state dict (+ tokenizer) as a Hugging Face Llama folder, swapped in
    whole. dtype: f32 | f16 | bf16 (safetensors holds no ggml blocks). -> the folder."""
    if dtype not in HF_DTYPES:
        raise ValueError(f"--dtype {dtype}: --format hf stores {', '.join(HF_DTYPES)} "
                         "(safetensors has no ggml blocks); use --format gguf for it")
    tensors = {name: t.detach().to("cpu", HF_DTYPES[dtype]).contiguous()
               for name, t in weights.hf_state_dict(config, state_dict).items()}
    fields = hf_config_dict(config, tok, dtype)

    def fill(folder):
        _write_weights(folder, tensors, max_shard_bytes)
        if tok is not None:
            write_tokenizer_files(folder, tok, chat_template, config.max_seq_len)
            generation = {"bos_token_id": tok.bos_id, "eos_token_id": stop_ids(tok),
                          "pad_token_id": tok.pad_id}
            atomic.save_json_atomic(folder / "generation_config.json", generation)
        atomic.save_json_atomic(folder / "config.json", fields)
    return atomic.replace_folder_atomic(directory, fill)
