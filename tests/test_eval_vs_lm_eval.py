"""llmlab's evaluation harness against EleutherAI's lm-eval itself, question by question.

Run: .venv/bin/python -m pytest tests/test_eval_vs_lm_eval.py -q
     (CPU, ~1 min on 2 quiet cores: one lm-eval model load, three lm-eval runs; -m "not slow"
      keeps the first run, the eight layouts; skips when lm-eval is absent: setup.sh --dev)

Oracle: lm-eval 0.4.13 (requirements-dev.txt), offline and in-process (tests/lm_eval_oracle.py:
lm_eval.simple_evaluate, hf backend, fp32, CPU, batch 16, the default SmolLM2-135M-Instruct GGUF
dequantized by transformers). Each layout's task is lm-eval's own YAML (`include:` of its file in
the installed package, so its prompts, targets and preprocessing functions are lm-eval's) with only
the dataset swapped for a small JSON-lines fixture written here: realistic records in the Hugging
Face hub fields lm-eval reads, 5-7 per layout, with the cases that trip a re-implementation (ARC's
numeric labels, 3 and 5 choices, non-ASCII choices where characters and bytes differ for
acc_norm; a trailing space on an OpenBookQA stem; a WinoGrande blank before the final period;
HellaSwag's WikiHow [header]/[title]/[step] markers, an empty ctx_b and a ctx_b to capitalize;
both BoolQ hub layouts).

Ours: evaluation.read_questions + evaluation.score_questions on weights.load_pretrained() of the
same file (our GGUF reader and dequantizer, our model, our tokenizer).

Asserted, per question: every choice's summed log-likelihood within 1e-3 absolute, and the same
acc and acc_norm as lm-eval's per-document values. Why 1e-3: both sides hold the same Q4_1 weights
dequantized to the same fp32 values and compute in fp32, but with other kernels (our fused SDPA
and matmuls, KV-cache continuation vs transformers' full forward) and summation orders; the
differences seen are ~1e-5 to 1e-4 on sums of 1-60 token log-probs of magnitude ~1-100, while a
wrong prompt, a misplaced space or an extra BOS token moves a sum by 0.1 or more.
Also: the same with the chat template (our chat_template=True vs lm-eval's
--apply_chat_template), and a long context cut as lm-eval cuts it (max_length 40).
"""
import json

import pytest
import torch

import evaluation
import weights

pytest.importorskip("lm_eval", reason="lm-eval is the oracle (bash setup.sh --dev)")
pytest.importorskip("transformers", reason="lm-eval's hf backend needs transformers")
import lm_eval_oracle  # noqa: E402  (after the skip: it imports lm_eval)

TOL = 1e-3


def arc(i, question, texts, answer, labels="ABCDE"):
    return {"id": f"Mercury_{7000 + i}", "question": question,
            "choices": {"text": texts, "label": list(labels[:len(texts)])}, "answerKey": answer}


def hellaswag(i, label, ctx_a, ctx_b, endings, gold, source):
    return {"ind": 100 + i, "activity_label": label, "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": (ctx_a + " " + ctx_b).strip(), "endings": endings,
            "source_id": source, "split": "val", "split_type": "indomain", "label": gold}


BOOLQ = [  # (question, passage, answer)
    ("is the sun a star", "The Sun is the star at the center of the Solar System. It is a nearly "
     "perfect ball of hot plasma, heated to incandescence by nuclear fusion reactions in its "
     "core.", True),
    ("is the moon made of cheese", "The Moon is Earth's only natural satellite. It is a rocky "
     "body with a thin crust, a mantle and a small iron core.", False),
    ("can you see the great wall of china from space", "The Great Wall of China is often said "
     "to be visible from the Moon. Astronauts have reported that it is not visible to the naked "
     "eye from the Moon, and only barely, if at all, from low Earth orbit.", False),
    ("do penguins live in the north pole", "Penguins are a group of aquatic flightless birds. "
     "They live almost exclusively in the Southern Hemisphere; only one species, the Galapagos "
     "penguin, is found north of the Equator.", False),
    ("is a tomato a fruit", "Botanically, a tomato is a fruit: a berry that forms from the "
     "ovary of the flowering plant and holds its seeds. In cooking it is used as a vegetable.",
     True),
]

