"""Seed 001's sentiment classifiers on a pretrained Llama: zero-shot prompting, fine-tuning, LoRA.

Zero-shot prompting (`--option prompt`; Radford et al. 2019 "Language Models are Unsupervised
Multitask Learners", Sec. 3; Brown et al. 2020, arXiv:2005.14165, Sec. 2). The text x goes into a
prompt listing the K label names; label k with tokens (y_1..y_m) scores its log-likelihood as the
continuation, and the prediction is the best-scoring label:
    score_k(x) = sum_{j=1..m} log softmax(W_out h_{n-1+j})[y_j]      n = prompt length
    yhat = argmax_k score_k(x)
where h_t is the final-norm hidden state at position t of prompt + label. Single-token labels
need one forward pass of the prompt alone (m = 1: h_{n-1} is the prompt's last token).
Optional contextual calibration (--calibrate; Zhao et al. 2021, arXiv:2102.09690):
    yhat = argmax_k p_k(x) / p_k(content-free), p = softmax over the K label scores.

Classification head (`--option finetune` / `lora`; minllama's LlamaEmbeddingClassifier):
    h = hidden state of the LAST NON-PAD token, index n_b - 1 of row b   (B, dim)
    logits = W_c dropout(h) + b_c                                        (B, K)
    loss = cross-entropy(logits, y), summed and divided by the examples in the optimizer step.
finetune trains every parameter; lora freezes the Llama and trains the head plus LoRA adapters
W = W0 + (alpha / r) B A (Hu et al. 2021, arXiv:2106.09685, Sec. 4.1-4.2) on --lora_targets:
wq,wv by default, a seed-000 preset (light, medium, heavy) or Linear names in either spelling,
read by lora.resolve_targets.
What the head reads (--head_input):
    text    [bos] text [eos], head randomly initialised (minllama's create_data)
    prompt  (default) the zero-shot prompt of --option prompt; the head starts as the zero-shot
            classifier: W_c[k] = W_out[first token of " " + label k], b_c = 0, so training starts
            from the prompting accuracy instead of chance (the "verbalizer" init of prompt-based
            fine-tuning, Gao et al. 2021, arXiv:2012.15723, Sec. 4). On frozen SmolLM2 features a
            linear probe reached 0.542 dev on CFIMDB at eos and 0.817 at the prompt's end
            (benchmarks/probe_head_input.py).

Accuracy on a split whose gold labels are all one value (CFIMDB's test file: placeholder 0s)
is printed with a warning, since it only counts how often that label is predicted.

Shapes: B batch, T tokens, dim model width, V vocabulary, K labels, m label tokens.
Tests: tests/test_classifier.py (batched padded label scores == one unpadded forward per example
and label; head on the last non-pad token == an unpadded single-example run; the label-row head
== zero-shot scores; LoRA trains only head and adapters; the CLI end to end through run.main on
temp files, --lora_targets presets and names, the placeholder-label warning).
"""
import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import atomic
import data
import distributed
import fused
import lora
import metrics
import options
import safetensors_io
import sample
import train
import weights

# minllama's prompt (run_llama.py's prompt_suffix); {labels} is e.g. "bad or good". On SmolLM2 it
# beat a "Review: ... Answer:" question and the chat template on dev subsets (benchmarks/issue3_results.md).
PROMPT_TEMPLATE = "{text} Is this movie {labels}? This movie is"
# Content-free inputs for calibration, as Zhao et al. 2021 use ("N/A", "", "[MASK]").
CONTENT_FREE = ("N/A", "", "[MASK]")


# ----------------------------------------------------------------------------
# pure functions: prompt text, pooling, label log-likelihoods

def calibrate(scores, log_p_cf):
    """Contextual calibration (Zhao et al. 2021, arXiv:2102.09690, Sec. 5): with p the label
    distribution softmax_K(scores) and p_cf the same for content-free inputs ("N/A"), predict
    argmax_k p_k / p_cf_k, i.e. log_softmax(scores) - log p_cf.   scores (B, K), log_p_cf (K,)."""
    return F.log_softmax(scores.float(), dim=-1) - log_p_cf                          # (B, K)


