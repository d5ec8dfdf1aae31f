"""`run.py --option sft_compare | peft_compare | sweep`: instruction fine-tuning studies, one `--option sft` child
process per setting on the same data, split and budget (so every run's peak memory is its own:
a process's max RSS never goes down, and CUDA's peak is reset per process).

sft_compare (seed 000 part 2; seed 002's comparison rows):
    settings  LoRA light (q, v), medium (q, k, v, up, down), heavy (all seven), full fine-tuning
    table     trainable parameters (counted, and by the formula r * (in + out) per adapted Linear),
              peak memory (CUDA max allocated on a GPU, max RSS on a CPU), seconds per epoch,
              best validation accuracy / macro-F1 and the step it was reached
    figure    every run's training loss per step and validation loss per evaluation
    baselines on the same split: the majority class; bag-of-words multinomial naive Bayes
              (baselines.naive_bayes_predict); the frozen pretrained model with a trained linear
              head on its last prompt token (the classifier of --option finetune with the Llama
              frozen: the features are computed once, then only the head trains); the from-scratch
              S4 text classifier (--option s4 on the same split)
peft_compare (seed 004 Q2.7-Q2.10, seed 000's bonus): LoRA, its variants (rsLoRA, DoRA, LoRA+
    with ratio --loraplus_ratio or 16, PiSSA init: lora.py), IA3, prompt tuning, P-tuning, prefix
    tuning and full fine-tuning on one task and budget (each method its own learning rate,
    --method_lr; the LoRA variants take --lr): the same table with each row's trainable-count
    formula, and a grouped bar chart of validation accuracy and macro-F1 by method with the
    zero-shot base model beside them.
sweep (seed 002): LoRA rank r x alpha on a grid, validation accuracy and final validation loss as
    a table and two heatmaps. alpha = 0 makes the update (alpha / r) B A zero: the base model.

Size: ~430 lines: three studies (sft_compare, peft_compare, sweep) share children and tables.
Outputs in --out_dir: one folder per run, compare.md / compare.json / compare-curves.png, or
sweep.md / sweep.json / sweep-heatmap.png.
Tests: tests/test_run_sft_studies.py (child argv round trip, the table from fixed summaries, the
baselines on a toy split, a tiny end-to-end sweep and compare on a tiny model).
"""
import argparse
import math
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import atomic
import baselines
import checkpoint
import file_checks
import plots
import scoring
import data
import metrics
import options
import sft
import run_sft
import train

ROOT = Path(__file__).resolve().parent
SETTINGS = ("light", "medium", "heavy", "full")
BASELINES = ("majority", "bow", "head", "s4")
METHODS = ("lora", "rslora", "dora", "loraplus", "pissa", "ia3", "prompt", "ptuning", "prefix",
           "full")
# peft_compare's LoRA variants as sft flags (lora.py); every other row is its own --method, with
# the variant flags at their defaults (PLAIN), so `lora` stays plain LoRA
PLAIN = {"lora_scaling": "standard", "loraplus_ratio": None, "lora_init": "default"}
VARIANTS = {"rslora": {"method": "lora", "lora_scaling": "rs"}, "dora": {"method": "dora"},
            "loraplus": {"method": "lora"}, "pissa": {"method": "lora", "lora_init": "pissa"}}
LORAPLUS_RATIO = 16.0        # Hayou et al. 2024's suggested lr_B / lr_A (2^4), unless given
# peft_compare's per-method learning rates (LoRA takes --lr): soft prompts need large steps
# (Lester et al. 2021 use 0.3 with Adafactor; peft's examples 3e-2), IA3 3e-3 (peft's examples),
# full fine-tuning small steps (every weight moves).
METHOD_LR = "ia3=3e-3,prompt=3e-2,ptuning=1e-3,prefix=1e-2,full=2e-5"


# ----------------------------------------------------------------------------
# flags and child processes

# path flags, checked by run.py before any work (options.check_paths): sft's inputs; each
# child sft run checks its own folders
PATHS = options.PathFlags(inputs=run_sft.PATHS.inputs, outputs=run_sft.PATHS.outputs,
                          folders=("--out_dir",))


