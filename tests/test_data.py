"""Tests for data.py: minllama formats, JSON rows, one-line errors, padding, batching, submissions.

Run: .venv/bin/pytest tests/test_data.py -q   (CPU, about a second)

Oracles: hand-written files and the tensors expected from them; Python's str.split on the real
seed 001 files and the known DBpedia-14 sizes (skipped when ../shared/data is absent); the csv
module reading a written submission back.
"""
import json

import pytest
import torch

import data
from conftest import need_data


class CharTokenizer:
    """Hermetic fake: one id per character (ord % 90 + 3); bos 1, eos 2, pad 2 like SmolLM2."""
    bos_id, eos_id, pad_id, vocab_size = 1, 2, 2, 96

    def encode(self, text, bos=False, eos=False):
        return [self.bos_id] * bos + [ord(c) % 90 + 3 for c in text] + [self.eos_id] * eos


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_examples_and_label_names(tmp_path):
    path = write(tmp_path, "d.txt", "1 ||| good film .\n\n0 ||| bad ||| really\n")
    names = data.read_label_names(write(tmp_path, "m.json", json.dumps(["bad", "good"])))
    examples = data.read_examples(path, num_labels=len(names))
    assert names == ["bad", "good"]
    assert [(e.label, e.text, e.line) for e in examples] == [(1, "good film .", 1),
                                                            (0, "bad ||| really", 3)]


@pytest.mark.parametrize("text, match", [
    ("1 ||| ok\n5 ||| too big\n", r"d\.txt:2: label 5 is not in the label mapping"),
    ("x ||| ok\n", r"d\.txt:1: label 'x' is not an integer"),
    ("no separator here\n", r"d\.txt:1: expected `LABEL \|\|\| TEXT`"),
    ("\n  \n", r"d\.txt \(--train\): the file has no examples"),
])
def test_bad_data_files_raise_one_line_errors(tmp_path, text, match):
    path = write(tmp_path, "d.txt", text)
    with pytest.raises(ValueError, match=match) as err:
        data.read_examples(path, num_labels=2, flag="--train")
    assert "\n" not in str(err.value)


def test_missing_files_and_bad_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt \(--dev\): file not found"):
        data.read_examples(tmp_path / "nope.txt", flag="--dev")
    with pytest.raises(FileNotFoundError, match="--label-names"):
        data.read_label_names(tmp_path / "nope.json")
    for bad in ["{}", "[]", '["a", 3]', "not json", '["a", "a"]']:
        with pytest.raises(ValueError, match=r"m\.json \(--label-names\)"):
            data.read_label_names(write(tmp_path, "m.json", bad))


def test_encode_truncates_text_but_keeps_bos_eos():
    tok = CharTokenizer()
    assert data.encode_text(tok, "abcdef", max_len=3, bos=True, eos=True) == [1, 10, 11, 12, 2]
    assert data.encode_text(tok, "ab", bos=False) == [10, 11]


def test_pad_batch_right_pads_with_mask():
    tokens, mask = data.pad_batch([[5, 6, 7], [8]], pad_id=2)
    assert torch.equal(tokens, torch.tensor([[5, 6, 7], [8, 2, 2]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [1, 0, 0]]))


def test_batches_cover_every_example_once_and_reshuffle():
    seqs = [[3] * (i % 4 + 1) for i in range(10)]
    batches = data.Batches(seqs, list(range(10)), batch_size=4, pad_id=0, shuffle=True, seed=1)
    assert len(batches) == 3
    first = [i for b in batches for i in b["index"]]
    second = [i for b in batches for i in b["index"]]
    assert sorted(first) == list(range(10)) and first != second
    for b in batches:
        assert torch.equal(b["labels"], torch.tensor(b["index"]))
        assert b["attention_mask"].sum(1).tolist() == [len(seqs[i]) for i in b["index"]]
    by_len = data.Batches(seqs, [0] * 10, batch_size=3, pad_id=0, sort_by_length=True)
    lengths = [len(seqs[i]) for b in by_len for i in b["index"]]
    assert lengths == sorted(lengths)


def test_subset_and_write_predictions(tmp_path):
    examples = [data.Example(label=i % 2, text=f"t{i}", line=i + 1) for i in range(20)]
    part = data.subset(examples, 5, seed=3)
    assert len(part) == 5 and part == sorted(part, key=lambda e: e.line)
    assert part == data.subset(examples, 5, seed=3) and data.subset(examples, None) == examples
    out = tmp_path / "sst-dev-output.txt"
    data.write_predictions(out, [1, 0], ["a b", "c"])
    assert out.read_text() == "1 ||| a b\n0 ||| c\n"


@pytest.mark.parametrize("name, count, classes", [("sst", 1101, 5), ("cfimdb", 245, 2)])
def test_real_seed001_dev_files(name, count, classes):
    folder = need_data(name)
    names = data.read_label_names(folder / f"{name}-label-mapping.json")
    examples = data.read_examples(folder / f"{name}-dev.txt", num_labels=len(names))
    lines = (folder / f"{name}-dev.txt").read_text(encoding="utf-8").splitlines()
    assert len(names) == classes and len(examples) == count == len(lines)
    assert [e.text for e in examples] == [ln.split(" ||| ", 1)[1].strip() for ln in lines]


# ----------------------------------------------------------------------------
# JSON rows