def join_label_names(names):
    """["bad", "good"] -> "bad or good"; ["a", "b", "c"] -> "a, b, or c" (as minllama writes it)."""
    if len(names) <= 2:
        return " or ".join(names)
    return ", ".join(names[:-1]) + ", or " + names[-1]


def last_token_index(attention_mask):
    """(B, T) mask of 1 real / 0 pad -> (B,) position of each row's last real token."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)   # (T,)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)                    # (B,)


def pool_last_token(hidden, attention_mask):
    """hidden (B, T, dim) -> (B, dim) at each row's last real token (any padding side)."""
    index = last_token_index(attention_mask)                                          # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]         # (B, dim)


def uses_bos(tokenizer):
    """Prepend BOS only if the model was trained with it (Llama 2/3 yes; SmolLM2 no)."""
    return getattr(tokenizer, "add_bos", True)


def lm_head_weight(model):
    """The (V, dim) output projection (tied to tok_embeddings when config.tie_embeddings)."""
    return model.output.weight


def label_token_ids(tokenizer, label_names, style="plain"):
    """Token ids of each label as it follows the prompt: " good" in running text, "good" in chat."""
    prefix = " " if style == "plain" else ""
    return [tokenizer.encode(prefix + name, bos=False, eos=False) for name in label_names]


def prompt_ids(tokenizer, text, template, label_names, max_len=None, style="plain"):
    """Token ids of the prompt for text; the text alone is cut to max_len tokens."""
    if max_len is not None:
        ids = tokenizer.encode(text, bos=False, eos=False)
        if len(ids) > max_len:
            text = tokenizer.decode(ids[:max_len])
    prompt = template.format(text=text, labels=join_label_names(label_names))
    if style == "chat":
        return tokenizer.encode_chat([{"role": "user", "content": prompt}])
    return tokenizer.encode(prompt, bos=uses_bos(tokenizer), eos=False)


