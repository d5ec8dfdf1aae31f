"""The same SFT job through llmlab (`run.py --option sft`, packed and unpacked) and through
transformers' Trainer + peft, on the same token ids, in one run (issue 20).

    .venv/bin/python benchmarks/bench_sft.py [--train FILE] [--val FILE]
        [--max_train_examples 2000] [--max_eval_examples M] [--variants packing,no-packing]
        [--threads T] [--use_gpu] [--json out.json]
    .venv/bin/python benchmarks/bench_sft.py --max_train_examples 16 --max_eval_examples 8 \
        --max_len 128          (smoke: seconds of training, no claims)

The job (defaults: issue 20's reference, emotion with 2,000 training lines): heavy LoRA (q, k, v,
o, gate, up, down), r 16, alpha 32, dropout 0.05; AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-6,
weight decay 0, gradient clipping at norm 1.0, cosine decay to 0 with no warmup (ours'
defaults for --option sft; the Trainer is given the same, its own adam_epsilon default being
1e-8); batch 8, one epoch, the same seed and torch thread count; fp32 on a CPU (on a GPU both
sides run bf16 autocast, our trainer's CUDA default).

Each side runs in a fresh Python process, timed whole (start, imports, model load, training,
validation), one after the other:
  ours     run.py --option sft ... --packing | --no-packing [| --no-packing --group_by_length]
           --no-zero_shot --no_progress: training seconds, real tokens and tokens/s from the
           epoch record (train.fit: the loop alone), final validation accuracy / macro-F1 from
           OUT/summary.json.
  Trainer  the records read and split by OUR code (run_sft.load_records on the same flags),
           encoded by OUR sft.encode (the chat template, prompt cut to --max_len) with answer-only
           labels (sft.masked_labels), written to a JSON job; the child process feeds exactly
           those ids and labels to transformers.Trainer through a torch Dataset and a collator
           that right-pads (pad id, mask 0, label -100). The model: the default GGUF through
           AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=float32) (as
           tests/lm_eval_oracle.py loads it), peft.get_peft_model with the LoraConfig above.
           Training seconds: trainer.train() alone. Validation: the prompts ours scores (ids cut
           to --max_len, as trained), each label's tokens (sft.scoring_ids) appended, the
           summed log-probability of the label's tokens after the prompt; the answer is the
           argmax over labels: the same rule as ours (sft.score_answers), on the HF model.
Peak RSS: each child's maxrss from os.wait4 (the same measurement for every side); on a GPU
also the peak CUDA memory each side reports. Real tokens: the examples' own tokens, no padding
(a packed row's shared template prefix counts once per example); both sides' totals must agree.
Prints a markdown table (ratio = the Trainer's seconds / ours: > 1 means ours is faster) and
the machine; --json writes the same as data.
Size: ~430 lines: two sides, each with its data path, training and scoring, and the report.
Tests: tests/test_bench_sft.py (the collator, the HF scoring rule == ours, the smoke run).
"""
import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import atomic  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "emotion"
VARIANTS = {"packing": ["--packing"], "no-packing": ["--no-packing"],
            "group_by_length": ["--no-packing", "--group_by_length"]}
LORA = dict(r=16, alpha=32, dropout=0.05,
            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
OPTIMIZER = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, max_grad_norm=1.0,
                 schedule="cosine", warmup_steps=0)        # ours' --option sft defaults


# ----------------------------------------------------------------------------
# measuring a child process


