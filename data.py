"""Data readers: seed 001's sentiment tasks (minllama's file formats, tokenising, padding,
batching), JSON rows (seed 000's {id, text, label} classification files, and any JSON / JSON-lines
rows), and seed 003's streaming language-model text (files -> token blocks -> mixed batches).

Formats (as in neubig/minllama-assignment, data/sst-*.txt and data/cfimdb-*.txt):
    data file       one example a line: `LABEL ||| TEXT`, LABEL an integer class id 0..K-1
    label mapping   a JSON list of K names, index = class id, e.g. ["bad", "good"]
    predictions     one line per example, in input order: `PREDICTED_ID ||| TEXT`
JSON rows: one JSON list of objects, or JSON lines (one object a line); read_json_rows checks the
fields every row needs, read_json_examples the classification rows {"id", "text", "label"} (ids
unique, labels ints 0..K-1, label optional in a test file). Rows count from 1.
Padding is on the right: row b holds its n_b real tokens at positions 0..n_b-1 and pad_id after,
with attention_mask[b, t] = 1 for t < n_b. Under causal attention a real token never attends to
a later pad, so right padding leaves every real position's output unchanged; the mask (not
token == pad_id) marks the pads, because SmolLM2's pad id equals its eos id.

Streaming text: a file is read in pieces of chunk_bytes ending after a newline, tokenized, and cut
into blocks of block_size + 1 tokens (input block[:-1], target block[1:]); memory is O(chunk), so
a multi-GB file streams. Every test_every-th block of a file is test data (test_every = 0: the
file is a split already). Sources are mixed per block with probability weight / sum(weights)
(pico's --tinystories_weight), and a buffer of blocks shuffles them locally.

Shapes: B batch, T longest sequence in the batch (streaming text: T = block_size).
Tests: tests/test_data.py (round trips on temp files, one-line errors naming file and line or
row, padding and batching against hand-built tensors, the seed 001 and DBpedia-14 files);
tests/test_pico.py (streaming text: tracemalloc memory, blocks == the file's bytes, UTF-8 cut
inside characters, split ratio, mixing weights).
Size: just over 400 lines: three readers (minllama lines, JSON rows, streamed text) and their
batchers, each small; one file keeps the data contract of every option in one place.
"""
import codecs
import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import atomic
import distributed
import file_checks


# ----------------------------------------------------------------------------
# one example

@dataclass
class Example:
    label: int    # class id: index into the label-mapping list
    text: str     # the sentence or review, stripped of surrounding whitespace
    line: int     # 1-based line number in the source file (for error messages)


# ----------------------------------------------------------------------------
# minllama files: `LABEL ||| TEXT` lines and the label mapping

def _check_file(path, flag):
    path = Path(path)
    where = f" ({flag})" if flag else ""
    if not path.is_file():
        raise FileNotFoundError(f"{path}{where}: file not found; pass an existing file "
                                "(the seed 001 data is in ../shared/data/sst and ../shared/data/cfimdb)")
    return path


def read_label_names(path, flag="--label-names"):
    """The label-mapping JSON: a non-empty list of distinct strings; index = class id."""
    path = _check_file(path, flag)
    names = file_checks.read_json(path, kind=None, flag=flag)
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) and n.strip() for n in names)):
        raise ValueError(f"{path} ({flag}): expected a non-empty JSON list of label-name strings "
                         'like ["bad", "good"]')
    if len(set(names)) != len(names):
        raise ValueError(f"{path} ({flag}): label names repeat ({names}); each name must be distinct")
    return names


def parse_line(raw, path, line_no, num_labels=None):
    """One `LABEL ||| TEXT` line -> Example; ValueError naming file:line on bad input."""
    if "|||" not in raw:
        raise ValueError(f"{path}:{line_no}: expected `LABEL ||| TEXT`, got {raw[:60]!r}; "
                         "fix or remove the line")
    label_str, text = raw.split("|||", 1)
    try:
        label = int(label_str.strip())
    except ValueError:
        raise ValueError(f"{path}:{line_no}: label {label_str.strip()!r} is not an integer class id; "
                         "labels are 0..K-1, indices into the label-mapping JSON") from None
    if num_labels is not None and not 0 <= label < num_labels:
        raise ValueError(f"{path}:{line_no}: label {label} is not in the label mapping "
                         f"(ids 0..{num_labels - 1}); use a mapping with a name for every label")
    return Example(label=label, text=text.strip(), line=line_no)