def is_right_padded(attention_mask):
    """True when every row is 1..1 0..0 (real tokens first, pads after)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def hidden_states(model, tokens, attention_mask):
    """Final-norm hidden states (B, T, dim); last_only skips the full (B, T, V) logits.

    With right padding the plain causal mask is exact for every real position (a real token only
    sees earlier, real tokens; positions are 0..n_b-1 either way), so the mask is dropped: the
    model then takes its is_causal SDPA path, faster than an explicit (B, 1, T, T) mask.
    """
    if attention_mask is not None and is_right_padded(attention_mask):
        attention_mask = None
    _, hidden = model(tokens, attention_mask=attention_mask, last_only=True)
    return hidden


def label_scores_reference(model, prompt, label_ids):
    """Readable oracle: one unpadded forward per label, full logits -> (K,) log-likelihoods."""
    device = lm_head_weight(model).device
    scores = []
    for label in label_ids:
        tokens = torch.tensor([prompt + label], device=device)                       # (1, n + m)
        logits, _ = model(tokens)                                                    # (1, n + m, V)
        logp = F.log_softmax(logits[0, len(prompt) - 1:-1].float(), dim=-1)          # (m, V)
        scores.append(logp[torch.arange(len(label)), torch.tensor(label)].sum())
    return torch.stack(scores)                                                       # (K,)


def label_scores(model, prompts, label_ids, pad_id):
    """Batched label log-likelihoods (B, K) for B prompts and K labels.

    Fast paths: with single-token labels all K scores come from the prompt's last position (one
    right-padded forward of B rows instead of B*K). Otherwise each prompt is prefilled once into
    the KV cache (left-padded, as generation does) and each label's continuation is read from
    there: one forward of B prompts plus K forwards of at most m - 1 tokens, instead of B*K rows of
    prompt + label.
    """
    device = lm_head_weight(model).device
    if all(len(label) == 1 for label in label_ids):
        tokens, mask = data.pad_batch(prompts, pad_id)                               # (B, T)
        hidden = hidden_states(model, tokens.to(device), mask.to(device))            # (B, T, dim)
        last = pool_last_token(hidden, mask.to(device))                              # (B, dim)
        logp = F.log_softmax(F.linear(last, lm_head_weight(model)).float(), dim=-1)  # (B, V)
        return logp[:, [label[0] for label in label_ids]]                            # (B, K)
    return label_scores_cached(model, prompts, label_ids, pad_id)


@torch.no_grad()
def label_scores_cached(model, prompts, label_ids, pad_id):
    """score_k = log p(a_k1 | prompt) + sum_{j>1} log p(a_kj | prompt, a_k<j), the prompt's keys and
    values computed once: label k's tokens 1..m-1 are fed at cache slots T.. (later labels
    overwrite the same slots; attention never reads past the tokens fed)."""
    device = lm_head_weight(model).device
    tokens, mask = sample.left_pad(prompts, pad_id, device)                         # (B, T)
    B, T = tokens.shape
    m = max(len(label) for label in label_ids)
    if model.cache is None or not model.cache.fits(B, T + m):
        model.setup_cache(B, T + m)
    logits, _ = model(tokens, start_pos=0, attention_mask=None if bool(mask.all()) else mask,
                      last_only=True)                                               # (B, 1, V)
    first = F.log_softmax(logits[:, -1].float(), dim=-1)                            # (B, V)
    scores = []
    for label in label_ids:
        score = first[:, label[0]]                                                  # (B,)
        if len(label) > 1:
            feed = torch.tensor([label[:-1]] * B, device=device)                   # (B, m_k - 1)
            out, _ = model(feed, start_pos=T)                                       # (B, m_k - 1, V)
            logp = F.log_softmax(out.float(), dim=-1)
            score = score + logp[:, torch.arange(len(label) - 1), label[1:]].sum(-1)
        scores.append(score)
    return torch.stack(scores, dim=1)                                               # (B, K)


# ----------------------------------------------------------------------------
# modules

class LlamaZeroShotClassifier(nn.Module):
    """Frozen Llama scoring each label name as the continuation of a prompt.

    style "plain": the prompt is running text and a label follows it after a space (" good").
    style "chat": the prompt is the user turn of the tokenizer's chat template and a label is
    the first word of the assistant's reply ("good").
    """

    def __init__(self, llama, tokenizer, label_names, template=PROMPT_TEMPLATE, max_len=None,
                 style="plain"):
        super().__init__()
        if style not in ("plain", "chat"):
            raise ValueError(f"--prompt_style {style!r}: use plain or chat")
        self.llama = llama.requires_grad_(False)
        self.tokenizer, self.template, self.max_len = tokenizer, template, max_len
        self.label_names, self.style = list(label_names), style
        self.label_ids = label_token_ids(tokenizer, label_names, style)

    def prompt_ids(self, text):
        return prompt_ids(self.tokenizer, text, self.template, self.label_names, self.max_len,
                          self.style)

    @torch.no_grad()
    def forward(self, prompts):
        """prompts: B token lists -> (B, K) label log-likelihoods."""
        return label_scores(self.llama, prompts, self.label_ids, self.tokenizer.pad_id)

    @torch.no_grad()
    def content_free_log_probs(self, texts=CONTENT_FREE):
        """log p_cf (K,): label probabilities for content-free inputs, averaged (Zhao et al. 2021)."""
        scores = self([self.prompt_ids(t) for t in texts])                          # (n, K)
        return torch.log(torch.softmax(scores, dim=-1).mean(0))                      # (K,)


class LlamaEmbeddingClassifier(nn.Module):
    """Llama + dropout + linear head on the last non-pad token's hidden state."""

    def __init__(self, llama, num_labels, hidden_dropout_prob=0.3):
        super().__init__()
        self.llama = llama
        self.dropout = nn.Dropout(hidden_dropout_prob)
        dim = llama.tok_embeddings.weight.shape[1]
        self.classifier_head = nn.Linear(dim, num_labels)
        self.classifier_head.to(llama.tok_embeddings.weight.device)

    def forward(self, tokens, attention_mask):
        """tokens, attention_mask (B, T) -> logits (B, K)."""
        hidden = hidden_states(self.llama, tokens, attention_mask)                   # (B, T, dim)
        pooled = pool_last_token(hidden, attention_mask)                             # (B, dim)
        return self.classifier_head(self.dropout(pooled.float()))                    # (B, K)