def run_child(argv, log):
    """Run argv from the repository root, its output to log; -> (wall s, peak RSS MiB)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)       # this child's own max RSS
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = Path(log).read_text()[-3000:]
        raise RuntimeError(f"{' '.join(map(str, argv[:4]))} ... exited {code}; its log ends:\n"
                           f"{tail}")
    return seconds, usage.ru_maxrss / 1024               # Linux: KiB


def sft_argv(args):
    """The flags of the job, shared by our runs and by the Trainer's data preparation."""
    argv = ["--option", "sft", "--train", str(args.train), "--val", str(args.val),
            "--method", "lora", "--lora_targets", "heavy", "--lora_rank", str(LORA["r"]),
            "--lora_alpha", str(LORA["alpha"]), "--lora_dropout", str(LORA["dropout"]),
            "--lr", str(OPTIMIZER["lr"]), "--schedule", OPTIMIZER["schedule"],
            "--warmup_steps", str(OPTIMIZER["warmup_steps"]), "--weight_decay",
            str(OPTIMIZER["weight_decay"]), "--batch_size", "8", "--epochs", "1",
            "--max_len", str(args.max_len), "--seed", str(args.seed),
            "--threads", str(args.threads), "--no-zero_shot", "--no_progress"]
    if args.model is not None:
        argv += ["--pretrained-model-path", str(args.model)]
    for flag in ("max_train_examples", "max_eval_examples"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    return argv + (["--use_gpu"] if args.use_gpu else [])


# ----------------------------------------------------------------------------
# ours: run.py --option sft


def ours(args, variant, folder):
    out = folder / f"ours-{variant}"
    argv = [sys.executable, str(ROOT / "run.py")] + sft_argv(args) + VARIANTS[variant] + [
        "--out_dir", str(out)]
    wall, rss = run_child(argv, folder / f"ours-{variant}.log")
    summary = json.loads((out / "summary.json").read_text())
    (epoch,) = summary["epochs"]
    return {"side": f"llmlab {variant}", "variant": variant, "flags": VARIANTS[variant],
            "train_s": epoch["train_time_s"], "wall_s": wall, "tokens": epoch["tokens"],
            "tokens_per_s": epoch["tokens"] / epoch["train_time_s"],
            "steps": epoch["steps"], "train_loss": epoch["train_loss"], "peak_rss_mb": rss,
            "peak_cuda_mb": epoch["peak_memory_mb"] if summary["memory_kind"].startswith("cuda")
            else None,
            "accuracy": summary["val"]["accuracy"], "macro_f1": summary["val"]["macro_f1"],
            "n_train": summary["examples"]["train"], "n_val": summary["val"]["n"]}


# ----------------------------------------------------------------------------
# the Trainer: the job encoded by our code, trained in a child process


def encode_job(args):
    """Our records, split, subsets, template and ids for the same flags -> the job's dict."""
    import run
    import run_sft
    import sft
    import tokenizer as tokenizer_lib
    import weights

    parsed = run.build_parser("sft").parse_args(sft_argv(args) + ["--out_dir", "unused"])
    splits, labels = run_sft.load_records(parsed)
    path = Path(parsed.pretrained_model_path or weights.default_model_path())
    tok = tokenizer_lib.Tokenizer.from_file(path)
    template = run_sft.default_template(parsed, tok)
    encode = lambda r: sft.encode(tok, r, labels, template, parsed.max_len)  # noqa: E731
    train = [encode(r) for r in splits["train"]]
    prompts = [ids[:n_prompt] for ids, n_prompt in map(encode, splits["val"])]
    return {"model": str(path), "threads": args.threads, "seed": args.seed,
            "use_gpu": args.use_gpu, "pad_id": tok.pad_id, "labels": labels,
            "template": template,
            "train": [{"input_ids": ids, "labels": sft.masked_labels(ids, n)} for ids, n in train],
            "val_prompts": prompts, "val_gold": [r.answer for r in splits["val"]],
            "label_ids": sft.scoring_ids(tok, template, labels),
            "eval_batch_size": parsed.eval_batch_size}


def trainer(args, folder):
    import metrics

    job_path, out = folder / "trainer-job.json", folder / "trainer.json"
    job = encode_job(args)
    atomic.save_json_atomic(job_path, job)
    argv = [sys.executable, __file__, "--_worker", str(job_path), str(out)]
    wall, rss = run_child(argv, folder / "trainer.log")
    result = json.loads(out.read_text())
    predicted = [job["labels"][k] for k in result["predictions"]]
    return {"side": "transformers Trainer + peft", "variant": "trainer", "flags": [],
            "train_s": result["train_s"], "wall_s": wall, "tokens": result["tokens"],
            "tokens_per_s": result["tokens"] / result["train_s"], "steps": result["steps"],
            "train_loss": result["train_loss"], "peak_rss_mb": rss,
            "peak_cuda_mb": result["peak_cuda_mb"],
            "accuracy": metrics.accuracy(predicted, job["val_gold"]),
            "macro_f1": metrics.macro_f1(predicted, job["val_gold"], job["labels"]),
            "n_train": len(job["train"]), "n_val": len(predicted), "versions": result["versions"],
            "optim": result["optim"], "threads_seen": result["threads"]}


# ----------------------------------------------------------------------------
# the child process: transformers + peft on the job's ids


def right_pad_collator(pad_id):
    """Lists of ids/labels -> right-padded (B, T) tensors: pad id, attention mask 0, label -100."""

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)           # (B, T)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)          # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)                 # (B, T)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[b, :n], labels[b, :n], mask[b, :n] = (torch.tensor(r["input_ids"]),
                                                      torch.tensor(r["labels"]), 1)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return collate


