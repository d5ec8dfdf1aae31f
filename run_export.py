"""`run.py --option export`: a model (and the adapter fine-tuned on it) as one GGUF file for
llama.cpp / ollama / LM Studio, or as a Hugging Face Llama folder for transformers; then re-read
and checked.

    python run.py --option export [--pretrained-model-path M] [--adapter DIR] --format gguf|hf
        [--dtype f32|f16|bf16|q8_0|q4_0|q4_1] --out PATH

Steps: the flags and the adapter's config are checked first (the output path: a file for gguf, a
folder for hf, never the input model or inside its folder); the model is read in fp32
(weights.load_pretrained); a LoRA adapter is merged, W' = W + (alpha / r) B A (lora.unload_lora),
an IA3 adapter folded, W' = diag(l) W or W diag(l) (adapters.unload_ia3); prompt tuning,
P-tuning and prefix tuning add virtual tokens, not weights, and are refused in one line. Then
gguf_writer.write_llama_gguf or hf_writer.write_hf_folder writes the output atomically, with the
tokenizer and its chat template (the adapter's, when it was trained with the model's own template,
is the same; another prompt format is said in one line). Last, the output is read back by
weights.py and its logits on a probe text are compared with the merged model's (the printed max
|diff|: 0 for f32 GGUF; the format's rounding otherwise); --no_check skips it.
--dtype: f32 (default), f16, bf16 for both formats; q8_0 / q4_0 / q4_1 are GGUF block types.

Tested in tests/test_run_export.py (every format and dtype read back by weights.py, by gguf and
by transformers with equal logits; LoRA and IA3 merged equal the unmerged model; an llmlab
folder, a llama2.c checkpoint with its SentencePiece tokenizer, and an --option sft adapter;
bad flags and files as one line with nothing written); in llama.cpp by
benchmarks/bench_export.py.
"""
import os
import time
from pathlib import Path

import torch

import adapters
import file_checks
import gguf_writer
import hf_writer
import lora
import options
import peft_format
import weights

FORMATS = ("gguf", "hf")
MERGEABLE = (lora.LoraConfig, adapters.IA3Config)
PROBE = "The quick brown fox jumps over the lazy dog. 1, 2, 3: export, re-read, compare."


def _swapped(values):
    """--out for --format hf is a folder replaced whole (checked by run.py)."""
    return {"--out": values["out"]} if values.get("format") == "hf" and values.get("out") else {}


# path flags, checked by run.py before any work (options.check_paths); a GGUF --out is a file,
# checked by check_output_file at the start of main (PathFlags cannot switch on --format)
PATHS = options.PathFlags(inputs=("--pretrained-model-path", "--adapter"), swapped=_swapped)


def add_arguments(parser, option):
    weights.add_model_path_argument(parser, "the model to export")
    add = parser.add_argument
    add("--adapter", default=None,
        help="a LoRA or IA3 adapter folder (peft layout, e.g. an --option sft run's "
        "OUT_DIR/adapter) merged into the weights before export")
    add("--format", choices=FORMATS, required=True,
        help="gguf: one file for llama.cpp / ollama; hf: a Hugging Face Llama folder")
    add("--dtype", choices=sorted(gguf_writer.EXPORT_TYPES), default="f32",
        help="stored precision: f32, f16, bf16; GGUF only: q8_0, q4_0, q4_1 blocks of 32")
    add("--out", required=True,
        help="the .gguf file (--format gguf) or the folder (--format hf) to write")
    add("--no_check", "--no-check", action="store_true",
        help="skip reading the output back and comparing its logits with the merged model's")


# ----------------------------------------------------------------------------
# checks before any work


def check_output_file(args):
    """A GGUF --out: a writable file path that is not the input model (nor in its folder)."""
    if args.format != "gguf":
        return
    model = args.pretrained_model_path
    if model is None:
        model = str(weights.default_model_path())
    beside = [("--pretrained-model-path (read beside the model)", str(p))
              for p in weights.companion_files(model)]
    values = {**vars(args), "pretrained_model_path": model}
    options.check_paths(values, options.PathFlags(inputs=PATHS.inputs, outputs=("--out",)),
                        beside)