LAYOUTS = {
    "ai2_arc": [
        arc(0, "Which factor will most likely cause a person to develop a fever?",
            ["a leg muscle relaxing after exercise", "a bacterial population in the bloodstream",
             "several viral particles on the skin", "carbohydrates being digested in the stomach"],
            "B"),
        arc(1, "Which of these is a renewable resource?", ["coal", "oil", "wind", "natural gas"],
            "3", labels=["1", "2", "3", "4"]),
        arc(2, "A student mixes baking soda and vinegar in a cup and sees bubbles form. What do "
            "the bubbles show?", ["a chemical change", "a change of state",
                                  "a mixture being separated"], "A"),
        arc(3, "Which unit is best for measuring the mass of a paper clip?",
            ["gram", "kilogram", "liter", "meter", "milliliter"], "A"),
        arc(4, "At sea level, pure water boils at which temperature?",
            ["0 °C", "37 °C", "100 °C", "212 °C"], "C"),
        arc(5, "George wants to warm his hands quickly by rubbing them. Which skin surface will "
            "produce the most heat?", ["dry palms", "wet palms", "palms covered with oil",
                                       "palms covered with lotion"], "A"),
    ],
    "openbookqa": [
        {"id": f"{7 + i}-{i * 37}", "question_stem": stem,
         "choices": {"text": texts, "label": ["A", "B", "C", "D"]}, "answerKey": key}
        for i, (stem, texts, key) in enumerate([
            ("The sun is responsible for", ["puppies learning new tricks",
             "children growing up and getting old", "flowers wilting in a vase",
             "plants sprouting, blooming and wilting"], "D"),
            ("When standing miles away from Mount Rushmore", ["the mountains seem very close",
             "the mountains are boring", "the mountains look the same as from up close",
             "the mountains seem smaller than in photographs"], "D"),
            ("A person wants to start saving money so that they can afford a nice vacation at "
             "the end of the year. After looking over their budget and expenses, they decide the "
             "best way to save money is to ",  # trailing space: moves to the continuation
             ["make more phone calls", "quit eating lunch out", "buy less with monopoly money",
              "have lunch with friends"], "B"),
            ("Which of these would let the most heat travel through?", ["a new pair of jeans",
             "a steel spoon in a cafeteria", "a cotton candy at a store",
             "a calvin klein cotton hat"], "B"),
            ("An animal that only eats plants is a", ["carnivore", "herbivore", "omnivore",
             "decomposer"], "B"),
        ])],
    "piqa": [
        {"goal": goal, "sol1": a, "sol2": b, "label": label}
        for goal, a, b, label in [
            ("When boiling butter, when it's ready, you can", "Pour it onto a plate",
             "Pour it into a jar", 1),
            ("To permanently attach metal legs to a chair, you can",
             "Weld the metal together to get it to stay firmly in place",
             "Nail the metal together to get it to stay firmly in place", 0),
            ("how do you indent something?", "leave a space before starting the writing",
             "press the spacebar", 0),
            ("To open a jar of pickles,", "twist the lid counterclockwise.",
             "twist the lid with a fork.", 0),
            ("How do I dry wet shoes?", "Put them in the oven at 500 degrees.",
             "Stuff them with newspaper overnight.", 1),
            ("Make a simple bird feeder.",
             "Spread peanut butter on a pine cone and roll it in birdseed.",
             "Spread peanut butter on a pine cone and roll it in sand.", 0),
        ]],
    "winogrande": [
        {"sentence": s, "option1": a, "option2": b, "answer": ans}
        for s, a, b, ans in [
            ("Sarah was a much better surgeon than Maria so _ always got the harder cases.",
             "Sarah", "Maria", "1"),
            ("Sarah was a much better surgeon than Maria so _ always got the easier cases.",
             "Sarah", "Maria", "2"),
            ("The trophy doesn't fit into the brown suitcase because the _ is too large.",
             "trophy", "suitcase", "1"),
            ("The trophy doesn't fit into the brown suitcase because the _ is too small.",
             "trophy", "suitcase", "2"),
            ("Ian volunteered to eat Dennis's menudo after already having a bowl because _ "
             "despised eating intestine.", "Ian", "Dennis", "2"),
            ("Kyle had room in the garage for a bike but not for a car, so he bought a _.",
             "bike", "car", "1"),  # the blank just before the final period
        ]],
    "hellaswag": [
        hellaswag(0, "Removing ice from car", "Then, the man writes over the snow covering the "
                  "window of a car, and a woman wearing winter clothes smiles.", "then",
                  [", the man adds wax to the windshield and cuts it.",
                   ", a person board a ski lift, while two men supporting the head of the "
                   "person wearing winter clothes snow as the we girls sled.",
                   ", the man puts on a christmas coat, knitted with netting.",
                   ", the man continues removing the snow on his car."], "3",
                  "activitynet~v_-1IBHYS3L-Y"),
        hellaswag(1, "Home and Garden", "[header] How to clean a ceramic sink [title] Remove "
                  "any debris. [step] Before you begin cleaning, take out anything in the sink.",
                  "",  # empty ctx_b: the context ends in "... sink. " before preprocess
                  ["[substeps] Rinse the dishes and put them away. [title] Scrub with baking "
                   "soda.", "Throw food scraps in the trash and wipe out loose dirt with a damp "
                   "cloth. [title] Sprinkle baking soda over the basin.",
                   "Paint the sink with  a bright color so it looks new.",
                   "[step] Fill the sink with sand and leave it overnight."], "1",
                  "wikihow~8612"),
        hellaswag(2, "Baking cookies", "A woman is seen standing in a kitchen holding a bowl of "
                  "batter.", "the woman",
                  ["scoops the batter onto a tray and places it in the oven.",
                   "throws the bowl out of the window.",
                   "begins playing the drums in the kitchen.",
                   "sits down and reads a newspaper in the rain."], "0",
                  "activitynet~v_baking"),
        hellaswag(3, "Personal Care and Style", "[header] How to get rid of dandruff [title] "
                  "Wash your hair with a dandruff shampoo. [step] Look for a shampoo with zinc "
                  "pyrithione or salicylic acid.", "Massage",
                  ["the shampoo into your scalp and leave it for five minutes before rinsing.",
                   "the car until it shines. [title] Park it in the sun.",
                   "your dog with the shampoo twice a day.",
                   "the shampoo into your eyes for best results."], "0", "wikihow~40312"),
        hellaswag(4, "Playing harmonica", "A man is standing on a stage holding a harmonica.",
                  "he", ["puts the harmonica to his mouth and starts playing a song.",
                         "eats the harmonica in one bite.",
                         "throws the harmonica into the crowd and leaves.",
                         "paints the harmonica blue."], "0", "activitynet~v_harmonica"),
    ],
    # super_glue's BoolQ (lm-eval's boolq task reads it): {"question", "passage", "idx", "label"}
    "boolq": [{"question": q, "passage": p, "idx": i, "label": int(a)}
              for i, (q, p, a) in enumerate(BOOLQ)],
    # google/boolq's layout, also read by llmlab: {"question", "answer": bool, "passage"}
    "boolq_answer": [{"question": q, "answer": a, "passage": p} for q, p, a in BOOLQ],
    "social_i_qa": [
        {"context": c, "question": q, "answerA": a, "answerB": b, "answerC": cc, "label": lab}
        for c, q, a, b, cc, lab in [
            ("Tracy didn't go home that evening and resisted Riley's attacks.",
             "What does Tracy need to do before this?", "make a new plan",
             "Go home and see Riley", "Find somewhere to go", "3"),
            ("Sydney walked past a homeless woman asking for change but did not have any money "
             "they could give to her. Sydney felt bad afterwards.",
             "How would you describe Sydney?", "sympathetic",
             "like a person who was unable to help", "incredulous", "1"),
            ("Sasha protected the patients' rights by making new laws regarding cancer drug "
             "trials.", "What will patients want to do next?", "write new laws",
             "get petitions signed", "live longer", "3"),
            ("Jordan was in charge of taking the food on the camping trip and left all the food "
             "at home.", "How would Jordan feel afterwards?", "horrible that he let his friends "
             "down on the camping trip", "happy that he doesn't need to do the cooking on the "
             "trip", "very proud and accomplished about the camping trip", "1"),
            ("Kendall opened their mouth to speak and what came out shocked everyone.",
             "How would you describe Kendall?", "a very quiet person", "a very passive person",
             "a very aggressive and talkative person", "3"),
        ]],
}
TASK = {"boolq_answer": "boolq"}           # fixture name -> the layout read_questions reports
MAX_LENGTH = 40                            # the truncation test's context window (tokens)
TRUNCATED = ["boolq", "hellaswag", "social_i_qa"]