def add_arguments(parser, option):
    """sft's flags (same data, model and budget), plus the study's own."""
    run_sft.add_arguments(parser, "sft")
    parser.set_defaults(out_dir=f"runs/{option}")
    add = parser.add_argument
    if option == "sft_compare":
        add("--settings", default=",".join(SETTINGS), help="comma list of light, medium, heavy, full")
        add("--baselines", default=",".join(BASELINES), help="comma list of majority, bow, head, "
            "s4 (or '' for none)")
        add("--head_epochs", "--head-epochs", type=int, default=30, help="frozen-head baseline epochs")
        add("--full_lr", "--full-lr", type=float, default=2e-5,
            help="learning rate of the full fine-tuning run (LoRA runs use --lr)")
    elif option == "peft_compare":
        add("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
        add("--method_lr", "--method-lr", default=METHOD_LR,
            help="method=lr pairs (LoRA and any method not named use --lr)")
    else:
        add("--ranks", default="1,16,128,256", help="comma list of LoRA ranks (seed 002)")
        add("--alphas", default="0,1,16,128,256", help="comma list of LoRA alphas (seed 002)")


def child_argv(args, parser_defaults, overrides):
    """`run.py --option sft` argv repeating every sft flag that differs from its default."""
    argv = [sys.executable, str(ROOT / "run.py"), "--option", "sft", "--seed", str(args.seed)]
    if args.use_gpu:
        argv.append("--use_gpu")
    if args.threads:
        argv += ["--threads", str(args.threads)]
    values = {**{k: getattr(args, k) for k in parser_defaults}, **overrides}
    for name, value in values.items():
        if value == parser_defaults[name] and name not in overrides:
            continue
        flag = "--" + name.replace("pretrained_model_path", "pretrained-model-path")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name)
        elif isinstance(value, (list, tuple)):              # nargs flags: --eval_data a b
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def sft_defaults():
    """{dest: default} of --option sft's own flags (not run.py's common ones)."""
    parser = argparse.ArgumentParser()
    run_sft.add_arguments(parser, "sft")
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


# flags that do not change what a child trains: a finished child is kept whatever they were
NOT_THE_RUN = ("out_dir", "resume", "resume_or_start", "no_progress", "zero_shot",
               "checkpoint_every_steps")


def finished_run(out, values):
    """--resume: a child whose summary.json records these sft flags finished earlier -> True: it
    is kept, not trained again. Every flag but NOT_THE_RUN must be the one recorded (budgets
    included: a finished run is not one with more epochs), a flag left at None here (--packing)
    taking what the run resolved; and where the summary holds the run's identity
    (checkpoint.run_identity), its data files must still have the recorded digests. Unfinished,
    another setting or no summary: False (the child then resumes from its checkpoint or starts)."""
    path = out / "summary.json"
    if not path.is_file():
        return False
    summary = file_checks.read_json(path)
    wanted = {k: v for k, v in values.items() if k not in NOT_THE_RUN and v is not None}
    flags, identity = summary.get("args"), summary.get("identity", {})
    return (isinstance(flags, dict) and isinstance(identity, dict)
            and all(flags.get(k) == (list(v) if isinstance(v, tuple) else v)
                    for k, v in wanted.items())
            and all(identity.get(k, v) == v for k, v in
                    checkpoint.run_identity(argparse.Namespace(**wanted)).items()))


def run_child(args, name, overrides):
    """One sft run in its own process (with --resume, a child that finished is kept); -> its
    summary and history (dicts)."""
    out = Path(args.out_dir) / name
    defaults = sft_defaults()
    asked = {**{k: getattr(args, k) for k in defaults}, "seed": args.seed, **overrides}
    if args.resume and finished_run(out, asked):
        print(f"\n=== {name}: finished earlier with these flags ({out / 'summary.json'}), kept",
              flush=True)
        return (file_checks.read_json(out / "summary.json"),
                file_checks.read_json(out / "sft-history.json"))
    resume = {"resume_or_start": True} if args.resume else {}   # a child not yet begun starts
    argv = child_argv(args, defaults, {**overrides, **resume, "out_dir": str(out)})
    print(f"\n=== {name}: {' '.join(argv[2:])}", flush=True)
    done = subprocess.run(argv)            # in the caller's folder: its relative paths hold
    if done.returncode != 0:
        raise ValueError(f"the {name} run failed (exit {done.returncode}); its command is printed "
                         "above: run it alone to see why")
    return (file_checks.read_json(out / "summary.json"),
            file_checks.read_json(out / "sft-history.json"))


