"""Tests for run_chat.py: `run.py --option chat`, multi-turn, with its studies (seed 004 Q1.4, Q1.5).

Run: .venv/bin/python -m pytest tests/test_run_chat.py -q   (about a minute on 2 shared CPU cores:
four short runs of the default model, at most 20 new tokens each; the rest is hermetic)

Oracles: the conversation file itself (parsed messages) and the one-line error contract (file,
row, fix); Tokenizer.apply_chat_template / encode_chat, and transformers' render_jinja_template
on the same template text (the GGUF's own tokenizer.chat_template read by the `gguf` package, Meta's
Llama 3 Instruct template) for the multi-turn prompt; for the turn loop, the ids encode_chat gives
for the history the transcript records (turn 2 sees turn 1, /reset forgets it), and the default
model recalling a number only while it is in the history; a fixed --seed repeating a sample; for
the studies, a hermetic fake model (load_model and stream replaced) to check which prompts and
settings are answered. The repetition penalty itself is checked against transformers in
tests/test_sample.py; here greedy with --repetition_penalty 1.3 answers a looping prompt
differently and with fewer repeated tokens. Bad flags: weights.load_pretrained is replaced by a
function that fails the test, so every error must come before the model loads.
"""
import argparse
import copy
import io
import json
import sys
import types

import pytest

import run_chat
import run_generate
import run
import tokenizer as T
import weights
from conftest import need_data

FILE_TURNS = [{"role": "user", "content": "Remember the number 42."},
              {"role": "assistant", "content": "I will remember 42."},
              {"role": "user", "content": "Which number?"}]


def chat_cli(*argv):
    run.main(["--option", "chat", *argv])


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def smol(smol_tokenizer):
    return smol_tokenizer


@pytest.fixture(scope="module")
def smol_template(default_model_path):
    """The GGUF's own chat template, read by llama.cpp's `gguf` package (not by our code)."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(default_model_path))
    return reader.fields["tokenizer.chat_template"].contents()


# ----------------------------------------------------------------------------
# conversation files

def test_read_conversation_reads_a_multi_turn_list(tmp_path):
    with_extra = [{**m, "name": "x"} for m in FILE_TURNS]           # extra keys are dropped
    assert run_chat.read_conversation(write_json(tmp_path / "c.json", with_extra)) == FILE_TURNS
    lines = tmp_path / "c.jsonl"                                    # JSON lines, as data.py reads
    lines.write_text("\n".join(json.dumps(m) for m in FILE_TURNS), encoding="utf-8")
    assert run_chat.read_conversation(lines) == FILE_TURNS


@pytest.mark.parametrize("text, words", [
    ('[{"role": "user", "content": "a"', "not valid JSON"),
    ("[]", "no rows"),
    ('["hello"]', "row 1: expected an object, got str"),
    ('[{"role": "user"}]', "row 1: missing field 'content'"),
    ('[{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]',
     "row 2: role 'bot' is unknown; use system, user or assistant"),
    ('[{"role": "user", "content": 3}]', "row 1: content is a int; make it a string"),
    ('[{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, '
     '{"role": "user", "content": "b"}]', "row 2: a system message must be the first"),
    ('[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]',
     "row 2: the last message is the assistant's; end with the user turn")])
def test_bad_conversation_files_are_one_line_errors(tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        run_chat.read_conversation(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and words in message, message
    with pytest.raises(FileNotFoundError, match="file not found"):
        run_chat.read_conversation(tmp_path / "missing.json")


# ----------------------------------------------------------------------------
# the rendered prompt

def test_multi_turn_prompt_equals_the_templates(tmp_path, smol, smol_template):
    """run_chat.build_messages + render == Tokenizer.apply_chat_template == transformers' jinja
    rendering of the same template, with and without --system (ChatML then adds SmolLM2's own
    system turn); the ids are encode_chat's; the plain baseline is the turns as lines."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    path = write_json(tmp_path / "c.json", FILE_TURNS)
    for system in (None, "Be brief."):
        args = argparse.Namespace(prompt=None, conversation=str(path), system=system)
        messages = run_chat.build_messages(args)
        expected = ([{"role": "system", "content": system}] if system else []) + FILE_TURNS
        assert messages == expected
        text, ids, kind = run_chat.render(smol, messages)
        [hf], _ = utils.render_jinja_template(conversations=[expected], chat_template=smol_template,
                                              add_generation_prompt=True)
        assert text == smol.apply_chat_template(expected) == hf and kind == "chatml template"
        assert ids == smol.encode_chat(expected)
    text, ids, kind = run_chat.render(smol, messages, template=False)
    assert text == ("system: Be brief.\nuser: Remember the number 42.\nassistant: I will "
                    "remember 42.\nuser: Which number?\nassistant:")
    assert ids == smol.encode(text) and kind == "plain lines, no template"


