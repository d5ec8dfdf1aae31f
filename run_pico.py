"""pico-LLM (seed 003) driver behind `run.py --option pico | pico_compare`: training runs with
checkpoints and resume, the studies (train/test gap, attention heatmaps, nucleus p-sweep, the
same-budget comparison of model variants), their figures and tables (every file through
atomic.py), and the command-line flags. The models, BPE training and generation are in pico.py,
the saved run folder in checkpoint.py (save_pico, load_pico), the tokenizer classes in
tokenizer.py, the streaming reader in data.py. `--resume` continues the run folder OUT_DIR/<name>
(or the folder `--resume DIR` names): a finished run trains --epochs more, a killed run
(--checkpoint_every_steps) finishes from its training checkpoint OUT_DIR/<name>-checkpoint.

Tests: tests/test_pico.py (bad-input errors, train/save/resume/plot through run.py, compare table).
Size: ~460 lines: two options (pico, pico_compare) with their data wiring, figures and flags.
"""
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import atomic
import checkpoint
import options
import plots
import train
from data import LMBatches, iter_split, iter_text_chunks
from pico import (MODELS, PicoConfig, build_model, encode_prompt, generate, p_sweep,
                  train_bpe_tokenizer)
from tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parent
TINYSTORIES = Path(os.environ.get("LLMLAB_DATA", ROOT.parent / "shared" / "data")) / "tinystories"


# ----------------------------------------------------------------------------
# Data wiring: --input_files and TinyStories -> train, test and train-eval batch streams

def _check_text_file(path, flag):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file; give an existing text file")
    if path.stat().st_size == 0:
        raise ValueError(f"{flag} {path} is empty; give a file with text in it")


def _chain(paths, tokenizer, block_size, split, test_every, chunk_bytes):
    def make():
        for path in paths:
            yield from iter_split(path, tokenizer, block_size, split, test_every, chunk_bytes)
    return make


def data_files(args):
    """Check the files and return {"tiny": (weight, train paths, test paths), "custom": (...)}."""
    weight = args.tinystories_weight if args.input_files else 1.0
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--tinystories_weight {weight}: must be a probability in [0, 1]")
    files = {}
    if weight > 0:
        for path in [*args.tinystories_train, args.tinystories_valid]:
            _check_text_file(path, "--tinystories_train/--tinystories_valid")
        files["tiny"] = (weight, list(args.tinystories_train), [args.tinystories_valid])
    if weight < 1:
        for path in args.input_files:
            _check_text_file(path, "--input_files")
        files["custom"] = (1.0 - weight, list(args.input_files), list(args.input_files))
    return files


def build_batches(args, files, tokenizer, block_size):
    """Train, test and train-eval (a fixed slice of the training blocks) batch streams."""
    train, test = [], []
    for source, (weight, train_paths, test_paths) in files.items():
        every = args.test_every if source == "custom" else 0
        for split, paths, out in [("train", train_paths, train), ("test", test_paths, test)]:
            make = _chain(paths, tokenizer, block_size, split, every, args.chunk_bytes)
            if next(make(), None) is None:
                raise ValueError(_too_short(paths, tokenizer, block_size, split, every))
            out.append((weight, make))
    batch = args.batch_size
    return {"train": LMBatches(train, batch, args.shuffle_buffer, args.seed),
            "test": LMBatches(test, batch, 0, args.seed, max_batches=args.eval_batches),
            "train_eval": LMBatches(train, batch, 0, args.seed, max_batches=args.eval_batches)}


def _too_short(paths, tokenizer, block_size, split, every):
    tokens = sum(len(tokenizer.encode(t)) for p in paths for t in iter_text_chunks(p))
    need = f" (the {split} split needs {every} blocks with --test_every {every})" if every else ""
    return (f"--block_size {block_size} leaves no {split} block in {', '.join(map(str, paths))}: "
            f"{tokens} tokens in all{need}; lower --block_size or give more text")


# ----------------------------------------------------------------------------
# Loss: next-token cross-entropy, nats per token

