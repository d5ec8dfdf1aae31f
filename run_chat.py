"""`run.py --option chat`: a multi-turn conversation with a chat model, in the model's own template.

A chat model was instruction-tuned on conversations rendered in one fixed template (Ouyang et al.
2022, "Training language models to follow instructions", arXiv:2203.02155; seed 004 Q1.4-Q1.5).
Each turn the whole conversation is rendered again and the model writes the assistant's part:
    messages [{"role": "system" | "user" | "assistant", "content": str}, ...]
    -> prompt = template(messages) + the assistant header         (Tokenizer.apply_chat_template:
       ChatML for SmolLM2, Llama 3 headers, Llama 2 [INST]; chat_templates.py)
    -> ids = encode(prompt, special tokens parsed)                (Tokenizer.encode_chat)
    -> answer = the model's tokens until an end-of-turn token     (tokenizer.stop_ids)
and the answer joins the history as an assistant message. The model keeps no state between turns:
it "remembers" only what the rendered history spells out.

Where the conversation comes from (one place only):
    --prompt TEXT          one user turn
    --conversation FILE    a JSON list of {"role", "content"} messages (data.read_json_rows, rows
                           numbered from 1); a system message may only come first; the model
                           answers the last message, which must be a user turn
    neither                a loop of user turns: typed at the terminal, or, when stdin is not a
                           terminal, one per line of stdin (scripts, tests). Commands: /reset
                           (clear the history; the system prompt stays), /system TEXT, /quit.
--system TEXT is the system prompt in every mode.

Studies of one conversation (--prompt or --conversation), each answer under its own header,
then all of them side by side in columns with their token counts:
    --compare_template   with the template vs without: the turns as plain "role: content" lines
                         ending in "assistant:" (no special tokens, no default system turn), Q1.5
    --temperatures 0,0.7 one answer per temperature tau (0 = greedy), each from a generator seeded
                         by --seed so a run repeats (Q1.4's temperature study)
    --compare_model PATH the same conversation answered by a second model, in its own template (or
                         the plain lines when its tokenizer has none): base vs instruct, Q1.4
--repetition_penalty theta (CTRL, Keskar et al. 2019, arXiv:1909.05858, Sec. 4.1; sample.py)
divides the logits of tokens already seen (prompt and answer) by theta, multiplies them when
negative, so a greedy answer stops looping. Caveat: the rendered prompt holds the template's own
tokens, the end-of-turn token included, so the penalty also makes ending the turn less likely
(Hugging Face's RepetitionPenaltyLogitsProcessor does the same).
--show_template prints the exact prompt string (between dashed lines) and its token count;
--out FILE writes the transcript (settings, messages, answers) as JSON through atomic.py.

Shapes: prompts and answers are lists of token ids (T ints); generation is run_generate.stream.
Tests: tests/test_run_chat.py (conversation files and their one-line errors; the rendered multi-turn
prompt == Tokenizer.apply_chat_template and == transformers' render_jinja_template on the same
template text; history kept across stdin turns and cleared by /reset; the loop's commands and
the studies' prompts and settings with a fake model; a seeded sample repeats; the penalty changes
a looping greedy answer; --show_template and --out; bad flags fail before the model loads).
"""
import sys
import textwrap
from pathlib import Path

import atomic
import data
import run_generate
import options
import sample
import weights

ROLES = ("system", "user", "assistant")
COMMANDS = "/reset (clear the history), /system TEXT (set the system prompt), /quit"


# ----------------------------------------------------------------------------
# flags

# path flags, checked by run.py before any work (options.check_paths)
PATHS = options.PathFlags(inputs=("--pretrained-model-path", "--conversation", "--compare_model"),
                          outputs=("--out",))


def add_arguments(parser, option):
    run_generate.add_model_arguments(parser)
    parser.add_argument("--prompt", default=None,
                        help="one user message to answer (default: read the user turns from the "
                        "terminal, or from stdin, one per line)")
    parser.add_argument("--conversation", default=None,
                        help='a JSON list of {"role", "content"} messages ending with the user '
                        "turn the model answers")
    parser.add_argument("--system", default=None, help="the system prompt (none by default; "
                        "SmolLM2's template then adds its own)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 means greedy; a finite number >= 0")
    parser.add_argument("--temperatures", default=None,
                        help="comma-separated temperatures, one answer each, e.g. 0,0.7,1.0 "
                        "(replaces --temperature)")
    parser.add_argument("--show_template", "--show-template", action="store_true",
                        help="print the exact rendered prompt and its token count first")
    parser.add_argument("--compare_template", "--compare-template", action="store_true",
                        help='also answer without the template (the turns as "role: content" '
                        "lines)")
    parser.add_argument("--compare_model", "--compare-model", default=None,
                        help="a second model (.gguf, llama2.c .pt, Hugging Face / llmlab folder) "
                        "answering the same conversation, e.g. the base model")
    parser.add_argument("--out", type=options.output_file, default=None,
                        help="write the transcript (settings, messages, answers) as JSON here")