def test_multi_turn_prompt_for_llama3_and_llama2():
    """Llama 3: == transformers' jinja rendering of Meta's Instruct template; Llama 2: ==
    apply_chat_template (its ids are checked against Meta's code in tests/test_tokenizer.py)."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    from test_tokenizer import LLAMA3_JINJA
    messages = run_chat.with_system(FILE_TURNS, "Be brief.")
    llama3 = T.Tokenizer.from_file(need_data("tokenizers", "llama3-tokenizer.model"))
    text, ids, kind = run_chat.render(llama3, messages)
    [hf], _ = utils.render_jinja_template(conversations=[messages], chat_template=LLAMA3_JINJA,
                                          add_generation_prompt=True, bos_token="<|begin_of_text|>")
    assert text == hf and ids == llama3.encode_chat(messages) and kind == "llama3 template"
    llama2 = T.Tokenizer.from_file(need_data("tokenizers", "llama2-tokenizer.model"))
    text, ids, kind = run_chat.render(llama2, messages)
    assert text == llama2.apply_chat_template(messages) and text.count("[INST]") == 2
    assert ids == llama2.encode_chat(messages) and kind == "llama2 template"


def test_show_template_and_out_for_a_conversation_file(tmp_path, capsys, smol):
    """The default model answers a two-turn file; --show_template prints the exact string and
    its token count; --out holds settings, messages and the answer."""
    path, out = write_json(tmp_path / "c.json", FILE_TURNS), tmp_path / "t.json"
    chat_cli("--conversation", str(path), "--system", "Be brief.", "--show_template",
             "--max_new_tokens", "3", "--out", str(out))
    messages = run_chat.with_system(FILE_TURNS, "Be brief.")
    text, ids = smol.apply_chat_template(messages), smol.encode_chat(messages)
    printed = capsys.readouterr().out
    assert (f"user: Which number?\n----- prompt (chatml template, {len(ids)} tokens) -----\n"
            f"{text}----- end of prompt -----\nassistant: ") in printed
    transcript = json.loads(out.read_text(encoding="utf-8"))
    assert transcript["messages"] == messages
    [record] = transcript["answers"]
    assert 1 <= record["tokens"] <= 3 and record["prompt_tokens"] == len(ids)
    assert record["text"] in printed and record["prompt"] == "chatml template"
    assert transcript["settings"]["system"] == "Be brief."
    assert transcript["settings"]["max_new_tokens"] == 3


# ----------------------------------------------------------------------------
# the turn loop (stdin not a terminal: one user turn a line)

def test_stdin_turns_keep_the_history_and_reset_clears_it(monkeypatch, capsys, tmp_path, smol):
    """Turn 2's prompt is encode_chat of turn 1 + its answer + turn 2, and the default model
    recalls 42 from it; after /reset the same question is asked alone and 42 is gone; nothing
    after /quit is read."""
    prompts, original = [], run_generate.stream

    def spy(model, tokenizer, prompt_ids, sampling, args):
        prompts.append(list(prompt_ids))
        return original(model, tokenizer, prompt_ids, sampling, args)
    monkeypatch.setattr(run_generate, "stream", spy)
    remember, ask = "Remember the number 42.", "What number did I ask you to remember?"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{remember}\n\n{ask}\n/reset\n{ask}\n/quit\n"
                                                  "never read\n"))
    out = tmp_path / "t.json"
    chat_cli("--max_new_tokens", "8", "--out", str(out))
    first, second, third = [r["text"] for r in json.loads(out.read_text())["answers"]]
    user = [{"role": "user", "content": remember}]
    asked = [{"role": "user", "content": ask}]
    assert prompts == [smol.encode_chat(user),
                       smol.encode_chat(user + [{"role": "assistant", "content": first}] + asked),
                       smol.encode_chat(asked)]
    assert "42" in second and "42" not in third
    printed = capsys.readouterr().out
    assert f"user: {remember}\nassistant: " in printed and "(history cleared" in printed
    assert json.loads(out.read_text())["messages"] == asked + [{"role": "assistant",
                                                                "content": third}]


class FakeModel:
    """Stands in for a Llama where only the prompts matter (hermetic)."""
    def __init__(self, max_seq_len=8192):
        self.config = types.SimpleNamespace(max_seq_len=max_seq_len)


def fake_generation(monkeypatch, tokenizers):
    """load_model returns FakeModel with tokenizers[path]; stream records its calls."""
    calls, loads = [], []

    def load_model(args, path=None):
        loads.append(path)
        return FakeModel(120), tokenizers[path]

    def stream(model, tokenizer, prompt_ids, sampling, args):
        calls.append((list(prompt_ids), sampling))
        print(f"fake {len(calls)}")
        return f"fake {len(calls)}", tokenizer.encode(f"fake {len(calls)}")
    monkeypatch.setattr(run_generate, "load_model", load_model)
    monkeypatch.setattr(run_generate, "stream", stream)
    return calls, loads


def test_loop_commands_system_unknown_and_too_long(monkeypatch, capsys, smol):
    calls, _ = fake_generation(monkeypatch, {None: smol})
    long_turn = "word " * 200
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        f"/system Be brief.\nHi\n/nope\n/system\n{long_turn}\nHi again\n"))
    chat_cli("--max_new_tokens", "8", "--show_template")
    system = [{"role": "system", "content": "Be brief."}]
    hi = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "fake 1"}]
    again = [{"role": "user", "content": "Hi again"}]
    assert [ids for ids, _ in calls] == [smol.encode_chat(system + hi[:1]),
                                         smol.encode_chat(hi + again)]   # /system alone: none
    printed = capsys.readouterr().out
    assert "(system prompt set: 'Be brief.'" in printed and "(unknown command /nope" in printed
    assert "too long for max_seq_len 120" in printed                     # dropped, not kept
    assert printed.count("----- prompt (chatml template") == 2


# ----------------------------------------------------------------------------
# studies: template vs plain, temperatures, a second model

def test_studies_answer_every_variant_side_by_side(monkeypatch, capsys, tmp_path, smol):
    """--compare_template x --temperatures for the model, and the second model (a tokenizer with
    no template: plain lines only); every answer under its header, then in columns."""
    base = copy.copy(smol)
    base.chat_format = None
    other = tmp_path / "base.gguf"
    other.write_bytes(b"")
    calls, loads = fake_generation(monkeypatch, {None: smol, str(other): base})
    out = tmp_path / "t.json"
    chat_cli("--prompt", "Hi", "--compare_template", "--temperatures", "0,0.7",
             "--compare_model", str(other), "--repetition_penalty", "1.2", "--out", str(out))
    messages = [{"role": "user", "content": "Hi"}]
    template, plain = smol.encode_chat(messages), smol.encode("user: Hi\nassistant:")
    assert loads == [None, str(other)]
    assert [(ids, s.temperature) for ids, s in calls] == [
        (template, 0.0), (template, 0.7), (plain, 0.0), (plain, 0.7), (plain, 0.0), (plain, 0.7)]
    assert all(s.repetition_penalty == 1.2 for _, s in calls)
    printed = capsys.readouterr().out
    name = weights.default_model_path().name
    assert f"=== {name}, chatml template, temperature 0.7 ===\nassistant: fake 2\n(" in printed
    assert ("=== base.gguf, plain lines, no template, temperature 0.0 ===\nassistant: fake 5\n"
            in printed)
    side = printed.split("===== side by side =====")[1]
    count = len(smol.encode("fake 1"))
    rows = [[c.strip() for c in line.split(" | ")] for line in side.splitlines() if " | " in line]
    assert [r for r in rows if r[0].startswith("fake")] == [["fake 1", "fake 3"],
                                                            ["fake 2", "fake 4"]]  # same t
    assert side.count(f"{count} tokens") == 6
    assert "\nfake 5\n" in side and "\nfake 6\n" in side                  # the base model alone
    answers = json.loads(out.read_text())["answers"]
    assert [a["text"] for a in answers] == [f"fake {i}" for i in range(1, 7)]
    assert answers[4]["model"] == str(other)


def test_temperatures_repeat_with_the_seed(tmp_path):
    """The default model at temperatures 0, 1, 1: each answer's generator is seeded by --seed,
    so the two samples at temperature 1 are the same."""
    out = tmp_path / "t.json"
    chat_cli("--prompt", "Tell me about cats.", "--temperatures", "0,1,1", "--max_new_tokens",
             "5", "--seed", "3", "--out", str(out))
    greedy, hot, again = json.loads(out.read_text())["answers"]
    assert hot["text"] == again["text"] and greedy["temperature"] == 0.0
    assert hot["temperature"] == again["temperature"] == 1.0


def test_repetition_penalty_changes_a_looping_greedy_answer(tmp_path, smol):
    """Greedy SmolLM2 loops on this prompt ("Abe a sea of dreams," over and over after ~20
    tokens); with --repetition_penalty 1.3 the greedy answer differs and repeats fewer tokens."""
    answers = []
    for extra in ([], ["--repetition_penalty", "1.3"]):
        out = tmp_path / f"t{len(extra)}.json"
        chat_cli("--prompt", "Write a poem about the sea.", "--max_new_tokens", "20",
                 "--out", str(out), *extra)
        answers.append(json.loads(out.read_text())["answers"][0]["text"])
    assert answers[0] != answers[1]
    repeats = [len(ids) - len(set(ids)) for ids in map(smol.encode, answers)]
    assert repeats[1] < repeats[0], (answers, repeats)


# ----------------------------------------------------------------------------
# bad flags: one line, before the model loads

@pytest.mark.parametrize("argv, start", [
    (["--repetition_penalty", "0"], "--repetition_penalty 0"),
    (["--repetition_penalty", "nan"], "--repetition_penalty nan"),
    (["--temperatures", "-1"], "--temperatures -1: --temperature -1.0: must be"),
    (["--temperatures", "0,abc"], "--temperatures 0,abc"),
    (["--temperatures", "0,,1"], "--temperatures 0,,1: an empty item"),
    (["--conversation", "BAD"], "BAD (--conversation): row 2: role 'bot' is unknown"),
    (["--conversation", "/no/such.json"], "/no/such.json (--conversation): file not found"),
    (["--conversation", "SYSTEM", "--system", "x"], "--system: SYSTEM already starts"),
    (["--prompt", "hi", "--conversation", "SYSTEM"], "--prompt and --conversation: give one"),
    (["--compare_template"], "--compare_template: studies one conversation"),
    (["--temperatures", "0,1"], "--temperatures: studies one conversation"),
    (["--prompt", "hi", "--compare_model", "/no/such"], "--compare_model /no/such: no such"),
    (["--prompt", "hi", "--out", "FOLDER"], "argument --out: FOLDER is a folder")])
def test_bad_flags_fail_in_one_line_before_loading(monkeypatch, capsys, tmp_path, argv, start):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")
    monkeypatch.setattr(weights, "load_pretrained", no_loading)
    files = {"BAD": write_json(tmp_path / "bad.json", [FILE_TURNS[0],
                                                       {"role": "bot", "content": "b"}]),
             "SYSTEM": write_json(tmp_path / "s.json", run_chat.with_system(FILE_TURNS, "s")),
             "FOLDER": tmp_path}
    argv = [str(files.get(a, a)) for a in argv]
    for name, path in files.items():
        start = start.replace(name, str(path))
    with pytest.raises(SystemExit) as exit_info:
        chat_cli(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {start}"), err