def lm_loss(model, batch):
    """train.fit's loss_fn: summed next-token cross-entropy of a (B, T + 1) batch, token count."""
    batch = batch.to(next(model.parameters()).device)
    logits = model(batch[:, :-1])                                       # (B, T, V)
    targets = batch[:, 1:]                                              # (B, T)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
    return loss, targets.numel()


@torch.no_grad()
def mean_loss(model, batches):
    """Mean next-token loss (nats per token) over every batch of a stream."""
    total, count = 0.0, 0
    for batch in batches:
        loss, n = lm_loss(model, batch)
        total, count = total + float(loss), count + n
    return total / max(count, 1)


# ----------------------------------------------------------------------------
# Figures (matplotlib, written atomically)

def plot_gap(history, path):
    """Overfitting study: train loss (eval mode, a fixed training slice), test loss, their gap."""
    evals = [e for e in history["evals"] if "train_loss" in e]
    steps = [e["step"] for e in evals]
    fig, (ax, gap_ax) = plots.pyplot().subplots(1, 2, figsize=(10, 3.5))
    ax.plot(steps, [e["train_loss"] for e in evals], "o-", label="train (eval mode)")
    ax.plot(steps, [e["loss"] for e in evals], "s-", label="test")
    ax.set(xlabel="optimizer step", ylabel="loss (nats / token)")
    ax.legend()
    gap_ax.plot(steps, [e["loss"] - e["train_loss"] for e in evals], "o-")
    gap_ax.axhline(0.0, color="grey", lw=0.5)
    gap_ax.set(xlabel="optimizer step", ylabel="test loss - train loss")
    fig.suptitle(f"{history['name']}: train/test gap")
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=90)


def plot_attention(maps, labels, path, title):
    """One heatmap per (layer, head): row = query position, column = key position."""
    n_layers, n_heads = len(maps), maps[0].shape[1]
    fig, axes = plots.pyplot().subplots(n_layers, n_heads,
                                         figsize=(2.8 * n_heads, 2.8 * n_layers), squeeze=False)
    for layer, weights in enumerate(maps):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(weights[0, head].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=90)


def plot_p_sweep(rows, path, title):
    fig, ax = plots.pyplot().subplots(figsize=(5, 3.5))
    for key in ("distinct_1", "distinct_2", "rep_4"):
        ax.plot([r["p"] for r in rows], [r[key] for r in rows], "o-", label=key)
    ax.set(xlabel="nucleus mass p", ylabel="fraction", title=title)
    ax.legend()
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=90)


def plot_compare(results, path):
    """Test loss against training seconds per model, and the final validation perplexity."""
    fig, (ax, bar_ax) = plots.pyplot().subplots(1, 2, figsize=(12, 4))
    for r in results:
        seconds = {s["step"]: s["time_s"] for s in r["history"]["steps"]}
        evals = [e for e in r["history"]["evals"] if e["step"] in seconds]
        ax.plot([seconds[e["step"]] for e in evals], [e["loss"] for e in evals], "o-", ms=3,
                label=r["variant"])
    ax.set(xlabel="training seconds (wall clock)", ylabel="test loss (nats / token)")
    ax.legend(fontsize=7)
    bar_ax.bar([r["variant"] for r in results], [r["val_ppl"] for r in results])
    bar_ax.set(ylabel="validation perplexity")
    bar_ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=90)


# ----------------------------------------------------------------------------
# Command line: run.py --option pico | pico_compare

COMPARE_VARIANTS = {  # name -> PicoConfig overrides; "transformer" = RoPE, pre-norm, softmax
    "lstm": dict(model="lstm"),
    "kgram": dict(model="kgram"),
    "transformer": dict(model="transformer"),
    "nope": dict(model="transformer", positional="nope"),
    "learned": dict(model="transformer", positional="learned"),
    "postnorm": dict(model="transformer", norm_placement="post"),
    "linear": dict(model="transformer", attention="linear"),
    "gla": dict(model="transformer", attention="gla"),
}