def read_examples(path, num_labels=None, flag=None):
    """All examples of a minllama data file; blank lines are skipped, an empty file is an error."""
    path = _check_file(path, flag)
    examples = []                         # read_text: a non-UTF-8 byte is named by offset
    for line_no, raw in enumerate(file_checks.read_text(path, flag).split("\n"), start=1):
        if raw.strip():
            examples.append(parse_line(raw, path, line_no, num_labels))
    if not examples:
        where = f" ({flag})" if flag else ""
        raise ValueError(f"{path}{where}: the file has no examples; expected `LABEL ||| TEXT` lines")
    return examples


# ----------------------------------------------------------------------------
# JSON rows: a JSON list of objects or JSON lines

def _objects(fields):
    """'objects with 'id', 'text'' for error messages ('objects' when no field is required)."""
    return "objects" + (f" with {', '.join(repr(f) for f in fields)}" if fields else "")


def _row_error(path, row, problem, fields):
    return ValueError(f"{path}: row {row}: {problem}; fix the row (rows are {_objects(fields)})")


def _load_rows(path):
    """A JSON list of objects, or JSON lines (one object a line): list of (row number, value)."""
    text = file_checks.read_text(path)
    if text.lstrip().startswith("["):
        return list(enumerate(file_checks.json_value(text, path, list), start=1))
    return [(line_no, file_checks.json_value(line, f"{path}: line {line_no}", None))
            for line_no, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_json_rows(path, fields, flag=None):
    """[(row number, dict)] of a JSON list of objects or a JSON-lines file, each with `fields`
    (fields=(): any object, for readers that tell rows apart by their keys).

    Rows are numbered from 1 (list position, or line number for JSON lines); one-line errors
    name the file and the row. An empty file or list is an error.
    """
    path = Path(path)
    where = f" ({flag})" if flag else ""
    if not path.is_file():
        raise FileNotFoundError(f"{path}{where}: file not found; pass a JSON list or JSON-lines "
                                f"file of {_objects(fields)}")
    rows = _load_rows(path)
    if not rows:
        raise ValueError(f"{path}{where}: no rows; expected a non-empty list of {_objects(fields)}")
    for row, obj in rows:
        if not isinstance(obj, dict):
            raise _row_error(path, row, f"expected an object, got {type(obj).__name__}", fields)
        missing = [k for k in fields if k not in obj]
        if missing:
            raise _row_error(path, row, f"missing field {missing[0]!r}", fields)
    return rows


def read_json_examples(path, num_classes=None, require_label=True, flag="--train"):
    """Classification rows {id, text, label} of a JSON file (read_json_rows) as dicts.

    Ids are unique ints or strings, texts strings, labels ints in 0..num_classes-1 (any int >= 0
    when num_classes is None). With require_label=False (a test file) the label may be absent,
    and is then None.
    """
    fields = ("id", "text", "label") if require_label else ("id", "text")
    examples, seen = [], set()
    for row, obj in read_json_rows(path, fields, flag):
        ex_id, text, label = obj["id"], obj["text"], obj.get("label")
        if isinstance(ex_id, bool) or not isinstance(ex_id, (int, str)):
            raise _row_error(path, row, f"id {ex_id!r} is not an int or string", fields)
        if ex_id in seen:
            raise _row_error(path, row, f"id {ex_id!r} repeats an earlier row; ids must be unique",
                             fields)
        seen.add(ex_id)
        if not isinstance(text, str):
            raise _row_error(path, row, f"text is {type(text).__name__}, not a string", fields)
        if label is not None or require_label:
            _check_label(path, row, label, num_classes, fields)
        examples.append({"id": ex_id, "text": text, "label": label})
    return examples


def _check_label(path, row, label, num_classes, fields):
    if isinstance(label, bool) or not isinstance(label, int):
        raise _row_error(path, row, f"label {label!r} is not an integer class id", fields)
    if label < 0:
        raise _row_error(path, row, f"label {label} is negative: class ids are 0, 1, 2, ...",
                         fields)
    if num_classes is not None and label >= num_classes:
        raise _row_error(path, row, f"label {label} is outside 0..{num_classes - 1} (classes come "
                         "from the training file's labels)", fields)


# ----------------------------------------------------------------------------
# subsets and predictions

def subset(examples, n, seed=0):
    """A seeded random subset of n examples, kept in file order (all of them if n is None)."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 1:
        raise ValueError(f"subset size {n}: must be >= 1")
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def write_predictions(path, predictions, texts):
    """minllama's output file: `PREDICTED_ID ||| TEXT` per line, written atomically."""
    lines = [f"{int(p)} ||| {t}\n" for p, t in zip(predictions, texts, strict=True)]
    atomic.write_text_atomic(path, "".join(lines))


# ----------------------------------------------------------------------------
# tokens: truncate, pad, batch

def encode_text(tokenizer, text, max_len=None, bos=True, eos=False):
    """Token ids of text; the text's own tokens are cut to max_len (bos/eos are kept)."""
    ids = tokenizer.encode(text, bos=False, eos=False)
    if max_len is not None:
        ids = ids[:max_len]
    return ([tokenizer.bos_id] if bos else []) + ids + ([tokenizer.eos_id] if eos else [])


def pad_batch(sequences, pad_id):
    """Right-pad token lists: tokens (B, T) long, attention_mask (B, T) long (1 real, 0 pad)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pad_batch needs a non-empty list of non-empty token lists")
    longest = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), longest), pad_id, dtype=torch.long)      # (B, T)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)               # (B, T)
    for b, seq in enumerate(sequences):
        tokens[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, :len(seq)] = 1
    return tokens, mask


class Batches:
    """Re-iterable padded batches of dicts {tokens (B, T), attention_mask (B, T), labels (B,), index}.

    shuffle: a new order each pass (seeded, so runs repeat). sort_by_length: batch similar lengths
    together (less padding, for evaluation); `index` maps rows back to input order either way.
    group_by_length (with shuffle, for training): the shuffled order cut into mega-batches of
    GROUP_BATCHES global batches, each sorted longest first, so a batch holds similar lengths yet
    every pass still differs and replays from the seed (set_epoch) like a plain shuffle.
    collate(sequences, labels) -> dict replaces the padding above (instruction tuning's masked
    labels). shard (training batches): under torchrun each of the N ranks takes a strided share
    of every global batch of N * batch_size rows (distributed.py); evaluation batches stay whole
    on every rank, and one process always takes everything.
    """

    GROUP_BATCHES = 50        # as transformers' LengthGroupedSampler (at most 50 batches)

    def __init__(self, sequences, labels, batch_size, pad_id, shuffle=False, seed=0,
                 sort_by_length=False, collate=None, shard=False, group_by_length=False):
        if batch_size < 1:
            raise ValueError(f"--batch_size {batch_size}: must be >= 1")
        if len(sequences) != len(labels):
            raise ValueError(f"{len(sequences)} sequences but {len(labels)} labels")
        self.sequences, self.labels = sequences, labels
        self.batch_size, self.pad_id, self.collate = batch_size, pad_id, collate or self.pad
        self.shuffle, self.sort_by_length = shuffle, sort_by_length
        self.group_by_length = group_by_length and shuffle
        self.seed, self.rng = seed, random.Random(seed)
        self.world = distributed.world_size() if shard else 1
        self.rank = distributed.rank() if shard else 0

    def __len__(self):
        return -(-len(self.sequences) // (self.batch_size * self.world))

    def set_epoch(self, epoch):
        """Make the next pass take the order pass `epoch` of a fresh run takes (train.fit calls
        this, so a resumed run replays its epoch): the seeded stream replayed from the start."""
        self.rng = random.Random(self.seed)
        for _ in range(epoch):
            self.order()

    def order(self):
        order = list(range(len(self.sequences)))
        if self.shuffle:
            self.rng.shuffle(order)
        if self.sort_by_length:
            order.sort(key=lambda i: len(self.sequences[i]))
        if self.group_by_length:
            size = self.GROUP_BATCHES * self.batch_size * self.world
            order = [i for start in range(0, len(order), size) for i in sorted(
                order[start:start + size], key=lambda i: -len(self.sequences[i]))]
        return order

    def pad(self, sequences, labels):
        tokens, mask = pad_batch(sequences, self.pad_id)                                 # (B, T)
        return {"tokens": tokens, "attention_mask": mask,
                "labels": torch.tensor(labels, dtype=torch.long)}                         # (B,)

    def __iter__(self):
        order, rank, world = self.order(), self.rank, self.world
        for start in range(0, len(order), self.batch_size * world):
            group = order[start:start + self.batch_size * world]
            if len(group) < world:          # a last global batch too small to give every rank one
                return
            index = group[rank::world]
            batch = self.collate([self.sequences[i] for i in index], [self.labels[i] for i in index])
            yield {**batch, "index": index}


# ----------------------------------------------------------------------------
# streaming language-model text

def iter_text_chunks(path, chunk_bytes=1 << 20):
    """Yield the text of a file in pieces of about chunk_bytes, each ending after a newline (a line
    longer than a chunk is cut anyway); only one piece is in memory at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    carry = ""
    with open(path, "rb") as f:
        while data := f.read(chunk_bytes):
            text = carry + decoder.decode(data)
            cut = text.rfind("\n") + 1 or len(text)
            carry = text[cut:]
            yield text[:cut]
    text = carry + decoder.decode(b"", final=True)
    if text:
        yield text


def iter_blocks(path, tokenizer, block_size, chunk_bytes=1 << 20):
    """Yield (block_size + 1,) long tensors of consecutive tokens; block i starts at token
    i * block_size, so the last target of one block is the first input of the next."""
    buffer = np.zeros(0, dtype=np.int64)
    for text in iter_text_chunks(path, chunk_bytes):
        buffer = np.concatenate([buffer, np.asarray(tokenizer.encode(text), dtype=np.int64)])
        n = (len(buffer) - 1) // block_size
        for i in range(n):
            yield torch.from_numpy(buffer[i * block_size:(i + 1) * block_size + 1].copy())
        buffer = buffer[n * block_size:]


def iter_split(path, tokenizer, block_size, split, test_every, chunk_bytes=1 << 20):
    """Blocks of one split: block i is a test block iff i % test_every == test_every - 1
    (test_every = 0: every block belongs to `split`, for files that are a split already)."""
    for i, block in enumerate(iter_blocks(path, tokenizer, block_size, chunk_bytes)):
        if not test_every or (i % test_every == test_every - 1) == (split == "test"):
            yield block


class LMBatches:
    """Re-iterable stream of (B, block_size + 1) batches, one pass over the sources per epoch.

    sources: list of (weight, make_iter) with make_iter() -> iterator of blocks. Each block is drawn
    from source s with probability weight_s / sum(weights) (the course's --tinystories_weight); the
    pass ends when a drawn source runs dry. A buffer of `shuffle_buffer` blocks shuffles locally,
    as streaming loaders do, without reading a whole file; with shuffle_buffer=0 every pass yields
    the same batches (test and train-eval streams)."""

    def __init__(self, sources, batch_size, shuffle_buffer=0, seed=0, max_batches=None):
        self.sources = [(w, make) for w, make in sources if w > 0]
        self.batch_size, self.shuffle_buffer = batch_size, shuffle_buffer
        self.seed, self.epoch, self.max_batches = seed, 0, max_batches
        self.epoch_offset = 0       # passes a continued run (pico's --resume) already made

    def set_epoch(self, epoch):
        """The next pass shuffles as pass epoch_offset + `epoch` of a fresh run does (no-op
        without shuffling)."""
        self.epoch = self.epoch_offset + epoch if self.shuffle_buffer else 0

    def _blocks(self, generator):
        iters = [make() for _, make in self.sources]
        weights = torch.tensor([w for w, _ in self.sources], dtype=torch.float)
        buffer = []
        while True:
            s = int(torch.multinomial(weights, 1, generator=generator)) if len(iters) > 1 else 0
            block = next(iters[s], None)
            if block is None:
                break
            buffer.append(block)
            if len(buffer) > self.shuffle_buffer:
                j = int(torch.randint(len(buffer), (1,), generator=generator))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()
        yield from (buffer[j] for j in torch.randperm(len(buffer), generator=generator))

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1 if self.shuffle_buffer else 0   # no shuffling: the same stream every pass
        batch, produced = [], 0
        for block in self._blocks(generator):
            batch.append(block)
            if len(batch) == self.batch_size:
                yield torch.stack(batch)                                # (B, T + 1)
                batch, produced = [], produced + 1
                if self.max_batches is not None and produced >= self.max_batches:
                    return
        if batch:
            yield torch.stack(batch)


# ----------------------------------------------------------------------------
# submissions: `id,<column>` CSV files, checked after writing

def write_submission(path, ids, values, column="answer", allowed=None):
    """Kaggle-style `id,<column>` rows, atomically, then read back and checked: every id once, in
    order, every value in `allowed` (when given). Returns the path."""
    if len(set(map(str, ids))) != len(ids):
        raise ValueError(f"{path}: test ids repeat; each id must appear once")
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise ValueError(f"{path}: {column} {bad[0]!r} is not in the label set {list(allowed)}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", column])
    writer.writerows(zip(ids, values, strict=True))
    atomic.write_text_atomic(path, out.getvalue())
    if distributed.is_main():                        # the rank that wrote it reads it back
        check_submission(path, ids, column, allowed)
    return path


def check_submission(path, ids, column="answer", allowed=None):
    """ValueError unless the file is `id,<column>` with exactly these ids and allowed values."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["id", column]:
        raise ValueError(f"{path}: the header must be `id,{column}`")
    allowed = None if allowed is None else {str(v) for v in allowed}
    if [r[0] for r in rows[1:]] != [str(i) for i in ids] or any(
            len(r) != 2 or (allowed is not None and r[1] not in allowed) for r in rows[1:]):
        raise ValueError(f"{path}: rows do not match the test ids and label set")
