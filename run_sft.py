"""`run.py --option sft`: instruction fine-tuning of a causal Llama (a PEFT method or full), its
evaluation, the saved adapter and submission.csv. The data, prompts, masking and answers are
sft.py's; `sft_compare` / `sweep` (run_sft_studies.py) run this option once per setting.

One run:
    read --train (and --val, or a stratified --val_ratio split with --split_seed, written to
    OUT_DIR/split.json); the label set from the training answers (or --labels)
    load the model; --method: freeze it and add one PEFT method (adapters.adapt), or train all:
        lora     LoRA (Hu et al. 2021, arXiv:2106.09685) on --lora_targets (light / medium /
                 heavy of seed 000, or names), --lora_rank, --lora_alpha, --lora_dropout;
                 its variants (lora.py), combinable: --lora_scaling rs (rsLoRA, alpha / sqrt(r),
                 arXiv:2312.03732), --loraplus_ratio R (LoRA+, B's lr = R x A's, arXiv:2402.12354),
                 --lora_init pissa (PiSSA, A and B from W's top-r SVD, arXiv:2404.02948; saved
                 as a plain LoRA delta of rank 2r on the original base)
        dora     DoRA (Liu et al. 2024, arXiv:2402.09353): LoRA's flags plus a trained magnitude
                 per output row; the variants above combine with it
        ia3      IA3 (Liu et al. 2022, arXiv:2205.05638) scaling --ia3_targets (peft's k, v, down;
                 down_proj scales its input)
        prompt   prompt tuning (Lester et al. 2021, arXiv:2104.08691), --num_virtual_tokens
        ptuning  P-tuning (Liu et al. 2021, arXiv:2103.10385), --encoder_type MLP | LSTM,
                 --encoder_hidden_size
        prefix   prefix tuning (Li & Liang 2021, arXiv:2101.00190), --prefix_projection for the
                 MLP reparametrisation (--encoder_hidden_size), folded after training
        full     every weight trains
    The virtual-token methods (prompt, ptuning, prefix) run through a VirtualTokenLlama, the
    Llama's interface, so the loss, scoring and generation below have no per-method code.
    zero-shot: score the validation set before training (the base model: LoRA's B = 0, IA3's
    ones and the unwrapped Llama leave it unchanged)
    --eval_data FILE ...: general benchmarks (run_eval.py's layouts) scored zero-shot by lm-eval's
    protocol on the base model before training and on the tuned one after: "what fine-tuning
    cost" per task (acc, acc_norm before, after, difference), in summary.json and
    sft-history.json as fine_tuning_cost
    train.fit on the answer-token loss (sft.answer_loss) with AdamW, warmup + cosine/linear decay,
    accumulation, early stopping on validation loss (--patience), validation loss, perplexity,
    accuracy and macro-F1 every --eval_every_steps and every epoch
    answer the validation set (--answer_mode score | generate): accuracy, macro-F1, confusion
    save OUT_DIR/adapter (peft's layout + sft_config.json) or OUT_DIR/model (full), sft-history.json,
    sft-curves.png, confusion.png, summary.json; answer --test into --submission (id,answer):
    every test row, always (--max_eval_examples cuts validation only; --max_test_examples is
    refused, as a submission with rows missing would be)
Predict only: `--adapter DIR --test FILE --submission FILE` loads the base model named in
DIR/sft_config.json (or --pretrained-model-path) plus the adapter of any method, and answers the
test file.

Size: ~560 lines: one option's flags, data, method (LoRA's variants included), evaluation, saving
and prediction.
Trainable parameters are counted twice: programmatically, and by the method's formula
(adapters.formula_count; LoRA: sum over adapted Linears of r * (in + out), DoRA + out).
Tests: tests/test_run_sft.py (a tiny Llama: masking + training lowers the loss, the adapter
reloads to the same logits (and in peft), predict-only writes a valid submission, bad options;
the submission keeps every test row under --max_eval_examples; one short run per method whose
saved adapter reloads to the same validation answers); --eval_data in tests/test_run_eval.py.
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch

import adapters
import atomic
import checkpoint
import file_checks
import scoring
import data
import distributed
import fused
import lora
import metrics
import optimizer as optim_lib
import options
import packing
import peft_format
import run_eval
import sample
import sft
import train
import weights
from history import format_metrics

SFT_CONFIG = "sft_config.json"
METHODS = ("lora", "dora", "ia3", "prompt", "ptuning", "prefix", "full")
LORA_METHODS = ("lora", "dora")            # the ones --lora_* flags configure
LLAMA_METHODS = ("lora", "dora", "ia3", "full")   # the ones whose model is the Llama itself
FSDP_METHODS = ("lora", "ia3", "full")     # those of them tested under FSDP
FORMULAS = {"lora": "r*(in+out)", "dora": "r*(in+out)+out", "ia3": "L*(scaled channels)",
            "prompt": "n*dim", "ptuning": "n*dim+encoder",                   # printed
            "prefix": "n*L*2*kv (or n*kv+MLP)"}                              # (adapters.py)
# path flags, checked by run.py before any work (options.check_paths); training replaces
# OUT_DIR/adapter (OUT_DIR/model for full) whole, predicting (--adapter) writes no folder
PATHS = options.PathFlags(
    inputs=("--pretrained-model-path", "--train", "--val", "--test", "--label_names",
            "--adapter", "--eval_data"),
    outputs=("--submission",), folders=("--out_dir",),
    swapped=lambda v: {} if v.get("adapter") else {
        "--out_dir's saved folder": Path(v["out_dir"]) / ("model" if v["method"] == "full"
                                                          else "adapter")},
    written=lambda v: {f"--out_dir's {name}": Path(v["out_dir"]) / name for name in (
        ["submission.csv"] if v.get("test") and not v.get("submission") else []) + (
        [] if v.get("adapter") else ["summary.json", "sft-history.json", "split.json",
                                     "val-predictions.jsonl", "sft-curves.png",
                                     "confusion.png"])})


# ----------------------------------------------------------------------------
# flags

def add_data_arguments(add):
    add("--train", default=None, help="training file: JSON/JSONL records or `text;label` lines")
    add("--val", default=None, help="validation file (else a stratified split of --train)")
    add("--val_ratio", "--val-ratio",
        type=options.fraction, default=0.1, help="validation fraction of --train")
    add("--split_seed", "--split-seed",
        type=options.nonnegative_int, default=0, help="seed of the stratified split")
    add("--test", default=None, help="test file (answers optional) for --submission")
    add("--submission",
        type=options.output_file, default=None,
        help="id,answer CSV for --test (default OUT_DIR/submission.csv)")
    add("--labels", default=None, help="comma-separated label set (default: the training answers)")
    add("--text_field", "--text-field", default="text", help="JSON field holding the text")
    add("--label_field", "--label-field", default="label", help="JSON field holding the label")
    add("--label_names", "--label-names", default=None, help="JSON list naming integer labels")


def add_training_arguments(add):
    add("--method", choices=METHODS, default="lora", help="what trains: a PEFT method or full")
    add("--lora_targets", "--lora-targets", default="heavy",
        help="light | medium | heavy (seed 000) or comma-separated Linear names (q_proj or wq)")
    add("--lora_rank", "--lora-rank", type=options.size, default=16, help="LoRA rank r")
    add("--lora_alpha", "--lora-alpha",
        type=options.nonnegative_float, default=32.0, help="LoRA alpha (scale alpha / r)")
    add("--lora_dropout", "--lora-dropout",
        type=options.probability, default=0.05, help="dropout on LoRA's input")
    add("--lora_scaling", "--lora-scaling", choices=lora.SCALINGS, default="standard",
        help="lora / dora: the factor on B A, alpha / r (standard) or alpha / sqrt(r) (rs: "
        "rsLoRA, peft's use_rslora)")
    add("--loraplus_ratio", "--loraplus-ratio", type=options.positive_float, default=None,
        help="lora / dora: LoRA+, B (and DoRA's m) learn at R x --lr (the paper suggests 16)")
    add("--lora_init", "--lora-init", choices=lora.INITS, default="default",
        help="lora / dora: default (A Kaiming, B 0) or pissa (A, B from W's top-r singular "
        "vectors, the residual frozen; saved as a LoRA delta on the original base)")
    add("--ia3_targets", "--ia3-targets", default="k_proj,v_proj,down_proj",
        help="IA3: comma-separated Linears (q_proj or wq); down_proj / w2 scale their input")
    add("--num_virtual_tokens", "--num-virtual-tokens", type=options.size, default=20,
        help="prompt, ptuning, prefix: n virtual tokens")
    add("--prefix_projection", "--prefix-projection", action="store_true",
        help="prefix: train P = MLP(P') (Li & Liang 2021, Sec. 4.3), folded after training")
    add("--encoder_hidden_size", "--encoder-hidden-size", type=options.size, default=None,
        help="ptuning / prefix MLP width (default peft's: dim / n_kv_heads * head_dim)")
    add("--encoder_type", "--encoder-type", choices=["MLP", "LSTM"], default="MLP",
        help="ptuning: the prompt encoder (peft's encoder_reparameterization_type)")
    add("--max_len", "--max-len",
        type=options.positive_int, default=256, help="tokens per sequence (text cut first)")
    add("--fused", action=argparse.BooleanOptionalAction, default=True,
        help="the fast path (fused.py: fused q/k/v and gate/up matmuls, LoRA's fast branch; "
        "tested equal); --no-fused runs the readable reference path")
    add("--gradient_checkpointing", "--gradient-checkpointing", action="store_true",
        help="recompute each block in backward (less activation memory, ~30%% more time)")
    add("--packing", action=argparse.BooleanOptionalAction, default=None,
        help="each batch's examples packed into rows of <= --max_len tokens with document "
        "masking (packing.py; the same loss and gradients, no padding). Default: on for lora, "
        "ia3 and full in one process, where the tests prove it equal")
    add("--group_by_length", "--group-by-length", action="store_true",
        help="shuffled batches of similar lengths (mega-batches of 50 sorted; seeded, resumable)")


def add_answer_arguments(add):
    add("--template", choices=sft.TEMPLATES, default=None,
        help="chat (the model's own template; default when it has one), alpaca, or boolq (seed 002)")
    add("--answer_mode", "--answer-mode", choices=["score", "generate"], default="score",
        help="score: compare each label's log-probability; generate: decode and parse the label")
    add("--max_new_tokens", "--max-new-tokens",
        type=options.positive_int, default=8, help="generate mode: tokens")
    add("--zero_shot", "--zero-shot", action=argparse.BooleanOptionalAction,
        default=True, help="score the validation set before training (the base model)")
    add("--eval_data", "--eval-data", nargs="+", default=None,
        help="benchmark files (--option eval's layouts) scored by lm-eval's protocol before and "
        "after fine-tuning: the 'what fine-tuning cost' table, also in the history and summary")
    add("--eval_limit", "--eval-limit", type=options.positive_int, default=None,
        help="the first N questions of each --eval_data file")


def add_arguments(parser, option):
    add = parser.add_argument
    add_data_arguments(add)
    options.add_flags(parser, max_train_examples=None, max_eval_examples=None,
                      max_test_examples=None)
    add_training_arguments(add)
    train.add_training_arguments(      # seed 002's lr; early stopping on the validation loss
        parser, epochs=1, lr=1e-4, weight_decay=0.0, schedule="cosine", warmup_steps=0,
        batch_size=8, grad_accum=1, patience=None, eval_every_steps=None, eval_batch_size=16)
    add_answer_arguments(add)
    weights.add_model_path_argument(parser, "the base model")
    add("--adapter", default=None, help="predict only: an OUT_DIR/adapter (or OUT_DIR/model) folder")
    add("--out_dir", "--out-dir", type=options.output_folder, default="runs/sft",
        help="folder for every output of the run")
    distributed.add_fsdp_argument(parser)
    options.add_compile_arguments(parser, "every transformer block for training and scoring "
                                  "(fused.compile_model: one graph all blocks share)")


def check_arguments(args):
    """The combinations and paths the flag types cannot see alone (ranges are checked while
    parsing, options.py), as one line, before any work."""
    if args.adapter is None and args.train is None:
        raise ValueError("give --train FILE to fine-tune, or --adapter DIR --test FILE to predict")
    if args.adapter is not None and args.test is None:
        raise ValueError("--adapter predicts a test file: give --test FILE (and --submission)")
    if args.adapter is not None and args.eval_data:
        raise ValueError("--eval_data scores a fine-tuning run before and after; for a saved "
                         "adapter run --option eval --data FILE --adapter DIR")
    if args.eval_limit is not None and not args.eval_data:
        raise ValueError("--eval_limit cuts the --eval_data files; give --eval_data or drop it")
    if args.max_test_examples is not None:
        raise ValueError(f"--max_test_examples {args.max_test_examples}: the submission answers "
                         "every --test row; drop it (--max_eval_examples cuts validation only)")
    for flag in ("train", "val", "test", "label_names"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"--{flag} {path}: file not found")
    if args.adapter is not None and not (Path(args.adapter) / SFT_CONFIG).is_file():
        raise FileNotFoundError(f"--adapter {args.adapter}: no {SFT_CONFIG} there; give the "
                                "adapter (or model) folder an --option sft run wrote")
    lora.resolve_targets(args.lora_targets)
    if args.prefix_projection and args.method != "prefix" and args.adapter is None:
        raise ValueError(f"--prefix_projection is for --method prefix, not {args.method}; drop it")
    variants = {"--lora_scaling": args.lora_scaling != "standard", "--lora_init":
                args.lora_init != "default", "--loraplus_ratio": args.loraplus_ratio is not None}
    for flag in (f for f, given in variants.items() if given):
        if args.adapter is not None or args.method not in LORA_METHODS:
            raise ValueError(f"{flag} is for training --method {' | '.join(LORA_METHODS)}, not "
                             f"{'--adapter' if args.adapter else '--method ' + args.method}; "
                             "drop it (a saved adapter's config says its variant)")
    if args.lora_init == "pissa" and args.lora_alpha == 0:
        raise ValueError("--lora_init pissa with --lora_alpha 0: PiSSA divides W's singular "
                         "values by alpha / r; give --lora_alpha > 0")
    if args.compile and args.fsdp:
        raise ValueError("--compile with --fsdp: the sharded blocks run eagerly; drop one of them")
    distributed.check_fsdp(args.fsdp)
    if args.fsdp and (args.adapter is not None or args.method not in FSDP_METHODS):
        raise ValueError(f"--fsdp trains --method {' | '.join(FSDP_METHODS)} (the virtual-token "
                         "methods and --adapter prediction run without it); drop --fsdp")
    resolve_packing(args)


def resolve_packing(args):
    """--packing default (None): on where tests/test_packing.py proves it equal, i.e. the methods
    whose model is the Llama (its blocks take packed positions and masks) in one process; an
    explicit --packing elsewhere is one line. DDP / FSDP hooks run in forward, which packing
    bypasses; virtual tokens would sit in front of every packed example. -> packing on or off
    (args is not changed: a study's children each resolve their own default)."""
    if args.adapter is not None and args.packing is None:
        return False                                 # predict only: no training batches to pack
    why = packing.why_not(args.fsdp)
    if args.method not in LLAMA_METHODS:
        why = f"--method {args.method} puts virtual tokens in front of every example"
    return packing.resolve(args.packing, why, "drop --packing (or use --group_by_length)")


# ----------------------------------------------------------------------------
# data

def load_records(args):
    """{"train", "val", "test"} record lists and the label set; the split saved to out_dir."""
    label_names = (data.read_label_names(args.label_names, "--label_names") if args.label_names
                   else None)
    read = lambda path, flag: sft.read_records(path, args.text_field, args.label_field,  # noqa: E731
                                               label_names, flag)
    splits = {"train": read(args.train, "--train")}
    labels = sft.label_set(splits["train"], args.labels.split(",") if args.labels else None)
    sft.check_answers(splits["train"], labels)
    if args.val:
        splits["val"] = read(args.val, "--val")
    else:
        splits["train"], splits["val"] = sft.stratified_split(splits["train"], args.val_ratio,
                                                              args.split_seed)
        sft.save_split(Path(args.out_dir) / "split.json", splits["train"], splits["val"],
                       args.val_ratio, args.split_seed)
    sft.check_answers(splits["val"], labels)
    splits["train"] = data.subset(splits["train"], args.max_train_examples, args.seed)
    splits["val"] = data.subset(splits["val"], args.max_eval_examples, args.seed)
    if args.test:                       # whole: the submission answers every test row
        splits["test"] = read(args.test, "--test")
        sft.check_answers(splits["test"], labels, need=False)
    print("data: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
          + f"; labels {labels}", flush=True)
    return splits, labels


# ----------------------------------------------------------------------------
# the model: method, parameter counts

def adapter_config(args):
    """The PEFT config of --method (None for full)."""
    n, ia3_targets = args.num_virtual_tokens, [t.strip() for t in args.ia3_targets.split(",")
                                               if t.strip()]
    configs = {
        "lora": lambda: lora.LoraConfig(r=args.lora_rank, alpha=args.lora_alpha,
                                        dropout=args.lora_dropout,
                                        target_modules=args.lora_targets,
                                        use_rslora=args.lora_scaling == "rs",
                                        use_dora=args.method == "dora", init=args.lora_init),
        "ia3": lambda: adapters.IA3Config(ia3_targets, [t for t in ia3_targets
                                                        if t in ("down_proj", "w2")]),
        "prompt": lambda: adapters.PromptTuningConfig(n),
        "ptuning": lambda: adapters.PTuningConfig(n, args.encoder_type, args.encoder_hidden_size),
        "prefix": lambda: adapters.PrefixTuningConfig(n, args.prefix_projection,
                                                      args.encoder_hidden_size),
        "full": lambda: None}
    return configs["lora" if args.method in LORA_METHODS else args.method]()


def prepare_model(llama, args):
    """Apply --method -> (model to train, {"trainable", "total", "formula"}, config or None)."""
    llama.gradient_checkpointing = args.gradient_checkpointing
    config = adapter_config(args)
    model = llama.requires_grad_(True) if config is None else adapters.adapt(llama, config)
    if isinstance(config, lora.LoraConfig):
        names = sorted({n.rpartition(".")[2] for n, _ in lora.lora_layers(model)})
        variant = [name for name, on in (
            ("DoRA", config.use_dora), ("rsLoRA", config.use_rslora),
            ("PiSSA init", config.init == "pissa"),
            (f"LoRA+ ratio {args.loraplus_ratio}", args.loraplus_ratio is not None)) if on]
        print(f"LoRA r={config.r} alpha={config.alpha} scale {config.scale:g} on "
              f"{len(lora.lora_layers(model))} Linears ({', '.join(names)})"
              + (f"; {', '.join(variant)}" if variant else ""), flush=True)
    elif config is not None:
        print(f"{args.method}: {config}", flush=True)
    if args.fused and not args.fsdp:
        fused.fuse(model)          # one matmul for q/k/v and for gate/up, LoRA's fast branch
    if args.compile:
        fused.compile_model(model, backend=args.compile_backend)   # after fusing: its graph
    trainable, total = lora.count_parameters(model)
    formula = None if config is None else adapters.formula_count(config, llama.config)
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)"
          + (f"; formula {FORMULAS[args.method]}: {formula:,}" if formula is not None else ""),
          flush=True)
    if args.fsdp:
        distributed.shard(model, args.device)       # 1/N of every weight on this process's device
    return model, {"trainable": trainable, "total": total, "formula": formula}, config


