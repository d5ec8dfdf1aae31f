"""Tests for sft.py: instruction-tuning data, masking, split, answer loss and scores.

Run: .venv/bin/python -m pytest tests/test_sft.py -q

Oracles: records written out by hand; the tokenizer's own decode of the unmasked positions; a
full-logit F.cross_entropy with ignore_index (answer loss); scoring.label_scores_reference, one
unpadded forward per (prompt, label) (scores); counts per class worked out by hand (split).
"""
import collections
import json

import pytest
import torch

import scoring
import llama
import sft
import tokenizer as tokenizer_lib
from conftest import need_data


@pytest.fixture(scope="module")
def tiny_model(smol_tokenizer):
    torch.manual_seed(0)
    return llama.Llama(llama.LlamaConfig.tiny(vocab_size=smol_tokenizer.vocab_size)).eval()


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------
# readers

def test_each_record_format_by_content(tmp_path):
    rows = [{"instruction": "Q1? Answer format: true/false", "input": "", "output": "x",
             "answer": "True"},
            {"instruction": "Q2", "input": "ctx", "output": "the correct answer is option2"}]
    recs = sft.read_records(write(tmp_path, "a.data", rows))
    assert [(r.kind, r.text, r.context, r.answer, r.id) for r in recs] == [
        ("instruction", "Q1? Answer format: true/false", "", "true", 0),
        ("instruction", "Q2", "ctx", "option2", 1)]
    lines = '{"question": "is it?", "passage": "P", "answer": false, "id": "q7"}\n'
    (rec,) = sft.read_records(write(tmp_path, "b.jsonl", lines))
    assert (rec.kind, rec.context, rec.answer, rec.id) == ("question", "P", "false", "q7")
    recs = sft.read_records(write(tmp_path, "emotion.txt", "i feel fine;joy\n\nso sad ; Sadness\n"))
    assert [(r.text, r.answer, r.id) for r in recs] == [("i feel fine", "joy", 0), ("so sad", "sadness", 2)]
    rows = [{"review": "good", "stars": 1}, {"review": "bad", "stars": 0}]
    recs = sft.read_records(write(tmp_path, "c.json", rows), text_field="review",
                            label_field="stars", label_names=["neg", "pos"])
    assert [r.answer for r in recs] == ["pos", "neg"]
    recs = sft.read_records(write(tmp_path, "d.txt", "1 ||| nice\n"), label_names=["no", "yes"])
    assert recs[0].answer == "yes"