def check_arguments(args):
    """The study's own flags, then sft's."""
    if args.adapter:
        raise ValueError(f"--adapter {args.adapter}: the studies train; use --option sft to predict")
    if args.option == "sft_compare":
        bad = [s for s in split_list(args.settings) if s not in SETTINGS] + \
              [b for b in split_list(args.baselines) if b not in BASELINES]
        if bad or not split_list(args.settings):
            raise ValueError(f"--settings / --baselines {bad}: use {SETTINGS} and {BASELINES}")
    elif args.option == "peft_compare":
        bad = [m for m in split_list(args.methods) if m not in METHODS]
        if bad or not split_list(args.methods):
            raise ValueError(f"--methods {args.methods!r}: use some of {', '.join(METHODS)}")
        method_lrs(args)
    else:
        for flag in ("ranks", "alphas"):
            try:
                values = [float(v) for v in split_list(getattr(args, flag))]
            except ValueError:
                values = []
            if not values or any(v < 0 or not math.isfinite(v) for v in values) or (
                    flag == "ranks" and any(v < 1 or v != int(v) for v in values)):
                raise ValueError(f"--{flag} {getattr(args, flag)!r}: give a comma list like "
                                 f"{'1,16,128' if flag == 'ranks' else '0,1,16'}")
            for v in values if flag == "ranks" else ():   # bounded before any child runs
                options.check_size("--ranks: rank", int(v))
    run_sft.check_arguments(args)


def split_list(text):
    return [t.strip() for t in text.split(",") if t.strip()]


# ----------------------------------------------------------------------------
# baselines on the same split

def as_class_examples(records, labels):
    """sft records -> {"id", "text", "label" int} (naive Bayes and the S4 classifier)."""
    return [{"id": r.id, "text": f"{r.text} {r.context}".strip(), "label": labels.index(r.answer)}
            for r in records]


def scored(predictions, records, labels):
    gold = [r.answer for r in records]
    return {"accuracy": metrics.accuracy(predictions, gold),
            "macro_f1": metrics.macro_f1(predictions, gold, labels)}


def majority_baseline(splits, labels):
    counts = [sum(r.answer == k for r in splits["train"]) for k in labels]
    guess = labels[counts.index(max(counts))]
    return scored([guess] * len(splits["val"]), splits["val"], labels)


def bow_baseline(splits, labels):
    train_ex, val_ex = (as_class_examples(splits[s], labels) for s in ("train", "val"))
    return scored([labels[k] for k in baselines.naive_bayes_predict(train_ex, val_ex)],
                  splits["val"], labels)


@torch.no_grad()
def prompt_features(model, tokenizer, records, labels, template, args):
    """(n, dim) final-norm hidden state at each record's last prompt token (frozen model)."""
    prompts = [sft.encode(tokenizer, r, labels, template, args.max_len) for r in records]
    prompts = [ids[:n] for ids, n in prompts]
    features = []
    for start in range(0, len(prompts), args.eval_batch_size):
        tokens, mask = data.pad_batch(prompts[start:start + args.eval_batch_size], tokenizer.pad_id)
        hidden = scoring.hidden_states(model, tokens.to(args.device), mask.to(args.device))
        features.append(scoring.pool_last_token(hidden, mask.to(args.device)).float().cpu())
    return torch.cat(features)