def hf_label_scores(model, prompts, label_ids, pad_id, device):
    """(B, K) log p(label_k | prompt) = sum_j log p(a_kj | prompt, a_k<j) on an HF model, the rule
    of scoring.label_scores: the prompts left-padded (positions from the mask, as HF's generate
    sets them) and prefilled once into the KV cache; label k's first token read from the last
    prompt position, its tokens 2..m fed after the prompt into a copy of the cache (the cache
    API for cutting it back changed between transformers versions; a copy works in all)."""
    B, T = len(prompts), max(len(p) for p in prompts)
    tokens = torch.full((B, T), pad_id, dtype=torch.long)                          # (B, T)
    mask = torch.zeros((B, T), dtype=torch.long)                                    # (B, T)
    for b, p in enumerate(prompts):
        tokens[b, T - len(p):], mask[b, T - len(p):] = torch.tensor(p), 1
    tokens, mask = tokens.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)                                  # (B, T)
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True)
    first = F.log_softmax(out.logits[:, -1].float(), dim=-1)                        # (B, V)
    cache, scores = out.past_key_values, []
    for label in label_ids:
        score = first[:, label[0]]                                                  # (B,)
        if len(label) > 1:
            m = len(label) - 1
            step = torch.arange(1, m + 1, device=device)
            feed = torch.tensor([label[:-1]] * B, device=device)                    # (B, m)
            more = model(input_ids=feed, past_key_values=copy.deepcopy(cache), use_cache=True,
                         attention_mask=torch.cat([mask, torch.ones_like(feed)], dim=1),
                         position_ids=positions[:, -1:] + step,
                         cache_position=T - 1 + step).logits                        # (B, m, V)
            logp = F.log_softmax(more.float(), dim=-1)
            score = score + logp[:, torch.arange(m), label[1:]].sum(-1)
        scores.append(score)
    return torch.stack(scores, dim=1).cpu()                                         # (B, K)


class Examples(torch.utils.data.Dataset):
    """The job's encoded examples, {"input_ids", "labels"} lists, for the Trainer's loader."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def hf_train(model, job, cuda):
    """One epoch of transformers.Trainer on the job's ids -> (TrainOutput, seconds, optim, steps).
    The seconds are trainer.train() alone (its loader, steps, optimizer)."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        settings = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=8, gradient_accumulation_steps=1,
            num_train_epochs=1, learning_rate=OPTIMIZER["lr"],
            lr_scheduler_type=OPTIMIZER["schedule"], warmup_steps=OPTIMIZER["warmup_steps"],
            weight_decay=OPTIMIZER["weight_decay"], adam_beta1=OPTIMIZER["betas"][0],
            adam_beta2=OPTIMIZER["betas"][1], adam_epsilon=OPTIMIZER["eps"],
            max_grad_norm=OPTIMIZER["max_grad_norm"], seed=job["seed"], data_seed=job["seed"],
            use_cpu=not cuda, bf16=cuda, logging_steps=10, save_strategy="no",
            eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
            dataloader_pin_memory=cuda, remove_unused_columns=False)
        runner = Trainer(model=model, args=settings, train_dataset=Examples(job["train"]),
                         data_collator=right_pad_collator(job["pad_id"]))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = runner.train()
        if cuda:
            torch.cuda.synchronize()
        return result, time.perf_counter() - start, str(settings.optim), runner.state.global_step