def add_lora(classifier, rank, alpha, targets="wq,wv", dropout=0.0):
    """Freeze the Llama, inject LoRA adapters into `targets`; the head stays trainable.

    targets: a preset ("light", "medium", "heavy"), a comma list or a list of names in either
    spelling (lora.resolve_targets). Returns the wrapped module names; ValueError (listing the
    model's Linear names) when none matches.
    """
    classifier.llama.requires_grad_(False)
    config = lora.LoraConfig(r=rank, alpha=alpha, dropout=dropout, target_modules=targets)
    names = lora.inject_lora(classifier.llama, config)
    classifier.classifier_head.requires_grad_(True)
    return names


# ----------------------------------------------------------------------------
# training and evaluation on batches

def batch_logits(model, batch):
    """Logits (B, K) and labels (B,) of one batch dict, on the model's device."""
    device = model.classifier_head.weight.device
    logits = model(batch["tokens"].to(device), batch["attention_mask"].to(device))   # (B, K)
    return logits.float(), batch["labels"].to(device)                                # (B,)


def classification_loss(model, batch):
    """(summed cross-entropy, number of examples) for train.fit."""
    logits, labels = batch_logits(model, batch)
    return F.cross_entropy(logits, labels, reduction="sum"), labels.numel()


@torch.no_grad()
def predict_head(model, batches):
    """Predictions in input order and the mean cross-entropy over Batches (eval mode)."""
    was_training = model.training
    model.eval()
    preds, loss = {}, 0.0
    for batch in batches:
        logits, labels = batch_logits(model, batch)
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        preds.update(zip(batch["index"], logits.argmax(-1).tolist()))
    model.train(was_training)
    return [preds[i] for i in range(len(preds))], loss / max(len(preds), 1)


@torch.no_grad()
def predict_prompting(classifier, prompts, batch_size, log_p_cf=None, desc="prompt"):
    """argmax label per prompt (calibrated when log_p_cf is given), similar lengths batched."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    preds = [0] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, dynamic_ncols=True):
        index = order[start:start + batch_size]
        scores = classifier([prompts[i] for i in index])                             # (B, K)
        if log_p_cf is not None:
            scores = calibrate(scores, log_p_cf)
        for i, p in zip(index, scores.argmax(-1).tolist()):
            preds[i] = p
    return preds


def accuracy(preds, examples):
    """metrics.accuracy of predicted label ids against the examples' gold labels."""
    return metrics.accuracy(preds, [e.label for e in examples])


def placeholder_labels_warning(examples, path):
    """A warning when every gold label is one value (CFIMDB's test file: all 0, placeholders);
    accuracy then only counts how often that label is predicted. None for a real split."""
    labels = {e.label for e in examples}
    if len(labels) != 1:
        return None
    return (f"warning: every gold label in {Path(path).name} is {labels.pop()}, so this accuracy "
            "measures nothing")


# ----------------------------------------------------------------------------
# command line: run.py --option prompt | finetune | lora

OUTPUT_KIND = {"prompt": "prompting", "finetune": "finetuning", "lora": "lora"}


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
    parser.add_argument("--batch_size", "--batch-size",
                        type=options.positive_int, default=8, help="examples per batch")
    weights.add_model_path_argument(parser)
    parser.add_argument("--max_sentence_len", "--max-sentence-len",
                        type=options.positive_int, default=None,
                        help="cut each text to this many tokens (None: no cut)")
    parser.add_argument("--max_train_examples", "--max-train-examples",
                        type=options.positive_int, default=None,
                        help="use a seeded random subset of this many training examples")
    parser.add_argument("--max_eval_examples", "--max-eval-examples",
                        type=options.positive_int, default=None,
                        help="use seeded random subsets of this many dev and test examples")
    parser.add_argument("--out_dir", "--out-dir", type=options.output_folder, default="runs",
                        help="folder for the history JSON, learning curves and summary JSON")
    parser.add_argument("--prompt_template", "--prompt-template", default=PROMPT_TEMPLATE,
                        help="prompt with {text} and {labels} placeholders")
    if option == "prompt":
        parser.add_argument("--prompt_style", "--prompt-style", choices=["plain", "chat"],
                            default="plain", help="plain text, or the user turn of the chat template")
        parser.add_argument("--calibrate", action="store_true",
                            help="contextual calibration against content-free inputs (Zhao et al. 2021)")
        return
    add_training_arguments(parser, option)


