"""`run.py --option prompt | finetune | lora`: seed 001's sentiment classification command lines
(classifier.py holds the classifiers; this file reads the data, trains, writes the outputs).

Flags are spelled as in minllama's run_llama.py (--train, --dev, --test, --label-names, --dev_out,
--test_out, --batch_size, --epochs, --lr, --lora_rank, --lora_alpha); the training flags every
trainer shares come from train.add_training_arguments. Outputs: `PRED ||| TEXT` per line for dev
and test, `Dev Accuracy: 0.490` lines, OUT_DIR/<option>-<train>-summary.json, and for lora the
adapter in peft's layout with the head beside it. Reduced runs: --max_train_examples and
--max_eval_examples (dev) cut those splits; the test output covers every test line unless
--max_test_examples asks for a subset. finetune / lora pack each batch (--packing, the default
in one process: classifier.packed_batch; the same steps as padded, without the padding).

Tested in tests/test_run_classifier.py (the CLI end to end through run.main on temp files,
--lora_targets presets and names, the placeholder-label warning, FSDP == one process, a packed
run == the padded run, --packing under torchrun).
"""
import argparse
import time
from pathlib import Path


import atomic
import classifier
import data
import distributed
import fused
import lora
import options
import packing
import peft_format
import safetensors_io
import scoring
import train
import weights


OUTPUT_KIND = {"prompt": "prompting", "finetune": "finetuning", "lora": "lora"}


# path flags, checked by run.py before any work (options.check_paths); lora replaces
# OUT_DIR/<run>-adapter whole
PATHS = options.PathFlags(
    inputs=("--pretrained-model-path", "--train", "--dev", "--test", "--label_names"),
    outputs=("--dev_out", "--test_out"), folders=("--out_dir",),
    swapped=lambda v: {"--out_dir's adapter folder": lora_folder(argparse.Namespace(**v))}
    if v["option"] == "lora" else {})


def add_arguments(parser, option):
    """Seed 001's flags (spelled as in minllama's run_llama.py) plus optional reduced-run flags."""
    kind = OUTPUT_KIND[option]
    parser.add_argument("--train", default="data/cfimdb-train.txt", help="`LABEL ||| TEXT` file")
    parser.add_argument("--dev", default="data/cfimdb-dev.txt", help="dev file (model selection)")
    parser.add_argument("--test", default="data/cfimdb-test.txt", help="test file")
    parser.add_argument("--label-names", "--label_names", dest="label_names",
                        default="data/cfimdb-label-mapping.json", help="JSON list of label names")
    parser.add_argument("--dev_out", "--dev-out", type=options.output_file,
                        default=f"cfimdb-dev-{kind}-output.txt",
                        help="dev predictions, `PRED ||| TEXT` per line")
    parser.add_argument("--test_out", "--test-out", type=options.output_file,
                        default=f"cfimdb-test-{kind}-output.txt",
                        help="test predictions, `PRED ||| TEXT` per line")
    options.add_flags(parser, batch_size=8)
    weights.add_model_path_argument(parser)
    parser.add_argument("--max_sentence_len", "--max-sentence-len",
                        type=options.positive_int, default=None,
                        help="cut each text to this many tokens (None: no cut)")
    options.add_flags(parser, max_train_examples=None, max_eval_examples=None,
                      max_test_examples=None)
    parser.add_argument("--out_dir", "--out-dir", type=options.output_folder, default="runs",
                        help="folder for the history JSON, learning curves and summary JSON")
    parser.add_argument("--prompt_template", "--prompt-template", default=classifier.PROMPT_TEMPLATE,
                        help="prompt with {text} and {labels} placeholders")
    if option == "prompt":
        parser.add_argument("--prompt_style", "--prompt-style", choices=["plain", "chat"],
                            default="plain", help="plain text, or the user turn of the chat template")
        parser.add_argument("--calibrate", action="store_true",
                            help="contextual calibration against content-free inputs (Zhao et al. 2021)")
        return
    add_training_arguments(parser, option)