# ----------------------------------------------------------------------------
# evaluation

class Evaluator:
    """Validation loss (answer tokens), accuracy and macro-F1 of one record list."""

    def __init__(self, tokenizer, records, labels, template, args):
        self.records, self.labels, self.template = records, labels, template
        self.tokenizer, self.args = tokenizer, args
        encoded = [sft.encode(tokenizer, r, labels, template, args.max_len) for r in records]
        self.prompts = [ids[:n_prompt] for ids, n_prompt in encoded]     # cut to fit, as trained
        self.sequences = [e for e, r in zip(encoded, records) if r.answer is not None]
        self.label_ids = sft.scoring_ids(tokenizer, template, labels)

    @torch.no_grad()
    def loss(self, model):
        packed = getattr(self.args, "packing", False)          # as trained: the same loss
        batches = sft.batches(self.sequences, self.args.eval_batch_size, self.tokenizer.pad_id,
                              pack_len=self.args.max_len if packed else None)
        total = count = 0.0
        for batch in batches:
            loss_sum, n = sft.answer_loss(model, batch)
            total, count = total + float(loss_sum), count + float(n)
        return total / max(count, 1.0)

    @torch.no_grad()
    def predict(self, model, mode="score"):
        """The predicted label per record (None: generate mode could not read one)."""
        if mode == "generate":
            return generate_answers(model, self.tokenizer, self.prompts, self.labels, self.args)
        scores = sft.score_answers(model, self.prompts, self.label_ids, self.tokenizer.pad_id,
                                   self.args.eval_batch_size)
        return [self.labels[k] for k in scores.argmax(-1).tolist()]

    def __call__(self, model, mode="score"):
        """train.fit's evaluation hook: {"loss", "accuracy", "macro_f1"}."""
        predictions = self.predict(model, mode)
        gold = [r.answer for r in self.records]
        return {"loss": self.loss(model), "accuracy": metrics.accuracy(predictions, gold),
                "macro_f1": metrics.macro_f1(predictions, gold, self.labels)}


