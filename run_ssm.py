"""SSM text classification (seed 000) behind `run.py --option ssm | s4 | ssm_compare`: data,
training, evaluation, the `id,label` submission, the naive Bayes baseline, time against L, the
plots, the comparison table and the flags. The models and their maths are in ssm.py (the basic
SSM, its loop scan, the classifier), s4.py (HiPPO, kernels, FFT convolution, build_model) and
mamba.py (the selective SSM: `--option ssm --layer mamba`, and the third row of ssm_compare).

Data: JSON rows {id, text, label} (data.read_json_examples); num_classes = 1 + the largest training
label. Tokens: bos + the text's tokens, max_len in all (data.encode_text); the tokenizer is
tokenizer.ByteTokenizer(pad_id=0, bos_id=1) (V = 258) or a SentencePiece unigram model trained on
the training texts (tokenizer.train_sentencepiece; pad 0, unk 1, bos 2; NFKC, case-folded with
--case_fold), cached in --out_dir as spm-<V>-<key>-<digest>.model: key hashes the texts and the
settings, digest the model's bytes, so a truncated or corrupt cache is found and trained again.
Training: train.fit on the summed cross-entropy, cosine schedule after a linear warmup; AdamW
with S4's two groups (the S4 repository's example.py setup_optimizer): A, B, dt at
min(lr, ssm_lr) without weight decay (Mamba: A_log and the Delta bias), every other parameter at
lr with weight decay.
Baseline: multinomial naive Bayes on lower-cased words, Laplace smoothing alpha (Manning,
Raghavan & Schuetze 2008, Introduction to Information Retrieval, Sec. 13.2):
    log p(c | doc) = log prior_c + sum_w n_w log theta_cw
    theta_cw = (n_cw + alpha) / (n_c + alpha V)       n_c: words of class c, V: vocabulary size
Time against L: forward + backward of one layer, loop scan (L sequential steps) against kernel +
FFT convolution (O(L log L)), and the Mamba mixer with its loop and its chunked scan (2 sqrt(L)
sequential steps); the least-squares slope of log time against log L is the exponent.
Outputs in --out_dir, every file through atomic.py: <name>-results.json, <name>-submission.csv
(every test row, always), <name>-history.json and <name>-curves.png (train.fit); ssm_compare
adds compare.md, compare.json, compare-curves.png and time-vs-length.png; --submission (default
OUT_DIR/submission.csv) is the best model's submission.

Size: ~470 lines: three options (ssm and ssm --layer mamba, s4, ssm_compare), the baseline
and the timing study.
Shapes: tokens (B, L) long, attention_mask (B, L), logits (B, num_classes).
Tests: tests/test_run_ssm.py (naive Bayes on hand counts; the slope of a power law; bos and
truncation; the tokenizer cache, reused, and trained again after truncation or corruption; the
CLI end to end on tiny files: submission (every test row), results, curves, table, plots, a bad
label, `--option ssm --layer mamba` through run.py). The Mamba model: tests/test_mamba.py.
"""
import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import atomic
import baselines
import data
import mamba
import optimizer
import options
import plots
import s4
import ssm
import train
from tokenizer import ByteTokenizer, SentencePieceTokenizer, train_sentencepiece


# ----------------------------------------------------------------------------
# tokenizers: bytes, or a SentencePiece unigram model trained on the training texts (cached)

def _digest(model_bytes):
    return hashlib.sha1(model_bytes).hexdigest()[:12]


def sentencepiece_tokenizer(texts, vocab_size, cache_dir=None, case_fold=False):
    """A unigram model of texts (pad 0, unk 1, bos 2, byte fallback), cached in cache_dir.

    The cache name holds a hash of texts and settings and one of the model's bytes: a file whose
    bytes do not match its name (cut short, overwritten) is deleted and the model trained again.
    """
    settings = f"|{vocab_size}|{case_fold}"
    key = hashlib.sha1(("\n".join(texts) + settings).encode("utf-8")).hexdigest()[:12]
    stem = f"spm-{vocab_size}-{key}"
    for path in sorted(Path(cache_dir).glob(f"{stem}-*.model")) if cache_dir else []:
        model = path.read_bytes()
        if path.name == f"{stem}-{_digest(model)}.model":
            return SentencePieceTokenizer(model, kind="unigram", source=path)
        path.unlink()                               # truncated or corrupt: train it again
    tokenizer = train_sentencepiece(texts, vocab_size, model_type="unigram",
                                    normalization="nmt_nfkc_cf" if case_fold else "nmt_nfkc",
                                    pad_id=0, unk_id=1, bos_id=2, eos_id=-1)
    if cache_dir:
        model = tokenizer.model_proto
        atomic.write_bytes_atomic(Path(cache_dir) / f"{stem}-{_digest(model)}.model", model)
    return tokenizer