def add_training_arguments(parser, option):
    """The flags of --option finetune and lora: the shared training flags (train.py) with seed
    001's defaults, the head, and LoRA's."""
    train.add_training_arguments(parser, epochs=5, lr=2e-5)
    parser.add_argument("--head_input", "--head-input", choices=["prompt", "text"], default="prompt",
                        help="prompt: the head reads the end of the zero-shot prompt and starts as "
                        "the zero-shot classifier; text: [bos] text [eos] and a random head (minllama)")
    parser.add_argument("--hidden_dropout_prob", "--hidden-dropout-prob",
                        type=options.probability, default=0.3,
                        help="dropout on the pooled hidden state before the head")
    distributed.add_fsdp_argument(parser)
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                        help="the fast path (fused.py, tested equal); --no-fused: the readable one")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                        help="each batch's examples packed end to end into rows as long as the "
                        "longest example, with document masking (packing.py; the same batches, "
                        "logits and gradients, no padding). Default: on in one process")
    if option == "lora":
        parser.add_argument("--lora_rank", "--lora-rank",
                            type=options.size, default=4, help="LoRA rank r")
        parser.add_argument("--lora_alpha", "--lora-alpha",
                            type=options.positive_float, default=1.0,
                            help="LoRA alpha; the update is scaled by alpha / r")
        parser.add_argument("--lora_targets", "--lora-targets", default="wq,wv",
                            help="linear layers that get adapters: a preset (light: q,v; medium: "
                            "q,k,v,up,down; heavy: all seven) or comma-separated names in either "
                            "spelling (q_proj,v_proj or wq,wv)")


def check_arguments(args):
    """What the flag types cannot see alone, as one line naming the flag and the fix (ranges
    are checked while parsing, options.py)."""
    if "{text}" not in getattr(args, "prompt_template", "{text}"):
        raise ValueError("--prompt_template must contain {text} (and may contain {labels})")
    if getattr(args, "lora_targets", None) is not None:
        lora.resolve_targets(args.lora_targets)                  # an empty list fails before loading
    distributed.check_fsdp(getattr(args, "fsdp", False))
    if args.option != "prompt":
        args.packing = resolve_packing(args)             # recorded in the summary as it ran


def resolve_packing(args):
    """--packing default (None): on in one process (tests/test_classifier.py proves the packed
    batch's logits and gradients equal the padded one's); off under torchrun / --fsdp, where an
    explicit --packing is one line."""
    return packing.resolve(args.packing, packing.why_not(args.fsdp))


def load_splits(args):
    """Label names and the train/dev/test examples: seeded subsets when asked, each split by its
    own flag (--max_eval_examples cuts dev only; the test file only by --max_test_examples)."""
    names = data.read_label_names(args.label_names)
    limits = {"train": args.max_train_examples, "dev": args.max_eval_examples,
              "test": args.max_test_examples}
    splits = {}
    for split, flag in [("train", "--train"), ("dev", "--dev"), ("test", "--test")]:
        examples = data.read_examples(getattr(args, split), num_labels=len(names), flag=flag)
        splits[split] = data.subset(examples, limits[split], seed=args.seed)
        print(f"load {len(splits[split])} data from {getattr(args, split)}", flush=True)
    return names, splits


def run_prompt(args, llama, tokenizer, names, splits):
    """Zero-shot predictions for dev and test; returns {split: predictions}, parameter counts."""
    zero_shot = classifier.LlamaZeroShotClassifier(llama, tokenizer, names, args.prompt_template,
                                                    args.max_sentence_len, args.prompt_style).eval()
    example = zero_shot.template.format(text="<text>", labels=classifier.join_label_names(names))
    print(f"prompt ({args.prompt_style}): {example!r}; labels {zero_shot.label_ids}", flush=True)
    log_p_cf = None
    if args.calibrate:
        log_p_cf = zero_shot.content_free_log_probs()
        print(f"calibration p_cf: {[round(p, 3) for p in log_p_cf.exp().tolist()]}", flush=True)
    preds = {}
    for split in ("dev", "test"):
        prompts = [zero_shot.prompt_ids(e.text) for e in splits[split]]
        preds[split] = classifier.predict_prompting(zero_shot, prompts, args.batch_size, log_p_cf,
                                                     desc=split)
    total = sum(p.numel() for p in llama.parameters())
    return preds, {"trainable_parameters": 0, "total_parameters": total}


def build_head_classifier(args, llama, tokenizer, names):
    """The head classifier of --option finetune (every weight trains) or lora (head + adapters);
    with --head_input prompt its head starts from the label rows. Prints what trains."""
    model = classifier.LlamaEmbeddingClassifier(llama, len(names), args.hidden_dropout_prob)
    if args.option == "lora":
        injected = classifier.add_lora(model, args.lora_rank, args.lora_alpha, args.lora_targets)
        targets = ",".join(lora.resolve_targets(args.lora_targets))
        print(f"LoRA r={args.lora_rank} alpha={args.lora_alpha} on {len(injected)} layers "
              f"({targets})", flush=True)
    else:
        model.requires_grad_(True)
    trainable, total = lora.count_parameters(model)
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)",
          flush=True)
    if args.fused and not args.fsdp:
        fused.fuse(model.llama)    # one matmul for q/k/v and for gate/up, LoRA's fast branch
    if args.head_input == "prompt":
        label_ids = classifier.label_token_ids(tokenizer, names)
        classifier.init_head_from_labels(model, label_ids)
        print(f"head reads the prompt's last token, starts from labels {label_ids}", flush=True)
    if args.fsdp:
        distributed.shard(model, args.device)       # 1/N of every weight on this process's device
    return model