def head_baseline(splits, labels, args):
    """Frozen pretrained model + a trained linear head (started from the label tokens' output
    embeddings, as --option finetune's prompt head): features once, then train.fit on the head."""
    model, tokenizer = scoring.load_model(args.pretrained_model_path, args.device)
    template = run_sft.default_template(args, tokenizer)
    x = {s: prompt_features(model, tokenizer, splits[s], labels, template, args)
         for s in ("train", "val")}
    y = {s: torch.tensor([labels.index(r.answer) for r in splits[s]]) for s in ("train", "val")}
    head = nn.Linear(x["train"].shape[1], len(labels))
    first_tokens = [ids[0] for ids in sft.scoring_ids(tokenizer, template, labels)]
    with torch.no_grad():
        head.weight.copy_(scoring.lm_head_weight(model)[first_tokens].float().cpu())
        head.bias.zero_()
    batches = [(x["train"][i:i + 32], y["train"][i:i + 32]) for i in range(0, len(y["train"]), 32)]
    loss = lambda m, b: (F.cross_entropy(m(b[0]), b[1], reduction="sum"), len(b[1]))  # noqa: E731
    train.fit(head, batches, loss, train.TrainConfig(epochs=args.head_epochs, lr=1e-3,
                                                     weight_decay=0.01, progress=False))
    predictions = head(x["val"]).argmax(-1).tolist()
    return scored([labels[k] for k in predictions], splits["val"], labels)


def s4_baseline(splits, labels, args):
    """The from-scratch S4 classifier (--option s4 with its defaults) trained on the same split."""
    folder = Path(args.out_dir) / "s4"
    for split in ("train", "val"):
        atomic.save_json_atomic(folder / f"{split}.json", as_class_examples(splits[split], labels))
    argv = [sys.executable, str(ROOT / "run.py"), "--option", "s4", "--seed", str(args.seed),
            "--train", str(folder / "train.json"), "--val", str(folder / "val.json"),
            "--test", str(folder / "val.json"), "--out_dir", str(folder), "--no_progress"]
    if subprocess.run(argv).returncode != 0:
        raise ValueError(f"the S4 baseline failed; run it alone: {' '.join(argv[1:])}")
    rows = (folder / "s4-submission.csv").read_text().splitlines()[1:]
    return scored([labels[int(r.rsplit(",", 1)[1])] for r in rows], splits["val"], labels)


# ----------------------------------------------------------------------------
# sft_compare

def run_row(name, summary, history):
    """One table row from a run's summary.json and history: the best validation accuracy of any
    evaluation (and its step), and the scores of the model kept (the best validation loss)."""
    params, epochs = summary["parameters"], summary["epochs"]
    evals = [e for e in history["evals"] if "accuracy" in e]
    best = max(evals, key=lambda e: e["accuracy"], default={})    # the first of equal ones
    return {"run": name, "trainable": params["trainable"], "formula": params["formula"],
            "total": params["total"], "peak_memory_mb": summary["peak_memory_mb"],
            "memory_kind": summary["memory_kind"],
            "s_per_epoch": sum(e["train_time_s"] for e in epochs) / max(len(epochs), 1),
            "best_accuracy": best.get("accuracy", summary["val"]["accuracy"]),
            "best_macro_f1": best.get("macro_f1", summary["val"]["macro_f1"]),
            "best_step": best.get("step"),
            "val_accuracy": summary["val"]["accuracy"], "val_macro_f1": summary["val"]["macro_f1"]}


