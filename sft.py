"""Instruction fine-tuning (SFT) data: records -> prompts -> token ids with masked labels; the
stratified split; answers by scoring or by generation; submission.csv.

Records (read by content, never by file name; `read_records`):
    instruction  {"instruction", "input", "output", "answer"}  commonsense_15k / LLM-Adapters
                 (any answer vocabulary: true/false, answer1..5, option1/2, solution1/2; without
                 "answer" the label is read out of "output": "the correct answer is X")
    question     {"question", "passage"?, "answer"}             BoolQ (answer true/false or bool)
    text         {TEXT_FIELD, LABEL_FIELD} JSON/JSONL rows, `text;label` lines (emotion) or
                 minllama's `LABEL ||| TEXT` lines with --label_names
Answers are normalised to the exact lowercase label; the label set comes from the training data
(or --labels). A test file may lack answers; ids are its "id" field or the 0-based row index.

Prompt formats (`render`): "chat" = the model's own chat template (ChatML, Llama 3 headers,
Llama 2 [INST]; chat_templates.py) with the task as the user turn and the label as the reply;
"alpaca" = Taori et al. 2023's "### Instruction: / ### Response:" text; "boolq" = seed 002's
"### Question: ...\\n ### Context: ...\\n ### Answer: ". The training sequence is
    ids = prompt_ids + answer_ids + [end]      end = the template's end-of-turn token (or eos)
    labels = [-100] * len(prompt_ids) + answer_ids + [end]
so the loss is   L = -sum_{t: labels_t != -100} log p(ids_t | ids_<t)  over the answer and the
end token only: the model learns to answer, not to copy prompts (seed 004 Q2.1). One BOS at most.
Right padding for training (pads after the real tokens, labels -100, mask 0), left padding for
batched generation (sample.generate_batch).

Answers: score mode compares log p(answer_k | prompt) = sum_j log p(a_kj | prompt, a_k<j) over the
K labels (scoring.label_scores; the end token is added to every answer only when one label's
tokens are a prefix of another's); generate mode decodes greedily and reads the first label
named in the text (`parse_answer`), counting unreadable outputs (seed 004 Q2.9).
Stratified split: per label, a seeded shuffle sends round(n_k * val_ratio) rows to validation, so
class proportions are kept (seed 004 Q2.0).

Shapes: B batch, T tokens (prompt + answer + end), dim, V vocab, K labels.
Tests: tests/test_sft.py (readers per format and their one-line errors, masking, no double BOS,
stratified proportions, answer loss == full-logit cross-entropy, scores == brute force, parsing);
the submission writer is data.write_submission (tests/test_data.py).
"""
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import atomic
import data
import file_checks
import packing
import scoring

IGNORE = -100          # label of a position without loss (F.cross_entropy's ignore_index)
TEMPLATES = ("chat", "alpaca", "boolq")
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}   # llama2: eos ("</s>")
_OUTPUT_ANSWER = re.compile(r"answer is\s*:?\s*(\S+?)[.!]?\s*$", re.IGNORECASE)


# ----------------------------------------------------------------------------
# records

@dataclass
class Record:
    id: object           # the file's "id", else the 0-based row index
    kind: str            # "instruction" | "question" | "text"
    text: str            # the instruction, question or text to classify
    context: str         # the "input" field or BoolQ passage ("" when none)
    answer: str          # exact lowercase label, or None in a test file without answers
    where: str           # "file:row" for error messages