def run_train(args, llama, tokenizer, names, splits):
    """Fine-tune (all weights) or LoRA (adapters + head); best-on-dev; predictions for dev/test."""
    model = build_head_classifier(args, llama, tokenizer, names)
    template = args.prompt_template if args.head_input == "prompt" else None
    seqs = {s: classifier.encode_split(splits[s], tokenizer, args.max_sentence_len, template, names)
            for s in splits}

    pack_len = max(len(ids) for split in seqs.values() for ids in split)   # no example is cut
    collate = (lambda ids, labels: classifier.packed_batch(ids, labels, tokenizer.pad_id, pack_len)
               ) if args.packing else None

    def batches(split, shuffle=False, **options):   # training batches are sharded under torchrun
        return data.Batches(seqs[split], [e.label for e in splits[split]], args.batch_size,
                            tokenizer.pad_id, seed=args.seed, shuffle=shuffle, shard=shuffle,
                            collate=collate, **options)

    def evaluate(m):
        preds, loss = classifier.predict_head(m, batches("dev", sort_by_length=True))
        return {"loss": loss, "accuracy": classifier.accuracy(preds, splits["dev"])}

    config = train.config_from_args(args, name=run_name(args))
    history = train.fit(model, batches("train", shuffle=True), classifier.classification_loss, config,
                        evaluate=evaluate)
    preds = {s: classifier.predict_head(model, batches(s, sort_by_length=True))[0] for s in ("dev", "test")}
    trainable, total = lora.count_parameters(model)
    info = {"trainable_parameters": trainable, "total_parameters": total,
            "best": history["best"], "epochs": history["epochs"]}
    if args.option == "lora":
        info["adapter"] = str(save_lora_classifier(model, args))
    return preds, info


def save_lora_classifier(model, args):
    """OUT_DIR/<run>-adapter: the LoRA adapter in peft's layout (peft_format.save_adapter, with the
    LoraConfig classifier.add_lora trained) and the trained head beside it as
    classifier_head.safetensors (peft ignores the extra file); adapter and head are one folder,
    swapped in whole (a kill never leaves a new adapter beside an old head)."""
    folder = lora_folder(args)
    head = {k: v.cpu().contiguous() for k, v in distributed.full_state_dict(model.classifier_head).items()}
    peft_format.save_adapter(folder, model.llama, model.lora_config, extra=lambda tmp: (
        safetensors_io.write_safetensors(tmp / "classifier_head.safetensors", head)))
    print(f"saved the LoRA adapter and the head to {folder}", flush=True)
    return folder


def run_name(args):
    return f"{args.option}-{Path(args.train).stem}"


def lora_folder(args):
    return Path(args.out_dir) / f"{run_name(args)}-adapter"


def report_accuracy(summary, split, preds, examples, path):
    """Print `Dev Accuracy: 0.490` (seed 001's line), with a warning when the gold labels are
    placeholders; store <split>_accuracy and <split>_accuracy_warning (None or the text)."""
    acc = classifier.accuracy(preds, examples)
    warning = classifier.placeholder_labels_warning(examples, path)
    summary[f"{split}_accuracy"], summary[f"{split}_accuracy_warning"] = acc, warning
    note = f" ({warning})" if warning else ""
    print(f"{split.capitalize()} Accuracy: {acc:.3f}{note}", flush=True)


def main(args):
    """Read data, load the model, run the option, write dev/test outputs, print accuracies."""
    start = time.perf_counter()
    check_arguments(args)
    names, splits = load_splits(args)
    llama, tokenizer = scoring.load_model(args.pretrained_model_path, distributed.load_device(args))
    runner = run_prompt if args.option == "prompt" else run_train
    preds, info = runner(args, llama, tokenizer, names, splits)
    summary = {"option": args.option, "seed": args.seed, "label_names": names,
               "examples": {s: len(splits[s]) for s in splits}, **info}
    for split, out in [("dev", args.dev_out), ("test", args.test_out)]:
        data.write_predictions(out, preds[split], [e.text for e in splits[split]])
        report_accuracy(summary, split, preds[split], splits[split], getattr(args, split))
    summary["peak_memory_mb"] = train.peak_memory_mb(args.device.type)
    summary["wall_time_s"] = time.perf_counter() - start
    summary["args"] = vars(args)
    if args.out_dir:
        atomic.save_json_atomic(Path(args.out_dir) / f"{run_name(args)}-summary.json", summary)
    return summary
