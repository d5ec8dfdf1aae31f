"""Zero-shot multiple choice by log-likelihood, the protocol of EleutherAI's lm-evaluation-harness
(Gao et al., "A framework for few-shot language model evaluation", lm-eval 0.4), written by hand.

A question is K requests (context_k, continuation_k), one per choice. Each is scored by the model
(scoring.continuation_logprobs) as the summed log-probability of the continuation's tokens:
    ll_k = sum_j log p(c_kj | context_k, c_k<j)
    acc      = [argmax_k ll_k == gold]
    acc_norm = [argmax_k ll_k / len(choice_k) == gold]     len in characters, as lm-eval's
                                                           process_results (completion_len)
Tokens as lm-eval's _encode_pair: trailing whitespace of the context moves to the continuation,
then context_ids = encode(context) and
continuation_ids = encode(context + continuation)[len(context_ids):]
(BOS only when the model's tokenizer adds one, and once), and a pair longer than max_seq_len + 1
tokens loses the start of its context (lm-eval's _loglikelihood_tokens). The continuation is
target_delimiter " " + the choice text; with chat_template the context is the user turn of the
model's chat template with the assistant's turn opened, and the delimiter is "" (lm-eval's
--apply_chat_template: ConfigurableTask.fewshot_context / construct_requests).

Layouts, detected by their fields (Hugging Face hub layouts that lm-eval reads), with lm-eval's
prompts (its task YAMLs):
    ai2_arc      "Question: {question}\\nAnswer:"  choices.text, gold choices.label.index(answerKey)
                 (Clark et al. 2018, arXiv:1803.05457)
    openbookqa   "{question_stem}"                 choices.text (Mihaylov et al. 2018)
    piqa         "Question: {goal}\\nAnswer:"       [sol1, sol2], label (Bisk et al. 2020)
    winogrande   partial scoring: context_k = sentence up to "_" + option_k, one continuation:
                 the rest of the sentence (Sakaguchi et al. 2020, arXiv:1907.10641)
    hellaswag    preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), endings
                 (Zellers et al. 2019, arXiv:1905.07830)
    boolq        "{passage}\\nQuestion: {question}?\\nAnswer:"  ["no", "yes"] (Clark et al. 2019)
    social_i_qa  "Q: {context} {question}\\nA:"     [answerA, answerB, answerC], label 1..3
                 (Sap et al. 2019, arXiv:1904.09728)
    llmlab records (instruction / question JSON, `text;label` lines: sft.read_records):
                 "Question: {text}\\nAnswer:" over the file's label set.

Shapes: K choices per question; ll lists of K floats. Tested in tests/test_evaluation.py (each
layout's requests against strings written out from lm-eval's YAMLs; the whitespace rule; the
metrics on hand-made log-likelihoods; bad files as one line).
"""
import re
from dataclasses import dataclass
from pathlib import Path

import data
import file_checks
import scoring
import sft

DELIMITER = " "          # lm-eval's default target_delimiter


@dataclass
class Question:
    requests: list       # [(context, continuation)] text, one per choice
    gold: int            # index of the right choice
    record: int          # row number in the file (for messages)
    choices: list        # the choice texts whose lengths acc_norm divides by


# ----------------------------------------------------------------------------
# layouts: record -> Question

def _mc(context, choices, gold, row):
    return Question([(context, DELIMITER + c) for c in choices], gold, row, list(choices))


def _labelled(obj, where, key="answerKey"):
    labels, texts = obj["choices"]["label"], obj["choices"]["text"]
    answer = str(obj[key]).strip()
    if answer not in labels:
        raise ValueError(f"{where}: answer key {answer!r} is not one of the labels {labels}; "
                         "fix the record")
    return texts, labels.index(answer)


def _arc(obj, row, where):
    texts, gold = _labelled(obj, where)
    return _mc(f"Question: {obj['question']}\nAnswer:", texts, gold, row)


def _openbookqa(obj, row, where):
    texts, gold = _labelled(obj, where)
    return _mc(obj["question_stem"], texts, gold, row)


def _piqa(obj, row, where):
    return _mc(f"Question: {obj['goal']}\nAnswer:", [obj["sol1"], obj["sol2"]],
               int(obj["label"]), row)