def add_training_arguments(parser, option):
    """The flags of --option finetune and lora."""
    parser.add_argument("--epochs",
                        type=options.positive_int, default=5, help="passes over the training data")
    parser.add_argument("--lr",
                        type=options.positive_float, default=2e-5, help="AdamW learning rate")
    parser.add_argument("--head_input", "--head-input", choices=["prompt", "text"], default="prompt",
                        help="prompt: the head reads the end of the zero-shot prompt and starts as "
                        "the zero-shot classifier; text: [bos] text [eos] and a random head (minllama)")
    parser.add_argument("--hidden_dropout_prob", "--hidden-dropout-prob",
                        type=options.probability, default=0.3,
                        help="dropout on the pooled hidden state before the head")
    parser.add_argument("--max_steps_per_epoch", "--max-steps-per-epoch",
                        type=options.positive_int, default=None,
                        help="stop each epoch after this many optimizer steps")
    parser.add_argument("--time_budget_s", "--time-budget-s",
                        type=options.nonnegative_float, default=None,
                        help="stop training after this many seconds (then evaluate and predict)")
    train.add_checkpoint_arguments(parser)
    distributed.add_fsdp_argument(parser)
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                        help="the fast path (fused.py, tested equal); --no-fused: the readable one")
    if option == "lora":
        parser.add_argument("--lora_rank", "--lora-rank",
                            type=options.positive_int, default=4, help="LoRA rank r")
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


def load_model(path, device):
    """(Llama in fp32, Tokenizer); the one place the CLI loads weights (tests replace it)."""
    return weights.load_pretrained(path, device=device, dtype=torch.float32, require_tokenizer=True)


def load_splits(args):
    """Label names and the train/dev/test examples (subsets when asked)."""
    names = data.read_label_names(args.label_names)
    splits = {}
    for split, flag in [("train", "--train"), ("dev", "--dev"), ("test", "--test")]:
        examples = data.read_examples(getattr(args, split), num_labels=len(names), flag=flag)
        limit = args.max_train_examples if split == "train" else args.max_eval_examples
        splits[split] = data.subset(examples, limit, seed=args.seed)
        print(f"load {len(splits[split])} data from {getattr(args, split)}", flush=True)
    return names, splits


def run_prompt(args, llama, tokenizer, names, splits):
    """Zero-shot predictions for dev and test; returns {split: predictions}, parameter counts."""
    classifier = LlamaZeroShotClassifier(llama, tokenizer, names, args.prompt_template,
                                         args.max_sentence_len, args.prompt_style).eval()
    example = classifier.template.format(text="<text>", labels=join_label_names(names))
    print(f"prompt ({args.prompt_style}): {example!r}; labels {classifier.label_ids}", flush=True)
    log_p_cf = None
    if args.calibrate:
        log_p_cf = classifier.content_free_log_probs()
        print(f"calibration p_cf: {[round(p, 3) for p in log_p_cf.exp().tolist()]}", flush=True)
    preds = {}
    for split in ("dev", "test"):
        prompts = [classifier.prompt_ids(e.text) for e in splits[split]]
        preds[split] = predict_prompting(classifier, prompts, args.batch_size, log_p_cf, desc=split)
    total = sum(p.numel() for p in llama.parameters())
    return preds, {"trainable_parameters": 0, "total_parameters": total}


def encode_split(examples, tokenizer, max_len, template=None, label_names=None):
    """[bos] + text + eos, as minllama's create_data (the head reads the hidden state at eos);
    with a template, the zero-shot prompt of each text instead (the head reads its last token)."""
    if template is not None:
        return [prompt_ids(tokenizer, e.text, template, label_names, max_len) for e in examples]
    bos = uses_bos(tokenizer)
    return [data.encode_text(tokenizer, e.text, max_len, bos=bos, eos=True) for e in examples]


@torch.no_grad()
def init_head_from_labels(model, label_ids):
    """Head row k = the output-embedding row of label k's first token; bias 0 (zero-shot start)."""
    weight = lm_head_weight(model.llama)
    model.classifier_head.weight.copy_(torch.stack([weight[ids[0]] for ids in label_ids]).float())
    model.classifier_head.bias.zero_()