@torch.no_grad()
def hf_predict(model, job, device):
    """The argmax label index per validation prompt, prompts batched by length."""
    prompts, predictions = job["val_prompts"], [None] * len(job["val_prompts"])
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    size = job["eval_batch_size"]
    with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
        for start in range(0, len(order), size):
            index = order[start:start + size]
            scores = hf_label_scores(model, [prompts[i] for i in index], job["label_ids"],
                                     job["pad_id"], device)
            for i, k in zip(index, scores.argmax(-1).tolist()):
                predictions[i] = k
    return predictions


def trainer_worker(job_path, out_path):
    """In the child process: load the GGUF through transformers, add peft's LoRA, train with
    the Trainer, score the validation prompts, write the results."""
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    import peft
    import transformers

    cuda = job["use_gpu"]
    transformers.set_seed(job["seed"])
    path = Path(job["model"])
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:   # newer transformers mark GGUF loads
        packed = [n for n, m in model.named_modules() if n.endswith(tuple(LORA["targets"]))
                  and not (type(m) is torch.nn.Linear and m.weight.dtype == torch.float32)]
        if packed:
            raise RuntimeError(f"transformers kept GGUF weights packed ({packed[0]}, ...); the "
                               "Trainer cannot train them (uninstall the `kernels` package)")
        model.hf_quantizer, model.is_quantized = None, False   # plain fp32 Linears: trainable
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        target_modules=LORA["targets"], task_type="CAUSAL_LM"))
    result, train_s, optim, steps = hf_train(model, job, cuda)
    model.eval()
    predictions = hf_predict(model, job, torch.device("cuda" if cuda else "cpu"))
    atomic.save_json_atomic(out_path, {
        "train_s": train_s, "steps": steps, "train_loss": result.training_loss,
        "tokens": sum(len(r["input_ids"]) for r in job["train"]), "predictions": predictions,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "optim": optim, "threads": torch.get_num_threads(),
        "versions": {"transformers": transformers.__version__, "peft": peft.__version__,
                     "torch": torch.__version__}})


# ----------------------------------------------------------------------------
# the table