@pytest.mark.parametrize("name, content, words", [
    ("empty.json", "[]", "no rows"),
    ("dup.json", [{"id": 1, "text": "a", "label": "x"}, {"id": 1, "text": "b", "label": "y"}],
     "dup.json:2: id 1 repeats"),
    ("keys.json", [{"foo": 1}], "keys.json:1: no 'instruction'"),
    ("line.txt", "no separator here\n", "line.txt:1: expected `text;label`"),
    ("bad.json", "[{", "not valid JSON"),
])
def test_bad_files_are_one_line_errors(tmp_path, name, content, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")) as err:
        sft.read_records(write(tmp_path, name, content))
    assert "\n" not in str(err.value)


def test_answers_checked_against_the_label_set(tmp_path):
    train = sft.read_records(write(tmp_path, "t.txt", "a;x\nb;y\n"))
    labels = sft.label_set(train)
    assert labels == ["x", "y"]
    val = sft.read_records(write(tmp_path, "v.txt", "c;x\nd;z\n"), flag="--val")
    with pytest.raises(ValueError, match=r"v.txt:2: answer 'z' is not in the label set"):
        sft.check_answers(val, labels)
    test = sft.read_records(write(tmp_path, "test.json", [{"text": "e"}]), flag="--test")
    sft.check_answers(test, labels, need=False)
    with pytest.raises(ValueError, match="test.json:1: the record has no answer"):
        sft.check_answers(test, labels)
    with pytest.raises(ValueError, match="at least two answers"):
        sft.label_set(train[:1])


def test_real_files_read_with_their_label_sets():
    boolq = sft.read_records(need_data("boolq", "train.json"))
    assert len(boolq) == 9427 and sft.label_set(boolq) == ["false", "true"]
    arc = sft.read_records(need_data("commonsense", "arc_easy_train.json"))
    assert sft.label_set(arc)[:2] == ["answer1", "answer2"]
    emotion = sft.read_records(need_data("emotion", "train.txt"))
    assert sft.label_set(emotion) == ["anger", "fear", "joy", "love", "sadness", "surprise"]


# ----------------------------------------------------------------------------
# prompts, masking, batches

def record(text="Is water wet?", answer="true"):
    return sft.Record(0, "question", text, "Water is a liquid.", answer, "x:1")


@pytest.mark.parametrize("template", sft.TEMPLATES)
def test_loss_only_on_answer_and_end_token(smol_tokenizer, template):
    tok = smol_tokenizer
    ids, n_prompt = sft.encode(tok, record(), ["false", "true"], template, 256)
    labels = sft.masked_labels(ids, n_prompt)
    assert labels[:n_prompt] == [sft.IGNORE] * n_prompt
    answer = [i for i in labels if i != sft.IGNORE]
    end = "<|im_end|>"                      # SmolLM2: ChatML end of turn == its eos
    assert tok.decode(answer) == sft.answer_prefix(template) + "true" + end
    assert ids[:n_prompt] == sft.render(tok, record(), ["false", "true"], template)


@pytest.mark.parametrize("template", sft.TEMPLATES)
def test_one_bos_with_a_bos_tokenizer(template):
    tok = tokenizer_lib.Tokenizer.from_file(need_data("tokenizers", "llama3-tokenizer.model"))
    ids, _ = sft.encode(tok, record(), ["false", "true"], template, 256)
    assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id
    assert ids[-1] == (tok.special_tokens["<|eot_id|>"] if template == "chat" else tok.eos_id)


def test_truncation_cuts_the_text_not_the_answer(smol_tokenizer):
    long = record(text="word " * 400)
    ids, n_prompt = sft.encode(smol_tokenizer, long, ["false", "true"], "chat", 96)
    assert len(ids) <= 96 and smol_tokenizer.decode(ids[n_prompt:]) == "true<|im_end|>"
    with pytest.raises(ValueError, match="--max_len 8"):
        sft.encode(smol_tokenizer, record(), ["false", "true"], "chat", 8)


def test_batches_right_padded_with_ignored_pads():
    seqs = [([5, 6, 7, 8], 2), ([9, 10], 1)]
    batch = sft.collate(seqs, pad_id=0)
    assert batch["tokens"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    batches = list(sft.batches(seqs * 3, 4, 0, shuffle=True, seed=1))
    assert sorted(i for b in batches for i in b["index"]) == list(range(6))


# ----------------------------------------------------------------------------
# split

def test_stratified_split_keeps_class_proportions():
    answers = ["a"] * 70 + ["b"] * 20 + ["c"] * 9 + ["d"]
    recs = [sft.Record(i, "text", f"t{i}", "", a, f"f:{i}") for i, a in enumerate(answers)]
    train, val = sft.stratified_split(recs, 0.1, seed=0)
    counts = collections.Counter(r.answer for r in val)
    assert counts == {"a": 7, "b": 2, "c": 1}                 # round(n_k / 10), d alone stays
    assert sorted(r.id for r in train + val) == list(range(100))
    assert [r.id for r in val] == sorted(r.id for r in val)   # file order kept
    again, _ = sft.stratified_split(recs, 0.1, seed=0)
    other, _ = sft.stratified_split(recs, 0.1, seed=1)
    assert [r.id for r in again] == [r.id for r in train] != [r.id for r in other]
    with pytest.raises(ValueError, match="--val_ratio"):
        sft.stratified_split(recs, 1.5, seed=0)


# ----------------------------------------------------------------------------
# loss and answers on a tiny random model

def test_answer_loss_equals_full_logit_cross_entropy(smol_tokenizer, tiny_model):
    """Tolerance 1e-4 relative: the same fp32 logits, summed in another order."""
    recs = [record(text="Q " * n, answer=a) for n, a in [(3, "true"), (9, "false"), (1, "true")]]
    seqs = [sft.encode(smol_tokenizer, r, ["false", "true"], "chat", 128) for r in recs]
    batch = sft.collate(seqs, smol_tokenizer.pad_id)
    fast, n_fast = sft.answer_loss(tiny_model, batch)
    ref, n_ref = sft.answer_loss_reference(tiny_model, batch)
    assert int(n_fast) == int(n_ref) == 6                     # (label + end) x 3
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_scores_equal_brute_force(smol_tokenizer, tiny_model):
    """Multi-token labels of different lengths, prompts of different lengths, batched + padded ==
    one unpadded forward per prompt and label (atol 1e-4: fp32 reductions in another order)."""
    labels = ["answer1", "answer12", "sadness"]
    label_ids = sft.scoring_ids(smol_tokenizer, "chat", labels)
    assert label_ids[1][:len(label_ids[0]) - 1] == label_ids[0][:-1]   # prefix -> end token kept
    prompts = [sft.render(smol_tokenizer, record(text="x " * n), labels, "chat") for n in (1, 5, 12)]
    scores = sft.score_answers(tiny_model, prompts, label_ids, smol_tokenizer.pad_id, batch_size=2)
    for row, prompt in enumerate(prompts):
        expected = scoring.label_scores_reference(tiny_model, prompt, label_ids)
        torch.testing.assert_close(scores[row], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("text, expected", [
    ("The answer is True.", "true"), ("false", "false"), ("I think answer12, not answer1", "answer12"),
    ("Joyful!", None), ("it is joy", "joy"), ("", None), ("sadness and joy", "sadness")])
def test_parse_answer(text, expected):
    assert sft.parse_answer(text, ["true", "false", "answer1", "answer12", "joy", "sadness"]) == expected