@torch.no_grad()
def generate_answers(model, tokenizer, prompts, labels, args):
    """Greedy answers, left-padded batches; each parsed to a label or None (seed 004 Q2.9)."""
    answers = []
    for start in range(0, len(prompts), args.eval_batch_size):
        batch = prompts[start:start + args.eval_batch_size]
        outputs = sample.generate_batch(model, batch, tokenizer.pad_id, args.max_new_tokens,
                                       stop_tokens=tokenizer.stop_ids)
        answers += [sft.parse_answer(tokenizer.decode(ids, skip_special=True), labels)
                    for ids in outputs]
    return answers


# ----------------------------------------------------------------------------
# the run

def fit(model, tokenizer, splits, labels, template, args):
    """train.fit on the answer loss; returns the history."""
    sequences = [sft.encode(tokenizer, r, labels, template, args.max_len) for r in splits["train"]]
    batches = sft.batches(sequences, args.batch_size, tokenizer.pad_id, shuffle=True,
                          seed=args.seed, pack_len=args.max_len if args.packing else None,
                          group_by_length=args.group_by_length)
    config = train.config_from_args(args, name="sft", select_metric="loss", select_mode="min",
                                    count_unit="answer tok")
    optimizer = None                         # train.fit's AdamW over every trainable tensor
    if args.loraplus_ratio is not None:      # LoRA+: B (and DoRA's m) at ratio x lr
        optimizer = optim_lib.AdamW(lora.loraplus_param_groups(model, config.lr,
                                                               args.loraplus_ratio),
                                    lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                                    weight_decay=config.weight_decay, foreach=True)
    return train.fit(model, batches, sft.answer_loss, config, optimizer=optimizer,
                     evaluate=Evaluator(tokenizer, splits["val"], labels, template, args))