def normalise_answer(value):
    """True -> "true", " Answer2 " -> "answer2"; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower()


# a record's fields, when present: text is text, an id a string or an integer (hashable)
_TEXT, _ANSWER = ((str, type(None)), None, ""), ((str, int, bool, type(None)), None, "")
RECORD_FIELDS = {"id?": ((str, int), None, ""), "instruction?": (str, None, ""), "input?": _TEXT,
                 "output?": _TEXT, "question?": (str, None, ""), "passage?": _TEXT,
                 "answer?": _ANSWER}


def _from_object(obj, row, where, fields):
    """One JSON object -> Record, by its keys (checked first: RECORD_FIELDS, the text field)."""
    file_checks.check_fields(obj, where, {**RECORD_FIELDS, f"{fields[0]}?": (str, None, ""),
                                          f"{fields[1]}?": _ANSWER})
    rid = obj.get("id", row)
    if "instruction" in obj:
        answer = obj.get("answer")
        if answer is None and isinstance(obj.get("output"), str):
            match = _OUTPUT_ANSWER.search(obj["output"])
            answer = match.group(1) if match else None
        return Record(rid, "instruction", str(obj["instruction"]), str(obj.get("input") or ""),
                      normalise_answer(answer), where)
    if "question" in obj:
        return Record(rid, "question", str(obj["question"]), str(obj.get("passage") or ""),
                      normalise_answer(obj.get("answer")), where)
    text_field, label_field, names = fields
    if text_field in obj:
        label = obj.get(label_field)
        if isinstance(label, int) and not isinstance(label, bool) and names is not None:
            if not 0 <= label < len(names):
                raise ValueError(f"{where}: label {label} has no name in --label_names "
                                 f"({len(names)} names)")
            label = names[label]
        return Record(rid, "text", str(obj[text_field]), "", normalise_answer(label), where)
    raise ValueError(f"{where}: no 'instruction', 'question' or '{text_field}' field (keys: "
                     f"{sorted(obj)[:6]}); pass --text_field / --label_field naming its fields")


def _from_line(raw, row, where, names):
    """`text;label` (emotion) or minllama's `LABEL ||| TEXT` (needs --label_names)."""
    if "|||" in raw:
        if names is None:
            raise ValueError(f"{where}: `LABEL ||| TEXT` lines need --label_names (a JSON list)")
        example = data.parse_line(raw, where.rsplit(":", 1)[0], row + 1, len(names))
        return Record(row, "text", example.text, "", names[example.label], where)
    if ";" not in raw:
        raise ValueError(f"{where}: expected `text;label`, `LABEL ||| TEXT` or JSON, got "
                         f"{raw[:60]!r}; fix or remove the line")
    text, label = raw.rsplit(";", 1)
    return Record(row, "text", text.strip(), "", normalise_answer(label) or None, where)


