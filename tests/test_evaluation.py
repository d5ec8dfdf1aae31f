"""Tests for evaluation.py: lm-eval's zero-shot multiple-choice requests, tokens and metrics.

Run: .venv/bin/python -m pytest tests/test_evaluation.py -q   (CPU, seconds)

Oracles: the request strings of each layout written out by hand from lm-eval 0.4.13's task YAMLs
(arc_easy, openbookqa, piqa, winogrande + preprocess_winogrande.py, hellaswag + utils.py,
super_glue/boolq, siqa); lm-eval's _encode_pair whitespace rule on a word-level fake tokenizer,
its tok_encode BOS rule (once, even after a chat template that starts with BOS) and the left
truncation of _loglikelihood_tokens on hand-made ids; acc / acc_norm on log-likelihoods chosen by
hand (acc_norm per character, not byte, as process_results' completion_len); every bad file one
line naming file and row.
"""
import json

import pytest

import evaluation

ARC = {"id": "a", "question": "What warms hands?",
       "choices": {"text": ["dry palms", "wet palms"], "label": ["A", "B"]}, "answerKey": "A"}
OBQA = {"question_stem": "The sun is responsible for",
        "choices": {"text": ["puppies", "plants sprouting"], "label": ["A", "B"]},
        "answerKey": " B"}
PIQA = {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "hit it", "label": 0}
WINO = {"sentence": "Sarah was a better surgeon than Maria so _ got the harder cases.",
        "option1": "Sarah", "option2": "Maria", "answer": "1"}
HELLA = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
         "ctx_b": "he", "endings": ["is using wrap [title] to wrap a pair of skis.",
                                    "starts pulling up roofing  on a roof."], "label": "1"}
BOOLQ = {"question": "is the sky blue", "passage": "The sky is blue.", "answer": True}
SIQA = {"context": "Tracy went home.", "question": "What will Tracy do?", "answerA": "sleep",
        "answerB": "run", "answerC": "eat", "label": "3"}


def write(tmp_path, rows, name="f.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("record, name, requests, gold, choices", [
    (ARC, "ai2_arc", [("Question: What warms hands?\nAnswer:", " dry palms"),
                      ("Question: What warms hands?\nAnswer:", " wet palms")], 0,
     ["dry palms", "wet palms"]),
    (OBQA, "openbookqa", [("The sun is responsible for", " puppies"),
                          ("The sun is responsible for", " plants sprouting")], 1,
     ["puppies", "plants sprouting"]),
    (PIQA, "piqa", [("Question: Open a jar\nAnswer:", " twist the lid"),
                    ("Question: Open a jar\nAnswer:", " hit it")], 0, ["twist the lid", "hit it"]),
    (WINO, "winogrande",
     [("Sarah was a better surgeon than Maria so Sarah", " got the harder cases."),
      ("Sarah was a better surgeon than Maria so Maria", " got the harder cases.")], 0,
     ["Sarah was a better surgeon than Maria so Sarah",
      "Sarah was a better surgeon than Maria so Maria"]),
    (HELLA, "hellaswag",
     [("Roof shingle removal: A man is sitting on a roof. He",
       " is using wrap. to wrap a pair of skis."),
      ("Roof shingle removal: A man is sitting on a roof. He",
       " starts pulling up roofing on a roof.")], 1,
     ["is using wrap. to wrap a pair of skis.", "starts pulling up roofing on a roof."]),
    (BOOLQ, "boolq", [("The sky is blue.\nQuestion: is the sky blue?\nAnswer:", " no"),
                      ("The sky is blue.\nQuestion: is the sky blue?\nAnswer:", " yes")], 1,
     ["no", "yes"]),
    (SIQA, "social_i_qa", [("Q: Tracy went home. What will Tracy do?\nA:", " " + a)
                           for a in ("sleep", "run", "eat")], 2, ["sleep", "run", "eat"]),
])
def test_each_layout_makes_lm_evals_requests(tmp_path, record, name, requests, gold, choices):
    task, questions = evaluation.read_questions(write(tmp_path, [record, record]))
    assert task == name and len(questions) == 2
    q = questions[0]
    assert (q.requests, q.gold, q.choices, q.record) == (requests, gold, choices, 1)
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([record] * 3))
    assert len(evaluation.read_questions(as_list, limit=2)[1]) == 2


def test_llmlab_records_are_multiple_choice_over_their_labels(tmp_path):
    path = tmp_path / "emotion.txt"
    path.write_text("i feel great;joy\ni am so sad;sadness\n", encoding="utf-8")
    task, questions = evaluation.read_questions(path)
    assert task == "emotion" and [q.gold for q in questions] == [0, 1]
    assert questions[1].requests == [("Question: i am so sad\nAnswer:", " joy"),
                                     ("Question: i am so sad\nAnswer:", " sadness")]