def report_validation(model, evaluator, args, summary):
    """Final validation answers in --answer_mode: metrics, confusion figure, predictions file."""
    predictions = evaluator.predict(model, args.answer_mode)
    gold = [r.answer for r in evaluator.records]
    report = metrics.classification_report(predictions, gold, evaluator.labels)
    out = Path(args.out_dir)
    metrics.plot_confusion(report["confusion"], evaluator.labels, out / "confusion.png",
                           f"validation, {args.answer_mode} mode")
    atomic.write_text_atomic(out / "val-predictions.jsonl", "".join(
        json.dumps({"id": r.id, "gold": r.answer, "predicted": p}) + "\n"
        for r, p in zip(evaluator.records, predictions)))
    summary["val"] = report
    print(f"Validation accuracy: {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} "
          f"({args.answer_mode} mode, {report['n']} records, {report['unparsed']} unparsed)",
          flush=True)


def predict_test(model, tokenizer, records, labels, template, args, summary):
    """Answer the test file, write and validate submission.csv, print accuracy when it has answers."""
    evaluator = Evaluator(tokenizer, records, labels, template, args)
    predictions = evaluator.predict(model, args.answer_mode)
    fallback = labels[0]     # a generate-mode answer the parser could not read: say so, then fill
    unparsed = sum(p is None for p in predictions)
    path = Path(args.submission or Path(args.out_dir) / "submission.csv")
    data.write_submission(path, [r.id for r in records], [p or fallback for p in predictions],
                          allowed=labels)
    print(f"wrote {path} ({len(records)} rows" + (f", {unparsed} unparsed answers set to "
          f"{fallback!r}" if unparsed else "") + ")", flush=True)
    if all(r.answer is not None for r in records):
        summary["test_accuracy"] = metrics.accuracy(predictions, [r.answer for r in records])
        print(f"Test accuracy: {summary['test_accuracy']:.4f}", flush=True)


