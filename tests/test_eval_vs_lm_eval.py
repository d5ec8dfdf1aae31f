"""llmlab's evaluation harness against EleutherAI's lm-eval itself, question by question.

Run: .venv/bin/python -m pytest tests/test_eval_vs_lm_eval.py -q   (CPU, ~1 min: lm-eval loads the
default GGUF through transformers once for every layout)

Oracle: lm-eval 0.4.13 (requirements-dev.txt), offline, in-process (lm_eval.simple_evaluate, hf
backend, fp32, the default SmolLM2 GGUF dequantized by transformers). Each layout's task is
lm-eval's own YAML (`include:` of its file in the installed package, so its prompts and
preprocessing functions are lm-eval's), with only the dataset swapped for a local JSON-lines
fixture written here. Ours: evaluation.read_questions + score_questions on weights.load_pretrained
of the same file. Per-choice log-likelihoods agree within 1e-3 (the same weights dequantized the
same way, fp32, other kernels and summation orders: ~4e-5 seen), and acc / acc_norm are identical
question by question.
"""
import json

import pytest
import torch

import evaluation
import weights

pytest.importorskip("lm_eval", reason="lm-eval is the oracle (setup.sh --dev)")
pytest.importorskip("transformers")
import lm_eval_oracle  # noqa: E402  (after the skip: it imports lm_eval)

# layout -> records in the Hugging Face hub fields lm-eval reads
ARC = [{"question": q, "choices": {"text": c, "label": ["A", "B", "C", "D"]}, "answerKey": k}
       for q, c, k in [
           ("Which factor will most likely cause a person to develop a fever?",
            ["a leg muscle relaxing", "a bacterial population in the bloodstream",
             "several viral particles on the skin", "carbohydrates being digested"], "B"),
           ("What do plants need to make food?", ["sunlight", "sand", "noise", "plastic"], "A"),
           ("Which is a liquid at room temperature?", ["iron", "water", "salt", "wood"], "B")]]
LAYOUTS = {
    "ai2_arc": ARC,
    "openbookqa": [{"question_stem": r["question"], "choices": r["choices"],
                    "answerKey": r["answerKey"]} for r in ARC],
    "piqa": [
        {"goal": "To open a jar of pickles,", "sol1": "twist the lid counterclockwise.",
         "sol2": "twist the lid with a fork.", "label": 0},
        {"goal": "How do I dry wet shoes?", "sol1": "Put them in the oven at 500 degrees.",
         "sol2": "Stuff them with newspaper overnight.", "label": 1}],
    "winogrande": [
        {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder "
                     "cases.", "option1": "Sarah", "option2": "Maria", "answer": "1"},
        {"sentence": "The trophy doesn't fit into the suitcase because the _ is too small.",
         "option1": "trophy", "option2": "suitcase", "answer": "2"}],
    "hellaswag": [
        {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow "
         "covering the window of a car, and a woman wearing winter clothes smiles.",
         "ctx_b": "then", "ctx": "", "endings": [
             ", the man adds wax to the windshield and cuts it.",
             ", a person board a ski lift, while two men supporting the head of the person.",
             ", the man puts on a christmas coat, knitted with netting.",
             ", the man continues removing the snow on his car."], "label": "3"},
        {"activity_label": "Home and Garden", "ctx_a": "[header] How to water a plant [title] "
         "Check the soil.", "ctx_b": "if it is dry", "ctx": "", "endings": [
             "water it until the water drains.", "paint the pot [title] red.",
             "sell the plant.", "throw it away."], "label": "0"}],
    "boolq": [
        {"question": "is the sun a star", "passage": "The Sun is the star at the centre of the "
         "Solar System.", "label": 1, "idx": 0},
        {"question": "is the moon made of cheese", "passage": "The Moon is a rocky body.",
         "label": 0, "idx": 1}],
    "social_i_qa": [
        {"context": "Tracy didn't go home that evening and resisted Riley's attacks.",
         "question": "What does Tracy need to do before this?", "answerA": "make a new plan",
         "answerB": "Go home and see Riley", "answerC": "Find somewhere to go", "label": "3"},
        {"context": "Sydney walked past a homeless woman asking for change.",
         "question": "How would you describe Sydney?", "answerA": "sympathetic",
         "answerB": "like a person who was unable to help", "answerC": "incredulous",
         "label": "1"}],
}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, default_model_path):
    """{layout: (fixture path, lm-eval's per-document (log-likelihoods, acc, acc_norm))}, from
    one lm-eval run over every layout."""
    folder = tmp_path_factory.mktemp("lm-eval")
    files = {}
    for name, rows in LAYOUTS.items():
        files[name] = folder / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    docs = lm_eval_oracle.run({n: (lm_eval_oracle.YAMLS[n], files[n]) for n in LAYOUTS}, folder,
                              default_model_path)
    return {n: (files[n], docs[n]) for n in LAYOUTS}


@pytest.fixture(scope="module")
def ours(default_model_path):
    return weights.load_pretrained(default_model_path, require_tokenizer=True)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_loglikelihoods_and_metrics_equal_lm_evals(layout, oracle, ours):
    path, docs = oracle[layout]
    model, tokenizer = ours
    task, questions = evaluation.read_questions(path)
    assert task == layout
    with torch.no_grad():
        ll = evaluation.score_questions(model, tokenizer, questions, batch_size=4)
    for q, mine, (theirs, acc, acc_norm) in zip(questions, ll, docs, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-3), (layout, q.record)
        one = evaluation.task_metrics([q], [mine])
        assert (one["acc"], one["acc_norm"]) == (acc, acc_norm), (layout, q.record)