def ssm_tokenizer(args, train_texts):
    """--tokenizer bytes: UTF-8 bytes after pad 0 and bos 1; sentencepiece: trained on --train."""
    if args.tokenizer == "bytes":
        return ByteTokenizer(pad_id=0, bos_id=1)
    return sentencepiece_tokenizer(train_texts, args.vocab_size, args.out_dir, args.case_fold)


def encode_all(tokenizer, texts, max_len):
    """bos + each text's tokens, max_len tokens in all; never empty (bos is always there)."""
    return [data.encode_text(tokenizer, text, max_len - 1, bos=True) for text in texts]


# ----------------------------------------------------------------------------
# data, training (train.fit is the loop), evaluation

SSM_PARAMS = ("log_dt", "log_A_real", "A_imag", "log_Lambda_real", "Lambda_imag", ".P", ".B",
              "A_log", "dt_proj.bias")


def load_data(args):
    """Read and tokenize --train/--val/--test; num_classes = 1 + the largest training label."""
    train_ex = data.read_json_examples(args.train, flag="--train")
    num_classes = 1 + max(e["label"] for e in train_ex)
    val_ex = data.read_json_examples(args.val, num_classes, flag="--val")
    test_ex = data.read_json_examples(args.test, num_classes, require_label=False, flag="--test")
    tokenizer = ssm_tokenizer(args, [e["text"] for e in train_ex])
    encoded = {name: encode_all(tokenizer, [e["text"] for e in ex], args.max_len)
               for name, ex in (("train", train_ex), ("val", val_ex), ("test", test_ex))}
    return {"examples": {"train": train_ex, "val": val_ex, "test": test_ex}, "ids": encoded,
            "tokenizer": tokenizer, "num_classes": num_classes}


def batches(dataset, split, batch_size, shuffle=False, seed=0):
    labels = [e["label"] if e["label"] is not None else 0 for e in dataset["examples"][split]]
    return data.Batches(dataset["ids"][split], labels, batch_size, dataset["tokenizer"].pad_id,
                        shuffle=shuffle, seed=seed, sort_by_length=not shuffle, shard=shuffle)


def loss_fn(model, batch):
    """Summed cross-entropy over the batch and the number of examples (train.fit's contract)."""
    device = next(model.parameters()).device
    logits = model(batch["tokens"].to(device), batch["attention_mask"].to(device))  # (B, C)
    loss = nn.functional.cross_entropy(logits.float(), batch["labels"].to(device), reduction="sum")
    return loss, len(batch["labels"])


@torch.no_grad()
def predict(model, eval_batches):
    """Predicted class per example (input order) and mean loss / accuracy against the labels."""
    device = next(model.parameters()).device
    preds, loss_sum, correct, count = {}, 0.0, 0, 0
    for batch in eval_batches:
        logits = model(batch["tokens"].to(device), batch["attention_mask"].to(device)).float()
        labels = batch["labels"].to(device)
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        guess = logits.argmax(-1)
        correct += int((guess == labels).sum())
        count += len(labels)
        preds.update(zip(batch["index"], guess.tolist()))
    return [preds[i] for i in range(count)], {"loss": loss_sum / count, "accuracy": correct / count}


def s4_optimizer(model, args):
    """AdamW with S4's two groups: A, B, dt at min(lr, ssm_lr) without weight decay; the rest."""
    special = [p for n, p in model.named_parameters() if any(s in n for s in SSM_PARAMS)]
    ids = {id(p) for p in special}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return optimizer.AdamW([{"params": rest, "weight_decay": args.weight_decay},
                            {"params": special, "lr": min(args.lr, args.ssm_lr), "weight_decay": 0.0}],
                           lr=args.lr)