def write_json(tmp_path, obj, name="d.json", raw=None):
    return write(tmp_path, name, raw if raw is not None else json.dumps(obj))


def test_read_json_examples_list_and_json_lines(tmp_path):
    rows = [{"id": 7, "text": "a b", "label": 1}, {"id": "x", "text": "", "label": 0}]
    assert data.read_json_examples(write_json(tmp_path, rows)) == rows
    lines = "\n".join(json.dumps(r) for r in rows) + "\n"
    assert data.read_json_examples(write_json(tmp_path, None, "d.jsonl", raw=lines)) == rows
    no_label = data.read_json_examples(write_json(tmp_path, [{"id": 1, "text": "t"}]), 3,
                                       require_label=False)
    assert no_label == [{"id": 1, "text": "t", "label": None}]


def test_read_json_rows_takes_any_fields(tmp_path):
    """The general reader (e.g. instruction tuning): rows with the asked-for fields, numbered."""
    rows = [{"instruction": "add", "input": "2 3", "output": "5"},
            {"instruction": "hi", "output": "hello"}]
    lines = "\n".join(json.dumps(r) for r in rows) + "\n\n"        # a blank line at the end
    path = write_json(tmp_path, None, "sft.jsonl", raw=lines)
    assert data.read_json_rows(path, ("instruction", "output")) == [(1, rows[0]), (2, rows[1])]
    with pytest.raises(ValueError, match=r"sft.jsonl: row 2: missing field 'input'"):
        data.read_json_rows(path, ("instruction", "input"))
    assert [row for row, _ in data.read_json_rows(path, ())] == [1, 2]       # any object
    with pytest.raises(ValueError, match=r"row 2: expected an object, got list; .* are objects\)"):
        data.read_json_rows(write_json(tmp_path, [{"a": 1}, [2]]), ())


@pytest.mark.parametrize("rows, message", [
    ([{"id": 1, "text": "a", "label": 0}, {"id": 2, "text": "b"}], "row 2: missing field 'label'"),
    ([{"id": 1, "label": 0}], "row 1: missing field 'text'"),
    ([{"id": 1, "text": "a", "label": 14}], "row 1: label 14 is outside 0..13"),
    ([{"id": 1, "text": "a", "label": -1}], "row 1: label -1 is negative"),
    ([{"id": 1, "text": "a", "label": "3"}], "row 1: label '3' is not an integer"),
    ([{"id": 1, "text": "a", "label": True}], "row 1: label True is not an integer"),
    ([{"id": 1, "text": 5, "label": 0}], "row 1: text is int"),
    ([{"id": 1, "text": "a", "label": 0}, {"id": 1, "text": "b", "label": 0}],
     "row 2: id 1 repeats"),
    ([["a", 0]], "row 1: expected an object"),
    ([], "no rows"),
])
def test_bad_json_rows_give_one_line_errors_naming_file_and_row(tmp_path, rows, message):
    path = write_json(tmp_path, rows)
    with pytest.raises(ValueError) as err:
        data.read_json_examples(path, num_classes=14)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_json_and_missing_json_file(tmp_path):
    with pytest.raises(ValueError, match=r"d.json: not valid JSON .* line 2"):
        data.read_json_examples(write_json(tmp_path, None,
                                           raw='[{"id": 1,\n "text": "a", label: 0}]'))
    with pytest.raises(ValueError, match=r"d.jsonl: line 2: not valid JSON"):
        data.read_json_examples(write_json(tmp_path, None, "d.jsonl",
                                           raw='{"id": 1, "text": "a", "label": 0}\n{'))
    with pytest.raises(FileNotFoundError, match="--val"):
        data.read_json_examples(tmp_path / "nope.json", flag="--val")


@pytest.mark.slow
def test_shared_dbpedia_data_loads():
    folder = need_data("dbpedia14")
    train_ex = data.read_json_examples(folder / "train.json")
    assert len(train_ex) == 3999 and 1 + max(e["label"] for e in train_ex) == 14
    assert len(data.read_json_examples(folder / "test.json", 14)) == 2000


# ----------------------------------------------------------------------------
# submissions (sft's id,answer and the SSM's id,label)

def test_submission_written_and_validated(tmp_path):
    path = tmp_path / "submission.csv"
    data.write_submission(path, [3, "b7", 5], ["true", "false", "true"], allowed=["false", "true"])
    assert path.read_text() == "id,answer\n3,true\nb7,false\n5,true\n"
    with pytest.raises(ValueError, match="ids repeat"):
        data.write_submission(path, [1, 1], ["true", "true"], allowed=["false", "true"])
    with pytest.raises(ValueError, match="answer 'maybe' is not in the label set"):
        data.write_submission(path, [1, 2], ["true", "maybe"], allowed=["false", "true"])
    assert path.read_text() == "id,answer\n3,true\nb7,false\n5,true\n"   # untouched
    path.write_text("id,answer\n3,true\n")
    with pytest.raises(ValueError, match="do not match the test ids"):
        data.check_submission(path, [3, 4], allowed=["false", "true"])


def test_submission_other_column_and_unchecked_values(tmp_path):
    path = data.write_submission(tmp_path / "s.csv", ["a", "b"], [3, 0], column="label")
    assert path.read_text() == "id,label\na,3\nb,0\n"
    with pytest.raises(ValueError, match="header must be `id,answer`"):
        data.check_submission(path, ["a", "b"])
