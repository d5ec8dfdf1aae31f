"""`run.py --option eval`: zero-shot multiple-choice benchmarks (ARC, OpenBookQA, PIQA, WinoGrande,
HellaSwag, BoolQ, Social IQa, and llmlab's own labelled files) scored by log-likelihood with
lm-eval's protocol (evaluation.py), for the base model and any number of adapters over it.

    python run.py --option eval --data arc_easy.jsonl obqa.jsonl [--adapter runs/sft/adapter]
        [--chat_template] [--limit N] [--batch_size B] [--json OUT.json] [--out_dir DIR]

The base model is read once; each --adapter is loaded onto a copy of it in memory (LoRA and IA3
wrap its Linears, prompt and prefix tuning wrap the model; peft_format.load_adapter), so "base vs
fine-tuned" is one command. Prints the model and its dtype, then one table: task, n, and acc /
acc_norm per model. --json writes {"results": [{"data", "task", "model", "n", "acc", "acc_norm",
"predictions", "loglikelihoods"}]}; OUT_DIR/eval.png is a grouped bar chart of acc (tasks x
models). Every file is read and checked, and every adapter loaded once, before any scoring.
`--option sft --eval_data FILE ...` (run_sft.py) scores the same way before and after fine-tuning
and prints what it cost (cost_rows, format_cost_table).

Tested in tests/test_run_eval.py (the CLI end to end on a tiny Llama: the JSON keys, the table,
an adapter beside the base, bad flags and files as one line).
"""
import copy
import time
from pathlib import Path

import torch

import atomic
import evaluation
import fused
import options
import peft_format
import plots
import scoring
import weights


# path flags, checked by run.py before any work (options.check_paths)
PATHS = options.PathFlags(inputs=("--pretrained-model-path", "--data", "--adapter"), outputs=("--json",),
                          folders=("--out_dir",))


def add_arguments(parser, option):
    add = parser.add_argument
    add("--data", nargs="+", required=True,
        help="benchmark files (JSON list or JSON lines in a Hugging Face hub layout lm-eval reads, "
        "or llmlab records / `text;label` lines)")
    weights.add_model_path_argument(parser, "the base model")
    add("--adapter", nargs="+", default=[],
        help="adapter folders (peft layout, e.g. an --option sft run's OUT_DIR/adapter) scored "
        "beside the base model")
    add("--chat_template", "--chat-template", action="store_true",
        help="wrap each context in the model's chat template (lm-eval's --apply_chat_template)")
    add("--limit", type=options.positive_int, default=None, help="the first N questions of a file")
    add("--batch_size", "--batch-size", type=options.positive_int, default=16,
        help="contexts (each with all its choices) in one forward")
    add("--json", type=options.output_file, default=None, help="write every result to this file")
    add("--out_dir", "--out-dir", type=options.output_folder, default="runs/eval",
        help="folder for eval.png")


def read_files(paths, limit=None):
    """[(file, task name, questions)] of benchmark files (--data here, sft's --eval_data)."""
    return [(str(path), *evaluation.read_questions(path, limit)) for path in paths]


def read_tasks(args):
    """[(file, task name, questions)], every file checked before any model loads."""
    tasks = read_files(args.data, args.limit)
    for folder in args.adapter:
        peft_format.read_config(folder)                  # one line now, not after the base runs
    return tasks


def load_adapter(folder, base):
    """The adapter in `folder` on a copy of the base's weights (the base stays as it is, and is
    copied unfused); an adapter made for another model is one line naming the folder."""
    try:
        model, _ = peft_format.load_adapter(folder, copy.deepcopy(fused.unfuse(base)))
    except ValueError as err:
        raise ValueError(f"--adapter {folder}: {err}") from None
    return model.eval()


def models(args, base):
    """(label, model) of the base, then of each adapter on a copy of the base's weights (each
    copy is dropped when the next is made), each on the fast path (fused.fuse: q/k/v and
    gate/up as one matmul each). Every adapter is loaded once first, so a bad one stops the run
    before any scoring."""
    for folder in args.adapter:
        load_adapter(folder, base)
    fused.fuse(base)
    yield "base", base
    for folder in args.adapter:
        label = Path(folder).name if Path(folder).name != "adapter" else str(folder)
        model = load_adapter(folder, base)
        fused.fuse(model)
        yield label, model


def score_tasks(model, tokenizer, tasks, label, batch_size=16, chat_template=False):
    """One result dict per task: {"data", "task", "model", "n", "acc", "acc_norm",
    "predictions", "loglikelihoods", "seconds"}."""
    results = []
    for data_file, name, questions in tasks:
        start = time.perf_counter()
        with torch.no_grad():
            ll = evaluation.score_questions(model, tokenizer, questions, batch_size, chat_template)
        results.append({"data": str(data_file), "task": name, "model": label,
                        **evaluation.task_metrics(questions, ll), "loglikelihoods": ll,
                        "seconds": time.perf_counter() - start})
    return results


def format_table(results, labels):
    """task | n | acc, acc_norm per model, as markdown."""
    head = "| task | n | " + " | ".join(f"{m} acc | {m} acc_norm" for m in labels) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(labels))]
    for data_file in dict.fromkeys(r["data"] for r in results):
        rows = {r["model"]: r for r in results if r["data"] == data_file}
        first = rows[labels[0]]
        cells = " | ".join(f"{rows[m]['acc']:.4f} | {rows[m]['acc_norm']:.4f}" for m in labels)
        lines.append(f"| {Path(data_file).stem} ({first['task']}) | {first['n']} | {cells} |")
    return "\n".join(lines)


def cost_rows(before, after):
    """Per task (score_tasks results of one model before and after fine-tuning): acc and
    acc_norm before, after, and the difference after - before."""
    keys = ("acc", "acc_norm")
    return [{"data": b["data"], "task": b["task"], "n": b["n"],
             "before": {k: b[k] for k in keys}, "after": {k: a[k] for k in keys},
             "difference": {k: a[k] - b[k] for k in keys}} for b, a in zip(before, after)]


def format_cost_table(rows):
    """What fine-tuning cost, as markdown: per task, before | after | difference per metric."""
    lines = ["| task | n | acc before | acc after | acc diff | acc_norm before | acc_norm after "
             "| acc_norm diff |", "|" + "---|" * 8]
    for r in rows:
        cells = " | ".join(f"{r['before'][k]:.4f} | {r['after'][k]:.4f} | "
                           f"{r['difference'][k]:+.4f}" for k in ("acc", "acc_norm"))
        lines.append(f"| {Path(r['data']).stem} ({r['task']}) | {r['n']} | {cells} |")
    return "\n".join(lines)


def main(args):
    tasks = read_tasks(args)
    path = args.pretrained_model_path or weights.default_model_path()
    base, tokenizer = scoring.load_model(args.pretrained_model_path, args.device)
    base.eval()
    print(f"model: {path} ({next(base.parameters()).dtype}, {args.device}); chat template "
          f"{'on' if args.chat_template else 'off'}", flush=True)
    results, labels = [], []
    for label, model in models(args, base):
        labels.append(label)
        results += score_tasks(model, tokenizer, tasks, label, args.batch_size,
                               args.chat_template)
    print(format_table(results, labels), flush=True)
    if args.json:
        atomic.save_json_atomic(args.json, {"results": results})
    values = {Path(r["data"]).stem: {} for r in results}
    for r in results:
        values[Path(r["data"]).stem][r["model"]] = r["acc"]
    plots.grouped_bars(values, Path(args.out_dir) / "eval.png", "zero-shot accuracy", "acc")
    return results