def check_args(args):
    """Everything that needs no model: --dtype for the format, the output path, the adapter's
    method. -> the adapter's config or None."""
    if args.format == "hf" and args.dtype not in hf_writer.HF_DTYPES:
        raise ValueError(f"--dtype {args.dtype}: --format hf stores "
                         f"{', '.join(hf_writer.HF_DTYPES)} (safetensors has no ggml blocks); "
                         "use --format gguf for it")
    check_output_file(args)
    if args.adapter is None:
        return None
    config = peft_format.read_config(args.adapter)
    if not isinstance(config, MERGEABLE):
        kind = peft_format.PEFT_TYPES[type(config)]
        raise ValueError(f"--adapter {args.adapter} is {kind}: its virtual tokens are not "
                         "weights, so a GGUF or HF Llama cannot hold them; run it in llmlab with "
                         "--adapter, or export a LoRA / IA3 adapter")
    return config


def adapter_template_note(folder):
    """One line when the adapter was trained on a prompt format other than the chat template
    the export carries (sft_config.json's "template"), else None."""
    path = Path(folder) / "sft_config.json"
    template = file_checks.read_json(path).get("template") if path.is_file() else None
    if template in (None, "chat"):
        return None
    return (f"note: {path} says the adapter was trained on the {template!r} prompt format; the "
            f"export carries the model's chat template, so prompt it as {template} was")


# ----------------------------------------------------------------------------
# merge, write, re-read


def merge_adapter(model, folder):
    """The adapter in folder loaded onto model and merged into its Linears -> (model, what)."""
    try:
        model, config = peft_format.load_adapter(folder, model)
    except ValueError as err:
        raise ValueError(f"--adapter {folder}: {err}") from None
    if isinstance(config, lora.LoraConfig):
        count = len(lora.lora_layers(model))
        lora.unload_lora(model, merge_first=True)
        return model, f"LoRA r={config.r} alpha={config.alpha} merged into {count} Linears"
    count = adapters.unload_ia3(model)
    return model, f"IA3 folded into {count} Linears"


def write(args, model, tok):
    c, state_dict = model.config, model.state_dict()
    if args.format == "hf":
        return hf_writer.write_hf_folder(args.out, c, state_dict, tok, args.dtype)
    if tok is None:
        raise ValueError(f"--pretrained-model-path {args.pretrained_model_path}: the model has no "
                         "tokenizer and llama.cpp needs one; put its tokenizer.model / "
                         "tokenizer.json beside it")
    keys = gguf_writer.tokenizer_keys(tok, c.vocab_size)
    name = Path(args.pretrained_model_path or weights.default_model_path()).stem
    return gguf_writer.write_llama_gguf(args.out, c, state_dict, keys, args.dtype, name=name)


def size_of(path):
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    return sum(os.path.getsize(p) for p in files)


@torch.no_grad()
def reread_check(model, tok, out):
    """Read the output back (weights.py) -> max |logit diff| with the merged model on PROBE and
    whether the greedy next token agrees at every position."""
    config, state_dict, _ = weights.read_model_file(out)
    again = weights.build_model(config, state_dict)
    ids = tok.encode(PROBE) if tok is not None else list(range(min(32, config.vocab_size)))
    tokens = torch.tensor([ids])                                              # (1, T)
    expected, got = model(tokens)[0], again(tokens)[0]                        # (1, T, V)
    same = bool((expected.argmax(-1) == got.argmax(-1)).all())
    return (expected - got).abs().max().item(), same, len(ids)


def main(args):
    adapter_config = check_args(args)
    start = time.perf_counter()
    model, tok = weights.load_pretrained(args.pretrained_model_path)
    what = "no adapter"
    if adapter_config is not None:
        model, what = merge_adapter(model, args.adapter)
        note = adapter_template_note(args.adapter)
        if note:
            print(note, flush=True)
    model.eval()
    out = write(args, model, tok)
    print(f"wrote {out} ({args.format}, {args.dtype}, {size_of(out) / 1e6:.1f} MB; {what}) in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    if not args.no_check:
        diff, same, n = reread_check(model, tok, out)
        print(f"re-read {out}: max |logit diff| {diff:.2e} over {n} tokens, greedy tokens "
              f"{'all equal' if same else 'DIFFER'}", flush=True)