def parse_temperatures(args):
    """[tau, ...] from --temperatures, or [--temperature]; each checked by SamplingConfig."""
    if args.temperatures is None:
        return [args.temperature]
    values = []
    for item in args.temperatures.split(","):
        try:
            values.append(sample.SamplingConfig(temperature=float(item)).temperature)
        except ValueError as err:
            problem = err if item.strip() else "an empty item"
            raise ValueError(f"--temperatures {args.temperatures}: {problem}; give comma-separated "
                             "numbers >= 0, e.g. 0,0.7,1.0") from None
    return values


def read_conversation(path):
    """[{"role", "content"}, ...] from a JSON file; one-line errors name the file and the row."""
    rows = data.read_json_rows(path, ("role", "content"), flag="--conversation")
    messages = []
    for row, message in rows:
        where = f"{path} (--conversation): row {row}"
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"{where}: role {role!r} is unknown; use system, user or assistant")
        if not isinstance(content, str):
            raise ValueError(f"{where}: content is a {type(content).__name__}; make it a string")
        if role == "system" and messages:
            raise ValueError(f"{where}: a system message must be the first message; move it")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise ValueError(f"{path} (--conversation): row {rows[-1][0]}: the last message is the "
                         f"{messages[-1]['role']}'s; end with the user turn the model answers")
    return messages


def with_system(messages, system):
    """messages with the system prompt `system` (None: none) first."""
    return ([{"role": "system", "content": system}] if system else []) + list(messages)


def build_messages(args):
    """The conversation of --prompt or --conversation (with --system); None: the turn loop."""
    if args.prompt is not None and args.conversation is not None:
        raise ValueError("--prompt and --conversation: give one (the conversation file's last "
                         "user turn is the one answered)")
    if args.conversation is not None:
        messages = read_conversation(args.conversation)
        if args.system is not None and messages[0]["role"] == "system":
            raise ValueError(f"--system: {args.conversation} already starts with a system "
                             "message; drop one of the two")
    elif args.prompt is not None:
        messages = [{"role": "user", "content": args.prompt}]
    else:
        return None
    return with_system(messages, args.system)


def check_options(args):
    """Every flag checked before the model loads -> (SamplingConfigs, messages or None)."""
    run_generate.check_max_new_tokens(args)
    configs = run_generate.sampling_configs(args, parse_temperatures(args))
    messages = build_messages(args)
    studies = [("--temperatures", len(configs) > 1), ("--compare_template", args.compare_template),
               ("--compare_model", args.compare_model is not None)]
    if messages is None and any(on for _, on in studies):
        flag = next(name for name, on in studies if on)
        raise ValueError(f"{flag}: studies one conversation; give it with --conversation FILE or "
                         "--prompt TEXT (the turn loop answers once per turn)")
    if args.compare_model is not None and not Path(args.compare_model).exists():
        raise FileNotFoundError(f"--compare_model {args.compare_model}: no such file or folder; "
                                "give a .gguf, a llama2.c .pt or a Hugging Face / llmlab folder")
    return configs, messages


# ----------------------------------------------------------------------------
# prompts: the model's template, or the plain baseline