def save_trained(model, tokenizer, adapter, labels, template, args):
    """OUT_DIR/adapter (a PEFT method, peft layout) or OUT_DIR/model (full), each with
    sft_config.json (the method, labels, template, base model), the folder swapped in whole."""
    out = Path(args.out_dir)
    fields = {"method": args.method, "labels": labels, "template": template,
              "max_len": args.max_len, "base_model": args.pretrained_model_path and os.path.abspath(
                  args.pretrained_model_path),            # absolute: read from any folder
              "base_config": vars(model.config)}

    def extra(folder):                                  # inside the new folder, before the swap
        atomic.save_json_atomic(folder / SFT_CONFIG, fields)
    if adapter is not None:
        return peft_format.save_adapter(out / "adapter", model, adapter, extra=extra)
    return weights.save_model_folder(out / "model", model.config,
                                     distributed.full_state_dict(model), tokenizer.spec, extra)


def score_eval_data(model, tokenizer, tasks, label, args):
    """The --eval_data files scored zero-shot by lm-eval's protocol (run_eval.score_tasks) ->
    one result per file ([] without --eval_data)."""
    if not tasks:
        return []
    model.eval()
    results = run_eval.score_tasks(model, tokenizer, tasks, label, args.eval_batch_size)
    print(f"--eval_data {label} fine-tuning: " + ", ".join(
        f"{Path(r['data']).stem} acc {r['acc']:.4f}" for r in results), flush=True)
    return results