class Words:
    """Fake tokenizer: one id per whitespace-led word piece, like a BPE that keeps the leading
    space with the word (" yes" is one token, "yes" another)."""
    add_bos, pad_id = False, 0

    def __init__(self):
        self.vocab = {}

    def encode(self, text, bos=False, eos=False, allow_special=False):
        import re
        return [self.vocab.setdefault(p, len(self.vocab) + 1) for p in re.findall(r"\s*\S+|\s+",
                                                                                   text)]


def test_encode_pair_moves_the_contexts_trailing_space_to_the_continuation():
    """lm-eval's _encode_pair: "Answer: " + "yes" is scored as "Answer:" + " yes"."""
    tok = Words()
    context, continuation = evaluation.encode_pair(tok, "Q: sky?\nAnswer: ", "yes")
    assert continuation == tok.encode(" yes") and context == tok.encode("Q: sky?\nAnswer:")
    whole = tok.encode("Q: sky?\nAnswer: yes")
    assert context + continuation == whole


class WordsWithBos(Words):
    """A tokenizer that adds BOS (Llama 3's habit) and parses "<s>" as it when allowed."""
    add_bos, bos_id = True, 99

    def encode(self, text, bos=False, eos=False, allow_special=False):
        head = [self.bos_id] if allow_special and text.startswith("<s>") else []
        return head + super().encode(text[3:] if head else text)


def test_bos_is_added_once_even_when_the_chat_template_starts_with_it():
    """lm-eval's tok_encode adds no special tokens to a string that starts with BOS already."""
    tok = WordsWithBos()
    plain, cont = evaluation.encode_pair(tok, "Question: sky?\nAnswer:", " yes")
    assert plain[0] == 99 and 99 not in plain[1:] and cont == tok.encode(" yes")
    chat, _ = evaluation.encode_pair(tok, "<s>user: sky?\nassistant:\n", "yes", special=True)
    assert chat[:1] == [99] and 99 not in chat[1:]


def test_truncate_keeps_the_last_max_len_plus_one_tokens_as_lm_eval_does():
    """_loglikelihood_tokens: (context + continuation)[-(max_len + 1):], the continuation whole."""
    assert evaluation.truncate([1, 2, 3, 4, 5], [6, 7], 4) == ([3, 4, 5], [6, 7])
    assert evaluation.truncate([1, 2], [6, 7], 4) == ([1, 2], [6, 7])


def test_acc_norm_divides_by_characters_not_bytes():
    """lm-eval's process_results: completion_len = len(choice) of the str (its acc_bytes divides
    by the UTF-8 bytes instead). "éééé" is 4 characters, 8 bytes; the sums make the rules differ:
    per character -4.4/4 = -1.1 < -5.4/5 = -1.08 picks choice 1; per byte -4.4/8 = -0.55 would
    pick choice 0, the gold."""
    q = evaluation.Question([("c", " éééé"), ("c", " abcde")], gold=0, record=1,
                            choices=["éééé", "abcde"])
    assert evaluation.task_metrics([q], [[-4.4, -5.4]])["acc_norm"] == 0.0


def test_acc_and_acc_norm_on_hand_made_loglikelihoods():
    """acc takes the largest sum; acc_norm the largest sum per character of the choice text."""
    q = evaluation.Question([("c", " a"), ("c", " bbbbbbbb")], gold=1, record=1,
                            choices=["a", "bbbbbbbb"])
    result = evaluation.task_metrics([q, q], [[-2.0, -8.0], [-2.0, -1.0]])
    # first: raw argmax 0 (wrong); per char -2/1 vs -8/8 = -1 -> 1 (right); second: both right
    assert result == {"n": 2, "acc": 0.5, "acc_norm": 1.0, "predictions": [0, 1]}


@pytest.mark.parametrize("rows, words", [
    ([{"foo": 1, "bar": 2}], "fields ['bar', 'foo'] match no layout"),
    ([{**ARC, "answerKey": "E"}], "answer key 'E' is not one of the labels"),
    ([{**ARC, "choices": {"text": ["x"], "label": ["A"]}, "answerKey": "A"}], "1 choice(s)"),
    ([{**WINO, "sentence": "no blank here"}], "exactly one blank '_'"),
    ([ARC, PIQA], "a piqa record in a ai2_arc file"),
])
def test_bad_files_are_one_line_errors(tmp_path, rows, words):
    with pytest.raises(ValueError, match="f.jsonl: row") as info:
        evaluation.read_questions(write(tmp_path, rows))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: the file is empty"):
        evaluation.read_questions(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        evaluation.read_questions(tmp_path / "none.jsonl")