def plain_prompt(messages):
    """The no-template baseline: "role: content" lines, then "assistant:" for the model."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def render(tokenizer, messages, template=True):
    """(prompt text, prompt ids, how it was made) with the chat template, or the plain lines."""
    if template:
        return (tokenizer.apply_chat_template(messages), tokenizer.encode_chat(messages),
                f"{tokenizer.chat_format} template")
    text = plain_prompt(messages)
    return text, tokenizer.encode(text, bos=tokenizer.add_bos), "plain lines, no template"


def show_prompt(text, ids, kind):
    """--show_template: the exact prompt string between two dashed lines, and its length."""
    print(f"----- prompt ({kind}, {len(ids)} tokens) -----")
    print(text, end="" if text.endswith("\n") else "\n")
    print("----- end of prompt -----", flush=True)


def model_name(path):
    return Path(path or weights.default_model_path()).name


# ----------------------------------------------------------------------------
# answering

def answer(model, tokenizer, prompt_ids, sampling, args):
    """Stream one assistant turn after "assistant: " -> (its text, its number of tokens)."""
    print("assistant: ", end="", flush=True)
    _, ids = run_generate.stream(model, tokenizer, prompt_ids, sampling, args)
    return tokenizer.decode(ids, skip_special=True), len(ids)


def answer_with(args, configs, messages, path, model, tokenizer, variants):
    """Answer messages with each prompt variant (True: the template, False: plain lines) at each
    temperature -> the answer records. One answer in all prints no header and no count."""
    studies = len(configs) > 1 or len(variants) > 1 or args.compare_model is not None
    records = []
    for template in variants:
        text, ids, kind = render(tokenizer, messages, template)
        if args.show_template:
            show_prompt(text, ids, kind)
        for sampling in configs:
            name = f"{model_name(path)}, {kind}, temperature {sampling.temperature}"
            if studies:
                print(f"=== {name} ===")
            reply, count = answer(model, tokenizer, ids, sampling, args)
            if studies:
                ended = "cut at --max_new_tokens" if count == args.max_new_tokens else "end of turn"
                print(f"({count} tokens, {ended})", flush=True)
            records.append({"name": name, "model": str(path or weights.default_model_path()),
                            "prompt": kind, "temperature": sampling.temperature,
                            "prompt_tokens": len(ids), "tokens": count, "text": reply})
    return records


def print_columns(records, width=100):
    """Answers in columns, each headed by its settings and token count."""
    column = (width - 3 * (len(records) - 1)) // len(records)
    cells = [[*textwrap.wrap(f"{r['name']}: {r['tokens']} tokens", column), "-" * column,
              *[line for part in r["text"].splitlines() or [""]
                for line in textwrap.wrap(part, column) or [""]]] for r in records]
    height = max(len(c) for c in cells)
    for c in cells:
        c += [""] * (height - len(c))
    for row in zip(*cells):
        print(" | ".join(f"{line:<{column}}" for line in row).rstrip())
    print()


def side_by_side(records, most=2):
    """At most `most` answers a row: the variants (models, template or plain) at one temperature
    next to each other; with one variant, the temperatures."""
    variants = dict.fromkeys((r["model"], r["prompt"]) for r in records)
    temperatures = dict.fromkeys(r["temperature"] for r in records)
    groups = ([[r for r in records if r["temperature"] == t] for t in temperatures]
              if len(variants) > 1 else [records])
    for group in groups:
        for start in range(0, len(group), most):
            print_columns(group[start:start + most])


def answer_conversation(args, configs, messages):
    """--prompt / --conversation: every answer the studies ask for, then the columns. The second
    model is loaded after the first is freed, and uses its own template if it has one."""
    model, tokenizer = run_generate.load_model(args)
    for m in messages:
        print(f"{m['role']}: {m['content']}")
    records = answer_with(args, configs, messages, args.pretrained_model_path, model, tokenizer,
                          [True, False] if args.compare_template else [True])
    del model, tokenizer
    if args.compare_model is not None:
        model, tokenizer = run_generate.load_model(args, args.compare_model)
        own = tokenizer.chat_format is not None
        variants = [own, False] if args.compare_template and own else [own]
        records += answer_with(args, configs, messages, args.compare_model, model, tokenizer,
                               variants)
    if len(records) > 1:
        print("\n===== side by side =====")
        side_by_side(records)
    if args.out is not None:
        save_transcript(args, messages, records)


def save_transcript(args, messages, records):
    """--out: every flag (the settings), the messages answered and the answer records."""
    atomic.save_json_atomic(args.out, {"settings": dict(sorted(vars(args).items())),
                                       "messages": messages, "answers": records})


# ----------------------------------------------------------------------------
# the turn loop: the terminal, or stdin one line a turn

def read_turns(interactive):
    """User lines (stripped, blank ones skipped) from input() at a terminal, else from stdin."""
    while True:
        try:
            line = input("user: ") if interactive else next(sys.stdin, None)
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if line is None:
            return
        if line.strip():
            yield line.strip()


def chat_loop(args, sampling):
    """Answer user turns one by one, keeping the history; /reset, /system TEXT, /quit."""
    model, tokenizer = run_generate.load_model(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"commands: {COMMANDS}")
    system, history, records = args.system, [], []
    for line in read_turns(interactive):
        command, _, rest = line.partition(" ")
        if command == "/quit":
            break
        if command == "/reset":
            history = []
            print(f"(history cleared; system prompt: {system!r})", flush=True)
            continue
        if command == "/system":
            system = rest.strip() or None
            print(f"(system prompt set: {system!r}; the history stays)", flush=True)
            continue
        if command.startswith("/"):
            print(f"(unknown command {command}; the commands are {COMMANDS})", flush=True)
            continue
        if not interactive:
            print(f"user: {line}")
        messages = with_system(history + [{"role": "user", "content": line}], system)
        text, ids, kind = render(tokenizer, messages)
        if len(ids) + args.max_new_tokens > model.config.max_seq_len:
            print(f"(the conversation is {len(ids)} tokens, too long for max_seq_len "
                  f"{model.config.max_seq_len} with --max_new_tokens; /reset)", flush=True)
            continue
        if args.show_template:
            show_prompt(text, ids, kind)
        reply, count = answer(model, tokenizer, ids, sampling, args)
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]
        records.append({"user": line, "prompt_tokens": len(ids), "tokens": count, "text": reply})
        if args.out is not None:
            save_transcript(args, with_system(history, system), records)


def main(args):
    """Check every flag, then answer the conversation (or run the turn loop)."""
    configs, messages = check_options(args)
    if messages is None:
        chat_loop(args, configs[0])
    else:
        answer_conversation(args, configs, messages)