def _winogrande(obj, row, where):
    sentence = obj["sentence"]
    if sentence.count("_") != 1:
        raise ValueError(f"{where}: the sentence needs exactly one blank '_' (found "
                         f"{sentence.count('_')}); fix the record")
    blank = sentence.index("_")
    contexts = [sentence[:blank] + obj["option1"], sentence[:blank] + obj["option2"]]
    rest = DELIMITER + sentence[blank + 1:].strip()
    gold = {"1": 0, "2": 1}.get(str(obj["answer"]).strip())
    if gold is None:
        raise ValueError(f"{where}: answer {obj['answer']!r} is not '1' or '2'; fix the record")
    return Question([(c, rest) for c in contexts], gold, row, contexts)


def hellaswag_preprocess(text):
    """lm-eval's hellaswag utils.preprocess: strip, WikiHow's ' [title]' -> '. ', drop other
    [bracketed] artifacts, fold double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(obj, row, where):
    ctx = (obj["ctx_a"] + " " + obj["ctx_b"].capitalize() if "ctx_a" in obj else obj["ctx"])
    query = hellaswag_preprocess(obj["activity_label"] + ": " + ctx)
    return _mc(query, [hellaswag_preprocess(e) for e in obj["endings"]], int(obj["label"]), row)


def _boolq(obj, row, where):
    answer = obj["answer"] if "answer" in obj else obj["label"]
    return _mc(f"{obj['passage']}\nQuestion: {obj['question']}?\nAnswer:", ["no", "yes"],
               int(bool(answer) if isinstance(answer, bool) else answer), row)


def _social_i_qa(obj, row, where):
    return _mc(f"Q: {obj['context']} {obj['question']}\nA:",
               [obj["answerA"], obj["answerB"], obj["answerC"]], int(obj["label"]) - 1, row)


# name, the fields that identify it, the builder (the first match wins)
LAYOUTS = [
    ("winogrande", {"sentence", "option1", "option2", "answer"}, _winogrande),
    ("piqa", {"goal", "sol1", "sol2", "label"}, _piqa),
    ("hellaswag", {"activity_label", "endings", "label"}, _hellaswag),
    ("social_i_qa", {"context", "question", "answerA", "answerB", "answerC", "label"},
     _social_i_qa),
    ("openbookqa", {"question_stem", "choices", "answerKey"}, _openbookqa),
    ("ai2_arc", {"question", "choices", "answerKey"}, _arc),
    ("boolq", {"question", "passage"}, _boolq),
]


def detect_layout(obj, where):
    """The layout whose fields the record has; one line naming the fields found otherwise."""
    for name, fields, build in LAYOUTS:
        if fields <= set(obj):
            return name, build
    accepted = "; ".join(f"{n} {sorted(f)}" for n, f, _ in LAYOUTS)
    raise ValueError(f"{where}: fields {sorted(obj)} match no layout; accepted: {accepted}, or "
                     "llmlab instruction records / `text;label` lines")


def _check(question, where):
    if len(question.requests) < 2:
        raise ValueError(f"{where}: {len(question.requests)} choice(s); a question needs at "
                         "least two")
    if not 0 <= question.gold < len(question.requests):
        raise ValueError(f"{where}: the answer {question.gold} is outside the "
                         f"{len(question.requests)} choices; fix the record")
    return question


def _hub_questions(path):
    rows = data.read_json_rows(path, (), "--data")
    name, _ = detect_layout(rows[0][1], f"{path}: row {rows[0][0]}")
    questions = []
    for row, obj in rows:
        where = f"{path}: row {row}"
        layout, build = detect_layout(obj, where)
        if layout != name:
            raise ValueError(f"{where}: a {layout} record in a {name} file; one layout a file")
        try:
            questions.append(_check(build(obj, row, where), where))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            if isinstance(err, ValueError) and str(err).startswith(where):
                raise
            raise ValueError(f"{where}: malformed {name} record ({type(err).__name__}: "
                             f"{err}); fix the record") from None
    return name, questions


def _record_questions(path):
    records = sft.read_records(path, flag="--data")
    labels = sft.label_set(records)
    questions = []
    for row, r in enumerate(records, start=1):
        if r.answer is None:
            raise ValueError(f"{r.where}: no answer; an evaluation file needs every answer")
        text = f"{r.context}\n{r.text}" if r.context else r.text
        questions.append(_check(_mc(f"Question: {text}\nAnswer:", labels,
                                    labels.index(r.answer), row), r.where))
    return Path(path).stem, questions


def read_questions(path, limit=None):
    """(task name, [Question]) of a file: a hub layout (JSON list or JSON lines, told by the first
    record's fields) or llmlab's own records; the first `limit` questions when given."""
    path = Path(path)
    text = file_checks.read_text(path, "--data")
    if not text.strip():
        raise ValueError(f"--data {path}: the file is empty; give a file with questions")
    if text.lstrip().startswith(("[", "{")):
        row, first = data.read_json_rows(path, (), "--data")[0]
        try:
            detect_layout(first, f"{path}: row {row}")
        except ValueError as no_layout:
            if not {"instruction", "text", "question"} & set(first):
                raise no_layout from None
        else:
            name, questions = _hub_questions(path)
            return name, questions[:limit]
    name, questions = _record_questions(path)
    return name, questions[:limit]


# ----------------------------------------------------------------------------
# scoring and metrics

def encode_pair(tokenizer, context, continuation, special=False):
    """lm-eval's _encode_pair for a causal model -> (context ids, continuation ids). special:
    the context is a rendered chat template, its special tokens parsed as such."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = _encode(tokenizer, context + continuation, special)
    context_ids = _encode(tokenizer, context, special)
    return context_ids, whole[len(context_ids):]


def _encode(tokenizer, text, special):
    """ids of text, BOS first once when the model's tokenizer adds one (a rendered chat template
    may already start with it: lm-eval's tok_encode then adds no special tokens)."""
    ids = tokenizer.encode(text, allow_special=special)
    if scoring.uses_bos(tokenizer) and ids[:1] != [tokenizer.bos_id]:
        ids = [tokenizer.bos_id] + ids
    return ids


def truncate(context_ids, continuation_ids, max_len):
    """lm-eval's _loglikelihood_tokens keeps the last max_len + 1 tokens of context +
    continuation (the model reads the first max_len of them): a long context loses its start."""
    keep = max(max_len + 1 - len(continuation_ids), 1)
    return context_ids[-keep:], continuation_ids


def score_questions(model, tokenizer, questions, batch_size=16, chat_template=False):
    """Per question, per choice, the summed log-likelihood of its continuation. chat_template:
    each context becomes the user turn with the assistant's turn opened, and the delimiter is
    dropped (lm-eval's apply_chat_template)."""
    pairs = []
    for q in questions:
        for context, continuation in q.requests:
            if chat_template:
                context = tokenizer.apply_chat_template([{"role": "user", "content": context}])
                continuation = continuation.removeprefix(DELIMITER)
            pairs.append(truncate(*encode_pair(tokenizer, context, continuation, chat_template),
                                  scoring.max_tokens(model)))
    flat = scoring.continuation_logprobs(model, pairs, tokenizer.pad_id, batch_size)
    out, start = [], 0
    for q in questions:
        out.append(flat[start:start + len(q.requests)])
        start += len(q.requests)
    return out


def argmax(values):
    return max(range(len(values)), key=lambda k: values[k])


def task_metrics(questions, loglikelihoods):
    """{"n", "acc", "acc_norm", "predictions"}: predictions by the raw sums; acc_norm divides
    each sum by its choice's length in characters (lm-eval's completion_len)."""
    predictions = [argmax(ll) for ll in loglikelihoods]
    normed = [argmax([v / max(len(c), 1) for v, c in zip(ll, q.choices)])
              for q, ll in zip(questions, loglikelihoods)]
    n = len(questions)
    return {"n": n, "acc": sum(p == q.gold for p, q in zip(predictions, questions)) / max(n, 1),
            "acc_norm": sum(p == q.gold for p, q in zip(normed, questions)) / max(n, 1),
            "predictions": predictions}