def cpu_name():
    """The CPU model from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(args):
    gpu = f", GPU {torch.cuda.get_device_name()}" if args.use_gpu else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
            "gpu": torch.cuda.get_device_name() if args.use_gpu else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": load,
            "line": f"machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch threads"
                    f"{gpu}, torch {torch.__version__}, load average {load:.2f} at start"}


def table(report):
    rows, job = report["rows"], report["job"]
    (base,) = [r for r in rows if r["variant"] == "trainer"] or [None]
    lines = [report["machine"]["line"],
             f"job: {job['train']} ({job['n_train']} training examples, {job['n_val']} "
             f"validation), heavy LoRA r 16 alpha 32 dropout 0.05, AdamW lr 1e-4 cosine, no "
             f"warmup, batch 8, 1 epoch, max_len {job['max_len']}, "
             f"{'bf16 autocast on the GPU' if job['use_gpu'] else 'fp32'}, seed {job['seed']}",
             "", "| side | train s | wall s | real tok/s | peak RSS MiB | val acc | macro-F1 "
             "| speed-up vs Trainer (train s / wall s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "1.00x / 1.00x" if r is base else "-" if base is None else (
            f"{base['train_s'] / r['train_s']:.2f}x / {base['wall_s'] / r['wall_s']:.2f}x")
        cuda = f" ({r['peak_cuda_mb']:.0f} GPU)" if r.get("peak_cuda_mb") else ""
        lines.append(f"| {r['side']} | {r['train_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f}{cuda} | "
                     f"{r['accuracy']:.4f} | {r['macro_f1']:.4f} | {ratio} |")
    tokens = sorted({r["tokens"] for r in rows})
    lines.append(f"\nReal training tokens: {', '.join(map(str, tokens))} "
                 f"({'the same on every side' if len(tokens) == 1 else 'DIFFERENT: check'}). "
                 "Train s: the training loop alone; wall s: the whole process (imports, load, "
                 "training, validation: ours scores the validation set twice, at the epoch's "
                 "end with its loss and for the final answers, and saves the adapter and "
                 "plots; the Trainer's side scores it once). Ratio > 1: ours is faster.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=DATA / "train.txt",
                        help="training file (default ../shared/data/emotion/train.txt)")
    parser.add_argument("--val", type=Path, default=DATA / "val.txt",
                        help="validation file (default ../shared/data/emotion/val.txt)")
    parser.add_argument("--max_train_examples", type=int, default=2000,
                        help="seeded subset of the training file (issue 20: 2,000)")
    parser.add_argument("--max_eval_examples", type=int, default=None,
                        help="seeded subset of the validation file (default: all of it)")
    parser.add_argument("--model", default=None,
                        help="GGUF file of both sides (default: the installed SmolLM2-135M)")
    parser.add_argument("--max_len", type=int, default=256, help="tokens per example (--max_len)")
    parser.add_argument("--variants", default="packing,no-packing",
                        help=f"our runs, comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--sides", default="ours,trainer",
                        help="ours, trainer or both (the GPU suite's smoke mode runs ours alone)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of every side (default: torch's, one per core)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of every side")
    parser.add_argument("--use_gpu", action="store_true", help="train both sides on CUDA")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--_worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        return args
    variants = [v for v in args.variants.split(",") if v]
    sides = [s for s in args.sides.split(",") if s]
    if any(v not in VARIANTS for v in variants) or not set(sides) <= {"ours", "trainer"}:
        parser.error(f"--variants {args.variants} / --sides {args.sides}: use variants of "
                     f"{', '.join(VARIANTS)} and sides ours, trainer")
    for path in (args.train, args.val):
        if not path.is_file():
            parser.error(f"{path}: file not found (the shared data folder; or pass --train/--val)")
    if args.use_gpu and not torch.cuda.is_available():
        parser.error("--use_gpu: no CUDA device is visible")
    args.variants = variants if "ours" in sides else []
    args.trainer = "trainer" in sides
    args.threads = args.threads or torch.get_num_threads()
    return args


def main(argv=None):
    args = parse_args(argv)
    if args._worker:
        return trainer_worker(*args._worker)
    report = {"machine": machine(args), "job": {
        "train": str(args.train), "val": str(args.val), "max_len": args.max_len,
        "max_train_examples": args.max_train_examples, "seed": args.seed,
        "max_eval_examples": args.max_eval_examples, "use_gpu": args.use_gpu,
        "lora": LORA, "optimizer": OPTIMIZER, "batch_size": 8, "epochs": 1}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            report["rows"].append(ours(args, variant, Path(tmp)))
            print(f"done: llmlab {variant}", flush=True)
        if args.trainer:
            report["rows"].append(trainer(args, Path(tmp)))
            print("done: transformers Trainer + peft", flush=True)
    report["job"].update(n_train=report["rows"][0]["n_train"], n_val=report["rows"][0]["n_val"])
    print(table(report))
    if args.json:
        atomic.save_json_atomic(args.json, report)
    return report


if __name__ == "__main__":
    main()