# path flags, checked by run.py before any work (options.check_paths); --resume reads and
# rewrites its run folder in place by design
PATHS = options.PathFlags(inputs=("--input_files", "--tinystories_train", "--tinystories_valid"),
                          folders=("--out_dir",))


def add_arguments(parser, option):
    """pico's flags; the course's spellings kept (--input_files, --tinystories_weight, --block_size,
    --embed_size, --kgram_k, --num_inner_mlp_layers, --max_steps_per_epoch, --prompt). The
    training flags are the shared ones (train.add_training_arguments). --warmup_steps 20 kept the
    LSTM on its unigram plateau (loss ~6 after 150 steps vs 4.2 without; no effect on the others),
    hence 0; a decaying --schedule needs --max_steps_per_epoch (the stream has no length)."""
    add = _flag_adder(parser)
    _add_data_arguments(add)
    _add_model_arguments(add)
    train.add_training_arguments(parser, epochs=1, lr=3e-3, batch_size=16, weight_decay=0.0,
                                 warmup_steps=0, schedule="constant", eval_every_steps=100)
    _add_run_arguments(add)
    if option == "pico_compare":
        add("compare_models", list(COMPARE_VARIANTS), "variants trained under the same budget",
            nargs="+", choices=sorted(COMPARE_VARIANTS))
        add("compare_lr", ["lstm=0.01", "kgram=0.01"], "model=lr pairs overriding --lr in the "
            "comparison (defaults: best of 1e-3/3e-3/1e-2/3e-2 after 150 steps, two seeds)",
            nargs="*")


def _flag_adder(parser):
    """add(name, default, help, **kw): --name plus its dashed alias; type taken from the default."""
    def add(name, default, help, **kw):
        dashed = "--" + name.replace("_", "-")
        aliases = [dashed] if dashed != f"--{name}" else []
        if "type" not in kw and "choices" not in kw and default is not None and "nargs" not in kw:
            kw["type"] = type(default)
        parser.add_argument(f"--{name}", *aliases, default=default, help=help, **kw)
    return add


def _add_data_arguments(add):
    tiny_train = [str(TINYSTORIES / "train.txt"), str(TINYSTORIES / "train-split-head.txt")]
    add("input_files", None, "custom text files mixed in, e.g. ../shared/data/pico/3seqs.txt",
        nargs="*")
    add("tinystories_weight", 0.5, "probability a block is TinyStories (1 without --input_files)",
        type=options.unit_interval)
    add("tinystories_train", tiny_train, "TinyStories training text files", nargs="+")
    add("tinystories_valid", str(TINYSTORIES / "valid.txt"), "TinyStories validation (test) file")
    add("test_every", 10, "every n-th block of --input_files is held out as test data",
        type=options.nonnegative_int)
    add("chunk_bytes", 1 << 20, "bytes per piece read by the streaming reader",
        type=options.positive_int)
    add("tokenizer", "bpe", "bpe: SentencePiece BPE trained on the training text; bytes: UTF-8 "
        "bytes (also spelled byte)", choices=["bpe", "bytes"],
        type=options.renamed({"byte": "bytes"}))
    add("vocab_size", 2048, "BPE vocabulary size (byte: always 256)", type=options.size)
    add("block_size", 128, "tokens per training window (the course's 1024 is slow on a CPU)",
        type=options.size)
    add("shuffle_buffer", 256, "blocks held by the streaming shuffle buffer",
        type=options.nonnegative_int)


def _add_model_arguments(add):
    add("model", None, "model kind (default transformer, or the --resume checkpoint's kind)",
        choices=sorted(MODELS))
    add("embed_size", 128, "embedding and model width", type=options.size)
    add("n_layers", 2, "LSTM layers or transformer blocks", type=options.size)
    add("n_heads", 4, "attention heads", type=options.size)
    add("hidden_dim", 512, "MLP hidden width (transformer and k-gram MLP)",
        type=options.size)
    add("kgram_k", 3, "tokens the k-gram MLP reads", type=options.size)
    add("num_inner_mlp_layers", 1, "hidden layers of the k-gram MLP", type=options.size)
    add("positional", "rope", "transformer positions", choices=["learned", "rope", "nope"])
    add("norm_placement", "pre", "RMSNorm before or after each residual", choices=["pre", "post"])
    add("attention", "softmax", "attention kind", choices=["softmax", "linear", "gla"])
    add("attention_chunk", 16, "chunk length of chunked linear and gated linear attention",
        type=options.size)
    add("dropout", 0.0, "dropout on attention and MLP outputs", type=options.probability)