def report_cost(model, tokenizer, tasks, before, history, summary, args):
    """What fine-tuning cost: --eval_data after training against before, per task, printed and
    stored as "fine_tuning_cost" in summary.json and sft-history.json."""
    if not tasks:
        return
    rows = run_eval.cost_rows(before, score_eval_data(model, tokenizer, tasks, "after", args))
    print("what fine-tuning cost (--eval_data, zero-shot):\n" + run_eval.format_cost_table(rows),
          flush=True)
    summary["fine_tuning_cost"] = history["fine_tuning_cost"] = rows
    if distributed.is_main():
        atomic.save_json_atomic(Path(args.out_dir) / "sft-history.json", history)


def default_template(args, tokenizer):
    """--template, else the model's own chat template when it has one, else alpaca."""
    return args.template or ("chat" if tokenizer.chat_format else "alpaca")


def run_training(args):
    start = time.perf_counter()
    out = Path(args.out_dir)
    splits, labels = load_records(args)
    args.packing = resolve_packing(args)              # recorded in summary.json as it ran
    tasks = run_eval.read_files(args.eval_data or [], args.eval_limit)   # checked before loading
    llama, tokenizer = scoring.load_model(args.pretrained_model_path,
                                             distributed.load_device(args))
    template = default_template(args, tokenizer)
    model, params, adapter = prepare_model(llama, args)
    summary = {"option": "sft", "method": args.method, "labels": labels, "template": template,
               "parameters": params, "examples": {k: len(v) for k, v in splits.items()}}
    if args.zero_shot:                      # the base model: llama without virtual tokens
        evaluator = Evaluator(tokenizer, splits["val"], labels, template, args)
        llama.eval()
        summary["zero_shot"] = evaluator(llama)
        print("zero-shot validation: " + format_metrics(summary["zero_shot"]), flush=True)
    before = score_eval_data(llama, tokenizer, tasks, "before", args)    # the base model
    history = fit(model, tokenizer, splits, labels, template, args)
    adapters.fold(model)                    # P-tuning / prefix MLPs -> plain P, as saved
    summary.update(best=history["best"], epochs=history["epochs"], stopped=history["stopped"],
                   peak_memory_mb=max(e["peak_memory_mb"] for e in history["epochs"]),
                   memory_kind=history["memory_kind"])
    report_validation(model, Evaluator(tokenizer, splits["val"], labels, template, args), args,
                      summary)
    summary["saved"] = str(save_trained(model, tokenizer, adapter, labels, template, args))
    if "test" in splits:
        predict_test(model, tokenizer, splits["test"], labels, template, args, summary)
    report_cost(model, tokenizer, tasks, before, history, summary, args)
    summary.update(wall_time_s=time.perf_counter() - start, args=vars(args),
                   identity=checkpoint.run_identity(args))   # data by digest: a study's --resume
    atomic.save_json_atomic(out / "summary.json", summary)
    return summary