def model_config(args, layer, dataset):
    """SSMConfig from the flags; the basic SSM takes --ssm_init, S4 --init, Mamba S4D-Real."""
    init = {"ssm": args.ssm_init, "mamba": "s4d-real"}.get(layer, args.init)
    return ssm.SSMConfig(vocab_size=dataset["tokenizer"].vocab_size,
                         num_classes=dataset["num_classes"], d_model=args.d_model,
                         n_layers=args.n_layers, d_state=args.d_state, dropout=args.dropout,
                         token_dropout=args.token_dropout, zero_init_branch=args.zero_init_branch,
                         layer=layer, init=init, discretization=args.discretization,
                         mixing=args.mixing, expand=args.expand, d_conv=args.d_conv,
                         dt_rank=args.dt_rank,
                         bidirectional=args.bidirectional, pooling=args.pooling,
                         pad_id=dataset["tokenizer"].pad_id)


def train_one(args, layer, name, dataset):
    """Build, train with train.fit, evaluate on val and test, write submission + results JSON."""
    config = model_config(args, layer, dataset)
    model = s4.build_model(config).to(args.device)
    train_batches = batches(dataset, "train", args.batch_size, shuffle=True, seed=args.seed)
    val_batches = batches(dataset, "val", args.eval_batch_size)
    fit_config = train.config_from_args(args, schedule="cosine", max_grad_norm=1.0, name=name)
    history = train.fit(model, train_batches, loss_fn, fit_config,
                        evaluate=lambda m: predict(m, val_batches)[1],
                        optimizer=s4_optimizer(model, args))
    _, val_metrics = predict(model, val_batches)
    test_preds, test_metrics = predict(model, batches(dataset, "test", args.eval_batch_size))
    test_ex = dataset["examples"]["test"]
    has_labels = all(e["label"] is not None for e in test_ex)
    submission = Path(args.out_dir) / f"{name}-submission.csv"
    data.write_submission(submission, [e["id"] for e in test_ex], test_preds, column="label")
    epochs = history["epochs"]
    steps = sum(e["steps"] for e in epochs)
    results = {
        "name": name, "layer": layer, "config": vars(config),
        "parameters": history["trainable_parameters"],
        "tokenizer": args.tokenizer, "vocab_size": config.vocab_size, "max_len": args.max_len,
        "epochs_run": len(epochs), "stopped": history["stopped"], "device": args.device.type,
        "torch_threads": torch.get_num_threads(),
        "train_time_s": sum(e["train_time_s"] for e in epochs),
        "time_per_epoch_s": [e["train_time_s"] for e in epochs],
        "time_per_step_s": sum(e["train_time_s"] for e in epochs) / max(steps, 1),
        "best_epoch": (history["best"] or {}).get("epoch"),
        "val_accuracy": val_metrics["accuracy"], "val_loss": val_metrics["loss"],
        "test_accuracy": test_metrics["accuracy"] if has_labels else None,
        "test_loss": test_metrics["loss"] if has_labels else None,
        "curves": [{"epoch": e["epoch"] + 1, "train_loss": e["train_loss"],
                    "val_loss": e.get("dev_loss"), "val_accuracy": e.get("dev_accuracy"),
                    "time_s": e["train_time_s"]} for e in epochs],
        "submission": str(submission)}
    atomic.save_json_atomic(Path(args.out_dir) / f"{name}-results.json", results)
    print(f"{name}: val acc {results['val_accuracy']:.4f}, test acc {results['test_accuracy']}, "
          f"{results['train_time_s']:.1f} s training, {results['time_per_step_s'] * 1000:.1f} ms/step")
    return results


# ----------------------------------------------------------------------------
# ssm_compare: timing against L, the comparison table (naive Bayes: baselines.py)


# the timed layers: row key -> legend label; "loop" in a key marks an L-step Python loop
TIMED = {"loop_s": "loop scan (ssm.py)", "fft_s": "kernel + FFT conv (s4.py)",
         "mamba_loop_s": "Mamba, loop scan (mamba.py)",
         "mamba_chunked_s": "Mamba, chunked scan (mamba.py)"}