def read_records(path, text_field="text", label_field="label", label_names=None, flag="--train"):
    """Every record of a data file, in file order; an empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} ({flag}): file not found; pass a JSON/JSONL file or "
                                "`text;label` lines (e.g. ../shared/data/boolq/train.json)")
    text = file_checks.read_text(path, flag)          # UTF-8 errors name the file and byte
    head = text[:4096].lstrip()
    if head.startswith(("[", "{")):
        records = [_from_object(obj, row - 1, f"{path}:{row}", (text_field, label_field,
                                                                label_names))
                   for row, obj in data.read_json_rows(path, (), flag)]
    else:
        lines = text.splitlines()
        records = [_from_line(raw, row, f"{path}:{row + 1}", label_names)
                   for row, raw in enumerate(lines) if raw.strip()]
    if not records:
        raise ValueError(f"{path} ({flag}): the file has no records")
    seen = {}
    for r in records:
        if r.id in seen:
            raise ValueError(f"{r.where}: id {r.id!r} repeats {seen[r.id]}; ids must be unique")
        seen[r.id] = r.where
    return records


def label_set(records, given=None):
    """The allowed answers: --labels when given (in that order), else the training answers sorted."""
    labels = list(dict.fromkeys(normalise_answer(x) for x in given)) if given else \
        sorted({r.answer for r in records if r.answer is not None})
    if len(labels) < 2:
        raise ValueError(f"label set {labels}: need at least two answers; check the answer field "
                         "of the training file or pass --labels a,b")
    return labels


def check_answers(records, labels, need=True):
    """ValueError naming the record whose answer is missing or outside the label set."""
    for r in records:
        if r.answer is None and need:
            raise ValueError(f"{r.where}: the record has no answer; every training and validation "
                             "record needs one ('answer', 'output' or the label field)")
        if r.answer is not None and r.answer not in labels:
            raise ValueError(f"{r.where}: answer {r.answer!r} is not in the label set {labels}; "
                             "fix the record or pass --labels with every answer")


# ----------------------------------------------------------------------------
# stratified split

def stratified_split(records, val_ratio, seed):
    """(train, val): per answer, a seeded shuffle puts round(n_k * val_ratio) rows in val (at
    least one and at most n_k - 1 when n_k >= 2, so each side sees every label); file order kept."""
    if not 0 < val_ratio < 1:
        raise ValueError(f"--val_ratio {val_ratio}: must be between 0 and 1, e.g. 0.1")
    rng, val = random.Random(seed), set()
    by_label = {}
    for i, r in enumerate(records):
        by_label.setdefault(r.answer, []).append(i)
    for label in sorted(by_label, key=str):
        rows = by_label[label]
        rng.shuffle(rows)
        k = min(max(round(len(rows) * val_ratio), 1), len(rows) - 1) if len(rows) >= 2 else 0
        val.update(rows[:k])
    return ([r for i, r in enumerate(records) if i not in val],
            [r for i, r in enumerate(records) if i in val])


def save_split(path, train, val, val_ratio, seed):
    """The ids of both sides, so the split can be checked and reused."""
    atomic.save_json_atomic(path, {"val_ratio": val_ratio, "seed": seed,
                                   "train": [r.id for r in train], "val": [r.id for r in val]})


# ----------------------------------------------------------------------------
# prompts and token ids

def user_message(record, labels):
    """The task as one message (chat and alpaca templates)."""
    if record.kind == "text":
        return (f"Classify the text as one of: {', '.join(labels)}.\n\nText: {record.text}\n\n"
                f"Answer format: {'/'.join(labels)}")
    if record.kind == "question":
        context = f"\n\nPassage: {record.context}" if record.context else ""
        return f"{record.text}{context}\n\nAnswer format: {'/'.join(labels)}"
    return record.text + (f"\n\n{record.context}" if record.context else "")


def render(tokenizer, record, labels, template):
    """Prompt ids: what the model reads before its answer."""
    if template == "chat":
        return tokenizer.encode_chat([{"role": "user", "content": user_message(record, labels)}])
    if template == "alpaca":
        text = ALPACA.format(instruction=user_message(record, labels))
    elif template == "boolq":
        question = record.text if record.kind != "text" else user_message(record, labels)
        text = f"### Question: {question}\n ### Context: {record.context}\n ### Answer:"
    else:
        raise ValueError(f"--template {template!r}: use one of {', '.join(TEMPLATES)}")
    return tokenizer.encode(text, bos=scoring.uses_bos(tokenizer))


def answer_prefix(template):
    """Text between prompt and label: seed 002 writes "### Answer: true", so its space."""
    return " " if template == "boolq" else ""


def end_id(tokenizer, template):
    """The token that ends an answer: the chat template's end of turn, else eos (or none)."""
    if template == "chat" and tokenizer.chat_format in END_OF_TURN:
        return tokenizer.special_tokens[END_OF_TURN[tokenizer.chat_format]]
    return tokenizer.eos_id


def answer_ids(tokenizer, template, label):
    """Token ids of one answer as it follows the prompt, with the end token."""
    end = end_id(tokenizer, template)
    return tokenizer.encode(answer_prefix(template) + label) + ([] if end is None else [end])


def encode(tokenizer, record, labels, template, max_len):
    """-> (ids, number of prompt tokens). Too long: the longest text field is cut, never the
    answer; ValueError if even an empty prompt leaves no room."""
    for _ in range(4):
        prompt = render(tokenizer, record, labels, template)
        target = answer_ids(tokenizer, template, record.answer) if record.answer else []
        over = len(prompt) + len(target) - max_len
        if over <= 0:
            return prompt + target, len(prompt)
        field = "context" if len(record.context) > len(record.text) else "text"
        ids = tokenizer.encode(getattr(record, field))
        if len(ids) <= over:
            break
        record = Record(**{**record.__dict__, field: tokenizer.decode(ids[:len(ids) - over - 2])})
    raise ValueError(f"{record.where}: the prompt and answer need more than --max_len {max_len} "
                     "tokens even with the text cut; raise --max_len")


def masked_labels(ids, n_prompt):
    """Loss only on the answer and its end token: every prompt position is IGNORE."""
    return [IGNORE] * n_prompt + list(ids[n_prompt:])


def collate(sequences, pad_id):
    """Right-padded {tokens, attention_mask, labels} (B, T) from (ids, n_prompt) pairs."""
    tokens, mask = data.pad_batch([ids for ids, _ in sequences], pad_id)         # (B, T)
    labels = torch.full_like(tokens, IGNORE)                                        # (B, T)
    for b, (ids, n_prompt) in enumerate(sequences):
        labels[b, :len(ids)] = torch.tensor(masked_labels(ids, n_prompt))
    return {"tokens": tokens, "attention_mask": mask, "labels": labels}