def layout(name):
    return TASK.get(name, name)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-fixtures")
    paths = {}
    for name, rows in LAYOUTS.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                               encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def ours(default_model_path):
    return weights.load_pretrained(default_model_path, require_tokenizer=True)


def lm_eval_docs(files, default_model_path, names, **options):
    """lm-eval's Docs for the fixtures, all of them in one run (cached for the session)."""
    return lm_eval_oracle.score_many({n: (layout(n), files[n]) for n in names},
                                     gguf_path=default_model_path, **options)


def assert_equal_to_lm_eval(name, path, docs, model, tokenizer, chat_template=False):
    task, questions = evaluation.read_questions(path)
    assert task == layout(name)
    assert len(questions) == len(docs) == len(LAYOUTS[name])
    with torch.no_grad():
        ll = evaluation.score_questions(model, tokenizer, questions, batch_size=4,
                                        chat_template=chat_template)
    for q, mine, doc in zip(questions, ll, docs, strict=True):
        where = f"{name} record {q.record}: ours {mine} vs lm-eval {doc.loglikelihoods}"
        torch.testing.assert_close(torch.tensor(mine, dtype=torch.float64),
                                   torch.tensor(doc.loglikelihoods, dtype=torch.float64),
                                   atol=TOL, rtol=0, msg=lambda m: f"{where}\n{m}")
        one = evaluation.task_metrics([q], [mine])
        assert (one["acc"], one["acc_norm"]) == (doc.acc, doc.acc_norm), where


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_loglikelihoods_and_metrics_equal_lm_evals(name, files, ours, default_model_path):
    docs = lm_eval_docs(files, default_model_path, LAYOUTS)[name]
    assert_equal_to_lm_eval(name, files[name], docs, *ours)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_chat_template_equals_lm_evals_apply_chat_template(name, files, ours,
                                                           default_model_path):
    """Ours with chat_template=True vs lm-eval's --apply_chat_template: the context is the user
    turn (SmolLM2's template adds its default system turn) with the assistant turn opened, and
    the choice follows with no delimiter."""
    docs = lm_eval_docs(files, default_model_path, LAYOUTS, chat_template=True)[name]
    assert_equal_to_lm_eval(name, files[name], docs, *ours, chat_template=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", TRUNCATED)
def test_long_context_loses_its_start_as_in_lm_eval(name, files, ours, default_model_path):
    """Every request longer than MAX_LENGTH + 1 tokens is cut from the left as lm-eval's
    _loglikelihood_tokens cuts it (HFLM max_length=40 there, config.max_seq_len=40 here)."""
    docs = lm_eval_docs(files, default_model_path, TRUNCATED, max_length=MAX_LENGTH)[name]
    model, tokenizer = ours
    full = model.config.max_seq_len
    _, questions = evaluation.read_questions(files[name])
    lengths = [sum(map(len, evaluation.encode_pair(tokenizer, *r))) for q in questions
               for r in q.requests]
    assert max(lengths) > MAX_LENGTH + 1, "the fixture must hold a request longer than the window"
    model.config.max_seq_len = MAX_LENGTH
    try:
        assert_equal_to_lm_eval(name, files[name], docs, model, tokenizer)
    finally:
        model.config.max_seq_len = full