def _add_run_arguments(add):
    """Selection, evaluation, generation, the p-sweep and the outputs (token budget per epoch =
    --max_steps_per_epoch x --batch_size x --block_size)."""
    add("select_metric", "loss", "state kept at the end: lowest test loss (early stopping) or "
        "lowest train loss (~ the last state, for the overfitting study)",
        choices=["loss", "train_loss"])
    add("eval_batches", 8, "batches per periodic evaluation (compare: final = whole test split)",
        type=options.positive_int)
    add("prompt", "Once upon a", "text to continue")
    add("max_new_tokens", 60, "tokens to generate", type=options.positive_int)
    add("top_p", 0.95, "nucleus mass p of the sampled continuation", type=options.nucleus_mass)
    add("sweep_ps", [0.05, 0.3, 0.5, 0.7, 0.9, 0.95, 1.0], "p values of the p-sweep", nargs="+",
        type=options.nucleus_mass)
    add("sweep_samples", 4, "samples per p in the p-sweep", type=options.positive_int)
    add("out_dir", "runs/pico", "folder for checkpoints, histories, tables and figures",
        type=options.output_folder)
    add("name", None, "run name (default pico-<model>)")


def config_from_args(args, vocab_size, **overrides):
    fields_from_args = dict(
        model="transformer", vocab_size=vocab_size, block_size=args.block_size, dim=args.embed_size,
        n_layers=args.n_layers, n_heads=args.n_heads, hidden_dim=args.hidden_dim,
        kgram_k=args.kgram_k,
        mlp_layers=args.num_inner_mlp_layers, positional=args.positional,
        norm_placement=args.norm_placement, attention=args.attention,
        attention_chunk=args.attention_chunk,
        dropout=args.dropout)
    return PicoConfig(**{**fields_from_args, **overrides})


def make_tokenizer(args, files):
    if args.tokenizer == "bytes":
        return ByteTokenizer()
    return train_bpe_tokenizer([p for _, paths, _ in files.values() for p in paths], args.vocab_size)


def evaluate_lm(model, batches):
    test = mean_loss(model, batches["test"])
    return {"loss": test, "perplexity": math.exp(min(test, 50.0)),
            "train_loss": mean_loss(model, batches["train_eval"])}


def train_model(model, batches, args, name, device, resumed=None, lr=None, killed=False):
    """train.fit with our loss and evaluation (lr defaults to --lr); returns (history, optimizer).
    resumed: (folder, meta) of a finished run continued; killed: a killed run finished from its
    training checkpoint OUT_DIR/<name>-checkpoint."""
    lr = args.lr if lr is None else lr
    folder, resume_meta = resumed or (None, None)
    model.to(device)
    batches["train"].epoch_offset = (resume_meta or {}).get("epochs", 0)  # resume: next shuffle
    total = args.max_steps_per_epoch * args.epochs if args.max_steps_per_epoch else None
    config = train.config_from_args(
        args, lr=lr, warmup_steps=0 if resume_meta else args.warmup_steps, total_steps=total,
        select_metric=args.select_metric, select_mode="min", name=name, count_unit="tok",
        progress=sys.stderr.isatty() and not args.no_progress,
        checkpoint_dir=str(Path(args.out_dir) / f"{name}-checkpoint")
        if (args.checkpoint_every_steps or killed) else None, resume=killed,
        start_if_missing=killed)          # killed before its first checkpoint: start the epochs
    optimizer = train.make_optimizer(model, config)
    if resume_meta and resume_meta.get("optimizer"):
        checkpoint.load_pico_optimizer(folder, optimizer, resume_meta)
        for group in optimizer.param_groups:
            group["initial_lr"] = lr
    history = train.fit(model, batches["train"], lm_loss, config, lambda m: evaluate_lm(m, batches),
                        optimizer)
    return history, optimizer