def build_head_classifier(args, llama, tokenizer, names):
    """The head classifier of --option finetune (every weight trains) or lora (head + adapters);
    with --head_input prompt its head starts from the label rows. Prints what trains."""
    model = LlamaEmbeddingClassifier(llama, len(names), args.hidden_dropout_prob)
    if args.option == "lora":
        injected = add_lora(model, args.lora_rank, args.lora_alpha, args.lora_targets)
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
        label_ids = label_token_ids(tokenizer, names)
        init_head_from_labels(model, label_ids)
        print(f"head reads the prompt's last token, starts from labels {label_ids}", flush=True)
    if args.fsdp:
        distributed.shard(model, args.device)       # 1/N of every weight on this process's device
    return model


def run_train(args, llama, tokenizer, names, splits):
    """Fine-tune (all weights) or LoRA (adapters + head); best-on-dev; predictions for dev/test."""
    model = build_head_classifier(args, llama, tokenizer, names)
    template = args.prompt_template if args.head_input == "prompt" else None
    seqs = {s: encode_split(splits[s], tokenizer, args.max_sentence_len, template, names)
            for s in splits}

    def batches(split, shuffle=False, **options):   # training batches are sharded under torchrun
        return data.Batches(seqs[split], [e.label for e in splits[split]], args.batch_size,
                            tokenizer.pad_id, seed=args.seed, shuffle=shuffle, shard=shuffle,
                            **options)

    def evaluate(m):
        preds, loss = predict_head(m, batches("dev", sort_by_length=True))
        return {"loss": loss, "accuracy": accuracy(preds, splits["dev"])}

    config = train.TrainConfig(epochs=args.epochs, lr=args.lr,
                               max_steps_per_epoch=args.max_steps_per_epoch,
                               time_budget_s=args.time_budget_s, out_dir=args.out_dir,
                               name=run_name(args), **train.checkpoint_fields(args, run_name(args)))
    history = train.fit(model, batches("train", shuffle=True), classification_loss, config,
                        evaluate=evaluate)
    preds = {s: predict_head(model, batches(s, sort_by_length=True))[0] for s in ("dev", "test")}
    trainable, total = lora.count_parameters(model)
    info = {"trainable_parameters": trainable, "total_parameters": total,
            "best": history["best"], "epochs": history["epochs"]}
    if args.option == "lora":
        info["adapter"] = str(save_lora_classifier(model, args))
    return preds, info


def save_lora_classifier(model, args):
    """OUT_DIR/<run>-adapter: the LoRA adapter in peft's layout (lora.save_adapter) and the
    trained head beside it as classifier_head.safetensors (peft ignores the extra file)."""
    folder = Path(args.out_dir) / f"{run_name(args)}-adapter"
    config = lora.LoraConfig(r=args.lora_rank, alpha=args.lora_alpha, target_modules=args.lora_targets)
    lora.save_adapter(folder, model.llama, config)
    head = {k: v.cpu().contiguous() for k, v in distributed.full_state_dict(model.classifier_head).items()}
    safetensors_io.write_safetensors(folder / "classifier_head.safetensors", head)
    print(f"saved the LoRA adapter and the head to {folder}", flush=True)
    return folder


def run_name(args):
    return f"{args.option}-{Path(args.train).stem}"


def report_accuracy(summary, split, preds, examples, path):
    """Print `Dev Accuracy: 0.490` (seed 001's line), with a warning when the gold labels are
    placeholders; store <split>_accuracy and <split>_accuracy_warning (None or the text)."""
    acc = accuracy(preds, examples)
    warning = placeholder_labels_warning(examples, path)
    summary[f"{split}_accuracy"], summary[f"{split}_accuracy_warning"] = acc, warning
    note = f" ({warning})" if warning else ""
    print(f"{split.capitalize()} Accuracy: {acc:.3f}{note}", flush=True)


def main(args):
    """Read data, load the model, run the option, write dev/test outputs, print accuracies."""
    start = time.perf_counter()
    check_arguments(args)
    names, splits = load_splits(args)
    llama, tokenizer = load_model(args.pretrained_model_path, distributed.load_device(args))
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