def time_forward_backward(layer, u, repeats=3):
    """Median seconds of one forward + backward of a layer on u (fresh gradients each time)."""
    u = u.detach().requires_grad_()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        layer(u).square().mean().backward()
        if u.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timed_layers(H, N, device):
    """Key -> (layer, input shape from (batch, L)): the loop SSM and S4D on the same parameters
    (H channels, N complex modes), and a Mamba mixer with H inner channels and N real states."""
    A, B = s4.s4d_init("s4d-lin", N)
    fft_layer = s4.S4DLayer(H, N, A=A, B=B).to(device)
    loop_layer = ssm.DiagonalSSM(H, N, A=A, B=B).to(device)
    loop_layer.load_state_dict(fft_layer.state_dict())
    mixers = {scan: mamba.MambaMixer(H // 2, N, expand=2, scan=scan).to(device)
              for scan in ("reference", "chunked")}
    mixers["chunked"].load_state_dict(mixers["reference"].state_dict())
    channels_first, tokens_first = (lambda b, L: (b, H, L)), (lambda b, L: (b, L, H // 2))
    return {"loop_s": (loop_layer, channels_first), "fft_s": (fft_layer, channels_first),
            "mamba_loop_s": (mixers["reference"], tokens_first),
            "mamba_chunked_s": (mixers["chunked"], tokens_first)}


def time_vs_length(lengths, H=64, N=32, batch=2, loop_budget_s=60.0, device="cpu"):
    """Forward+backward seconds per L of every TIMED layer (timed_layers: the same H and N).

    A loop is timed once per L (the others: median of 3 after a warm-up) and is skipped once its
    predicted time (last time * L / last L) would exceed loop_budget_s; skipped points are None.
    """
    torch.manual_seed(0)
    layers, rows, last = timed_layers(H, N, device), [], {}
    for L in lengths:
        row = {"L": L}
        for key, (layer, shape) in layers.items():
            u = torch.randn(*shape(batch, L), device=device)
            if "loop" not in key:
                time_forward_backward(layer, u, 1)                     # warm-up
                row[key] = time_forward_backward(layer, u, 3)
            elif key not in last or last[key][1] * L / last[key][0] <= loop_budget_s:
                row[key] = time_forward_backward(layer, u, 1)
                last[key] = (L, row[key])
            else:
                row[key] = None
        rows.append(row)
        shown = ["skipped" if row[k] is None else f"{row[k] * 1e3:.1f} ms" for k in TIMED]
        print(f"L={L}: " + ", ".join(f"{k[:-2]} {t}" for k, t in zip(TIMED, shown)), flush=True)
    return rows


def loglog_slope(rows, key):
    """Least-squares slope of log(time) against log(L) over the measured points (None if < 2)."""
    points = [(r["L"], r[key]) for r in rows if r.get(key) is not None]
    if len(points) < 2:
        return None
    return float(np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)[0])


def slope_text(slope):
    return "n/a" if slope is None else f"{slope:.2f}"


def plot_time_vs_length(rows, path):
    """Log-log forward+backward time against L for every TIMED layer with a measured point."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, label in TIMED.items():
        points = [(r["L"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            slope = slope_text(loglog_slope(rows, key))
            ax.loglog(*zip(*points), "o-", base=2, label=f"{label}, slope {slope}")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward + backward time (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=80)


def plot_compare_curves(results, path):
    """Left: train and val loss per epoch; right: val accuracy against training time."""
    plt = plots.pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        epochs = [c["epoch"] for c in r["curves"]]
        ax_loss.plot(epochs, [c["train_loss"] for c in r["curves"]], "o-", label=f"{r['name']} train")
        ax_loss.plot(epochs, [c["val_loss"] for c in r["curves"]], "s--", label=f"{r['name']} val")
        elapsed = np.cumsum([c["time_s"] for c in r["curves"]])
        ax_acc.plot(elapsed, [c["val_accuracy"] for c in r["curves"]], "o-", label=r["name"])
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(xlabel="training time (s)", ylabel="val accuracy")
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=80)


def comparison_table(results, nb_accuracy):
    """Markdown table: one row per model plus the naive Bayes baseline."""
    lines = ["| model | params | epochs | s/epoch | ms/step | best val acc | test acc |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        per_epoch = np.mean(r["time_per_epoch_s"])
        test = "n/a" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        lines.append(f"| {r['name']} ({r['layer']}, init {r['config']['init']}) | {r['parameters']:,} | "
                     f"{r['epochs_run']} | {per_epoch:.1f} | {r['time_per_step_s'] * 1e3:.1f} | "
                     f"{r['val_accuracy']:.4f} | {test} |")
    lines.append(f"| bag-of-words naive Bayes (alpha 1) | - | - | - | - | - | {nb_accuracy:.4f} |")
    return "\n".join(lines) + "\n"


def compare(args, dataset):
    """Train the basic SSM, S4 and Mamba under the same budget; table, plots, time against L."""
    results = []
    for layer, name in (("ssm", "ssm"), (args.layer, "s4"), ("mamba", "mamba")):
        torch.manual_seed(args.seed)
        results.append(train_one(args, layer, name, dataset))
    ex = dataset["examples"]
    nb = baselines.naive_bayes_accuracy(ex["train"], ex["test"]) if ex["test"][0]["label"] is not None else None
    out = Path(args.out_dir)
    table = comparison_table(results, nb if nb is not None else float("nan"))
    plot_compare_curves(results, out / "compare-curves.png")
    summary = {"models": results, "naive_bayes_test_accuracy": nb}
    if args.bench_lengths:
        lengths = [int(x) for x in args.bench_lengths.split(",")]
        rows = time_vs_length(lengths, loop_budget_s=args.bench_loop_budget, device=args.device)
        plot_time_vs_length(rows, out / "time-vs-length.png")
        slopes = {k: loglog_slope(rows, k) for k in TIMED}
        summary.update(time_vs_length=rows, slopes=slopes)
        table += ("\nforward+backward time vs L, log-log slope: "
                  + ", ".join(f"{TIMED[k]} {slope_text(v)}" for k, v in slopes.items()) + "\n")
    atomic.write_text_atomic(out / "compare.md", table)
    atomic.save_json_atomic(out / "compare.json", summary)
    print(table)
    return max(results, key=lambda r: r["val_accuracy"])


# ----------------------------------------------------------------------------
# CLI: run.py --option ssm | s4 | ssm_compare

# path flags, checked by run.py before any work (options.check_paths)
PATHS = options.PathFlags(inputs=("--train", "--val", "--test"), outputs=("--submission",),
                          folders=("--out_dir",), written=lambda v: written_files(v))


def written_files(values):
    """{what: path} of the files written under fixed names in --out_dir (options.check_paths)."""
    option = values.get("option")
    names = (["ssm", "s4", "mamba"] if option == "ssm_compare"
             else [values.get("layer") if option == "ssm" else "s4"])
    files = [f"{n}-{kind}" for n in names for kind in ("results.json", "submission.csv",
                                                       "history.json", "curves.png")]
    if option == "ssm_compare":
        files += ["compare.md", "compare.json", "compare-curves.png", "time-vs-length.png"]
    if not values.get("submission"):
        files.append("submission.csv")
    return {f"--out_dir's {name}": Path(values["out_dir"]) / name for name in files}


def add_arguments(parser, option):
    """Flags of --option ssm / s4 / ssm_compare.

    Defaults: the configuration picked on DBpedia-14's validation split (BENCHMARKS.md, issue 4):
    one bidirectional block, N 32, mean+max pooling, dropout 0.3, word dropout 0.2, weight decay 1.0.
    """
    data_dir = "../shared/data/dbpedia14"
    add = parser.add_argument
    add("--train", default=f"{data_dir}/train.json", help="training JSON ({id, text, label} rows)")
    add("--val", "--dev", dest="val", default=f"{data_dir}/val.json", help="validation JSON")
    add("--test", default=f"{data_dir}/test.json", help="test JSON (label optional)")
    add("--out_dir", "--out-dir",
        type=options.output_folder, default=f"out/{option}",
        help="results, curves, tokenizer cache")
    add("--submission", type=options.output_file, default=None,
        help="id,label CSV for the test file (default OUT_DIR/submission.csv)")
    add("--tokenizer", choices=["sentencepiece", "bytes"], default="sentencepiece",
        type=options.renamed({"byte": "bytes"}),
        help="SentencePiece unigram trained on --train, or raw UTF-8 bytes (also spelled byte)")
    add("--vocab_size", "--vocab-size",
        type=options.size, default=8000, help="SentencePiece vocabulary size")
    add("--case_fold", "--case-fold", action=argparse.BooleanOptionalAction, default=True,
        help="lower-case (NFKC case folding) inside the SentencePiece model")
    add("--max_len", "--max-len",
        type=options.size, default=128, help="tokens kept per text (bos included)")
    add("--d_model", "--d-model", type=options.size, default=128, help="H: channels")
    add("--n_layers", "--n-layers", type=options.size, default=1, help="stacked SSM blocks")
    add("--d_state", "--d-state",
        type=options.size, default=32, help="N: state size per channel (complex; mamba: real)")
    add("--dropout", type=options.probability, default=0.3, help="dropout probability")
    add("--token_dropout", "--token-dropout", type=options.probability, default=0.2,
        help="training-time word dropout: fraction of tokens replaced by pad")
    add("--zero_init_branch", "--zero-init-branch", action="store_true",
        help="zero-init each block's mixing layer, so the model starts as a bag of embeddings")
    add_layer_arguments(parser, option)
    add("--init", choices=["s4d-legs", "s4d-lin", "s4d-inv"], default="s4d-legs", help="S4D A init")
    add("--ssm_init", "--ssm-init", choices=["random", "s4d-lin", "s4d-inv", "s4d-legs"],
        default="random", help="A init of the basic SSM (random: no HiPPO structure)")
    add("--discretization", choices=["zoh", "bilinear"], default="zoh",
        help="diagonal models' discretization (the DPLR S4 always uses bilinear)")
    add("--mixing", choices=["glu", "gelu"], default="glu", help="channel mixing after the SSM")
    add("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
        help="also run each SSM right to left (--no-bidirectional: causal only)")
    add("--pooling", choices=["mean", "max", "meanmax"], default="meanmax",
        help="how token states become one vector: masked mean, max, or both concatenated")
    add_training_arguments(parser, option)


def add_layer_arguments(parser, option):
    """--layer (ssm: the basic SSM or Mamba; s4 and ssm_compare: the S4 variant; ssm_compare
    always adds a Mamba row) and Mamba's sizes (mamba.py; ssm.SSMConfig checks them)."""
    add = parser.add_argument
    if option == "ssm":
        add("--layer", choices=["ssm", "mamba"], default="ssm",
            help="ssm (the basic diagonal SSM, loop scan) or mamba (the selective SSM, mamba.py)")
    else:
        add("--layer", choices=["s4d", "s4"], default="s4d",
            help="S4 variant: s4d (diagonal, Vandermonde kernel) or s4 (DPLR, Cauchy kernel)")
    add("--expand", type=options.size, default=2, help="mamba: E, inner channels E * d_model")
    add("--d_conv", "--d-conv", type=options.size, default=4,
        help="mamba: width of the causal depthwise convolution")
    add("--dt_rank", "--dt-rank", type=options.nonnegative_int, default=0,
        help="mamba: rank of the Delta projection (0: ceil(d_model / 16))")


def add_training_arguments(parser, option):
    """The shared training flags (train.py; the lr decays by a cosine after the warmup, and the
    time budget is per model), S4's lr cap, and ssm_compare's timing flags."""
    train.add_training_arguments(parser, epochs=10, lr=4e-3, weight_decay=1.0, warmup_steps=50,
                                 batch_size=32, eval_batch_size=128, patience=None)
    add = parser.add_argument
    add("--ssm_lr", "--ssm-lr",
        type=options.positive_float, default=1e-3, help="lr cap for A, B, dt (no weight decay)")
    if option == "ssm_compare":
        add("--bench_lengths", "--bench-lengths", default="256,512,1024,2048,4096,8192",
            help="comma-separated L for the time-vs-length plot ('' to skip)")
        add("--bench_loop_budget", "--bench-loop-budget", type=options.positive_float, default=60.0,
            help="skip loop-scan lengths predicted to take longer than this (s)")


def main(args):
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    dataset = load_data(args)
    sizes = {k: len(v) for k, v in dataset["examples"].items()}
    print(f"data: {sizes}, {dataset['num_classes']} classes, tokenizer {args.tokenizer} "
          f"(V={dataset['tokenizer'].vocab_size}), max_len {args.max_len}", flush=True)
    if args.option == "ssm_compare":
        best = compare(args, dataset)
    else:
        layer, name = (args.layer, args.layer) if args.option == "ssm" else (args.layer, "s4")
        best = train_one(args, layer, name, dataset)
    submission = Path(args.submission or Path(args.out_dir) / "submission.csv")
    atomic.write_text_atomic(submission, Path(best["submission"]).read_text(encoding="utf-8"))
    print(f"wrote {submission} (from {best['name']})")