def tokens_per_second(history):
    epochs = history["epochs"]
    return sum(e["count"] for e in epochs) / max(sum(e["train_time_s"] for e in epochs), 1e-9)


def report_run(model, tokenizer, history, args, name):
    """Samples, the gap figure, attention heatmaps (softmax transformer) and the p-sweep."""
    out, cfg = Path(args.out_dir), model.cfg
    ids = encode_prompt(tokenizer, args.prompt)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    greedy = generate(model, ids, args.max_new_tokens)
    print(f"[greedy] {args.prompt}{tokenizer.decode(greedy)}", flush=True)
    sampled = generate(model, ids, args.max_new_tokens, args.top_p, generator)
    print(f"[top_p={args.top_p}] {args.prompt}{tokenizer.decode(sampled)}", flush=True)
    plot_gap(history, out / f"{name}-gap.png")
    if cfg.model == "transformer" and cfg.attention == "softmax":          # prompt + greedy text
        tokens = torch.tensor([(ids + greedy)[:24]], device=next(model.parameters()).device)
        with torch.no_grad():
            _, maps = model(tokens, return_attention=True)
        labels = [tokenizer.decode([i]).replace("\n", "\\n") for i in tokens[0].tolist()]
        plot_attention(maps, labels, out / f"{name}-attention.png", f"{name}: attention, prompt")
    rows = p_sweep(model, tokenizer, args.prompt, args.sweep_ps, args.sweep_samples,
                   args.max_new_tokens, args.seed)
    for r in rows:
        print(f"p={r['p']:.2f} distinct-1 {r['distinct_1']:.3f} distinct-2 {r['distinct_2']:.3f} "
              f"rep-4 {r['rep_4']:.3f} | {r['sample'][:80]!r}", flush=True)
    atomic.save_json_atomic(out / f"{name}-psweep.json", rows)
    plot_p_sweep(rows, out / f"{name}-psweep.png", f"{name}: diversity against p")


def check_prompt(args, tokenizer, block_size):
    """The prompt must fit the model's context (checked before training, not after)."""
    ids = encode_prompt(tokenizer, args.prompt)
    if len(ids) >= block_size:
        raise ValueError(f"--prompt is {len(ids)} tokens but --block_size is {block_size}: the model "
                         "could not see it whole; shorten --prompt or raise --block_size")


def resume_folder(args):
    """The pico run folder --resume continues: the one `--resume DIR` names, else OUT_DIR/<name>
    (name: --name, else pico-<--model>)."""
    if isinstance(args.resume, str):
        return Path(args.resume)
    return Path(args.out_dir) / (args.name or f"pico-{args.model or 'transformer'}")


def main(args):
    device = args.device
    files = data_files(args)
    config_from_args(args, args.vocab_size, model=args.model or "transformer")  # shape errors now
    if args.option == "pico_compare":
        return run_compare(args, files, device)
    model, meta, folder = None, None, None
    if args.resume_or_start and not (atomic.folder_or_backup(resume_folder(args))
                                     / "pico.json").is_file():
        args.resume = False                  # --resume_or_start: nothing saved yet, start fresh
    elif args.resume_or_start and not args.resume:
        args.resume = True
    if args.resume:
        folder = resume_folder(args)
        model, tokenizer, meta = checkpoint.load_pico(folder, args.model)
    else:
        tokenizer = make_tokenizer(args, files)
    block_size = model.cfg.block_size if model else args.block_size
    batches = build_batches(args, files, tokenizer, block_size)
    if model is None:
        kind = args.model or "transformer"
        model = build_model(config_from_args(args, tokenizer.vocab_size, model=kind))
    print(f"tokenizer {tokenizer.kind} (V={tokenizer.vocab_size}); {model.cfg}", flush=True)
    check_prompt(args, tokenizer, model.cfg.block_size)
    name = args.name or f"pico-{model.cfg.model}"
    killed = bool(meta) and meta.get("complete") is False
    if args.checkpoint_every_steps and not args.resume:   # tokenizer + config for a resume
        checkpoint.save_pico(Path(args.out_dir) / name, model, tokenizer, None,
                             {"steps": 0, "epochs": 0, "complete": False})
    history, optimizer = train_model(model, batches, args, name, device,
                                     None if killed or not meta else (folder, meta), killed=killed)
    previous = {} if killed else (meta or {})
    done = {"steps": previous.get("steps", 0) + history["total_steps"],
            "epochs": previous.get("epochs", 0) + len(history["epochs"]), "complete": True}
    checkpoint.save_pico(Path(args.out_dir) / name, model, tokenizer, optimizer, done)
    print(f"checkpoint: {Path(args.out_dir) / name} ({done['steps']} steps in all)", flush=True)
    report_run(model, tokenizer, history, args, name)