def packed(sequences, pad_id, max_len):
    """The same examples as collate's batch, packed into rows of <= max_len, the prompt tokens
    they all start with held once per row (packing.py)."""
    examples = [(ids, masked_labels(ids, n)) for ids, n in sequences]
    return packing.pack(examples, pad_id, max_len, IGNORE, packing.common_prefix(examples, IGNORE))


def batches(sequences, batch_size, pad_id, shuffle=False, seed=0, pack_len=None,
            group_by_length=False):
    """data.Batches of (ids, n_prompt) sequences collated with masked labels: shuffled per pass
    (seeded; training, sharded over torchrun ranks; group_by_length: similar lengths together)
    or sorted by length (evaluation, whole). pack_len: each batch packed into rows of that many
    tokens (packed) instead of right-padded."""
    join = (lambda ids, ns: collate(list(zip(ids, ns)), pad_id)) if pack_len is None else (
        lambda ids, ns: packed(list(zip(ids, ns)), pad_id, pack_len))
    return data.Batches([ids for ids, _ in sequences], [n for _, n in sequences], batch_size,
                        pad_id, shuffle=shuffle, seed=seed, sort_by_length=not shuffle,
                        collate=join, shard=shuffle, group_by_length=group_by_length)


# ----------------------------------------------------------------------------
# the loss on answer tokens

def answer_loss_reference(model, batch):
    """Readable oracle: full (B, T, V) logits, cross-entropy with ignore_index on shifted labels."""
    device = scoring.lm_head_weight(model).device
    logits, _ = model(batch["tokens"].to(device), attention_mask=batch["attention_mask"].to(device))
    labels = batch["labels"].to(device)[:, 1:]                                     # (B, T-1)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                           ignore_index=IGNORE, reduction="sum")
    return loss, (labels != IGNORE).sum()


def answer_loss(model, batch):
    """Fast path for train.fit: project only the answer positions onto the vocabulary (the
    prompt's (T, V) logits are never built); -> (summed loss, answer tokens). A packed batch
    (packing.py) gives the same sum and count as the same examples unpacked."""
    device = scoring.lm_head_weight(model).device
    if "blocks" in batch:                           # packed rows: each example's own positions
        hidden = packing.hidden_states(model, batch)                                # (R, L, dim)
    else:
        tokens, mask = batch["tokens"].to(device), batch["attention_mask"].to(device)
        hidden = scoring.hidden_states(model, tokens, mask)                         # (B, T, dim)
    labels = batch["labels"].to(device)[:, 1:]                                     # (B, T-1)
    keep = labels != IGNORE                                                        # (B, T-1)
    logits = F.linear(hidden[:, :-1][keep], scoring.lm_head_weight(model))     # (n, V)
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum"), keep.sum()


# ----------------------------------------------------------------------------
# answers: scoring, generation, parsing

def scoring_ids(tokenizer, template, labels):
    """Each label's tokens for scoring; the end token is kept only if one label's tokens are a
    prefix of another's (then "love" vs "lovely" needs it)."""
    full = [answer_ids(tokenizer, template, label) for label in labels]
    bare = [ids[:-1] if ids[-1:] == [end_id(tokenizer, template)] else ids for ids in full]
    prefix = any(a != b and b[:len(a)] == a for a in bare for b in bare)
    return full if prefix else bare


@torch.no_grad()
def score_answers(model, prompts, label_ids, pad_id, batch_size=8):
    """(n, K) log-likelihoods of every label after every prompt, batched by length."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    scores = torch.empty(len(prompts), len(label_ids))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = scoring.label_scores(model, [prompts[i] for i in index], label_ids, pad_id)
        scores[index] = batch.float().cpu()
    return scores


def parse_answer(text, labels):
    """The label named first in a generated text (whole words, case-insensitive; the longest
    label wins a tie), or None when the text names none."""
    found = []
    for label in labels:
        match = re.search(rf"(?<![\w]){re.escape(label)}(?![\w])", text.lower())
        if match:
            found.append((match.start(), -len(label), label))
    return min(found)[2] if found else None