def compare_table(rows, baselines, zero_shot, setup):
    """Markdown: the runs, then the baselines on the same split."""
    memory = "CUDA max allocated" if rows and rows[0]["memory_kind"].startswith("cuda") else "max RSS"
    lines = [setup, "", f"| run | trainable params (formula r(in+out)) | % of model | peak memory "
             f"({memory}) | s / epoch | best val acc / macro-F1 (at step) | kept model (lowest val "
             "loss): val acc / macro-F1 |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        formula = f" ({r['formula']:,})" if r["formula"] is not None else ""
        lines.append(f"| {r['run']} | {r['trainable']:,}{formula} | "
                     f"{100 * r['trainable'] / r['total']:.2f} | {r['peak_memory_mb'] / 1024:.2f} GiB | "
                     f"{r['s_per_epoch']:.0f} | {r['best_accuracy']:.4f} / {r['best_macro_f1']:.4f} "
                     f"({r['best_step']}) | {r['val_accuracy']:.4f} / {r['val_macro_f1']:.4f} |")
    extra = ([("zero-shot base model (scores)", zero_shot)] if zero_shot else []) + list(baselines.items())
    for name, m in extra:
        lines.append(f"| {name} | - | - | - | - | - | {m['accuracy']:.4f} / {m['macro_f1']:.4f} |")
    return "\n".join(lines) + "\n"


def plot_curves(histories, path):
    """Training loss per step (thin) and validation loss per evaluation (markers), every run."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i}"
        steps = history["steps"]
        ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], color=colour, lw=0.7,
                alpha=0.5, label=f"{name} train")
        evals = [e for e in history["evals"] if "loss" in e]
        ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", color=colour,
                label=f"{name} validation")
    ax.set(xlabel="optimizer step", ylabel="answer-token loss (nats)", yscale="log")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=90)


def run_compare(args):
    splits, labels = run_sft.load_records(args)
    rows, histories, zero_shot = [], {}, None
    for i, setting in enumerate(split_list(args.settings)):
        overrides = {"method": "full", "lr": args.full_lr} if setting == "full" else {
            "method": "lora", "lora_targets": setting}
        summary, history = run_child(args, setting, {**overrides, "zero_shot": i == 0})
        zero_shot = zero_shot or summary.get("zero_shot")
        rows.append(run_row(setting, summary, history))
        histories[setting] = history
    makers = {"majority": lambda: majority_baseline(splits, labels),
              "bag-of-words naive Bayes": lambda: bow_baseline(splits, labels),
              "frozen model + trained head": lambda: head_baseline(splits, labels, args),
              "S4 from scratch": lambda: s4_baseline(splits, labels, args)}
    chosen = dict(zip(BASELINES, makers))
    baselines = {chosen[b]: makers[chosen[b]]() for b in split_list(args.baselines)}
    setup = (f"Data {args.train}: train {len(splits['train'])}, validation {len(splits['val'])}; "
             f"labels {labels}; template {summary['template']}; {args.epochs} epoch(s), lr {args.lr} "
             f"(full fine-tuning {args.full_lr}), batch "
             f"{args.batch_size} x {args.grad_accum}, max_len {args.max_len}, LoRA r {args.lora_rank} "
             f"alpha {args.lora_alpha}; device {args.device}.")
    out = Path(args.out_dir)
    table = compare_table(rows, baselines, zero_shot, setup)
    atomic.write_text_atomic(out / "compare.md", table)
    atomic.save_json_atomic(out / "compare.json", {"runs": rows, "baselines": baselines,
                                                   "zero_shot": zero_shot, "labels": labels})
    plot_curves(histories, out / "compare-curves.png")
    print(table, flush=True)
    return rows, baselines


# ----------------------------------------------------------------------------
# sweep

def sweep_table(grid, ranks, alphas, key, fmt):
    lines = ["| r \\ alpha | " + " | ".join(f"{a:g}" for a in alphas) + " |",
             "|---|" + "---:|" * len(alphas)]
    for r in ranks:
        lines.append(f"| {r} | " + " | ".join(fmt.format(grid[(r, a)][key]) for a in alphas) + " |")
    return "\n".join(lines)


def plot_heatmaps(grid, ranks, alphas, path):
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("accuracy", "loss"), ("validation accuracy",
                                                           "final validation loss")):
        cells = [[grid[(r, a)][key] for a in alphas] for r in ranks]
        image = ax.imshow(cells, cmap="viridis" if key == "accuracy" else "viridis_r")
        for i, row in enumerate(cells):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(ranks)), [str(r) for r in ranks])
        ax.set(xlabel="LoRA alpha", ylabel="LoRA rank r", title=title)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=90)


def run_sweep(args):
    ranks = [int(float(r)) for r in split_list(args.ranks)]
    alphas = [float(a) for a in split_list(args.alphas)]
    grid = {}
    for r in ranks:
        for a in alphas:
            summary, history = run_child(args, f"r{r}-alpha{a:g}", {
                "method": "lora", "lora_rank": r, "lora_alpha": a, "zero_shot": False})
            final = [e for e in history["evals"] if "loss" in e][-1]
            grid[(r, a)] = {"accuracy": summary["val"]["accuracy"], "loss": final["loss"],
                            "macro_f1": summary["val"]["macro_f1"],
                            "trainable": summary["parameters"]["trainable"]}
    out = Path(args.out_dir)
    table = (f"LoRA targets {args.lora_targets}, {args.epochs} epoch(s), lr {args.lr}, data "
             f"{args.train}.\n\nValidation accuracy:\n\n{sweep_table(grid, ranks, alphas, 'accuracy', '{:.4f}')}"
             f"\n\nFinal validation loss:\n\n{sweep_table(grid, ranks, alphas, 'loss', '{:.4f}')}\n")
    atomic.write_text_atomic(out / "sweep.md", table)
    atomic.save_json_atomic(out / "sweep.json", [{"rank": r, "alpha": a, **v}
                                                 for (r, a), v in grid.items()])
    plot_heatmaps(grid, ranks, alphas, out / "sweep-heatmap.png")
    print(table, flush=True)
    return grid


# ----------------------------------------------------------------------------
# peft_compare

def method_lrs(args):
    """{method: lr} from --method_lr ("ia3=3e-3,prompt=3e-2"); one-line error when malformed."""
    try:
        pairs = dict((k.strip(), float(v)) for k, v in (p.split("=") for p in split_list(args.method_lr)))
    except ValueError:
        raise ValueError(f"--method_lr {args.method_lr!r}: write pairs like prompt=3e-2,ia3=3e-3") from None
    if any(k not in METHODS or not v > 0 for k, v in pairs.items()):
        raise ValueError(f"--method_lr {args.method_lr!r}: methods are {METHODS}, rates > 0")
    return pairs


def plot_grouped_bars(groups, path, title):
    """One group per method, one bar per metric (accuracy, macro-F1)."""
    values = {n: {k: groups[n][k] for k in ("accuracy", "macro_f1")} for n in groups}
    plots.grouped_bars(values, path, title, "validation score")


def run_peft_compare(args):
    """Every method on the same data and budget: table, curves, grouped bar chart."""
    lrs, rows, histories, zero_shot = method_lrs(args), [], {}, None
    for i, method in enumerate(split_list(args.methods)):
        lr = lrs.get(method, args.lr)
        flags = {**PLAIN, "method": method, **VARIANTS.get(method, {})}
        if method == "loraplus":
            flags["loraplus_ratio"] = args.loraplus_ratio or LORAPLUS_RATIO
        summary, history = run_child(args, method, {**flags, "lr": lr, "zero_shot": i == 0})
        zero_shot = zero_shot or summary.get("zero_shot")
        rows.append({**run_row(method, summary, history), "lr": lr,
                     "formula_text": run_sft.FORMULAS.get(flags["method"])})
        histories[method] = history
    groups = {"zero-shot": zero_shot, **{r["run"]: {"accuracy": r["val_accuracy"],
                                                    "macro_f1": r["val_macro_f1"]} for r in rows}}
    setup = (f"Data {args.train}: {summary['examples']}; labels {summary['labels']}; template "
             f"{summary['template']}; {args.epochs} epoch(s), batch {args.batch_size} x "
             f"{args.grad_accum}, max_len {args.max_len}; learning rates "
             + ", ".join(f"{r['run']} {r['lr']:g}" for r in rows) + f"; device {args.device}.")
    out = Path(args.out_dir)
    table = compare_table(rows, {}, zero_shot, setup) + "\nTrainable-count formulas: " + "; ".join(
        f"{r['run']} {r['formula_text']}" for r in rows if r["formula_text"]) + ".\n"
    atomic.write_text_atomic(out / "peft-compare.md", table)
    atomic.save_json_atomic(out / "peft-compare.json", {"runs": rows, "zero_shot": zero_shot})
    plot_curves(histories, out / "peft-compare-curves.png")
    plot_grouped_bars(groups, out / "peft-compare.png", "validation accuracy and macro-F1")
    print(table, flush=True)
    return rows


def main(args):
    check_arguments(args)
    runs = {"sft_compare": run_compare, "peft_compare": run_peft_compare, "sweep": run_sweep}
    return runs[args.option](args)