def run_prediction(args):
    """--adapter DIR --test FILE: the saved run answers a test file."""
    folder = Path(args.adapter)
    strings = (list, lambda v: v and all(isinstance(s, str) for s in v), "a list of strings")
    saved = file_checks.check_fields(  # every field checked before use (types, ranges, keys)
        file_checks.read_json(folder / SFT_CONFIG, flag="--adapter"), folder / SFT_CONFIG,
        {"method": (str, METHODS.__contains__, f"one of {', '.join(METHODS)}"),
         "labels": strings,
         "template": (str, sft.TEMPLATES.__contains__, " | ".join(sft.TEMPLATES)),
         "max_len": options.size_field(), "base_model": ((str, type(None)), None, ""),
         "base_config": (dict, None, "")})
    path = args.pretrained_model_path or saved["base_model"]
    if saved["method"] == "full":
        model, tokenizer = scoring.load_model(folder, args.device)
    else:
        llama, tokenizer = scoring.load_model(path, args.device)
        if vars(llama.config) != saved["base_config"]:
            raise ValueError(f"{folder / SFT_CONFIG}: the adapter was trained on another base model "
                             f"({saved['base_model'] or 'the default model'}); pass that one with "
                             "--pretrained-model-path")
        model, config = peft_format.load_adapter(folder, llama)
        print(f"loaded {saved['method']} adapter: {config}", flush=True)
    model.eval()
    args.max_len = saved["max_len"]
    records = sft.read_records(args.test, args.text_field, args.label_field, None, "--test")
    sft.check_answers(records, saved["labels"], need=False)
    summary = {}
    predict_test(model, tokenizer, records, saved["labels"], saved["template"], args, summary)
    return summary


def main(args):
    check_arguments(args)
    return run_prediction(args) if args.adapter else run_training(args)
