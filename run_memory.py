"""`run.py --option memory`: the training-memory table of a Llama, full fine-tuning and LoRA,
estimated from its LlamaConfig alone (memory.py: the formulas) and, with --measure_steps,
measured on a real run. Prints the table; --json also writes it.

Tested in tests/test_memory.py (the CLI: its one-line errors, no weights read to estimate).
"""
import dataclasses
from pathlib import Path

import atomic
import llama
import memory
import options
import weights
from memory import GIB, METHODS

PRESETS = ("smollm2_135m", "llama32_1b", "stories42m")     # LlamaConfig classmethods
ROWS = (("weights", "weights"), ("gradients", "gradients"),
        ("optimizer", "optimizer states (AdamW m, v)"), ("activations", "activations"),
        ("total", "total"))


def method_title(setup, method):
    if method == "full":
        return "full fine-tuning"
    targets = setup.lora_targets if isinstance(setup.lora_targets, str) else ",".join(
        setup.lora_targets)
    return f"LoRA {targets} r={setup.lora_rank}"


def format_table(title, setup, estimates, measured=None, variants=None):
    """Rows weights .. total in GiB, one column per method (estimate, and measured beside it)."""
    methods = list(estimates)
    cell = max([12] + [len(method_title(setup, m)) // 2 + 2 for m in methods])
    width = 2 * cell if measured else cell + 8              # one method's column
    first = cell if measured else width                      # its estimate cell
    lines = [title, " " * 32 + "".join(f"{method_title(setup, m):>{width}}" for m in methods)]
    if measured:
        lines.append(" " * 32 + f"{'estimate':>{cell}}{'measured':>{cell}}" * len(methods))
    for key, label in ROWS:
        cells = []
        for m in methods:
            cells.append(f"{estimates[m]['bytes'][key] / GIB:>{first}.3f}")
            if measured:
                cells.append(f"{measured[m]['bytes'][key] / GIB:>{cell}.3f}")
        lines.append(f"{label + ' (GiB)' if key == 'weights' else label:<32}" + "".join(cells))
    if measured:
        kind = measured[methods[0]]["peak_kind"]
        lines.append(f"{'peak, ' + kind:<32}" + "".join(
            f"{'':>{cell}}{measured[m]['peak_bytes'] / GIB:>{cell}.3f}" for m in methods))
    for m in methods:
        e = estimates[m]
        lines.append(f"trainable parameters, {method_title(setup, m)}: {e['trainable']:,} of "
                     f"{e['parameters']:,} ({100 * e['trainable'] / e['parameters']:.3f}%)")
    for label, values in (variants or {}).items():
        lines.append(f"activations {label}: " + ", ".join(
            f"{method_title(setup, m)} {values[m] / GIB:.3f} GiB" for m in methods))
    return "\n".join(lines)


def variant_activations(config, setup, methods):
    """The two switches the table does not show: the other loss, the other checkpointing."""
    other_loss = (None, "with a plain LM loss (B x (T-1) x V fp32 log-probs)")
    if setup.answer_tokens is None:
        other_loss = (4, "with the answer loss on 4 tokens per sequence")
    flips = {other_loss[1]: dataclasses.replace(setup, answer_tokens=other_loss[0]),
             ("without" if setup.gradient_checkpointing else "with") + " gradient checkpointing":
             dataclasses.replace(setup, gradient_checkpointing=not setup.gradient_checkpointing)}
    return {label: {m: sum(memory.activation_bytes(config, flipped, m).values()) for m in methods}
            for label, flipped in flips.items()}


# path flags, checked by run.py before any work (options.check_paths)
PATHS = options.PathFlags(inputs=("--pretrained-model-path",), outputs=("--json",))


def add_arguments(parser, option):
    add = parser.add_argument
    weights.add_model_path_argument(parser, "the model to size (only its config is read, unless "
                                    "measuring)")
    add("--preset", choices=PRESETS, default=None,
        help="a LlamaConfig preset instead of a path (random weights when measuring)")
    add("--batch_size", "--batch-size", type=int, default=8, help="B, sequences per step")
    add("--max_len", "--max-len", type=int, default=512, help="T, tokens per sequence")
    add("--dtype", choices=sorted(memory.DTYPES), default="float32",
        help="precision of weights, gradients, AdamW states and activations (the model is cast)")
    add("--method", choices=("both",) + METHODS, default="both", help="columns of the table")
    add("--lora_targets", "--lora-targets", default="heavy",
        help="light | medium | heavy (seed 000) or comma-separated Linear names (q_proj or wq)")
    add("--lora_rank", "--lora-rank", type=options.size, default=16, help="LoRA rank r")
    add("--lora_dropout", "--lora-dropout", type=float, default=0.05,
        help="dropout on LoRA's input, as --option sft (0: no masks, no fp32 copies in fp32)")
    add("--gradient_checkpointing", "--gradient-checkpointing", action="store_true",
        help="keep only each block's input, recompute the block in backward")
    add("--loss", choices=("answer", "lm"), default="answer",
        help="answer: sft.answer_loss on the last --answer_tokens positions; lm: every position")
    add("--answer_tokens", "--answer-tokens", type=options.size, default=4,
        help="labelled positions per sequence for --loss answer (a label and its end token)")
    add("--measure_steps", "--measure-steps", type=int, default=0,
        help="0: estimate only; N: also run N training steps and print what they used")
    add("--json", default=None, help="also write the table (bytes) as JSON to this file")


def check_arguments(args):
    """Every impossible option as one line, before any work -> TrainingSetup."""
    if args.preset and args.pretrained_model_path:
        raise ValueError("--preset and --pretrained-model-path both given: give one")
    if args.measure_steps < 0:
        raise ValueError(f"--measure_steps {args.measure_steps}: must be >= 0 (0 = estimate only)")
    if args.batch_size > options.MAX_SIZE:        # (>= 1 is memory.TrainingSetup's check)
        options.check_size("--batch_size", args.batch_size)
    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json {args.json}: is a folder; give a file path, e.g. memory.json")
    return memory.TrainingSetup(
        batch_size=args.batch_size, max_len=args.max_len, dtype=args.dtype,
        lora_targets=args.lora_targets, lora_rank=args.lora_rank, lora_dropout=args.lora_dropout,
        answer_tokens=None if args.loss == "lm" else args.answer_tokens,
        gradient_checkpointing=args.gradient_checkpointing, device_type=args.device.type)


def model_config(args):
    """(LlamaConfig, its name): a preset, or the checkpoint's config read without weights."""
    if args.preset:
        return getattr(llama.LlamaConfig, args.preset)(), args.preset
    path = args.pretrained_model_path
    return weights.read_config(path), str(path or weights.default_model_path())


def main(args):
    setup = check_arguments(args)
    config, name = model_config(args)
    if setup.max_len > config.max_seq_len:
        raise ValueError(f"--max_len {setup.max_len} > the model's max_seq_len "
                         f"{config.max_seq_len}; ask for fewer tokens")
    methods = METHODS if args.method == "both" else (args.method,)
    estimates = {m: memory.estimate(config, setup, m) for m in methods}
    measured = None
    if args.measure_steps:
        path = None if args.preset else args.pretrained_model_path or weights.default_model_path()
        widest = max(config.hidden_dim, config.vocab_size)   # the largest (B, T, .) activation
        options.check_size(f"--batch_size x --max_len x {widest} (the widest activation)",
                           setup.batch_size * setup.max_len * widest, options.MAX_ELEMENTS)
        measured = {m: memory.measure(config, path, setup, m, args.measure_steps, args.device)
                    for m in methods}
    loss = "LM loss" if setup.answer_tokens is None else f"answer loss on {setup.labelled} tokens"
    title = (f"training memory of {name}: {memory.parameter_count(config):,} parameters, "
             f"B={setup.batch_size}, T={setup.max_len}, {setup.dtype}, {loss}"
             + (", gradient checkpointing" if setup.gradient_checkpointing else "")
             + (f", LoRA dropout {setup.lora_dropout} (masks as on {setup.device_type})"
                if "lora" in methods and setup.lora_dropout else ""))
    variants = variant_activations(config, setup, methods)
    print(format_table(title, setup, estimates, measured, variants), flush=True)
    report = {"model": name, "config": dataclasses.asdict(config),
              "setup": {**dataclasses.asdict(setup), "adapted": sorted(setup.adapted)},
              "estimate": estimates, "measured": measured, "variants": variants}
    if args.json:
        atomic.save_json_atomic(args.json, report)
    return report