def run_compare(args, files, device):
    """Train each variant under the same budget; write <out>/pico-compare.{md,json,png}."""
    tokenizer = make_tokenizer(args, files)
    batches = build_batches(args, files, tokenizer, args.block_size)
    full_test = LMBatches(batches["test"].sources, args.batch_size)
    ids, out, results = encode_prompt(tokenizer, args.prompt), Path(args.out_dir), []
    try:
        lrs = {kind: float(lr) for kind, lr in (pair.split("=") for pair in args.compare_lr)}
    except ValueError:
        raise ValueError(f"--compare_lr {args.compare_lr}: write pairs like lstm=0.03") from None
    for variant in args.compare_models:
        torch.manual_seed(args.seed)
        cfg = config_from_args(args, tokenizer.vocab_size, **COMPARE_VARIANTS[variant])
        model = build_model(cfg)
        lr = lrs.get(cfg.model, args.lr)
        history, _ = train_model(model, batches, args, f"pico-{variant}", device, lr=lr)
        val = mean_loss(model, full_test)
        generator = torch.Generator(device=device).manual_seed(args.seed)
        new_ids = generate(model, ids, args.max_new_tokens, args.top_p, generator)
        best = history["best"]["metrics"] if history["best"] else {}
        results.append({
            "variant": variant, "lr": lr, "params": sum(p.numel() for p in model.parameters()),
            "steps": history["total_steps"], "tokens": sum(e["count"] for e in history["epochs"]),
            "tokens_per_s": tokens_per_second(history), "train_loss": best.get("train_loss"),
            "val_loss": val, "val_ppl": math.exp(val), "history": history,
            "sample": args.prompt + tokenizer.decode(new_ids)})
        atomic.write_text_atomic(out / "pico-compare.md", compare_table(results, tokenizer, args))
        atomic.save_json_atomic(out / "pico-compare.json",
                               [{k: v for k, v in r.items() if k != "history"} for r in results])
    plot_compare(results, out / "pico-compare.png")
    print(compare_table(results, tokenizer, args), flush=True)


def compare_table(results, tokenizer, args):
    budget = (f"{args.time_budget_s:g} s" if args.time_budget_s else
              f"{args.max_steps_per_epoch} steps x {args.epochs} epochs")
    lines = [f"Budget per model: {budget}; batch {args.batch_size} x block {args.block_size}; "
             f"tokenizer {tokenizer.kind} (V={tokenizer.vocab_size}); val = whole test split.", "",
             "| variant | lr | params | steps | tokens | tokens/s | train loss | val loss | val ppl |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        train_loss = "n/a" if r["train_loss"] is None else f"{r['train_loss']:.3f}"
        lines.append(f"| {r['variant']} | {r['lr']:g} | {r['params']:,} | {r['steps']} | {r['tokens']:,.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {train_loss} | {r['val_loss']:.3f} | "
                     f"{r['val_ppl']:.1f} |")
    lines += ["", f"Samples (top_p={args.top_p}):", ""]
    lines += [f"- **{r['variant']}**: {r['sample']!r}" for r in results]
    return "\n".join(lines) + "\n"
